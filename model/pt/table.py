"""An IO page table: the numba walker (model/pt/walk.py) behind model.domain.DomainOps.

This layer validates what the kernels cannot (Python ints in range, a prot), makes room for the
tables a map may need before calling the kernel (kernels cannot grow arrays), and hands statuses
up unchanged: IommuDomain (model/domain.py) maps them to errno, as the iommu core does.

Variants (drivers/iommu/iommufd/selftest.c mock_domain_alloc_pgtable(), iommufd_test.h):
- amdv1_mock(): MOCK_IOMMUPT_DEFAULT: AMDv1 with a 2 KiB granule, three levels (top level 2,
  2^38 of IOVA), pgsize_bitmap GENMASK(36, 11), aperture [MOCK_APERTURE_START, MOCK_APERTURE_LAST];
- amdv1_mock_huge(): MOCK_IOMMUPT_HUGE: the same table with pgsize_bitmap
  MOCK_HUGE_PAGE_SIZE | PAGE_SIZE and the whole 2^38 as aperture;
- amdv1(): the real format, 4 KiB granule, four levels (48-bit IOVA).
"""
from __future__ import annotations

import errno

import numpy as np

from model.domain import IOMMU_DIRTY_NO_CLEAR, IOMMU_READ, IOMMU_WRITE
from model.pt import walk
from model.pt.fmt import AMDV1, ITEMS_LG2, TABLEMEM_LG2SZ
from model.pt.fmt import amdv1 as _amdv1

_I64 = (1 << 63) - 1


def _pgsize_bitmap(top_level: int, granule_lg2: int, max_vasz_lg2: int, max_oasz_lg2: int) -> int:
    """NS(get_info)(): possible sizes of every level up to the top, below 2^(max_vasz - 1) and
    2^max_oasz."""
    bm = 0
    for level in range(top_level + 1):
        bm |= int(_amdv1.leaf_sizes(level, granule_lg2, 4))
    return bm & ((1 << (max_vasz_lg2 - 1)) - 1) & ((1 << max_oasz_lg2) - 1)


class IoPageTable:
    """A page table with its geometry; DomainOps with generic_pt's map_range / unmap_range."""

    def __init__(self, fmt_id: int, top_level: int, granule_lg2: int, max_vasz_lg2: int, max_oasz_lg2: int,
                 pgsize_bitmap: int | None = None, aperture: tuple[int, int] | None = None):
        self.tables, self.meta, self.free = walk.new_state(fmt_id, top_level, granule_lg2, max_vasz_lg2,
                                                           max_oasz_lg2)
        self.top_level, self.granule_lg2 = top_level, granule_lg2
        self.max_vasz_lg2 = max_vasz_lg2
        self.pgsize_bitmap = (_pgsize_bitmap(top_level, granule_lg2, max_vasz_lg2, max_oasz_lg2)
                              if pgsize_bitmap is None else pgsize_bitmap)
        self.aperture_start, self.aperture_end = aperture or (0, (1 << max_vasz_lg2) - 1)
        self._dirty_out = np.zeros((4096, 2), dtype=np.int64)

    # -- table memory ------------------------------------------------------------------------------

    @property
    def table_pages(self) -> int:
        """Tables allocated now, the top included: each is one 4 KiB page, as the kernel's."""
        return int(self.meta[walk.M_LIVE])

    @property
    def table_bytes(self) -> int:
        return self.table_pages << TABLEMEM_LG2SZ

    def _reserve(self, iova: int, length: int) -> None:
        """Room for every table a map of [iova, iova + length) could allocate."""
        need, g = 0, self.granule_lg2
        for level in range(1, self.top_level + 1):  # tables below each level's items
            span_lg2 = g + ITEMS_LG2 * level
            need += ((iova + length - 1) >> span_lg2) - (iova >> span_lg2) + 1
        free_rows = int(self.meta[walk.M_NFREE]) + self.tables.shape[0] - int(self.meta[walk.M_HIWATER])
        if need <= free_rows:
            return
        cap = max(2 * self.tables.shape[0], self.tables.shape[0] + need - free_rows)
        tables = np.zeros((cap, 1 << ITEMS_LG2), dtype=np.int64)
        tables[: self.tables.shape[0]] = self.tables
        free = np.zeros(cap, dtype=np.int64)
        free[: self.free.shape[0]] = self.free
        self.tables, self.free = tables, free

    # -- DomainOps ---------------------------------------------------------------------------------

    @staticmethod
    def _ok(*values: int) -> bool:
        return all(isinstance(v, int) and 0 <= v <= _I64 for v in values)

    def map_range(self, iova: int, paddr: int, size: int, prot: int) -> tuple[int, int]:
        if not self._ok(iova, paddr, size):
            return -errno.ERANGE, 0
        if size and iova + size - 1 <= _I64 and not (iova + size - 1) >> self.max_vasz_lg2:
            self._reserve(iova, size)
        rc, mapped = walk.map_range(self.tables, self.meta, self.free, iova, paddr, size,
                                    bool(prot & IOMMU_READ), bool(prot & IOMMU_WRITE), self.pgsize_bitmap)
        return int(rc), int(mapped)

    def unmap_range(self, iova: int, size: int) -> int:
        if not self._ok(iova, size):
            return 0
        return int(walk.unmap_range(self.tables, self.meta, self.free, iova, size))

    def iova_to_phys(self, iova: int) -> int:
        if not self._ok(iova):
            return 0
        out = np.zeros(1, dtype=np.int64)
        walk.iova_to_phys(self.tables, self.meta, np.array([iova], dtype=np.int64), out)
        return int(out[0])

    def iova_to_phys_many(self, iovas: np.ndarray) -> np.ndarray:
        """Batched lookups: an int64 array of IOVAs in, their physical addresses (0: none) out."""
        iovas = np.ascontiguousarray(iovas, dtype=np.int64)
        out = np.zeros(iovas.shape[0], dtype=np.int64)
        walk.iova_to_phys(self.tables, self.meta, iovas, out)
        return out

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty) -> int:
        if not self._ok(iova, size):
            return -errno.ERANGE
        no_clear = bool(flags & IOMMU_DIRTY_NO_CLEAR)
        while True:
            rc, n, resume = walk.read_and_clear_dirty(self.tables, self.meta, iova, size, no_clear, self._dirty_out)
            for k in range(n):
                dirty.record(int(self._dirty_out[k, 0]), int(self._dirty_out[k, 1]))
            if rc or resume < 0:
                return int(rc)
            size -= resume - iova
            iova = resume

    def set_dirty(self, iova: int) -> int:
        """A device write through the table: the D bit of the item under iova (0, or -ENOENT)."""
        if not self._ok(iova):
            return -errno.ERANGE
        return int(walk.set_dirty(self.tables, self.meta, iova))

    # -- inspection ---------------------------------------------------------------------------------

    def dump(self) -> list[tuple[int, int, int]]:
        """Every present leaf item (replicas included): (iova, level, raw entry), in IOVA order."""
        n = int(walk.dump(self.tables, self.meta, np.zeros((0, 3), dtype=np.int64)))
        out = np.zeros((n, 3), dtype=np.int64)
        walk.dump(self.tables, self.meta, out)
        return sorted((int(a), int(b), int(c)) for a, b, c in out)

    def leaves(self) -> list[tuple[int, int, int, int, bool]]:
        """The mapped blocks: (iova, size, paddr, prot, dirty), one per leaf however many replicas."""
        g, blocks = self.granule_lg2, {}
        for va, level, e in self.dump():
            isz = g + ITEMS_LG2 * level
            lg2 = int(_amdv1.entry_lg2sz(e, isz, g))
            start = va & ~((1 << lg2) - 1)
            prot = (IOMMU_READ if e & _amdv1.IR else 0) | (IOMMU_WRITE if e & _amdv1.IW else 0)
            pa = int(_amdv1.entry_oa(e, lg2, g))
            old = blocks.get(start)
            blocks[start] = (start, 1 << lg2, pa, prot, bool(e & _amdv1.D) or (old is not None and old[4]))
        return sorted(blocks.values())

    def format_entry(self, e: int, level: int) -> str:
        """An entry as the kernel's fields: PR, NextLevel, OA, IR/IW, D."""
        nl = (e >> _amdv1.NL_SHIFT) & 7
        oa = (e & _amdv1.OA_MASK) >> _amdv1.OA_SHIFT
        bits = [n for n, b in (("IR", _amdv1.IR), ("IW", _amdv1.IW), ("D", _amdv1.D), ("FC", _amdv1.FC)) if e & b]
        return f"L{level} {e:#018x} PR NL={nl} OA={oa << self.granule_lg2:#x} {' '.join(bits)}"


def amdv1_mock() -> IoPageTable:
    """MOCK_IOMMUPT_DEFAULT (selftest.c): starting level 2, 2^38 of IOVA, the mock aperture."""
    from model.uapi import B

    return IoPageTable(AMDV1, 2, 11, 38, 51, aperture=(B.MOCK_APERTURE_START, B.MOCK_APERTURE_LAST))


def amdv1_mock_huge() -> IoPageTable:
    """MOCK_IOMMUPT_HUGE (selftest.c): the same table, pgsize_bitmap MOCK_HUGE_PAGE_SIZE | PAGE_SIZE."""
    from model.limits import PAGE_SIZE
    from model.uapi import B

    return IoPageTable(AMDV1, 2, 11, 38, 51, pgsize_bitmap=B.MOCK_HUGE_PAGE_SIZE | PAGE_SIZE)


def amdv1(levels: int = 4, pgsize_bitmap: int | None = None) -> IoPageTable:
    """The AMD IOMMU v1 format itself: 4 KiB granule, `levels` levels (4: 48-bit IOVA)."""
    return IoPageTable(AMDV1, levels - 1, 12, 12 + ITEMS_LG2 * levels, 52, pgsize_bitmap=pgsize_bitmap)
