"""Helpers the iommufd core exports to IOMMU drivers (drivers/iommu/iommufd/driver.c): object
dependencies, mmap regions a driver registers for user space, vDEVICE lookups, and vIOMMU
event reports.

The context's mmap regions (ictx->mt_mmap, a maple tree with MT_FLAGS_ALLOC_RANGE) are an
`MmapTree`: mtree_alloc_range() gives the lowest free range of the asked length from PAGE_SIZE
up, so the first region of a context is at offset PAGE_SIZE and a freed range is reused.
"""
from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field

from model.limits import PAGE_SHIFT, PAGE_SIZE, ULONG_MAX
from model.objects import IommufdError, IommufdObject



def iommufd_object_depend(dependent: IommufdObject, depended: IommufdObject) -> None:
    """_iommufd_object_depend() (driver.c:8): EINVAL for itself or another type; the depended
    object gains a user (so IOMMU_DESTROY of it is EBUSY until undepend)."""
    if dependent is depended or dependent.type != depended.type:
        raise IommufdError(errno.EINVAL)
    depended.refs += 1


def iommufd_object_undepend(dependent: IommufdObject, depended: IommufdObject) -> None:
    """_iommufd_object_undepend() (driver.c:23)."""
    depended.refs -= 1


@dataclass(eq=False)
class IommufdMmap:
    """struct iommufd_mmap: a region of `length` bytes at physical `mmio_addr` that its owner
    object registered; user space maps it at file offset vm_pgoff << PAGE_SHIFT. `mapped`
    counts the VMAs mapping it per process (each holds a user of the owner: vma open/close)."""

    owner: IommufdObject
    length: int
    mmio_addr: int
    vm_pgoff: int = 0
    mapped: dict[int, int] = field(default_factory=dict)


class MmapTree:
    """ictx->mt_mmap: start offset -> region, allocated as mtree_alloc_range() does."""

    def __init__(self):
        self._starts: list[int] = []
        self._regions: dict[int, IommufdMmap] = {}

    def alloc_range(self, immap: IommufdMmap, size: int, lo: int, hi: int) -> int:
        """mtree_alloc_range(): the lowest start >= lo of a free gap of `size` bytes ending at or
        below hi; EBUSY when none."""
        start = lo
        for s in self._starts:
            if s - start >= size:
                break
            start = max(start, s + self._regions[s].length)
        if start + size - 1 > hi:
            raise IommufdError(errno.EBUSY)
        bisect.insort(self._starts, start)
        self._regions[start] = immap
        return start

    def load(self, offset: int) -> IommufdMmap | None:
        """mtree_load(): the region containing byte `offset`, if any."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return None
        immap = self._regions[self._starts[i]]
        return immap if offset < self._starts[i] + immap.length else None

    def erase(self, offset: int) -> IommufdMmap | None:
        immap = self._regions.pop(offset, None)
        if immap is not None:
            self._starts.remove(offset)
        return immap

    def regions(self) -> list[IommufdMmap]:
        return [self._regions[s] for s in self._starts]

    @property
    def mapped(self) -> bool:
        """Whether any region has a VMA (the context then re-counts them at each ioctl)."""
        return any(r.mapped for r in self._regions.values())


def iommufd_alloc_mmap(ictx, owner: IommufdObject, mmio_addr: int, length: int) -> int:
    """_iommufd_alloc_mmap() (driver.c:39): EINVAL for an unaligned address or a length that is
    0 or unaligned; the region's offset, skipping the first page so that 0 is never one."""
    if mmio_addr % PAGE_SIZE or not length or length % PAGE_SIZE:
        raise IommufdError(errno.EINVAL)
    immap = IommufdMmap(owner, length, mmio_addr)
    startp = ictx.mt_mmap.alloc_range(immap, length, PAGE_SIZE, ULONG_MAX)
    immap.vm_pgoff = startp >> PAGE_SHIFT
    return startp


def iommufd_destroy_mmap(ictx, owner: IommufdObject, offset: int) -> None:
    """_iommufd_destroy_mmap() (driver.c:75): the region is gone (mappings made of it stay)."""
    immap = ictx.mt_mmap.erase(offset)
    assert immap is not None and immap.owner is owner, "WARN_ON_ONCE: destroy of a region not the owner's"


def iommufd_viommu_find_dev(viommu, vdev_id: int):
    """iommufd_viommu_find_dev() (driver.c:94): the device of the vDEVICE at virt_id, or None."""
    vdev = viommu.vdevs.get(vdev_id)
    return vdev.idev.dev if vdev is not None else None


def iommufd_viommu_get_vdev_id(viommu, dev) -> int:
    """iommufd_viommu_get_vdev_id() (driver.c:107): the virt_id of `dev`'s vDEVICE on this
    vIOMMU (the first in index order); ENOENT when it has none there."""
    for virt_id in sorted(viommu.vdevs):
        vdev = viommu.vdevs[virt_id]
        if vdev is not None and vdev.idev.dev is dev:
            return virt_id
    raise IommufdError(errno.ENOENT)


def iommufd_viommu_report_event(viommu, type: int, event_data: bytes) -> None:
    """iommufd_viommu_report_event() (driver.c:135): to the vIOMMU's event queue of `type`
    (EOPNOTSUPP without one); a full queue records the loss instead (not an error)."""
    if not event_data:
        raise IommufdError(errno.EINVAL)  # WARN_ON_ONCE
    veventq = viommu.find_veventq(type)
    if veventq is None:
        raise IommufdError(errno.EOPNOTSUPP)
    veventq.report(event_data)
