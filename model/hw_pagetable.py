"""HW pagetables (drivers/iommu/iommufd/hw_pagetable.c): HWPT_PAGING and HWPT_NESTED objects,
IOMMU_HWPT_ALLOC, dirty tracking, the dirty bitmap, and IOMMU_HWPT_INVALIDATE.

Domains come from the device's driver (dev.ops: domain_alloc_paging_flags, domain_alloc_nested;
the mock IOMMU's in model/selftest/mock.py, a real unit's in model/intel_iommu.py and
model/amd_iommu.py) as hw_pagetable.c gets them from dev_iommu_ops().
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from model.domain import IOMMU_CAP_DIRTY_TRACKING
from model.limits import PAGE_SIZE, U64_MAX
from model.objects import IommufdError, IommufdObject
from model.uapi import B

# hw_pagetable.c: an arbitrary entry_num cap
IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX = 1 << 19


@dataclass
class IommuUserData:
    """struct iommu_user_data: driver data in user memory (`mem`: the caller's mm)."""

    type: int
    uptr: int
    len: int
    mem: object


@dataclass
class IommuUserDataArray:
    """struct iommu_user_data_array: entry_num is written back with the entries handled."""

    type: int
    uptr: int
    entry_len: int
    entry_num: int
    mem: object


class HwPagetable(IommufdObject):
    """struct iommufd_hw_pagetable: the common part."""

    def __init__(self):
        super().__init__()
        self.domain = None
        self.fault = None
        self.pasid_compat = False


class HwptPaging(HwPagetable):
    """struct iommufd_hwpt_paging."""

    type = "HWPT_PAGING"

    def __init__(self, ioas):
        super().__init__()
        self.ioas = ioas
        self.auto_domain = False
        self.nest_parent = False
        self.enforce_cache_coherency = False
        self.in_list = False  # on ioas->hwpt_list, its domain in iopt->domains


class HwptNested(HwPagetable):
    """struct iommufd_hwpt_nested."""

    type = "HWPT_NESTED"

    def __init__(self, parent, viommu=None):
        super().__init__()
        self.parent = parent
        self.viommu = viommu


def _hwpt_destroy(hwpt: HwPagetable) -> None:
    """__iommufd_hwpt_destroy(): the domain is freed, the fault object loses a user."""
    hwpt.domain = None
    if hwpt.fault is not None:
        hwpt.fault.refs -= 1


def iommufd_hwpt_paging_destroy(hwpt: HwptPaging) -> None:
    """iommufd_hwpt_paging_destroy(): off the IOAS (its areas unmapped from the domain, the
    aperture reservations dropped), then the domain; the IOAS loses a user."""
    if hwpt.in_list:
        hwpt.ioas.hwpt_list.remove(hwpt)
        hwpt.in_list = False
        hwpt.ioas.iopt.table_remove_domain(hwpt.domain)
    _hwpt_destroy(hwpt)
    hwpt.ioas.refs -= 1


def iommufd_hwpt_nested_destroy(hwpt: HwptNested) -> None:
    """iommufd_hwpt_nested_destroy(): the vIOMMU, or else the parent, loses a user."""
    _hwpt_destroy(hwpt)
    if hwpt.viommu is not None:
        hwpt.viommu.refs -= 1
    else:
        hwpt.parent.refs -= 1


def iommufd_get_hwpt_paging(ucmd, id: int) -> HwptPaging:
    """iommufd_get_hwpt_paging() (iommufd_private.h)."""
    return ucmd.ictx.objects.get(id, "HWPT_PAGING")


def iommufd_hwpt_paging_enforce_cc(hwpt: HwptPaging) -> None:
    """iommufd_hwpt_paging_enforce_cc() (hw_pagetable.c:72): the domain's enforce_cache_coherency
    op decides, once; EINVAL (a WARN_ON: the driver reported the capability) when it cannot. Set
    before iopt_table_add_domain(): a unit with a per-PTE snoop bit sets it in every map after."""
    if hwpt.enforce_cache_coherency:
        return
    op = getattr(hwpt.domain.dops, "enforce_cache_coherency", None)
    if op is not None:
        hwpt.enforce_cache_coherency = bool(op(hwpt.domain))
    if not hwpt.enforce_cache_coherency:
        raise IommufdError(errno.EINVAL)


def iommufd_hwpt_paging_alloc(ictx, ioas, idev, pasid: int, flags: int, user_data: IommuUserData | None,
                              immediate_attach=None) -> HwptPaging:
    """iommufd_hwpt_paging_alloc(): flags EOPNOTSUPP (unknown, DIRTY_TRACKING on a device that
    cannot, FAULT_ID_VALID with NEST_PARENT); the object is reserved, the driver makes the
    domain (its errors), a device that can enforce cache coherency makes the domain enforce it
    (hw_pagetable.c:182), immediate_attach attaches the device, and iopt_table_add_domain()
    fills it from the IOAS. Any failure aborts and destroys the object. Not finalized.
    immediate_attach: device.c's (iommufd_hw_pagetable_attach, iommufd_hw_pagetable_detach)."""
    valid_flags = (B.IOMMU_HWPT_ALLOC_NEST_PARENT | B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                   | B.IOMMU_HWPT_FAULT_ID_VALID | B.IOMMU_HWPT_ALLOC_PASID)
    dev = idev.dev
    if flags & ~valid_flags:
        raise IommufdError(errno.EOPNOTSUPP)
    if flags & B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not dev.ops.capable(dev, IOMMU_CAP_DIRTY_TRACKING):
        raise IommufdError(errno.EOPNOTSUPP)
    if flags & B.IOMMU_HWPT_FAULT_ID_VALID and flags & B.IOMMU_HWPT_ALLOC_NEST_PARENT:
        raise IommufdError(errno.EOPNOTSUPP)
    objects = ictx.objects
    hwpt = objects.alloc(HwptPaging(ioas))
    hwpt.pasid_compat = bool(flags & B.IOMMU_HWPT_ALLOC_PASID)
    ioas.refs += 1
    hwpt.nest_parent = bool(flags & B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    try:
        hwpt.domain = dev.ops.domain_alloc_paging_flags(dev, flags & ~B.IOMMU_HWPT_FAULT_ID_VALID, user_data)
        hwpt.domain.owner = dev.ops
        hwpt.domain.iommufd_hwpt = hwpt
        if idev.enforce_cache_coherency:
            iommufd_hwpt_paging_enforce_cc(hwpt)
        if immediate_attach:
            immediate_attach[0](hwpt, idev, pasid)
        try:
            ioas.iopt.table_add_domain(None, hwpt.domain)
        except BaseException:
            if immediate_attach:
                immediate_attach[1](idev, pasid)
            raise
    except BaseException:
        objects.abort_and_destroy(hwpt)
        raise
    ioas.hwpt_list.append(hwpt)
    hwpt.in_list = True
    return hwpt


def iommufd_hwpt_nested_alloc(ictx, parent: HwptPaging, idev, flags: int, user_data: IommuUserData) -> HwptNested:
    """iommufd_hwpt_nested_alloc() (hw_pagetable.c:226): EOPNOTSUPP for flags other than
    FAULT_ID_VALID and PASID, no data, or a driver without domain_alloc_nested; EINVAL for a
    parent that is automatic, not NEST_PARENT, or another driver's."""
    dev = idev.dev
    if flags & ~(B.IOMMU_HWPT_FAULT_ID_VALID | B.IOMMU_HWPT_ALLOC_PASID) or not user_data.len or \
            getattr(dev.ops, "domain_alloc_nested", None) is None:
        raise IommufdError(errno.EOPNOTSUPP)
    if parent.auto_domain or not parent.nest_parent or parent.domain.owner is not dev.ops:
        raise IommufdError(errno.EINVAL)
    objects = ictx.objects
    hwpt = objects.alloc(HwptNested(parent))
    hwpt.pasid_compat = bool(flags & B.IOMMU_HWPT_ALLOC_PASID)
    parent.refs += 1
    try:
        hwpt.domain = dev.ops.domain_alloc_nested(dev, parent.domain, flags & ~B.IOMMU_HWPT_FAULT_ID_VALID,
                                                  user_data)
        hwpt.domain.owner = dev.ops
        hwpt.domain.iommufd_hwpt = hwpt
    except BaseException:
        objects.abort_and_destroy(hwpt)
        raise
    return hwpt


def iommufd_viommu_alloc_hwpt_nested(viommu, flags: int, user_data):
    """iommufd_viommu_alloc_hwpt_nested() (hw_pagetable.c:287): flags other than FAULT_ID_VALID
    and PASID, no driver data, or a driver without alloc_domain_nested EOPNOTSUPP; the nested
    HWPT holds the vIOMMU (not the parent) and its domain comes from the vIOMMU's driver."""
    if flags & ~(B.IOMMU_HWPT_FAULT_ID_VALID | B.IOMMU_HWPT_ALLOC_PASID) or not user_data.len:
        raise IommufdError(errno.EOPNOTSUPP)
    alloc = getattr(viommu.ops, "alloc_domain_nested", None)
    if alloc is None:
        raise IommufdError(errno.EOPNOTSUPP)
    objects = viommu.ictx.objects
    hwpt = objects.alloc(HwptNested(viommu.hwpt, viommu))
    hwpt.pasid_compat = bool(flags & B.IOMMU_HWPT_ALLOC_PASID)
    viommu.refs += 1
    try:
        hwpt.domain = alloc(viommu, flags & ~B.IOMMU_HWPT_FAULT_ID_VALID, user_data)
        hwpt.domain.iommufd_hwpt = hwpt
        hwpt.domain.owner = viommu.iommu_dev.ops
        if hwpt.domain.type != "NESTED":  # WARN_ON_ONCE
            raise IommufdError(errno.EOPNOTSUPP)
    except BaseException:
        objects.abort_and_destroy(hwpt)
        raise
    return hwpt


def iommufd_hwpt_alloc(ucmd) -> int:
    """iommufd_hwpt_alloc(): __reserved EOPNOTSUPP; data_type NONE with a data_len, or another
    type without one, EINVAL; the device (ENOENT); pt_id of any type, unknown EINVAL (not
    ENOENT); an IOAS gives a paging HWPT, a HWPT_PAGING a nested one, a vIOMMU a nested one of
    its own, anything else EINVAL; then the fault object (FAULT_ID_VALID); the ID is answered
    before finalize and a fault writing it destroys the HWPT."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    if (cmd.data_type == B.IOMMU_HWPT_DATA_NONE) == bool(cmd.data_len):
        raise IommufdError(errno.EINVAL)
    user_data = IommuUserData(cmd.data_type, cmd.data_uptr, cmd.data_len, ucmd.mem)
    objects = ucmd.ictx.objects
    idev = objects.get(cmd.dev_id, "DEVICE")  # iommufd_get_device()
    try:
        pt_obj = objects.get(cmd.pt_id)
    except IommufdError:
        raise IommufdError(errno.EINVAL) from None
    if pt_obj.type == "IOAS":
        hwpt = iommufd_hwpt_paging_alloc(ucmd.ictx, pt_obj, idev, 0, cmd.flags,
                                         user_data if user_data.len else None)
    elif pt_obj.type == "HWPT_PAGING":
        hwpt = iommufd_hwpt_nested_alloc(ucmd.ictx, pt_obj, idev, cmd.flags, user_data)
    elif pt_obj.type == "VIOMMU":
        if pt_obj.iommu_dev is not idev.dev.iommu_dev:
            raise IommufdError(errno.EINVAL)
        hwpt = iommufd_viommu_alloc_hwpt_nested(pt_obj, cmd.flags, user_data)
    else:
        raise IommufdError(errno.EINVAL)
    try:
        if cmd.flags & B.IOMMU_HWPT_FAULT_ID_VALID:
            from model.eventq import iommufd_get_fault

            fault = iommufd_get_fault(ucmd, cmd.fault_id)
            hwpt.fault = fault
            hwpt.domain.iopf_handler = fault
            fault.refs += 1
        cmd.out_hwpt_id = hwpt.id
        ucmd.respond()
    except BaseException:
        objects.abort_and_destroy(hwpt)
        raise
    objects.finalize(hwpt)
    return 0


def iommufd_hwpt_set_dirty_tracking(ucmd) -> int:
    """iommufd_hwpt_set_dirty_tracking(): flags other than ENABLE EOPNOTSUPP (__reserved is
    never read), the HWPT_PAGING (ENOENT), then iopt_set_dirty_tracking() (EOPNOTSUPP for a
    domain without dirty ops)."""
    cmd = ucmd.cmd
    if cmd.flags & ~B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
        raise IommufdError(errno.EOPNOTSUPP)
    hwpt = iommufd_get_hwpt_paging(ucmd, cmd.hwpt_id)
    hwpt.ioas.iopt.set_dirty_tracking(hwpt.domain, bool(cmd.flags & B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE))
    return 0


class IovaBitmap:
    """struct iova_bitmap over the user's bitmap (iova_bitmap.c): bit i stands for
    iova + i * page_size, counted from the user pointer (which may be unaligned). The kernel
    pins the bitmap's pages with FOLL_WRITE and sets bits in place (ORed into what the user
    left there); bits it cannot reach are dropped silently (iova_bitmap_set() returns void),
    and it writes whole u64 words' worth of bits: up to mapped_total_index * 64."""

    def __init__(self, mem, iova: int, length: int, page_size: int, data: int):
        self.mem, self.iova, self.data = mem, iova, data
        self.pgshift = (page_size & -page_size).bit_length() - 1
        self.total_bits = (((length - 1) & U64_MAX) >> self.pgshift) // 64 * 64 + 64
        self.bits: set[int] = set()

    def record(self, iova: int, length: int) -> None:
        """iommu_dirty_bitmap_record() -> iova_bitmap_set()."""
        if iova < self.iova:
            return
        first = (iova - self.iova) >> self.pgshift
        last = min((iova + length - 1 - self.iova) >> self.pgshift, self.total_bits - 1)
        self.bits.update(range(first, last + 1))

    def flush(self) -> None:
        """Write the bits into the user's bitmap, byte by byte, skipping bytes it cannot write."""
        by_byte: dict[int, int] = {}
        for b in self.bits:
            by_byte[b >> 3] = by_byte.get(b >> 3, 0) | (1 << (b & 7))
        for off, bits in sorted(by_byte.items()):
            addr = self.data + off
            try:
                cur = self.mem.read(addr, 1)[0]
                self.mem.write(addr, bytes([cur | bits]))
            except OSError:  # UserFault included
                continue


def iommufd_hwpt_get_dirty_bitmap(ucmd) -> int:
    """iommufd_hwpt_get_dirty_bitmap(): flags other than NO_CLEAR or a __reserved EOPNOTSUPP,
    the HWPT_PAGING (ENOENT), then iopt_read_and_clear_dirty_data(): the range checks of
    iommufd_check_iova_range(), EOPNOTSUPP without dirty ops, and the walk."""
    from model.domain import IOMMU_DIRTY_NO_CLEAR

    cmd = ucmd.cmd
    if cmd.flags & ~B.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    hwpt = iommufd_get_hwpt_paging(ucmd, cmd.hwpt_id)
    iopt = hwpt.ioas.iopt
    last = iopt.check_dirty_range(cmd.iova, cmd.length, cmd.page_size)
    bitmap = IovaBitmap(ucmd.mem, cmd.iova, cmd.length, cmd.page_size, cmd.data)
    flags = IOMMU_DIRTY_NO_CLEAR if cmd.flags & B.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR else 0
    iopt.read_and_clear_dirty(hwpt.domain, cmd.iova, last, flags, bitmap)
    bitmap.flush()
    return 0


def iommufd_hwpt_invalidate(ucmd) -> int:
    """iommufd_hwpt_invalidate(): __reserved EOPNOTSUPP; with entry_num != 0, a NULL data_uptr,
    entry_len 0 or > PAGE_SIZE, or entry_num > 1 << 19 EINVAL; hwpt_id of any type (ENOENT): a
    HWPT_NESTED's domain or a vIOMMU invalidates through the driver (EOPNOTSUPP without the
    op), anything else EINVAL. Every path ends writing entry_num = the entries handled (0 on
    an early failure) back with the whole struct; if that copy faults the answer is EFAULT."""
    cmd = ucmd.cmd
    failure = None
    done_num = 0
    try:
        if cmd.__reserved:
            raise IommufdError(errno.EOPNOTSUPP)
        if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len or cmd.entry_len > PAGE_SIZE
                              or cmd.entry_num > IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX):
            raise IommufdError(errno.EINVAL)
        pt_obj = ucmd.ictx.objects.get(cmd.hwpt_id)  # IOMMUFD_OBJ_ANY
        array = IommuUserDataArray(cmd.data_type, cmd.data_uptr, cmd.entry_len, cmd.entry_num, ucmd.mem)
        if pt_obj.type == "HWPT_NESTED":
            op = getattr(pt_obj.domain.dops, "cache_invalidate_user", None)
            if op is None:
                raise IommufdError(errno.EOPNOTSUPP)
            target = pt_obj.domain
        elif pt_obj.type == "VIOMMU":
            op = getattr(pt_obj.ops, "cache_invalidate", None) if pt_obj.ops is not None else None
            if op is None:
                raise IommufdError(errno.EOPNOTSUPP)
            target = pt_obj
        else:
            raise IommufdError(errno.EINVAL)
        try:
            op(target, array)
        finally:
            done_num = array.entry_num
    except IommufdError as e:
        failure = e  # raised again below: model/outcomes.py records where it was raised
    cmd.entry_num = done_num
    ucmd.respond()  # a fault here is EFAULT, replacing the failure
    if failure is not None:
        raise failure
    return 0


def copy_struct_from_user_data(user_data: IommuUserData, data_type: int, cls, min_len: int):
    """iommu_copy_struct_from_user(): EINVAL for another type or a length below the struct's
    first version or above the kernel's struct; then copy_struct_from_user()."""
    import ctypes

    from model.uaccess import copy_struct_from_user

    if user_data.type != data_type:
        raise IommufdError(errno.EINVAL)
    if user_data.len < min_len or ctypes.sizeof(cls) < user_data.len:
        raise IommufdError(errno.EINVAL)
    return copy_struct_from_user(user_data.mem, cls, user_data.uptr, user_data.len)


def copy_struct_from_user_array(array: IommuUserDataArray, data_type: int, cls, min_len: int, index: int):
    """iommu_copy_struct_from_user_array(): entry `index` of the array, as one user data."""
    if index >= array.entry_num or not array.entry_num:
        raise IommufdError(errno.EINVAL)
    return copy_struct_from_user_data(
        IommuUserData(array.type, array.uptr + array.entry_len * index, array.entry_len, array.mem),
        data_type, cls, min_len)
