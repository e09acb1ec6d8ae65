"""Accesses: an emulated device's view of an IOAS without DMA (iommufd_access_* in device.c),
driven by the selftest's access ops (CONFIG_IOMMUFD_TEST, drivers/iommu/iommufd/selftest.c):
CREATE_ACCESS, ACCESS_PAGES / DESTROY_ACCESS_PAGES, ACCESS_RW, ACCESS_REPLACE_IOAS,
SET_TEMP_MEMORY_LIMIT.

iommufd_test_create_access() (selftest.c:1448) wraps an iommufd_access (an IOMMUFD_OBJ_ACCESS
object, ID allocated like any other, never destroyable by IOMMU_DESTROY) in an anonymous-inode
file; closing it runs iommufd_test_staccess_release(): unpin everything, destroy the access.
The access's unmap callback (iommufd_test_access_unmap(), selftest.c:1350) unpins whatever
intersects, so IOAS_UNMAP of a pinned range succeeds (iopt_unmap_iova_range(),
io_pagetable.c:788). Pins and reads go through iommufd_access_pin_pages() (device.c:1401) and
iommufd_access_rw() (device.c:1493).
"""
import ctypes
import errno
import fcntl
import os


from model.uapi import T as B
from conformance.tests.helpers import (
    PAGE, U64, Buf, R, W, access_pages, access_replace_ioas, access_rw, check_refs, create_access, destroy,
    destroy_access_pages, err, ioas_alloc, iova_ranges, kernel_file_semantics, map_, mock_device, run_test_cmd,
    unmap,
)

BASE = B.MOCK_APERTURE_START
PIN = B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES
WRITE = B.MOCK_ACCESS_RW_WRITE
SLOW = B.MOCK_ACCESS_RW_SLOW_PATH


def _touched(npages, fill=0):
    buf = Buf(npages)
    for i in range(npages):
        buf.m[i * PAGE:(i + 1) * PAGE] = bytes([(fill + i) & 0xFF]) * PAGE
    return buf


def test_create_access_returns_a_cloexec_fd_and_an_object_id(iommufd):
    ioas = ioas_alloc(iommufd)
    fd = create_access(iommufd, ioas)
    try:
        assert fd >= 0
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # get_unused_fd_flags(O_CLOEXEC)
        # the access object took ID 2 and no ioctl may destroy it (the driver holds a user)
        assert err(destroy, iommufd, 2) == errno.EBUSY
        # the access holds the IOAS
        assert err(destroy, iommufd, ioas) == errno.EBUSY
    finally:
        os.close(fd)
    # iommufd_test_staccess_release(): the access is gone with its ID and its hold on the IOAS
    assert ioas_alloc(iommufd) == 2
    destroy(iommufd, ioas)


def test_the_access_file_is_an_anon_inode_without_read_or_write(iommufd, iommufd_target):
    """anon_inode_getfile("[iommufd_test_staccess]") with iommfd_test_staccess_fops, which has
    only .release: read() and write() are EINVAL (no FMODE_CAN_READ / FMODE_CAN_WRITE)."""
    kernel_file_semantics(iommufd_target)
    ioas = ioas_alloc(iommufd)
    fd = create_access(iommufd, ioas)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[iommufd_test_staccess]"
        assert err(os.read, fd, 8) == errno.EINVAL
        assert err(os.write, fd, b"x") == errno.EINVAL
    finally:
        os.close(fd)


def test_create_access_errors(iommufd):
    ioas = ioas_alloc(iommufd)
    assert err(create_access, iommufd, ioas, 1 << 1) == errno.EOPNOTSUPP
    assert err(create_access, iommufd, 99) == errno.ENOENT
    # the access object allocated before the attach failed was destroyed with its ID
    assert ioas_alloc(iommufd) == 2


def test_create_access_on_a_hwpt_is_enoent(iommufd):
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = mock_device(iommufd, ioas)
    assert err(create_access, iommufd, hwpt) == errno.ENOENT


def test_an_access_sets_the_iova_alignment(iommufd):
    ioas = ioas_alloc(iommufd)
    fd = create_access(iommufd, ioas)
    assert iova_ranges(iommufd, ioas)[1] == 1  # no pin_pages: iova_alignment 1
    os.close(fd)
    fd = create_access(iommufd, ioas, PIN)
    assert iova_ranges(iommufd, ioas)[1] == PAGE  # needs_pin_pages: PAGE_SIZE
    buf = _touched(1)
    assert err(map_, iommufd, ioas, buf.addr, 2048, iova=BASE) == errno.EINVAL
    os.close(fd)
    assert iova_ranges(iommufd, ioas)[1] == 1


def test_a_pinning_access_on_an_unaligned_area_is_eaddrinuse(iommufd):
    # iopt_add_access() -> iopt_calculate_iova_alignment() -> iopt_check_iova_alignment()
    ioas = ioas_alloc(iommufd)
    buf = _touched(1)
    map_(iommufd, ioas, buf.addr, 100, iova=BASE)
    assert err(create_access, iommufd, ioas, PIN) == errno.EADDRINUSE
    fd = create_access(iommufd, ioas)  # alignment 1 is fine
    os.close(fd)


def test_access_pages_pins_and_destroy_unpins(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = _touched(4)
    map_(iommufd, ioas, buf.addr, 4 * PAGE, iova=BASE)
    fd = create_access(iommufd, ioas, PIN)
    try:
        check_refs(iommufd, buf.addr, 4 * PAGE, 0)
        a = access_pages(iommufd, fd, BASE, 4 * PAGE, buf.addr)
        b = access_pages(iommufd, fd, BASE + PAGE, PAGE, buf.addr + PAGE)
        assert (a, b) == (0, 1)  # next_id per access, from 0
        # one pin per page however many accesses share it (the pinned_pfns xarray)
        check_refs(iommufd, buf.addr, 4 * PAGE, 1)
        destroy_access_pages(iommufd, fd, a)
        check_refs(iommufd, buf.addr, PAGE, 0)
        check_refs(iommufd, buf.addr + PAGE, PAGE, 1)
        assert err(destroy_access_pages, iommufd, fd, a) == errno.ENOENT
        destroy_access_pages(iommufd, fd, b)
        check_refs(iommufd, buf.addr, 4 * PAGE, 0)
        assert access_pages(iommufd, fd, BASE, PAGE) == 2  # uptr 0 skips the page check
    finally:
        os.close(fd)
    check_refs(iommufd, buf.addr, 4 * PAGE, 0)  # closing unpinned
    assert unmap(iommufd, ioas, 0, U64) == 4 * PAGE


def test_access_pages_with_a_domain_shares_the_domains_pin(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    buf = _touched(2)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    fd = create_access(iommufd, ioas, PIN)
    try:
        check_refs(iommufd, buf.addr, 2 * PAGE, 1)
        item = access_pages(iommufd, fd, BASE, 2 * PAGE, buf.addr, B.MOCK_FLAGS_ACCESS_WRITE)
        check_refs(iommufd, buf.addr, 2 * PAGE, 1)
        destroy_access_pages(iommufd, fd, item)
        check_refs(iommufd, buf.addr, 2 * PAGE, 1)
    finally:
        os.close(fd)


def test_access_pages_errors(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = _touched(4)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    map_(iommufd, ioas, buf.addr + 2 * PAGE, PAGE, iova=BASE + 4 * PAGE, flags=R)
    fd = create_access(iommufd, ioas, PIN)
    plain = create_access(iommufd, ioas)
    try:
        # iommufd_test_access_pages() (selftest.c:1540)
        assert err(access_pages, iommufd, fd, BASE, 16 * 1024 * 1024 + 1) == errno.ENOMEM
        assert err(access_pages, iommufd, fd, BASE, PAGE, flags=1 << 1) == errno.EOPNOTSUPP
        assert err(access_pages, iommufd, plain, BASE, PAGE) == errno.EOPNOTSUPP  # not a pinning access
        assert err(access_pages, iommufd, 0x7FFF, BASE, PAGE) == errno.EBADFD  # not an fd
        assert err(access_pages, iommufd, 0, BASE, PAGE) == errno.EBADFD  # an fd, not an access
        # iommufd_access_pin_pages() (device.c:1401)
        assert err(access_pages, iommufd, fd, BASE, 0) == errno.EINVAL
        assert err(access_pages, iommufd, fd, U64 - PAGE + 1, 2 * PAGE) == errno.EOVERFLOW
        assert err(access_pages, iommufd, fd, BASE + 1, PAGE) == errno.EINVAL  # not page aligned
        assert err(access_pages, iommufd, fd, BASE + 2 * PAGE, PAGE) == errno.ENOENT  # a hole
        assert err(access_pages, iommufd, fd, BASE + PAGE, 2 * PAGE) == errno.ENOENT  # runs into it
        assert err(access_pages, iommufd, fd, BASE + 4 * PAGE, PAGE, flags=B.MOCK_FLAGS_ACCESS_WRITE) == errno.EPERM
        access_pages(iommufd, fd, BASE + 4 * PAGE, PAGE)  # reading a read-only area is fine
        # iommufd_test_check_pages(): the pages are not uptr's
        assert err(access_pages, iommufd, fd, BASE, PAGE, buf.addr + PAGE) == errno.EBADE
        # nothing is left pinned by the failures
        check_refs(iommufd, buf.addr, 2 * PAGE, 0)
    finally:
        os.close(fd)
        os.close(plain)


def test_a_file_of_another_kind_is_not_an_access(iommufd):
    """iommufd_access_get() (selftest.c:1335): a descriptor whose file has other fops than the
    access's (here a fault queue's, IOMMU_FAULT_QUEUE_ALLOC) is EBADFD, as a closed one is
    (selftest.c:1343-1345)."""
    ioas = ioas_alloc(iommufd)
    cmd = B.iommu_fault_alloc(size=ctypes.sizeof(B.iommu_fault_alloc))
    iommufd.ioctl(B.IOMMU_FAULT_QUEUE_ALLOC, cmd)
    try:
        assert err(access_replace_ioas, iommufd, cmd.out_fault_fd, ioas) == errno.EBADFD
        assert err(access_pages, iommufd, cmd.out_fault_fd, BASE, PAGE) == errno.EBADFD
    finally:
        os.close(cmd.out_fault_fd)


def test_unmap_of_a_pinned_range_unpins_through_the_callback(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = _touched(4)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    map_(iommufd, ioas, buf.addr + 2 * PAGE, 2 * PAGE, iova=BASE + 2 * PAGE)
    fd = create_access(iommufd, ioas, PIN)
    try:
        first = access_pages(iommufd, fd, BASE, PAGE)
        second = access_pages(iommufd, fd, BASE + 2 * PAGE, 2 * PAGE)
        check_refs(iommufd, buf.addr, PAGE, 1)
        # iommufd_access_notify_unmap() -> iommufd_test_access_unmap(): the item goes
        assert unmap(iommufd, ioas, BASE, 2 * PAGE) == 2 * PAGE
        check_refs(iommufd, buf.addr, PAGE, 0)
        assert err(destroy_access_pages, iommufd, fd, first) == errno.ENOENT
        check_refs(iommufd, buf.addr + 2 * PAGE, 2 * PAGE, 1)
        destroy_access_pages(iommufd, fd, second)
    finally:
        os.close(fd)


def test_unmap_with_a_pinning_access_still_cannot_cut_an_area(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = _touched(2)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    fd = create_access(iommufd, ioas, PIN)
    try:
        item = access_pages(iommufd, fd, BASE, PAGE)
        assert err(unmap, iommufd, ioas, BASE, PAGE) == errno.ENOENT
        destroy_access_pages(iommufd, fd, item)  # the pin survived the failed unmap
    finally:
        os.close(fd)


def test_access_rw_reads_and_writes_through_the_iova(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = _touched(3, fill=0x10)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    map_(iommufd, ioas, buf.addr + 2 * PAGE, PAGE, iova=BASE + 2 * PAGE)  # adjacent area
    fd = create_access(iommufd, ioas)
    try:
        for flags in (0, SLOW):
            out = (ctypes.c_ubyte * (2 * PAGE))()
            access_rw(iommufd, fd, BASE + PAGE + 100, ctypes.addressof(out), 2 * PAGE - 200, flags)
            assert bytes(out[:2 * PAGE - 200]) == buf.m[PAGE + 100:3 * PAGE - 100]
        data = (ctypes.c_ubyte * 300)(*([7] * 300))
        access_rw(iommufd, fd, BASE + 2 * PAGE - 150, ctypes.addressof(data), 300, WRITE)
        assert buf.m[2 * PAGE - 150:2 * PAGE + 150] == bytes([7]) * 300
        access_rw(iommufd, fd, BASE + 5, ctypes.addressof(data), 1, WRITE | SLOW)
        assert buf.m[5] == 7
    finally:
        os.close(fd)


def test_access_rw_errors(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = _touched(4)
    map_(iommufd, ioas, buf.addr, PAGE, iova=BASE)
    map_(iommufd, ioas, buf.addr + PAGE, PAGE, iova=BASE + PAGE, flags=R)
    map_(iommufd, ioas, buf.addr + 2 * PAGE, PAGE, iova=BASE + 2 * PAGE, flags=W)
    fd = create_access(iommufd, ioas)
    out = (ctypes.c_ubyte * (2 * PAGE))()
    p = ctypes.addressof(out)
    try:
        # iommufd_test_access_rw() (selftest.c:1635)
        assert err(access_rw, iommufd, fd, BASE, p, 16 * 1024 * 1024 + 1) == errno.ENOMEM
        assert err(access_rw, iommufd, fd, BASE, p, 8, 1 << 1) == errno.EOPNOTSUPP
        assert err(access_rw, iommufd, 0x7FFF, BASE, p, 8) == errno.EBADFD
        # iommufd_access_rw() (device.c:1493)
        assert err(access_rw, iommufd, fd, BASE, p, 0) == errno.EINVAL
        assert err(access_rw, iommufd, fd, U64 - 3, p, 8) == errno.EOVERFLOW
        assert err(access_rw, iommufd, fd, BASE + 4 * PAGE, p, 8) == errno.ENOENT
        # off the end of the last area: each area's protection is checked as it is reached,
        # the hole after it only once all are done
        assert err(access_rw, iommufd, fd, BASE + 3 * PAGE - 4, p, 8, WRITE) == errno.ENOENT
        assert err(access_rw, iommufd, fd, BASE + 3 * PAGE - 4, p, 8) == errno.EPERM
        assert err(access_rw, iommufd, fd, BASE + PAGE, p, 8, WRITE) == errno.EPERM  # read-only area
        assert err(access_rw, iommufd, fd, BASE + 2 * PAGE, p, 8) == errno.EPERM  # write-only area
        access_rw(iommufd, fd, BASE + PAGE, p, 8)
        access_rw(iommufd, fd, BASE + 2 * PAGE, p, 8, WRITE)
        # the user buffer: copy_from_user / copy_to_user
        assert err(access_rw, iommufd, fd, BASE, 8, 8, WRITE) == errno.EFAULT
        assert err(access_rw, iommufd, fd, BASE, 8, 8) == errno.EFAULT
    finally:
        os.close(fd)


def test_access_rw_through_a_domain_sees_the_same_memory(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    buf = _touched(2, fill=0x40)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE)
    fd = create_access(iommufd, ioas)
    try:
        out = (ctypes.c_ubyte * 64)()
        access_rw(iommufd, fd, BASE + PAGE - 32, ctypes.addressof(out), 64)
        assert bytes(out) == buf.m[PAGE - 32:PAGE + 32]
    finally:
        os.close(fd)


def test_access_replace_ioas(iommufd):
    a, b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    buf = _touched(2, fill=0x20)
    map_(iommufd, a, buf.addr, PAGE, iova=BASE)
    map_(iommufd, b, buf.addr + PAGE, PAGE, iova=BASE + PAGE)
    fd = create_access(iommufd, a, PIN)
    out = (ctypes.c_ubyte * 8)()
    try:
        item = access_pages(iommufd, fd, BASE, PAGE)
        check_refs(iommufd, buf.addr, PAGE, 1)
        assert err(destroy, iommufd, a) == errno.EBUSY
        access_replace_ioas(iommufd, fd, b)
        # iommufd_access_change_ioas(): the old IOAS's pins went through the unmap callback
        check_refs(iommufd, buf.addr, PAGE, 0)
        assert err(destroy_access_pages, iommufd, fd, item) == errno.ENOENT
        assert err(access_rw, iommufd, fd, BASE, ctypes.addressof(out), 8) == errno.ENOENT
        access_rw(iommufd, fd, BASE + PAGE, ctypes.addressof(out), 8)
        assert bytes(out) == bytes([0x21]) * 8
        destroy(iommufd, a)  # no longer held
        access_replace_ioas(iommufd, fd, b)  # the same IOAS: nothing to do
        assert err(access_replace_ioas, iommufd, fd, 99) == errno.ENOENT
        assert err(access_replace_ioas, iommufd, fd, 3) == errno.ENOENT  # the access object itself
        assert err(access_replace_ioas, iommufd, 0x7FFF, b) == errno.EBADFD
        access_rw(iommufd, fd, BASE + PAGE, ctypes.addressof(out), 8)  # still on B
    finally:
        os.close(fd)


def test_replace_onto_an_unaligned_ioas_keeps_the_old_one(iommufd):
    a, b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    buf = _touched(1)
    map_(iommufd, a, buf.addr, PAGE, iova=BASE)
    map_(iommufd, b, buf.addr, 100, iova=BASE)
    fd = create_access(iommufd, a, PIN)
    try:
        assert err(access_replace_ioas, iommufd, fd, b) == errno.EADDRINUSE
        access_pages(iommufd, fd, BASE, PAGE)
        destroy(iommufd, b)
        assert err(destroy, iommufd, a) == errno.EBUSY
    finally:
        os.close(fd)


def test_set_temp_memory_limit(iommufd):
    """IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT sets the global iommufd_test_memory_limit that caps
    pages.c's batch allocations (temp_kmalloc()); below sizeof(unsigned long) + sizeof(u32) it
    is EINVAL. A tiny limit only makes the batches small: a map still pins every page."""
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    assert err(run_test_cmd, iommufd, B.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0,
               **{"memory_limit.limit": 11}) == errno.EINVAL
    buf = _touched(64)
    try:
        run_test_cmd(iommufd, B.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, **{"memory_limit.limit": 12})
        map_(iommufd, ioas, buf.addr, 64 * PAGE, iova=BASE)
        check_refs(iommufd, buf.addr, 64 * PAGE, 1)
        fd = create_access(iommufd, ioas, PIN)
        try:
            item = access_pages(iommufd, fd, BASE, 64 * PAGE, buf.addr)
            destroy_access_pages(iommufd, fd, item)
        finally:
            os.close(fd)
        assert unmap(iommufd, ioas, 0, U64) == 64 * PAGE
        check_refs(iommufd, buf.addr, 64 * PAGE, 0)
    finally:
        run_test_cmd(iommufd, B.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, **{"memory_limit.limit": 65536})
