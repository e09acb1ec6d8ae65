"""vIOMMU, vDEVICE and HW queue ioctl handlers (drivers/iommu/iommufd/viommu.c).

The model has no devices yet, so no DEVICE, HWPT or vIOMMU object can exist: each handler makes
the kernel's checks in the kernel's order up to the first lookup of such an object, which
answers ENOENT (iommufd_get_object(): unknown ID or another type).
"""
from __future__ import annotations

import errno

from model.limits import U64_MAX, ULONG_MAX
from model.objects import IommufdError, needs_devices
from model.uapi import B


def iommufd_get_viommu(ucmd, id: int):
    """iommufd_get_viommu() (iommufd_private.h): iommufd_get_object(id, IOMMUFD_OBJ_VIOMMU)."""
    return ucmd.ictx.objects.get(id, "VIOMMU")


def iommufd_viommu_alloc_ioctl(ucmd) -> int:
    """iommufd_viommu_alloc_ioctl() (viommu.c:17): flags, or type IOMMU_VIOMMU_TYPE_DEFAULT,
    EOPNOTSUPP (:32; __reserved is never read), then the device (:35) ENOENT. hwpt_id (:60),
    data_len and data_uptr are read only after the driver accepts the type."""
    cmd = ucmd.cmd
    if cmd.flags or cmd.type == B.IOMMU_VIOMMU_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    idev = ucmd.ictx.objects.get(cmd.dev_id, "DEVICE")  # iommufd_get_device()
    raise needs_devices("IOMMU_VIOMMU_ALLOC", idev)


def iommufd_vdevice_alloc_ioctl(ucmd) -> int:
    """iommufd_vdevice_alloc_ioctl() (viommu.c:143): virt_id > ULONG_MAX EINVAL (:154, never on
    a 64-bit kernel), then the vIOMMU (:157) ENOENT, then the device (:161)."""
    cmd = ucmd.cmd
    if cmd.virt_id > ULONG_MAX:
        raise IommufdError(errno.EINVAL)
    viommu = iommufd_get_viommu(ucmd, cmd.viommu_id)
    raise needs_devices("IOMMU_VDEVICE_ALLOC", viommu)


def iommufd_hw_queue_alloc_ioctl(ucmd) -> int:
    """iommufd_hw_queue_alloc_ioctl() (viommu.c:366): flags, or type IOMMU_HW_QUEUE_TYPE_DEFAULT,
    EOPNOTSUPP (:377); length 0 EINVAL (:379); nesting_parent_iova + length - 1 past U64_MAX
    EOVERFLOW (:381); then the vIOMMU (:385) ENOENT. index is the driver's."""
    cmd = ucmd.cmd
    if cmd.flags or cmd.type == B.IOMMU_HW_QUEUE_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.length:
        raise IommufdError(errno.EINVAL)
    if cmd.nesting_parent_iova + cmd.length - 1 > U64_MAX:  # check_add_overflow()
        raise IommufdError(errno.EOVERFLOW)
    viommu = iommufd_get_viommu(ucmd, cmd.viommu_id)
    raise needs_devices("IOMMU_HW_QUEUE_ALLOC", viommu)


def iommufd_viommu_alloc_hwpt_nested(viommu, flags: int, user_data):
    """iommufd_viommu_alloc_hwpt_nested() (hw_pagetable.c): vIOMMU objects come with the vIOMMU
    issue; no vIOMMU can exist before."""
    raise needs_devices("IOMMU_HWPT_ALLOC", viommu)
