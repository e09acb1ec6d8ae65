"""mmap() of a vIOMMU's region through the iommufd file: iommufd_fops_mmap()
(drivers/iommu/iommufd/main.c:584) over the regions drivers register with _iommufd_alloc_mmap()
(driver.c:39); the selftest vIOMMU registers two zeroed pages whose first u32 is in_data
(mock_viommu_init(), selftest.c:793) and reports out_mmap_offset / out_mmap_length.

Regions live in the file's maple tree (one per file) from offset PAGE_SIZE up, lowest free first.
iommufd_fops_mmap() wants MAP_SHARED (EINVAL), no PROT_EXEC (EPERM), then exactly a registered
region: its start offset and its length (ENXIO otherwise, an offset inside a region included).
Each VMA holds a user of the region's owner (iommufd_fops_vma_open() / _close(), main.c:564), so
IOMMU_DESTROY of the vIOMMU is EBUSY until every mapping (and every piece or copy of one) is gone,
and the VMA holds the file. conformance/backend.py's viommu_mmap() is the VMM's view of the same.
On the model the checks only a real VMA can pass skip, saying so.
"""
import ctypes
import errno
import mmap
import os

import pytest

from conformance.backend import BackendError, viommu_mmap, viommu_munmap
from conformance.tests.helpers import (  # noqa: I001
    require,
    PAGE, destroy, err, file_mmap, nest_parent, noexec, viommu_alloc, viommu_selftest,
)

# the 7.2 mmap interface (IOMMU_VIOMMU_ALLOC's driver data reports the region)
require("IOMMU_VIOMMU_ALLOC", "IOMMU_HW_QUEUE_ALLOC", "iommu_viommu_selftest", "MOCK_PAGE_SIZE")

R, W, X = mmap.PROT_READ, mmap.PROT_WRITE, mmap.PROT_EXEC
SHARED, PRIVATE = mmap.MAP_SHARED, mmap.MAP_PRIVATE
REGION = 2 * PAGE  # mock_viommu_init()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def kernel_vma_semantics(target):
    if target in ("model", "served"):
        pytest.skip(f"{target}: a VMA that outlives the file or that fork() copies holds the owner on the "
                    "kernel only (README, 'vIOMMU, vDEVICE, HW queues, vEVENTQs and mmap')")


def _region(fd, in_data=0xBEEF, parent=None, idev=None):
    """A selftest vIOMMU with driver data: (viommu, offset, length); on a fresh file the
    vIOMMU is ID 6 and its region at PAGE_SIZE."""
    if parent is None:
        _, _, _, idev, parent = nest_parent(fd)
    data = viommu_selftest(in_data)
    viommu = viommu_alloc(fd, idev, parent, data=data)
    assert data.out_data == in_data
    return viommu, data.out_mmap_offset, data.out_mmap_length


def test_mmap_loopback(iommufd):
    viommu, off, length = _region(iommufd, 0xBEEF)
    assert (viommu, off, length) == (6, PAGE, REGION)
    m = file_mmap(iommufd, length, offset=off)
    try:
        # the vIOMMU's pages: in_data first, zero after (__GFP_ZERO)
        assert m.u32(0) == 0xBEEF
        assert m[4:length] == bytes(length - 4)
        # shared with every mapping of the region, and kept between mappings
        m.set_u32(PAGE, 0x1234)
        with file_mmap(iommufd, length, offset=off) as m2:
            assert m2.u32(PAGE) == 0x1234
            m2.set_u32(0, 7)
        assert m.u32(0) == 7
        # a mapping holds the vIOMMU
        assert err(destroy, iommufd, viommu) == errno.EBUSY
    finally:
        m.munmap()
    with file_mmap(iommufd, length, prot=R, offset=off) as m3:
        assert (m3.u32(0), m3.u32(PAGE)) == (7, 0x1234)
    destroy(iommufd, viommu)
    # the region went with it (mock_viommu_destroy() -> _iommufd_destroy_mmap())
    assert err(file_mmap, iommufd, length, offset=off) == errno.ENXIO


def test_mmap_only_the_exact_region(iommufd):
    viommu, off, length = _region(iommufd)
    # mtree_load() finds a region for any offset inside it; main.c:611 wants its start and length
    for offset, n in [(0, length), (0, PAGE), (off + PAGE, PAGE), (off + PAGE, length), (off + length, length),
                      (off, PAGE), (off, length + PAGE), (off, 2 * length), (off + 64 * PAGE, length)]:
        assert (offset, n, err(file_mmap, iommufd, n, offset=offset)) == (offset, n, errno.ENXIO)
    # mmap(2) rounds the length up to pages before the driver sees it (its PAGE_ALIGNED check
    # cannot fail), and refuses an unaligned offset itself
    with file_mmap(iommufd, length - 1, offset=off) as m:
        assert m.u32(0) == 0xBEEF
    assert err(file_mmap, iommufd, length, offset=off + 1) == errno.EINVAL
    # none of the failures holds the vIOMMU
    destroy(iommufd, viommu)


def test_mmap_wants_shared_and_no_exec(iommufd):
    viommu, off, length = _region(iommufd)
    # main.c:593: VM_SHARED first, then VM_EXEC (:595), before the offset is looked up
    for prot in (R, R | W, R | X):
        for offset in (off, 0):
            assert err(file_mmap, iommufd, length, prot=prot, flags=PRIVATE, offset=offset) == (
                errno.EPERM if prot & X and noexec() else errno.EINVAL)
    for offset in (off, 0):
        assert err(file_mmap, iommufd, length, prot=R | X, offset=offset) == errno.EPERM
        assert err(file_mmap, iommufd, length, prot=R | W | X, offset=offset) == errno.EPERM
    # read-only, or no access at all (PROT_NONE), is fine
    with file_mmap(iommufd, length, prot=R, offset=off) as m:
        assert m.u32(0) == 0xBEEF
        assert err(destroy, iommufd, viommu) == errno.EBUSY
    file_mmap(iommufd, length, prot=0, offset=off).munmap()
    destroy(iommufd, viommu)


def test_mmap_without_a_region(iommufd):
    _, _, _, idev, parent = nest_parent(iommufd)
    # no driver data: mock_viommu_init() registers nothing
    viommu = viommu_alloc(iommufd, idev, parent)
    for offset in (0, PAGE, 2 * PAGE):
        assert err(file_mmap, iommufd, REGION, offset=offset) == errno.ENXIO
    destroy(iommufd, viommu)


def test_mmap_regions_are_per_file_lowest_free_first(open_iommufd):
    a, b = open_iommufd(), open_iommufd()
    _, _, _, idev, parent = nest_parent(a)
    v1, off1, _ = _region(a, 1, parent, idev)
    v2, off2, _ = _region(a, 2, parent, idev)
    assert (off1, off2) == (PAGE, PAGE + REGION)
    # another file has its own tree: nothing at a's offsets
    assert err(file_mmap, b, REGION, offset=off1) == errno.ENXIO
    assert _region(b, 3)[1] == PAGE
    with file_mmap(b, REGION, offset=PAGE) as m:
        assert m.u32(0) == 3
    destroy(a, v1)
    v3, off3, _ = _region(a, 4, parent, idev)
    assert off3 == PAGE
    # a vIOMMU whose driver data stops at out_data still gets its region, unreported: the next
    # free one, mappable by whoever guesses it
    short = viommu_selftest(5)
    viommu_alloc(a, idev, parent, data=short, data_len=8)
    assert short.out_mmap_offset == 0
    with file_mmap(a, REGION, offset=PAGE + 2 * REGION) as m:
        assert m.u32(0) == 5
    assert _region(a, 6, parent, idev)[1] == PAGE + 3 * REGION


def test_each_mapping_and_piece_holds_the_viommu(iommufd):
    viommu, off, length = _region(iommufd)
    m1 = file_mmap(iommufd, length, offset=off)
    m2 = file_mmap(iommufd, length, offset=off)
    try:
        m1.munmap()
        assert err(destroy, iommufd, viommu) == errno.EBUSY
        # unmapping a piece splits the VMA: the new VMA opens (a user), the removed one closes
        assert _libc.munmap(m2.addr, PAGE) == 0
        assert err(destroy, iommufd, viommu) == errno.EBUSY
        assert m2.u32(PAGE) == 0
        assert _libc.munmap(m2.addr + PAGE, PAGE) == 0
    finally:
        m1.munmap()
        m2.munmap()
    destroy(iommufd, viommu)


def test_a_mapping_outlives_the_file(open_iommufd, iommufd_target):
    """The VMA holds the file (vma->vm_file): closing the last descriptor releases nothing; the
    mapping still reaches the vIOMMU's page, until munmap() drops the last reference and
    iommufd_fops_release() destroys the lot."""
    kernel_vma_semantics(iommufd_target)
    fd = open_iommufd()
    viommu, off, length = _region(fd, 0x5A5A)
    m = file_mmap(fd, length, offset=off)
    try:
        fd.close()
        assert m.u32(0) == 0x5A5A
        m.set_u32(4, 1)
        with open("/proc/self/maps") as f:
            line = next(ln for ln in f if ln.startswith(f"{m.addr:x}-"))
        assert line.split()[-1] == "/dev/iommu"
        assert line.split()[1] == "rw-s"
    finally:
        m.munmap()


def test_a_forked_copy_of_a_mapping_holds_the_viommu(iommufd, iommufd_target):
    """fork() copies a shared VM_PFNMAP VMA and opens it (iommufd_fops_vma_open()): the parent's
    munmap() leaves the child's user until the child's mappings go."""
    kernel_vma_semantics(iommufd_target)
    viommu, off, length = _region(iommufd, 0x77)
    m = file_mmap(iommufd, length, offset=off)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only waits for the pipe to close
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        m.munmap()
        assert err(destroy, iommufd, viommu) == errno.EBUSY
    finally:
        os.close(w)
        _, status = os.waitpid(pid, 0)
    assert status == 0
    destroy(iommufd, viommu)


def test_mprotect_can_add_exec(iommufd):
    """iommufd_fops_mmap() refuses VM_EXEC at mmap() (main.c:595) but leaves VM_MAYEXEC: unless
    the file's mount is noexec, mprotect() makes the mapping executable afterwards."""
    viommu, off, length = _region(iommufd)
    with file_mmap(iommufd, length, prot=R, offset=off) as m:
        rc = _libc.mprotect(m.addr, length, R | X)
        if noexec():
            assert (rc, ctypes.get_errno()) == (-1, errno.EACCES)
        else:
            assert rc == 0
            with open("/proc/self/maps") as f:
                line = next(ln for ln in f if ln.startswith(f"{m.addr:x}-"))
            assert line.split()[1] == "r-xs"
        assert m.u32(0) == 0xBEEF
    destroy(iommufd, viommu)


def test_backend_viommu_mmap(iommufd):
    viommu, off, length = _region(iommufd, 0xFEED)
    f = iommufd
    m = viommu_mmap(f, viommu, length, off)
    try:
        assert m.u32(0) == 0xFEED
        assert err(destroy, iommufd, viommu) == errno.EBUSY
    finally:
        viommu_munmap(m)
    # a refusal names what was asked, with the kernel's errno
    for size, offset in ((length, off + PAGE), (PAGE, off)):
        with pytest.raises(BackendError) as e:
            viommu_mmap(f, viommu, size, offset)
        assert e.value.errno == errno.ENXIO
        assert str(e.value) == (f"failed to mmap (size={size:#x} offset={offset:#x}) for viommu (id={viommu}): "
                                f"{os.strerror(errno.ENXIO)}")
    with pytest.raises(ValueError):
        viommu_mmap(f, 0, length, off)
    destroy(iommufd, viommu)
    with pytest.raises(BackendError, match=f"size=0x2000 offset=0x1000\\) for viommu \\(id={viommu}\\)"):
        viommu_mmap(f, viommu, length, off)


# the object fd.mmap() answers behaves as Python's mmap.mmap, on every target

def test_the_mapping_is_an_mmap_object(iommufd):
    """Indexing (an int), slicing and slice assignment, len(), the buffer protocol (writable on
    a read-write mapping, one memory with the region), read/write/seek/tell/find at the object's
    position, close() refused while a memoryview is exported (BufferError)."""
    viommu, off, length = _region(iommufd, 0xBEEF)
    with file_mmap(iommufd, length, offset=off) as m:
        assert isinstance(m, mmap.mmap) and not m.closed
        assert len(m) == length
        assert (m[0], m[1], m[2], m[-1]) == (0xEF, 0xBE, 0, 0)
        assert m[0:4] == (0xBEEF).to_bytes(4, "little") and m[PAGE:PAGE + 8] == bytes(8)
        m[PAGE:PAGE + 4] = b"\x01\x02\x03\x04"
        m[PAGE + 4] = 0x55
        assert (m.u32(PAGE), m[PAGE + 4]) == (0x04030201, 0x55)
        with pytest.raises(IndexError):
            m[length]
        with pytest.raises(IndexError):  # mmap.mmap's slice assignment keeps the length
            m[0:4] = b"12345"
        mv = memoryview(m)
        assert (mv.readonly, mv.nbytes, mv.format) == (False, length, "B")
        assert mv[PAGE:PAGE + 4].cast("I")[0] == 0x04030201
        mv[8:12] = b"abcd"
        assert m[8:12] == b"abcd"
        assert (ctypes.c_uint32 * 2).from_buffer(m, PAGE)[0] == 0x04030201
        with pytest.raises(BufferError):  # exported pointers exist
            m.close()
        mv.release()
        # the file position
        assert m.tell() == 0
        assert m.read(4) == (0xBEEF).to_bytes(4, "little") and m.tell() == 4
        m.seek(PAGE + 8)
        assert m.write(b"xyz") == 3 and m.tell() == PAGE + 11
        m.seek(-3, os.SEEK_CUR)
        assert m.read(3) == b"xyz" and m.read_byte() == 0
        assert m.find(b"xyz", 0) == PAGE + 8 and m.find(b"abcd", 0) == 8 and m.rfind(b"xyz", 0) == PAGE + 8
        m.seek(0, os.SEEK_END)
        assert m.read(1) == b"" and m.tell() == length
        with pytest.raises(ValueError):
            m.write(b"x")  # past the end
        # another mapping of the region sees the writes: it is the vIOMMU's memory
        with file_mmap(iommufd, length, offset=off) as m2:
            assert m2[PAGE + 8:PAGE + 11] == b"xyz"
        assert err(destroy, iommufd, viommu) == errno.EBUSY
    destroy(iommufd, viommu)


def test_a_closed_mapping_raises_valueerror(iommufd):
    """close() unmaps (the VMA's user of the vIOMMU goes); afterwards every access is ValueError
    as mmap.mmap's, and close() again does nothing."""
    viommu, off, length = _region(iommufd)
    m = file_mmap(iommufd, length, offset=off)
    m.close()
    assert m.closed
    for access in (lambda: m[0], lambda: m[0:4], lambda: m.read(1), lambda: m.write(b"x"),
                   lambda: memoryview(m), lambda: len(m), lambda: m.u32(0), lambda: m.addr):
        with pytest.raises(ValueError):
            access()
    m.close()
    m.munmap()
    destroy(iommufd, viommu)  # nothing holds it any more


def test_a_read_only_mapping_is_a_read_only_mmap_object(iommufd):
    viommu, off, length = _region(iommufd, 0x1234)
    with file_mmap(iommufd, length, prot=R, offset=off) as m:
        assert len(m) == length and m[0:2] == b"\x34\x12"
        assert memoryview(m).readonly
        with pytest.raises(TypeError):
            m[0] = 1
        with pytest.raises(TypeError):
            m[0:4] = b"abcd"
        with pytest.raises(TypeError):
            m.write(b"x")
        with pytest.raises(TypeError):
            (ctypes.c_char * 4).from_buffer(m)
        assert m.read(2) == b"\x34\x12"
    # a length short of the page: the object is as long as asked, the VMA a whole page more
    with file_mmap(iommufd, length - 1, offset=off) as m:
        assert len(m) == length - 1 and m[length - 2] == 0 and m[-1] == 0
        m[-1] = 9
    with file_mmap(iommufd, length, prot=R, offset=off) as m:
        assert m[length - 2] == 9
    destroy(iommufd, viommu)
