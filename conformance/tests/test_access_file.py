"""IOMMU_TEST_OP_ACCESS_RW over pages that are not the caller's memory: a file mapped with
IOMMU_IOAS_MAP_FILE, and the pages of a process that has exited (fork_gone in
tools/testing/selftests/iommu/iommufd.c).

iopt_pages_rw_access() (pages.c:2350) sends file pages, and user pages of another mm (or with
MOCK_ACCESS_RW_SLOW_PATH), to iopt_pages_rw_slow() (pages.c:2258; one page of another mm first
tries iopt_pages_rw_page(), pages.c:2299): a pfn_reader that takes the pages a domain or an
access holds from there and pins the rest from their source for the copy, a file's with
memfd_pin_folios() (mm/gup.c:3442: EINVAL for a file neither shmem nor hugetlbfs, EINVAL for a
range reaching past EOF), an mm's with pin_user_pages_remote() (EFAULT once the mm is gone:
mmget_not_zero(), pages.c:914). A pinned page outlives the process that mapped it.
"""
import contextlib
import ctypes
import errno
import mmap
import os
import tempfile

import pytest

from model.uapi import T as B
from conformance.tests.helpers import (
    PAGE, R, W, RW, access_pages, access_rw, create_access, destroy_access_pages, err, ioas_alloc, map_, map_file,
    mock_device, require,
)

require("IOMMU_IOAS_MAP_FILE")

BASE = B.MOCK_APERTURE_START
PIN = B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES
WRITE = B.MOCK_ACCESS_RW_WRITE
SLOW = B.MOCK_ACCESS_RW_SLOW_PATH
TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6


def _f_type(fd) -> int:
    """statfs.f_type of the filesystem holding fd (struct statfs on x86_64 starts with it)."""
    buf = (ctypes.c_long * 16)()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.fstatfs(fd, buf) == 0
    return buf[0] & 0xFFFFFFFF


def _pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7 + i // 251) & 0xFF for i in range(n))


@pytest.fixture
def memfd():
    fd = os.memfd_create("iommufd-conformance")
    os.pwrite(fd, _pattern(4 * PAGE, 3), 0)  # 4 pages: the file's size
    yield fd
    os.close(fd)


def _rw(iommufd, afd, iova, length, flags=0, data=None) -> bytes:
    """ACCESS_RW of [iova, iova + length): the bytes read, or `data` written."""
    buf = (ctypes.c_ubyte * length)(*(data or b""))
    access_rw(iommufd, afd, iova, ctypes.addressof(buf), length, flags)
    return bytes(buf)


@contextlib.contextmanager
def _access(iommufd, ioas, flags=0):
    afd = create_access(iommufd, ioas, flags)
    try:
        yield afd
    finally:
        os.close(afd)


# --- a memfd mapped with IOMMU_IOAS_MAP_FILE ---------------------------------------------------

@pytest.mark.parametrize("flags", [0, SLOW], ids=["plain", "slow"])
@pytest.mark.parametrize("domain", [False, True], ids=["no_domain", "domain"])
def test_access_rw_reads_and_writes_a_memfd(iommufd, memfd, domain, flags):
    """Without a domain each call pins the file's pages for the copy and unpins them; with one
    the domain's pages are copied. Either way the bytes are the file's, at start + offset."""
    ioas = ioas_alloc(iommufd)
    if domain:
        mock_device(iommufd, ioas)
    # start_byte 0x800: the mock domain's IOVA alignment is its page, PAGE_SIZE / 2
    map_file(iommufd, ioas, memfd, PAGE + 0x800, 2 * PAGE, iova=BASE + 0x800)
    with _access(iommufd, ioas) as afd:
        want = _pattern(4 * PAGE, 3)
        for iova, n in ((BASE + 0x800, 1), (BASE + 0x800, 64), (BASE + PAGE - 32, 64), (BASE + 0x800, 2 * PAGE),
                        (BASE + 2 * PAGE + 0x7F0, 16)):
            off = PAGE + iova - BASE
            assert _rw(iommufd, afd, iova, n, flags) == want[off:off + n], (hex(iova), n)
        _rw(iommufd, afd, BASE + PAGE - 8, 16, flags | WRITE, b"\xAA" * 16)  # across a page
        _rw(iommufd, afd, BASE + 0x800, 1, flags | WRITE, b"\x55")
        assert os.pread(memfd, 16, 2 * PAGE - 8) == b"\xAA" * 16
        assert os.pread(memfd, 1, PAGE + 0x800) == b"\x55"
        os.pwrite(memfd, b"fresh", 2 * PAGE + 4)  # the file's own writes show through
        assert _rw(iommufd, afd, BASE + PAGE + 4, 5, flags) == b"fresh"
        assert os.fstat(memfd).st_size == 4 * PAGE  # nothing grew the file


def test_access_rw_of_a_memfd_opened_read_only_still_writes(iommufd, memfd):
    """memfd_pin_folios() takes the file as it is: the access writes the pinned page, whatever
    the descriptor's mode (iopt_map_file_pages() does not look at it)."""
    ro = os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY)
    try:
        ioas = ioas_alloc(iommufd)
        map_file(iommufd, ioas, ro, 0, PAGE, iova=BASE)
        with _access(iommufd, ioas) as afd:
            _rw(iommufd, afd, BASE + 10, 4, WRITE, b"ro!!")
        assert os.pread(memfd, 4, 10) == b"ro!!"
    finally:
        os.close(ro)


def test_access_rw_direction_against_the_area(iommufd, memfd):
    """check_area_prot() (device.c:1524) first: a read-only area refuses a write (EPERM), a
    write-only one a read; the other direction goes through."""
    ioas = ioas_alloc(iommufd)
    map_file(iommufd, ioas, memfd, 0, PAGE, iova=BASE, flags=R)
    map_file(iommufd, ioas, memfd, PAGE, PAGE, iova=BASE + PAGE, flags=W)
    with _access(iommufd, ioas) as afd:
        for flags in (0, SLOW):
            assert err(_rw, iommufd, afd, BASE + 5, 4, flags | WRITE, b"nope") == errno.EPERM
            assert _rw(iommufd, afd, BASE + 5, 4, flags) == _pattern(4 * PAGE, 3)[5:9]
            assert err(_rw, iommufd, afd, BASE + PAGE + 5, 4, flags) == errno.EPERM
            _rw(iommufd, afd, BASE + PAGE + 5, 4, flags | WRITE, b"yes!")
            assert err(_rw, iommufd, afd, BASE + PAGE - 2, 4, flags) == errno.EPERM  # over both
    assert os.pread(memfd, 4, 5) == _pattern(4 * PAGE, 3)[5:9]
    assert os.pread(memfd, 4, PAGE + 5) == b"yes!"


def test_access_rw_past_the_end_of_the_file(iommufd, memfd):
    """The area maps pages past EOF (nothing is pinned without a domain); a copy pins the pages
    of its own range only, so the part inside the file reads, any range reaching a page past
    EOF is EINVAL (memfd_pin_folios(), gup.c:3463) and copies nothing, and a file grown to
    cover it reads its new zeros."""
    ioas = ioas_alloc(iommufd)
    map_file(iommufd, ioas, memfd, 2 * PAGE, 4 * PAGE, iova=BASE)  # pages 2, 3 in; 4, 5 past EOF
    want = _pattern(4 * PAGE, 3)
    with _access(iommufd, ioas) as afd:
        assert _rw(iommufd, afd, BASE + PAGE, 64) == want[3 * PAGE:3 * PAGE + 64]
        assert _rw(iommufd, afd, BASE, 2 * PAGE) == want[2 * PAGE:]
        for flags in (0, SLOW, WRITE):
            assert err(_rw, iommufd, afd, BASE + 2 * PAGE, 8, flags, b"x" * 8) == errno.EINVAL
            assert err(_rw, iommufd, afd, BASE + 2 * PAGE - 4, 8, flags, b"x" * 8) == errno.EINVAL
        assert os.pread(memfd, 8, 3 * PAGE - 4) == want[3 * PAGE - 4:3 * PAGE + 4]  # no partial write
        assert os.fstat(memfd).st_size == 4 * PAGE
        os.ftruncate(memfd, 5 * PAGE)
        assert _rw(iommufd, afd, BASE + 2 * PAGE - 4, 8) == want[4 * PAGE - 4:] + bytes(4)
        assert err(_rw, iommufd, afd, BASE + 3 * PAGE, 8) == errno.EINVAL  # page 5: still past EOF
        # a pinning access is held to the same rule (iopt_pages_fill_xarray())
    with _access(iommufd, ioas, PIN) as afd:
        assert err(access_pages, iommufd, afd, BASE + 3 * PAGE, PAGE) == errno.EINVAL
        item = access_pages(iommufd, afd, BASE + 2 * PAGE, PAGE)
        assert _rw(iommufd, afd, BASE + 2 * PAGE, 4) == bytes(4)
        destroy_access_pages(iommufd, afd, item)


def test_a_domain_cannot_take_pages_past_the_end_of_the_file(iommufd, memfd):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    assert err(map_file, iommufd, ioas, memfd, 3 * PAGE, 2 * PAGE, iova=BASE) == errno.EINVAL


def test_access_rw_of_a_hugetlb_memfd(iommufd):
    """A hugetlbfs memfd (MFD_HUGETLB): memfd_pin_folios() pins its huge folios
    (is_file_hugepages()), the copy goes through them, without and with a domain."""
    hp = 2 << 20
    try:
        mfd = os.memfd_create("iommufd-conformance-huge", os.MFD_HUGETLB)
    except OSError as e:
        pytest.skip(f"no hugetlb memfd here ({e})")
    try:
        try:
            os.ftruncate(mfd, hp)
            m = mmap.mmap(mfd, hp)
            m[:PAGE] = _pattern(PAGE, 13)  # faults the huge page in: SIGBUS-free only if one is free
        except (OSError, ValueError) as e:
            pytest.skip(f"no 2 MiB huge page here ({e})")
        assert m[PAGE - 8:PAGE + 8] == _pattern(PAGE, 13)[PAGE - 8:] + bytes(8)
        ioas = ioas_alloc(iommufd)
        map_file(iommufd, ioas, mfd, 0, hp, iova=BASE)
        with _access(iommufd, ioas) as afd:
            for dom in (False, True):
                if dom:
                    mock_device(iommufd, ioas)
                assert _rw(iommufd, afd, BASE + PAGE - 8, 16, SLOW) == m[PAGE - 8:PAGE + 8]
                _rw(iommufd, afd, BASE + PAGE - 4, 8, WRITE, b"huge-%d!!" % dom)
                assert m[PAGE - 4:PAGE + 4] == b"huge-%d!!" % dom
        m.close()
    finally:
        os.close(mfd)


def _dir_on(want_shmem: bool) -> str | None:
    """A writable directory whose filesystem is (or is not) shmem: tmpfs for a file
    memfd_pin_folios() takes, anything else (ext4, 9p) for one it refuses."""
    cands = [os.environ.get("IOMMUFD_VM_SCRATCH"), "/dev/shm", os.environ.get("TMPDIR"), tempfile.gettempdir(),
             "/run/tmp", "/var/tmp", os.getcwd()]
    for d in cands:
        if not d or not os.path.isdir(d) or not os.access(d, os.W_OK):
            continue
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            shmem = _f_type(fd) in (TMPFS_MAGIC, HUGETLBFS_MAGIC)
        finally:
            os.close(fd)
        if shmem == want_shmem:
            return d
    return None


@pytest.mark.parametrize("shmem", [True, False], ids=["tmpfs", "not_shmem"])
def test_a_regular_file(iommufd, shmem):
    """IOMMU_IOAS_MAP_FILE of a regular file maps whatever its filesystem (nothing is pinned);
    memfd_pin_folios() pins from shmem or hugetlbfs only (gup.c:3460): a file on tmpfs copies
    like a memfd, one on any other filesystem is EINVAL for ACCESS_RW and for a domain."""
    d = _dir_on(shmem)
    if d is None:
        pytest.skip(f"no writable directory on {'tmpfs' if shmem else 'a filesystem other than tmpfs'}")
    with tempfile.TemporaryFile(dir=d) as f:
        f.write(_pattern(2 * PAGE, 9))
        f.flush()
        ioas = ioas_alloc(iommufd)
        map_file(iommufd, ioas, f.fileno(), 0, 2 * PAGE, iova=BASE)
        with _access(iommufd, ioas) as afd:
            if shmem:
                assert _rw(iommufd, afd, BASE + PAGE - 3, 6, SLOW) == _pattern(2 * PAGE, 9)[PAGE - 3:PAGE + 3]
                _rw(iommufd, afd, BASE + 7, 3, WRITE, b"abc")
                assert os.pread(f.fileno(), 3, 7) == b"abc"
            else:
                for flags in (0, SLOW, WRITE):
                    assert err(_rw, iommufd, afd, BASE + 7, 3, flags, b"abc") == errno.EINVAL
                assert os.pread(f.fileno(), 3, 7) == _pattern(2 * PAGE, 9)[7:10]
        if shmem:
            mock_device(iommufd, ioas)
        else:
            assert err(mock_device, iommufd, ioas) == errno.EINVAL  # filling the new domain pins


# --- which path pins how: user memory made read-only after it was mapped writable ---------------

def test_access_rw_paths_pin_differently(iommufd):
    """A writable area whose memory the process made read-only since (nothing pinned, no
    domain): copy_from_user() (the caller's own mm) reads, iopt_pages_rw_page() (one page with
    the slow path flag) pins without FOLL_WRITE for a read and reads, iopt_pages_rw_slow()
    (more pages) pins with FOLL_WRITE because the pages are writable: EFAULT even for a read.
    Writes fail on every path. Once a domain holds the pages the slow path copies from it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    m = mmap.mmap(-1, 3 * PAGE)
    m[:] = _pattern(3 * PAGE, 11)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    addr = (addr + PAGE - 1) & ~(PAGE - 1)
    base = addr - ctypes.addressof(ctypes.c_char.from_buffer(m))
    want = bytes(m[base:base + 2 * PAGE])
    ioas = ioas_alloc(iommufd)
    map_(iommufd, ioas, addr, 2 * PAGE, iova=BASE)
    assert libc.mprotect(addr, 2 * PAGE, mmap.PROT_READ) == 0
    try:
        with _access(iommufd, ioas) as afd:
            assert _rw(iommufd, afd, BASE + PAGE - 8, 16) == want[PAGE - 8:PAGE + 8]
            assert _rw(iommufd, afd, BASE + 8, 16, SLOW) == want[8:24]
            assert err(_rw, iommufd, afd, BASE + PAGE - 8, 16, SLOW) == errno.EFAULT
            for iova, flags in ((BASE + 8, WRITE), (BASE + 8, WRITE | SLOW), (BASE + PAGE - 8, WRITE | SLOW)):
                assert err(_rw, iommufd, afd, iova, 16, flags, b"z" * 16) == errno.EFAULT
            assert bytes(m[base:base + 2 * PAGE]) == want
            assert libc.mprotect(addr, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE) == 0
            mock_device(iommufd, ioas)  # pins the pages (writable again)
            assert libc.mprotect(addr, 2 * PAGE, mmap.PROT_READ) == 0
            assert _rw(iommufd, afd, BASE + PAGE - 8, 16, SLOW) == want[PAGE - 8:PAGE + 8]
    finally:
        libc.mprotect(addr, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)


# --- pages of a process that has exited (fork_gone) ---------------------------------------------

def _shared_cmd_page():
    """A MAP_SHARED page made before fork(): both processes see the same bytes at the same
    address (the model plays the child's ioctl from this process and reads its command out of
    the child's memory)."""
    return mmap.mmap(-1, PAGE, mmap.MAP_SHARED)


def _map_from_a_child_that_exits(iommufd, iommufd_target, ioas, addr, length, iova) -> None:
    """IOMMU_IOAS_MAP of [addr, addr + length) issued by a forked child (its mm is the pages'
    source_mm), which then exits and is reaped.

    On a kernel the child calls the ioctl on the inherited descriptor. The model's state lives
    in this process and is not shared across fork(), so the child only waits while this process
    makes the call on its behalf, as the child (its file's pid: whose memory user pointers
    address and whose mm the pages come from), with the command in a shared page the child sees
    at the same address."""
    cmdpage = _shared_cmd_page()
    cmd = B.iommu_ioas_map.from_buffer(cmdpage)
    cmd.size, cmd.flags, cmd.ioas_id = ctypes.sizeof(cmd), RW | B.IOMMU_IOAS_MAP_FIXED_IOVA, ioas
    cmd.user_va, cmd.length, cmd.iova = addr, length, iova
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if iommufd_target == "model":
                os.read(r, 1)  # until the parent has mapped for us
            else:
                try:
                    iommufd.ioctl(B.IOMMU_IOAS_MAP, ctypes.addressof(cmd))
                except OSError as e:
                    code = e.errno
        finally:
            os._exit(code)
    try:
        if iommufd_target == "model":
            f = iommufd._f
            f._pid = pid
            try:
                iommufd.ioctl(B.IOMMU_IOAS_MAP, ctypes.addressof(cmd))
            finally:
                f._pid = None
                os.write(w, b"x")
    finally:
        os.close(r)
        os.close(w)
        _, status = os.waitpid(pid, 0)
    del cmd
    cmdpage.close()
    assert os.waitstatus_to_exitcode(status) == 0


def _shared_buffer(npages):
    m = mmap.mmap(-1, npages * PAGE, mmap.MAP_SHARED)  # MAP_SHARED | MAP_ANONYMOUS, as the selftest's
    m[:] = _pattern(npages * PAGE, 1)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def test_fork_gone_with_a_domain_keeps_the_pages(iommufd, iommufd_target):
    """fork_gone with a domain: the child's map pinned its pages into the domain, which keeps
    them after the child exits. A second domain is filled from the first (no mm needed), and
    ACCESS_RW from this process (another mm: iopt_pages_rw_page() finds the source mm gone and
    takes the slow path, which copies from the domain's pages) reads and writes the shared
    memory this process still maps."""
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    afd = create_access(iommufd, ioas)
    m, addr = _shared_buffer(4)
    try:
        _map_from_a_child_that_exits(iommufd, iommufd_target, ioas, addr, 4 * PAGE, BASE)
        mock_device(iommufd, ioas)  # copies from one domain to the other
        for flags in (0, SLOW):
            assert _rw(iommufd, afd, BASE + 100, 16, flags) == m[100:116]
            assert _rw(iommufd, afd, BASE + PAGE - 50, 100, flags) == m[PAGE - 50:PAGE + 50]
            assert _rw(iommufd, afd, BASE, 4 * PAGE, flags) == m[:]
        m[2 * PAGE:2 * PAGE + 4] = b"mine"
        assert _rw(iommufd, afd, BASE + 2 * PAGE, 4) == b"mine"
        _rw(iommufd, afd, BASE + 3 * PAGE - 3, 6, WRITE, b"theirs")
        assert m[3 * PAGE - 3:3 * PAGE + 3] == b"theirs"
        _rw(iommufd, afd, BASE + 7, 2, WRITE | SLOW, b"ok")
        assert m[7:9] == b"ok"
    finally:
        os.close(afd)
    mock_device(iommufd, ioas)  # still fillable after the writes


def test_fork_gone_without_a_domain_cannot_pin(iommufd, iommufd_target):
    """fork_gone without a domain: nothing was pinned, and the source mm is gone, so a domain
    cannot be filled (EFAULT: pfn_reader_user_pin()'s mmget_not_zero(), pages.c:914), nor can
    ACCESS_RW pin the pages for a copy (EFAULT, on every path)."""
    ioas = ioas_alloc(iommufd)
    afd = create_access(iommufd, ioas)
    m, addr = _shared_buffer(2)
    try:
        _map_from_a_child_that_exits(iommufd, iommufd_target, ioas, addr, 2 * PAGE, BASE)
        assert err(mock_device, iommufd, ioas) == errno.EFAULT
        for flags in (0, SLOW, WRITE):
            assert err(_rw, iommufd, afd, BASE + 8, 8, flags, b"y" * 8) == errno.EFAULT
            assert err(_rw, iommufd, afd, BASE + PAGE - 4, 8, flags, b"y" * 8) == errno.EFAULT
    finally:
        os.close(afd)


def test_fork_gone_private_memory_stays_pinned(iommufd, iommufd_target):
    """The same with private anonymous memory: the child's writable pin broke COW, so the domain
    holds the child's own copy of the pages (the bytes as they were at fork()), which outlives
    the child; this process's later writes to its own copy are not seen. The model cannot reach
    a page of private memory of a process that has exited (model/memory.py,
    PhysicalMemory.frame_file()): it answers ENOSYS, a skip here."""
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    m = mmap.mmap(-1, 2 * PAGE, mmap.MAP_PRIVATE)
    m[:] = _pattern(2 * PAGE, 5)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    afd = create_access(iommufd, ioas)
    try:
        _map_from_a_child_that_exits(iommufd, iommufd_target, ioas, addr, 2 * PAGE, BASE)
        m[:4] = b"new!"
        assert _rw(iommufd, afd, BASE, 8) == _pattern(8, 5)
        assert _rw(iommufd, afd, BASE + PAGE - 4, 8, SLOW) == _pattern(2 * PAGE, 5)[PAGE - 4:PAGE + 4]
    finally:
        os.close(afd)
