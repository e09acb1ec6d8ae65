"""HW pagetable ioctl handlers (drivers/iommu/iommufd/hw_pagetable.c).

The model has no devices yet, so no DEVICE or HWPT object can exist: each handler makes the
kernel's checks in the kernel's order up to the first lookup of such an object, which answers
ENOENT (iommufd_get_object(): unknown ID or another type). What lies past it is not modelled.
"""
from __future__ import annotations

import errno

from model.device import iommufd_get_device, needs_devices
from model.limits import PAGE_SIZE
from model.objects import IommufdError
from model.uapi import B

# hw_pagetable.c:493: an arbitrary entry_num cap
IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX = 1 << 19


def iommufd_get_hwpt_paging(ucmd, id: int):
    """iommufd_get_hwpt_paging() (iommufd_private.h): iommufd_get_object(id, HWPT_PAGING)."""
    return ucmd.ictx.objects.get(id, "HWPT_PAGING")


def iommufd_hwpt_alloc(ucmd) -> int:
    """iommufd_hwpt_alloc() (hw_pagetable.c:334): __reserved EOPNOTSUPP (:348; __reserved2 is
    never read); data_type NONE with a data_len, or another type without one, EINVAL (:350);
    then the device (:354) ENOENT. pt_id (:358), flags (in the *_alloc helpers) and fault_id
    are read only after the device is found; data_uptr only by a driver."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    if (cmd.data_type == B.IOMMU_HWPT_DATA_NONE) == bool(cmd.data_len):
        raise IommufdError(errno.EINVAL)
    idev = iommufd_get_device(ucmd, cmd.dev_id)
    raise needs_devices("IOMMU_HWPT_ALLOC", idev)


def iommufd_hwpt_set_dirty_tracking(ucmd) -> int:
    """iommufd_hwpt_set_dirty_tracking() (hw_pagetable.c:444): flags other than ENABLE EOPNOTSUPP
    (:452; __reserved is never read), then the HWPT_PAGING (:455) ENOENT."""
    cmd = ucmd.cmd
    if cmd.flags & ~B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
        raise IommufdError(errno.EOPNOTSUPP)
    hwpt = iommufd_get_hwpt_paging(ucmd, cmd.hwpt_id)
    raise needs_devices("IOMMU_HWPT_SET_DIRTY_TRACKING", hwpt)


def iommufd_hwpt_get_dirty_bitmap(ucmd) -> int:
    """iommufd_hwpt_get_dirty_bitmap() (hw_pagetable.c:469): flags other than NO_CLEAR or a
    __reserved EOPNOTSUPP (:476), then the HWPT_PAGING (:480) ENOENT; iova, length, page_size
    and data are checked by iopt_read_and_clear_dirty_data(), after it."""
    cmd = ucmd.cmd
    if cmd.flags & ~B.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    hwpt = iommufd_get_hwpt_paging(ucmd, cmd.hwpt_id)
    raise needs_devices("IOMMU_HWPT_GET_DIRTY_BITMAP", hwpt)


def iommufd_hwpt_invalidate(ucmd) -> int:
    """iommufd_hwpt_invalidate() (hw_pagetable.c:495). __reserved EOPNOTSUPP (:508); with
    entry_num != 0, a NULL data_uptr, entry_len 0 or > PAGE_SIZE, or entry_num > 1 << 19 EINVAL
    (:517; data_uptr is not read); hwpt_id looked up as IOMMUFD_OBJ_ANY (:524): unknown ENOENT,
    anything but a HWPT_NESTED or a vIOMMU EINVAL (:550). Every path, failures included, ends
    at out: (:559) writing entry_num = done_num (0 on failure) back with the whole struct; if
    that copy faults the answer is EFAULT whatever rc was."""
    cmd = ucmd.cmd
    rc = 0
    try:
        if cmd.__reserved:
            raise IommufdError(errno.EOPNOTSUPP)
        if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len or cmd.entry_len > PAGE_SIZE
                              or cmd.entry_num > IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX):
            raise IommufdError(errno.EINVAL)
        pt_obj = ucmd.ictx.objects.get(cmd.hwpt_id)  # IOMMUFD_OBJ_ANY
        if pt_obj.type not in ("HWPT_NESTED", "VIOMMU"):
            raise IommufdError(errno.EINVAL)
        raise needs_devices("IOMMU_HWPT_INVALIDATE", pt_obj)
    except IommufdError as e:
        rc = e.errno
    cmd.entry_num = 0  # done_num
    ucmd.respond()  # a fault here is EFAULT, replacing rc
    if rc:
        raise IommufdError(rc)
    return 0
