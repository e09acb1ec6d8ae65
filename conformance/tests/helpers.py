"""Helpers for the IOAS tests (test_ioas_*.py, test_pinning.py): raw-ABI calls and a state snapshot.

The snapshot is what "a failed ioctl changed nothing" compares: on every target
it is read through ioctls (IOVA_RANGES, a COPY probe per range of interest, the IOVA an automatic
map would get), and on the model it adds the model's own table (areas, pins, references).
"""
from __future__ import annotations

import ctypes
import mmap

import pytest

from conformance.report import Errno
from model.libc import libc
from model.limits import PAGE_SIZE, U64_MAX
from model.uapi import T as B
from model.uapi import set_fields

PAGE = PAGE_SIZE
U64 = U64_MAX
R = B.IOMMU_IOAS_MAP_READABLE
W = B.IOMMU_IOAS_MAP_WRITEABLE
FIXED = B.IOMMU_IOAS_MAP_FIXED_IOVA
RW = R | W


def require(*names: str) -> None:
    """Skip the calling test module when the bindings under test (model.uapi.T) lack one of
    `names`: the module depends on the uapi version, and says which names it needs."""
    missing = [n for n in names if not hasattr(B, n)]
    if missing:
        pytest.skip(f"depends on the uapi version: Linux {B.KERNEL_VERSION} has no {', '.join(missing)}",
                    allow_module_level=True)


def sz(cls) -> int:
    return ctypes.sizeof(cls)


def err(fn, *args, **kw) -> int:
    """The errno `fn` fails with (0 when it succeeds), printing as its name in assertions."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return Errno(e.errno)
    return Errno(0)


def ioas_alloc(fd) -> int:
    cmd = B.iommu_ioas_alloc(size=sz(B.iommu_ioas_alloc))
    fd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    return cmd.out_ioas_id


def destroy(fd, id: int) -> None:
    fd.ioctl(B.IOMMU_DESTROY, B.iommu_destroy(size=sz(B.iommu_destroy), id=id))


def map_cmd(ioas, user_va, length, iova=None, flags=RW, reserved=0):
    if iova is not None:
        flags |= FIXED
    return B.iommu_ioas_map(size=sz(B.iommu_ioas_map), flags=flags, ioas_id=ioas, __reserved=reserved,
                            user_va=user_va, length=length, iova=iova or 0)


def map_(fd, ioas, user_va, length, iova=None, flags=RW, reserved=0) -> int:
    """IOMMU_IOAS_MAP; iova=None asks for an automatic IOVA. Returns the IOVA."""
    cmd = map_cmd(ioas, user_va, length, iova, flags, reserved)
    fd.ioctl(B.IOMMU_IOAS_MAP, cmd)
    return cmd.iova


def map_file(fd, ioas, mfd, start, length, iova=None, flags=RW) -> int:
    if iova is not None:
        flags |= FIXED
    cmd = B.iommu_ioas_map_file(size=sz(B.iommu_ioas_map_file), flags=flags, ioas_id=ioas, fd=mfd,
                                start=start, length=length, iova=iova or 0)
    fd.ioctl(B.IOMMU_IOAS_MAP_FILE, cmd)
    return cmd.iova


def unmap(fd, ioas, iova, length) -> int:
    """IOMMU_IOAS_UNMAP; returns the unmapped length the kernel wrote back."""
    cmd = B.iommu_ioas_unmap(size=sz(B.iommu_ioas_unmap), ioas_id=ioas, iova=iova, length=length)
    fd.ioctl(B.IOMMU_IOAS_UNMAP, cmd)
    return cmd.length


def copy(fd, dst, src, src_iova, length, dst_iova=None, flags=RW) -> int:
    if dst_iova is not None:
        flags |= FIXED
    cmd = B.iommu_ioas_copy(size=sz(B.iommu_ioas_copy), flags=flags, dst_ioas_id=dst, src_ioas_id=src,
                            length=length, dst_iova=dst_iova or 0, src_iova=src_iova)
    fd.ioctl(B.IOMMU_IOAS_COPY, cmd)
    return cmd.dst_iova


def iova_ranges(fd, ioas) -> tuple[list[tuple[int, int]], int]:
    """IOMMU_IOAS_IOVA_RANGES: ([(start, last)], out_iova_alignment)."""
    ranges = (B.iommu_iova_range * 16)()
    cmd = B.iommu_ioas_iova_ranges(size=sz(B.iommu_ioas_iova_ranges), ioas_id=ioas, num_iovas=16,
                                   allowed_iovas=ctypes.addressof(ranges))
    fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, cmd)
    return [(ranges[i].start, ranges[i].last) for i in range(cmd.num_iovas)], cmd.out_iova_alignment


def allow(fd, ioas, ranges, num=None, ptr=None) -> None:
    arr = (B.iommu_iova_range * max(1, len(ranges)))(*[B.iommu_iova_range(s, l) for s, l in ranges])
    cmd = B.iommu_ioas_allow_iovas(size=sz(B.iommu_ioas_allow_iovas), ioas_id=ioas,
                                   num_iovas=len(ranges) if num is None else num,
                                   allowed_iovas=ctypes.addressof(arr) if ptr is None else ptr)
    fd.ioctl(B.IOMMU_IOAS_ALLOW_IOVAS, cmd)


class Buf:
    """Anonymous user memory: `n` pages, optionally placed at an `align`ed address."""

    def __init__(self, npages: int, align: int = PAGE):
        self.m = mmap.mmap(-1, npages * PAGE + align)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        self.addr = (base + align - 1) & ~(align - 1)
        self.len = npages * PAGE


def unmapped_va() -> int:
    """An address with nothing mapped at it (a page mmapped then munmapped)."""
    p = libc.mmap(None, 4 * PAGE, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert libc.munmap(ctypes.c_void_p(p), 4 * PAGE) == 0
    return p


def model_iopt(fd, ioas):
    """The model's IoPagetable behind `ioas`, or None on a real kernel."""
    f = getattr(fd, "_f", fd)
    ictx = getattr(f, "ictx", None)
    if ictx is None:
        return None
    obj = ictx.objects.objects.get(ioas)
    return obj.iopt if obj is not None else None


def snapshot(fd, ioas, probes=(), auto_probe=(0x40000000, PAGE)):
    """What is observable about `ioas`, by ioctls that are undone before returning:
    IOVA_RANGES; for each (iova, length) in `probes` the errno of copying exactly that range
    out (0: areas cover it back to back) and of a FIXED map over it (EEXIST: something is there);
    the IOVA an automatic map of `auto_probe` (user_va, length) gets, or its errno.
    On the model, the model's table is added."""
    state = [iova_ranges(fd, ioas)]
    scratch = ioas_alloc(fd)
    try:
        for iova, length in probes:
            e = err(copy, fd, scratch, ioas, iova, length)
            if e == 0:
                unmap(fd, scratch, 0, U64)
            try:
                map_(fd, ioas, 0x10000000, length, iova=iova)
                unmap(fd, ioas, iova, length)
                e2 = 0
            except OSError as ex:
                e2 = ex.errno
            state.append((iova, length, e, e2))
        try:
            got = map_(fd, ioas, *auto_probe)
            unmap(fd, ioas, got, auto_probe[1])
        except OSError as ex:
            got = -ex.errno
        state.append(got)
    finally:
        destroy(fd, scratch)
    iopt = model_iopt(fd, ioas)
    if iopt is not None:
        state.append(iopt.snapshot())
    return state


def run_test_cmd(fd, op, id, **fields):
    """IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST): the model skips it while it is not modelled."""
    cmd = set_fields(B.iommu_test_cmd(size=sz(B.iommu_test_cmd), op=op, id=id), **fields)
    fd.ioctl(B.IOMMU_TEST_CMD, cmd)
    return cmd


def add_reserved(fd, ioas, start, length) -> None:
    run_test_cmd(fd, B.IOMMU_TEST_OP_ADD_RESERVED, ioas, **{"add_reserved.start": start, "add_reserved.length": length})


def mock_domain(fd, ioas) -> tuple[int, int]:
    """A mock device attached to `ioas`: (stdev_id, hwpt_id)."""
    cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)
    return cmd.mock_domain.out_stdev_id, cmd.mock_domain.out_hwpt_id


def vm_pin_kb() -> int:
    """mm->pinned_vm of this process, from /proc/self/status (VmPin)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPin:"):
                return int(line.split()[1])
    pytest.skip("no VmPin in /proc/self/status")
