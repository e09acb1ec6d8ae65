"""A plain-Python IO page table with generic_pt's rules: the oracle the numba walker is held to.

No levels and no table memory: a dict of mapped blocks by IOVA, each (paddr, size, prot, the
dirty items), and the same geometry (granule, top level, IOVA size, pgsize_bitmap) to pick page
sizes and to know a block's item size. The rules are model/pt/walk.py's docstring, written the
simplest way; model/tests/test_pagetable.py drives both with the same random operations.

What the formats differ in beyond their geometry is FORMATS below, written from the kernel's
format headers (not from model/pt/fmt/): the prot a leaf can hold, and whether the format has
dirty tracking. The features the oracle knows are PT_FEAT_SIGN_EXTEND (pt_iter.h:28-46: a range
starting at or above 2^(vasz - 1) is -ERANGE) and PT_FEAT_VTDSS_FORCE_WRITEABLE (read-only maps
are -EINVAL, vtdss.h:235-240).
"""
from __future__ import annotations

import bisect
import errno
from typing import Callable, NamedTuple

from model.domain import IOMMU_DIRTY_NO_CLEAR, IOMMU_READ, IOMMU_WRITE

ITEMS_LG2 = 9


class FormatRules(NamedTuple):
    stored_prot: Callable[[int], int]  # the prot a leaf mapped with `prot` grants
    dirty: bool  # the format defines pt_entry_is_write_dirty() (pt_fmt_defaults.h:61-84)


FORMATS = {
    # amdv1.h amdv1pt_iommu_set_prot(): IR and IW as asked
    "amdv1": FormatRules(lambda prot: prot & (IOMMU_READ | IOMMU_WRITE), True),
    # vtdss.h:228-231: R and W as asked
    "vtdss": FormatRules(lambda prot: prot & (IOMMU_READ | IOMMU_WRITE), True),
    # x86_64.h:222-224: every present entry reads (no read bit, SDM 4.6); R/W only with IOMMU_WRITE;
    # no pt_entry_is_write_dirty()
    "x86_64": FormatRules(lambda prot: IOMMU_READ | (prot & IOMMU_WRITE), False),
}


def best_pgsize_lg2(pgsize_bitmap: int, va: int, last: int, oa: int) -> int:
    """pt_compute_best_pgsize(): the largest page size va and oa are aligned to that fits the length."""
    length = last - va + 1
    mask = va | oa | (1 << (length.bit_length() - 1))
    best = (mask & -mask).bit_length() - 1
    bm = pgsize_bitmap & ((2 << best) - 1)
    return bm.bit_length() - 1 if bm else -1


class ReferencePageTable:
    def __init__(self, granule_lg2: int, top_level: int, max_vasz_lg2: int, max_oasz_lg2: int,
                 pgsize_bitmap: int, aperture: tuple[int, int] | None = None, fmt: str = "amdv1",
                 sign_extend: bool = False, force_writeable: bool = False):
        self.rules = FORMATS[fmt]
        self.sign_extend, self.force_writeable = sign_extend, force_writeable
        self.granule_lg2, self.top_level = granule_lg2, top_level
        self.max_vasz_lg2, self.max_oasz_lg2 = max_vasz_lg2, max_oasz_lg2
        self.pgsize_bitmap = pgsize_bitmap
        self.aperture_start, self.aperture_end = aperture or (0, (1 << (max_vasz_lg2 - sign_extend)) - 1)
        self.blocks: dict[int, list] = {}  # start -> [paddr, lg2, prot, set of dirty item numbers]
        self._starts: list[int] = []

    def _isz(self, lg2: int) -> int:
        """The item size of the level a leaf of 2^lg2 lives at."""
        level = min((lg2 - self.granule_lg2) // ITEMS_LG2, self.top_level)
        return self.granule_lg2 + ITEMS_LG2 * level

    def _covering(self, va: int):
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0:
            start = self._starts[i]
            if va < start + (1 << self.blocks[start][1]):
                return start
        return None

    def _meets(self, first: int, last: int) -> bool:
        if self._covering(first) is not None:
            return True
        i = bisect.bisect_right(self._starts, first)
        return i < len(self._starts) and self._starts[i] <= last

    def _check_range(self, va: int, length: int) -> int:
        if length <= 0:
            return -errno.EINVAL
        last = va + length - 1
        if va < 0 or last >> self.max_vasz_lg2 or self._sign_bad(va):
            return -errno.ERANGE
        return 0

    def _sign_bad(self, va: int) -> bool:
        """PT_FEAT_SIGN_EXTEND: a VA with bit vasz - 1 set needs all ones above it (never, below 2^63)."""
        return self.sign_extend and bool(va >> (self.max_vasz_lg2 - 1))

    def map_range(self, iova: int, paddr: int, size: int, prot: int) -> tuple[int, int]:
        if not prot & (IOMMU_READ | IOMMU_WRITE):
            return -errno.EINVAL, 0
        if self.force_writeable and not prot & IOMMU_WRITE:  # the paddr check comes first
            return (-errno.ERANGE if paddr < 0 or paddr >> self.max_oasz_lg2 else -errno.EINVAL), 0
        if rc := self._check_range(iova, size):
            return rc, 0
        if paddr < 0 or paddr >> self.max_oasz_lg2:
            return -errno.ERANGE, 0
        last, mapped = iova + size - 1, 0
        while iova <= last:
            lg2 = best_pgsize_lg2(self.pgsize_bitmap, iova, last, paddr)
            if lg2 < 0:
                return -errno.ENXIO, mapped
            if self._meets(iova, iova + (1 << lg2) - 1):
                return -errno.EADDRINUSE, mapped
            self.blocks[iova] = [paddr, lg2, self.rules.stored_prot(prot), set()]
            bisect.insort(self._starts, iova)
            iova, paddr, mapped = iova + (1 << lg2), paddr + (1 << lg2), mapped + (1 << lg2)
        return 0, mapped

    def _remove(self, start: int) -> None:
        del self.blocks[start]
        self._starts.pop(bisect.bisect_left(self._starts, start))

    def unmap_range(self, iova: int, size: int) -> int:
        if self._check_range(iova, size):
            return 0
        last, pos, unmapped = iova + size - 1, iova, 0
        while pos <= last:
            start = self._covering(pos)
            if start is None or start != pos:  # a hole, or inside a leaf
                break
            lg2 = self.blocks[start][1]
            self._remove(start)
            unmapped += 1 << lg2
            pos = start + (1 << lg2)
        return unmapped

    def iova_to_phys(self, iova: int) -> int:
        if iova < 0 or iova >> self.max_vasz_lg2 or self._sign_bad(iova):
            return 0
        start = self._covering(iova)
        return 0 if start is None else self.blocks[start][0] + (iova - start)

    def translate(self, iova: int) -> tuple[int, int, int]:
        """The oracle of walk.translate(): (status, paddr, prot) with status 0 nothing mapped, 1 a
        leaf (the prot FORMATS says it stores), 2 past the table's IOVA bits (or, sign-extended,
        with the sign bit set)."""
        if iova < 0 or iova >> self.max_vasz_lg2 or self._sign_bad(iova):
            return 2, 0, 0
        start = self._covering(iova)
        if start is None:
            return 0, 0, 0
        pa, _lg2, prot, _dirty = self.blocks[start]
        return 1, pa + (iova - start), prot

    def set_dirty(self, iova: int) -> int:
        if not self.rules.dirty:
            return -errno.EOPNOTSUPP
        if iova < 0 or iova >> self.max_vasz_lg2 or self._sign_bad(iova):
            return -errno.ERANGE
        start = self._covering(iova)
        if start is None:
            return -errno.ENOENT
        _pa, lg2, _prot, dirty = self.blocks[start]
        dirty.add((iova - start) >> self._isz(lg2))
        return 0

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty) -> int:
        if not self.rules.dirty:
            return -errno.EOPNOTSUPP
        if rc := self._check_range(iova, size):
            return rc
        last = iova + size - 1
        i = max(0, bisect.bisect_right(self._starts, iova) - 1)
        while i < len(self._starts) and self._starts[i] <= last:
            start = self._starts[i]
            _pa, lg2, _prot, items = self.blocks[start]
            i += 1
            if start + (1 << lg2) <= iova or not items:
                continue
            pos = max(iova, start)
            isz = self._isz(lg2)
            if lg2 == isz:
                length = 1 << isz
            else:  # record_dirty(): min(the block's last index, the end index in this table) - index
                idx, block_last = pos >> isz, (start >> isz) + (1 << (lg2 - isz)) - 1
                same_table = last >> (isz + ITEMS_LG2) == pos >> (isz + ITEMS_LG2)
                end = (last >> isz) + 1 if same_table else ((pos >> (isz + ITEMS_LG2)) + 1) << ITEMS_LG2
                length = (min(block_last, end) - idx) << isz
            dirty.record(pos, length)
            if not flags & IOMMU_DIRTY_NO_CLEAR:
                items.clear()
        return 0

    def leaves(self) -> list[tuple[int, int, int, int, bool]]:
        return [(s, 1 << b[1], b[0], b[2], bool(b[3])) for s, b in sorted(self.blocks.items())]
