"""The model under hostile callers: sizes, threads, close races, fork, buffer types, VFS ioctls,
and random calls. Each case runs on every target where it means something; where the model and
the kernel must differ (fork), the test says which side it checks and why.
"""
from __future__ import annotations

import array
import ctypes
import errno
import mmap
import os
import random
import resource
import sys
import threading

import numpy as np
import pytest

from conformance.tests.helpers import PAGE, U64, destroy, err, ioas_alloc, map_, model_iopt, unmap
from model import open_iommufd as open_model
from model.libc import libc
from model.uapi import T as B

S_ALLOC = ctypes.sizeof(B.iommu_ioas_alloc)
FIONBIO, FIONCLEX, FIOCLEX, FIOASYNC, FIOQSIZE = 0x5421, 0x5450, 0x5451, 0x5452, 0x5460


def _model_ctx(fd):
    return getattr(getattr(fd, "_f", fd), "ictx", None)


class Edge:
    """Two pages with the second unmapped: a struct placed at the end of the first page has
    unreadable memory right after it."""

    def __init__(self):
        p = libc.mmap(None, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert libc.munmap(ctypes.c_void_p(p + PAGE), PAGE) == 0
        self.base, self.end = p, p + PAGE

    def put(self, data: bytes) -> int:
        """`data` ending `len(data)` bytes before the unmapped page; returns its address."""
        addr = self.end - len(data)
        ctypes.memmove(addr, data, len(data))
        return addr

    def close(self):
        libc.munmap(ctypes.c_void_p(self.base), PAGE)


# --- 1. sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0xFFFFFFFF, 1 << 31, S_ALLOC + PAGE])
def test_a_huge_size_with_a_zero_tail_faults_where_the_tail_does(iommufd, size):
    """copy_struct_from_user() -> check_zeroed_user(): the zero tail runs into the unmapped page:
    EFAULT, found without reading gigabytes (the model reads the tail in bounded pieces)."""
    edge = Edge()
    try:
        cmd = B.iommu_ioas_alloc(size=size)
        addr = edge.put(bytes(cmd) + bytes(64))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOC, addr) == errno.EFAULT
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 * 1024  # KiB
    finally:
        edge.close()
    assert ioas_alloc(iommufd) == 1  # nothing was created


def test_a_nonzero_tail_byte_before_the_fault_is_e2big(iommufd):
    """check_zeroed_user() stops at the first nonzero word: E2BIG, not EFAULT, although the tail
    (size 0xFFFFFFFF) runs into unmapped memory further on."""
    edge = Edge()
    try:
        tail = bytearray(64)
        tail[40] = 1
        addr = edge.put(bytes(B.iommu_ioas_alloc(size=0xFFFFFFFF)) + bytes(tail))
        assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOC, addr) == errno.E2BIG
    finally:
        edge.close()


def test_a_struct_cut_by_the_fault_is_efault(iommufd):
    """size covers the whole struct but the struct itself runs into the unmapped page."""
    edge = Edge()
    try:
        addr = edge.put(bytes(B.iommu_ioas_alloc(size=S_ALLOC))[:8])
        assert err(iommufd.ioctl, B.IOMMU_IOAS_ALLOC, addr) == errno.EFAULT
    finally:
        edge.close()


# --- 2. threads and close ------------------------------------------------------------------------


@pytest.fixture
def fast_switches():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run_threads(n, fn):
    errors = []

    def wrap(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_allocs_get_distinct_ids(iommufd, fast_switches):
    ids = [[] for _ in range(4)]

    def alloc(i):
        for _ in range(300):
            ids[i].append(ioas_alloc(iommufd))

    assert _run_threads(4, alloc) == []
    every = [x for xs in ids for x in xs]
    assert len(every) == len(set(every)) == 1200
    assert sorted(every) == list(range(1, 1201))


def test_concurrent_maps_keep_the_table_consistent(iommufd, fast_switches):
    ioas = ioas_alloc(iommufd)
    buf = mmap.mmap(-1, 16 * PAGE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    got = [[] for _ in range(4)]

    def mapper(i):
        for k in range(150):
            length = PAGE * (1 + (k + i) % 4)
            got[i].append((map_(iommufd, ioas, va, length), length))
            if k % 3 == 2:
                iova, length = got[i].pop(0)
                assert unmap(iommufd, ioas, iova, length) == length

    assert _run_threads(4, mapper) == []
    spans = sorted((iova, iova + length - 1) for xs in got for iova, length in xs)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # no two mappings overlap
    if (iopt := model_iopt(iommufd, ioas)) is not None:
        iopt.check_invariants()
        assert [(a.start, a.last) for a in iopt.areas] == spans
    assert unmap(iommufd, ioas, 0, U64) == sum(l - s + 1 for s, l in spans)


def test_close_racing_ioctls_gives_success_or_ebadf(open_iommufd, fast_switches):
    for _ in range(20):
        fd = open_iommufd()
        seen = set()
        started = threading.Event()

        def caller(i):
            started.set()
            for _ in range(200):
                try:
                    ioas_alloc(fd)
                    seen.add(0)
                except OSError as e:
                    seen.add(e.errno)

        t = threading.Thread(target=caller, args=(0,))
        t.start()
        started.wait()
        fd.close()
        t.join()
        assert seen <= {0, errno.EBADF}, seen
        assert err(ioas_alloc, fd) == errno.EBADF


# --- 3. fork -------------------------------------------------------------------------------------


def _in_child(fn) -> int:
    """fn() in a forked child; its return value (0..255) as the exit status."""
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def test_fork_shares_the_file_on_a_kernel(iommufd, iommufd_target):
    """On Linux parent and child share the open file: what the child destroys is gone for the
    parent. The model cannot share its state with another process (see the next test)."""
    if iommufd_target == "model":
        pytest.skip("the model's state is not shared across fork(); test_fork_child_use_of_a_model_file_is_loud")
    a = ioas_alloc(iommufd)

    def child():
        fd = iommufd._f if hasattr(iommufd, "_f") else iommufd
        fd.ioctl(B.IOMMU_DESTROY, B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=a))
        return 0

    assert _in_child(child) == 0
    assert err(iommufd.ioctl, B.IOMMU_DESTROY, B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=a)) \
        == errno.ENOENT


def test_fork_child_use_of_a_model_file_is_loud():
    """The model: the child's ioctl on an inherited model file answers ENOSYS ("not modelled"),
    never a silently diverging copy; the parent's state is untouched, even by the child's close()."""
    fd = open_model()
    a = ioas_alloc(fd)

    def child():
        try:
            ioas_alloc(fd)
        except OSError as e:
            fd.close()
            return 1 if e.errno == errno.ENOSYS and "fork" in str(e) else 2
        return 3

    assert _in_child(child) == 1
    assert ioas_alloc(fd) == a + 1 and len(fd.ictx.objects.objects) == 2
    fd.close()


# --- 4. the arguments fcntl.ioctl takes ------------------------------------------------------------


def _alloc_buffers():
    raw = bytes(B.iommu_ioas_alloc(size=S_ALLOC))
    m = mmap.mmap(-1, PAGE)
    m[:S_ALLOC] = raw
    n = np.zeros(S_ALLOC, dtype=np.uint8)
    n[:] = np.frombuffer(raw, dtype=np.uint8)
    return [("bytearray", bytearray(raw)), ("array", array.array("B", raw)), ("mmap", m), ("numpy", n),
            ("ctypes", B.iommu_ioas_alloc.from_buffer_copy(raw)),
            ("memoryview cast", memoryview(bytearray(raw)).cast("I"))]


@pytest.mark.parametrize("kind", [k for k, _ in _alloc_buffers()])
def test_writable_buffers_get_the_reply(iommufd, kind):
    buf = dict(_alloc_buffers())[kind]
    assert iommufd.ioctl(B.IOMMU_IOAS_ALLOC, buf) == 0
    out = B.iommu_ioas_alloc.from_buffer_copy(bytes(memoryview(buf).cast("B")[:S_ALLOC]))
    assert out.out_ioas_id == 1


def test_read_only_buffers_and_no_mutate_return_bytes(iommufd):
    raw = bytes(B.iommu_ioas_alloc(size=S_ALLOC))
    for arg, flag in ((raw, True), (memoryview(raw), True), (bytearray(raw), False)):
        got = iommufd.ioctl(B.IOMMU_IOAS_ALLOC, arg, flag)
        assert isinstance(got, bytes) and len(got) == S_ALLOC
        assert B.iommu_ioas_alloc.from_buffer_copy(got).out_ioas_id >= 1
        assert bytes(memoryview(arg).cast("B")) == raw  # the argument itself is left alone
    with pytest.raises(ValueError):
        iommufd.ioctl(B.IOMMU_IOAS_ALLOC, bytes(2000))
    with pytest.raises(TypeError):
        iommufd.ioctl(B.IOMMU_IOAS_ALLOC, np.zeros(32, dtype=np.uint8)[::2])  # not contiguous


# --- 5. the VFS answers first ---------------------------------------------------------------------


def test_vfs_ioctls_are_answered_before_the_driver(iommufd):
    on, off = ctypes.c_int(1), ctypes.c_int(0)
    assert iommufd.ioctl(FIOCLEX, 0) == 0
    assert iommufd.ioctl(FIONCLEX, 0) == 0
    assert iommufd.ioctl(FIONBIO, ctypes.addressof(on)) == 0
    assert iommufd.ioctl(FIONBIO, ctypes.addressof(off)) == 0
    assert err(iommufd.ioctl, FIONBIO, 8) == errno.EFAULT  # get_user() of an unmapped int
    assert iommufd.ioctl(FIOASYNC, ctypes.addressof(off)) == 0  # no change: no ->fasync needed
    assert err(iommufd.ioctl, FIOASYNC, ctypes.addressof(on)) == errno.ENOTTY  # iommufd has no fasync
    assert err(iommufd.ioctl, FIOQSIZE, ctypes.addressof(on)) == errno.ENOTTY  # a character device


# --- 6. ALLOW_IOVAS in any order --------------------------------------------------------------------


def _allow(fd, ioas, ranges):
    arr = (B.iommu_iova_range * len(ranges))(*[B.iommu_iova_range(s, l) for s, l in ranges])
    fd.ioctl(B.IOMMU_IOAS_ALLOW_IOVAS, B.iommu_ioas_allow_iovas(
        size=ctypes.sizeof(B.iommu_ioas_allow_iovas), ioas_id=ioas, num_iovas=len(ranges),
        allowed_iovas=ctypes.addressof(arr)))


def test_allow_iovas_takes_any_order_and_finds_any_overlap(iommufd):
    ioas = ioas_alloc(iommufd)
    ranges = [((2 * i + 1) * PAGE, (2 * i + 2) * PAGE - 1) for i in range(2000)]
    rnd = random.Random(7)
    for order in (ranges, ranges[::-1], rnd.sample(ranges, len(ranges))):
        _allow(iommufd, ioas, order)
        # the allocator honours the set: an automatic map lands in the first allowed range
        assert map_(iommufd, ioas, 0, PAGE) == PAGE
        unmap(iommufd, ioas, 0, U64)
        bad = list(order)
        bad.insert(rnd.randrange(len(bad)), (ranges[500][0] + 16, ranges[500][1] + PAGE))
        assert err(_allow, iommufd, ioas, bad) == errno.EINVAL


# --- random calls ------------------------------------------------------------------------------------


# What iommufd's handlers and the paths they call return (the kernel's answers here, measured on
# 7.2.13 with this campaign, and the model's); anything else would be a new kind of answer.
CAMPAIGN_ERRNOS = {errno.EINVAL, errno.ENOENT, errno.EFAULT, errno.EOPNOTSUPP, errno.E2BIG, errno.ENOTTY,
                   errno.EBUSY, errno.ENOMEM, errno.EOVERFLOW, errno.ERANGE, errno.EPERM, errno.ENODEV,
                   errno.EBADF, errno.ENOSPC, errno.EEXIST, errno.EBADFD, errno.EIO, errno.ENXIO,
                   errno.EMSGSIZE}  # EMSGSIZE: IOAS_IOVA_RANGES with too few slots


def test_random_calls_raise_only_oserror_and_keep_the_model_consistent(iommufd):
    """A bounded random campaign over every IOCTL row with sizes, IDs, pointers and flags drawn
    from edge values. On every target: nothing but OSError escapes, every errno is one iommufd
    answers with, the campaign both succeeds and fails calls, and the file still works after it
    (kernel reports fail the test through the plugin). On the model every invariant holds after
    every call."""
    rnd = random.Random(1)
    buf = mmap.mmap(-1, 8 * PAGE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    rows = [r for r in B.IOCTLS if r.struct and r.name != "IOMMU_TEST_CMD"]  # mock ops: not here
    fd = getattr(iommufd, "_f", iommufd)
    words = [0, 1, 2, 3, PAGE, 0xFFFFFFFF, 1 << 31, 1 << 16]
    ctx = _model_ctx(iommufd)
    outcomes: dict[int, int] = {}
    for _ in range(3000):
        row = rnd.choice(rows)
        data = bytearray(row.size + 16)
        for off in range(4, row.size - 3, 4):
            data[off:off + 4] = rnd.choice(words).to_bytes(4, "little")
        for spec in row.ids:
            data[spec.offset:spec.offset + spec.size] = rnd.randrange(6).to_bytes(spec.size, "little")
        for spec in row.pointers:
            data[spec.offset:spec.offset + spec.size] = rnd.choice([0, 8, va, va + PAGE]).to_bytes(spec.size, "little")
        for spec in row.flags:
            v = rnd.choice([0, spec.mask, spec.mask & -spec.mask])
            data[spec.offset:spec.offset + spec.size] = v.to_bytes(spec.size, "little")
        for spec in row.reserved:
            data[spec.offset:spec.offset + spec.size] = bytes(spec.size)
        size = rnd.choice([row.size, row.size, row.min_size, row.size + 16, 0, 0xFFFFFFFF])
        data[0:4] = size.to_bytes(4, "little")
        try:
            fd.ioctl(row.number, data)
            e = 0
        except OSError as exc:
            e = exc.errno
        outcomes[e] = outcomes.get(e, 0) + 1
        if ctx is not None:
            ctx.check_invariants()
    assert outcomes.get(0, 0) > 0 and len(outcomes) > 3, outcomes
    assert set(outcomes) - {0} <= CAMPAIGN_ERRNOS, {errno.errorcode.get(e, e): n for e, n in outcomes.items()}
    ioas = ioas_alloc(iommufd)  # the file still answers
    destroy(iommufd, ioas)
    if ctx is not None:
        assert ctx.objects.objects  # the campaign did create objects
