"""Differential exploration: hypothesis drives the same random ioctl sequence into the model and
a real /dev/iommu (or a second model context) and compares every errno and output byte at each
step, checking the model's invariants after each. A failure is shrunk and printed as a replayable
program of rule calls (`state = ModelVsKernel(); state.ioas_alloc(); ...`).

conformance/tests/test_differential.py runs it in the suite; `iommufd-conformance explore` runs
campaigns of it (`python3 -m conformance.explore` is one worker).
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import inspect
import errno
import json
import mmap
import os
import sys
import termios
import time
from pathlib import Path

from hypothesis import settings, strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple,
                                 precondition, rule, run_state_machine_as_test)

from model import vfs
from model.limits import PAGE_SIZE, U64_MAX
from model.uapi import T as B

from conformance.targets import KernelFile
from model import open_iommufd

PAGE = PAGE_SIZE
U64 = U64_MAX
# One user buffer both sides map from (same process, same addresses).
# Followed by a PROT_NONE guard page: a call that writes far past a pointer into it (GET_HW_INFO
# clears data_len bytes, up to 4 GiB) faults there, on both sides, instead of overwriting
# whatever this process mapped next. A reproducer's mem has the same guard.
_MEM = mmap.mmap(-1, 65 * PAGE)  # MAP_SHARED | MAP_ANONYMOUS
MEM = ctypes.addressof(ctypes.c_char.from_buffer(_MEM))
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
if _libc.mprotect(MEM + 64 * PAGE, PAGE, 0) != 0:  # PROT_NONE
    raise OSError(ctypes.get_errno(), "mprotect of the guard page")
MEM_LEN = 64 * PAGE
MEMFD = os.memfd_create("iommufd-differential")
MEMFD_LEN = 32 * PAGE
os.ftruncate(MEMFD, MEMFD_LEN)
_MEMFD_PAGES = mmap.mmap(MEMFD, MEMFD_LEN)  # what the model wrote there, compared with the guest's (OTHER "vm")
CLOSED_FD = 1000  # a number that names no open file, here and in a reproducer (below RLIMIT_NOFILE's 1024)
# IOVAs and lengths near the interesting edges: page multiples, odd bytes, the 2 MiB THP cap.
IOVAS = st.sampled_from([0, PAGE, 3 * PAGE, 1 << 20, (1 << 20) + PAGE, 1 << 21, (1 << 21) + 100, 1 << 32,
                        1 << 24, (1 << 24) + PAGE])  # 1 << 24: where the mock domain aperture starts
LENGTHS = st.sampled_from([PAGE, 2 * PAGE, 3 * PAGE, 16 * PAGE, 100, 0, 1 << 21])
USER_OFFSETS = st.sampled_from([0, PAGE, 5 * PAGE, 100, 8 * PAGE + 7])
# Every IOCTL row but IOMMU_TEST_CMD (its union by op has rules of its own) and the two that
# answer a new descriptor (each side's own number: the veventq rule compares the rest).
RAW_ROWS = [r for r in B.IOCTLS
            if r.struct and r.name not in ("IOMMU_TEST_CMD", "IOMMU_FAULT_QUEUE_ALLOC", "IOMMU_VEVENTQ_ALLOC")]
WORDS = st.sampled_from([0, 0, 1, 2, 3, PAGE, 0xFFFFFFFF, 0x80000000, 1 << 16])
# Pointers a generated command carries: NULL, the first page, MEM and inside it, the guard page
# and a struct straddling into it.
POINTERS = st.sampled_from([0, 8, MEM, MEM + PAGE, MEM + MEM_LEN, MEM + MEM_LEN - 8])


@functools.lru_cache(maxsize=None)
def _edges(size: int):
    """An integer field's edge values for its width: 0, 1, each power of two, all ones, and the
    page-size-like values a length or an IOVA meets (PAGE +- 1, 2 MiB)."""
    top = (1 << (8 * size)) - 1
    values = [0, 1, top, PAGE - 1, PAGE, PAGE + 1, 1 << 21] + [1 << k for k in range(8 * size)]
    return st.sampled_from(sorted({v & top for v in values}))


@functools.lru_cache(maxsize=None)
def _scalar_slots(ctype) -> tuple[tuple[int, int], ...]:
    """(offset, size) of every integer field of a struct past its size word, unions and nested
    structs flattened (their members overlap: the last drawn wins, as a caller's bytes would)."""
    out = []

    def walk(t, base):
        for f in t._fields_:
            name, ft = f[0], f[1]
            off = base + getattr(t, name).offset
            if isinstance(ft, type) and issubclass(ft, (ctypes.Structure, ctypes.Union)):
                walk(ft, off)
            elif isinstance(ft, type) and issubclass(ft, ctypes.Array):
                continue
            elif ctypes.sizeof(ft) in (1, 2, 4, 8) and off >= 4 and len(f) == 2:
                out.append((off, ctypes.sizeof(ft)))

    walk(ctype, 0)
    return tuple(out)
def _generated_command(row, data) -> bytes:
    """A command for IOCTL row `row`, generated from the row's specs: every integer field at the
    edges of its type (0, 1, each power of two, all ones, page-size-like values), IDs that may
    exist (any type), pointers into MEM, unmapped, or at the guard page, flags from the enum or
    not, reserved mostly zero, sizes around min_size and the struct (a zero or a nonzero tail)."""
    buf = bytearray(row.size)

    def put(off, size, value):
        buf[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    for off, size in _scalar_slots(getattr(B, row.struct)):
        put(off, size, data.draw(_edges(size)))
    for spec in row.ids:
        put(spec.offset, spec.size, data.draw(st.integers(0, 12)))
    for name, _type in getattr(B, row.struct)._fields_:
        if name == "fd":  # a descriptor both sides (and a reproducer) name the same way
            off = getattr(B, row.struct).fd.offset
            buf[off:off + 4] = data.draw(st.sampled_from([MEMFD, CLOSED_FD, -1])).to_bytes(4, "little", signed=True)
    for spec in row.pointers:
        put(spec.offset, spec.size, data.draw(POINTERS))
    for spec in row.flags:
        put(spec.offset, spec.size, data.draw(st.sampled_from(
            [0, spec.mask, spec.mask & -spec.mask, 1 << (8 * spec.size - 1)])))
    for spec in row.reserved:
        put(spec.offset, spec.size, data.draw(st.sampled_from([0, 0, 0, 1])))
    size = data.draw(st.sampled_from([row.size, row.size, row.size, row.min_size, row.min_size - 1,
                                      row.size + 8, 0]))
    buf[0:4] = size.to_bytes(4, "little")
    buf = buf.ljust(max(size, row.size), b"\0")
    if size > row.size and data.draw(st.booleans()):
        buf[size - 1] = 1  # a nonzero tail: E2BIG before the handler
    return bytes(buf)


# IOMMU_TEST_CMD's ops for raw_test_cmd, from the bindings, less those whose answer is not the
# same on both sides by design: a descriptor answered (each side's own number), a descriptor as
# the ID (the two sides' descriptor tables differ), the global memory limit (it outlives the
# example, and hypothesis's examples must be independent).
TEST_OPS_KEPT_OUT = ("CREATE_ACCESS", "DMABUF_GET", "DMABUF_REVOKE", "ACCESS_PAGES", "ACCESS_RW",
                     "DESTROY_ACCESS_PAGES", "ACCESS_REPLACE_IOAS", "SET_TEMP_MEMORY_LIMIT")
TEST_OPS = sorted(v for n, v in vars(B).items() if n.startswith("IOMMU_TEST_OP_")
                  and n.removeprefix("IOMMU_TEST_OP_") not in TEST_OPS_KEPT_OUT)
# do_vfs_ioctl()'s commands (fs/ioctl.c) as model/vfs.py names them, and FIONREAD, which goes to
# the driver for a character device
VFS_IOCTLS = (vfs.FIOCLEX, vfs.FIONCLEX, vfs.FIONBIO, vfs.FIOASYNC, vfs.FIOQSIZE, termios.FIONREAD)
MAP_FLAGS = st.sampled_from([
    B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE,
    B.IOMMU_IOAS_MAP_READABLE, B.IOMMU_IOAS_MAP_WRITEABLE, 0,
])

class _GetInfo(ctypes.Structure):
    """VFIO_IOMMU_GET_INFO's struct with room for the capability chain after it (written as
    bytes in a reproducer)."""
    _fields_ = [("info", B.vfio_iommu_type1_info), ("room", ctypes.c_uint8 * 40)]


class _Int(ctypes.Structure):
    """An int argument of a VFS ioctl (written as bytes in a reproducer)."""
    _fields_ = [("value", ctypes.c_int)]


class _ViommuData(ctypes.Structure):
    """The selftest vIOMMU's data with room after it (written as bytes in a reproducer)."""
    _fields_ = [("data", B.iommu_viommu_selftest), ("room", ctypes.c_uint8 * 16)]


def _call(fd, request, struct):
    """(errno or 0, the struct's bytes afterwards) for one ioctl."""
    try:
        rc = fd.ioctl(request, struct)
    except OSError as e:
        return e.errno, bytes(struct)
    return (0 if rc == 0 else ("rc", rc)), bytes(struct)


_KMSG = []


def _kernel_log():
    """One /dev/kmsg watcher per process (conformance/kmsg.py), moved past what is logged so far."""
    from conformance.kmsg import KernelLog

    if not _KMSG:
        _KMSG.append(KernelLog())
    _KMSG[0].new_reports()
    return _KMSG[0]


def user_memory() -> list:
    """MEM and the memfd's pages as conformance/executor mirrors them in the guest."""
    from conformance.executor import Region

    return [Region(MEM, MEM_LEN), Region(ctypes.addressof(ctypes.c_char.from_buffer(_MEMFD_PAGES)), MEMFD_LEN)]


_NOT_SENT = "not sent"  # a step the model does not model, so the kernel is not asked


def _call_unless_not_modelled(fd, request, struct):
    """_call(), or (_NOT_SENT, b"") where the model raises NotModelled."""
    from model.errors import NotModelled

    try:
        rc = fd.ioctl(request, struct)
    except NotModelled:
        return _NOT_SENT, b""
    except OSError as e:
        return e.errno, bytes(struct)
    return (0 if rc == 0 else ("rc", rc)), bytes(struct)


def _submit(fd, request, struct):
    """Start one call; a function answering _call()'s (errno, bytes). The guest's executor runs it
    while the caller answers the model's side; a local file runs it when asked."""
    if not hasattr(fd, "submit"):
        return lambda: _call(fd, request, struct)
    answer = fd.submit(request, struct)

    def finish():
        try:
            rc = answer()
        except OSError as e:
            return e.errno, bytes(struct)
        return (0 if rc == 0 else ("rc", rc)), bytes(struct)

    return finish


def _read_nonblocking(fd: int, count: int) -> bytes:
    os.set_blocking(fd, False)
    return os.read(fd, count)


class ModelVsKernel(RuleBasedStateMachine):
    """The model against OTHER: "kernel" (a real /dev/iommu in this process), "vm" (the test
    kernel in a guest, its steps made by conformance/executor: CHANNEL) or "model" (a second,
    independent model context: the model must be deterministic and its contexts independent).
    After every step the model's own invariants are checked, and STEPS counts the steps run."""

    ioas = Bundle("ioas")
    OTHER = "kernel"
    STEPS = 0
    LAST = None  # the Recorder of the latest example: after a failure, the shrunk one's
    KEEP = None  # a list to collect every example's Recorder in (conformance/repro.py's tests)
    CHANNEL = None  # OTHER "vm": the executor's conformance.executor.Channel
    PROFILE = None  # OTHER "vm" on a machine with devices: the profile the model plays (model:vtd)
    VFIO_DEVICES: tuple[str, ...] = ()  # their PCI addresses, the same in the guest
    SILENT_FAULTS = False  # the VM's IOMMU logs no report of a blocked DMA (QEMU's amd-iommu)

    def __init__(self):
        super().__init__()
        from conformance.repro import Recorder

        self.rec = Recorder(self, MEM, MEM_LEN, MEMFD, MEMFD_LEN,
                            queries=("same_object_ids_answer",))
        type(self).LAST = self.rec
        if self.KEEP is not None:
            self.KEEP.append(self.rec)
        # every example starts from zeroed user memory, on both sides: what an earlier example
        # wrote is state hypothesis cannot see, and a replay must meet what the original met
        ctypes.memset(MEM, 0, MEM_LEN)
        _MEMFD_PAGES[:] = bytes(MEMFD_LEN)
        self.model = self.rec.wrap(open_iommufd())
        if self.OTHER == "vm":
            from conformance.executor import ExecutorFile

            self.kernel = ExecutorFile(self.CHANNEL, self.rec.buffers)
        else:
            self.kernel = KernelFile() if self.OTHER == "kernel" else open_iommufd()
        self.live_mappings = []
        self.kmsg = {"kernel": _kernel_log, "vm": lambda: self.kernel}.get(self.OTHER, lambda: None)()
        self.vfio = []  # (model device, kernel device) per device of the profile
        if self.PROFILE and self.OTHER == "vm":
            self._open_vfio()

    def teardown(self):
        self.rec.active = False
        for m in self.live_mappings:
            m.munmap()  # once: a consumed mapping is already gone
        for pair in self.vfio:
            for dev in pair:
                dev.close()  # unbinds: the next example finds the machine's devices free
        self.model.close()
        self.kernel.close()

    @invariant()
    def no_kernel_report(self):
        """A kernel report (WARNING, BUG, oops, KASAN) logged during the step fails it."""
        reports = self.kmsg.new_reports() if self.kmsg is not None else []
        assert not reports, "kernel report during this step:\n" + "\n".join(reports)

    @invariant()
    def same_user_memory(self):
        """What the kernel wrote into user memory (MEM, the memfd's pages) is what the model
        wrote. In one process both sides share the memory; a guest's is its own."""
        if self.OTHER == "vm":
            differences = self.CHANNEL.memory_differences()
            assert not differences, "user memory differs: " + "; ".join(differences[:4])

    def read_fd(self, side: int, fd: int, count: int = 4096) -> bytes:
        """A non-blocking read() of a descriptor side 0 (the model) or 1 (the kernel) handed out."""
        return self.kernel.read_fd(fd, count) if side and self.OTHER == "vm" else _read_nonblocking(fd, count)

    def close_fd(self, side: int, fd: int) -> None:
        if side and self.OTHER == "vm":
            self.kernel.close_fd(fd)
        else:
            os.close(fd)

    @invariant()
    def model_is_consistent(self):
        type(self).STEPS += 1
        self.model.ictx.check_invariants()
        if self.OTHER == "model":
            self.kernel.ictx.check_invariants()

    def both(self, request, make):
        """Run the same command (a fresh struct per side) on both; they must agree."""
        m, k = make(), make()
        kernel = _submit(self.kernel, request, k)
        rm = _call(self.model, request, m)
        rk = kernel()
        if rm != rk:
            from conformance.repro import fields_text

            raise AssertionError(f"model {rm[0]} {fields_text(m)} != kernel {rk[0]} {fields_text(k)}")
        return rm[0], m

    @rule(target=ioas)
    def ioas_alloc(self):
        err, cmd = self.both(B.IOMMU_IOAS_ALLOC, lambda: B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc)))
        assert err == 0
        return cmd.out_ioas_id

    @rule(id=st.one_of(consumes(ioas), st.integers(0, 8)))
    def destroy(self, id):
        self.both(B.IOMMU_DESTROY, lambda: B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=id))

    @rule(id=st.one_of(ioas, st.integers(0, 8)), num=st.integers(0, 3))
    def iova_ranges(self, id, num):
        out = {}
        for side, fd in (("model", self.model), ("kernel", self.kernel)):
            ranges = (B.iommu_iova_range * 3)()
            addr = self.rec.buffer(ranges, "ranges")
            cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id,
                                           num_iovas=num, allowed_iovas=addr)
            err, raw = _call(fd, B.IOMMU_IOAS_IOVA_RANGES, cmd)
            # allowed_iovas is each side's own address: compare the rest, and what landed there.
            out[side] = (err, raw[:16] + raw[24:], bytes(ranges))
        assert out["model"] == out["kernel"]

    @rule(id=st.one_of(ioas, st.integers(0, 8)), op=st.integers(0, 2), val=st.integers(0, 2))
    def huge_pages(self, id, op, val):
        self.both(B.IOMMU_OPTION, lambda: B.iommu_option(
            size=ctypes.sizeof(B.iommu_option), option_id=B.IOMMU_OPTION_HUGE_PAGES, op=op, object_id=id, val64=val))

    @rule(op=st.integers(0, 3), id=st.one_of(ioas, st.integers(0, 8)))
    def vfio_ioas(self, op, id):
        self.both(B.IOMMU_VFIO_IOAS, lambda: B.iommu_vfio_ioas(size=ctypes.sizeof(B.iommu_vfio_ioas), op=op, ioas_id=id))

    @rule(ext=st.sampled_from([B.VFIO_TYPE1_IOMMU, B.VFIO_TYPE1v2_IOMMU, B.VFIO_DMA_CC_IOMMU, B.VFIO_NOIOMMU_IOMMU]))
    def vfio_set_iommu_and_check(self, ext):
        for request in (B.VFIO_SET_IOMMU, B.VFIO_CHECK_EXTENSION):
            out = []
            for fd in (self.model, self.kernel):
                try:
                    out.append(fd.ioctl(request, ext))
                except OSError as e:
                    out.append(-e.errno)
            assert out[0] == out[1], f"request {request:#x}({ext}): model {out[0]} != kernel {out[1]}"

    mapped = Bundle("mapped")  # IOVAs a map answered: where the access and copy rules find pages

    @rule(target=mapped, id=st.one_of(ioas, st.integers(0, 4)), fixed=st.booleans(), iova=IOVAS, off=USER_OFFSETS,
          length=LENGTHS, flags=MAP_FLAGS)
    def map(self, id, fixed, iova, off, length, flags):
        flags |= B.IOMMU_IOAS_MAP_FIXED_IOVA if fixed else 0
        err, cmd = self.both(B.IOMMU_IOAS_MAP, lambda: B.iommu_ioas_map(
            size=ctypes.sizeof(B.iommu_ioas_map), flags=flags, ioas_id=id, user_va=MEM + off,
            length=length, iova=iova if fixed else 0))
        return multiple() if err else cmd.iova

    @rule(id=st.one_of(ioas, st.integers(0, 4)), iova=IOVAS, length=st.one_of(LENGTHS, st.just(U64)),
          all_=st.booleans())
    def unmap(self, id, iova, length, all_):
        iova, length = (0, U64) if all_ else (iova, length)
        self.both(B.IOMMU_IOAS_UNMAP, lambda: B.iommu_ioas_unmap(
            size=ctypes.sizeof(B.iommu_ioas_unmap), ioas_id=id, iova=iova, length=length))

    @rule(dst=ioas, src=ioas, src_iova=IOVAS, dst_iova=IOVAS, length=LENGTHS, fixed=st.booleans(),
          flags=MAP_FLAGS)
    def copy(self, dst, src, src_iova, dst_iova, length, fixed, flags):
        flags |= B.IOMMU_IOAS_MAP_FIXED_IOVA if fixed else 0
        self.both(B.IOMMU_IOAS_COPY, lambda: B.iommu_ioas_copy(
            size=ctypes.sizeof(B.iommu_ioas_copy), flags=flags, dst_ioas_id=dst, src_ioas_id=src,
            length=length, dst_iova=dst_iova if fixed else 0, src_iova=src_iova))

    @rule(id=ioas, ranges=st.lists(st.tuples(IOVAS, LENGTHS), max_size=3))
    def allow_iovas(self, id, ranges):
        arr = (B.iommu_iova_range * max(1, len(ranges)))()
        for i, (start, length) in enumerate(ranges):
            arr[i].start, arr[i].last = start, (start + length - 1) & U64
        self.both(B.IOMMU_IOAS_ALLOW_IOVAS, lambda: B.iommu_ioas_allow_iovas(
            size=ctypes.sizeof(B.iommu_ioas_allow_iovas), ioas_id=id, num_iovas=len(ranges),
            allowed_iovas=self.rec.buffer(arr, "allowed")))

    @rule(iova=IOVAS, off=USER_OFFSETS, length=LENGTHS, unmap=st.booleans(), flags=st.integers(0, 3))
    def vfio_dma(self, iova, off, length, unmap, flags):
        if unmap:
            request = B.VFIO_IOMMU_UNMAP_DMA
            make = lambda: B.vfio_iommu_type1_dma_unmap(  # noqa: E731
                argsz=ctypes.sizeof(B.vfio_iommu_type1_dma_unmap), flags=flags & 1, iova=iova, size=length)
        else:
            request = B.VFIO_IOMMU_MAP_DMA
            make = lambda: B.vfio_iommu_type1_dma_map(  # noqa: E731
                argsz=ctypes.sizeof(B.vfio_iommu_type1_dma_map), flags=flags, vaddr=MEM + off, iova=iova,
                size=length)
        self.both(request, make)

    @rule(op=st.integers(0, 2), val=st.integers(0, 2), object_id=st.sampled_from([0, 0, 1]))
    def rlimit_mode(self, op, val, object_id):
        self.both(B.IOMMU_OPTION, lambda: B.iommu_option(
            size=ctypes.sizeof(B.iommu_option), option_id=B.IOMMU_OPTION_RLIMIT_MODE, op=op,
            object_id=object_id, val64=val))

    @rule(target=mapped, id=st.one_of(ioas, st.integers(0, 4)), fixed=st.booleans(), iova=IOVAS,
          start=st.sampled_from([0, PAGE, 100, 64 * PAGE]), length=LENGTHS, flags=MAP_FLAGS,
          fd=st.sampled_from(["memfd", "memfd", "closed", -1]))
    def map_file(self, id, fixed, iova, start, length, flags, fd):
        fd = {"memfd": MEMFD, "closed": CLOSED_FD}.get(fd, fd)
        flags |= B.IOMMU_IOAS_MAP_FIXED_IOVA if fixed else 0
        err, cmd = self.both(B.IOMMU_IOAS_MAP_FILE, lambda: B.iommu_ioas_map_file(
            size=ctypes.sizeof(B.iommu_ioas_map_file), flags=flags, ioas_id=id, fd=fd, start=start,
            length=length, iova=iova if fixed else 0))
        return multiple() if err else cmd.iova

    @rule(argsz=st.sampled_from([0, 8, 16, 24, 64]))
    def vfio_get_info(self, argsz):
        """VFIO_IOMMU_GET_INFO on the compat IOAS: flags, iova_pgsizes (every attached domain's
        page sizes ANDed in, iommufd_get_pagesizes()) and the capability chain, byte for byte."""
        out = []
        for side, fd in (("model", self.model), ("kernel", self.kernel)):
            buf = _GetInfo()
            buf.info.argsz = argsz
            try:
                fd.ioctl(B.VFIO_IOMMU_GET_INFO, buf)
                err = 0
            except OSError as e:
                err = e.errno
            # cap_offset is relative to the struct: the bytes compare as they are
            out.append((err, bytes(buf)))
        assert out[0] == out[1], f"VFIO_IOMMU_GET_INFO argsz {argsz}: model {out[0]} != kernel {out[1]}"

    # -- in-kernel accesses (the selftest's access objects): pin and copy through an IOAS --

    accesses = Bundle("accesses")  # (model access fd, kernel access fd)

    @rule(target=accesses, id=ioas, pin=st.booleans())
    def create_access(self, id, pin):
        out = []
        for fd in (self.model, self.kernel):
            cmd = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_CREATE_ACCESS, id=id)
            cmd.create_access.flags = B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES if pin else 0
            err, _ = _call(fd, B.IOMMU_TEST_CMD, cmd)
            out.append((err, cmd.create_access.out_access_fd if not err else -1))
        assert out[0][0] == out[1][0], f"CREATE_ACCESS: model {out[0][0]} != kernel {out[1][0]}"
        return out[0][1], out[1][1]

    @rule(access=accesses, iova=st.one_of(mapped, mapped.map(lambda v: v + 100), IOVAS),
          length=st.sampled_from([1, 8, 100, PAGE, 2 * PAGE + 3]),
          write=st.booleans(), slow=st.booleans(), off=USER_OFFSETS)
    def access_rw(self, access, iova, length, write, slow, off):
        """IOMMU_TEST_OP_ACCESS_RW over whatever is mapped at iova (user pages, a memfd's pages
        through MAP_FILE, a domain's or not): errno and the bytes moved must agree."""
        flags = (B.MOCK_ACCESS_RW_WRITE if write else 0) | (B.MOCK_ACCESS_RW_SLOW_PATH if slow else 0)
        out = []
        for afd, fd in zip(access, (self.model, self.kernel)):
            if afd < 0:
                return
            data = (ctypes.c_uint8 * length)(*[(i * 7 + off) & 0xFF for i in range(length)])
            cmd = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_ACCESS_RW, id=afd)
            cmd.access_rw.iova, cmd.access_rw.length, cmd.access_rw.flags = iova, length, flags
            cmd.access_rw.uptr = self.rec.buffer(data, "rw")
            err, _ = _call(fd, B.IOMMU_TEST_CMD, cmd)
            out.append((err, bytes(data)))
        assert out[0] == out[1], f"ACCESS_RW iova {iova:#x} length {length} flags {flags:#x}: " \
                                 f"model {out[0][0]} != kernel {out[1][0]}"

    @rule(access=consumes(accesses))
    def access_close(self, access):
        self.rec.close(access[0])
        for side, afd in enumerate(access):
            if afd >= 0:
                self.close_fd(side, afd)

    # -- mock devices and the vIOMMU family (CONFIG_IOMMUFD_TEST's mock driver on both sides) --

    devices = Bundle("devices")  # (stdev_id, idev_id)
    parents = Bundle("parents")  # (NEST_PARENT hwpt_id, idev_id)
    viommus = Bundle("viommus")
    nested = Bundle("nested")
    veventqs = Bundle("veventqs")  # (veventq_id, model fd, kernel fd)

    def test_cmd(self, op, id, **fields):
        from model.uapi import set_fields

        return self.both(B.IOMMU_TEST_CMD, lambda: set_fields(
            B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=op, id=id), **fields))

    @initialize(target=viommus)
    def setup_viommu(self):
        """Every run starts with a mock device on an IOAS, a NEST_PARENT HWPT and a selftest
        vIOMMU with its MMIO region (IDs 1-6), so the vIOMMU rules have something to work on."""
        self.base = None
        err, cmd = self.both(B.IOMMU_IOAS_ALLOC, lambda: B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc)))
        dev = self.mock_device(cmd.out_ioas_id, 0)
        parent = self.nest_parent(dev, cmd.out_ioas_id, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.base, self.base_ioas = dev, cmd.out_ioas_id
        return self.viommu_alloc(parent, dev, True, 24)

    def dev(self, d):
        return self.base if d is None else d

    @rule(target=devices, pt=ioas, dev_flags=st.sampled_from([0, 0, 1, 2]))
    def mock_device(self, pt, dev_flags):
        err, cmd = self.test_cmd(B.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, **{"mock_domain_flags.dev_flags": dev_flags})
        return (cmd.mock_domain.out_stdev_id, cmd.mock_domain.out_idev_id) if not err else (0, 0)

    @rule(dev=st.one_of(devices, st.none()), pt=st.one_of(ioas, nested, st.integers(0, 12)))
    def mock_domain_replace(self, dev, pt):
        """A mock device's domain replaced. Onto another driver's domain (a VFIO device's HWPT)
        the model says not modelled and the kernel is not asked (model/device.py _domain_attach())."""
        from model.uapi import set_fields

        dev = self.dev(dev)

        def make():
            return set_fields(B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
                                               id=dev[0]), **{"mock_domain_replace.pt_id": pt})
        m, k = make(), make()
        rm = _call_unless_not_modelled(self.model, B.IOMMU_TEST_CMD, m)
        if rm[0] == _NOT_SENT:
            return
        rk = _call(self.kernel, B.IOMMU_TEST_CMD, k)
        assert rm == rk, f"MOCK_DOMAIN_REPLACE of {dev} to {pt}: model {rm[0]} != kernel {rk[0]}"

    @rule(target=parents, dev=devices, pt=ioas, flags=st.sampled_from([B.IOMMU_HWPT_ALLOC_NEST_PARENT] * 3 + [0]))
    def nest_parent(self, dev, pt, flags):
        err, cmd = self.both(B.IOMMU_HWPT_ALLOC, lambda: B.iommu_hwpt_alloc(
            size=ctypes.sizeof(B.iommu_hwpt_alloc), flags=flags, dev_id=dev[1], pt_id=pt))
        return (cmd.out_hwpt_id if not err else 0), dev[1]

    @rule(target=viommus, parent=parents, dev=st.one_of(devices, st.just((0, 0))), data=st.booleans(),
          data_len=st.sampled_from([24, 24, 8, 4, 32]))
    def viommu_alloc(self, parent, dev, data, data_len):
        # room past the struct for data_len up to 32: the kernel reads (copy_struct_from_user()
        # wants zeros) and clears (copy_struct_to_user()) bytes past what it knows, so they
        # must be the argument's own, here and in a reproducer
        sel = _ViommuData()
        sel.data.in_data = 0x1234
        err, cmd = self.both(B.IOMMU_VIOMMU_ALLOC, lambda: B.iommu_viommu_alloc(
            size=ctypes.sizeof(B.iommu_viommu_alloc), type=B.IOMMU_VIOMMU_TYPE_SELFTEST,
            dev_id=dev[1] or parent[1], hwpt_id=parent[0], data_uptr=self.rec.buffer(sel, "data") if data else 0,
            data_len=data_len if data else 0))
        return cmd.out_viommu_id if not err else 0

    @rule(viommu=viommus, dev=st.one_of(devices, st.none()), virt_id=st.sampled_from([0, 1, 2, 0x99, U64]))
    def vdevice_alloc(self, viommu, dev, virt_id):
        dev = self.dev(dev)
        self.both(B.IOMMU_VDEVICE_ALLOC, lambda: B.iommu_vdevice_alloc(
            size=ctypes.sizeof(B.iommu_vdevice_alloc), viommu_id=viommu, dev_id=dev[1], virt_id=virt_id))

    @rule(target=nested, dev=st.one_of(devices, st.none()), viommu=st.one_of(viommus, parents.map(lambda p: p[0])))
    def nested_alloc(self, dev, viommu):
        dev = self.dev(dev)
        data = B.iommu_hwpt_selftest(iotlb=B.IOMMU_TEST_IOTLB_DEFAULT)
        err, cmd = self.both(B.IOMMU_HWPT_ALLOC, lambda: B.iommu_hwpt_alloc(
            size=ctypes.sizeof(B.iommu_hwpt_alloc), dev_id=dev[1], pt_id=viommu, data_type=0xDEAD,
            data_len=ctypes.sizeof(data), data_uptr=self.rec.buffer(data, "data")))
        return cmd.out_hwpt_id if not err else 0

    @rule(target=veventqs, viommu=viommus, depth=st.sampled_from([1, 2, 3, 0]))
    def veventq_alloc(self, viommu, depth):
        out = []
        for fd in (self.model, self.kernel):
            cmd = B.iommu_veventq_alloc(size=ctypes.sizeof(B.iommu_veventq_alloc), viommu_id=viommu,
                                        type=B.IOMMU_VEVENTQ_TYPE_SELFTEST, veventq_depth=depth)
            err, _ = _call(fd, B.IOMMU_VEVENTQ_ALLOC, cmd)
            out.append((err, cmd.out_veventq_id, cmd.out_veventq_fd if not err else -1))
        (em, idm, fdm), (ek, idk, fdk) = out
        assert (em, idm) == (ek, idk), f"VEVENTQ_ALLOC: model {em} id {idm} != kernel {ek} id {idk}"
        return idm, fdm, fdk

    @rule(q=veventqs)
    def veventq_read(self, q):
        _, fdm, fdk = q
        if fdm < 0:
            return
        got = []
        for side, fd in enumerate((fdm, fdk)):
            try:
                got.append(self.read_fd(side, fd))
            except BlockingIOError:
                got.append(b"")  # the model's socket end when empty; the kernel's read answers 0
            except OSError as e:
                got.append(e.errno)
        self.rec.read(fdm, got[0])
        assert got[0] == got[1], f"vEVENTQ read: model {got[0]!r} != kernel {got[1]!r}"

    @rule(q=consumes(veventqs))
    def veventq_close(self, q):
        self.rec.close(q[1])
        for side, fd in enumerate(q[1:]):
            if fd >= 0:
                self.close_fd(side, fd)

    @rule(dev=st.one_of(devices, st.none(), st.just((0, 0))))
    def trigger_vevent(self, dev):
        dev = self.dev(dev)
        self.test_cmd(B.IOMMU_TEST_OP_TRIGGER_VEVENT, 0, **{"trigger_vevent.dev_id": dev[1]})

    @rule(viommu=viommus, index=st.integers(0, 2), iova=st.one_of(mapped, IOVAS, st.just((1 << 24) + 64)),
          length=LENGTHS)
    def hw_queue_alloc(self, viommu, index, iova, length):
        self.both(B.IOMMU_HW_QUEUE_ALLOC, lambda: B.iommu_hw_queue_alloc(
            size=ctypes.sizeof(B.iommu_hw_queue_alloc), viommu_id=viommu, type=B.IOMMU_HW_QUEUE_TYPE_SELFTEST,
            index=index, nesting_parent_iova=iova, length=length))

    @rule(target=mapped, viommu=viommus, off=st.integers(0, 15), pages=st.integers(1, 4), index=st.integers(0, 1),
          iova=st.sampled_from([1 << 24, (1 << 24) + 16 * PAGE]))
    def hw_queue_on_mapping(self, viommu, off, pages, index, iova):
        """Map pages of MEM into the set-up's IOAS (the nesting parent's: the mock device pins
        them at once) and allocate a HW queue over them: the queue's pages must be physically
        contiguous (iommufd_hw_queue_alloc_phys(), viommu.c:344), which the guest's own frames
        decide on the kernel's side (model/memory.py PFN_SOURCE)."""
        err, _ = self.both(B.IOMMU_IOAS_MAP, lambda: B.iommu_ioas_map(
            size=ctypes.sizeof(B.iommu_ioas_map), ioas_id=self.base_ioas, user_va=MEM + off * PAGE,
            length=pages * PAGE, iova=iova,
            flags=B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE | B.IOMMU_IOAS_MAP_FIXED_IOVA))
        self.hw_queue_alloc(viommu, index, iova, pages * PAGE)
        return multiple() if err else iova

    @rule(viommu=st.one_of(viommus, nested), virt_id=st.sampled_from([0, 1, 0x99]), cache_id=st.integers(0, 4),
          flags=st.sampled_from([0, 1, 2]), n=st.integers(0, 2))
    def invalidate(self, viommu, virt_id, cache_id, flags, n):
        entries = (B.iommu_viommu_invalidate_selftest * 2)()
        for e in entries:
            e.flags, e.vdev_id, e.cache_id = flags, virt_id, cache_id
        self.both(B.IOMMU_HWPT_INVALIDATE, lambda: B.iommu_hwpt_invalidate(
            size=ctypes.sizeof(B.iommu_hwpt_invalidate), hwpt_id=viommu, data_uptr=self.rec.buffer(entries, "entries"),
            data_type=B.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, entry_len=ctypes.sizeof(entries[0]), entry_num=n))

    @rule(dev=st.one_of(devices, st.none()), cache_id=st.integers(0, 3))
    def check_dev_cache(self, dev, cache_id):
        dev = self.dev(dev)
        for value in (0, B.IOMMU_TEST_DEV_CACHE_DEFAULT):
            self.test_cmd(B.IOMMU_TEST_OP_DEV_CHECK_CACHE, dev[1],
                          **{"check_dev_cache.id": cache_id, "check_dev_cache.cache": value})

    @rule(id=st.one_of(devices.map(lambda d: d[0]), viommus, nested, veventqs.map(lambda q: q[0]),
                       st.integers(0, 16)))
    def destroy_any(self, id):
        self.both(B.IOMMU_DESTROY, lambda: B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=id))

    mappings = Bundle("mappings")  # (model Mapping or None, kernel Mapping or None)

    @rule(target=mappings, offset=st.sampled_from([PAGE, PAGE, 3 * PAGE, 5 * PAGE, 0, 2 * PAGE]),
          length=st.sampled_from([2 * PAGE, 2 * PAGE, PAGE, 3 * PAGE, 2 * PAGE - 100]),
          shared=st.booleans(), exec_=st.sampled_from([False, False, False, True]))
    def mmap(self, offset, length, shared, exec_):
        """mmap() of the file at a vIOMMU region's offset (the first vIOMMU's is PAGE_SIZE):
        same errno, and the same first word (the selftest vIOMMU's loopback of in_data)."""
        prot = mmap.PROT_READ | mmap.PROT_WRITE | (mmap.PROT_EXEC if exec_ else 0)
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        out = []
        for fd in (self.model, self.kernel):
            try:
                out.append(fd.mmap(length, prot, flags, offset))
            except OSError as e:
                out.append(e.errno)
        self.live_mappings += [o for o in out if not isinstance(o, int)]
        got = [o if isinstance(o, int) else ("mapped", o.u32(0)) for o in out]
        assert got[0] == got[1], f"mmap({length:#x}, offset {offset:#x}): model {got[0]} != kernel {got[1]}"
        return tuple(None if isinstance(o, int) else o for o in out)

    @rule(m=consumes(mappings))
    def munmap(self, m):
        for mapping in m:
            if mapping is not None:
                mapping.munmap()

    @rule(row=st.sampled_from(RAW_ROWS), data=st.data())
    def raw(self, row, data):
        """Any IOCTL row, its command generated from the row's specs (_generated_command()). A
        new ioctl in a header gets this rule with no new code."""
        self.same_answer(row.name, row.number, _generated_command(row, data))

    @rule(op=st.sampled_from(TEST_OPS), data=st.data())
    def raw_test_cmd(self, op, data):
        """IOMMU_TEST_CMD with every op of the mock driver (but TEST_OPS_KEPT_OUT's), the rest of
        the command generated as `raw` does, the union's members overlapping."""
        cmd = bytearray(_generated_command(B.BY_NAME["IOMMU_TEST_CMD"], data))
        cmd[4:8] = op.to_bytes(4, "little")
        if not self.vfio:
            self.same_answer(f"IOMMU_TEST_CMD op {op}", B.IOMMU_TEST_CMD, bytes(cmd))
            return
        # Beside VFIO devices the model answers first: an op the test driver gets wrong for a
        # device that is not the mock's (TRIGGER_VEVENT, model/selftest) is not sent to the kernel
        rm = _call_unless_not_modelled(self.model, B.IOMMU_TEST_CMD, bytearray(cmd))
        if rm[0] == _NOT_SENT:
            return
        rk = _call(self.kernel, B.IOMMU_TEST_CMD, bytearray(cmd))
        assert rm == rk, f"IOMMU_TEST_CMD op {op} {bytes(cmd).hex()}: model {rm[0]} != kernel {rk[0]}"

    @rule(request=st.sampled_from(VFS_IOCTLS), value=st.sampled_from([0, 1, -1, 2]),
          pointer=st.sampled_from(["int", "int", 0, MEM + MEM_LEN]))
    def vfs_ioctl(self, request, value, pointer):
        """The VFS's own ioctls on /dev/iommu (do_vfs_ioctl(), fs/ioctl.c; model/vfs.py), the
        argument an int or a pointer nothing readable is at."""
        out = []
        for fd in (self.model, self.kernel):
            arg = _Int(value) if pointer == "int" else pointer
            try:
                rc = fd.ioctl(request, arg)
                out.append((0, rc if isinstance(rc, int) else 0, arg.value if pointer == "int" else None))
            except OSError as e:
                out.append((e.errno, None, None))
        assert out[0] == out[1], f"VFS ioctl {request:#x} ({pointer}, {value}): model {out[0]} != kernel {out[1]}"

    # -- VFIO devices: the machine's, on both sides (OTHER "vm" on a profile with devices) --------
    # The model plays the profile the VM's machine was captured as (model/profiles/), its devices
    # opened by PCI address on both sides (model/vfio; the guest's cdev through the executor).

    vbound = Bundle("vbound")  # (device index, dev_id) a bind answered
    vhwpts = Bundle("vhwpts")  # HWPT IDs allocated for a bound device

    def _open_vfio(self) -> None:
        """Both sides' devices for this example (each side's file: pread/pwrite at region offsets
        and ioctl)."""
        from conformance.executor import ExecutorDevice
        from model.vfio import open_device

        for bdf in self.VFIO_DEVICES:
            self.vfio.append((open_device(bdf, self.PROFILE), ExecutorDevice(self.CHANNEL, self.rec.buffers, bdf)))
        self.machine_faults = len(self.machine().faults)

    def machine(self):
        from model.platform import machine

        return machine(self.PROFILE)

    def both_devices(self, which: int, request: int, make, model_first: bool = False):
        """The same device command on both sides' device `which` (make(side) builds each side's
        struct: an iommufd descriptor number differs by side); (model errno, kernel errno, model
        struct, kernel struct). model_first: the model answers first, and a case it does not
        model is not sent (_NOT_SENT: one the test kernel is known not to survive)."""
        m, k = make(0), make(1)
        if model_first:
            rm = _call_unless_not_modelled(self.vfio[which][0], request, m)
            if rm[0] == _NOT_SENT:
                return _NOT_SENT, _NOT_SENT, m, k
            return rm[0], _call(self.vfio[which][1], request, k)[0], m, k
        kernel = _submit(self.vfio[which][1], request, k)
        rm = _call(self.vfio[which][0], request, m)
        rk = kernel()
        return rm[0], rk[0], m, k

    @precondition(lambda self: self.vfio)
    @rule(target=vbound, which=st.integers(0, 1), iommufd=st.sampled_from(["own", "own", "own", -1, "closed", "memfd"]),
          flags=st.sampled_from([0, 0, 0, 1 << 7]), argsz=st.sampled_from([None, None, None, 8]))
    def vfio_bind(self, which, iommufd, flags, argsz):
        """VFIO_DEVICE_BIND_IOMMUFD: the errno and the device ID."""
        files = (self.model, self.kernel)

        def make(side):
            fd = {"own": lambda: files[side].fileno(), "closed": lambda: CLOSED_FD, "memfd": lambda: MEMFD}.get(
                iommufd, lambda: iommufd)()
            return B.vfio_device_bind_iommufd(argsz=argsz or ctypes.sizeof(B.vfio_device_bind_iommufd), flags=flags,
                                              iommufd=fd)
        em, ek, m, k = self.both_devices(which, B.VFIO_DEVICE_BIND_IOMMUFD, make)
        assert (em, m.out_devid) == (ek, k.out_devid), \
            f"bind device {which} ({iommufd}): model {em} devid {m.out_devid} != kernel {ek} devid {k.out_devid}"
        return multiple() if em else (which, m.out_devid)

    @precondition(lambda self: self.vfio)
    @rule(which=st.integers(0, 1), pt=st.one_of(ioas, vhwpts, st.integers(0, 12)),
          pasid=st.sampled_from([None, None, None, 0, 1]))
    def vfio_attach(self, which, pt, pasid):
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS, a HWPT or a number (replace when attached):
        the errno and the pt_id written back (the automatic HWPT's)."""
        def make(side):
            return B.vfio_device_attach_iommufd_pt(
                argsz=ctypes.sizeof(B.vfio_device_attach_iommufd_pt), pt_id=pt,
                flags=0 if pasid is None else B.VFIO_DEVICE_ATTACH_PASID, pasid=pasid or 0)
        em, ek, m, k = self.both_devices(which, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, make, model_first=True)
        if em == _NOT_SENT:
            return
        assert (em, bytes(m)) == (ek, bytes(k)), f"attach device {which} to {pt} (pasid {pasid}): model {em} " \
                                                 f"pt {m.pt_id} != kernel {ek} pt {k.pt_id}"

    @precondition(lambda self: self.vfio)
    @rule(which=st.integers(0, 1), pasid=st.sampled_from([None, None, 0, 1]))
    def vfio_detach(self, which, pasid):
        def make(side):
            return B.vfio_device_detach_iommufd_pt(argsz=ctypes.sizeof(B.vfio_device_detach_iommufd_pt),
                                                   flags=0 if pasid is None else B.VFIO_DEVICE_DETACH_PASID,
                                                   pasid=pasid or 0)
        em, ek, _, _ = self.both_devices(which, B.VFIO_DEVICE_DETACH_IOMMUFD_PT, make)
        assert em == ek, f"detach device {which} (pasid {pasid}): model {em} != kernel {ek}"

    @precondition(lambda self: self.vfio)
    @rule(target=vhwpts, dev=vbound, pt=st.one_of(ioas, st.integers(0, 8)),
          flags=st.sampled_from([0, 0, B.IOMMU_HWPT_ALLOC_NEST_PARENT, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                                 getattr(B, "IOMMU_HWPT_ALLOC_PASID", 0)]))
    def vfio_hwpt_alloc(self, dev, pt, flags):
        """HWPT_ALLOC on the real driver (the model's from the profile's bits)."""
        err, cmd = self.both(B.IOMMU_HWPT_ALLOC, lambda: B.iommu_hwpt_alloc(
            size=ctypes.sizeof(B.iommu_hwpt_alloc), flags=flags, dev_id=dev[1], pt_id=pt))
        return multiple() if err else cmd.out_hwpt_id

    @precondition(lambda self: self.vfio)
    @rule(dev=vbound, data_len=st.sampled_from([0, 8, 24, 64]))
    def vfio_hw_info(self, dev, data_len):
        """GET_HW_INFO of a bound device: the driver's payload (VT-d: cap/ecap) into MEM."""
        self.both(B.IOMMU_GET_HW_INFO, lambda: B.iommu_hw_info(
            size=ctypes.sizeof(B.iommu_hw_info), dev_id=dev[1], data_len=data_len, data_uptr=MEM + 2 * PAGE))

    @precondition(lambda self: self.vfio)
    @rule(which=st.integers(0, 1), index=st.integers(0, 9), argsz=st.sampled_from([None, None, 8, 64]))
    def vfio_region_info(self, which, index, argsz):
        def make(side):
            return B.vfio_region_info(argsz=argsz or ctypes.sizeof(B.vfio_region_info), index=index)
        em, ek, m, k = self.both_devices(which, B.VFIO_DEVICE_GET_REGION_INFO, make)
        assert (em, bytes(m)) == (ek, bytes(k)), f"region {index} of device {which}: model {em} {bytes(m).hex()} " \
                                                 f"!= kernel {ek} {bytes(k).hex()}"

    @precondition(lambda self: self.vfio)
    @rule(which=st.integers(0, 1), off=st.sampled_from([0, 2, 4, 6, 8, 0x10, 0x2c, 0x34, 0x3c, 0x40, 0xfc]),
          n=st.sampled_from([1, 2, 4]))
    def vfio_config_read(self, which, off, n):
        """Config space as vfio-pci virtualizes it (vfio_pci_config.c); EINVAL before a bind."""
        out = []
        for dev in self.vfio[which]:
            try:
                out.append(_RegionIo(dev).config_read(off, n))
            except OSError as e:
                out.append(e.errno)
        assert out[0] == out[1], f"config {off:#x}+{n} of device {which}: model {out[0]} != kernel {out[1]}"

    @precondition(lambda self: self.vfio)
    @rule(which=st.integers(0, 1), src=st.one_of(mapped, mapped.map(lambda v: v + 100), IOVAS),
          dst=st.one_of(mapped, mapped.map(lambda v: v + PAGE - 16), IOVAS),
          n=st.sampled_from([1, 8, 100, PAGE - 8, 2000]))
    def edu_dma(self, which, src, dst, n):
        """The device's DMA through its domain: it reads n bytes at IOVA src into its buffer, then
        writes them to IOVA dst. What lands in user memory is compared after the step
        (same_user_memory); here, whether each side's IOMMU reported a blocked DMA, and where."""
        from conformance.executor import OP_PAGEMAP
        from conformance.vfio_device import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, Edu, edu_transfer

        out = []
        for dev in self.vfio[which]:
            io = _RegionIo(dev)
            try:
                # memory decoding (vfio-pci's BAR accesses want it) and bus mastering (QEMU drops
                # the DMA of a device that is not a bus master), as a VMM sets them
                cmd = int.from_bytes(io.config_read(PCI_COMMAND, 2), "little")
                io.config_write(PCI_COMMAND, (cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER).to_bytes(2, "little"))
                for a, b, to_pci in ((src, Edu.BUF, False), (Edu.BUF, dst, True)):
                    edu_transfer(io, a, b, n, to_pci)
                out.append(0)
            except OSError as e:
                out.append(e.errno)
        assert out[0] == out[1], f"edu DMA {src:#x} -> {dst:#x} on device {which}: model {out[0]} != kernel {out[1]}"
        model = sorted(_fault_lines(self.machine().faults[self.machine_faults:]))
        self.machine_faults = len(self.machine().faults)
        if self.SILENT_FAULTS or out[0]:
            return
        # The guest logs a fault when its fault interrupt is handled, which may be after the
        # engine says done: wait for as many reports as the model made (any reply brings the
        # log along), and give one that the model did not make a moment to show.
        kernel, deadline = [], time.monotonic() + (2.0 if model else 0.05)
        while True:
            kernel += _fault_lines(self.kernel_faults())
            if (model and len(kernel) >= len(model)) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
            self.CHANNEL.call(OP_PAGEMAP, arg=b"")  # a request that only brings the log
        kernel.sort()
        # dmar_fault() prints through one ratelimit state (dmar.c:1944-1961: DEFAULT_RATELIMIT_BURST,
        # 10 prints per DEFAULT_RATELIMIT_INTERVAL, 5 s; its "DRHD: handling fault status reg"
        # line and each record take one): a report the model makes may be one the kernel was
        # not allowed to print. The machine's log holds every report the unit raised.
        missing = list(model)
        for line in kernel:
            if line in missing:
                missing.remove(line)
        limited = missing and len(kernel) < len(model) and _recent_prints() >= RATELIMIT_BURST - 2
        assert model == kernel or (limited and len(missing) == len(model) - len(kernel)), \
            f"edu DMA {src:#x} -> {dst:#x} ({n} bytes): the IOMMU's reports: model {model} != kernel {kernel}"

    def kernel_faults(self) -> list[str]:
        """The guest kernel's IOMMU fault reports since the last call, taken out of the log the
        no_kernel_report invariant reads (a blocked DMA is the device rules' business)."""
        from conformance.vm import parse_findings

        faults: list[str] = []
        lines, self.CHANNEL.kmsg = self.CHANNEL.kmsg, []
        parse_findings("\n".join(lines), expecting=True, faults=faults)
        now = time.monotonic()
        _PRINTS.extend(now for ln in lines if "DRHD: handling fault status" in ln)
        _PRINTS.extend(now for _ in _fault_lines(faults))
        others = [ln for ln in lines if not any(ln in f for f in faults)]
        self.CHANNEL.kmsg = others
        return faults

    def same_answer(self, name: str, request: int, raw: bytes) -> None:
        """The command's bytes to both sides: the same errno and bytes afterwards."""
        kernel = _submit(self.kernel, request, bytearray(raw))
        out = [_call(self.model, request, bytearray(raw)), kernel()]
        assert out[0] == out[1], f"{name} {raw.hex()}: model {out[0][0]} != kernel {out[1][0]}"

    @invariant()
    def same_object_ids_answer(self):
        # IOAS ids 1..8: both sides agree on which exist (IOVA_RANGES with no room: EMSGSIZE vs
        # ENOENT). The kernel's eight go out at once (one round trip to a guest).
        def query(id):
            return B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id)

        kernel = [_submit(self.kernel, B.IOMMU_IOAS_IOVA_RANGES, query(id)) for id in range(1, 9)]
        for id, answer in zip(range(1, 9), kernel):
            a = _call(self.model, B.IOMMU_IOAS_IOVA_RANGES, query(id))[0]
            b = answer()[0]
            assert a == b and a in (errno.EMSGSIZE, errno.ENOENT), f"IOAS {id}: model {a} != kernel {b}"


class _RegionIo:
    """A VFIO PCI device file's regions by offset (index << VFIO_PCI_OFFSET_SHIFT, vfio_pci_core.h):
    config space (index 7) and BAR0's registers (index 0), through the file's pread/pwrite (the
    model's device file, or the guest's through the executor)."""

    CONFIG = 7 << 40

    def __init__(self, file):
        self.file = file

    def config_read(self, offset: int, n: int) -> bytes:
        return self.file.pread(n, self.CONFIG + offset)

    def config_write(self, offset: int, data: bytes) -> None:
        self.file.pwrite(data, self.CONFIG + offset)

    def read32(self, reg: int) -> int:  # BAR0's registers
        return int.from_bytes(self.file.pread(4, reg), "little")

    def write32(self, reg: int, value: int) -> None:
        self.file.pwrite(value.to_bytes(4, "little"), reg)


# When the guest kernel printed IOMMU fault lines (host clock): its ratelimit outlives examples.
_PRINTS: list[float] = []
RATELIMIT_BURST, RATELIMIT_INTERVAL = 10, 5.0  # include/linux/ratelimit_types.h DEFAULT_RATELIMIT_*


def _recent_prints() -> int:
    """How many fault prints the guest made within a ratelimit interval (and a margin) of now."""
    horizon = time.monotonic() - RATELIMIT_INTERVAL - 0.5
    _PRINTS[:] = [t for t in _PRINTS if t >= horizon]
    return len(_PRINTS)


def _fault_lines(reports: list[str]) -> list[str]:
    """The fault lines of IOMMU fault reports (intel-iommu's "[DMA Read ...] ... fault addr ..",
    AMD-Vi's "Event logged [IO_PAGE_FAULT ..."), without what the kernel prints after them."""
    from conformance.vm import IOMMU_FAULT

    return [ln for r in reports for ln in r.splitlines() if IOMMU_FAULT.match(ln)]


def with_rules(base: type, drop, name: str = "Explore", **attrs) -> type:
    """`base` without the rules (and set-ups) named in `drop`: each stays a plain method, so a
    set-up that calls one still can."""
    def plain(f):
        return lambda self, *a, **k: f(self, *a, **k)

    hidden = {n: plain(v) for n, v in inspect.getmembers(base) if n in drop and (
        getattr(v, "hypothesis_stateful_rule", None) is not None
        or getattr(v, "hypothesis_stateful_initialize_rule", None) is not None)}
    assert len(hidden) == len(set(drop)), f"no such rules: {set(drop) - set(hidden)}"
    return type(name, (base,), {**hidden, **attrs})


# The rules of the mock driver's objects: devices, domains, HWPTs, the vIOMMU family, accesses.
MOCK_RULES = ("setup_viommu", "mock_device", "mock_domain_replace", "nest_parent", "viommu_alloc", "vdevice_alloc",
              "nested_alloc", "veventq_alloc", "veventq_read", "veventq_close", "trigger_vevent", "hw_queue_alloc",
              "hw_queue_on_mapping",
              "invalidate", "check_dev_cache", "destroy_any", "mmap", "munmap", "create_access", "access_rw",
              "access_close")
# Rule mixes: "full" (every rule; each run starts with a mock device, a nesting parent and a
# vIOMMU: heavy in mock objects) and "plain" (IOAS, VFIO compatibility and the generated rule,
# no mock objects).
MIXES = {"full": (), "plain": MOCK_RULES}


def _hw_queue_never_contiguous() -> None:
    """The HW queue's contiguity check (model/viommu.py _physically_contiguous(), after
    iommufd_hw_queue_alloc_phys(), viommu.c:344) planted wrong: no run of pages contiguous, not
    even a single page, so the model answers EFAULT where the kernel allocates the queue. The
    check explore once found the model getting wrong on the VM (then: the model's own numbering
    where the guest's frames were adjacent, which only some runs' placements show; planted this
    way, every run can find it)."""
    from model import viommu

    viommu._physically_contiguous = lambda access, iova, length, pfns: False


# Known old model bugs put back (`python -m conformance.explore --plant NAME`, for bench explore's
# shrink time).
PLANTS = {"hw-queue": _hw_queue_never_contiguous}


def database(other: str, url: str | None = None):
    """The example database, kept outside the clone so a failure replays on the next run; with
    `url` (redis://HOST:PORT[/DB]) hypothesis's RedisExampleDatabase on that server, shared by
    every worker of a distributed campaign (conformance/distributed.py)."""
    if url:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase

        return RedisExampleDatabase(redis.Redis.from_url(url), key_prefix=f"iommufd-conformance:explore-{other}:".encode())
    from codegen.debian import cache_dir

    root = os.environ.get("IOMMUFD_VM_SCRATCH")  # in the guest the cache is read-only
    base = cache_dir() if root is None else Path(root)
    return DirectoryBasedExampleDatabase(str(base / "hypothesis" / f"explore-{other}"))


def campaign(other: str, examples: int, steps: int, seed: int | None, db: str | None = None,
             machine_base: type | None = None, vm: tuple[str | None, str | None] | None = None,
             mix: str = "full", **options) -> dict:
    """Run the machine `examples` times of up to `steps` steps; what happened, as a dict.
    `db`: a redis URL for a shared example database; `machine_base`: a subclass of
    ModelVsKernel to run instead (a test's, with a planted bug); other "vm": `vm` is (kernel,
    profile) of the guest conformance/executor boots for the kernel's side; `mix`: MIXES;
    `options`: _campaign()'s (shrink, keep)."""
    if MIXES[mix]:
        machine_base = with_rules(machine_base or ModelVsKernel, MIXES[mix])
    if other == "vm":
        from conformance.executor import ExecutorGone, Guest

        from conformance.vm import IOMMU_FAULT

        guest = Guest(*(vm or (None, None)))
        devices = device_rules(vm[1] if vm else None)
        try:
            with guest as channel:
                channel.hello(user_memory(), MEMFD, CLOSED_FD)
                out = _campaign(other, examples, steps, seed, db, machine_base, channel, devices=devices, **options)
        except ExecutorGone as e:
            return {"other": other, "steps": 0, "failure": f"the guest's executor: {e}"}
        # a blocked DMA's report on the console is the device rules' business (edu_dma compared it)
        findings = [f for f in (guest.result.findings if guest.result is not None else [])
                    if not (devices and IOMMU_FAULT.match(f))]
        if findings:
            out["failure"] = (out["failure"] or "") + " kernel reports: " + " | ".join(findings)
        return out
    return _campaign(other, examples, steps, seed, db, machine_base, **options)


def device_rules(vm_profile: str | None) -> dict:
    """The machine's attributes that turn the device rules on for a VM profile with devices and a
    captured profile the model plays (vm:vtd -> model/profiles/qemu-vtd.json, or this QEMU's
    machine captured now when that file is another QEMU's: probe.profile_for_vm()); {} otherwise."""
    from conformance.vm import profile_named

    prof = profile_named(vm_profile)
    if not prof.edu or not prof.model_profile:
        return {}
    from conformance.probe import profile_for_vm
    from model.profile import load

    played = profile_for_vm(prof.name)
    return {"PROFILE": played, "VFIO_DEVICES": tuple(d.bdf for d in load(played).devices),
            "SILENT_FAULTS": bool(prof.silent_faults)}


def _campaign(other, examples, steps, seed, db, machine_base, channel=None, shrink: bool = True,
              keep: bool = True, devices: dict | None = None) -> dict:
    """campaign() on `channel` for other "vm"; shrink: shrink a failure (hypothesis's shrink
    phase); keep: use the example database (a failure saved earlier replays first); devices:
    device_rules()'s attributes."""
    from hypothesis import Phase

    from model import memory

    machine = type("Explore", (machine_base or ModelVsKernel,),
                   {"OTHER": other, "STEPS": 0, "CHANNEL": channel, **(devices or {})})
    # the guest's frames decide the kernel's answers that depend on physical placement
    memory.PFN_SOURCE = channel.guest_pfns if channel is not None else None
    # one failure, so the example replayed last (the reproducers' record) is the one reported
    conf = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    database=database(other, db) if keep else None, print_blob=True, report_multiple_bugs=False,
                    phases=[p for p in Phase if shrink or p is not Phase.shrink])
    if seed is not None:  # hypothesis reads a stateful test's seed from the machine class
        from hypothesis import seed as hypothesis_seed

        machine = hypothesis_seed(seed)(machine)
    run = lambda: run_state_machine_as_test(machine, settings=conf)  # noqa: E731
    from model import outcomes

    outcomes.take()
    t0 = time.perf_counter()
    failure = None
    try:
        run()
    except Exception as e:  # noqa: BLE001 - the shrunk failure, reported
        failure = f"{type(e).__name__}: {e}"
    finally:
        memory.PFN_SOURCE = None
    seconds = time.perf_counter() - t0
    out = {"other": other, "examples": examples, "steps": machine.STEPS, "seconds": round(seconds, 3),
           "steps_per_s": round(machine.STEPS / seconds, 1) if seconds else 0.0, "seed": seed,
           "failure": failure}
    if failure and machine.LAST is not None:
        out["reproducers"] = reproducers(machine.LAST, failure, other)
    # what the model answered, and where it raised; a campaign the kernel agreed with step by
    # step confirms those sites as a passing test does (conformance/coverage.py)
    from conformance import coverage

    label = f"explore (seed {seed})"
    doc = coverage.from_outcomes("model:explore", outcomes.take(), label)
    if other in ("kernel", "vm") and not failure:
        doc["passed"]["kernel:explore"] = [label]
    out["coverage"] = doc
    return out


def record(examples: int, steps: int, seed: int) -> list:
    """Run the machine model against model and keep every example's Recorder (whole sequences
    that passed, for checking that their reproducers replay)."""
    from hypothesis import seed as hypothesis_seed

    kept = []
    machine = hypothesis_seed(seed)(type("Record", (ModelVsKernel,), {"OTHER": "model", "STEPS": 0, "KEEP": kept}))
    conf = settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None)
    run_state_machine_as_test(machine, settings=conf)
    return kept


def reproducers(rec, failure: str, other: str) -> dict[str, str]:
    """The shrunk failing example (hypothesis replays it last) as C and Python programs."""
    from conformance.repro import emit_c, emit_python

    title = f"A sequence on which the model and {'itself' if other == 'model' else 'the kernel'} disagree, " \
            "found by iommufd-conformance explore."
    return {"c": emit_c(rec, title, failure), "py": emit_python(rec, title, failure)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one explore worker")
    ap.add_argument("--other", choices=("model", "kernel", "vm"), default="model",
                    help="kernel: /dev/iommu here (in a guest); vm: boot a guest whose executor makes the kernel's steps")
    ap.add_argument("--vm-kernel", help="with --other vm: the vm target's kernel (a series or a bzImage)")
    ap.add_argument("--vm-profile", help="with --other vm: the VM profile (conformance/vm.py PROFILES)")
    ap.add_argument("--mix", choices=sorted(MIXES), default="full", help="the rules (MIXES; default full)")
    ap.add_argument("--plant", choices=sorted(PLANTS), help="put a known model bug back (PLANTS)")
    ap.add_argument("--no-shrink", action="store_true", help="report a failure as found, unshrunk")
    ap.add_argument("--fresh", action="store_true", help="no example database: nothing saved earlier replays")
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    if args.plant:
        PLANTS[args.plant]()
    result = campaign(args.other, args.examples, args.steps, args.seed, vm=(args.vm_kernel, args.vm_profile),
                      mix=args.mix, shrink=not args.no_shrink, keep=not args.fresh)
    print("EXPLORE-RESULT " + json.dumps(result), flush=True)
    return 1 if result["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
