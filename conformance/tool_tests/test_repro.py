"""Reproducers (conformance/repro.py): explore sequences written as C and Python programs.

The C programs are built with gcc against the project's uapi headers and run on the model
through the preload library (`exec`); the Python programs run on the model. A sequence that
passed must replay with every check passing; a divergence (a model side broken on purpose)
must stop at the step where it happened, with both answers. runner_tests/test_repro_vs_kernel.py
runs the same programs on the test kernel.
"""
from __future__ import annotations

import ctypes
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings as hsettings, strategies as st
from hypothesis.stateful import run_state_machine_as_test

from conformance import explore, repro
from model.limits import PAGE_SIZE
from model.uapi import SERIES, B

ROOT = Path(__file__).resolve().parents[2]
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the C reproducers")


def build(tmp_path: Path, name: str, c_source: str) -> Path:
    """gcc -Wall -Werror against the project's <linux/iommufd.h> and iommufd_test.h (the
    machine's <linux/vfio.h>), as a kernel developer builds it against `make headers`."""
    headers = ROOT / "headers" / f"linux_{SERIES.replace('.', '_')}"
    inc = tmp_path / "include"
    (inc / "linux").mkdir(parents=True, exist_ok=True)
    shutil.copy(headers / "iommufd.h", inc / "linux" / "iommufd.h")
    src = tmp_path / f"{name}.c"
    src.write_text(c_source)
    prog = tmp_path / name
    p = subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-I", str(inc), "-I", str(headers), "-o", str(prog),
                        str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return prog


def on_model_c(prog: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--", str(prog)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def on_model_py(tmp_path: Path, name: str, py_source: str) -> subprocess.CompletedProcess:
    src = tmp_path / f"{name}.py"
    src.write_text(py_source)
    return subprocess.run([sys.executable, str(src), "model"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


class _Faulty:
    """The model's file, except that an IOMMU_DESTROY that succeeds answers EBUSY."""

    def __init__(self, f):
        self.f = f

    def ioctl(self, request, arg=0, mutate_flag=True):
        rc = self.f.ioctl(request, arg, mutate_flag)
        if request == B.IOMMU_DESTROY:
            raise OSError(errno.EBUSY, "injected")
        return rc

    def __getattr__(self, name):
        return getattr(self.f, name)


class _Broken(explore.ModelVsKernel):
    OTHER = "model"

    def __init__(self):
        super().__init__()
        self.model.file = _Faulty(self.model.file)


def broken_reproducers():
    """Explore a model whose IOMMU_DESTROY answers EBUSY where it succeeds: (the reproducers,
    the failure, what the programs must print where they stop, the Recorder)."""
    conf = hsettings(max_examples=300, stateful_step_count=10, deadline=None, database=None, derandomize=True,
                     phases=[Phase.generate, Phase.shrink], report_multiple_bugs=False)
    with pytest.raises(AssertionError) as e:
        run_state_machine_as_test(_Broken, settings=conf)
    failure = f"AssertionError: {e.value}"
    assert "model 16" in failure  # the injected EBUSY, against the other side's success
    steps = repro.program(_Broken.LAST)
    stop = f"step {len(steps)} ({steps[-1].call.label}): IOMMU_DESTROY: returned 0, the model fails with"
    return explore.reproducers(_Broken.LAST, failure, "model"), failure, stop, _Broken.LAST


@pytest.fixture(scope="module")
def recorded():
    return explore.record(examples=6, steps=25, seed=16)


# A HW queue over several small pages needs them physically adjacent: a program run later may
# meet other frames than the explored process did, and says so at that step (repro.py).
PLACEMENT = "note: a queue over several small pages needs them physically adjacent"


@needs_gcc
def test_recorded_sequences_replay_on_the_model(tmp_path, recorded):
    """Whole explore sequences (mock devices, vIOMMU, vEVENTQ reads, mmap, raw commands) as C
    and Python: every step of every program answers as recorded, but where the program itself
    says the answer depends on physical placement."""
    assert sum(len(r.calls) for r in recorded) > 100
    kinds = {c.kind for r in recorded for c in r.calls}
    assert "ioctl" in kinds and len(kinds) >= 2, kinds  # seed 16 reaches mmap, read and close too
    whole = 0
    for i, rec in enumerate(recorded):
        n = len(repro.program(rec))
        for run in (on_model_c(build(tmp_path, f"seq{i}", repro.emit_c(rec, f"sequence {i}"))),
                    on_model_py(tmp_path, f"seq{i}", repro.emit_python(rec, f"sequence {i}"))):
            if run.returncode == 0 and f"all {n} steps answered" in run.stdout:
                whole += 1
            else:  # only where the program says the answer follows where this run's pages landed
                assert run.returncode == 1 and PLACEMENT in run.stdout, run.stdout + run.stderr
    assert whole >= len(recorded), whole  # most replay whole


@needs_gcc
def test_a_divergence_stops_at_its_step(tmp_path):
    """The shrunk failing example replays up to the step that diverged and stops there with
    the step, its rule and both answers (here the real model is the 'kernel')."""
    texts, failure, want, _rec = broken_reproducers()
    assert "iommu_destroy(size=0x8, id=" in failure  # the message names the fields
    c = on_model_c(build(tmp_path, "diverge", texts["c"]))
    assert c.returncode == 1 and c.stdout.strip().endswith(f"{want} errno 16 (Device or resource busy)"), c.stdout
    p = on_model_py(tmp_path, "diverge", texts["py"])
    assert p.returncode == 1 and p.stdout.strip().endswith(f"{want} EBUSY"), p.stdout + p.stderr


# -- how values are written ----------------------------------------------------------------------

class _Rec:
    mem, mem_len, memfd = 0x7F0000000000, 64 * PAGE_SIZE, 7


def _init(ctype, raw, buffers=None):
    namer = repro.Namer(_Rec())
    return repro.make_init(ctype, raw, namer, buffers or {},
                           repro._union_chooser([raw], repro._op_words(ctype, raw)))


def test_union_member_follows_the_op():
    cmd = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, id=1)
    cmd.mock_domain_flags.dev_flags = 2
    init = _init(B.iommu_test_cmd, bytes(cmd))
    assert dict(init.fields)["mock_domain_flags.dev_flags"].c == "2"
    cmd = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_DEV_CHECK_CACHE, id=1)
    cmd.check_dev_cache.id = 3
    assert "check_dev_cache.id" in dict(_init(B.iommu_test_cmd, bytes(cmd)).fields)


def test_pointers_and_descriptors_are_named():
    cmd = B.iommu_ioas_map(size=40, user_va=_Rec.mem + 0x1000, length=PAGE_SIZE)
    fields = dict(_init(B.iommu_ioas_map, bytes(cmd)).fields)
    assert fields["user_va"].c == "(__u64)(uintptr_t)(mem + 0x1000)" and fields["user_va"].py == "MEM + 0x1000"
    cmd = B.iommu_ioas_map_file(size=40, fd=7)
    assert dict(_init(B.iommu_ioas_map_file, bytes(cmd)).fields)["fd"].c == "memfd"
    cmd = B.iommu_ioas_map_file(size=40, fd=-1)
    assert dict(_init(B.iommu_ioas_map_file, bytes(cmd)).fields)["fd"].c == "-1"
    ranges = (B.iommu_iova_range * 2)()
    cmd = B.iommu_ioas_allow_iovas(size=24, num_iovas=2, allowed_iovas=0x5000)
    fields = dict(_init(B.iommu_ioas_allow_iovas, bytes(cmd), {0x5000: ("allowed", True)}).fields)
    assert fields["allowed_iovas"].c == "(__u64)(uintptr_t)allowed"
    assert repro.make_init(type(ranges), bytes(ranges), repro.Namer(_Rec()), {}, None).count == 2


def test_a_command_longer_than_its_struct_is_written_as_bytes():
    raw = bytes(B.iommu_ioas_map(size=48, user_va=_Rec.mem + 8)) + b"\1" * 8
    init = _init(B.iommu_ioas_map, raw)
    assert init.fields is None and init.raw == raw and [off for off, _ in init.patches] == [16]


ROWS = [r for r in B.IOCTLS if r.struct]


@hsettings(max_examples=300, deadline=None)
@given(row=st.sampled_from(ROWS), data=st.data())
def test_the_python_form_rebuilds_the_exact_bytes(row, data):
    """Any command bytes, written as a program, are the same bytes when the program runs:
    fields over a zeroed struct, or bytes with pointer patches (the C form has the same
    fields and values)."""
    import struct as struct_mod

    ctype = getattr(B, row.struct)
    raw = data.draw(st.binary(min_size=ctypes.sizeof(ctype), max_size=ctypes.sizeof(ctype)) |
                    st.builds(lambda: bytes(ctype())))
    if data.draw(st.booleans()) and len(raw) >= 24:  # a pointer into mem somewhere
        raw = raw[:16] + (_Rec.mem + 0x40).to_bytes(8, "little") + raw[24:]
    init = _init(ctype, raw)
    scope = {"B": B, "MEM": _Rec.mem, "memfd": _Rec.memfd, "struct": struct_mod, "ctypes": ctypes}
    if init.fields is None:
        exec(f"cmd = bytearray.fromhex({init.raw.hex()!r})", scope)
        for off, v in init.patches:
            exec(f"struct.pack_into('<Q', cmd, {off}, {v.py})", scope)
    else:
        exec(f"cmd = {init.py_type}()", scope)
        for path, v in init.fields:
            exec(f"cmd{'' if path.startswith('[') else '.'}{path} = {v.py}", scope)
    assert bytes(scope["cmd"]) == raw


def test_an_answer_that_follows_physical_placement_is_marked():
    """A HW queue over two small pages succeeds only where they are physically adjacent: the
    program says so next to a divergence at that step; over one page it says nothing."""
    for length, marked in ((2 * PAGE_SIZE, True), (PAGE_SIZE, False)):
        cmd = B.iommu_hw_queue_alloc(size=40, viommu_id=6, type=B.IOMMU_HW_QUEUE_TYPE_SELFTEST,
                                     nesting_parent_iova=1 << 24, length=length)
        call = repro.Call("ioctl", "hw_queue_alloc", request=B.IOMMU_HW_QUEUE_ALLOC, ctype=B.iommu_hw_queue_alloc,
                          arg=bytes(cmd), out=bytes(cmd), err=errno.EFAULT)
        assert bool(repro._open_choice("IOMMU_HW_QUEUE_ALLOC", call)) == marked
