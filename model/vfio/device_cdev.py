"""The VFIO device cdev (drivers/vfio/device_cdev.c): open of /dev/vfio/devices/vfioN, and the
ioctls only a cdev file has: VFIO_DEVICE_BIND_IOMMUFD, ATTACH_IOMMUFD_PT, DETACH_IOMMUFD_PT.

Opening never fails for a registered device and any number of files may be open; access is
granted by a bind, and only one file at a time can bind (vfio_df_open(): EINVAL while the device
is open through another file); a bind is EBUSY while the device's group is open as /dev/vfio/N. Before a bind every other ioctl, read, write and mmap is EINVAL
(vfio_main.c:1357, 1405, 1422, 1437).
"""
from __future__ import annotations

import ctypes
import errno

from model.file import iommufd_ctx_from_fd, iommufd_ctx_put
from model.objects import IommufdError
from model.uaccess import copy_from_user, copy_struct_from_user, copy_to_user
from model.uapi import B
from model.vfio.vfio import VfioDeviceFile, vfio_df_close, vfio_df_open


def vfio_device_fops_cdev_open(device) -> VfioDeviceFile:
    """vfio_device_fops_cdev_open() (device_cdev.c:23): a new device file, no access yet."""
    return VfioDeviceFile(device)


def vfio_device_block_group(device) -> None:
    """vfio_device_block_group() (group.c:384): EBUSY while the device's group is open through
    /dev/vfio/N (model/vfio/group.py); else the group counts a cdev open (and refuses to open)."""
    group = getattr(device, "group", None)
    if group is None:
        return
    with group.lock:
        if group.opened_file is not None:
            raise IommufdError(errno.EBUSY)
        group.cdev_device_open_cnt += 1


def vfio_device_unblock_group(device) -> None:
    """vfio_device_unblock_group() (group.c:402)."""
    group = getattr(device, "group", None)
    if group is not None:
        with group.lock:
            group.cdev_device_open_cnt -= 1


def vfio_df_check_token(device, mem, bind) -> None:
    """vfio_df_check_token() (device_cdev.c:63) with vfio_pci_core_match_token_uuid()
    (vfio_pci_core.c:1920): a function that is neither an SR-IOV PF nor a VF (the captured
    ones) takes no token: the UUID is read (EFAULT) and refused (EINVAL)."""
    if not bind.flags & B.VFIO_DEVICE_BIND_FLAG_TOKEN:
        return
    copy_from_user(mem, bind.token_uuid_ptr, 16)
    raise IommufdError(errno.EINVAL)


def vfio_df_ioctl_bind_iommufd(df: VfioDeviceFile, task, arg: int) -> int:
    """vfio_df_ioctl_bind_iommufd() (device_cdev.c:83): get_user(argsz) (EFAULT), EINVAL below
    offsetofend(out_devid), copy_struct_from_user() (E2BIG, EFAULT), EINVAL for a negative
    iommufd or an unknown flag; then under the dev_set lock: EINVAL when this file already bound,
    the token, iommufd_ctx_from_fd() (EBADF, EBADFD), vfio_df_open() (EINVAL when another file
    has the device open; iommufd_device_bind()'s errors), and out_devid written (EFAULT undoes
    it all). The file keeps its reference on the iommufd until it is released."""
    device = df.device
    mem = task.mm
    minsz = B.vfio_device_bind_iommufd.out_devid.offset + 4
    head = mem.read_partial(arg, 4)
    if len(head) < 4:
        raise IommufdError(errno.EFAULT)
    user_size = int.from_bytes(head, "little")
    if user_size < minsz:
        raise IommufdError(errno.EINVAL)
    bind = copy_struct_from_user(mem, B.vfio_device_bind_iommufd, arg, user_size)
    if bind.iommufd < 0 or bind.flags & ~B.VFIO_DEVICE_BIND_FLAG_TOKEN:
        raise IommufdError(errno.EINVAL)
    if df.group is not None:
        raise IommufdError(errno.EINVAL)
    vfio_device_block_group(device)
    try:
        with device.dev_set_lock:
            if df.access_granted:
                raise IommufdError(errno.EINVAL)
            vfio_df_check_token(device, mem, bind)
            df.iommufd = iommufd_ctx_from_fd(task.pid, bind.iommufd)
            try:
                vfio_df_open(df)
            except BaseException:
                ictx, df.iommufd = df.iommufd, None
                iommufd_ctx_put(ictx)
                raise
            try:
                copy_to_user(mem, arg + B.vfio_device_bind_iommufd.out_devid.offset, df.devid.to_bytes(4, "little"))
            except BaseException:
                vfio_df_close(df)
                ictx, df.iommufd = df.iommufd, None
                iommufd_ctx_put(ictx)
                raise
            device.cdev_opened = True
            df.access_granted = True
    except BaseException:
        vfio_device_unblock_group(device)
        raise
    return 0


def vfio_df_unbind_iommufd(df: VfioDeviceFile) -> None:
    """vfio_df_unbind_iommufd() (device_cdev.c:173): a file that bound closes the device (its
    attachments and iommufd device go, vfio_iommufd_physical_unbind()) and puts the iommufd."""
    if not df.access_granted:
        return
    device = df.device
    with device.dev_set_lock:
        vfio_df_close(df)
        ictx, df.iommufd = df.iommufd, None
        device.cdev_opened = False
        df.access_granted = False
    if ictx is not None:
        iommufd_ctx_put(ictx)
    vfio_device_unblock_group(device)


def vfio_df_ioctl_attach_pt(df: VfioDeviceFile, task, arg: int) -> int:
    """vfio_df_ioctl_attach_pt() (device_cdev.c:194): offsetofend(pt_id) bytes (EFAULT), EINVAL
    for a short argsz or an unknown flag; a PASID needs the driver's pasid_attach_ioas
    (EOPNOTSUPP) and argsz through pasid; the attach (the core's errors), then pt_id written back
    (EFAULT detaches the RID again, as the kernel does whatever was attached)."""
    device = df.device
    mem = task.mm
    S = B.vfio_device_attach_iommufd_pt
    minsz = S.pt_id.offset + 4
    attach = S.from_buffer_copy(copy_from_user(mem, arg, minsz).ljust(ctypes.sizeof(S), b"\0"))
    if attach.argsz < minsz:
        raise IommufdError(errno.EINVAL)
    if attach.flags & ~B.VFIO_DEVICE_ATTACH_PASID:
        raise IommufdError(errno.EINVAL)
    xend = 0
    if attach.flags & B.VFIO_DEVICE_ATTACH_PASID:
        if device.pasid_attach_ioas is None:
            raise IommufdError(errno.EOPNOTSUPP)
        xend = S.pasid.offset + 4
    if xend:
        if attach.argsz < xend:
            raise IommufdError(errno.EINVAL)
        attach.pasid = int.from_bytes(copy_from_user(mem, arg + minsz, xend - minsz), "little")
    with device.dev_set_lock:
        if attach.flags & B.VFIO_DEVICE_ATTACH_PASID:
            pt_id = device.pasid_attach_ioas(device, attach.pasid, attach.pt_id)
        else:
            pt_id = device.attach_ioas(device, attach.pt_id)
        try:
            copy_to_user(mem, arg + S.pt_id.offset, pt_id.to_bytes(4, "little"))
        except IommufdError:
            device.detach_ioas(device)
            raise
    return 0


def vfio_df_ioctl_detach_pt(df: VfioDeviceFile, task, arg: int) -> int:
    """vfio_df_ioctl_detach_pt() (device_cdev.c:253): offsetofend(flags) bytes (EFAULT),
    EINVAL for a short argsz or an unknown flag; a PASID needs the driver's pasid_detach_ioas
    (EOPNOTSUPP) and argsz through pasid; detaching what is not attached is no error."""
    device = df.device
    mem = task.mm
    S = B.vfio_device_detach_iommufd_pt
    minsz = S.flags.offset + 4
    detach = S.from_buffer_copy(copy_from_user(mem, arg, minsz).ljust(ctypes.sizeof(S), b"\0"))
    if detach.argsz < minsz:
        raise IommufdError(errno.EINVAL)
    if detach.flags & ~B.VFIO_DEVICE_DETACH_PASID:
        raise IommufdError(errno.EINVAL)
    xend = 0
    if detach.flags & B.VFIO_DEVICE_DETACH_PASID:
        if device.pasid_detach_ioas is None:
            raise IommufdError(errno.EOPNOTSUPP)
        xend = S.pasid.offset + 4
    if xend:
        if detach.argsz < xend:
            raise IommufdError(errno.EINVAL)
        detach.pasid = int.from_bytes(copy_from_user(mem, arg + minsz, xend - minsz), "little")
    with device.dev_set_lock:
        if detach.flags & B.VFIO_DEVICE_DETACH_PASID:
            device.pasid_detach_ioas(device, detach.pasid)
        else:
            device.detach_ioas(device)
    return 0
