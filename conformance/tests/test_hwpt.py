"""HW pagetables on the mock IOMMU: IOMMU_HWPT_ALLOC, IOMMU_GET_HW_INFO,
IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP, IOMMU_HWPT_INVALIDATE
(hw_pagetable.c, device.c, io_pagetable.c, iova_bitmap.c) with the selftest driver behind them
(mock_ops in drivers/iommu/iommufd/selftest.c: mock_domain_alloc_paging_flags(),
mock_domain_alloc_nested(), mock_domain_hw_info(), mock_domain_cache_invalidate_user(),
amdv1_mock_dirty_ops) and the mock ops that look inside (IOMMU_TEST_OP_DIRTY,
IOMMU_TEST_OP_MD_CHECK_IOTLB).

iommufd_hwpt_alloc() (hw_pagetable.c:334) checks data_type against data_len before looking up
the device, then the device, then pt_id (any lookup failure there is EINVAL, not ENOENT), then
the flags in iommufd_hwpt_paging_alloc() (hw_pagetable.c:107) or iommufd_hwpt_nested_alloc()
(:226). A paging HWPT joins its IOAS at allocation (iopt_table_add_domain()), attached or not.
"""
import ctypes
import mmap
import errno

import pytest

from model.libc import libc
from model.uapi import T as B
from conformance.tests.helpers import (  # noqa: I001
    require, touched,
    PAGE, U64, check_iotlb, check_map, destroy, err, get_dirty_bitmap, hw_info, hwpt_alloc, hwpt_invalidate, hwpt_selftest,
    ioas_alloc,
    iova_ranges, map_, mock_device, mock_dirty, mock_domain_replace, set_dirty_tracking, sz, unmap,
)

# the generic_pt mock IOMMU of 7.2 (2 KiB granule, huge variant); 6.12 had another mock
require("MOCK_PAGE_SIZE", "MOCK_IOMMUPT_HUGE", "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED")

START = B.MOCK_APERTURE_START
LAST = B.MOCK_APERTURE_LAST
MPAGE = B.MOCK_PAGE_SIZE
SELFTEST = B.IOMMU_HWPT_DATA_SELFTEST
DIRTY = B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
PARENT = B.IOMMU_HWPT_ALLOC_NEST_PARENT
DEFAULT_IOTLB = B.IOMMU_TEST_IOTLB_DEFAULT
CAP_DIRTY = B.IOMMU_HW_CAP_DIRTY_TRACKING
CAP_NO_ATS = B.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED



def _device(fd, dev_flags=None):
    ioas = ioas_alloc(fd)
    stdev, hwpt, idev = mock_device(fd, ioas, dev_flags)
    return ioas, stdev, hwpt, idev


# IOMMU_HWPT_ALLOC: paging

def test_hwpt_alloc_paging(iommufd):
    ioas, stdev, auto, idev = _device(iommufd)
    hwpt = hwpt_alloc(iommufd, idev, ioas)
    assert hwpt == 5
    other = ioas_alloc(iommufd)
    # allocated for the device but attached to nothing: it already narrows its IOAS
    h2 = hwpt_alloc(iommufd, idev, other)
    assert iova_ranges(iommufd, other) == ([(START, LAST)], MPAGE)
    # it holds its IOAS until destroyed; nothing holds it
    assert err(destroy, iommufd, other) == errno.EBUSY
    destroy(iommufd, h2)
    assert iova_ranges(iommufd, other) == ([(0, U64)], 1)
    destroy(iommufd, other)
    assert mock_domain_replace(iommufd, stdev, hwpt) == hwpt
    assert err(destroy, iommufd, auto) == errno.ENOENT


def test_hwpt_alloc_fills_the_new_domain(iommufd):
    ioas, _, _, idev = _device(iommufd)
    buf = touched(2)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=START)
    hwpt = hwpt_alloc(iommufd, idev, ioas)
    check_map(iommufd, hwpt, START, 2 * PAGE, buf.addr)
    # and later maps reach every domain of the IOAS
    map_(iommufd, ioas, buf.addr, PAGE, iova=START + 8 * PAGE)
    check_map(iommufd, hwpt, START + 8 * PAGE, PAGE, buf.addr)


def test_hwpt_alloc_data_type_and_len_before_the_device(iommufd):
    ioas = ioas_alloc(iommufd)
    data = hwpt_selftest()
    # hw_pagetable.c:350: NONE with a length, or a type without one, whatever the IDs
    assert err(hwpt_alloc, iommufd, 99, 99, data_len=8) == errno.EINVAL
    assert err(hwpt_alloc, iommufd, 99, 99, data_type=SELFTEST) == errno.EINVAL
    assert err(hwpt_alloc, iommufd, 99, ioas, data_type=SELFTEST, data=data) == errno.ENOENT


def test_hwpt_alloc_lookup_errors(iommufd):
    ioas, stdev, auto, idev = _device(iommufd)
    for wrong in (ioas, stdev, auto, 99):
        assert err(hwpt_alloc, iommufd, wrong, ioas) == errno.ENOENT
    # pt_id: any failure to find it is EINVAL (hw_pagetable.c:360), and so is a wrong type
    for wrong in (99, 0, idev, stdev):
        assert err(hwpt_alloc, iommufd, idev, wrong) == errno.EINVAL
    assert ioas_alloc(iommufd) == 5


def test_hwpt_alloc_flags(iommufd):
    ioas, _, _, idev = _device(iommufd)
    for flags in (1 << 5, 1 << 31):
        assert err(hwpt_alloc, iommufd, idev, ioas, flags) == errno.EOPNOTSUPP
    # IOMMU_HWPT_FAULT_ID_VALID with NEST_PARENT (hw_pagetable.c:131)
    assert err(hwpt_alloc, iommufd, idev, ioas, PARENT | B.IOMMU_HWPT_FAULT_ID_VALID) == errno.EOPNOTSUPP
    assert hwpt_alloc(iommufd, idev, ioas, PARENT) == 5
    assert hwpt_alloc(iommufd, idev, ioas, DIRTY) == 6
    assert hwpt_alloc(iommufd, idev, ioas, B.IOMMU_HWPT_ALLOC_PASID) == 7
    assert ioas_alloc(iommufd) == 8


def test_hwpt_alloc_dirty_tracking_on_a_no_dirty_device_is_eopnotsupp(iommufd):
    ioas, _, _, idev = _device(iommufd, B.MOCK_FLAGS_DEVICE_NO_DIRTY)
    # device_iommu_capable(IOMMU_CAP_DIRTY_TRACKING) is false: mock_domain_capable()
    assert err(hwpt_alloc, iommufd, idev, ioas, DIRTY) == errno.EOPNOTSUPP
    hwpt_alloc(iommufd, idev, ioas)


def test_a_no_dirty_device_cannot_attach_to_a_dirty_tracking_hwpt(iommufd):
    ioas, _, _, idev = _device(iommufd)
    dirty = hwpt_alloc(iommufd, idev, ioas, DIRTY)
    # mock_domain_nop_attach(): domain->dirty_ops on a MOCK_FLAGS_DEVICE_NO_DIRTY device
    assert err(mock_device, iommufd, dirty, B.MOCK_FLAGS_DEVICE_NO_DIRTY) == errno.EINVAL
    stdev2, _, _ = mock_device(iommufd, ioas, B.MOCK_FLAGS_DEVICE_NO_DIRTY)
    assert err(mock_domain_replace, iommufd, stdev2, dirty) == errno.EINVAL
    assert mock_device(iommufd, dirty)[1] == dirty


def test_hwpt_alloc_selftest_data(iommufd):
    ioas, _, _, idev = _device(iommufd)
    data = hwpt_selftest()
    assert hwpt_alloc(iommufd, idev, ioas, data_type=SELFTEST, data=data) == 5
    # the initial struct ends at iotlb (iommu_copy_struct_from_user(..., iotlb)): 4 bytes will do
    assert hwpt_alloc(iommufd, idev, ioas, data_type=SELFTEST, data=data, data_len=4) == 6
    # __iommu_copy_struct_from_user(): shorter than the first version, or longer than the
    # kernel's struct, is EINVAL (not E2BIG)
    for n in (1, 3, 9, 16):
        assert err(hwpt_alloc, iommufd, idev, ioas, data_type=SELFTEST, data=data, data_len=n) == errno.EINVAL
    # a data type the driver does not take (mock_domain_alloc_paging_flags())
    assert err(hwpt_alloc, iommufd, idev, ioas, data_type=B.IOMMU_HWPT_DATA_VTD_S1, data=data) == errno.EOPNOTSUPP
    assert err(hwpt_alloc, iommufd, idev, ioas, data_type=SELFTEST, data_len=8) == errno.EFAULT


def test_hwpt_alloc_selftest_pagetable_types(iommufd):
    ioas, _, _, idev = _device(iommufd)
    other = ioas_alloc(iommufd)
    huge = hwpt_alloc(iommufd, idev, other, data_type=SELFTEST,
                      data=hwpt_selftest(pagetable_type=B.MOCK_IOMMUPT_HUGE))
    # MOCK_IOMMUPT_HUGE: pgsize_bitmap MOCK_HUGE_PAGE_SIZE | PAGE_SIZE, and the aperture is not
    # overridden: it is the table's own, 3 levels (starting_level 2) of 9 bits over the 2 KiB
    # granule, 38 bits (not hw_max_vasz_lg2's 56)
    ranges, align = iova_ranges(iommufd, other)
    assert align == PAGE
    assert ranges == [(0, (1 << 38) - 1)]
    destroy(iommufd, huge)
    assert err(hwpt_alloc, iommufd, idev, ioas, data_type=SELFTEST,
               data=hwpt_selftest(pagetable_type=2)) == errno.EOPNOTSUPP


# IOMMU_HWPT_ALLOC: nested

def test_hwpt_alloc_nested(iommufd):
    ioas, stdev, auto, idev = _device(iommufd)
    parent = hwpt_alloc(iommufd, idev, ioas, PARENT)
    nested = hwpt_alloc(iommufd, idev, parent, data_type=SELFTEST, data=hwpt_selftest())
    for i in range(B.MOCK_NESTED_DOMAIN_IOTLB_NUM):
        check_iotlb(iommufd, nested, i, DEFAULT_IOTLB)
    other = hwpt_alloc(iommufd, idev, parent, data_type=SELFTEST, data=hwpt_selftest(iotlb=5))
    check_iotlb(iommufd, other, 3, 5)
    # the nested HWPTs hold their parent
    assert err(destroy, iommufd, parent) == errno.EBUSY
    assert mock_domain_replace(iommufd, stdev, nested) == nested
    assert err(destroy, iommufd, auto) == errno.ENOENT  # the automatic HWPT went with its device
    assert err(destroy, iommufd, nested) == errno.EBUSY
    destroy(iommufd, other)
    assert mock_domain_replace(iommufd, stdev, ioas) == auto  # a new automatic one, at the lowest free ID
    destroy(iommufd, nested)
    destroy(iommufd, parent)


def test_hwpt_alloc_nested_errors(iommufd):
    ioas, _, auto, idev = _device(iommufd)
    plain = hwpt_alloc(iommufd, idev, ioas)
    parent = hwpt_alloc(iommufd, idev, ioas, PARENT)
    data = hwpt_selftest()
    # iommufd_hwpt_nested_alloc(): no data is EOPNOTSUPP, a parent that is automatic or not a
    # NEST_PARENT is EINVAL
    assert err(hwpt_alloc, iommufd, idev, parent) == errno.EOPNOTSUPP
    assert err(hwpt_alloc, iommufd, idev, plain, data_type=SELFTEST, data=data) == errno.EINVAL
    assert err(hwpt_alloc, iommufd, idev, auto, data_type=SELFTEST, data=data) == errno.EINVAL
    assert err(hwpt_alloc, iommufd, idev, parent, DIRTY, data_type=SELFTEST, data=data) == errno.EOPNOTSUPP
    assert err(hwpt_alloc, iommufd, idev, parent, data_type=B.IOMMU_HWPT_DATA_VTD_S1, data=data) == errno.EOPNOTSUPP
    assert err(hwpt_alloc, iommufd, idev, parent, data_type=SELFTEST, data=data, data_len=2) == errno.EINVAL
    nested = hwpt_alloc(iommufd, idev, parent, data_type=SELFTEST, data=data)
    # a nested HWPT is not a parent
    assert err(hwpt_alloc, iommufd, idev, nested, data_type=SELFTEST, data=data) == errno.EINVAL
    assert nested == 7 and ioas_alloc(iommufd) == 8


def test_check_iotlb_errors(iommufd):
    ioas, _, auto, idev = _device(iommufd)
    parent = hwpt_alloc(iommufd, idev, ioas, PARENT)
    nested = hwpt_alloc(iommufd, idev, parent, data_type=SELFTEST, data=hwpt_selftest())
    assert err(check_iotlb, iommufd, nested, B.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1, DEFAULT_IOTLB) == errno.EINVAL
    assert err(check_iotlb, iommufd, nested, 0, 0) == errno.EINVAL
    for wrong in (parent, auto, ioas, 99):
        assert err(check_iotlb, iommufd, wrong, 0, DEFAULT_IOTLB) == errno.ENOENT


# IOMMU_GET_HW_INFO

def test_get_hw_info(iommufd):
    _, _, _, idev = _device(iommufd)
    cmd, data = hw_info(iommufd, idev)
    assert cmd.out_data_type == B.IOMMU_HW_INFO_TYPE_SELFTEST
    assert cmd.data_len == 8
    info = B.iommu_test_hw_info.from_buffer_copy(data)
    assert (info.flags, info.test_reg) == (0, B.IOMMU_HW_INFO_SELFTEST_REGVAL)
    assert cmd.out_capabilities == CAP_DIRTY | CAP_NO_ATS
    assert cmd.out_max_pasid_log2 == 0


def test_get_hw_info_lengths(iommufd):
    _, _, _, idev = _device(iommufd)
    # a short buffer gets the start; data_len answers what the kernel has
    buf = (ctypes.c_ubyte * 8)(*[0xAA] * 8)
    cmd, data = hw_info(iommufd, idev, 4, buf)
    assert cmd.data_len == 8
    assert data == b"\0\0\0\0" + b"\xaa" * 4
    # none at all: nothing written, even through a bad pointer
    cmd = B.iommu_hw_info(size=sz(B.iommu_hw_info), dev_id=idev, data_len=0, data_uptr=8)
    iommufd.ioctl(B.IOMMU_GET_HW_INFO, cmd)
    assert (cmd.data_len, cmd.out_data_type) == (8, B.IOMMU_HW_INFO_TYPE_SELFTEST)
    # a longer one is zeroed past the data (clear_user())
    buf = (ctypes.c_ubyte * 16)(*[0xAA] * 16)
    cmd, data = hw_info(iommufd, idev, 16, buf)
    assert cmd.data_len == 8
    assert data[4:8] == B.IOMMU_HW_INFO_SELFTEST_REGVAL.to_bytes(4, "little")
    assert data[8:] == b"\0" * 8
    bad = B.iommu_hw_info(size=sz(B.iommu_hw_info), dev_id=idev, data_len=8, data_uptr=8)
    assert err(iommufd.ioctl, B.IOMMU_GET_HW_INFO, bad) == errno.EFAULT


def test_get_hw_info_clears_up_to_the_first_fault(iommufd):
    """A data_len of 4 GiB over a 2-page mapping: the data, then clear_user() zeroes until the
    mapping ends and the answer is EFAULT (found by the differential machine: a model building
    a 4 GiB buffer ran out of memory)."""
    _, _, _, idev = _device(iommufd)
    m = mmap.mmap(-1, 3 * PAGE)
    m.write(b"\xaa" * 3 * PAGE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc.munmap(va + 2 * PAGE, PAGE)  # a hole after two pages
    cmd = B.iommu_hw_info(size=sz(B.iommu_hw_info), dev_id=idev, data_len=0xFFFFFFFF, data_uptr=va)
    assert err(iommufd.ioctl, B.IOMMU_GET_HW_INFO, cmd) == errno.EFAULT
    got = ctypes.string_at(va, 2 * PAGE)
    assert got[4:8] == B.IOMMU_HW_INFO_SELFTEST_REGVAL.to_bytes(4, "little")
    assert got[8:] == bytes(2 * PAGE - 8)


def test_get_hw_info_device_flags(iommufd):
    _, _, _, no_dirty = _device(iommufd, B.MOCK_FLAGS_DEVICE_NO_DIRTY)
    assert hw_info(iommufd, no_dirty)[0].out_capabilities == CAP_NO_ATS
    _, _, _, pasid = _device(iommufd, B.MOCK_FLAGS_DEVICE_PASID)
    cmd, _ = hw_info(iommufd, pasid)
    assert cmd.out_max_pasid_log2 == B.MOCK_PASID_WIDTH
    assert cmd.out_capabilities == CAP_DIRTY | CAP_NO_ATS


def test_get_hw_info_input_type(iommufd):
    ioas, stdev, hwpt, idev = _device(iommufd)
    flag = B.IOMMU_HW_INFO_FLAG_INPUT_TYPE
    cmd, _ = hw_info(iommufd, idev, flags=flag, in_type=B.IOMMU_HW_INFO_TYPE_SELFTEST)
    assert cmd.out_data_type == B.IOMMU_HW_INFO_TYPE_SELFTEST
    cmd, _ = hw_info(iommufd, idev, flags=flag, in_type=B.IOMMU_HW_INFO_TYPE_DEFAULT)
    assert cmd.out_data_type == B.IOMMU_HW_INFO_TYPE_SELFTEST
    # mock_domain_hw_info(): any other type is EOPNOTSUPP; without the flag the type is ignored
    assert err(hw_info, iommufd, idev, flags=flag, in_type=1) == errno.EOPNOTSUPP
    assert hw_info(iommufd, idev, in_type=1)[0].out_data_type == B.IOMMU_HW_INFO_TYPE_SELFTEST
    for wrong in (ioas, stdev, hwpt, 99):
        assert err(hw_info, iommufd, wrong) == errno.ENOENT


# dirty tracking

def _dirty_hwpt(fd, npages=8):
    ioas, stdev, _, idev = _device(fd)
    hwpt = hwpt_alloc(fd, idev, ioas, DIRTY)
    mock_domain_replace(fd, stdev, hwpt)
    buf = touched(npages)
    # one map per CPU page: no leaf of the mock table covers more than one (a longer map of
    # physically contiguous pages may get a contiguous leaf, whose dirty bit covers it all)
    for i in range(npages):
        map_(fd, ioas, buf.addr + i * PAGE, PAGE, iova=START + i * PAGE)
    return ioas, hwpt, buf


def _bits(*pages):
    b = (ctypes.c_uint64 * 4)()
    for p in pages:
        b[p // 64] |= 1 << (p % 64)
    return b


def _mark(fd, hwpt, *pages, npages=8):
    """IOMMU_TEST_OP_DIRTY on CPU pages `pages` of START..; returns out_nr_dirty."""
    bits = _bits(*pages)  # kept alive across the call
    return mock_dirty(fd, hwpt, START, npages * PAGE, PAGE, ctypes.addressof(bits))


def _read(fd, hwpt, npages, page_size=PAGE, flags=0, prefill=0):
    out = (ctypes.c_uint64 * 4)(*[prefill] * 4)
    get_dirty_bitmap(fd, hwpt, START, npages * page_size, page_size, ctypes.addressof(out), flags)
    return [i for i in range(256) if out[i // 64] >> (i % 64) & 1]


def test_set_dirty_tracking(iommufd):
    ioas, stdev, auto, idev = _device(iommufd)
    # iopt_set_dirty_tracking(): a domain without dirty ops
    assert err(set_dirty_tracking, iommufd, auto, True) == errno.EOPNOTSUPP
    assert err(set_dirty_tracking, iommufd, auto, False) == errno.EOPNOTSUPP
    hwpt = hwpt_alloc(iommufd, idev, ioas, DIRTY)
    set_dirty_tracking(iommufd, hwpt, True)
    set_dirty_tracking(iommufd, hwpt, True)  # no change is fine
    set_dirty_tracking(iommufd, hwpt, False)
    set_dirty_tracking(iommufd, hwpt, False)
    bad = B.iommu_hwpt_set_dirty_tracking(size=sz(B.iommu_hwpt_set_dirty_tracking), hwpt_id=hwpt, flags=2)
    assert err(iommufd.ioctl, B.IOMMU_HWPT_SET_DIRTY_TRACKING, bad) == errno.EOPNOTSUPP
    for wrong in (ioas, idev, stdev, 99):
        assert err(set_dirty_tracking, iommufd, wrong, True) == errno.ENOENT


def test_dirty_bitmap(iommufd):
    _, hwpt, _ = _dirty_hwpt(iommufd)
    set_dirty_tracking(iommufd, hwpt, True)
    assert _read(iommufd, hwpt, 8) == []
    assert _mark(iommufd, hwpt, 1, 3, 7) == 3
    assert _read(iommufd, hwpt, 8, flags=B.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR) == [1, 3, 7]
    assert _read(iommufd, hwpt, 8) == [1, 3, 7]  # read and cleared
    assert _read(iommufd, hwpt, 8) == []
    # the bitmap's granule is the caller's. A CPU page is a contiguous leaf of two 2 KiB
    # entries; record_dirty() (generic_pt/iommu_pt.h:242) records (end_index - index) entries
    # from the dirty one, one short of the group: a 2 KiB bitmap sees only the first half
    _mark(iommufd, hwpt, 2)
    assert _read(iommufd, hwpt, 16, page_size=MPAGE) == [4]
    _mark(iommufd, hwpt, 2, 5)
    assert _read(iommufd, hwpt, 1, page_size=8 * PAGE) == [0]


def test_dirty_bitmap_only_sets_bits(iommufd):
    # iova_bitmap_set() ORs into the user's bitmap: bits already set stay set
    _, hwpt, _ = _dirty_hwpt(iommufd)
    set_dirty_tracking(iommufd, hwpt, True)
    _mark(iommufd, hwpt, 6)
    assert _read(iommufd, hwpt, 8, prefill=1) == [0, 6, 64, 128, 192]  # words past the range untouched


def test_enabling_tracking_clears_old_dirty_bits(iommufd):
    _, hwpt, _ = _dirty_hwpt(iommufd)
    set_dirty_tracking(iommufd, hwpt, True)
    _mark(iommufd, hwpt, 0, 4)
    set_dirty_tracking(iommufd, hwpt, False)
    set_dirty_tracking(iommufd, hwpt, True)  # iopt_clear_dirty_data()
    assert _read(iommufd, hwpt, 8) == []


def test_mock_dirty_errors(iommufd):
    ioas, hwpt, _ = _dirty_hwpt(iommufd)
    keep = _bits(0)
    bits = ctypes.addressof(keep)
    # iommufd_test_dirty() (selftest.c:1694): tracking must be on
    assert err(mock_dirty, iommufd, hwpt, START, 8 * PAGE, PAGE, bits) == errno.EINVAL
    set_dirty_tracking(iommufd, hwpt, True)
    assert err(mock_dirty, iommufd, hwpt, START, 8 * PAGE, 0, bits) == errno.EINVAL
    assert err(mock_dirty, iommufd, hwpt, START, 0, PAGE, bits) == errno.EINVAL
    assert err(mock_dirty, iommufd, hwpt, START + 1, PAGE, PAGE, bits) == errno.EINVAL
    assert err(mock_dirty, iommufd, hwpt, START, PAGE + 1, PAGE, bits) == errno.EINVAL
    assert err(mock_dirty, iommufd, hwpt, START, PAGE, PAGE, 0) == errno.EINVAL
    assert err(mock_dirty, iommufd, hwpt, START, PAGE, PAGE, 8) == errno.EFAULT
    assert err(mock_dirty, iommufd, ioas, START, PAGE, PAGE, bits) == errno.ENOENT


def test_mock_dirty_of_more_than_128m_bits_is_eoverflow(iommufd):
    """iommufd_test_dirty() (selftest.c:1709-1711): length / page_size above SZ_16M *
    BITS_PER_BYTE bits is EOVERFLOW, before the HWPT is looked up (selftest.c:1713); at the
    limit the lookup of ID 0 answers (ENOENT)."""
    keep = _bits(0)
    limit = 16 * 1024 * 1024 * 8
    assert err(mock_dirty, iommufd, 0, 0, (limit + 1) * PAGE, PAGE, ctypes.addressof(keep)) == errno.EOVERFLOW
    assert err(mock_dirty, iommufd, 0, 0, limit * PAGE, PAGE, ctypes.addressof(keep)) == errno.ENOENT


def test_get_dirty_bitmap_errors(iommufd):
    ioas, hwpt, _ = _dirty_hwpt(iommufd)
    set_dirty_tracking(iommufd, hwpt, True)
    out = (ctypes.c_uint64 * 4)()
    p = ctypes.addressof(out)
    # iommufd_hwpt_get_dirty_bitmap(), iommufd_check_iova_range() (io_pagetable.c:602)
    assert err(get_dirty_bitmap, iommufd, hwpt, START, 8 * PAGE, PAGE, p, 2) == errno.EOPNOTSUPP
    assert err(get_dirty_bitmap, iommufd, ioas, START, 8 * PAGE, PAGE, p) == errno.ENOENT
    assert err(get_dirty_bitmap, iommufd, hwpt, U64 - PAGE + 1, 2 * PAGE, PAGE, p) == errno.EOVERFLOW
    assert err(get_dirty_bitmap, iommufd, hwpt, START + 1024, MPAGE, 1024, p) == errno.EINVAL  # iova_alignment
    assert err(get_dirty_bitmap, iommufd, hwpt, START, 8 * PAGE, 0, p) == errno.EINVAL
    assert err(get_dirty_bitmap, iommufd, hwpt, START + MPAGE, 8 * PAGE, PAGE, p) == errno.EINVAL
    assert err(get_dirty_bitmap, iommufd, hwpt, START, 8 * PAGE + MPAGE, PAGE, p) == errno.EINVAL
    cmd = B.iommu_hwpt_get_dirty_bitmap(size=sz(B.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt, iova=START,
                                        length=PAGE, page_size=PAGE, data=p)
    cmd.__reserved = 1
    assert err(iommufd.ioctl, B.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd) == errno.EOPNOTSUPP


def test_get_dirty_bitmap_of_a_hwpt_without_dirty_ops_is_eopnotsupp(iommufd):
    _, _, auto, _ = _device(iommufd)
    out = (ctypes.c_uint64 * 4)()
    assert err(get_dirty_bitmap, iommufd, auto, START, PAGE, PAGE, ctypes.addressof(out)) == errno.EOPNOTSUPP


def test_get_dirty_bitmap_swallows_walk_errors(iommufd):
    """iommu_read_and_clear_dirty() (io_pagetable.c:565) ignores what iova_bitmap_for_each()
    returns: a range with no mapping, or a bitmap it cannot pin, still answers 0."""
    _, hwpt, _ = _dirty_hwpt(iommufd)
    set_dirty_tracking(iommufd, hwpt, True)
    out = (ctypes.c_uint64 * 4)()
    get_dirty_bitmap(iommufd, hwpt, START + 64 * PAGE, 8 * PAGE, PAGE, ctypes.addressof(out))
    assert list(out) == [0] * 4
    get_dirty_bitmap(iommufd, hwpt, START, 8 * PAGE, PAGE, 8)


# IOMMU_HWPT_INVALIDATE

def _nested(fd):
    ioas, stdev, auto, idev = _device(fd)
    parent = hwpt_alloc(fd, idev, ioas, PARENT)
    nested = hwpt_alloc(fd, idev, parent, data_type=SELFTEST, data=hwpt_selftest())
    return parent, nested


def _invalidate(fd, hwpt_id, entries, entry_len=None, data_type=None, num=None, uptr=None):
    """(errno, entry_num written back)."""
    raw = b"".join(bytes(B.iommu_hwpt_invalidate_selftest(flags=f, iotlb_id=i)) for f, i in entries)
    return hwpt_invalidate(fd, hwpt_id, raw, B.iommu_hwpt_invalidate_selftest,
                           B.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST if data_type is None else data_type,
                           entry_len, len(entries) if num is None else num, uptr)


def _iotlbs(fd, nested, values):
    for i, v in enumerate(values):
        check_iotlb(fd, nested, i, v)


def test_invalidate(iommufd):
    _, nested = _nested(iommufd)
    D = DEFAULT_IOTLB
    assert _invalidate(iommufd, nested, [(0, 1)]) == (0, 1)
    _iotlbs(iommufd, nested, [D, 0, D, D])
    assert _invalidate(iommufd, nested, [(0, 0), (0, 3)]) == (0, 2)
    _iotlbs(iommufd, nested, [0, 0, D, 0])
    # iommufd_test.h says iotlb_id is ignored with IOMMU_TEST_INVALIDATE_FLAG_ALL, but
    # mock_domain_cache_invalidate_user() (selftest.c:900) checks it first
    assert _invalidate(iommufd, nested, [(B.IOMMU_TEST_INVALIDATE_FLAG_ALL, 4)]) == (errno.EINVAL, 0)
    _iotlbs(iommufd, nested, [0, 0, D, 0])
    assert _invalidate(iommufd, nested, [(B.IOMMU_TEST_INVALIDATE_FLAG_ALL, 3)]) == (0, 1)
    _iotlbs(iommufd, nested, [0, 0, 0, 0])


def test_invalidate_stops_at_the_first_bad_entry(iommufd):
    _, nested = _nested(iommufd)
    D = DEFAULT_IOTLB
    # mock_domain_cache_invalidate_user(): entry_num answers how many were done
    assert _invalidate(iommufd, nested, [(0, 2), (0, 4), (0, 0)]) == (errno.EINVAL, 1)
    _iotlbs(iommufd, nested, [D, D, 0, D])
    assert _invalidate(iommufd, nested, [(0, 0), (1 << 1, 1)]) == (errno.EOPNOTSUPP, 1)
    _iotlbs(iommufd, nested, [0, D, 0, D])


def test_invalidate_array_errors(iommufd):
    parent, nested = _nested(iommufd)
    # the type is the driver's first check, even with no entries (entry_num 0 written back)
    assert _invalidate(iommufd, nested, [(0, 0)], data_type=B.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, nested, [], num=0) == (0, 0)
    # iommufd_hwpt_invalidate() bounds (hw_pagetable.c:517)
    assert _invalidate(iommufd, nested, [(0, 0)], uptr=0) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, nested, [(0, 0)], entry_len=0) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, nested, [(0, 0)], entry_len=PAGE + 1) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, nested, [(0, 0)], num=(1 << 19) + 1) == (errno.EINVAL, 0)
    # __iommu_copy_struct_from_user(): entry_len below the first version or above the struct
    assert _invalidate(iommufd, nested, [(0, 0), (0, 0)], entry_len=4) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, nested, [(0, 0), (0, 0)], entry_len=12) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, nested, [(0, 0)], uptr=8) == (errno.EFAULT, 0)
    _iotlbs(iommufd, nested, [DEFAULT_IOTLB] * 4)


def test_invalidate_wants_a_nested_hwpt(iommufd):
    parent, nested = _nested(iommufd)
    assert _invalidate(iommufd, parent, [(0, 0)]) == (errno.EINVAL, 0)
    assert _invalidate(iommufd, 99, [(0, 0)]) == (errno.ENOENT, 0)
    ioas = ioas_alloc(iommufd)
    assert _invalidate(iommufd, ioas, [(0, 0)]) == (errno.EINVAL, 0)


@pytest.mark.parametrize("what", ["auto", "manual", "parent"])
def test_destroy_busy_hwpts(iommufd, what):
    ioas, stdev, auto, idev = _device(iommufd)
    if what == "auto":
        hwpt = auto
    else:
        hwpt = hwpt_alloc(iommufd, idev, ioas, PARENT if what == "parent" else 0)
        mock_domain_replace(iommufd, stdev, hwpt)
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
    assert err(destroy, iommufd, ioas) == errno.EBUSY
    destroy(iommufd, stdev)
    if what == "auto":
        assert err(destroy, iommufd, hwpt) == errno.ENOENT
    else:
        assert err(destroy, iommufd, ioas) == errno.EBUSY  # the manual HWPT still holds it
        destroy(iommufd, hwpt)
    destroy(iommufd, ioas)
    assert ioas_alloc(iommufd) == 1


def test_unmap_reaches_a_detached_hwpt(iommufd):
    ioas, stdev, _, idev = _device(iommufd)
    hwpt = hwpt_alloc(iommufd, idev, ioas)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START)
    check_map(iommufd, hwpt, START, PAGE, buf.addr)
    unmap(iommufd, ioas, START, PAGE)
    assert err(check_map, iommufd, hwpt, START, PAGE, buf.addr) == errno.EINVAL
