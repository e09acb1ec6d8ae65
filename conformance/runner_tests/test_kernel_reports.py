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


GUEST_DMA_TESTS = '''
from conformance.tests import helpers as h
from conformance.vfio_device import Edu

IOVA = 0x100000


def _unmapped_write(iommufd, dev):
    dev.bind(iommufd.fileno())
    edu = Edu(dev)
    ioas = h.ioas_alloc(iommufd)
    dev.attach(ioas)
    buf = h.Buf(1)
    h.map_(iommufd, ioas, buf.addr, h.PAGE, iova=IOVA)
    edu.read_iova(IOVA, 64)
    return edu


def test_an_expected_fault(iommufd, vfio_device, blocked_dma):
    edu = _unmapped_write(iommufd, vfio_device)
    faults = blocked_dma(edu.write_iova, IOVA + 64 * h.PAGE, 64)
    assert faults and f"{IOVA + 64 * h.PAGE:x}" in faults[0]


def test_an_unexpected_fault(iommufd, vfio_device):
    edu = _unmapped_write(iommufd, vfio_device)
    edu.write_iova(IOVA + 32 * h.PAGE, 64)
    import time
    time.sleep(1)  # the fault's interrupt is handled after the DMA
'''


@needs_kernel
def test_an_iommu_fault_fails_the_test_unless_it_expects_one(tmp_path):
    """On the vtd profile a DMA to an unmapped IOVA makes intel-iommu log a DMAR fault: the test
    that asked for it (blocked_dma) gets the report and passes, the one that did not fails with it,
    and the VM's console reader counts only the unexpected one."""
    (tmp_path / "test_guest_dma.py").write_text(GUEST_DMA_TESTS)
    res = vm.run_in_vm(KERNEL, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--iommufd-target",
                                "kernel", "--rootdir", str(tmp_path), str(tmp_path / "test_guest_dma.py")],
                       cwd=str(REPO), timeout=300, profile="vtd")
    out = res.stdout
    assert "1 failed, 1 passed" in out, out[-3000:]
    summary = out.split("short test summary info")[-1]
    assert "test_an_unexpected_fault" in summary and "test_an_expected_fault" not in summary
    assert "kernel report while this test ran" in out and "DMAR: [DMA Write" in out
    assert len(res.findings) == 1 and f"fault addr {0x100000 + 32 * 4096:#x}" in res.findings[0], res.findings
