"""IOMMU_IOAS_ALLOW_IOVAS (iommufd_ioas_allow_iovas(), iommufd_ioas_load_iovas(), ioas.c;
iopt_set_allow_iova(), io_pagetable.c), IOMMU_IOAS_IOVA_RANGES and reserved ranges.

Allowed ranges only steer the automatic allocator (iopt_alloc_iova()); IOVA_RANGES reports the
holes of the reserved tree. Reserved ranges without a device come from IOMMU_TEST_OP_ADD_RESERVED
(CONFIG_IOMMUFD_TEST), which the model does not implement yet: those tests skip there.
"""
import ctypes
import errno

import pytest

from conformance.tests.helpers import (
    B, PAGE, U64, Buf, add_reserved, allow, err, ioas_alloc, iova_ranges, map_, snapshot, sz, unmap,
    unmapped_va,
)

HPAGE = 2 << 20


def test_allowed_ranges_are_not_in_iova_ranges(iommufd):
    ioas = ioas_alloc(iommufd)
    allow(iommufd, ioas, [(0x100000, 0x1fffff)])
    assert iova_ranges(iommufd, ioas) == ([(0, U64)], 1)


def test_allowed_ranges_steer_the_allocator(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(4, align=HPAGE)
    # any order is accepted; first fit walks them in address order
    allow(iommufd, ioas, [(0x300000, 0x3fffff), (0x100000, 0x100fff), (0x200000, 0x2fffff)])
    assert map_(iommufd, ioas, buf.addr, PAGE) == 0x100000
    assert map_(iommufd, ioas, buf.addr, PAGE) == 0x200000
    assert map_(iommufd, ioas, buf.addr, 2 * PAGE) == 0x202000
    assert err(map_, iommufd, ioas, buf.addr, 0x200000) == errno.ENOSPC


def test_adjacent_allowed_ranges_merge(iommufd):
    # interval_tree_span_iter joins nodes that touch: one used span.
    ioas = ioas_alloc(iommufd)
    buf = Buf(4, align=HPAGE)
    allow(iommufd, ioas, [(0x100000, 0x100fff), (0x101000, 0x101fff)])
    assert map_(iommufd, ioas, buf.addr, 2 * PAGE) == 0x100000


def test_allowed_ranges_do_not_restrict_fixed_iova(iommufd):
    # iopt_check_iova() looks at reserved ranges and areas only.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    allow(iommufd, ioas, [(0x100000, 0x1fffff)])
    assert map_(iommufd, ioas, buf.addr, PAGE, iova=0x5000) == 0x5000


def test_allowing_a_range_away_from_existing_areas_is_fine(iommufd):
    # iopt_set_allow_iova() checks the reserved tree only: areas outside stay.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=0x5000)
    allow(iommufd, ioas, [(0x100000, 0x1fffff)])
    assert unmap(iommufd, ioas, 0x5000, PAGE) == PAGE


def test_the_allocator_never_uses_the_first_or_last_page(iommufd):
    # iopt_alloc_iova() walks [PAGE_SIZE, ULONG_MAX - PAGE_SIZE] of the allowed tree.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1, align=HPAGE)
    allow(iommufd, ioas, [(0, PAGE - 1)])
    assert err(map_, iommufd, ioas, buf.addr, 1) == errno.ENOSPC
    allow(iommufd, ioas, [(0, PAGE - 1), (U64 - PAGE + 1, U64)])
    assert err(map_, iommufd, ioas, buf.addr, 1) == errno.ENOSPC
    allow(iommufd, ioas, [(0, 2 * PAGE - 1)])
    assert map_(iommufd, ioas, buf.addr, 1) == PAGE
    allow(iommufd, ioas, [(U64 - 2 * PAGE + 1, U64)])
    assert map_(iommufd, ioas, buf.addr, PAGE - 1) == U64 - 2 * PAGE + 1


def test_num_iovas_zero_clears_the_allowed_ranges(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1, align=HPAGE)
    allow(iommufd, ioas, [(0x100000, 0x1fffff)])
    allow(iommufd, ioas, [])
    assert map_(iommufd, ioas, buf.addr, PAGE) == PAGE


@pytest.mark.parametrize("ranges", [
    [(0x2000, 0x1000)],                      # start > last
    [(0x2000, 0x2000)],                      # start == last: one byte is refused too
    [(0x1000, 0x2fff), (0x2fff, 0x3fff)],    # overlap by one byte
    [(0x1000, 0x8fff), (0x2000, 0x2fff)],    # contained
    [(0x5000, 0x5fff), (0x1000, 0x1fff), (0x1800, 0x1900)],
])
def test_bad_ranges_are_einval_and_keep_the_old_set(iommufd, ranges):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1, align=HPAGE)
    allow(iommufd, ioas, [(0x100000, 0x1fffff)])
    before = snapshot(iommufd, ioas, auto_probe=(buf.addr, PAGE))
    assert err(allow, iommufd, ioas, ranges) == errno.EINVAL
    assert snapshot(iommufd, ioas, auto_probe=(buf.addr, PAGE)) == before
    assert map_(iommufd, ioas, buf.addr, PAGE) == 0x100000


def test_ranges_are_read_one_by_one(iommufd):
    # iommufd_ioas_load_iovas(): copy_from_user and check each range before the next one:
    # a bad range before an unreadable one is EINVAL, a good one is followed by EFAULT.
    ioas = ioas_alloc(iommufd)
    bad = unmapped_va()
    assert err(allow, iommufd, ioas, [], num=1, ptr=bad) == errno.EFAULT
    assert err(allow, iommufd, ioas, [], num=1, ptr=0) == errno.EFAULT
    buf = Buf(2)
    end = buf.addr + 2 * PAGE - 16  # the last range slot of the buffer; what follows is unmapped?
    arr = (B.iommu_iova_range * 1).from_address(end)
    arr[0].start, arr[0].last = 0x2000, 0x1000
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(buf.addr + 2 * PAGE), PAGE, 0) == 0  # guard page after it
    try:
        assert err(allow, iommufd, ioas, [], num=2, ptr=end) == errno.EINVAL
        arr[0].start, arr[0].last = 0x1000, 0x2000
        assert err(allow, iommufd, ioas, [], num=2, ptr=end) == errno.EFAULT
        assert err(allow, iommufd, ioas, [], num=1, ptr=end) == 0
    finally:
        libc.mprotect(ctypes.c_void_p(buf.addr + 2 * PAGE), PAGE, 3)


def test_allow_iovas_checks(iommufd):
    ioas = ioas_alloc(iommufd)
    r = (B.iommu_iova_range * 1)(B.iommu_iova_range(0x1000, 0x1fff))
    cmd = B.iommu_ioas_allow_iovas(size=sz(B.iommu_ioas_allow_iovas), ioas_id=ioas, num_iovas=1,
                                   __reserved=1, allowed_iovas=ctypes.addressof(r))
    assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOW_IOVAS, cmd) == errno.EOPNOTSUPP
    cmd.ioas_id = 77
    assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOW_IOVAS, cmd) == errno.EOPNOTSUPP  # before the lookup
    cmd.__reserved = 0
    assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOW_IOVAS, cmd) == errno.ENOENT
    cmd.allowed_iovas = 0
    assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOW_IOVAS, cmd) == errno.ENOENT  # before the copy


def test_iova_ranges_too_small_is_emsgsize_with_the_count(iommufd):
    ioas = ioas_alloc(iommufd)
    cmd = B.iommu_ioas_iova_ranges(size=sz(B.iommu_ioas_iova_ranges), ioas_id=ioas, num_iovas=0)
    assert err(iommufd.ioctl, B.IOMMU_IOAS_IOVA_RANGES, cmd) == errno.EMSGSIZE
    assert cmd.num_iovas == 1 and cmd.out_iova_alignment == 1


# -- reserved ranges (IOMMU_TEST_OP_ADD_RESERVED: iopt_reserve_iova()) -----------------------

def test_reserved_ranges_show_in_iova_ranges_and_block_maps(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(4, align=HPAGE)
    add_reserved(iommufd, ioas, PAGE, 0xff000)             # [0x1000, 0xfffff]
    add_reserved(iommufd, ioas, 0x180000, 0x80000)          # [0x180000, 0x1fffff]
    assert iova_ranges(iommufd, ioas)[0] == [(0, PAGE - 1), (0x100000, 0x17ffff), (0x200000, U64)]
    # the allocator skips them; FIXED_IOVA over one is EINVAL (iopt_check_iova())
    assert map_(iommufd, ioas, buf.addr, PAGE) == 0x100000
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=0x17f000 + 1) == errno.EINVAL
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=0x5000) == errno.EINVAL
    assert map_(iommufd, ioas, buf.addr, 0x80000) == 0x200000
    assert map_(iommufd, ioas, buf.addr, PAGE, iova=0) == 0


def test_allowed_over_reserved_is_eaddrinuse(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1, align=HPAGE)
    add_reserved(iommufd, ioas, 0x100000, 0x100000)
    allow(iommufd, ioas, [(0x400000, 0x4fffff)])
    before = snapshot(iommufd, ioas, auto_probe=(buf.addr, PAGE))
    # iopt_set_allow_iova(): the new tree is swapped back out, the old one stays
    assert err(allow, iommufd, ioas, [(0x600000, 0x6fffff), (0x1fffff, 0x300000)]) == errno.EADDRINUSE
    assert snapshot(iommufd, ioas, auto_probe=(buf.addr, PAGE)) == before
    assert map_(iommufd, ioas, buf.addr, PAGE) == 0x400000


def test_reserving_over_an_area_or_allowed_range_is_eaddrinuse(iommufd):
    # iopt_reserve_iova(): an area or an allowed range in the way
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=0x10000)
    allow(iommufd, ioas, [(0x400000, 0x4fffff)])
    assert err(add_reserved, iommufd, ioas, 0x10000, PAGE) == errno.EADDRINUSE
    assert err(add_reserved, iommufd, ioas, 0x4ff000, 0x2000) == errno.EADDRINUSE
    add_reserved(iommufd, ioas, 0x11000, PAGE)
    assert iova_ranges(iommufd, ioas)[0] == [(0, 0x10fff), (0x12000, U64)]
