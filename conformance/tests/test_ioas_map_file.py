"""IOMMU_IOAS_MAP_FILE (iommufd_ioas_map_file(), ioas.c -> iopt_map_file_pages(),
io_pagetable.c) and IOMMU_IOAS_CHANGE_PROCESS (iommufd_ioas_change_process(), ioas.c).

Without a domain the file's pages are not pinned (pin_memfd_pages() runs at fill time), so the
file is only looked up: dma_buf_get(), then fget() (EBADF)."""
import errno
import os
import tempfile

import pytest

from conformance.tests.helpers import (
    B, PAGE, RW, U64, Buf, err, ioas_alloc, map_, map_file, require, snapshot, sz, unmap,
)

require("IOMMU_IOAS_MAP_FILE", "IOMMU_IOAS_CHANGE_PROCESS")

HPAGE = 2 << 20


@pytest.fixture
def memfd():
    fd = os.memfd_create("iommufd-conformance")
    os.ftruncate(fd, 16 * PAGE)
    yield fd
    os.close(fd)


def test_map_a_memfd(iommufd, memfd):
    ioas = ioas_alloc(iommufd)
    assert map_file(iommufd, ioas, memfd, 0, 4 * PAGE) == 4 * PAGE  # 4-page alignment from start 0
    # the file offset plays the part of the user address for the IOVA alignment
    assert map_file(iommufd, ioas, memfd, PAGE, PAGE) == PAGE
    assert map_file(iommufd, ioas, memfd, 0x800, 0x800) == 2 * PAGE + 0x800
    assert map_file(iommufd, ioas, memfd, 0, PAGE, iova=0x100000) == 0x100000
    assert unmap(iommufd, ioas, 0, U64) == 6 * PAGE + 0x800


def test_beyond_the_end_of_the_file_maps_without_a_domain(iommufd, memfd):
    ioas = ioas_alloc(iommufd)
    assert map_file(iommufd, ioas, memfd, 64 * PAGE, PAGE, iova=0x10000) == 0x10000


def test_a_regular_file_maps(iommufd):
    ioas = ioas_alloc(iommufd)
    with tempfile.TemporaryFile() as f:
        f.write(b"\0" * PAGE)
        f.flush()
        assert map_file(iommufd, ioas, f.fileno(), 0, PAGE, iova=0x10000) == 0x10000


@pytest.mark.parametrize("bad", ["closed", "minus1", "opath"])
def test_bad_fd_is_ebadf(iommufd, bad):
    ioas = ioas_alloc(iommufd)
    if bad == "closed":
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
    elif bad == "minus1":
        fd = -1
    else:
        fd = os.open("/", os.O_PATH)  # fget() skips FMODE_PATH files
    try:
        before = snapshot(iommufd, ioas)
        assert err(map_file, iommufd, ioas, fd, 0, PAGE) == errno.EBADF
        assert snapshot(iommufd, ioas) == before
    finally:
        if bad == "opath":
            os.close(fd)


def test_checks_before_the_fd(iommufd, memfd):
    ioas = ioas_alloc(iommufd)
    assert err(map_file, iommufd, ioas, -1, 0, 0) == errno.EINVAL           # !length
    assert err(map_file, iommufd, ioas, -1, U64 - 1, 2 * PAGE) == errno.EOVERFLOW  # start + length - 1
    assert err(map_file, iommufd, ioas, -1, 0, U64) == errno.EOVERFLOW      # length >= ULONG_MAX
    assert err(map_file, iommufd, ioas, -1, 0, PAGE, flags=0) == errno.EINVAL
    assert err(map_file, iommufd, 55, -1, 0, PAGE) == errno.ENOENT          # the IOAS first
    assert err(map_file, iommufd, ioas, memfd, 0, PAGE, flags=RW | 8) == errno.EOPNOTSUPP
    # iopt_alloc_pages(): length > SIZE_MAX - PAGE_SIZE after the fd
    assert err(map_file, iommufd, ioas, memfd, 0, U64 - 1) == errno.EINVAL
    assert err(map_file, iommufd, ioas, -1, 0, U64 - 1) == errno.EBADF


def test_file_mappings_are_areas_like_any_other(iommufd, memfd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    map_file(iommufd, ioas, memfd, 0, 2 * PAGE, iova=0x10000)
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=0x11000) == errno.EEXIST
    assert err(unmap, iommufd, ioas, 0x10000, PAGE) == errno.ENOENT
    from conformance.tests.helpers import copy
    dst = ioas_alloc(iommufd)
    assert copy(iommufd, dst, ioas, 0x11000, PAGE, dst_iova=0x5000) == 0x5000


def change_process(fd, reserved=0):
    cmd = B.iommu_ioas_change_process(size=sz(B.iommu_ioas_change_process), __reserved=reserved)
    fd.ioctl(B.IOMMU_IOAS_CHANGE_PROCESS, cmd)


def test_change_process_with_nothing_mapped_succeeds(iommufd):
    change_process(iommufd)
    ioas_alloc(iommufd)
    change_process(iommufd)
    assert err(change_process, iommufd, reserved=1) == errno.EOPNOTSUPP


def test_change_process_needs_every_area_to_map_a_file(iommufd, memfd):
    # iommufd_ioas_change_process(): area->pages->type != IOPT_ADDRESS_FILE -> -EINVAL,
    # over every IOAS of the context
    a = ioas_alloc(iommufd)
    b = ioas_alloc(iommufd)
    map_file(iommufd, a, memfd, 0, PAGE, iova=0x10000)
    change_process(iommufd)
    buf = Buf(1)
    map_(iommufd, b, buf.addr, PAGE, iova=0x10000)
    before = snapshot(iommufd, a, [(0x10000, PAGE)]), snapshot(iommufd, b, [(0x10000, PAGE)])
    assert err(change_process, iommufd) == errno.EINVAL
    assert (snapshot(iommufd, a, [(0x10000, PAGE)]), snapshot(iommufd, b, [(0x10000, PAGE)])) == before
    unmap(iommufd, b, 0, U64)
    change_process(iommufd)
