"""Devices (drivers/iommu/iommufd/device.c): bind, attach, replace, and IOMMU_GET_HW_INFO.

The model has no devices yet (the mock IOMMU will bring them): no DEVICE object can exist, and
handlers make the kernel's checks in its order up to the first lookup of one, which answers
ENOENT (iommufd_get_object(): unknown ID or another type).
"""
from __future__ import annotations

import errno

from model.objects import IommufdError, NotModelled
from model.uapi import B


def needs_devices(name: str, obj) -> NotModelled:
    """Past a lookup that found a DEVICE / HWPT / vIOMMU: nothing the model can have yet."""
    return NotModelled(f"{name} on a {obj.type} object")


def iommufd_get_device(ucmd, id: int):
    """iommufd_get_device() (iommufd_private.h): iommufd_get_object(id, IOMMUFD_OBJ_DEVICE)."""
    return ucmd.ictx.objects.get(id, "DEVICE")


def iommufd_get_hw_info(ucmd) -> int:
    """iommufd_get_hw_info() (device.c:1545): flags other than INPUT_TYPE EOPNOTSUPP (:1557),
    __reserved[0..2] EOPNOTSUPP (:1559), in_data_type cleared without INPUT_TYPE (:1564, in the
    kernel's copy only), then the device (:1566) ENOENT. data_uptr / data_len are used only
    once the device is found: nothing is written to user memory before."""
    cmd = ucmd.cmd
    if cmd.flags & ~B.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        raise IommufdError(errno.EOPNOTSUPP)
    if any(cmd.__reserved):
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.flags & B.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        cmd.in_data_type = B.IOMMU_HW_INFO_TYPE_DEFAULT
    idev = iommufd_get_device(ucmd, cmd.dev_id)
    raise needs_devices("IOMMU_GET_HW_INFO", idev)
