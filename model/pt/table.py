"""An IO page table: the numba walker (model/pt/walk.py) behind model.domain.DomainOps.

This layer validates what the kernels cannot (Python ints in range, a prot), makes room for the
tables a map may need before calling the kernel (kernels cannot grow arrays), and hands statuses
up unchanged: IommuDomain (model/domain.py) maps them to errno, as the iommu core does.

Variants (drivers/iommu/iommufd/selftest.c mock_domain_alloc_pgtable(), iommufd_test.h):
- amdv1_mock(): MOCK_IOMMUPT_DEFAULT: AMDv1 with a 2 KiB granule, three levels (top level 2,
  2^38 of IOVA), pgsize_bitmap GENMASK(36, 11), aperture [MOCK_APERTURE_START, MOCK_APERTURE_LAST];
- amdv1_mock_huge(): MOCK_IOMMUPT_HUGE: the same table with pgsize_bitmap
  MOCK_HUGE_PAGE_SIZE | PAGE_SIZE and the whole 2^38 as aperture;
- amdv1(): the real format, 4 KiB granule, four levels (48-bit IOVA);
- vtdss(): VT-d second stage (fmt/vtdss.py), 3-5 levels; x86_64(): x86-64 long mode, VT-d's
  first stage (fmt/x86_64.py), 4-5 levels, sign-extended (the aperture is the lower half);
- intel_paging_domain(cap, ecap, flags): the table intel-iommu's
  intel_iommu_domain_alloc_paging_flags() makes for a unit with these registers.

A format's features are the kernel's (BIT(enum pt_features)) in meta[M_FMT] above the format
number (model/pt/fmt/__init__.py): the walker's leaf encoding reads them (vtdss SNP); this layer
does what iommu_pt.h and pt_iter.h do with the rest before the walk: PT_FEAT_SIGN_EXTEND's
range check and PT_FEAT_VTDSS_FORCE_WRITEABLE's refusal of read-only maps. A format without
dirty tracking (x86_64) answers -EOPNOTSUPP to read_and_clear_dirty and set_dirty, as iommufd
does for a domain without the op.
"""
from __future__ import annotations

import errno

import numpy as np

from model.domain import IOMMU_DIRTY_NO_CLEAR, IOMMU_READ, IOMMU_WRITE
from model.pt import fmt as _fmt
from model.pt import walk
from model.pt.fmt import (AMDV1, ITEMS_LG2, PT_FEAT_FLUSH_RANGE, PT_FEAT_SIGN_EXTEND, PT_FEAT_VTDSS_FORCE_WRITEABLE,
                          TABLEMEM_LG2SZ, VTDSS, X86_64)
from model.pt.fmt import amdv1 as _amdv1
from model.pt.fmt import vtdss as _vtdss
from model.pt.fmt import x86_64 as _x86_64

_I64 = (1 << 63) - 1


def _pgsize_bitmap(f: int, top_level: int, granule_lg2: int, max_vasz_lg2: int, max_oasz_lg2: int) -> int:
    """NS(get_info)() (iommu_pt.h:1132-1158): possible sizes of every level up to the top, below
    2^(max_vasz - 1) and 2^max_oasz."""
    bm = 0
    for level in range(top_level + 1):
        bm |= int(_fmt.leaf_sizes(f, level, granule_lg2, top_level))
    return bm & ((1 << (max_vasz_lg2 - 1)) - 1) & ((1 << max_oasz_lg2) - 1)


class IoPageTable:
    """A page table with its geometry; DomainOps with generic_pt's map_range / unmap_range."""

    def __init__(self, fmt_id: int, top_level: int, granule_lg2: int, max_vasz_lg2: int, max_oasz_lg2: int,
                 pgsize_bitmap: int | None = None, aperture: tuple[int, int] | None = None, features: int = 0):
        f = _fmt.fmt_word(fmt_id, features)
        self.tables, self.meta, self.free = walk.new_state(f, top_level, granule_lg2, max_vasz_lg2, max_oasz_lg2)
        self.fmt_id = fmt_id
        self.top_level, self.granule_lg2 = top_level, granule_lg2
        self.max_vasz_lg2, self.max_oasz_lg2 = max_vasz_lg2, max_oasz_lg2
        self.pgsize_bitmap = (_pgsize_bitmap(f, top_level, granule_lg2, max_vasz_lg2, max_oasz_lg2)
                              if pgsize_bitmap is None else pgsize_bitmap)
        # PT_FEAT_SIGN_EXTEND: the top range is the lower half (_pt_top_range(), pt_iter.h:231-237)
        self._sign_bit = max_vasz_lg2 - 1 if features >> PT_FEAT_SIGN_EXTEND & 1 else None
        top = max_vasz_lg2 if self._sign_bit is None else self._sign_bit
        self.aperture_start, self.aperture_end = aperture or (0, (1 << top) - 1)
        self.dirty_supported = _fmt.dirty_supported(f)
        self._dirty_out = np.zeros((4096, 2), dtype=np.int64)

    @property
    def features(self) -> int:
        """BIT(enum pt_features) of the table (struct pt_common.features)."""
        return int(self.meta[walk.M_FMT]) >> _fmt.FEAT_SHIFT

    def add_features(self, mask: int) -> None:
        """common.features |= mask, as intel_iommu_enforce_cache_coherency_ss() sets
        PT_FEAT_VTDSS_FORCE_COHERENCE (iommu.c:3227) before any map: later leaves carry it."""
        self.meta[walk.M_FMT] = _fmt.fmt_word(self.fmt_id, self.features | mask)

    def _sign_erange(self, iova: int) -> bool:
        """pt_check_range() with PT_FEAT_SIGN_EXTEND (pt_iter.h:34-45): a VA with the sign bit set
        needs all-ones above it, which no IOVA below 2^63 has."""
        return self._sign_bit is not None and bool(iova >> self._sign_bit)

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
        if prot & (IOMMU_READ | IOMMU_WRITE):  # else the walker's -EINVAL comes first
            if self.features >> PT_FEAT_VTDSS_FORCE_WRITEABLE & 1 and not prot & IOMMU_WRITE:
                # NS(map_range)(): paddr's -ERANGE, then vtdss_pt_iommu_set_prot() (vtdss.h:235-240)
                return (-errno.ERANGE if paddr >> self.max_oasz_lg2 else -errno.EINVAL), 0
            if size > 0 and self._sign_erange(iova):
                return -errno.ERANGE, 0
        if size and iova + size - 1 <= _I64 and not (iova + size - 1) >> self.max_vasz_lg2:
            self._reserve(iova, size)
        rc, mapped = walk.map_range(self.tables, self.meta, self.free, iova, paddr, size,
                                    bool(prot & IOMMU_READ), bool(prot & IOMMU_WRITE), self.pgsize_bitmap)
        return int(rc), int(mapped)

    def unmap_range(self, iova: int, size: int) -> int:
        if not self._ok(iova, size) or self._sign_erange(iova):
            return 0
        return int(walk.unmap_range(self.tables, self.meta, self.free, iova, size))

    def iova_to_phys(self, iova: int) -> int:
        if not self._ok(iova) or self._sign_erange(iova):
            return 0
        out = np.zeros(1, dtype=np.int64)
        walk.iova_to_phys(self.tables, self.meta, np.array([iova], dtype=np.int64), out)
        return int(out[0])

    def iova_to_phys_many(self, iovas: np.ndarray) -> np.ndarray:
        """Batched lookups: an int64 array of IOVAs in, their physical addresses (0: none) out."""
        iovas = np.ascontiguousarray(iovas, dtype=np.int64)
        out = np.zeros(iovas.shape[0], dtype=np.int64)
        walk.iova_to_phys(self.tables, self.meta, iovas, out)
        if self._sign_bit is not None:
            out[(iovas >> self._sign_bit) != 0] = 0
        return out

    def translate_many(self, iovas: np.ndarray) -> np.ndarray:
        """What the unit's walk finds for a DMA at each IOVA (walk.translate()): rows of (status,
        paddr, prot) with status walk.T_NONE / T_LEAF / T_RANGE. With PT_FEAT_SIGN_EXTEND an IOVA
        with the sign bit set (and not all ones above it, which no IOVA below 2^63 has) is out
        of range, as pt_check_range() has it."""
        iovas = np.ascontiguousarray(iovas, dtype=np.int64)
        out = np.zeros((iovas.shape[0], 3), dtype=np.int64)
        walk.translate(self.tables, self.meta, iovas, out)
        if self._sign_bit is not None:
            bad = (iovas >> self._sign_bit) != 0
            out[bad] = (walk.T_RANGE, 0, 0)
        return out

    def translate(self, iova: int) -> tuple[int, int, int]:
        """translate_many() of one IOVA: (status, paddr, prot); T_RANGE for one no int64 holds."""
        if not self._ok(iova):
            return walk.T_RANGE, 0, 0
        s, pa, prot = self.translate_many(np.array([iova], dtype=np.int64))[0]
        return int(s), int(pa), int(prot)

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty) -> int:
        if not self.dirty_supported:
            return -errno.EOPNOTSUPP
        if not self._ok(iova, size) or (size > 0 and self._sign_erange(iova)):
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
        if not self.dirty_supported:
            return -errno.EOPNOTSUPP
        if not self._ok(iova) or self._sign_erange(iova):
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
        g, f, blocks = self.granule_lg2, int(self.meta[walk.M_FMT]), {}
        for va, level, e in self.dump():
            isz = g + ITEMS_LG2 * level
            lg2 = int(_fmt.entry_lg2sz(f, e, isz, g))
            start = va & ~((1 << lg2) - 1)
            prot = int(_fmt.entry_prot(f, e))
            pa = int(_fmt.entry_oa(f, e, lg2, g))
            old = blocks.get(start)
            blocks[start] = (start, 1 << lg2, pa, prot, bool(_fmt.is_dirty(f, e)) or (old is not None and old[4]))
        return sorted(blocks.values())

    def format_entry(self, e: int, level: int) -> str:
        """An entry as the kernel's fields (AMDv1: PR, NextLevel, OA, IR/IW, D; VT-d second stage
        and x86-64: the spec's names)."""
        if self.fmt_id != AMDV1:
            return _fmt.MODULES[self.fmt_id].describe(e, level)
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


def vtdss(levels: int = 4, max_vasz_lg2: int | None = None, pgsize_bitmap: int | None = None,
          features: int = 1 << PT_FEAT_FLUSH_RANGE) -> IoPageTable:
    """VT-d second stage (fmt/vtdss.py): `levels` 3-5 (top level 2-4, vtdss.h:252), IOVA bits
    max_vasz_lg2 (default: all the levels span, 39/48/57); pgsize_bitmap, if given, masks the
    format's 4K | 2M | 1G as intel-iommu masks it by cap SLLPS (iommu.c:2983-2989)."""
    return _intel_table(VTDSS, _vtdss, "vtdss has 3 to 5 levels", levels, max_vasz_lg2, pgsize_bitmap, features)


def x86_64(levels: int = 4, max_vasz_lg2: int | None = None, pgsize_bitmap: int | None = None,
           features: int = (1 << PT_FEAT_SIGN_EXTEND) | (1 << PT_FEAT_FLUSH_RANGE)) -> IoPageTable:
    """x86-64 long mode / VT-d first stage (fmt/x86_64.py): `levels` 4 or 5 (x86_64.h:245),
    IOVA bits max_vasz_lg2 (default 48 / 57), sign-extended as intel-iommu configures it
    (iommu.c:2866); pgsize_bitmap, if given, masks the format's 4K | 2M | 1G (iommu.c:2888-2891)."""
    return _intel_table(X86_64, _x86_64, "x86_64 has 4 or 5 levels", levels, max_vasz_lg2, pgsize_bitmap,
                        features)


def _intel_table(fmt: int, unit, levels_are: str, levels: int, max_vasz_lg2: int | None,
                 pgsize_bitmap: int | None, features: int) -> IoPageTable:
    """One of intel-iommu's two formats (`unit`: its fmt module): 4 KiB tables at every level,
    IOVA bits all the levels span unless given, the leaf sizes masked by pgsize_bitmap."""
    if not unit.MIN_TOP_LEVEL <= levels - 1 <= unit.MAX_TOP_LEVEL:
        raise ValueError(f"{levels_are}, not {levels}")
    vasz = 12 + ITEMS_LG2 * levels if max_vasz_lg2 is None else max_vasz_lg2
    t = IoPageTable(fmt, levels - 1, 12, vasz, unit.MAX_OUTPUT_ADDRESS_LG2, features=features)
    if pgsize_bitmap is not None:
        t.pgsize_bitmap &= pgsize_bitmap
    return t


def _ffs(x: int) -> int:
    return (x & -x).bit_length()


def intel_paging_domain(cap: int, ecap: int, flags: int = 0, sm: bool = True,
                        superpage: bool = True) -> tuple[int, IoPageTable | None, str | None]:
    """intel_iommu_domain_alloc_paging_flags() (drivers/iommu/intel/iommu.c:3003-3018) for a unit
    with these CAP and ECAP registers: (0 or -errno, the table, "first" or "second" stage).

    sm: intel_iommu_sm (intel_iommu=sm_on); superpage: intel_iommu_superpage (not sp_off).
    The first stage is preferred; it answers -EOPNOTSUPP for any flag but PASID, a legacy-mode
    unit or one without FLTS, and the second stage is tried instead."""
    from model.uapi import B

    smts = sm and bool(ecap >> 43 & 1)  # sm_supported() (intel/iommu.h:531)
    flts, slts, slads, smpwc, nest = (bool(ecap >> b & 1) for b in (47, 46, 45, 48, 26))  # iommu.h:191-207
    mgaw, sagaw = ((cap >> 16) & 0x3F) + 1, (cap >> 8) & 0x1F  # cap_mgaw(), cap_sagaw() (iommu.h:177-178)
    # intel_iommu_domain_alloc_first_stage() (iommu.c:2845-2894)
    if not flags & ~B.IOMMU_HWPT_ALLOC_PASID and smts and flts:
        if mgaw > 48 and cap >> 60 & 1:  # compute_vasz_lg2_fs() (iommu.c:2822-2842), cap_fl5lp_support
            levels, vasz = 5, min(57, mgaw)
        else:
            levels, vasz = 4, min(48, mgaw)
        t = x86_64(levels, vasz)
        if not cap >> 56 & 1:  # cap_fl1gp_support()
            t.pgsize_bitmap &= ~(1 << 30)
        if not superpage:
            t.pgsize_bitmap = 1 << 12
        return 0, t, "first"
    # intel_iommu_domain_alloc_second_stage() (iommu.c:2927-2999)
    if flags & ~(B.IOMMU_HWPT_ALLOC_NEST_PARENT | B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | B.IOMMU_HWPT_ALLOC_PASID):
        return -errno.EOPNOTSUPP, None, None
    if (flags & B.IOMMU_HWPT_ALLOC_NEST_PARENT and not (smts and nest)) or \
            (flags & B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not (smts and slads and smpwc)):
        return -errno.EOPNOTSUPP, None, None
    if smts and not slts:
        return -errno.EOPNOTSUPP, None, None
    if mgaw > 48 and sagaw >= 1 << 3:  # compute_vasz_lg2_ss() (iommu.c:2896-2919)
        top, vasz = 4, min(57, mgaw)
    elif mgaw > 39 and sagaw >= 1 << 2:
        top, vasz = 3 + _ffs(sagaw >> 3), min(48, mgaw)
    elif mgaw > 30 and sagaw >= 1 << 1:
        top, vasz = 2 + _ffs(sagaw >> 2), min(39, mgaw)
    else:
        return -errno.EINVAL, None, None  # pt_iommu_init(): hw_max_vasz_lg2 0 (iommu_pt.h:1298)
    features = 1 << PT_FEAT_FLUSH_RANGE
    if flags & B.IOMMU_HWPT_ALLOC_NEST_PARENT:
        features |= 1 << PT_FEAT_VTDSS_FORCE_WRITEABLE
    if top > _vtdss.MAX_TOP_LEVEL or top < _vtdss.MIN_TOP_LEVEL or \
            (top != _vtdss.MAX_TOP_LEVEL and vasz > 12 + ITEMS_LG2 * (top + 1)):
        return -errno.EOPNOTSUPP, None, None  # vtdss_pt_iommu_fmt_init(), pt_init_common()
    t = vtdss(top + 1, vasz, features=features)
    sllps = (cap >> 34) & 0xF  # cap_super_page_val()
    if not sllps & 1:
        t.pgsize_bitmap &= ~(1 << 21)
    if not sllps & 2:
        t.pgsize_bitmap &= ~(1 << 30)
    if not superpage:
        t.pgsize_bitmap = 1 << 12
    return 0, t, "second"
