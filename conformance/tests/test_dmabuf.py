"""dma-bufs in an IOAS: IOMMU_IOAS_MAP_FILE of a dma-buf (iopt_map_file_pages(), io_pagetable.c:482
-> iopt_alloc_dmabuf_pages(), pages.c:1527) with the selftest's exporter behind it
(IOMMU_TEST_OP_DMABUF_GET / DMABUF_REVOKE, selftest.c:2023 / 2066).

A dma-buf's pages are the exporter's buffer: nothing is pinned or charged, the frames go into
the domains as one contiguous run (pfn_reader_fill_dmabuf()), and no in-kernel access reaches
them (EINVAL). A revoke (dma_buf_invalidate_mappings() -> iopt_revoke_notify()) unmaps every
area of every attachment from every domain for good; the areas stay in the IOAS (and unmap as
usual), new domains get nothing of them, and a new MAP_FILE answers ENODEV while the exporter
says revoked. What a domain maps is read through dirty tracking: IOMMU_TEST_OP_DIRTY marks the
IOPTE under each IOVA, which an unmapped IOVA does not have.
"""
import ctypes
import errno
import fcntl
import os

import pytest

from conformance.tests.helpers import (
    B, PAGE, R, U64, access_pages, access_rw, copy, create_access, destroy, err, get_dirty_bitmap,
    hwpt_alloc, ioas_alloc, iova_ranges, map_, map_file, mock_device, mock_dirty, mock_domain_replace, require,
    run_test_cmd, set_dirty_tracking, snapshot, sz, touched, unmap, vm_pin_kb,
)

require("IOMMU_TEST_OP_DMABUF_GET", "IOMMU_TEST_OP_DMABUF_REVOKE", "IOMMU_IOAS_MAP_FILE")

START = B.MOCK_APERTURE_START
SIZE = 4 * PAGE


def dmabuf_get(fd, length, open_flags=os.O_CLOEXEC) -> int:
    """IOMMU_TEST_OP_DMABUF_GET: a dma-buf of `length` bytes (PAGE_SIZE aligned); the ioctl
    answers its descriptor."""
    cmd = B.iommu_test_cmd(size=sz(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_DMABUF_GET)
    cmd.dmabuf_get.length = length
    cmd.dmabuf_get.open_flags = open_flags
    return fd.ioctl(B.IOMMU_TEST_CMD, cmd)


def revoke(fd, dfd, revoked=True) -> None:
    run_test_cmd(fd, B.IOMMU_TEST_OP_DMABUF_REVOKE, 0,
                 **{"dmabuf_revoke.dmabuf_fd": dfd, "dmabuf_revoke.revoked": int(revoked)})


@pytest.fixture
def dmabufs(iommufd):
    """A maker of dma-bufs, closed after the test."""
    fds = []

    def make(length=SIZE, open_flags=os.O_CLOEXEC):
        dfd = dmabuf_get(iommufd, length, open_flags)
        fds.append(dfd)
        return dfd

    yield make
    for dfd in fds:
        try:
            os.close(dfd)
        except OSError:
            pass


def change_process(fd):
    fd.ioctl(B.IOMMU_IOAS_CHANGE_PROCESS, B.iommu_ioas_change_process(size=sz(B.iommu_ioas_change_process)))


def _dirty_device(fd, ioas):
    """A mock device on a dirty-tracking HWPT of `ioas` (tracking on): (stdev, hwpt, idev)."""
    stdev, _, idev = mock_device(fd, ioas)
    hwpt = hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    mock_domain_replace(fd, stdev, hwpt)
    set_dirty_tracking(fd, hwpt, True)
    return stdev, hwpt, idev


def _mapped(fd, hwpt, iova, npages) -> list[int]:
    """The pages of [iova, iova + npages pages) the domain maps: each is marked dirty
    (IOMMU_TEST_OP_DIRTY), then the dirty bitmap is read and cleared; an unmapped IOVA has no
    IOPTE to mark."""
    bits = (ctypes.c_uint64 * 4)((1 << npages) - 1)  # npages < 64
    assert mock_dirty(fd, hwpt, iova, npages * PAGE, PAGE, ctypes.addressof(bits)) == npages
    out = (ctypes.c_uint64 * 4)()
    get_dirty_bitmap(fd, hwpt, iova, npages * PAGE, PAGE, ctypes.addressof(out))
    return [i for i in range(npages) if out[i // 64] >> (i % 64) & 1]


# IOMMU_TEST_OP_DMABUF_GET

def test_dmabuf_get_lengths(iommufd, dmabufs):
    # iommufd_test_dmabuf_get(): ALIGN(len, PAGE_SIZE), then 0 or more than 512 pages is EINVAL
    assert err(dmabuf_get, iommufd, 0) == errno.EINVAL
    assert err(dmabuf_get, iommufd, 512 * PAGE + 1) == errno.EINVAL
    assert err(dmabuf_get, iommufd, (1 << 32) - 1) == errno.EINVAL
    ioas = ioas_alloc(iommufd)
    one = dmabufs(1)  # one page
    assert map_file(iommufd, ioas, one, 0, PAGE, iova=START) == START
    assert err(map_file, iommufd, ioas, one, 0, PAGE + 1) == errno.EINVAL
    big = dmabufs(512 * PAGE)
    assert map_file(iommufd, ioas, big, 0, 512 * PAGE, iova=START + (2 << 20)) == START + (2 << 20)
    assert unmap(iommufd, ioas, 0, U64) == 513 * PAGE


def test_dmabuf_get_answers_a_new_descriptor(iommufd, dmabufs):
    a, b = dmabufs(), dmabufs()
    assert a >= 0 and b >= 0 and a != b
    assert os.fstat(a).st_ino != os.fstat(b).st_ino
    # dma_buf_fd() -> get_unused_fd_flags(open_flags): O_CLOEXEC or not
    assert not os.get_inheritable(a)
    assert os.get_inheritable(dmabufs(open_flags=0))
    # dma_buf_getfile(): the file keeps O_NONBLOCK
    assert fcntl.fcntl(dmabufs(open_flags=os.O_CLOEXEC | os.O_NONBLOCK), fcntl.F_GETFL) & os.O_NONBLOCK


# IOMMU_IOAS_MAP_FILE of a dma-buf

def test_map_dmabuf_bounds(iommufd, dmabufs):
    # the selftest's dmabuf_simple, and around it: iopt_alloc_dmabuf_pages() is EINVAL when
    # dmabuf->size <= start + length - 1
    ioas = ioas_alloc(iommufd)
    dfd = dmabufs(SIZE)
    before = snapshot(iommufd, ioas)
    assert err(map_file, iommufd, ioas, dfd, 0, 0) == errno.EINVAL
    assert err(map_file, iommufd, ioas, dfd, SIZE, SIZE) == errno.EINVAL
    assert err(map_file, iommufd, ioas, dfd, 0, SIZE + 1) == errno.EINVAL
    assert err(map_file, iommufd, ioas, dfd, PAGE, SIZE - PAGE + 1) == errno.EINVAL
    assert err(map_file, iommufd, ioas, dfd, SIZE, 1) == errno.EINVAL
    assert err(map_file, iommufd, ioas, dfd, U64 - 1, 2 * PAGE) == errno.EOVERFLOW  # before the fd
    assert snapshot(iommufd, ioas) == before
    # the buffer's offset plays the part of the user address for the IOVA alignment
    assert map_file(iommufd, ioas, dfd, 0, SIZE) == SIZE
    assert map_file(iommufd, ioas, dfd, PAGE, SIZE - PAGE) == PAGE  # the hole below fits it
    assert map_file(iommufd, ioas, dfd, SIZE - 1, 1) == 9 * PAGE - 1  # its page offset kept
    assert map_file(iommufd, ioas, dfd, 0x800, 0x800, iova=0x100800) == 0x100800
    assert unmap(iommufd, ioas, 0, U64) == SIZE + SIZE - PAGE + 1 + 0x800


def test_map_dmabuf_read_only(iommufd, dmabufs):
    ioas, dst = ioas_alloc(iommufd), ioas_alloc(iommufd)
    dfd = dmabufs()
    iova = map_file(iommufd, ioas, dfd, 0, SIZE, flags=R)
    # pages->writable is the map's WRITEABLE: a writeable copy is EPERM (iopt_insert_area())
    assert err(copy, iommufd, dst, ioas, iova, SIZE) == errno.EPERM
    assert copy(iommufd, dst, ioas, iova, SIZE, flags=R) == SIZE


def test_a_dmabuf_pins_nothing(iommufd, dmabufs):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    dfd = dmabufs(64 * PAGE)
    before = vm_pin_kb(iommufd)
    map_file(iommufd, ioas, dfd, 0, 64 * PAGE, iova=START)
    assert vm_pin_kb(iommufd) == before  # iopt_alloc_dmabuf_pages(): IOPT_PAGES_ACCOUNT_NONE, no pins
    unmap(iommufd, ioas, START, 64 * PAGE)
    assert vm_pin_kb(iommufd) == before


def test_a_dmabuf_is_mapped_into_domains(iommufd, dmabufs):
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = _dirty_device(iommufd, ioas)
    dfd = dmabufs()
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START)
    assert _mapped(iommufd, hwpt, START, 6) == [0, 1, 2, 3]


def test_no_access_reaches_a_dmabuf(iommufd, dmabufs):
    ioas = ioas_alloc(iommufd)
    dfd = dmabufs()
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START)
    afd = create_access(iommufd, ioas, B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    buf = touched(1)
    try:
        # iopt_area_add_access() / iopt_pages_rw_access(): iopt_is_dmabuf() -> -EINVAL
        assert err(access_pages, iommufd, afd, START, PAGE) == errno.EINVAL
        assert err(access_rw, iommufd, afd, START, buf.addr, 16) == errno.EINVAL
        assert err(access_rw, iommufd, afd, START, buf.addr, 16, B.MOCK_ACCESS_RW_WRITE) == errno.EINVAL
    finally:
        os.close(afd)
    # the area is not locked by anything
    assert unmap(iommufd, ioas, START, SIZE) == SIZE


def test_change_process_refuses_a_dmabuf(iommufd, dmabufs):
    # iommufd_ioas_change_process(): area->pages->type != IOPT_ADDRESS_FILE
    ioas = ioas_alloc(iommufd)
    dfd = dmabufs()
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START)
    assert err(change_process, iommufd) == errno.EINVAL
    unmap(iommufd, ioas, 0, U64)
    change_process(iommufd)


def test_the_area_keeps_the_dmabuf_after_close(iommufd, dmabufs):
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = _dirty_device(iommufd, ioas)
    dfd = dmabuf_get(iommufd, SIZE)
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START)
    os.close(dfd)
    # the pages hold the dma-buf (dma_buf_get() until iopt_release_pages())
    assert _mapped(iommufd, hwpt, START, 4) == [0, 1, 2, 3]
    assert unmap(iommufd, ioas, 0, U64) == SIZE
    assert err(revoke, iommufd, dfd) == errno.EBADF


# IOMMU_TEST_OP_DMABUF_REVOKE

def test_revoke_needs_a_dmabuf(iommufd):
    # iommufd_test_dmabuf_revoke() -> dma_buf_get(): EBADF without a file, EINVAL for another file
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    assert err(revoke, iommufd, fd) == errno.EBADF
    assert err(revoke, iommufd, -1) == errno.EBADF
    mfd = os.memfd_create("not-a-dmabuf")
    try:
        assert err(revoke, iommufd, mfd) == errno.EINVAL
    finally:
        os.close(mfd)


def test_revoke_of_an_o_path_descriptor_is_ebadf(iommufd):
    """dma_buf_get() takes the descriptor with fget() (dma-buf.c:839-842), which skips an O_PATH
    file (FMODE_PATH, fs/file.c:1081, :1113): EBADF, not the EINVAL of a file that is not a
    dma-buf."""
    fd = os.open("/dev/null", os.O_PATH)
    try:
        assert err(revoke, iommufd, fd) == errno.EBADF
    finally:
        os.close(fd)


class _UdmabufCreate(ctypes.Structure):
    """struct udmabuf_create (include/uapi/linux/udmabuf.h)."""
    _fields_ = [("memfd", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("offset", ctypes.c_uint64),
                ("size", ctypes.c_uint64)]


UDMABUF_CREATE = 0x40187542  # _IOW('u', 0x42, struct udmabuf_create)


def test_revoke_of_another_exporters_dmabuf_is_eopnotsupp(iommufd):
    """iommufd_test_dmabuf_revoke() (selftest.c:2077-2080): a dma-buf whose ops are not the
    selftest exporter's (a udmabuf of a sealed memfd here) is EOPNOTSUPP."""
    try:
        dev = os.open("/dev/udmabuf", os.O_RDWR)
    except OSError as e:
        pytest.skip(f"no other dma-buf exporter: /dev/udmabuf ({e.strerror}; CONFIG_UDMABUF)")
    mfd = os.memfd_create("udmabuf", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(mfd, PAGE)
        fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)  # udmabuf_create(): SEALS_WANTED
        dfd = fcntl.ioctl(dev, UDMABUF_CREATE, _UdmabufCreate(memfd=mfd, flags=1, size=PAGE))  # CLOEXEC
        try:
            assert err(revoke, iommufd, dfd) == errno.EOPNOTSUPP
        finally:
            os.close(dfd)
    finally:
        os.close(mfd)
        os.close(dev)


@pytest.mark.parametrize("domain", [False, True])
def test_map_of_a_revoked_dmabuf_is_enodev(iommufd, dmabufs, domain):
    # the selftest's dmabuf_revoke
    ioas = ioas_alloc(iommufd)
    if domain:
        mock_device(iommufd, ioas)
    dfd = dmabufs()
    iova = map_file(iommufd, ioas, dfd, 0, SIZE)
    revoke(iommufd, dfd)
    ranges = iova_ranges(iommufd, ioas)
    before = snapshot(iommufd, ioas)
    # iommufd_test_dma_buf_iommufd_map(): priv->revoked -> -ENODEV
    assert err(map_file, iommufd, ioas, dfd, 0, SIZE) == errno.ENODEV
    assert err(map_file, iommufd, ioas, dfd, 0, SIZE + 1) == errno.EINVAL  # the size first
    assert snapshot(iommufd, ioas) == before
    revoke(iommufd, dfd)  # again: no change
    revoke(iommufd, dfd, False)
    iova2 = map_file(iommufd, ioas, dfd, 0, SIZE)
    assert iova2 != iova
    # the revoked area is still there: it fills its IOVA and unmaps whole
    assert err(map_, iommufd, ioas, touched(1).addr, PAGE, iova=iova) == errno.EEXIST
    assert unmap(iommufd, ioas, iova, SIZE) == SIZE
    assert map_file(iommufd, ioas, dfd, 0, SIZE, iova=iova) == iova
    assert iova_ranges(iommufd, ioas) == ranges
    assert unmap(iommufd, ioas, 0, U64) == 2 * SIZE


def test_revoke_unmaps_from_every_domain(iommufd, dmabufs):
    ioas = ioas_alloc(iommufd)
    _, hwpt, idev = _dirty_device(iommufd, ioas)
    hwpt2 = hwpt_alloc(iommufd, idev, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)  # a second domain
    set_dirty_tracking(iommufd, hwpt2, True)
    dfd = dmabufs()
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START)
    map_file(iommufd, ioas, dfd, 0, 2 * PAGE, iova=START + SIZE)  # another attachment
    assert _mapped(iommufd, hwpt, START, 6) == [0, 1, 2, 3, 4, 5]
    assert _mapped(iommufd, hwpt2, START, 6) == [0, 1, 2, 3, 4, 5]
    revoke(iommufd, dfd)
    assert _mapped(iommufd, hwpt, START, 6) == []
    assert _mapped(iommufd, hwpt2, START, 6) == []
    # a domain that comes later gets nothing of a revoked area (iopt_area_fill_domain())
    hwpt3 = hwpt_alloc(iommufd, idev, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    set_dirty_tracking(iommufd, hwpt3, True)
    assert _mapped(iommufd, hwpt3, START, 6) == []
    destroy(iommufd, hwpt2)
    # restored: new maps go into the domains, the revoked areas stay empty
    revoke(iommufd, dfd, False)
    map_file(iommufd, ioas, dfd, 0, PAGE, iova=START + 6 * PAGE)
    assert _mapped(iommufd, hwpt, START, 8) == [6]
    assert _mapped(iommufd, hwpt3, START, 8) == [6]
    assert unmap(iommufd, ioas, 0, U64) == 7 * PAGE


def test_revoke_reaches_copies_in_other_ioas(iommufd, dmabufs):
    src, dst = ioas_alloc(iommufd), ioas_alloc(iommufd)
    dfd = dmabufs()
    iova = map_file(iommufd, src, dfd, 0, SIZE)
    _, hwpt, _ = _dirty_device(iommufd, dst)
    assert copy(iommufd, dst, src, iova, SIZE, dst_iova=START) == START
    assert _mapped(iommufd, hwpt, START, 4) == [0, 1, 2, 3]
    revoke(iommufd, dfd)
    assert _mapped(iommufd, hwpt, START, 4) == []
    assert unmap(iommufd, src, 0, U64) == SIZE
    assert unmap(iommufd, dst, 0, U64) == SIZE


def test_an_unrevoke_also_invalidates_live_mappings(iommufd, dmabufs):
    # iommufd_test_dmabuf_revoke() calls dma_buf_invalidate_mappings() whatever `revoked` is,
    # and iopt_revoke_notify() takes any invalidation as final for the pages it has
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = _dirty_device(iommufd, ioas)
    dfd = dmabufs()
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START)
    revoke(iommufd, dfd, False)
    assert _mapped(iommufd, hwpt, START, 4) == []
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=START + SIZE)  # the exporter still gives it
    assert _mapped(iommufd, hwpt, START, 8) == [4, 5, 6, 7]


def test_a_dmabuf_area_does_not_split(iommufd, dmabufs):
    # iopt_area_split() (io_pagetable.c:1318): EOPNOTSUPP for a dma-buf, reached through a type1
    # unmap inside an area (VFIO_TYPE1_IOMMU disables large pages: iopt_cut_iova())
    require("VFIO_IOMMU_UNMAP_DMA")
    ioas = ioas_alloc(iommufd)
    iommufd.ioctl(B.IOMMU_VFIO_IOAS, B.iommu_vfio_ioas(size=sz(B.iommu_vfio_ioas), op=B.IOMMU_VFIO_IOAS_SET,
                                                       ioas_id=ioas))
    assert iommufd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1_IOMMU) == 0
    dfd = dmabufs()
    map_file(iommufd, ioas, dfd, 0, SIZE, iova=1 << 20)
    u = B.vfio_iommu_type1_dma_unmap(argsz=sz(B.vfio_iommu_type1_dma_unmap), iova=(1 << 20) + PAGE, size=PAGE)
    assert err(iommufd.ioctl, B.VFIO_IOMMU_UNMAP_DMA, u) == errno.EOPNOTSUPP
    # the cut at the area's first or last byte is no split: a whole unmap goes through
    u = B.vfio_iommu_type1_dma_unmap(argsz=sz(B.vfio_iommu_type1_dma_unmap), iova=1 << 20, size=SIZE)
    iommufd.ioctl(B.VFIO_IOMMU_UNMAP_DMA, u)
    assert u.size == SIZE
