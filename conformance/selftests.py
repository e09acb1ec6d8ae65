"""The kernel's own selftests: iommufd's (tools/testing/selftests/iommu) and VFIO's
(tools/testing/selftests/vfio): build them from the test kernel's tree, run them in its VM (the
VFIO ones on a profile with devices: vm:vtd), read their TAP; and the same binaries against the
model through the preload library (run_selftests_model; the VFIO ones on the model's machine of
the profile, run_vfio_selftests_model)."""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from codegen import debian
from conformance import vm
from conformance.kbuild import (BUILD_PACKAGES, SERIES, locked, make, make_env, makefile_version, sha256,
                                make_jobs, kernel_info)

SELFTEST_PACKAGES = debian.PACKAGES["selftests"]
SELFTESTS = ("iommufd", "iommufd_fail_nth")

# Selftest cases expected to fail on this kernel configuration. Measured: with
# CONFIG_TRANSPARENT_HUGEPAGE=y and 64 huge pages reserved, none fail (the 5 skips,
# iommufd.no_viommu variants, are by design).
KNOWN_SELFTEST_FAILURES: frozenset[str] = frozenset()


def _tree_and_key(kernel: Path, source: Path | None) -> tuple[Path, str]:
    info = kernel_info(kernel)
    if source is not None:
        tree = Path(source).resolve()
    elif info.get("tree") and Path(info["tree"], "Makefile").is_file():
        tree = Path(info["tree"])
    else:
        tree, _ = debian.source_tree(SERIES)
    return tree, info.get("key") or sha256(f"{tree} {makefile_version(tree)}")[:16]


def _build_suite(kernel: Path, source: Path | None, suite: str, binaries: tuple[str, ...], cache: str,
                 log: Callable[[str], None], extra: tuple[str, ...] = (), tag: str = "") -> Path:
    """Build tools/testing/selftests/SUITE from the kernel's tree against its `make headers`, into
    cache_dir()/CACHE/KEY[-TAG] (the kernel's key), unless every binary is there already."""
    debian.ensure_packages(BUILD_PACKAGES + SELFTEST_PACKAGES, why=f"to build the {suite} selftests")
    tree, key = _tree_and_key(kernel, source)
    out = debian.cache_dir() / cache / (f"{key}-{tag}" if tag else key)
    if all((out / t).is_file() for t in binaries):
        return out
    hdr = debian.cache_dir() / "build" / key
    with locked(hdr.with_name(key + ".lock")):
        hdr.mkdir(parents=True, exist_ok=True)
        logfile = hdr / f"selftests-{suite}.log"
        logfile.write_text("")
        env = make_env()
        log(f"building the {suite} selftests from {tree} (log {logfile})")
        make(tree, [f"O={hdr}", "ARCH=x86_64", "headers"], logfile, env, "make headers")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)  # the selftests' rules need OUTPUT to exist
        make(tree / "tools" / "testing" / "selftests" / suite,
             [f"OUTPUT={tmp}", f"KHDR_INCLUDES=-isystem {hdr / 'usr' / 'include'}", *extra, f"-j{make_jobs(None)}"],
             logfile, env, f"building the {suite} selftests")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def build_selftests(kernel: Path, source: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build iommufd and iommufd_fail_nth from the kernel's tree (cached beside the kernel key)."""
    return _build_suite(kernel, source, "iommu", SELFTESTS, "selftests", log)


@dataclass
class SelftestResult:
    name: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    exit_status: int | None = None
    totals_line: str = ""  # the harness's own "# Totals: ..." line, to cross-check the parse
    skip_reasons: dict[str, str] = field(default_factory=dict)  # case -> the text after "# SKIP"
    seconds: float | None = None  # the binary's wall time, where it was measured


_TAP = re.compile(r"^(ok|not ok) \d+ (\S+)(?:\s+#\s*(SKIP|XFAIL|TODO)\b\s*(.*))?$", re.I)


def parse_kselftest(name: str, text: str) -> SelftestResult:
    """Top-level TAP result lines of one kselftest binary's output.

    The harness prints one `ok N fixture.variant.test` / `not ok N ...` (with `# SKIP` for
    skips) per case; nested detail lines start with '#'.
    """
    r = SelftestResult(name)
    for ln in text.splitlines():
        if ln.startswith("# Totals:"):
            r.totals_line = ln[2:]
        elif m := _TAP.match(ln.strip()):
            verdict, case, directive = m[1].lower(), m[2], (m[3] or "").upper()
            if directive == "SKIP":
                r.skipped.append(case)
                r.skip_reasons[case] = (m[4] or "").strip()
            elif verdict == "ok" or directive == "XFAIL":
                r.passed.append(case)
            else:
                r.failed.append(case)
    return r


VFIO_SELFTESTS = ("vfio_iommufd_setup_test", "vfio_pci_device_test", "vfio_dma_mapping_test",
                  "vfio_dma_mapping_mmio_test", "vfio_pci_device_init_perf_test", "vfio_pci_driver_test",
                  "vfio_pci_sriov_uapi_test")
# The container a test case uses, as libvfio names them (lib/iommu.c): the variant starts with one.
VFIO_MODES = ("vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1", "iommufd_compat_type1v2", "iommufd")
VFIO_SHIM = Path(__file__).resolve().parent / "kernel" / "vfio_selftests_shim.h"


def vfio_mode(case: str) -> str | None:
    """The iommu mode of a VFIO selftest case (fixture.variant.test), the longest name the variant
    starts with; None for a case that runs in one mode only."""
    parts = case.split(".")
    variant = parts[1] if len(parts) == 3 else ""
    found = [m for m in VFIO_MODES if variant == m or variant.startswith(m + "_")]
    return max(found, key=len) if found else None


def build_vfio_selftests(kernel: Path, source: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build tools/testing/selftests/vfio from the kernel's tree (cached by kernel key and shim)."""
    return _build_suite(kernel, source, "vfio", VFIO_SELFTESTS, "selftests-vfio", log,
                        extra=(f"EXTRA_CFLAGS=-include {VFIO_SHIM}",), tag=sha256(VFIO_SHIM.read_bytes())[:8])


def _run_in_vm(kernel: Path, bindir: Path, runs: list[tuple[str, str]], timeout: float, **vm_kw):
    """One boot for every (binary, shell arguments) of `runs`, markers splitting the output:
    (a SelftestResult per binary with its exit status, each binary's output or None where it did
    not finish, the VmResult)."""
    script = "; ".join(f't0=$(date +%s%N); echo "@@@ {b}"; ./{b} {args}; echo "@@@ {b} exit $?"; '
                       f'echo "@@@ {b} ns $(($(date +%s%N) - t0))"' for b, args in runs)
    res = vm.run_in_vm(kernel, ["sh", "-c", script], cwd=str(bindir), hugepages=64, timeout=timeout, **vm_kw)
    results, outputs = [], []
    for b, _ in runs:
        m = re.search(rf"^@@@ {b}\n(.*?)^@@@ {b} exit (\d+)$", res.stdout, re.S | re.M)
        r = parse_kselftest(b, m[1] if m else "")
        r.exit_status = int(m[2]) if m else None
        if t := re.search(rf"^@@@ {b} ns (\d+)$", res.stdout, re.M):
            r.seconds = int(t[1]) / 1e9
        results.append(r)
        outputs.append(m[1] if m else None)
    return results, outputs, res


def run_vfio_selftests(kernel: Path, profile: str = "vtd", source: Path | None = None, timeout: float = 900,
                       log: Callable[[str], None] = print) -> tuple[list[SelftestResult], list[str], str]:
    """Boot `kernel` on `profile` and run each VFIO selftest binary on its devices (the first one;
    init_perf_test on all): (results per binary, kernel findings, output). A binary that skips
    as a whole (exit 4: no driver for the device, no SR-IOV) keeps its reason in `totals_line`."""
    prof = vm.profile_named(profile)
    if not prof.edu:
        raise vm.VmError(f"profile {prof.name} has no PCI devices to run the VFIO selftests on (use vtd or amd)",
                         vm.VmResult(None, "", ""))
    bindir = build_vfio_selftests(kernel, source, log=log)
    first = '"${IOMMUFD_VFIO_DEVICES%%,*}"'
    every = '$(echo "$IOMMUFD_VFIO_DEVICES" | tr , " ")'
    log(f"running {len(VFIO_SELFTESTS)} VFIO selftests in a 4G guest (profile {prof.name}, 64 2M and two 1G huge pages)")
    # vfio_dma_mapping_test's anonymous_hugetlb_1gb variants map one 1 GiB page: reserved at boot
    # (runtime allocation of gigantic pages needs CONFIG_CONTIG_ALLOC, which the test kernel lacks)
    runs = [(t, every if t == "vfio_pci_device_init_perf_test" else first) for t in VFIO_SELFTESTS]
    results, outputs, res = _run_in_vm(kernel, bindir, runs, timeout, memory="4G", profile=prof,
                                       cmdline=("hugepagesz=1G", "hugepages=2", "hugepagesz=2M"))
    for r, output in zip(results, outputs):
        _whole_skip(r, output)
    return results, res.findings, res.stdout


def _whole_skip(r: SelftestResult, output: str | None) -> None:
    """A binary that exits 4 (KSFT_SKIP) before any case ran keeps its reason in totals_line,
    "skipped as a whole: ...", from the line that says SKIP (or its last line)."""
    if output is not None and r.exit_status == 4 and not (r.passed or r.failed or r.skipped):
        lines = [ln.strip("# ") for ln in output.splitlines() if ln.strip() and not ln.startswith("@@@")]
        r.totals_line = "skipped as a whole: " + (next((ln for ln in lines if "SKIP" in ln), None)
                                                   or (lines[-1] if lines else "exit 4 (KSFT_SKIP)"))


def run_selftests(kernel: Path, source: Path | None = None, timeout: float = 900,
                  log: Callable[[str], None] = print, profile: str | None = None
                  ) -> tuple[list[SelftestResult], list[str], str]:
    """Boot `kernel` and run the iommufd selftests: (results per binary, kernel findings, output)."""
    bindir = build_selftests(kernel, source, log=log)
    log(f"running {', '.join(SELFTESTS)} in a 2G guest with 64 huge pages")
    results, _, res = _run_in_vm(kernel, bindir, [(b, "") for b in SELFTESTS], timeout, memory="2G",
                                 profile=profile)
    return results, res.findings, res.stdout


# Selftests the model is known to fail, with the reason (fnmatch patterns over the TAP name).
# Each is a difference the README lists; anything else that passes on the kernel and fails on
# the model fails `kernel selftest --target model`.
@dataclass(frozen=True)
class Host:
    """What this machine grants the selftests on the model, read at run time."""
    hugepages: int  # huge pages reserved for the run (host_hugepages())
    sys_resource: bool  # CAP_SYS_RESOURCE in this process's effective set (capget)

    @classmethod
    def now(cls, hugepages: int) -> "Host":
        from model.limits import CAP_SYS_RESOURCE
        from model.libc import effective_caps
        return cls(hugepages, bool(effective_caps(os.getpid()) >> CAP_SYS_RESOURCE & 1))


@dataclass(frozen=True)
class Excuse:
    """A selftest case the model may fail or skip, only while `holds` is true of this host."""
    pattern: str  # fnmatch over "fixture.variant.test"
    holds: Callable[[Host], bool]
    reason: str


_NO_SYS_RESOURCE = "needs CAP_SYS_RESOURCE (capable()), which this process lacks (capget)"
HUGEPAGES = 64  # as the VM reserves: the selftests' *_hugepage and *_huge variants need them

MODEL_EXCUSES: tuple[Excuse, ...] = (
    Excuse("iommufd.global_options", lambda h: not h.sys_resource,
           "IOMMU_OPTION_RLIMIT_MODE " + _NO_SYS_RESOURCE),
    Excuse("change_process.account_user.basic", lambda h: not h.sys_resource,
           "its set-up sets IOMMU_OPTION_RLIMIT_MODE, which " + _NO_SYS_RESOURCE),
    Excuse("change_process.account_mm.basic", lambda h: not h.sys_resource,
           "its set-up sets IOMMU_OPTION_RLIMIT_MODE, which " + _NO_SYS_RESOURCE),
    Excuse("*huge*", lambda h: h.hugepages < HUGEPAGES,
           f"MAP_HUGETLB needs huge pages on this host (the tests use up to {HUGEPAGES}, fewer were reserved)"),
)


def model_failure_reason(case: str, host: Host) -> str | None:
    """Why the model may fail (or skip) `case` on this host, or None: no excuse holds."""
    for e in MODEL_EXCUSES:
        if fnmatch.fnmatchcase(case, e.pattern) and e.holds(host):
            return e.reason
    return None


@contextlib.contextmanager
def host_hugepages(n: int, log: Callable[[str], None] = print):
    """At least `n` huge pages reserved on this host for the duration (the count put back
    after); yields how many are reserved."""
    path = Path("/proc/sys/vm/nr_hugepages")
    try:
        before = int(path.read_text())
    except OSError:
        yield 0
        return
    have, raised = before, False
    if before < n:
        try:
            path.write_text(str(n))
            raised = True
            have = int(path.read_text())
        except OSError as e:
            log(f"could not reserve {n} huge pages ({e.strerror}); the huge page selftests will fail")
    try:
        yield have
    finally:
        if raised:
            try:
                path.write_text(str(before))
            except OSError:
                pass


def run_selftests_model(kernel: Path, source: Path | None = None, timeout: float = 1800,
                        log: Callable[[str], None] = print) -> tuple[list[SelftestResult], Host, str, float]:
    """The same selftest binaries against the model, through the preload library and server
    (`iommufd-conformance exec`): (results per binary, what this host granted them, output,
    seconds)."""
    from conformance.server import build_preload

    bindir = build_selftests(kernel, source, log=log)
    build_preload()
    results, outputs = [], []
    start = time.monotonic()
    with host_hugepages(HUGEPAGES, log) as hugepages:
        for t in SELFTESTS:
            log(f"running {t} against the model ({hugepages} huge pages reserved on this host)")
            try:
                res = subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--", str(bindir / t)],
                                     cwd=bindir, capture_output=True, text=True, timeout=timeout,
                                     env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
                out, status = res.stdout + res.stderr, res.returncode
            except subprocess.TimeoutExpired as e:
                out, status = (e.stdout or b"").decode(errors="replace") + "\n# timed out", None
            r = parse_kselftest(t, out)
            r.exit_status = status
            results.append(r)
            outputs.append(f"@@@ {t}\n{out}")
    return results, Host.now(hugepages), "\n".join(outputs), time.monotonic() - start


# -- the VFIO selftests on the model ------------------------------------------------------------

HUGEPAGE_1G_PATH = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
VFIO_HUGEPAGES_1G = 2  # as the VM reserves at boot (run_vfio_selftests)


@dataclass(frozen=True)
class VfioHost:
    """What this machine and the server grant the VFIO selftests on the model, read at run time."""
    hugepages: int  # 2 MiB huge pages reserved for the run
    hugepages_1g: int  # 1 GiB huge pages reserved for the run
    container: str  # what plays /dev/vfio/vfio: conformance.served_vfio.VFIO_CONTAINER

    @classmethod
    def now(cls, hugepages: int, hugepages_1g: int) -> "VfioHost":
        from conformance.served_vfio import VFIO_CONTAINER
        return cls(hugepages, hugepages_1g, VFIO_CONTAINER)


_TYPE1 = ("VFIO's type1 container follows a VM_PFNMAP range to its PFNs and maps it "
          "(vaddr_get_pfns() -> follow_fault_pfn(), vfio_iommu_type1.c); the model serves /dev/vfio/vfio "
          "with iommufd's compat container, as CONFIG_IOMMUFD_VFIO_CONTAINER does, whose "
          "pin_user_pages() refuses VM_IO|VM_PFNMAP (EFAULT)")
VFIO_MODEL_EXCUSES: tuple[Excuse, ...] = (
    Excuse("vfio_dma_mapping_mmio_test.vfio_type1_iommu.*", lambda h: h.container == "iommufd", _TYPE1),
    Excuse("vfio_dma_mapping_mmio_test.vfio_type1v2_iommu.*", lambda h: h.container == "iommufd", _TYPE1),
    Excuse("*hugetlb_2mb*", lambda h: h.hugepages < 1,
           "MAP_HUGETLB | MAP_HUGE_2MB needs a 2 MiB huge page on this host (none could be reserved): the test skips"),
    Excuse("*hugetlb_1gb*", lambda h: h.hugepages_1g < 1,
           "MAP_HUGETLB | MAP_HUGE_1GB needs a 1 GiB huge page on this host (none could be reserved: "
           "gigantic pages at run time need CONFIG_CONTIG_ALLOC and contiguous free memory): the test skips"),
)


def vfio_model_failure_reason(case: str, host: VfioHost) -> str | None:
    """Why the model may fail (or skip) VFIO selftest `case` on this host, or None."""
    for e in VFIO_MODEL_EXCUSES:
        if fnmatch.fnmatchcase(case, e.pattern) and e.holds(host):
            return e.reason
    return None


@contextlib.contextmanager
def host_gigantic_pages(n: int, log: Callable[[str], None] = print):
    """At least `n` 1 GiB huge pages reserved for the duration (put back after); yields how many
    are free to the run (0 where this host has no 1 GiB page size or cannot allocate them)."""
    try:
        before = int(HUGEPAGE_1G_PATH.read_text())
    except (OSError, ValueError):
        yield 0
        return
    raised = False
    if before < n:
        try:
            HUGEPAGE_1G_PATH.write_text(str(n))
            raised = True
        except OSError as e:
            log(f"could not reserve {n} 1 GiB huge pages ({e.strerror})")
    try:
        free = int(HUGEPAGE_1G_PATH.with_name("free_hugepages").read_text())
    except (OSError, ValueError):
        free = 0
    try:
        yield free
    finally:
        if raised:
            try:
                HUGEPAGE_1G_PATH.write_text(str(before))
            except OSError:
                pass


def vfio_model_unavailable() -> str | None:
    """Why the VFIO selftests cannot run on the model here (checked now), or None."""
    from conformance import sysfs_tree
    return sysfs_tree.unavailable()


def run_vfio_selftests_model(kernel: Path, profile: str = "vtd", source: Path | None = None, timeout: float = 900,
                             log: Callable[[str], None] = print
                             ) -> tuple[list[SelftestResult], VfioHost, str, float]:
    """The VFIO selftest binaries the VM runs, each against the model's machine of `profile`
    (`iommufd-conformance exec --profile PROFILE`: the preload library and server, in a private
    mount namespace showing the profile's sysfs: conformance/sysfs_tree.py), on the same devices
    (the first; init_perf_test on all): (results per binary, what the host granted, output,
    seconds). The caller checks vfio_model_unavailable() first."""
    from conformance.server import build_preload
    from conformance.targets import ModelTarget
    from model.profile import load

    prof = load(ModelTarget(profile=profile).model_profile())
    bdfs = [d.bdf for d in prof.devices]
    if not bdfs:
        raise vm.VmError(f"profile {prof.name} has no PCI devices to run the VFIO selftests on",
                         vm.VmResult(None, "", ""))
    bindir = build_vfio_selftests(kernel, source, log=log)
    build_preload()
    results, outputs = [], []
    start = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with host_hugepages(HUGEPAGES, log) as hugepages, host_gigantic_pages(VFIO_HUGEPAGES_1G, log) as gigantic:
        for t in VFIO_SELFTESTS:
            args = bdfs if t == "vfio_pci_device_init_perf_test" else bdfs[:1]
            log(f"running {t} against the model's {prof.name}")
            t0 = time.monotonic()
            try:
                res = subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--profile", profile, "--",
                                      str(bindir / t), *args], cwd=bindir, capture_output=True, text=True,
                                     timeout=timeout, env=env)
                out, status = res.stdout + res.stderr, res.returncode
            except subprocess.TimeoutExpired as e:
                out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
                out, status = out + "\n# timed out", None
            r = parse_kselftest(t, out)
            r.exit_status = status
            r.seconds = time.monotonic() - t0
            _whole_skip(r, out)
            results.append(r)
            outputs.append(f"@@@ {t}\n{out}")
    return results, VfioHost.now(hugepages, gigantic), "\n".join(outputs), time.monotonic() - start
