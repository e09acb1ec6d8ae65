"""Proof of layout: a C program generated from the IR, compiled with gcc against the real headers.

It prints sizeof / alignof of every record, offsetof and sizeof of every named field
(through anonymous members, by dotted path), every enumerator and every #define
value. The uapi headers compile against the system's <linux/types.h>; the mm_types.h
declarations are kernel-internal, so the probe compiles the same slice codegen parses.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from codegen.ir import Module
from codegen.preprocess import HEADERS_INSTALL_STRIPS, slice_mm_types


def probe_source(module: Module, version_dir: Path) -> tuple[str, dict[str, str]]:
    """(C source, {include path: file text}) of the probe program."""
    files = {}
    inc = ["#include <stdio.h>", "#include <stddef.h>"]
    for name in ("iommufd.h", "iommufd_test.h", "vfio.h"):
        if (version_dir / name).exists():
            files[f"linux/{name}"] = (version_dir / name).read_text()
            inc.append(f"#include <linux/{name}>")
    if (version_dir / "mm_types.h").exists():
        files["mm_slice.h"] = slice_mm_types((version_dir / "mm_types.h").read_text(), "mm_types.h")
        inc.append('#include "mm_slice.h"')
    body = []
    for r in module.records.values():
        if r.anonymous:
            continue  # reached through their parents' dotted paths
        t = f"{r.kind} {r.name}"
        body.append(f'printf("sizeof {r.name} %zu\\n", sizeof({t}));')
        body.append(f'printf("alignof {r.name} %zu\\n", _Alignof({t}));')
        for path, _off, f in r.flat_fields(0, module.records):
            if f.bit_width is not None:
                # offsetof cannot name a bitfield: set it in a zeroed object, report the byte.
                body.append(
                    f"{{ union {{ {t} s; unsigned char b[sizeof({t})]; }} u = {{0}}; u.s.{path} = 1; "
                    f"for (size_t i = 0; i < sizeof(u.b); i++) if (u.b[i]) "
                    f'printf("bitbyte {r.name}.{path} %zu\\nbitval {r.name}.{path} %u\\n", i, u.b[i]); }}'
                )
                continue
            if f.type.length == 0:
                continue  # a flexible array has no size
            body.append(f'printf("offsetof {r.name}.{path} %zu\\n", offsetof({t}, {path}));')
            body.append(f'printf("sizeof {r.name}.{path} %zu\\n", sizeof((({t} *)0)->{path}));')
    for e in module.enums.values():
        for x in e.enumerators:
            body.append(f'printf("enum {x.name} %lld\\n", (long long)({x.name}));')
    for c in module.constants.values():
        if isinstance(c.value, str):
            body.append(f'printf("string {c.name} %s\\n", {c.name});')
        else:
            body.append(f'printf("define {c.name} %lld\\n", (long long)({c.name}));')
    src = "\n".join(inc) + "\nint main(void)\n{\n\t" + "\n\t".join(body) + "\n\treturn 0;\n}\n"
    return src, files


def run_probe(module: Module, version_dir: Path) -> dict[str, int]:
    """Compile and run the probe; {"sizeof iommu_ioas_map": 40, ...}."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: install the Debian package gcc (and linux-libc-dev)")
    src, files = probe_source(module, version_dir)
    with tempfile.TemporaryDirectory(prefix="iommufd-probe-") as tmp:
        t = Path(tmp)
        for rel, text in files.items():
            (t / rel).parent.mkdir(parents=True, exist_ok=True)
            (t / rel).write_text(text)
        (t / "probe.c").write_text(src)
        strips = [f"-D{name}=" for name in HEADERS_INSTALL_STRIPS]  # as headers_install does
        # 7.2's uapi <linux/stddef.h> defines these empty; the system's may be older.
        strips += [f"-D{m}(x)=" for m in ("__counted_by", "__counted_by_le", "__counted_by_be")]
        p = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", *strips, "-I", tmp, "-o", str(t / "probe"), str(t / "probe.c")],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"the layout probe does not compile:\n{p.stderr[-3000:]}")
        out = subprocess.run([str(t / "probe")], capture_output=True, text=True, check=True).stdout
    result: dict[str, int | str] = {}
    for line in out.splitlines():
        if line.startswith("string "):
            _, name, text = line.split(" ", 2)
            result[f"string {name}"] = text
            continue
        m = re.match(r"^(\w+ \S+) (-?\d+)$", line)
        if m:
            result[m.group(1)] = int(m.group(2))
    return result
