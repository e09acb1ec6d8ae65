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
IOMMU_MMIO = 1 << 4  # e.g. a dma-buf of MMIO (pages.c batch_to_domain(), BATCH_MMIO)

# enum iommu_cap (include/linux/iommu.h): what device_iommu_capable() asks a driver
IOMMU_CAP_CACHE_COHERENCY = "CACHE_COHERENCY"
IOMMU_CAP_ENFORCE_CACHE_COHERENCY = "ENFORCE_CACHE_COHERENCY"
IOMMU_CAP_DIRTY_TRACKING = "DIRTY_TRACKING"
IOMMU_CAP_PCI_ATS_SUPPORTED = "PCI_ATS_SUPPORTED"

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
    """struct iommu_domain with the iommu core's map/unmap over a format's ops.

    type: IOMMU_DOMAIN_UNMANAGED (paging) or NESTED (no page table: `ops` is None); owner: the
    iommu_ops of the driver that made it (the mock driver's, for every domain the model makes);
    dirty_ops: the driver's struct iommu_dirty_ops (set_dirty_tracking), or None; iopf_handler:
    a fault object's handler is installed (IOMMU_HWPT_FAULT_ID_VALID)."""

    def __init__(self, ops: DomainOps | None, type: str = "UNMANAGED", owner=None, dirty_ops=None):
        self.ops = ops
        self.type = type
        self.owner = owner
        self.dirty_ops = dirty_ops
        self.iopf_handler = None
        self.iommufd_hwpt = None
        self.dops = None  # the driver's iommu_domain_ops beyond the page table (set_dev_pasid, ...)

    @property
    def pgsize_bitmap(self) -> int:
        return self.ops.pgsize_bitmap

    @property
    def aperture_start(self) -> int:
        return self.ops.aperture_start

    @property
    def aperture_end(self) -> int:
        return self.ops.aperture_end

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
