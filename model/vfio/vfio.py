"""What the VFIO files share (drivers/vfio/vfio.h, include/linux/vfio.h): struct vfio_device,
struct vfio_device_file, vfio_df_open() / vfio_df_close() (vfio_main.c:575-610) and the info
capability chains (vfio_main.c:1567-1633). Here rather than in vfio_main.py so that the cdev's
calls into them (device_cdev.py) and vfio_main.py's calls into the cdev do not import in a circle.
"""
from __future__ import annotations

import errno
import threading

from model.objects import IommufdError, NotModelled
from model.uapi import B


class VfioDevice:
    """struct vfio_device: the driver's device (a subclass gives its ops as methods) with its
    open count, its iommufd binding and the dev_set lock its opens and attaches take."""

    name = ""
    pasid_attach_ioas = None
    pasid_detach_ioas = None

    def __init__(self, platform, dev):
        self.platform = platform
        self.dev = dev  # the struct device iommufd binds (the platform's PciDev)
        self.open_count = 0
        self.iommufd_device = None
        self.iommufd_attached = False
        self.pasids: set[int] = set()
        self.cdev_opened = False
        self.group = None  # vfio_device->group: the VfioGroup of /dev/vfio/N (model/vfio/group.py)
        self.dev_set_lock = threading.RLock()  # dev_set->lock (and, in the model, the device's state)
        self.mig_ops = self.log_ops = None  # vfio-pci: no migration, no dirty logging
        self.migration_flags = 0


class VfioDeviceFile:
    """struct vfio_device_file: one open of the cdev."""

    def __init__(self, device: VfioDevice):
        self.device = device
        self.access_granted = False
        self.iommufd = None  # the iommufd_ctx bound to (a file reference held)
        self.devid = 0
        self.group = None  # a file of the group path (model/vfio/group.py) has its group; the cdev's none


def vfio_df_open(df: VfioDeviceFile) -> None:
    """vfio_df_open() (vfio_main.c:575): the cdev opens a device once (EINVAL while it is open
    through any file); the first open binds the iommufd and opens the driver's device."""
    device = df.device
    if device.open_count != 0 and df.group is None:
        raise IommufdError(errno.EINVAL)
    device.open_count += 1
    if device.open_count == 1:
        try:
            vfio_df_device_first_open(df)
        except BaseException:
            device.open_count -= 1
            raise


def vfio_df_device_first_open(df: VfioDeviceFile) -> None:
    """vfio_df_device_first_open() (vfio_main.c:523): vfio_df_iommufd_bind() (iommufd.c:21),
    then ops->open_device; a failed open unbinds again."""
    device = df.device
    if df.iommufd is None:  # vfio_device_group_use_iommu(): a type1 container's
        raise NotModelled("VFIO's type1 container (drivers/vfio/container.c)")
    df.devid = device.bind_iommufd(device, df.iommufd)
    try:
        device.open_device()
    except BaseException:
        device.unbind_iommufd(device)
        raise


def vfio_df_close(df: VfioDeviceFile) -> None:
    """vfio_df_close() (vfio_main.c:599): the last close closes the driver's device and unbinds."""
    device = df.device
    if not device.open_count:  # vfio_assert_device_open(): WARN_ON_ONCE
        return
    if device.open_count == 1:
        device.close_device()  # vfio_df_device_last_close() (:558)
        device.unbind_iommufd(device)
    device.open_count -= 1


# -- the capability chains of the info ioctls (vfio_main.c:1567-1633) -------------------------------

def info_cap_add(caps: bytearray, size: int, cap_id: int, version: int) -> int:
    """vfio_info_cap_add(): a zeroed header of ALIGN(size, 8) bytes at the end of the chain;
    returns its offset."""
    size = -(-size // 8) * 8
    at = len(caps)
    caps.extend(bytes(size))
    caps[at:at + 4] = cap_id.to_bytes(2, "little") + version.to_bytes(2, "little")
    tmp = 0
    while int.from_bytes(caps[tmp + 4:tmp + 8], "little"):
        tmp = int.from_bytes(caps[tmp + 4:tmp + 8], "little")
    if tmp != at:
        caps[tmp + 4:tmp + 8] = at.to_bytes(4, "little")
    return at


def info_cap_shift(caps: bytearray, offset: int) -> None:
    """vfio_info_cap_shift(): every next pointer moved by `offset` (where the chain lands)."""
    tmp = 0
    while nxt := int.from_bytes(caps[tmp + 4:tmp + 8], "little"):
        caps[tmp + 4:tmp + 8] = (nxt + offset).to_bytes(4, "little")
        tmp = nxt


def vfio_check_feature(flags: int, argsz: int, supported_ops: int, minsz: int) -> int:
    """vfio_check_feature() (include/linux/vfio.h:271): 1 to go on, 0 for a probe, -EINVAL."""
    if flags & (B.VFIO_DEVICE_FEATURE_GET | B.VFIO_DEVICE_FEATURE_SET) & ~supported_ops:
        return -errno.EINVAL
    if flags & B.VFIO_DEVICE_FEATURE_PROBE:
        return 0
    if not flags & (B.VFIO_DEVICE_FEATURE_GET | B.VFIO_DEVICE_FEATURE_SET):
        return -errno.EINVAL
    if argsz < minsz:
        return -errno.EINVAL
    return 1
