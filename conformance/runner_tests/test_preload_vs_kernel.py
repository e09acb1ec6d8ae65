"""The C programs of conformance/tool_tests/c run on the test kernel's real /dev/iommu and on
the model through the preload library: the same output, line for line (the kernel is right)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conformance import vm
from conformance.runner_tests.test_vm import KERNEL, REPO, needs_kernel
from conformance.tool_tests.test_server import compile_c


@needs_kernel
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the C programs")
@pytest.mark.parametrize("name", ["ioas_basic", "dup_fork", "handed_files", "vm_pin", "fail_nth"])
def test_same_output_on_the_kernel_and_through_the_preload_library(tmp_path, name):
    prog = compile_c(tmp_path, name)
    # fail-nth meets sleeping allocations only with failslab's ignore-gfp-wait off (as the
    # kernel's iommufd_fail_nth sets it; the preload library sends these settings to /dev/null)
    setup = ("mount -t debugfs none /sys/kernel/debug 2>/dev/null; "
             "echo N > /sys/kernel/debug/failslab/ignore-gfp-wait; "
             "for d in /sys/kernel/debug/fail*; do echo 0 > $d/verbose; done; ")
    kernel = vm.run_in_vm(KERNEL, ["sh", "-c", setup + f"exec {prog}"], timeout=300)
    assert kernel.returncode == 0, kernel.stdout
    assert kernel.findings == []
    model = subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--", str(prog)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert model.returncode == 0, model.stderr
    assert model.stdout.splitlines() == kernel.stdout.splitlines()
