"""The iommu_domain io_pagetable fills and unmaps through (include/linux/iommu.h).

Two layers, as in the kernel:
- DomainOps, below the seam: a page-table format's map_pages / unmap_pages / iova_to_phys /
  read_and_clear_dirty with iommu_domain_ops' argument conventions. They never raise: map
  returns (0 or -errno, bytes mapped), unmap the bytes unmapped, iova_to_phys 0 for nothing.
  (Formats will be numba kernels, which cannot raise.)
- IommuDomain, above it: what drivers/iommu/iommu.c does with them (iommu_map() splits a range
  into the largest page sizes iommu_pgsize() allows and undoes a partial map; iommu_unmap()),
  turning status codes into IommufdError.
"""
from __future__ import annotations

import errno
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
    """iommu_domain_ops of a page-table format (status codes, never an exception)."""

    pgsize_bitmap: int  # the page sizes the format can map, as the domain advertises them
    aperture_start: int  # domain->geometry
    aperture_end: int

    def map_pages(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int) -> tuple[int, int]: ...

    def unmap_pages(self, iova: int, pgsize: int, pgcount: int) -> int: ...

    def iova_to_phys(self, iova: int) -> int: ...

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty: DirtyBitmap) -> int: ...


def iommu_pgsize(pgsize_bitmap: int, iova: int, paddr: int, size: int) -> tuple[int, int]:
    """iommu_pgsize() (drivers/iommu/iommu.c): the largest page size the alignment of iova | paddr
    and the size allow, and how many of it to map before the next larger size could be used."""
    addr_merge = paddr | iova
    pgsizes = pgsize_bitmap & ((2 << (size.bit_length() - 1)) - 1)  # GENMASK(__fls(size), 0)
    if addr_merge:
        pgsizes &= ((addr_merge & -addr_merge) << 1) - 1  # GENMASK(__ffs(addr_merge), 0)
    pgsize = 1 << (pgsizes.bit_length() - 1)  # BUG_ON(!pgsizes): iommu_map() checked alignment
    bigger = pgsize_bitmap & ~((pgsize << 1) - 1)
    if bigger:
        pgsize_next = bigger & -bigger
        # a larger page only helps if iova and paddr sit at the same offset inside it
        if not (iova ^ paddr) & (pgsize_next - 1):
            offset = pgsize_next - (addr_merge & (pgsize_next - 1))
            if offset + pgsize_next <= size:
                size = offset
    return pgsize, size // pgsize


class IommuDomain:
    """struct iommu_domain with the iommu core's map/unmap over a format's ops."""

    def __init__(self, ops: DomainOps):
        self.ops = ops

    @property
    def pgsize_bitmap(self) -> int:
        return self.ops.pgsize_bitmap

    def map(self, iova: int, paddr: int, size: int, prot: int) -> None:
        """iommu_map(): EINVAL unless iova, paddr and size are aligned to the smallest page size;
        on a failure part way, what was mapped is unmapped again."""
        min_pagesz = self.ops.pgsize_bitmap & -self.ops.pgsize_bitmap
        if (iova | paddr | size) & (min_pagesz - 1) or not size:
            raise IommufdError(errno.EINVAL)
        mapped = 0
        while mapped < size:
            pgsize, count = iommu_pgsize(self.ops.pgsize_bitmap, iova + mapped, paddr + mapped, size - mapped)
            rc, done = self.ops.map_pages(iova + mapped, paddr + mapped, pgsize, count, prot)
            mapped += done
            if rc:
                if mapped:
                    self.unmap(iova, mapped)
                raise IommufdError(-rc)

    def unmap(self, iova: int, size: int) -> int:
        """iommu_unmap(): unmap_pages() in iommu_pgsize() steps until it unmaps nothing; the bytes unmapped."""
        unmapped = 0
        while unmapped < size:
            pgsize, count = iommu_pgsize(self.ops.pgsize_bitmap, iova + unmapped, iova + unmapped, size - unmapped)
            done = self.ops.unmap_pages(iova + unmapped, pgsize, count)
            if not done:
                break
            unmapped += done
        return unmapped

    def iova_to_phys(self, iova: int) -> int:
        return self.ops.iova_to_phys(iova)

    def read_and_clear_dirty(self, iova: int, size: int, flags: int, dirty: DirtyBitmap) -> None:
        rc = self.ops.read_and_clear_dirty(iova, size, flags, dirty)
        if rc:
            raise IommufdError(-rc)
