"""Kernel reports are attributed to the test that was running (conformance/kmsg.py, the
plugin's _kernel_reports fixture): in the guest, a test during which the kernel logs a stack
dump fails with it, and the test next to it does not. The report is made on purpose with fault
injection (failslab with verbose 2 dumps the forced failure's call trace)."""
from __future__ import annotations

import sys

from conformance import vm
from conformance.runner_tests.test_vm import KERNEL, REPO, needs_kernel

GUEST_TESTS = '''
import errno, os, threading
import pytest
from conformance.tests import helpers as h


def test_clean(iommufd):
    h.ioas_alloc(iommufd)


def test_with_a_kernel_report(iommufd):
    dbg = "/sys/kernel/debug"
    if not os.path.exists(dbg + "/failslab"):
        os.system("mount -t debugfs none " + dbg)
    for name, value in (("failslab/ignore-gfp-wait", "N"), ("failslab/verbose", "2")):
        with open(f"{dbg}/{name}", "w") as f:
            f.write(value)
    with open(f"/proc/self/task/{threading.get_native_id()}/fail-nth", "w") as f:
        f.write("1")
    with pytest.raises(OSError) as e:
        h.ioas_alloc(iommufd)
    assert e.value.errno == errno.ENOMEM
'''


@needs_kernel
def test_a_kernel_report_fails_the_test_that_was_running(tmp_path):
    (tmp_path / "test_guest_reports.py").write_text(GUEST_TESTS)
    res = vm.run_in_vm(KERNEL, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--iommufd-target",
                                "kernel", "--rootdir", str(tmp_path), str(tmp_path / "test_guest_reports.py")],
                       cwd=str(REPO), timeout=300)
    out = res.stdout
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert "FAILED" in out and "test_with_a_kernel_report" in out.split("short test summary info")[-1]
    assert "kernel report while this test ran" in out and "Call Trace:" in out
    assert "test_clean" not in out.split("short test summary info")[-1]
