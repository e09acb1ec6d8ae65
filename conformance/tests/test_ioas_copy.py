"""IOMMU_IOAS_COPY: iommufd_ioas_copy() (ioas.c): iopt_get_pages() on the source, then
iopt_map_pages() into the destination with the same struct iopt_pages (io_pagetable.c)."""
import errno

import pytest

from conformance.tests.helpers import (
    FIXED, PAGE, R, RW, U64, W, Buf, copy, destroy, err, ioas_alloc, map_, snapshot, unmap,
)

BASE = 0x100000
HPAGE = 2 << 20


def src_with_areas(fd):
    """[BASE, +2P) and [BASE+2P, +2P) back to back, [BASE+6P, +P) after a gap."""
    src = ioas_alloc(fd)
    buf = Buf(4)
    map_(fd, src, buf.addr, 2 * PAGE, iova=BASE)
    map_(fd, src, buf.addr + 2 * PAGE, 2 * PAGE, iova=BASE + 2 * PAGE)
    map_(fd, src, buf.addr, PAGE, iova=BASE + 6 * PAGE)
    return src


def test_copy_a_whole_area(iommufd):
    src = src_with_areas(iommufd)
    dst = ioas_alloc(iommufd)
    assert copy(iommufd, dst, src, BASE, 2 * PAGE, dst_iova=0x5000) == 0x5000
    assert unmap(iommufd, dst, 0x5000, 2 * PAGE) == 2 * PAGE


def test_copy_part_of_an_area(iommufd):
    # iopt_get_pages() takes any slice (iopt_area_start_byte()); the copy is a new, smaller area.
    src = src_with_areas(iommufd)
    dst = ioas_alloc(iommufd)
    assert copy(iommufd, dst, src, BASE + PAGE, PAGE, dst_iova=0x5000) == 0x5000
    assert copy(iommufd, dst, src, BASE + 0x800, 0x100, dst_iova=0x9000) == 0x9000
    assert unmap(iommufd, dst, 0, U64) == PAGE + 0x100


def test_copy_across_contiguous_areas_makes_one_area_per_source_area(iommufd):
    src = src_with_areas(iommufd)
    dst = ioas_alloc(iommufd)
    assert copy(iommufd, dst, src, BASE + PAGE, 2 * PAGE, dst_iova=0x10000) == 0x10000
    # the boundary of the source areas is kept: [0x10000, +P) and [0x11000, +P)
    assert err(unmap, iommufd, dst, 0x10800, PAGE) == errno.ENOENT
    assert unmap(iommufd, dst, 0x11000, PAGE) == PAGE
    assert unmap(iommufd, dst, 0x10000, PAGE) == PAGE


@pytest.mark.parametrize("src_iova,length", [
    (BASE, 7 * PAGE),            # over the gap
    (BASE + 4 * PAGE, PAGE),     # nothing there
    (BASE - 1, 2),               # starts before the first area
    (BASE + 3 * PAGE, 3 * PAGE + 1),
])
def test_copy_of_a_range_with_a_gap_is_enoent(iommufd, src_iova, length):
    src = src_with_areas(iommufd)
    dst = ioas_alloc(iommufd)
    probes = [(BASE, 4 * PAGE), (BASE + 6 * PAGE, PAGE)]
    before = snapshot(iommufd, src, probes), snapshot(iommufd, dst, [(0x5000, PAGE)])
    assert err(copy, iommufd, dst, src, src_iova, length) == errno.ENOENT
    assert (snapshot(iommufd, src, probes), snapshot(iommufd, dst, [(0x5000, PAGE)])) == before


def test_the_source_is_checked_before_the_destination_exists(iommufd):
    src = src_with_areas(iommufd)
    assert err(copy, iommufd, 99, src, BASE, 0) == errno.EINVAL       # iopt_get_pages(): !length
    assert err(copy, iommufd, 99, src, U64 - 1, 3) == errno.EOVERFLOW  # src_iova + length - 1 wraps
    assert err(copy, iommufd, 99, src, BASE, PAGE) == errno.ENOENT    # then the dst lookup
    assert err(copy, iommufd, src, 99, BASE, PAGE) == errno.ENOENT


@pytest.mark.parametrize("flags,length,src_iova,dst_iova,want", [
    (RW | 8, PAGE, BASE, 0, errno.EOPNOTSUPP),
    (RW, U64, BASE, 0, errno.EOVERFLOW),
    (RW, PAGE, U64, 0, errno.EOVERFLOW),
    (RW | FIXED, PAGE, BASE, U64, errno.EOVERFLOW),
    (0, PAGE, BASE, 0, errno.EINVAL),
    (FIXED, PAGE, U64, 0x5000, errno.EOVERFLOW),
])
def test_copy_argument_checks(iommufd, flags, length, src_iova, dst_iova, want):
    src = src_with_areas(iommufd)
    dst = ioas_alloc(iommufd)
    before = snapshot(iommufd, dst, [(0x5000, PAGE)])
    from conformance.tests.helpers import B, sz
    cmd = B.iommu_ioas_copy(size=sz(B.iommu_ioas_copy), flags=flags, dst_ioas_id=dst, src_ioas_id=src,
                            length=length, dst_iova=dst_iova, src_iova=src_iova)
    assert err(iommufd.ioctl, B.IOMMU_IOAS_COPY, cmd) == want
    assert snapshot(iommufd, dst, [(0x5000, PAGE)]) == before


def test_writeable_copy_of_read_only_pages_is_eperm(iommufd):
    # iopt_insert_area(): IOMMU_WRITE on pages mapped without WRITEABLE (pages->writable)
    src = ioas_alloc(iommufd)
    dst = ioas_alloc(iommufd)
    buf = Buf(2)
    map_(iommufd, src, buf.addr, PAGE, iova=BASE, flags=R)
    map_(iommufd, src, buf.addr + PAGE, PAGE, iova=BASE + PAGE, flags=W)
    before = snapshot(iommufd, dst, [(0x5000, 2 * PAGE)])
    assert err(copy, iommufd, dst, src, BASE, PAGE, dst_iova=0x5000, flags=RW) == errno.EPERM
    assert err(copy, iommufd, dst, src, BASE, 2 * PAGE, dst_iova=0x5000, flags=W) == errno.EPERM
    assert snapshot(iommufd, dst, [(0x5000, 2 * PAGE)]) == before
    assert copy(iommufd, dst, src, BASE, PAGE, dst_iova=0x5000, flags=R) == 0x5000
    # the write-only pages can be copied read-only: only WRITE is checked against the pages
    assert copy(iommufd, dst, src, BASE + PAGE, PAGE, dst_iova=0x6000, flags=R) == 0x6000
    assert copy(iommufd, dst, src, BASE, 2 * PAGE, dst_iova=0x8000, flags=R) == 0x8000


def test_copy_over_an_existing_destination_area_is_eexist(iommufd):
    src = src_with_areas(iommufd)
    dst = ioas_alloc(iommufd)
    buf = Buf(1)
    map_(iommufd, dst, buf.addr, PAGE, iova=0x6000)
    before = snapshot(iommufd, dst, [(0x6000, PAGE)])
    assert err(copy, iommufd, dst, src, BASE, 4 * PAGE, dst_iova=0x4000) == errno.EEXIST
    assert snapshot(iommufd, dst, [(0x6000, PAGE)]) == before


def test_automatic_destination_iova_follows_the_source_address(iommufd):
    # iopt_alloc_area_pages(): the first element's start_byte + pages->uptr is the "addr" of
    # iopt_alloc_iova(), i.e. the user address behind the copied IOVA.
    src = ioas_alloc(iommufd)
    dst = ioas_alloc(iommufd)
    buf = Buf(4, align=HPAGE)
    map_(iommufd, src, buf.addr + 0x800, 3 * PAGE, iova=BASE + 0x123)
    assert copy(iommufd, dst, src, BASE + 0x123, 0x800) == PAGE + 0x800
    # BASE + 0x123 + 0x800 is buf.addr + PAGE: page aligned, 0x1000 alignment
    assert copy(iommufd, dst, src, BASE + 0x923, PAGE) == 2 * PAGE


def test_copy_within_one_ioas_and_after_the_source_is_gone(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(2)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    assert copy(iommufd, ioas, ioas, BASE, 2 * PAGE, dst_iova=BASE + 2 * PAGE) == BASE + 2 * PAGE
    assert unmap(iommufd, ioas, BASE, 2 * PAGE) == 2 * PAGE
    # the copy holds its own reference on the pages: it can be copied again and unmapped
    assert copy(iommufd, ioas, ioas, BASE + 2 * PAGE, PAGE, dst_iova=BASE) == BASE
    assert unmap(iommufd, ioas, 0, U64) == 3 * PAGE
    other = ioas_alloc(iommufd)
    map_(iommufd, other, buf.addr, PAGE, iova=BASE)
    assert copy(iommufd, ioas, other, BASE, PAGE) == PAGE
    destroy(iommufd, other)
    assert unmap(iommufd, ioas, PAGE, PAGE) == PAGE
