"""Fault-injection sweeps on the model (conformance/faults.py): every attempt in which the fault
fired and the call failed left the state as it was, and each sweep ends in a success. The same
sweeps against the kernel: conformance/runner_tests/test_faults_vs_kernel.py."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import faults

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(faults.SCENARIOS))
def test_model_sweep_leaves_state_unchanged_on_every_failure(name):
    s = faults.run("model", [name])[0]
    assert s.problems == []
    assert s.succeeded_at == len(s.attempts) + 1
    assert s.attempts, "the sweep met no fault point at all"
    assert all(a.unchanged for a in s.attempts if a.errno)


def test_the_first_fault_point_of_an_ioctl_on_an_object_is_the_lookup():
    """The selftest kernel fails iommufd_get_object() itself with ENOENT (main.c:171)."""
    s = faults.run("model", ["IOAS_UNMAP"])[0]
    assert [(a.nth, a.errno) for a in s.attempts] == [(1, errno.ENOENT)]


def test_faults_cli_reports_each_sweep_and_rejects_unknown_names():
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "faults", "--ioctl", "IOAS_ALLOC"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    first, rate = p.stdout.splitlines()
    assert first.split() == ["model", "IOAS_ALLOC", "2", "fault", "points,", "3", "calls", "to", "succeed:", "ENOMEM,ok"]
    assert rate.startswith("model: 3 attempts in ")
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "faults", "--ioctl", "NOPE"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode != 0 and "unknown sweep NOPE" in p.stderr and "Traceback" not in p.stderr
