"""This host's Debian: the cache directory, the packages the project's jobs need, and Debian's
linux-source packages, fetched without touching the system's apt state.

The machine stays on its own suite: a private sources file (the system's Debian entry
with the suite changed) and a private list directory under the cache are passed to
apt-get with -o Dir::Etc::sourcelist / Dir::State::Lists, so `apt-get download`
sees sid's or stable's packages while /var/lib/apt is untouched.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# Which suite carries which kernel series (Debian: stable has 6.12, sid has 7.2).
SUITE_OF_SERIES = {"7.2": "sid", "6.12": "stable"}

# The Debian packages each job needs (ensure_packages() installs what is missing; .ci/run
# installs them all up front with `python3 -m codegen.debian packages`).
PACKAGES = {
    "python": ["python3-venv"],  # the README's commands make a virtual environment (PEP 668)
    "codegen": ["gcc", "cpp", "libc6-dev", "linux-libc-dev"],  # the preprocessor, the layout proof
    "kernel build": ["gcc", "make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "ccache", "cpio", "xz-utils",
                     "patch"],
    "selftests": ["libcap-dev", "rsync", "uuid-dev"],  # rsync: lib.mk copies files; uuid: the VFIO selftests' libvfio
    "vm": ["qemu-system-x86"],
    "distributed": ["redis-server"],  # explore --db's shared example database (its tests start their own)
}


class FetchError(RuntimeError):
    """A package could not be fetched; the message says what to do."""


def cache_dir() -> Path:
    """Where expensive artefacts live, outside any clone (kernels, sources, ccache)."""
    root = os.environ.get("IOMMUFD_CONFORMANCE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iommufd-conformance"


def _system_debian_stanza() -> tuple[str, str]:
    """(URI, Signed-By) of the system's main Debian entry, deb822 or one-line format."""
    d822 = Path("/etc/apt/sources.list.d")
    for f in sorted(d822.glob("*.sources")) if d822.is_dir() else []:
        for stanza in f.read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines() if not ln.startswith("#"))
                if _
            )
            uri = fields.get("URIs", "")
            if "debian" in uri and "security" not in uri and "deb" in fields.get("Types", "").split():
                return uri.split()[0], fields.get("Signed-By", "/usr/share/keyrings/debian-archive-keyring.gpg")
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for ln in legacy.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", ln)
            if m and "debian" in m.group(1) and "security" not in m.group(1):
                return m.group(1), "/usr/share/keyrings/debian-archive-keyring.gpg"
    raise FetchError("no Debian entry in /etc/apt/sources.list(.d); this command needs a Debian system with apt")


def apt_options(suite: str) -> list[str]:
    """apt-get -o options that point apt at `suite` through private files in the cache."""
    base = cache_dir() / "apt" / suite
    lists = base / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    src = base / "debian.sources"
    uri, signed_by = _system_debian_stanza()
    text = f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: {signed_by}\n"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    return [
        "-o", f"Dir::Etc::sourcelist={src}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={lists}",
        "-o", "APT::Sandbox::User=root",
    ]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise FetchError(f"{cmd[0]} not found; fetching Debian packages needs apt (a Debian system)")
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise FetchError(f"{' '.join(cmd[:2])} failed ({p.returncode}):\n{p.stderr.strip()[-2000:]}")
    return p.stdout


def _update(suite: str, max_age_s: float = 6 * 3600) -> list[str]:
    opts = apt_options(suite)
    stamp = cache_dir() / "apt" / suite / "updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > max_age_s:
        _run(["apt-get", *opts, "update"])
        stamp.touch()
    return opts


def candidate_version(package: str, suite: str) -> str:
    opts = _update(suite)
    out = _run(["apt-cache", *opts, "policy", package])
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise FetchError(f"package {package} is not in Debian {suite}")
    return m.group(1)


def fetch_deb(package: str, suite: str) -> tuple[Path, str]:
    """Download `package` from `suite` into the cache; returns (path to .deb, version)."""
    version = candidate_version(package, suite)
    dest = cache_dir() / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    deb = dest / f"{package}_{version.replace(':', '%3a')}_all.deb"
    if not deb.exists():
        for old in dest.glob(f"{package}_*.deb"):
            old.unlink()
        _run(["apt-get", *_update(suite), "download", f"{package}={version}"], cwd=dest)
        if not deb.exists():
            found = sorted(dest.glob(f"{package}_*.deb"))
            if not found:
                raise FetchError(f"apt-get download {package} left no .deb in {dest}")
            deb = found[-1]
    return deb, version


def source_tarball(series: str) -> tuple[Path, str, str]:
    """(tarball path, package name, Debian version) of linux-source-SERIES."""
    package = f"linux-source-{series}"
    suite = SUITE_OF_SERIES.get(series, "sid")
    deb, version = fetch_deb(package, suite)
    out = cache_dir() / "debs" / f"{package}_{version}"
    tarball = out / "usr" / "src" / f"{package}.tar.xz"
    if not tarball.exists():
        out.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(out)])
    return tarball, package, version


def extract_members(tarball: Path, members: list[str]) -> dict[str, bytes]:
    """Read the named files (paths relative to the tree root) out of a linux-source tarball."""
    wanted = set(members)
    found: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:xz") as tf:
        for ti in tf:
            rel = ti.name.split("/", 1)[1] if "/" in ti.name else ti.name
            if rel in wanted and ti.isfile():
                f = tf.extractfile(ti)
                assert f is not None
                found[rel] = f.read()
                if len(found) == len(wanted):
                    break
    missing = wanted - set(found)
    if missing:
        raise FetchError(f"{tarball.name} has no {', '.join(sorted(missing))}")
    return found


def source_tree(series: str) -> tuple[Path, str]:
    """An extracted linux-source-SERIES tree in the cache: (path, Debian version)."""
    tarball, package, version = source_tarball(series)
    root = cache_dir() / "src" / f"{package}_{version}"
    tree = root / package
    if not (tree / "Makefile").exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        _run(["tar", "xf", str(tarball), "-C", str(root)])
    return tree, version


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


def all_packages() -> list[str]:
    return sorted({p for ps in PACKAGES.values() for p in ps})


if __name__ == "__main__":
    # `python3 -m codegen.debian packages`: every package the project's jobs use, one line.
    # `python3 -m codegen.debian mirror`: the system's Debian mirror (.ci/debian13 debootstraps from it).
    if sys.argv[1:] == ["packages"]:
        print(" ".join(all_packages()))
    elif sys.argv[1:] == ["mirror"]:
        print(_system_debian_stanza()[0])
    else:
        sys.exit("usage: python3 -m codegen.debian packages | mirror")
