"""IOMMU_IOAS_UNMAP: iommufd_ioas_unmap() (ioas.c) -> iopt_unmap_iova() / iopt_unmap_all()
-> iopt_unmap_iova_range() (io_pagetable.c): whole areas only, never split."""
import errno

import pytest

from conformance.tests.helpers import (
    B, PAGE, U64, Buf, destroy, err, ioas_alloc, map_, snapshot, sz, unmap,
)

BASE = 0x100000


def three_areas(fd):
    """Areas [BASE, +2P), [BASE+2P, +P) back to back, and [BASE+8P, +P) after a gap."""
    ioas = ioas_alloc(fd)
    buf = Buf(2)
    map_(fd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    map_(fd, ioas, buf.addr, PAGE, iova=BASE + 2 * PAGE)
    map_(fd, ioas, buf.addr, PAGE, iova=BASE + 8 * PAGE)
    return ioas


PROBES = [(BASE, 2 * PAGE), (BASE + 2 * PAGE, PAGE), (BASE + 8 * PAGE, PAGE)]


def test_unmap_returns_the_bytes_unmapped(iommufd):
    ioas = three_areas(iommufd)
    assert unmap(iommufd, ioas, BASE + 2 * PAGE, PAGE) == PAGE
    # a range larger than what it covers: only the areas' bytes count
    assert unmap(iommufd, ioas, 0, BASE + 100 * PAGE) == 3 * PAGE


def test_unmap_all_is_iova_0_length_u64_max(iommufd):
    ioas = three_areas(iommufd)
    assert unmap(iommufd, ioas, 0, U64) == 4 * PAGE
    # iopt_unmap_all() on an empty table succeeds with 0 ("If the IOVAs are empty then unmap all
    # succeeds"), unlike a range with nothing in it.
    assert unmap(iommufd, ioas, 0, U64) == 0
    assert err(unmap, iommufd, ioas, 0, U64 - 1) == errno.ENOENT


def test_unmap_nothing_there_is_enoent(iommufd):
    ioas = three_areas(iommufd)
    before = snapshot(iommufd, ioas, PROBES)
    assert err(unmap, iommufd, ioas, BASE + 3 * PAGE, 5 * PAGE) == errno.ENOENT
    assert err(unmap, iommufd, ioas, 0, BASE) == errno.ENOENT
    assert snapshot(iommufd, ioas, PROBES) == before


@pytest.mark.parametrize("iova,length", [
    (BASE + PAGE, PAGE),          # the middle of the 2-page area
    (BASE + PAGE, 2 * PAGE),      # starts inside the first area
    (BASE, PAGE),                 # ends inside it
    (BASE - PAGE, 2 * PAGE),
    (BASE + 1, 2 * PAGE - 1),
])
def test_cutting_the_first_area_is_enoent_and_unmaps_nothing(iommufd, iova, length):
    # iopt_unmap_iova_range(): area_first < start || area_last > last -> -ENOENT
    ioas = three_areas(iommufd)
    before = snapshot(iommufd, ioas, PROBES)
    assert err(unmap, iommufd, ioas, iova, length) == errno.ENOENT
    assert snapshot(iommufd, ioas, PROBES) == before


def test_cutting_a_later_area_keeps_the_earlier_ones_unmapped(iommufd):
    # The walk unmaps area by area in IOVA order and stops at the first one that sticks out:
    # the areas before it are gone although the ioctl fails with ENOENT.
    ioas = three_areas(iommufd)
    assert err(unmap, iommufd, ioas, BASE, 8 * PAGE + 1) == errno.ENOENT
    assert err(unmap, iommufd, ioas, BASE, 3 * PAGE) == errno.ENOENT  # both already gone
    assert unmap(iommufd, ioas, BASE + 8 * PAGE, PAGE) == PAGE


@pytest.mark.parametrize("iova,length,want", [
    (BASE, 0, errno.EINVAL),                # iopt_unmap_iova(): !length
    (U64, 1, errno.EOVERFLOW),              # iova >= ULONG_MAX
    (0, U64 - 1, errno.ENOENT),             # not the unmap-all pair, nothing there... (no area below)
    (1, U64, errno.EOVERFLOW),              # length >= ULONG_MAX unless iova == 0
    (U64 - 1, 3, errno.EOVERFLOW),          # iova + length - 1 wraps
    (U64 - 1, 2, errno.ENOENT),             # ends at the last byte: no wrap
    (U64 - 1, 1, errno.ENOENT),
])
def test_unmap_argument_checks(iommufd, iova, length, want):
    ioas = ioas_alloc(iommufd)
    before = snapshot(iommufd, ioas)
    assert err(unmap, iommufd, ioas, iova, length) == want
    assert snapshot(iommufd, ioas) == before


def test_unknown_ioas_comes_first(iommufd):
    # iommufd_get_ioas() runs before any check of iova/length.
    assert err(unmap, iommufd, 1, BASE, 0) == errno.ENOENT
    assert err(unmap, iommufd, 1, 0, U64) == errno.ENOENT
    ioas = three_areas(iommufd)
    destroy(iommufd, ioas)
    assert err(unmap, iommufd, ioas, U64, 1) == errno.ENOENT


def test_unmap_range_over_many_areas(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    n = 300
    for i in range(n):
        map_(iommufd, ioas, buf.addr, PAGE, iova=BASE + 2 * i * PAGE)
    assert unmap(iommufd, ioas, BASE + 10 * PAGE, 20 * PAGE - 1) == 10 * PAGE
    assert unmap(iommufd, ioas, BASE, 2 * n * PAGE) == (n - 10) * PAGE
    assert map_(iommufd, ioas, buf.addr, 2 * n * PAGE, iova=BASE) == BASE  # all free again


def test_short_struct_is_einval(iommufd):
    # IOCTL_OP(IOMMU_IOAS_UNMAP, ..., length): min_size is the whole struct
    ioas = ioas_alloc(iommufd)
    cmd = B.iommu_ioas_unmap(size=sz(B.iommu_ioas_unmap) - 8, ioas_id=ioas, iova=BASE, length=PAGE)
    assert err(iommufd.ioctl, B.IOMMU_IOAS_UNMAP, cmd) == errno.EINVAL
