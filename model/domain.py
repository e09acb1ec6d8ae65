"""The iommu_domain io_pagetable fills and unmaps through (include/linux/iommu.h).

Two layers, as in the kernel:
- DomainOps, below the seam: a page table's ops as generic_pt gives them to the iommu core in
  Linux 7.2 (struct pt_iommu_ops: map_range, unmap_range, iova_to_phys, read_and_clear_dirty).
  They never raise: map_range returns (0 or -errno, bytes mapped), unmap_range the bytes
  unmapped, iova_to_phys 0 for nothing. model/pt/table.py (numba) and model/pt/reference.py
  (plain Python) implement it.
- IommuDomain, above it: what drivers/iommu/iommu.c does with them (iommu_map_nosync() unmaps
  what a failed map_range left; iommu_unmap()), turning statuses into IommufdError.
"""
from __future__ import annotations

from typing import Protocol

from model.objects import IommufdError

# include/linux/iommu.h: the prot bits iommu_map() takes
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2

# include/linux/iommu.h: read_and_clear_dirty() flag: read the dirty bits, do not clear them
IOMMU_DIRTY_NO_CLEAR = 1 << 0


class DirtyBitmap(Protocol):
    """struct iommu_dirty_bitmap: where read_and_clear_dirty() reports dirty IOVA ranges."""

    def record(self, iova: int, length: int) -> None: ...


class DomainOps(Protocol):
    """struct pt_iommu_ops of a page table (statuses, never an exception)."""

    pgsize_bitmap: int  # the page sizes the table maps, as the domain advertises them
    aperture_start: int  # domain->geometry
    aperture_end: int

    def map_range(self, iova: int, paddr: int, size: int, prot: int) -> tuple[int, int]: ...

    def unmap_range(self, iova: int, size: int) -> int: ...

    def iova_to_phys(self, iova: int) -> int: ...

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty: DirtyBitmap) -> int: ...


class IommuDomain:
    """struct iommu_domain with the iommu core's map/unmap over a format's ops."""

    def __init__(self, ops: DomainOps):
        self.ops = ops

    @property
    def pgsize_bitmap(self) -> int:
        return self.ops.pgsize_bitmap

    def map(self, iova: int, paddr: int, size: int, prot: int) -> None:
        """iommu_map() -> iommu_map_nosync(): map_range(); on a failure what it mapped is unmapped."""
        rc, mapped = self.ops.map_range(iova, paddr, size, prot)
        if rc:
            if mapped:
                self.ops.unmap_range(iova, mapped)
            raise IommufdError(-rc)

    def unmap(self, iova: int, size: int) -> int:
        """iommu_unmap() -> unmap_range(): the bytes unmapped."""
        return self.ops.unmap_range(iova, size)

    def iova_to_phys(self, iova: int) -> int:
        return self.ops.iova_to_phys(iova)

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty: DirtyBitmap) -> None:
        rc = self.ops.read_and_clear_dirty(iova, size, flags, dirty)
        if rc:
            raise IommufdError(-rc)
