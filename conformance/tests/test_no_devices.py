"""The ioctls that need devices, on a context with none bound (Linux 7.2).

Each handler checks its arguments in its own order and then looks up an object that cannot
exist without a device (a DEVICE, a HWPT, a vIOMMU): iommufd_get_object() answers ENOENT for an
unknown ID and for an ID of another type (main.c:176). So what is observable is which checks
come before that lookup, which come after it (never answered here), and what is written back.
Line numbers are drivers/iommu/iommufd/ of linux-source-7.2.13.
"""
import ctypes
import errno
import mmap

import pytest

from conformance.tests.helpers import PAGE, U64, destroy, err, ioas_alloc, require, unmapped_va
from model.uapi import T as B

require("IOMMU_HWPT_DATA_ARM_SMMUV3", "IOMMU_VIOMMU_ALLOC", "IOMMU_VDEVICE_ALLOC", "IOMMU_HW_QUEUE_ALLOC",
        "IOMMU_VEVENTQ_ALLOC")

ENTRY_NUM_MAX = 1 << 19  # hw_pagetable.c:493 IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX
VEVENTQ_MAX_DEPTH = 1 << 19  # eventq.c:502
SENTINEL = 0x5A5A5A5A
MISSING = 77  # an ID nothing has


def cmd_of(struct, **fields):
    cmd = struct(size=ctypes.sizeof(struct))
    for k, v in fields.items():
        setattr(cmd, k, v)
    return cmd


def run(fd, name, struct, **fields):
    """(errno, cmd after the call) of ioctl `name` with `fields` set."""
    cmd = cmd_of(struct, **fields)
    e = err(fd.ioctl, getattr(B, name), cmd)
    return e, cmd


def assert_no_object_created(fd, *existing):
    """No failed call consumed an ID: the next IOAS gets the lowest free one (objects.c xa_alloc)."""
    new = ioas_alloc(fd)
    assert new == len(existing) + 1
    destroy(fd, new)


class ReadOnlyCmd:
    """A command struct in a page mapped read-only: copy_from_user works, copy_to_user faults."""

    def __init__(self, cmd):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.libc = libc
        self.addr = libc.mmap(None, PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        ctypes.memmove(self.addr, bytes(cmd), ctypes.sizeof(cmd))
        assert libc.mprotect(self.addr, PAGE, mmap.PROT_READ) == 0
        self.n = ctypes.sizeof(cmd)

    def bytes(self):
        return ctypes.string_at(self.addr, self.n)

    def close(self):
        self.libc.munmap(self.addr, PAGE)


# ---------------------------------------------------------------------------------------------
# IOMMU_HWPT_ALLOC: iommufd_hwpt_alloc() (hw_pagetable.c:334)

HA = B.iommu_hwpt_alloc


def test_hwpt_alloc_reserved_is_eopnotsupp_before_the_data_checks(iommufd):
    # :348 __reserved first, then :350 data_type / data_len
    e, _ = run(iommufd, "IOMMU_HWPT_ALLOC", HA, __reserved=1, data_type=B.IOMMU_HWPT_DATA_NONE, data_len=8)
    assert e == errno.EOPNOTSUPP


@pytest.mark.parametrize("data_type,data_len", [
    (B.IOMMU_HWPT_DATA_NONE, 1),        # NONE with a length
    (B.IOMMU_HWPT_DATA_VTD_S1, 0),      # a type without one
    (B.IOMMU_HWPT_DATA_ARM_SMMUV3, 0),
    (0xFFFF, 0),                        # unknown types are the driver's business, length is not
])
def test_hwpt_alloc_data_type_and_len_must_agree_before_the_device_lookup(iommufd, data_type, data_len):
    # :350-352: EINVAL although dev_id names nothing (the lookup is at :354)
    e, cmd = run(iommufd, "IOMMU_HWPT_ALLOC", HA, dev_id=MISSING, data_type=data_type, data_len=data_len,
                 out_hwpt_id=SENTINEL)
    assert e == errno.EINVAL
    assert cmd.out_hwpt_id == SENTINEL


@pytest.mark.parametrize("fields", [
    dict(),                                                     # dev_id 0
    dict(dev_id=MISSING),
    dict(dev_id="ioas"),                                        # an IOAS is not a DEVICE
    dict(dev_id="ioas", pt_id="ioas"),                          # a valid pt_id does not help
    dict(pt_id=MISSING),                                        # pt_id (:358) is never reached
    dict(flags=1 << 31),                                        # flags: checked after the device
    dict(flags=B.IOMMU_HWPT_FAULT_ID_VALID, fault_id=MISSING),  # fault_id: after the HWPT
    dict(__reserved2=0xFFFFFFFF),                               # never read
    dict(data_type=B.IOMMU_HWPT_DATA_VTD_S1, data_len=64, data_uptr="unmapped"),  # read by the driver
    dict(data_type=0x1234, data_len=1, data_uptr=0),
], ids=lambda f: ",".join(f) or "zero")
def test_hwpt_alloc_without_a_device_is_enoent(iommufd, fields):
    # :354 iommufd_get_device() fails first; nothing after it runs, nothing is written back
    ioas = ioas_alloc(iommufd)
    subst = {"ioas": ioas, "unmapped": unmapped_va()}
    fields = {k: subst.get(v, v) for k, v in fields.items()}
    e, cmd = run(iommufd, "IOMMU_HWPT_ALLOC", HA, out_hwpt_id=SENTINEL, **fields)
    assert e == errno.ENOENT
    assert cmd.out_hwpt_id == SENTINEL
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_GET_HW_INFO: iommufd_get_hw_info() (device.c:1545)

HI = B.iommu_hw_info


@pytest.mark.parametrize("flags", [1 << 1, 1 << 31, B.IOMMU_HW_INFO_FLAG_INPUT_TYPE | 1 << 5])
def test_get_hw_info_unknown_flags_are_eopnotsupp(iommufd, flags):
    # :1557 SUPPORTED_FLAGS = IOMMU_HW_INFO_FLAG_INPUT_TYPE
    e, _ = run(iommufd, "IOMMU_GET_HW_INFO", HI, flags=flags, dev_id=MISSING)
    assert e == errno.EOPNOTSUPP


@pytest.mark.parametrize("index", [0, 1, 2])
def test_get_hw_info_each_reserved_byte_is_eopnotsupp_before_the_device(iommufd, index):
    # :1559 __reserved[0..2], before iommufd_get_device() at :1566
    cmd = cmd_of(HI, dev_id=MISSING)
    cmd.__reserved[index] = 1
    assert err(iommufd.ioctl, B.IOMMU_GET_HW_INFO, cmd) == errno.EOPNOTSUPP


@pytest.mark.parametrize("flags,in_type", [(0, 0), (0, 0xFFFF), (B.IOMMU_HW_INFO_FLAG_INPUT_TYPE, 0xFFFF),
                                           (B.IOMMU_HW_INFO_FLAG_INPUT_TYPE, 0)])
def test_get_hw_info_without_a_device_is_enoent_and_touches_nothing(iommufd, flags, in_type):
    # :1566; the data buffer is copied / cleared (:1594, :1604) and the outputs written
    # (:1654) only for a device: neither the buffer nor the struct changes.
    data = (ctypes.c_ubyte * 64)(*([0xAA] * 64))
    cmd = cmd_of(HI, flags=flags, dev_id=MISSING, data_len=64, data_uptr=ctypes.addressof(data),
                 in_data_type=in_type, out_max_pasid_log2=0x5A, out_capabilities=SENTINEL)
    before = bytes(cmd)
    assert err(iommufd.ioctl, B.IOMMU_GET_HW_INFO, cmd) == errno.ENOENT
    assert bytes(cmd) == before
    assert bytes(data) == b"\xaa" * 64


def test_get_hw_info_does_not_read_data_uptr_before_the_device(iommufd):
    # an unmapped data_uptr with a length: ENOENT, not EFAULT; an IOAS is not a DEVICE
    ioas = ioas_alloc(iommufd)
    for dev_id in (0, MISSING, ioas):
        e, _ = run(iommufd, "IOMMU_GET_HW_INFO", HI, dev_id=dev_id, data_len=4096, data_uptr=unmapped_va())
        assert e == errno.ENOENT
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_HWPT_SET_DIRTY_TRACKING: iommufd_hwpt_set_dirty_tracking() (hw_pagetable.c:444)

SD = B.iommu_hwpt_set_dirty_tracking


@pytest.mark.parametrize("flags", [2, 1 << 31, B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE | 4])
def test_set_dirty_tracking_unknown_flags_are_eopnotsupp(iommufd, flags):
    # :452, before the HWPT lookup at :455
    e, _ = run(iommufd, "IOMMU_HWPT_SET_DIRTY_TRACKING", SD, flags=flags, hwpt_id=MISSING)
    assert e == errno.EOPNOTSUPP


@pytest.mark.parametrize("flags", [0, B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE])
@pytest.mark.parametrize("reserved", [0, 0xFFFFFFFF])
def test_set_dirty_tracking_without_a_hwpt_is_enoent_and_reserved_is_never_read(iommufd, flags, reserved):
    # :455 iommufd_get_hwpt_paging(): a missing ID and an IOAS's are both ENOENT;
    # __reserved is documented "Must be 0" but the handler never reads it
    ioas = ioas_alloc(iommufd)
    for hwpt_id in (0, MISSING, ioas):
        e, _ = run(iommufd, "IOMMU_HWPT_SET_DIRTY_TRACKING", SD, flags=flags, hwpt_id=hwpt_id, __reserved=reserved)
        assert e == errno.ENOENT
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_HWPT_GET_DIRTY_BITMAP: iommufd_hwpt_get_dirty_bitmap() (hw_pagetable.c:469)

GD = B.iommu_hwpt_get_dirty_bitmap


@pytest.mark.parametrize("fields", [dict(flags=2), dict(flags=1 << 31), dict(__reserved=1),
                                    dict(flags=B.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR, __reserved=1 << 31)],
                         ids=lambda f: ",".join(f"{k}={v:#x}" for k, v in f.items()))
def test_get_dirty_bitmap_flags_and_reserved_are_eopnotsupp(iommufd, fields):
    # :476-478, before the HWPT lookup at :480
    e, _ = run(iommufd, "IOMMU_HWPT_GET_DIRTY_BITMAP", GD, hwpt_id=MISSING, **fields)
    assert e == errno.EOPNOTSUPP


@pytest.mark.parametrize("flags", [0, B.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR])
def test_get_dirty_bitmap_without_a_hwpt_is_enoent_before_the_range_checks(iommufd, flags):
    # :480; iova / length / page_size / data are checked by iopt_read_and_clear_dirty_data()
    # after it: a nonsense range and an unmapped bitmap still get ENOENT
    ioas = ioas_alloc(iommufd)
    for hwpt_id in (0, MISSING, ioas):
        e, cmd = run(iommufd, "IOMMU_HWPT_GET_DIRTY_BITMAP", GD, hwpt_id=hwpt_id, flags=flags,
                     iova=3, length=U64, page_size=3, data=unmapped_va())
        assert e == errno.ENOENT
        assert (cmd.iova, cmd.length, cmd.page_size) == (3, U64, 3)
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_HWPT_INVALIDATE: iommufd_hwpt_invalidate() (hw_pagetable.c:495)
# Every path ends at out: (:558) with entry_num = done_num written back through
# iommufd_ucmd_respond(): on failure the caller reads entry_num 0.

HV = B.iommu_hwpt_invalidate


def _valid_array(**kw):
    entries = (ctypes.c_ubyte * 64)()
    fields = dict(hwpt_id=MISSING, data_uptr=ctypes.addressof(entries), data_type=0, entry_len=8, entry_num=5)
    fields.update(kw)
    return entries, fields


def test_invalidate_reserved_is_eopnotsupp_and_entry_num_is_answered_zero(iommufd):
    # :508 -> out: entry_num = 0 written back
    keep, fields = _valid_array(__reserved=1)
    e, cmd = run(iommufd, "IOMMU_HWPT_INVALIDATE", HV, **fields)
    assert e == errno.EOPNOTSUPP
    assert cmd.entry_num == 0
    assert (cmd.hwpt_id, cmd.entry_len, cmd.__reserved) == (MISSING, 8, 1)  # the rest comes back as it was


@pytest.mark.parametrize("fields", [
    dict(data_uptr=0),
    dict(entry_len=0),
    dict(entry_len=PAGE + 1),
    dict(entry_len=0xFFFFFFFF),
    dict(entry_num=ENTRY_NUM_MAX + 1),
    dict(entry_num=0xFFFFFFFF),
], ids=lambda f: ",".join(f"{k}={v:#x}" for k, v in f.items()))
def test_invalidate_bad_array_is_einval_before_the_lookup(iommufd, fields):
    # :517-521 (entry_num != 0): EINVAL although hwpt_id names nothing; entry_num answered 0
    keep, f = _valid_array(**fields)
    e, cmd = run(iommufd, "IOMMU_HWPT_INVALIDATE", HV, **f)
    assert e == errno.EINVAL
    assert cmd.entry_num == 0


def test_invalidate_reserved_comes_before_the_array_checks(iommufd):
    e, cmd = run(iommufd, "IOMMU_HWPT_INVALIDATE", HV, hwpt_id=MISSING, entry_num=1, __reserved=1)
    assert e == errno.EOPNOTSUPP


@pytest.mark.parametrize("fields", [
    dict(entry_len=PAGE, entry_num=ENTRY_NUM_MAX, data_uptr="unmapped"),  # the limits themselves pass
    dict(entry_len=1, entry_num=1, data_uptr=1),  # data_uptr is only tested for NULL, never read here
    dict(entry_num=0, entry_len=0, data_uptr=0),  # entry_num 0: the array is ignored
    dict(entry_num=0, entry_len=0xFFFFFFFF, data_uptr="unmapped", data_type=0xFFFF),
], ids=["limits", "bogus-pointer", "empty", "empty-garbage"])
def test_invalidate_without_a_hwpt_is_enoent_and_entry_num_zero(iommufd, fields):
    # :524 iommufd_get_object(hwpt_id, IOMMUFD_OBJ_ANY): unknown ID ENOENT; entry_num 0 written
    f = {k: (unmapped_va() if v == "unmapped" else v) for k, v in fields.items()}
    for hwpt_id in (0, MISSING):
        e, cmd = run(iommufd, "IOMMU_HWPT_INVALIDATE", HV, **{"entry_len": 8, "entry_num": 3, "data_uptr": 8,
                                                              **f, "hwpt_id": hwpt_id})
        assert e == errno.ENOENT
        assert cmd.entry_num == 0


@pytest.mark.parametrize("entry_num", [0, 4])
def test_invalidate_of_an_ioas_is_einval(iommufd, entry_num):
    # :524 looks up any type, :548-551: neither HWPT_NESTED nor VIOMMU -> EINVAL (not ENOENT as
    # a typed lookup would say); with entry_num 0 too: an empty request does not succeed
    ioas = ioas_alloc(iommufd)
    keep, f = _valid_array(hwpt_id=ioas, entry_num=entry_num)
    e, cmd = run(iommufd, "IOMMU_HWPT_INVALIDATE", HV, **f)
    assert e == errno.EINVAL
    assert cmd.entry_num == 0
    assert_no_object_created(iommufd, ioas)


@pytest.mark.parametrize("fields,rc", [
    (dict(__reserved=1), errno.EOPNOTSUPP),
    (dict(entry_num=1, entry_len=0), errno.EINVAL),
    (dict(), errno.ENOENT),
])
def test_invalidate_answers_efault_when_entry_num_cannot_be_written_back(iommufd, fields, rc):
    # :559-561: the respond at out: runs on every path and its EFAULT replaces rc
    keep, f = _valid_array(**fields)
    cmd = cmd_of(HV, **f)
    assert err(iommufd.ioctl, B.IOMMU_HWPT_INVALIDATE, cmd_of(HV, **f)) == rc
    ro = ReadOnlyCmd(cmd)
    try:
        assert err(iommufd.ioctl, B.IOMMU_HWPT_INVALIDATE, ro.addr) == errno.EFAULT
        assert ro.bytes() == bytes(cmd)
    finally:
        ro.close()


def test_a_read_only_struct_is_fine_where_nothing_is_written_back(iommufd):
    # The contrast: SET_DIRTY_TRACKING and GET_HW_INFO fail before any respond, so a read-only
    # struct gets their own errno, not EFAULT.
    for name, cmd in (("IOMMU_HWPT_SET_DIRTY_TRACKING", cmd_of(SD, hwpt_id=MISSING)),
                      ("IOMMU_GET_HW_INFO", cmd_of(HI, dev_id=MISSING)),
                      ("IOMMU_HWPT_ALLOC", cmd_of(HA, dev_id=MISSING))):
        ro = ReadOnlyCmd(cmd)
        try:
            assert err(iommufd.ioctl, getattr(B, name), ro.addr) == errno.ENOENT, name
        finally:
            ro.close()


# ---------------------------------------------------------------------------------------------
# IOMMU_VIOMMU_ALLOC: iommufd_viommu_alloc_ioctl() (viommu.c:17)

VA = B.iommu_viommu_alloc


@pytest.mark.parametrize("fields", [
    dict(type=B.IOMMU_VIOMMU_TYPE_DEFAULT),
    dict(flags=1, type=B.IOMMU_VIOMMU_TYPE_ARM_SMMUV3),
    dict(flags=1 << 31, type=B.IOMMU_VIOMMU_TYPE_ARM_SMMUV3),
], ids=["type-default", "flags-1", "flags-31"])
def test_viommu_alloc_flags_and_default_type_are_eopnotsupp(iommufd, fields):
    # :32, before the device lookup at :35
    e, cmd = run(iommufd, "IOMMU_VIOMMU_ALLOC", VA, dev_id=MISSING, out_viommu_id=SENTINEL, **fields)
    assert e == errno.EOPNOTSUPP
    assert cmd.out_viommu_id == SENTINEL


@pytest.mark.parametrize("fields", [
    dict(type=B.IOMMU_VIOMMU_TYPE_ARM_SMMUV3),
    dict(type=B.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, dev_id="ioas", hwpt_id="ioas"),
    dict(type=0xFFFF, hwpt_id=MISSING),                        # unknown types: the driver's call
    dict(type=1, __reserved=0xFFFFFFFF),                        # "Must be 0", never read
    dict(type=1, data_len=64, data_uptr="unmapped"),            # read by the driver only
], ids=["smmuv3", "ioas-ids", "unknown-type", "reserved", "data"])
def test_viommu_alloc_without_a_device_is_enoent(iommufd, fields):
    # :35 iommufd_get_device() fails before hwpt_id (:60) and the user data are looked at
    ioas = ioas_alloc(iommufd)
    subst = {"ioas": ioas, "unmapped": unmapped_va()}
    fields = {k: subst.get(v, v) for k, v in fields.items()}
    fields.setdefault("dev_id", MISSING)
    e, cmd = run(iommufd, "IOMMU_VIOMMU_ALLOC", VA, out_viommu_id=SENTINEL, **fields)
    assert e == errno.ENOENT
    assert cmd.out_viommu_id == SENTINEL
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_VDEVICE_ALLOC: iommufd_vdevice_alloc_ioctl() (viommu.c:143)

VD = B.iommu_vdevice_alloc


@pytest.mark.parametrize("virt_id", [0, 1, 1 << 32, U64])
def test_vdevice_alloc_without_a_viommu_is_enoent(iommufd, virt_id):
    # :154 virt_id > ULONG_MAX cannot hold on a 64-bit kernel; :157 the vIOMMU lookup fails
    # before the device's (:161): an IOAS as either ID is ENOENT too
    ioas = ioas_alloc(iommufd)
    for viommu_id, dev_id in ((0, 0), (MISSING, MISSING), (ioas, ioas), (MISSING, ioas)):
        e, cmd = run(iommufd, "IOMMU_VDEVICE_ALLOC", VD, viommu_id=viommu_id, dev_id=dev_id, virt_id=virt_id,
                     out_vdevice_id=SENTINEL)
        assert e == errno.ENOENT
        assert cmd.out_vdevice_id == SENTINEL
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_HW_QUEUE_ALLOC: iommufd_hw_queue_alloc_ioctl() (viommu.c:366)

HQ = B.iommu_hw_queue_alloc
TEGRA = B.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV


@pytest.mark.parametrize("fields,expected", [
    (dict(type=B.IOMMU_HW_QUEUE_TYPE_DEFAULT), errno.EOPNOTSUPP),          # :377
    (dict(flags=1), errno.EOPNOTSUPP),
    (dict(flags=1 << 31, length=0), errno.EOPNOTSUPP),                     # before the length
    (dict(type=0, length=0, nesting_parent_iova=U64), errno.EOPNOTSUPP),
    (dict(length=0), errno.EINVAL),                                        # :379
    (dict(length=0, nesting_parent_iova=U64), errno.EINVAL),               # before the overflow
    (dict(nesting_parent_iova=U64, length=2), errno.EOVERFLOW),            # :381
    (dict(nesting_parent_iova=2, length=U64), errno.EOVERFLOW),
    (dict(nesting_parent_iova=1 << 63, length=1 << 63 | 1), errno.EOVERFLOW),
    (dict(nesting_parent_iova=U64, length=1), errno.ENOENT),               # last == U64_MAX fits
    (dict(nesting_parent_iova=1, length=U64), errno.ENOENT),
    (dict(nesting_parent_iova=1 << 63, length=1 << 63), errno.ENOENT),
    (dict(type=0xFFFF, index=0xFFFFFFFF), errno.ENOENT),                   # the driver's, after :385
], ids=lambda x: ",".join(f"{k}={v:#x}" for k, v in x.items()) if isinstance(x, dict) else errno.errorcode[x])
def test_hw_queue_alloc_checks_before_the_viommu(iommufd, fields, expected):
    f = dict(type=TEGRA, length=PAGE, viommu_id=MISSING, out_hw_queue_id=SENTINEL)
    f.update(fields)
    e, cmd = run(iommufd, "IOMMU_HW_QUEUE_ALLOC", HQ, **f)
    assert e == expected
    assert cmd.out_hw_queue_id == SENTINEL


def test_hw_queue_alloc_of_an_ioas_is_enoent(iommufd):
    # :385 iommufd_get_viommu(): typed lookup
    ioas = ioas_alloc(iommufd)
    e, _ = run(iommufd, "IOMMU_HW_QUEUE_ALLOC", HQ, type=TEGRA, length=PAGE, viommu_id=ioas)
    assert e == errno.ENOENT
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------
# IOMMU_VEVENTQ_ALLOC: iommufd_veventq_alloc() (eventq.c:504)

VQ = B.iommu_veventq_alloc
SMMU_Q = B.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3


@pytest.mark.parametrize("fields,expected", [
    (dict(type=B.IOMMU_VEVENTQ_TYPE_DEFAULT), errno.EOPNOTSUPP),           # :512
    (dict(flags=1), errno.EOPNOTSUPP),
    (dict(__reserved=1), errno.EOPNOTSUPP),
    (dict(type=0, veventq_depth=0), errno.EOPNOTSUPP),                     # before the depth
    (dict(veventq_depth=0), errno.EINVAL),                                 # :515
    (dict(veventq_depth=VEVENTQ_MAX_DEPTH + 1), errno.EINVAL),
    (dict(veventq_depth=0xFFFFFFFF), errno.EINVAL),
    (dict(veventq_depth=VEVENTQ_MAX_DEPTH), errno.ENOENT),                 # :518
    (dict(veventq_depth=1), errno.ENOENT),
    (dict(type=0xFFFF), errno.ENOENT),
    (dict(type=B.IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, viommu_id=0), errno.ENOENT),
], ids=lambda x: ",".join(f"{k}={v:#x}" for k, v in x.items()) if isinstance(x, dict) else errno.errorcode[x])
def test_veventq_alloc_checks_before_the_viommu(iommufd, fields, expected):
    f = dict(type=SMMU_Q, veventq_depth=16, viommu_id=MISSING, out_veventq_id=SENTINEL, out_veventq_fd=SENTINEL)
    f.update(fields)
    e, cmd = run(iommufd, "IOMMU_VEVENTQ_ALLOC", VQ, **f)
    assert e == expected
    assert (cmd.out_veventq_id, cmd.out_veventq_fd) == (SENTINEL, SENTINEL)


def test_veventq_alloc_of_an_ioas_is_enoent(iommufd):
    ioas = ioas_alloc(iommufd)
    e, _ = run(iommufd, "IOMMU_VEVENTQ_ALLOC", VQ, type=SMMU_Q, veventq_depth=16, viommu_id=ioas)
    assert e == errno.ENOENT
    assert_no_object_created(iommufd, ioas)


# ---------------------------------------------------------------------------------------------

def test_failed_device_ioctls_leave_the_ioas_alone(iommufd):
    """Every lookup above found nothing: the IOAS used as a wrong-type ID is unchanged and
    still destroyable (no reference was left behind by iommufd_get_object())."""
    from conformance.tests.helpers import iova_ranges
    ioas = ioas_alloc(iommufd)
    before = iova_ranges(iommufd, ioas)
    calls = [
        ("IOMMU_HWPT_ALLOC", HA, dict(dev_id=ioas, pt_id=ioas)),
        ("IOMMU_GET_HW_INFO", HI, dict(dev_id=ioas)),
        ("IOMMU_HWPT_SET_DIRTY_TRACKING", SD, dict(hwpt_id=ioas)),
        ("IOMMU_HWPT_GET_DIRTY_BITMAP", GD, dict(hwpt_id=ioas)),
        ("IOMMU_HWPT_INVALIDATE", HV, dict(hwpt_id=ioas)),
        ("IOMMU_VIOMMU_ALLOC", VA, dict(type=1, dev_id=ioas, hwpt_id=ioas)),
        ("IOMMU_VDEVICE_ALLOC", VD, dict(viommu_id=ioas, dev_id=ioas)),
        ("IOMMU_HW_QUEUE_ALLOC", HQ, dict(type=TEGRA, length=PAGE, viommu_id=ioas)),
        ("IOMMU_VEVENTQ_ALLOC", VQ, dict(type=SMMU_Q, veventq_depth=1, viommu_id=ioas)),
    ]
    got = {name: run(iommufd, name, struct, **f)[0] for name, struct, f in calls}
    assert got == {name: errno.EINVAL if name == "IOMMU_HWPT_INVALIDATE" else errno.ENOENT for name, _, _ in calls}
    assert iova_ranges(iommufd, ioas) == before
    destroy(iommufd, ioas)
    assert err(destroy, iommufd, ioas) == errno.ENOENT
