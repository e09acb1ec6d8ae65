"""Build (and cache) the iommufd test kernel.

Debian builds no kernel with CONFIG_IOMMUFD, so the test kernel is Debian's linux-source-SERIES
(SERIES: model/uapi.py, the version the model implements; another series for a kernel matrix)
configured with `make allnoconfig` plus conformance/kernel/iommufd.config (everything the guest
needs is named there; conformance/kernel/absent.json lists symbols an older series does not
have), optionally with patches applied (a kernel developer's series). Kernels
are cached outside the clone, under cache_dir()/kernels/<key>/, where key hashes the source
version, the fragment and the compiler; the build directory is kept under
cache_dir()/build/<key>/ so rebuilds are incremental, and compiles go through ccache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from codegen import debian
from codegen.debian import DependencyError, ensure_packages  # noqa: F401 (callers catch it here)
from model.uapi import SERIES

FRAGMENT = Path(__file__).resolve().parent / "kernel" / "iommufd.config"
ABSENT = Path(__file__).resolve().parent / "kernel" / "absent.json"
BUILD_PACKAGES = debian.PACKAGES["kernel build"]


# What a production kernel lacks: the selftest's mock IOMMU and its uapi (IOMMU_TEST_CMD), which no
# distribution builds. Everything else stays, so the two images differ in that option alone.
TEST_ONLY = "CONFIG_IOMMUFD_TEST"


def fragment_for(series: str, production: bool = False) -> str:
    """iommufd.config less the settings of symbols `series` does not have (absent.json); with
    `production`, CONFIG_IOMMUFD_TEST is off (`kernel build --no-iommufd-test`)."""
    absent = set(json.loads(ABSENT.read_text()).get(series, []))
    text = FRAGMENT.read_text()
    if absent:
        text = "".join(ln for ln in text.splitlines(keepends=True) if ln.split("=", 1)[0].strip() not in absent)
    if production:
        text = text.replace(f"{TEST_ONLY}=y\n", f"# {TEST_ONLY} is not set\n")
    return text


class KernelBuildError(RuntimeError):
    pass


def _gcc_version() -> str | None:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def makefile_version(tree: Path) -> str:
    head = (tree / "Makefile").read_text(errors="replace")[:2000]
    v = {k: (re.search(rf"^{k}\s*=\s*(\S*)", head, re.M) or [None, ""])[1]
         for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION")}
    return f"{v['VERSION']}.{v['PATCHLEVEL']}.{v['SUBLEVEL']}{v['EXTRAVERSION']}"


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _debian_source_id(series: str, version: str) -> str:
    return f"debian linux-source-{series} {version}"


def _key(source_id: str, fragment: str, gcc: str) -> str:
    return sha256(json.dumps([source_id, fragment, gcc]))[:16]


def kernels_dir() -> Path:
    return debian.cache_dir() / "kernels"


def cached_kernel(series: str = SERIES, production: bool = False) -> Path | None:
    """The newest cached bzImage built from Debian's linux-source-SERIES (no patches) with this
    fragment and compiler.

    Offline and instant: no apt lookup, so a newer linux-source in sid does not invalidate it
    (`kernel build --refresh` does that).
    """
    gcc = _gcc_version()
    info = _cached_info(fragment_for(series, production), gcc, series) if gcc else None
    return Path(info["bzimage"]) if info else None


def _cached_info(fragment: str, gcc: str, series: str) -> dict | None:
    best = None
    for f in kernels_dir().glob("*/info.json"):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if (info.get("debian_source") and info.get("fragment_sha256") == sha256(fragment)
                and info.get("version", "").startswith(series + ".") and not info.get("patches")
                and info.get("gcc") == gcc and (f.parent / "bzImage").is_file()
                and (best is None or info["date"] > best["date"])):
            best = dict(info, bzimage=str(f.parent / "bzImage"))
    return best


@contextmanager
def locked(path: Path) -> Iterator[None]:
    # Two runs (CI jobs sharing a cache, pytest-xdist) must not build into one directory at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def make(tree: Path, args: list[str], logfile: Path, env: dict[str, str], what: str) -> None:
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


def make_jobs(jobs: int | None) -> int:
    return jobs or len(os.sched_getaffinity(0)) + 1


def make_env() -> dict[str, str]:
    ccache = debian.cache_dir() / "ccache"
    ccache.mkdir(parents=True, exist_ok=True)
    # A fixed build user/host/timestamp keep ccache hits and the image independent of the machine.
    return dict(os.environ, CCACHE_DIR=str(ccache), KBUILD_BUILD_USER="iommufd-conformance",
                KBUILD_BUILD_HOST="build", KBUILD_BUILD_TIMESTAMP="1970-01-01")


def _patched_tree(tree: Path, version: str, patches: list[Path], log) -> tuple[Path, list[dict]]:
    """A copy of `tree` (hard links: nothing is copied but what the patches change) with
    `patches` applied in order with `patch -p1`; cached by the tree's version and the patches."""
    info = [{"file": str(p), "sha256": sha256(p.read_bytes())} for p in patches]
    key = sha256(json.dumps([str(tree), version, [i["sha256"] for i in info]]))[:16]
    out = debian.cache_dir() / "patched" / key
    if (out / ".applied").is_file():
        return out, info
    ensure_packages(["patch"], why="to apply the kernel patches")
    tmp = out.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(tree), str(tmp)], check=True)
    for p in patches:
        log(f"applying {p}")
        r = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(p.resolve())], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KernelBuildError(f"{p} does not apply to {version}:\n{(r.stdout + r.stderr).strip()[-2000:]}")
    (tmp / ".applied").write_text(json.dumps(info) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, info


def _seed_from(sibling: Path, build: Path, log: Callable[[str], None]) -> None:
    """Start a production build from a copy of the test kernel's finished build directory: the two
    configurations differ in CONFIG_IOMMUFD_TEST alone, and kbuild's per-option dependencies
    (fixdep) then rebuild only what that option reaches, instead of the whole kernel."""
    if not (sibling / "arch" / "x86" / "boot" / "bzImage").is_file():
        return
    log(f"seeding the build directory from {sibling}")
    tmp = build.with_name(f".{build.name}.seed-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(sibling, tmp, symlinks=True)
    shutil.rmtree(build, ignore_errors=True)
    tmp.rename(build)


def build_kernel(source: Path | None = None, jobs: int | None = None, log: Callable[[str], None] = print,
                 refresh: bool = False, series: str = SERIES, patches: list[Path] | tuple = (),
                 production: bool = False) -> Path:
    """Build (or find in the cache) the test kernel; returns the bzImage path.

    Without `source`, Debian's linux-source-SERIES is used and a cached image for it is returned
    at once (offline); refresh=True first asks Debian for a newer one. With a `source` tree (e.g.
    a kernel developer's checkout, whose files change under the same version) make always runs,
    incrementally, in the kept build directory. `patches` are applied (patch -p1, in order) to
    a copy of the tree; the cache key covers them. `production` builds the same kernel without
    CONFIG_IOMMUFD_TEST (what a distribution ships); it has its own cache key.
    """
    fragment, gcc = fragment_for(series, production), _gcc_version()
    patches = [Path(p) for p in patches]
    for p in patches:
        if not p.is_file():
            raise KernelBuildError(f"no patch file {p}")
    if gcc is None:
        raise DependencyError("gcc does not run; install the Debian package gcc")
    if source is None and not patches and not refresh and (hit := _cached_info(fragment, gcc, series)):
        return Path(hit["bzimage"])  # a cache hit needs no build packages
    ensure_packages(BUILD_PACKAGES, why="to build the test kernel")
    patch_info: list[dict] = []
    if source is None:
        if series not in debian.SUITE_OF_SERIES:
            raise KernelBuildError(f"no Debian source for series {series}; known: {', '.join(debian.SUITE_OF_SERIES)}"
                                   " (or give --source)")
        tree, version = debian.source_tree(series)
        source_id = _debian_source_id(series, version)
        if patches:
            tree, patch_info = _patched_tree(tree, version, patches, log)
            source_id += " + " + " ".join(i["sha256"][:12] for i in patch_info)
    else:
        tree = Path(source).resolve()
        if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
            raise KernelBuildError(f"{tree} is not a kernel source tree (no Makefile/Kconfig)")
        version = makefile_version(tree)
        source_id = f"{tree} {version}"
        if patches:
            tree, patch_info = _patched_tree(tree, version, patches, log)
            source_id += " + " + " ".join(i["sha256"][:12] for i in patch_info)
    key = _key(source_id, fragment, gcc)
    final = kernels_dir() / key
    build = debian.cache_dir() / "build" / key
    with locked(build.with_name(key + ".lock")):
        if source is None and (final / "bzImage").is_file():
            return final / "bzImage"
        fragment_file = build.with_name(key + ".config-fragment")
        fragment_file.write_text(fragment)
        if production and not (build / ".config").exists():
            _seed_from(debian.cache_dir() / "build" / _key(source_id, fragment_for(series), gcc), build, log)
        build.mkdir(parents=True, exist_ok=True)
        logfile = build / "build.log"
        logfile.write_text(f"{source_id}\n")
        env = make_env()
        common = [f"O={build}", "ARCH=x86_64", "CC=ccache gcc"]
        log(f"building the {version} test kernel in {build} (-j{make_jobs(jobs)}; log {logfile})")
        t0 = time.monotonic()
        make(tree, [*common, f"KCONFIG_ALLCONFIG={fragment_file}", "allnoconfig"], logfile, env, "configuring")
        config = (build / ".config").read_text()
        if lost := check_config(fragment, config):
            raise KernelBuildError(
                f"{len(lost)} setting(s) of {FRAGMENT.name} did not survive allnoconfig (a dependency is "
                f"missing from the fragment, or the symbol is gone in {version}):\n  " + "\n  ".join(lost))
        make(tree, [*common, f"-j{make_jobs(jobs)}", "bzImage"], logfile, env, "building bzImage")
        seconds = time.monotonic() - t0
        image = build / "arch" / "x86" / "boot" / "bzImage"
        if source is not None and (final / "bzImage").is_file() and \
                (final / "bzImage").read_bytes() == image.read_bytes():
            return final / "bzImage"
        info = {
            "source": source_id, "debian_source": source is None, "tree": str(tree), "version": version,
            "build_dir": str(build), "config_sha256": sha256(config), "fragment_sha256": sha256(fragment),
            "gcc": gcc, "build_seconds": round(seconds, 1), "date": datetime.now(timezone.utc).isoformat(),
            "key": key, "series": series, "patches": patch_info, "iommufd_test": not production,
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


def kernel_info(bzimage: Path) -> dict:
    try:
        return json.loads((bzimage.parent / "info.json").read_text())
    except (OSError, ValueError):
        return {}
