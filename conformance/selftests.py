"""The kernel's own iommufd selftests (tools/testing/selftests/iommu): build them from the test
kernel's tree, run them in its VM, read their TAP."""
from __future__ import annotations

import os
import re
import shutil
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


def build_selftests(kernel: Path, source: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build iommufd and iommufd_fail_nth from the kernel's tree (cached beside the kernel key)."""
    debian.ensure_packages(BUILD_PACKAGES + SELFTEST_PACKAGES, why="to build the iommufd selftests")
    info = kernel_info(kernel)
    if source is not None:
        tree = Path(source).resolve()
    elif info.get("tree") and Path(info["tree"], "Makefile").is_file():
        tree = Path(info["tree"])
    else:
        tree, _ = debian.source_tree(SERIES)
    key = info.get("key") or sha256(f"{tree} {makefile_version(tree)}")[:16]
    out = debian.cache_dir() / "selftests" / key
    if all((out / t).is_file() for t in SELFTESTS):
        return out
    hdr = debian.cache_dir() / "build" / key
    with locked(hdr.with_name(key + ".lock")):
        hdr.mkdir(parents=True, exist_ok=True)
        logfile = hdr / "selftests.log"
        logfile.write_text("")
        env = make_env()
        log(f"building the iommufd selftests from {tree} (log {logfile})")
        make(tree, [f"O={hdr}", "ARCH=x86_64", "headers"], logfile, env, "make headers")
        tmp = out.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        make(tree / "tools" / "testing" / "selftests" / "iommu",
              [f"OUTPUT={tmp}", f"KHDR_INCLUDES=-isystem {hdr / 'usr' / 'include'}", f"-j{make_jobs(None)}"],
              logfile, env, "building the iommufd selftests")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


@dataclass
class SelftestResult:
    name: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    exit_status: int | None = None
    totals_line: str = ""  # the harness's own "# Totals: ..." line, to cross-check the parse


_TAP = re.compile(r"^(ok|not ok) \d+ (\S+)(?:\s+#\s*(SKIP|XFAIL|TODO)\b.*)?$", re.I)


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
            elif verdict == "ok" or directive == "XFAIL":
                r.passed.append(case)
            else:
                r.failed.append(case)
    return r


def run_selftests(kernel: Path, source: Path | None = None, timeout: float = 900,
                  log: Callable[[str], None] = print) -> tuple[list[SelftestResult], list[str], str]:
    """Boot `kernel` and run the iommufd selftests: (results per binary, kernel findings, output)."""
    bindir = build_selftests(kernel, source, log=log)
    # One boot for both binaries; markers split the output.
    script = "; ".join(f'echo "@@@ {t}"; ./{t}; echo "@@@ {t} exit $?"' for t in SELFTESTS)
    log(f"running {', '.join(SELFTESTS)} in a 2G guest with 64 huge pages")
    res = vm.run_in_vm(kernel, ["sh", "-c", script], cwd=str(bindir), memory="2G", hugepages=64, timeout=timeout)
    results = []
    for t in SELFTESTS:
        m = re.search(rf"^@@@ {t}\n(.*?)^@@@ {t} exit (\d+)$", res.stdout, re.S | re.M)
        r = parse_kselftest(t, m[1] if m else "")
        r.exit_status = int(m[2]) if m else None
        results.append(r)
    return results, res.findings, res.stdout
