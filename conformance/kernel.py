"""Build (and cache) the iommufd test kernel, and run the kernel's own iommufd selftests on it.

Debian builds no kernel with CONFIG_IOMMUFD, so the test kernel is Debian's linux-source-7.2
configured with `make allnoconfig` plus conformance/kernel/iommufd.config (everything the
guest needs is named there). Kernels are cached outside the clone, under
cache_dir()/kernels/<key>/, where key hashes the source version, the fragment and the
compiler; the build directory is kept under cache_dir()/build/<key>/ so rebuilds are
incremental, and compiles go through ccache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from codegen import debian

SERIES = "7.2"
FRAGMENT = Path(__file__).resolve().parent / "kernel" / "iommufd.config"
BUILD_PACKAGES = ["gcc", "make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "ccache", "cpio", "xz-utils"]
SELFTEST_PACKAGES = ["libcap-dev", "rsync"]  # rsync: lib.mk copies test files with it
SELFTESTS = ("iommufd", "iommufd_fail_nth")

# Selftest cases expected to fail on this kernel configuration. Measured: with
# CONFIG_TRANSPARENT_HUGEPAGE=y and 64 huge pages reserved, none fail (the 5 skips,
# iommufd.no_viommu variants, are by design).
KNOWN_SELFTEST_FAILURES: frozenset[str] = frozenset()


class DependencyError(RuntimeError):
    """A host tool is missing and cannot be installed here; the message names the package."""


class KernelBuildError(RuntimeError):
    pass


def ensure_packages(packages: list[str], why: str) -> None:
    """Install the Debian packages that are missing (as root, with apt-get), or say which."""
    if shutil.which("dpkg-query") is None:
        return  # not Debian: nothing to check with; the tools report what is missing themselves
    q = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                       capture_output=True, text=True)
    installed = {ln.split()[0] for ln in q.stdout.splitlines() if ln.endswith(" installed")}
    missing = [p for p in packages if p not in installed]
    if not missing:
        return
    hint = f"apt-get install -y {' '.join(missing)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DependencyError(f"missing Debian package(s) {', '.join(missing)} ({why}); install them: sudo {hint}")
    print(f"installing {' '.join(missing)} ({why})", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(cmd, env=env).returncode != 0:
            raise DependencyError(f"`{hint}` failed ({why})")


def _gcc_version() -> str | None:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def _makefile_version(tree: Path) -> str:
    head = (tree / "Makefile").read_text(errors="replace")[:2000]
    v = {k: (re.search(rf"^{k}\s*=\s*(\S*)", head, re.M) or [None, ""])[1]
         for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION")}
    return f"{v['VERSION']}.{v['PATCHLEVEL']}.{v['SUBLEVEL']}{v['EXTRAVERSION']}"


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _debian_source_id(version: str) -> str:
    return f"debian linux-source-{SERIES} {version}"


def _key(source_id: str, fragment: str, gcc: str) -> str:
    return _sha256(json.dumps([source_id, fragment, gcc]))[:16]


def kernels_dir() -> Path:
    return debian.cache_dir() / "kernels"


def cached_kernel() -> Path | None:
    """The newest cached bzImage built from Debian's source with this fragment and compiler.

    Offline and instant: no apt lookup, so a newer linux-source in sid does not invalidate it
    (`kernel build --refresh` does that).
    """
    gcc = _gcc_version()
    info = _cached_info(FRAGMENT.read_text(), gcc) if gcc else None
    return Path(info["bzimage"]) if info else None


def _cached_info(fragment: str, gcc: str) -> dict | None:
    best = None
    for f in kernels_dir().glob("*/info.json"):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if (info.get("debian_source") and info.get("fragment_sha256") == _sha256(fragment)
                and info.get("gcc") == gcc and (f.parent / "bzImage").is_file()
                and (best is None or info["date"] > best["date"])):
            best = dict(info, bzimage=str(f.parent / "bzImage"))
    return best


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two runs (CI jobs sharing a cache, pytest-xdist) must not build into one directory at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _make(tree: Path, args: list[str], logfile: Path, env: dict[str, str], what: str) -> None:
    with open(logfile, "a") as log:
        log.write(f"\n$ make {' '.join(args)}\n")
        log.flush()
        p = subprocess.run(["make", "-C", str(tree), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-40:])
        raise KernelBuildError(f"{what} failed (make exit {p.returncode}); log {logfile}:\n{tail}")


def _config_values(text: str) -> dict[str, str]:
    vals = {}
    for ln in text.splitlines():
        if m := re.match(r"^(CONFIG_\w+)=(.*)$", ln):
            vals[m[1]] = m[2]
        elif m := re.match(r"^# (CONFIG_\w+) is not set$", ln):
            vals[m[1]] = "n"
    return vals


def check_config(fragment: str, config: str) -> list[str]:
    """Fragment settings that did not survive into .config, as 'CONFIG_X=want (got: have)'."""
    have = _config_values(config)
    return [f"{sym}={want} (got: {have.get(sym, 'not set')})"
            for sym, want in _config_values(fragment).items() if have.get(sym, "n") != want]


def _jobs(jobs: int | None) -> int:
    return jobs or len(os.sched_getaffinity(0)) + 1


def _make_env() -> dict[str, str]:
    ccache = debian.cache_dir() / "ccache"
    ccache.mkdir(parents=True, exist_ok=True)
    # A fixed build user/host/timestamp keep ccache hits and the image independent of the machine.
    return dict(os.environ, CCACHE_DIR=str(ccache), KBUILD_BUILD_USER="iommufd-conformance",
                KBUILD_BUILD_HOST="build", KBUILD_BUILD_TIMESTAMP="1970-01-01")


def build_kernel(source: Path | None = None, jobs: int | None = None, log: Callable[[str], None] = print,
                 refresh: bool = False) -> Path:
    """Build (or find in the cache) the test kernel; returns the bzImage path.

    Without `source`, Debian's linux-source-7.2 is used and a cached image for it is returned
    at once (offline); refresh=True first asks Debian for a newer linux-source-7.2. With a
    `source` tree (e.g. a kernel developer's checkout, whose files change under the same
    version) make always runs, incrementally, in the kept build directory.
    """
    fragment, gcc = FRAGMENT.read_text(), _gcc_version()
    if gcc is None:
        raise DependencyError("gcc does not run; install the Debian package gcc")
    if source is None and not refresh and (hit := _cached_info(fragment, gcc)):
        return Path(hit["bzimage"])  # a cache hit needs no build packages
    ensure_packages(BUILD_PACKAGES, why="to build the test kernel")
    if source is None:
        tree, version = debian.source_tree(SERIES)
        source_id = _debian_source_id(version)
    else:
        tree = Path(source).resolve()
        if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
            raise KernelBuildError(f"{tree} is not a kernel source tree (no Makefile/Kconfig)")
        version = _makefile_version(tree)
        source_id = f"{tree} {version}"
    key = _key(source_id, fragment, gcc)
    final = kernels_dir() / key
    build = debian.cache_dir() / "build" / key
    with _locked(build.with_name(key + ".lock")):
        if source is None and (final / "bzImage").is_file():
            return final / "bzImage"
        build.mkdir(parents=True, exist_ok=True)
        logfile = build / "build.log"
        logfile.write_text(f"{source_id}\n")
        env = _make_env()
        common = [f"O={build}", "ARCH=x86_64", "CC=ccache gcc"]
        log(f"building the {version} test kernel in {build} (-j{_jobs(jobs)}; log {logfile})")
        t0 = time.monotonic()
        _make(tree, [*common, f"KCONFIG_ALLCONFIG={FRAGMENT}", "allnoconfig"], logfile, env, "configuring")
        config = (build / ".config").read_text()
        if lost := check_config(fragment, config):
            raise KernelBuildError(
                f"{len(lost)} setting(s) of {FRAGMENT.name} did not survive allnoconfig (a dependency is "
                f"missing from the fragment, or the symbol is gone in {version}):\n  " + "\n  ".join(lost))
        _make(tree, [*common, f"-j{_jobs(jobs)}", "bzImage"], logfile, env, "building bzImage")
        seconds = time.monotonic() - t0
        image = build / "arch" / "x86" / "boot" / "bzImage"
        if source is not None and (final / "bzImage").is_file() and \
                (final / "bzImage").read_bytes() == image.read_bytes():
            return final / "bzImage"
        info = {
            "source": source_id, "debian_source": source is None, "tree": str(tree), "version": version,
            "build_dir": str(build), "config_sha256": _sha256(config), "fragment_sha256": _sha256(fragment),
            "gcc": gcc, "build_seconds": round(seconds, 1), "date": datetime.now(timezone.utc).isoformat(),
            "key": key,
        }
        # Publish atomically: readers see either no directory or a complete one.
        tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(image, tmp / "bzImage")
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        old = final.with_name(f".{key}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        log(f"built in {seconds:.0f} s")
        return final / "bzImage"


def _kernel_info(bzimage: Path) -> dict:
    try:
        return json.loads((bzimage.parent / "info.json").read_text())
    except (OSError, ValueError):
        return {}


# --- the kernel's own selftests (tools/testing/selftests/iommu) ---------------------------


def build_selftests(kernel: Path, source: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build iommufd and iommufd_fail_nth from the kernel's tree (cached beside the kernel key)."""
    ensure_packages(BUILD_PACKAGES + SELFTEST_PACKAGES, why="to build the iommufd selftests")
    info = _kernel_info(kernel)
    if source is not None:
        tree = Path(source).resolve()
    elif info.get("tree") and Path(info["tree"], "Makefile").is_file():
        tree = Path(info["tree"])
    else:
        tree, _ = debian.source_tree(SERIES)
    key = info.get("key") or _sha256(f"{tree} {_makefile_version(tree)}")[:16]
    out = debian.cache_dir() / "selftests" / key
    if all((out / t).is_file() for t in SELFTESTS):
        return out
    hdr = debian.cache_dir() / "build" / key
    with _locked(hdr.with_name(key + ".lock")):
        hdr.mkdir(parents=True, exist_ok=True)
        logfile = hdr / "selftests.log"
        logfile.write_text("")
        env = _make_env()
        log(f"building the iommufd selftests from {tree} (log {logfile})")
        _make(tree, [f"O={hdr}", "ARCH=x86_64", "headers"], logfile, env, "make headers")
        tmp = out.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _make(tree / "tools" / "testing" / "selftests" / "iommu",
              [f"OUTPUT={tmp}", f"KHDR_INCLUDES=-isystem {hdr / 'usr' / 'include'}", f"-j{_jobs(None)}"],
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
    from conformance import vm

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


# --- command line -----------------------------------------------------------------------------


def register(subparsers) -> None:
    p = subparsers.add_parser("kernel", help="build the iommufd test kernel, run its own selftests")
    sub = p.add_subparsers(dest="kernel_command", required=True, metavar="SUBCOMMAND")
    b = sub.add_parser("build", help="build (or find cached) the test kernel; prints the bzImage path last")
    b.add_argument("--source", type=Path, help="kernel source tree (default: Debian's linux-source-7.2)")
    b.add_argument("--jobs", "-j", type=int, help="make -j (default: CPUs + 1)")
    b.add_argument("--refresh", action="store_true", help="check Debian for a newer linux-source-7.2 first")
    b.set_defaults(func=_cmd_build)
    s = sub.add_parser("selftest", help="run the kernel's tools/testing/selftests/iommu in the test VM")
    s.add_argument("--kernel", type=Path, help="bzImage (default: build or reuse the cached test kernel)")
    s.add_argument("--source", type=Path, help="kernel source tree for the selftests (default: the kernel's)")
    s.add_argument("--timeout", type=float, default=900)
    s.add_argument("-v", "--verbose", action="store_true", help="print the selftests' full output")
    s.set_defaults(func=_cmd_selftest)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _cmd_build(args) -> int:
    try:
        image = build_kernel(args.source, args.jobs, log=_err, refresh=args.refresh)
    except (KernelBuildError, DependencyError, debian.FetchError) as e:
        _err(f"kernel build: {e}")
        return 1
    print(image)
    return 0


def _cmd_selftest(args) -> int:
    from conformance import vm

    try:
        kernel = args.kernel.resolve() if args.kernel else build_kernel(args.source, log=_err)
        results, findings, output = run_selftests(kernel, args.source, timeout=args.timeout, log=_err)
    except (KernelBuildError, DependencyError, debian.FetchError) as e:
        _err(f"kernel selftest: {e}")
        return 1
    except vm.VmError as e:
        _err(f"kernel selftest: {e}")
        return 1
    if args.verbose:
        print(output)
    bad = False
    for r in results:
        unexpected = [c for c in r.failed if c not in KNOWN_SELFTEST_FAILURES]
        bad |= bool(unexpected) or r.exit_status is None or (r.exit_status != 0 and not r.failed)
        print(f"{r.name}: {len(r.passed)} pass, {len(r.failed)} fail, {len(r.skipped)} skip"
              f" (exit {r.exit_status}; harness: {r.totals_line or 'no totals line'})")
        for c in r.failed:
            print(f"  FAIL {c}{' (known)' if c in KNOWN_SELFTEST_FAILURES else ''}")
    if findings:
        print(f"kernel reports during the selftests: {len(findings)}")
        for f in findings:
            print("  " + f.replace("\n", "\n  "))
    else:
        print("kernel reports during the selftests: none")
    return 1 if bad or findings else 0
