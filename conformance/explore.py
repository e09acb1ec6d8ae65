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
import errno
import json
import mmap
import os
import sys
import time
from pathlib import Path

from hypothesis import settings, strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from model.limits import PAGE_SIZE, U64_MAX
from model.uapi import T as B

from conformance.targets import KernelFile
from model import open_iommufd

PAGE = PAGE_SIZE
U64 = U64_MAX
# One user buffer both sides map from (same process, same addresses).
_MEM = mmap.mmap(-1, 64 * PAGE)
MEM = ctypes.addressof(ctypes.c_char.from_buffer(_MEM))
MEMFD = os.memfd_create("iommufd-differential")
os.ftruncate(MEMFD, 32 * PAGE)
CLOSED_FD = os.dup(MEMFD)
os.close(CLOSED_FD)  # a number that names no open file
# IOVAs and lengths near the interesting edges: page multiples, odd bytes, the 2 MiB THP cap.
IOVAS = st.sampled_from([0, PAGE, 3 * PAGE, 1 << 20, (1 << 20) + PAGE, 1 << 21, (1 << 21) + 100, 1 << 32])
LENGTHS = st.sampled_from([PAGE, 2 * PAGE, 3 * PAGE, 16 * PAGE, 100, 0, 1 << 21])
USER_OFFSETS = st.sampled_from([0, PAGE, 5 * PAGE, 100, 8 * PAGE + 7])
# Every IOCTL row the model answers (IOMMU_TEST_CMD and FAULT_QUEUE_ALLOC are not modelled).
RAW_ROWS = [r for r in B.IOCTLS if r.struct and r.name not in ("IOMMU_TEST_CMD", "IOMMU_FAULT_QUEUE_ALLOC")]
WORDS = st.sampled_from([0, 0, 1, 2, 3, PAGE, 0xFFFFFFFF, 0x80000000, 1 << 16])
MAP_FLAGS = st.sampled_from([
    B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE,
    B.IOMMU_IOAS_MAP_READABLE, B.IOMMU_IOAS_MAP_WRITEABLE, 0,
])

def _call(fd, request, struct):
    """(errno or 0, the struct's bytes afterwards) for one ioctl."""
    try:
        rc = fd.ioctl(request, struct)
    except OSError as e:
        return e.errno, bytes(struct)
    return (0 if rc == 0 else ("rc", rc)), bytes(struct)


class ModelVsKernel(RuleBasedStateMachine):
    """The model against OTHER: "kernel" (a real /dev/iommu) or "model" (a second, independent
    model context: the model must be deterministic and its contexts independent). After every
    step the model's own invariants are checked, and STEPS counts the steps run."""

    ioas = Bundle("ioas")
    OTHER = "kernel"
    STEPS = 0

    def __init__(self):
        super().__init__()
        self.model = open_iommufd()
        self.kernel = KernelFile() if self.OTHER == "kernel" else open_iommufd()

    def teardown(self):
        self.model.close()
        self.kernel.close()

    @invariant()
    def model_is_consistent(self):
        type(self).STEPS += 1
        self.model.ictx.check_invariants()
        if self.OTHER == "model":
            self.kernel.ictx.check_invariants()

    def both(self, request, make):
        """Run the same command (a fresh struct per side) on both; they must agree."""
        m, k = make(), make()
        rm = _call(self.model, request, m)
        rk = _call(self.kernel, request, k)
        assert rm == rk, f"model {rm[0]} {m!r} != kernel {rk[0]} {k!r}"
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
            cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id,
                                           num_iovas=num, allowed_iovas=ctypes.addressof(ranges))
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

    @rule(id=st.one_of(ioas, st.integers(0, 4)), fixed=st.booleans(), iova=IOVAS, off=USER_OFFSETS,
          length=LENGTHS, flags=MAP_FLAGS)
    def map(self, id, fixed, iova, off, length, flags):
        flags |= B.IOMMU_IOAS_MAP_FIXED_IOVA if fixed else 0
        self.both(B.IOMMU_IOAS_MAP, lambda: B.iommu_ioas_map(
            size=ctypes.sizeof(B.iommu_ioas_map), flags=flags, ioas_id=id, user_va=MEM + off,
            length=length, iova=iova if fixed else 0))

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
            allowed_iovas=ctypes.addressof(arr)))

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

    @rule(id=st.one_of(ioas, st.integers(0, 4)), fixed=st.booleans(), iova=IOVAS,
          start=st.sampled_from([0, PAGE, 100, 64 * PAGE]), length=LENGTHS, flags=MAP_FLAGS,
          fd=st.sampled_from(["memfd", "memfd", "closed", -1]))
    def map_file(self, id, fixed, iova, start, length, flags, fd):
        fd = {"memfd": MEMFD, "closed": CLOSED_FD}.get(fd, fd)
        flags |= B.IOMMU_IOAS_MAP_FIXED_IOVA if fixed else 0
        self.both(B.IOMMU_IOAS_MAP_FILE, lambda: B.iommu_ioas_map_file(
            size=ctypes.sizeof(B.iommu_ioas_map_file), flags=flags, ioas_id=id, fd=fd, start=start,
            length=length, iova=iova if fixed else 0))

    @rule(row=st.sampled_from(RAW_ROWS), data=st.data())
    def raw(self, row, data):
        """Any IOCTL row with field values drawn per role: IDs that may exist, pointers into
        MEM or unmapped, flags from the enum or not, reserved mostly zero, other words from
        edge values. Covers the handlers with no rule of their own."""
        buf = bytearray(row.size)
        for off in range(4, row.size - 3, 4):
            buf[off:off + 4] = data.draw(WORDS).to_bytes(4, "little")
        def put(spec, value):
            buf[spec.offset:spec.offset + spec.size] = value.to_bytes(spec.size, "little")

        for spec in row.ids:
            put(spec, data.draw(st.integers(0, 5)))
        for spec in row.pointers:
            put(spec, data.draw(st.sampled_from([0, 8, MEM, MEM + PAGE])))
        for spec in row.flags:
            put(spec, data.draw(st.sampled_from([0, spec.mask, spec.mask & -spec.mask, 1 << (8 * spec.size - 1)])))
        for spec in row.reserved:
            put(spec, data.draw(st.sampled_from([0, 0, 0, 1])))
        buf[0:4] = data.draw(st.sampled_from([row.size, row.size, row.min_size, row.size + 8])).to_bytes(4, "little")
        size = int.from_bytes(buf[0:4], "little")
        buf = buf.ljust(max(size, row.size), b"\0")
        raw = bytes(buf)
        out = []
        for fd in (self.model, self.kernel):
            b = bytearray(raw)
            try:
                fd.ioctl(row.number, b)
                out.append((0, bytes(b)))
            except OSError as e:
                out.append((e.errno, bytes(b)))
        assert out[0] == out[1], f"{row.name} {raw.hex()}: model {out[0][0]} != kernel {out[1][0]}"

    @invariant()
    def same_object_ids_answer(self):
        # IOAS ids 1..8: both sides agree on which exist (IOVA_RANGES with no room: EMSGSIZE vs ENOENT).
        for id in range(1, 9):
            a = _call(self.model, B.IOMMU_IOAS_IOVA_RANGES, B.iommu_ioas_iova_ranges(
                size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id))[0]
            b = _call(self.kernel, B.IOMMU_IOAS_IOVA_RANGES, B.iommu_ioas_iova_ranges(
                size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id))[0]
            assert a == b and a in (errno.EMSGSIZE, errno.ENOENT)


def database(other: str):
    """The example database, kept outside the clone so a failure replays on the next run."""
    from codegen.debian import cache_dir

    root = os.environ.get("IOMMUFD_VM_SCRATCH")  # in the guest the cache is read-only
    base = cache_dir() if root is None else Path(root)
    return DirectoryBasedExampleDatabase(str(base / "hypothesis" / f"explore-{other}"))


def campaign(other: str, examples: int, steps: int, seed: int | None) -> dict:
    """Run the machine `examples` times of up to `steps` steps; what happened, as a dict."""
    machine = type("Explore", (ModelVsKernel,), {"OTHER": other, "STEPS": 0})
    conf = settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=database(other),
                    print_blob=True)
    run = lambda: run_state_machine_as_test(machine, settings=conf)  # noqa: E731
    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        run = hypothesis_seed(seed)(run)
    t0 = time.perf_counter()
    failure = None
    try:
        run()
    except Exception as e:  # noqa: BLE001 - the shrunk failure, reported
        failure = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    return {"other": other, "examples": examples, "steps": machine.STEPS, "seconds": round(seconds, 3),
            "steps_per_s": round(machine.STEPS / seconds, 1) if seconds else 0.0, "seed": seed,
            "failure": failure}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one explore worker")
    ap.add_argument("--other", choices=("model", "kernel"), default="model")
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    result = campaign(args.other, args.examples, args.steps, args.seed)
    print("EXPLORE-RESULT " + json.dumps(result), flush=True)
    return 1 if result["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
