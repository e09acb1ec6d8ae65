"""VFIO's iommufd glue (drivers/vfio/iommufd.c): the "physical" ops a driver of a real device
uses (vfio_pci_ops: bind, unbind, attach/detach of the RID and of PASIDs), over the iommufd core
(model/device.py) as drivers/vfio/iommufd.c calls it. Each call into the core runs under the
context's lock, as the model's iommufd ioctls do (the kernel's core takes its own locks).

vdev->pasids is the ida of PASIDs this device attached (ida_alloc_range(pasid, pasid): ENOSPC
for a PASID past INT_MAX).
"""
from __future__ import annotations

import errno

from model.device import (IOMMU_NO_PASID, iommufd_device_attach, iommufd_device_bind, iommufd_device_detach,
                          iommufd_device_replace, iommufd_device_unbind)
from model.objects import IommufdError


def _locked(ictx, fn, *args):
    with ictx.lock:
        return fn(*args)


def vfio_iommufd_physical_bind(vdev, ictx) -> int:
    """vfio_iommufd_physical_bind() (iommufd.c:117): iommufd_device_bind(); the device's ID."""
    idev = _locked(ictx, iommufd_device_bind, ictx, vdev.dev)
    vdev.iommufd_device = idev
    hw = getattr(vdev, "hw", None)
    if hw is not None:  # the frames this context's domains map are in its accounts' memory
        hw.bus.memory = ictx.accounts.memory
    vdev.pasids = set()  # ida_init()
    return idev.id


def vfio_iommufd_physical_unbind(vdev) -> None:
    """vfio_iommufd_physical_unbind() (iommufd.c:131): every PASID detached (lowest first), the
    RID detached, then iommufd_device_unbind()."""
    idev = vdev.iommufd_device
    with idev.ictx.lock:
        while vdev.pasids:
            pasid = min(vdev.pasids)  # ida_find_first()
            iommufd_device_detach(idev, pasid)
            vdev.pasids.discard(pasid)
        if vdev.iommufd_attached:
            iommufd_device_detach(idev, IOMMU_NO_PASID)
            vdev.iommufd_attached = False
        iommufd_device_unbind(idev)
    vdev.iommufd_device = None


def vfio_iommufd_physical_attach_ioas(vdev, pt_id: int) -> int:
    """vfio_iommufd_physical_attach_ioas() (iommufd.c:151): replace when attached, else attach;
    the pt_id written back (the automatic HWPT's for an IOAS)."""
    idev = vdev.iommufd_device
    if idev is None:  # WARN_ON(!vdev->iommufd_device)
        raise IommufdError(errno.EINVAL)
    fn = iommufd_device_replace if vdev.iommufd_attached else iommufd_device_attach
    pt_id = _locked(idev.ictx, fn, idev, IOMMU_NO_PASID, pt_id)
    vdev.iommufd_attached = True
    return pt_id


def vfio_iommufd_physical_detach_ioas(vdev) -> None:
    """vfio_iommufd_physical_detach_ioas() (iommufd.c:173): nothing when not attached."""
    idev = vdev.iommufd_device
    if idev is None or not vdev.iommufd_attached:
        return
    _locked(idev.ictx, iommufd_device_detach, idev, IOMMU_NO_PASID)
    vdev.iommufd_attached = False


def vfio_iommufd_physical_pasid_attach_ioas(vdev, pasid: int, pt_id: int) -> int:
    """vfio_iommufd_physical_pasid_attach_ioas() (iommufd.c:185): a PASID this device attached
    is replaced; a new one is allocated in the ida (ENOSPC past INT_MAX) and attached, and
    given back if the attach fails."""
    idev = vdev.iommufd_device
    if idev is None:
        raise IommufdError(errno.EINVAL)
    if pasid in vdev.pasids:  # ida_exists()
        return _locked(idev.ictx, iommufd_device_replace, idev, pasid, pt_id)
    if pasid > 0x7FFFFFFF:  # ida_alloc_range(): (int)min < 0
        raise IommufdError(errno.ENOSPC)
    vdev.pasids.add(pasid)
    try:
        return _locked(idev.ictx, iommufd_device_attach, idev, pasid, pt_id)
    except BaseException:
        vdev.pasids.discard(pasid)
        raise


def vfio_iommufd_physical_pasid_detach_ioas(vdev, pasid: int) -> None:
    """vfio_iommufd_physical_pasid_detach_ioas() (iommufd.c:211): only a PASID this device
    attached."""
    idev = vdev.iommufd_device
    if idev is None or pasid not in vdev.pasids:
        return
    _locked(idev.ictx, iommufd_device_detach, idev, pasid)
    vdev.pasids.discard(pasid)
