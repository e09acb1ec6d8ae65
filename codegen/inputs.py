"""What `diff` (and anything else that reads header sets) accepts as OLD or NEW:
- a version: "7.2" (headers/linux_7_2/);
- a headers directory, with or without MANIFEST.json;
- a kernel source tree (include/uapi/linux/iommufd.h ...; its main.c gives the ioctl facts);
- one header file, such as a patched iommufd.h (named for what it is when its name says so, else
  taken as iommufd.h).

Anything but a headers/linux_X_Y directory is staged, as copies named for their role, in a
temporary directory; errors name the user's files, not the copies.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from codegen import fetch
from codegen.ir import HeaderError, Module
from codegen.parse import parse_version

ROLES = ("iommufd.h", "iommufd_test.h", "vfio.h", "mm_types.h")
# Where each role lives in a kernel tree (the newest series' layout; older ones have fewer).
TREE_PATHS = {name: src for series in fetch.HEADER_FILES.values() for src, name in series}


def _version_dir(spec: str, root: Path) -> Path | None:
    d = root / "headers" / fetch.version_dir(spec.removeprefix("linux_").replace("_", "."))
    return d if d.is_dir() else None


def _staged(files: dict[str, Path], label: str, root: Path, main_c: Path | None = None) -> Module:
    """Parse `files` (role -> path) as a header set called `label`."""
    with tempfile.TemporaryDirectory(prefix="iommufd-diff-") as tmp:
        d = Path(tmp) / "linux_input"
        d.mkdir()
        for role, src in files.items():
            shutil.copyfile(src, d / role)
        if main_c is not None:
            text = main_c.read_text(errors="replace")
            (d / "ioctl_facts.json").write_text(json.dumps(
                {"from": fetch.MAIN_C, "ioctls": fetch.ioctl_facts_from_main_c(text)}, indent=2) + "\n")
        (d / "MANIFEST.json").write_text(json.dumps({"kernel_version": label}) + "\n")
        try:
            module = parse_version(d, root)
        except HeaderError as e:
            msg = str(e)
            for role, src in files.items():
                msg = msg.replace(str(d / role), str(src)).replace(str((d / role).resolve()), str(src))
            raise HeaderError(None, msg) from None
    return module


def load(spec: str, root: Path) -> Module:
    """The Module for OLD or NEW; FileNotFoundError when `spec` is none of the accepted forms."""
    if (d := _version_dir(spec, root)) is not None:
        return parse_version(d, root)
    p = Path(spec)
    if p.is_dir() and (p / "MANIFEST.json").is_file():
        return parse_version(p, root)
    if p.is_dir() and (p / TREE_PATHS["iommufd.h"]).is_file():
        files = {role: p / rel for role, rel in TREE_PATHS.items() if (p / rel).is_file()}
        main_c = p / fetch.MAIN_C
        mk = p / fetch.MAKEFILE
        label = fetch._kernel_version(mk.read_text(errors="replace")) if mk.is_file() else str(p)
        return _staged(files, label, root, main_c if main_c.is_file() else None)
    if p.is_dir() and (p / "iommufd.h").is_file():
        return _staged({role: p / role for role in ROLES if (p / role).is_file()}, str(p), root)
    if p.is_file():
        role = p.name if p.name in ROLES else "iommufd.h"
        return _staged({role: p}, str(p), root)
    raise FileNotFoundError(f"no headers for {spec!r}: give a version (6.12), a headers directory, "
                            "a kernel tree or a header file")
