"""`headers fetch`: copy the uapi headers into headers/linux_X_Y/ with their provenance.

Sources are Debian's linux-source-X.Y packages (codegen.debian) or any kernel tree.
Beside the headers go MANIFEST.json (package, version, path inside the package,
sha256) and ioctl_facts.json: the facts the header does not state, read from the
IOCTL_OP table in drivers/iommu/iommufd/main.c, each citing its source line.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from codegen import debian

# Header files per kernel series: (path in the kernel tree, name under headers/).
HEADER_FILES = {
    "7.2": [
        ("include/uapi/linux/iommufd.h", "iommufd.h"),
        ("drivers/iommu/iommufd/iommufd_test.h", "iommufd_test.h"),
        ("include/linux/mm_types.h", "mm_types.h"),
        # The VFIO type1 ioctls /dev/iommu answers (vfio_compat.c) are declared here.
        ("include/uapi/linux/vfio.h", "vfio.h"),
    ],
    "6.12": [
        ("include/uapi/linux/iommufd.h", "iommufd.h"),
        ("drivers/iommu/iommufd/iommufd_test.h", "iommufd_test.h"),
        # The VFIO device cdev (BIND/ATTACH), regions and the type1 ioctls: device tests on 6.12.
        ("include/uapi/linux/vfio.h", "vfio.h"),
    ],
}
MAIN_C = "drivers/iommu/iommufd/main.c"
MAKEFILE = "Makefile"


def version_dir(series: str) -> str:
    return "linux_" + series.replace(".", "_")


def ioctl_facts_from_main_c(text: str) -> list[dict]:
    """The rows of iommufd_ioctl_ops[]: IOCTL_OP(ioctl, handler, struct type, last field).

    min_size is offsetofend(struct, last) (IOCTL_OP in main.c); codegen turns the
    field name into a number once it knows the layout.
    """
    facts = []
    start = text.find("iommufd_ioctl_ops[] = {")
    if start < 0:
        raise ValueError(f"{MAIN_C}: no iommufd_ioctl_ops[] table")
    for m in re.finditer(
        r"IOCTL_OP\(\s*(\w+)\s*,\s*(\w+)\s*,\s*struct\s+(\w+)\s*,\s*(\w+)\s*\)", text[start:]
    ):
        line = text.count("\n", 0, start + m.start()) + 1
        facts.append(
            {
                "ioctl": m.group(1),
                "handler": m.group(2),
                "struct": m.group(3),
                "min_size_last_field": m.group(4),
                "source": f"{MAIN_C}:{line}",
                "rule": "min_size = offsetofend(struct, last field); smaller user size -> EINVAL",
            }
        )
    if not facts:
        raise ValueError(f"{MAIN_C}: no IOCTL_OP rows in iommufd_ioctl_ops[]")
    return facts


def _kernel_version(makefile: str) -> str:
    v = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d+)", makefile, re.M))
    return f"{v.get('VERSION')}.{v.get('PATCHLEVEL')}.{v.get('SUBLEVEL')}"


def fetch(series: str, headers_root: Path, kernel_tree: Path | None = None) -> Path:
    """Write headers/linux_X_Y/ for `series`; returns that directory."""
    if series not in HEADER_FILES:
        raise ValueError(f"unknown kernel series {series!r}; known: {', '.join(HEADER_FILES)}")
    wanted = [src for src, _ in HEADER_FILES[series]] + [MAIN_C, MAKEFILE]
    if kernel_tree is not None:
        files = {}
        for rel in wanted:
            p = kernel_tree / rel
            if not p.is_file():
                raise debian.FetchError(f"{kernel_tree} is not a kernel tree with {rel}")
            files[rel] = p.read_bytes()
        origin = {"kernel_tree": str(kernel_tree.resolve())}
    else:
        tarball, package, version = debian.source_tarball(series)
        files = debian.extract_members(tarball, wanted)
        origin = {
            "package": package,
            "version": version,
            "suite": debian.SUITE_OF_SERIES[series],
            "tarball": f"/usr/src/{tarball.name}",
        }
    kver = _kernel_version(files[MAKEFILE].decode())
    if not kver.startswith(series + "."):
        raise debian.FetchError(f"kernel source is {kver}, not {series}.x")
    out = headers_root / version_dir(series)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for src, name in HEADER_FILES[series]:
        data = files[src]
        (out / name).write_bytes(data)
        entries.append({"file": name, "path_in_source": src, "sha256": hashlib.sha256(data).hexdigest()})
    facts = ioctl_facts_from_main_c(files[MAIN_C].decode())
    (out / "ioctl_facts.json").write_text(
        json.dumps(
            {
                "from": MAIN_C,
                "from_sha256": hashlib.sha256(files[MAIN_C]).hexdigest(),
                "ioctls": facts,
            },
            indent=2,
        )
        + "\n"
    )
    manifest = {"kernel_version": kver, **origin, "files": entries}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
