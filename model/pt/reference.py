"""A plain-Python IO page table: the oracle for the page-table formats (no numba, no levels).

Entries are kept per mapped page, keyed by IOVA: (paddr, page size, prot, dirty). It implements
model.domain.DomainOps with its conventions (status codes, never an exception):
- map_pages maps pgcount pages of pgsize; -EEXIST over a present entry (what generic_pt's
  map_range answers), -EINVAL outside the aperture or for a size not in pgsize_bitmap;
- unmap_pages removes whole entries from iova on and returns their total size; it stops at the
  first IOVA with nothing mapped (an entry larger than asked is removed whole, as a format
  that cannot split it does);
- read_and_clear_dirty reports each dirty entry intersecting the range and clears its bit
  unless IOMMU_DIRTY_NO_CLEAR.
"""
from __future__ import annotations

import bisect
import errno

from model.domain import IOMMU_DIRTY_NO_CLEAR


class ReferencePageTable:
    def __init__(self, pgsize_bitmap: int, aperture_start: int = 0, aperture_end: int = (1 << 64) - 1):
        self.pgsize_bitmap = pgsize_bitmap
        self.aperture_start = aperture_start
        self.aperture_end = aperture_end
        self.entries: dict[int, list] = {}  # iova -> [paddr, pgsize, prot, dirty]
        self._starts: list[int] = []  # sorted keys of entries

    def _covering(self, iova: int):
        i = bisect.bisect_right(self._starts, iova) - 1
        if i >= 0:
            start = self._starts[i]
            e = self.entries[start]
            if iova < start + e[1]:
                return start, e
        return None

    def _intersects(self, first: int, last: int) -> bool:
        if self._covering(first) is not None:
            return True
        i = bisect.bisect_right(self._starts, first)
        return i < len(self._starts) and self._starts[i] <= last

    def map_pages(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int) -> tuple[int, int]:
        if not pgsize & self.pgsize_bitmap or pgsize & (pgsize - 1) or (iova | paddr) & (pgsize - 1):
            return -errno.EINVAL, 0
        done = 0
        for k in range(pgcount):
            va = iova + k * pgsize
            if va < self.aperture_start or va + pgsize - 1 > self.aperture_end:
                return -errno.EINVAL, done
            if self._intersects(va, va + pgsize - 1):
                return -errno.EEXIST, done
            self.entries[va] = [paddr + k * pgsize, pgsize, prot, False]
            bisect.insort(self._starts, va)
            done += pgsize
        return 0, done

    def unmap_pages(self, iova: int, pgsize: int, pgcount: int) -> int:
        end = iova + pgsize * pgcount
        va, unmapped = iova, 0
        while va < end:
            hit = self._covering(va)
            if hit is None:
                break
            start, e = hit
            del self.entries[start]
            self._starts.pop(bisect.bisect_left(self._starts, start))
            unmapped += e[1]
            va = start + e[1]
        return unmapped

    def iova_to_phys(self, iova: int) -> int:
        hit = self._covering(iova)
        return 0 if hit is None else hit[1][0] + (iova - hit[0])

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty) -> int:
        i = max(0, bisect.bisect_right(self._starts, iova) - 1)
        while i < len(self._starts) and self._starts[i] < iova + size:
            start = self._starts[i]
            e = self.entries[start]
            if start + e[1] > iova and e[3]:
                dirty.record(start, e[1])
                if not flags & IOMMU_DIRTY_NO_CLEAR:
                    e[3] = False
            i += 1
        return 0

    def set_dirty(self, iova: int) -> bool:
        """A device write through the table: the entry's dirty bit (False: nothing mapped)."""
        hit = self._covering(iova)
        if hit is None:
            return False
        hit[1][3] = True
        return True
