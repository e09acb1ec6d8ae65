"""The fault-injection sweeps on the test kernel (fail-nth in the guest) against the model.
The sweeps whose every fault point the model has must agree attempt by attempt; the others
(MODELLED below says which and why) are reported by `faults --target vm` and listed in the
README as not modelled yet."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from conformance import faults, vm
from conformance.runner_tests.test_vm import KERNEL, REPO, needs_kernel

# Not modelled: MOCK_DOMAIN (the driver core's allocations in device_add() and the probe)
MODELLED = [n for n in faults.SCENARIOS if n != "MOCK_DOMAIN"]


@needs_kernel
def test_kernel_sweeps_leave_state_unchanged_and_agree_with_the_model():
    res = vm.run_in_vm(KERNEL, [sys.executable, "-m", "conformance.faults", *faults.SCENARIOS], cwd=str(REPO),
                       timeout=900)
    assert res.returncode == 0, res.stdout[-2000:]
    assert res.findings == []
    kernel = json.loads(res.stdout)
    for s in kernel:  # the kernel's own answer to the state check
        assert s["problems"] == [], s
    model = [asdict(s) for s in faults.run("model", MODELLED)]
    by_name = {s["scenario"]: s for s in kernel}
    assert faults.compare(model, [by_name[n] for n in MODELLED]) == []
