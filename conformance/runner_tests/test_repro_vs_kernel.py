"""Reproducers on the test kernel: explore sequences recorded on the model, written as C (and
Python) programs, built with gcc and run on the real /dev/iommu in the VM.

Every recorded sequence must replay with every check passing: the kernel answers each step as
the model did, and the emitted programs mean what they say. The shrunk example of a model
broken on purpose must stop on the kernel at the step where it stops on the model, with the
same words. The programs run with the caller the model saw (its CAP_SYS_RESOURCE and
RLIMIT_MEMLOCK), as their own note asks.
"""
from __future__ import annotations

import resource
import shutil
import sys

import pytest

from conformance import explore, repro, vm
from conformance.runner_tests.test_vm import KERNEL, REPO, needs_kernel
from conformance.tool_tests.test_repro import PLACEMENT, broken_reproducers, build, on_model_c
from model.limits import CAP_SYS_RESOURCE

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the C reproducers")


def _as_the_model_saw(rec, command: str) -> str:
    """`command` under the recorded caller: the memlock limit, and without CAP_SYS_RESOURCE
    when the recording process lacked it (root here has no CAP_SYS_RESOURCE; the guest's root has)."""
    limit = "unlimited" if rec.memlock == resource.RLIM_INFINITY else str(rec.memlock // 1024)
    drop = "" if rec.caps >> CAP_SYS_RESOURCE & 1 else "setpriv --bounding-set=-sys_resource "
    return f"ulimit -l {limit}; {drop}{command}"


@needs_kernel
def test_recorded_sequences_replay_on_the_kernel(tmp_path):
    recorded = explore.record(examples=16, steps=30, seed=23)
    script = []
    for i, rec in enumerate(recorded):
        prog = build(tmp_path, f"seq{i}", repro.emit_c(rec, f"sequence {i}"))
        script.append(f"echo '== seq{i} {len(repro.program(rec))}'; {_as_the_model_saw(rec, str(prog))}")
    res = vm.run_in_vm(KERNEL, ["sh", "-c", "; ".join(script)], timeout=600)
    assert res.findings == []
    out = res.stdout.split("== seq")[1:]
    assert len(out) == len(recorded), res.stdout[-3000:]
    whole = 0
    for chunk in out:
        name, n = chunk.split()[:2]
        if f"all {n} steps answered as the model answers" in chunk and "note:" not in chunk:
            whole += 1
        else:  # a HW queue over pages the kernel placed elsewhere than the model saw, and saying so
            assert PLACEMENT in chunk, (name, chunk)
    assert whole >= len(recorded) // 2, whole
    assert sum(len(r.calls) for r in recorded) > 300


@needs_kernel
def test_a_divergence_stops_at_the_same_step_on_the_kernel(tmp_path):
    texts, _failure, want, rec = broken_reproducers()
    prog = build(tmp_path, "diverge", texts["c"])
    model = on_model_c(prog)
    assert model.returncode == 1 and want in model.stdout
    py = tmp_path / "diverge.py"
    py.write_text(texts["py"])
    script = (f"{_as_the_model_saw(rec, str(prog))}; echo \"c exit $?\"; "
              f"cd {REPO}; PYTHONPATH={REPO} {_as_the_model_saw(rec, f'{sys.executable} {py} kernel')}; "
              "echo \"py exit $?\"")
    kernel = vm.run_in_vm(KERNEL, ["sh", "-c", script], timeout=300)
    assert kernel.findings == []
    lines = kernel.stdout.splitlines()
    c_line = lines[lines.index("c exit 1") - 1]
    assert c_line == model.stdout.strip().splitlines()[-1], kernel.stdout
    assert want in lines[lines.index("py exit 1") - 1], kernel.stdout
