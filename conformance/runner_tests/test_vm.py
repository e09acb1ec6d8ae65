"""The QEMU runner (conformance/vm.py) against the cached test kernel.

Each VM test boots the guest once (~3 s under TCG): they are marked vm_runner and run with
--vm-runner-tests (CI passes it, after `iommufd-conformance kernel build`); they skip when no
test kernel is cached.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conformance import kbuild, selftests, vm

KERNEL = kbuild.cached_kernel()
IN_GUEST = "IOMMUFD_VM_SCRATCH" in os.environ
_skip_without_kernel = pytest.mark.skipif(
    IN_GUEST or KERNEL is None,
    reason="already inside the test VM (no nested QEMU)" if IN_GUEST
    else "no cached test kernel; build it with `iommufd-conformance kernel build`")
REPO = Path(__file__).resolve().parents[2]


def needs_kernel(test):
    return pytest.mark.vm_runner(_skip_without_kernel(test))


def _processes_mentioning(needle: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass  # exited meanwhile
    return pids


@needs_kernel
def test_exit_status_and_output_come_back():
    res = vm.run_in_vm(KERNEL, ["sh", "-c", "echo hi; echo err >&2; exit 3"], timeout=120)
    assert res.returncode == 3
    assert res.stdout == "hi\nerr\n"
    assert res.findings == []


@needs_kernel
def test_dev_iommu_is_a_char_device():
    code = ("import os, stat; st = os.stat('/dev/iommu'); "
            "print(stat.S_ISCHR(st.st_mode), os.major(st.st_rdev))")
    res = vm.run_in_vm(KERNEL, [sys.executable, "-S", "-c", code], timeout=120)
    assert (res.returncode, res.stdout) == (0, "True 10\n"), res.stdout


@needs_kernel
def test_env_cwd_scratch_and_read_only_root(tmp_path):
    script = f"""
        pwd; echo "$FOO $HOME $PYTHONDONTWRITEBYTECODE"
        echo data > "$IOMMUFD_VM_SCRATCH/out"
        touch {REPO}/.written-by-guest 2>/dev/null && echo repo-writable || echo repo-read-only
        grep HugePages_Total /proc/meminfo
    """
    res = vm.run_in_vm(KERNEL, ["sh", "-c", script], env={"FOO": "bar"}, cwd="/usr", scratch=tmp_path,
                       hugepages=8, timeout=120)
    assert res.returncode == 0, res.stdout
    assert res.stdout.split("\n")[:3] == ["/usr", f"bar {vm.GUEST_TMP} 1", "repo-read-only"]
    assert res.stdout.split()[-1] == "8"
    assert (tmp_path / "out").read_text() == "data\n"


@needs_kernel
def test_output_is_streamed_while_the_command_runs():
    seen: list[str] = []
    res = vm.run_in_vm(KERNEL, ["sh", "-c", "echo first; sleep 2; echo second"], timeout=120,
                       on_output=seen.append)
    assert "".join(seen) == res.stdout == "first\nsecond\n"
    assert len(seen) >= 2  # "first" arrived before the command ended


@needs_kernel
def test_timeout_kills_the_guest(tmp_path):
    with pytest.raises(vm.VmTimeout) as exc:
        vm.run_in_vm(KERNEL, ["sleep", "1000"], timeout=20, scratch=tmp_path)
    assert "while the command ran" in str(exc.value)
    assert exc.value.result.returncode is None
    # The scratch path is on QEMU's command line; nothing may still run with it.
    assert _processes_mentioning(str(tmp_path)) == []


@needs_kernel
def test_kernel_warning_is_a_finding():
    # LKDTM (CONFIG_LKDTM, in the fragment) raises a real WARN() on request.
    trigger = "/sys/kernel/debug/provoke-crash/DIRECT"
    res = vm.run_in_vm(KERNEL, ["sh", "-c", f"test -w {trigger} || exit 77; echo WARNING > {trigger}"], timeout=120)
    if res.returncode == 77:
        pytest.skip("this kernel has no LKDTM (built before CONFIG_LKDTM was in the fragment)")
    assert res.returncode == 0
    warnings = [f for f in res.findings if f.startswith("WARNING: ")]
    assert len(warnings) == 1, res.findings
    assert "lkdtm_WARNING" in warnings[0] and "Call Trace:" in warnings[0]
    assert warnings[0].splitlines()[-1].startswith("---[ end trace")


def test_parse_findings_on_a_kernel_log():
    # Shape of a real 7.2 console log around an LKDTM WARN() (as the test above triggers it).
    log = """\
[    1.912345] Run /bin/sh as init process
[    2.501234] lkdtm: Performing direct entry WARNING
[    2.501300] ------------[ cut here ]------------
[    2.501400] WARNING: CPU: 1 PID: 60 at drivers/misc/lkdtm/bugs.c:165 lkdtm_WARNING+0x11/0x20
[    2.501500] CPU: 1 UID: 0 PID: 60 Comm: sh Not tainted 7.2.13 #1 PREEMPT(voluntary)
[    2.501600] RIP: 0010:lkdtm_WARNING+0x11/0x20
[    2.501700] Call Trace:
[    2.501800]  <TASK>
[    2.501900]  direct_entry+0x9b/0xe0
[    2.502000]  full_proxy_write+0x50/0x70
[    2.502100]  vfs_write+0xc1/0x400
[    2.502200]  </TASK>
[    2.502300] ---[ end trace 0000000000000000 ]---
[    2.600000] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    2.600100] #PF: supervisor read access in kernel mode
[    2.700000] sysrq: Resetting
"""
    found = vm.parse_findings(log, context=2)
    assert len(found) == 2
    warn, bug = found
    assert warn.splitlines()[0].startswith("WARNING: CPU: 1 PID: 60 at drivers/misc/lkdtm/bugs.c")
    assert warn.splitlines()[-1] == "---[ end trace 0000000000000000 ]---"
    assert "Call Trace:" in warn  # part of the WARNING, not a finding of its own
    assert bug.splitlines() == ["BUG: kernel NULL pointer dereference, address: 0000000000000000",
                                "#PF: supervisor read access in kernel mode", "sysrq: Resetting"]
    assert vm.parse_findings("[    0.1] Linux version 7.2.13\nclean boot\n") == []


def test_parse_kselftest_output():
    out = """\
TAP version 13
1..3
# Starting 3 tests from 2 test cases.
#  RUN           iommufd.simple_close ...
#            OK  iommufd.simple_close
ok 1 iommufd.simple_close
#  RUN           iommufd_ioas.no_domain.area_auto_iova ...
# iommufd.c:123:area_auto_iova:Expected 0 (0) == ...
not ok 2 iommufd_ioas.no_domain.area_auto_iova
ok 3 iommufd_viommu.no_viommu.viommu_alloc # SKIP Skipping for no_viommu
# FAILED: 1 / 3 tests passed.
# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
"""
    r = selftests.parse_kselftest("iommufd", out)
    assert r.passed == ["iommufd.simple_close"]
    assert r.failed == ["iommufd_ioas.no_domain.area_auto_iova"]
    assert r.skipped == ["iommufd_viommu.no_viommu.viommu_alloc"]
    assert r.totals_line.startswith("Totals: pass:1 fail:1")


def test_fragment_check_names_lost_symbols():
    fragment = "CONFIG_IOMMUFD=y\nCONFIG_FOO=y\n# CONFIG_BAR is not set\n"
    config = "CONFIG_IOMMUFD=y\n# CONFIG_FOO is not set\nCONFIG_BAR=y\n"
    assert kbuild.check_config(fragment, config) == ["CONFIG_FOO=y (got: n)", "CONFIG_BAR=n (got: y)"]


@pytest.mark.parametrize("argv,code", [
    (["vm", "--kernel", "/nonexistent/bzImage", "--", "true"], 2),
    (["run", "--target", "vm=/nonexistent/bzImage"], 3),
    (["run", "--target", "bogus"], 2),
])
def test_bad_kernel_or_target_is_a_clear_error(argv, code):
    import subprocess

    p = subprocess.run([sys.executable, "-m", "conformance.cli", *argv], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode == code
    assert "Traceback" not in p.stderr
    assert ("/nonexistent/bzImage" in p.stderr) or ("bogus" in p.stderr)
