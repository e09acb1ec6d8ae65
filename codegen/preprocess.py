"""Turn a header set into one preprocessed translation unit that pycparser can read.

* The system C preprocessor runs with stub <linux/types.h> and <linux/ioctl.h>: the
  kernel's own include kernel headers pycparser cannot read, and the stubs give the
  same sizes (alignment of the __aligned_* types is kept in ALIGN_OVERRIDES).
* Macros vanish in cpp, so object-like #defines are collected from the raw text and
  appended as `long long __iommufd_const__NAME = (NAME);` lines (each behind a #line
  pointing at the #define, so a bad one is reported where it is written).
* mm_types.h is kernel-internal: only the declarations the model needs are sliced out
  (with what they reference), and kernel-only types get the stub typedefs below.
Line markers are rewritten so every coordinate reads `headers/linux_X_Y/file.h:LINE`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from codegen.ir import Coord, HeaderError

CONST_PREFIX = "__iommufd_const__"

# Stub <linux/types.h>. Sizes are those of the kernel's uapi types on LP64; the
# __aligned_* types are 8-byte aligned on every architecture (include/uapi/linux/types.h).
TYPES_H = """\
typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef unsigned long long __aligned_u64;
typedef unsigned long long __aligned_le64;
typedef unsigned long long __aligned_be64;
typedef unsigned short __le16;
typedef unsigned short __be16;
typedef unsigned int __le32;
typedef unsigned int __be32;
typedef unsigned long long __le64;
typedef unsigned long long __be64;
typedef unsigned long __kernel_ulong_t;
typedef signed long __kernel_long_t;
"""
ALIGN_OVERRIDES = {"__aligned_u64": 8, "__aligned_le64": 8, "__aligned_be64": 8}

# Stub <linux/ioctl.h>: the asm-generic encoding (include/uapi/asm-generic/ioctl.h),
# which x86, arm64 and riscv use.
IOCTL_H = """\
#define _IOC_NRBITS 8
#define _IOC_TYPEBITS 8
#define _IOC_SIZEBITS 14
#define _IOC_NRSHIFT 0
#define _IOC_TYPESHIFT (_IOC_NRSHIFT + _IOC_NRBITS)
#define _IOC_SIZESHIFT (_IOC_TYPESHIFT + _IOC_TYPEBITS)
#define _IOC_DIRSHIFT (_IOC_SIZESHIFT + _IOC_SIZEBITS)
#define _IOC_NONE 0U
#define _IOC_WRITE 1U
#define _IOC_READ 2U
#define _IOC(dir, type, nr, size) (((dir) << _IOC_DIRSHIFT) | ((type) << _IOC_TYPESHIFT) | ((nr) << _IOC_NRSHIFT) | ((size) << _IOC_SIZESHIFT))
#define _IO(type, nr) _IOC(_IOC_NONE, (type), (nr), 0)
#define _IOR(type, nr, size) _IOC(_IOC_READ, (type), (nr), sizeof(size))
#define _IOW(type, nr, size) _IOC(_IOC_WRITE, (type), (nr), sizeof(size))
#define _IOWR(type, nr, size) _IOC(_IOC_READ | _IOC_WRITE, (type), (nr), sizeof(size))
"""

# Stub <linux/stddef.h> (vfio.h includes it): the annotation macros expand to nothing.
STDDEF_H = """\
#define __counted_by(m)
#define __counted_by_le(m)
#define __counted_by_be(m)
"""
# What scripts/headers_install.sh strips from uapi headers before installing them.
HEADERS_INSTALL_STRIPS = ("__user", "__force", "__iomem")

# Kernel-only types that the mm_types.h slice references, as they are on x86_64:
# pgprot_t (arch/x86/include/asm/pgtable_types.h), phys_addr_t with
# CONFIG_PHYS_ADDR_T_64BIT (include/linux/types.h), pgoff_t (include/linux/types.h),
# bool (include/linux/stddef.h), DECLARE_BITMAP (include/linux/types.h).
MM_STUBS = """\
typedef _Bool bool;
typedef unsigned long pgprotval_t;
typedef struct pgprot { pgprotval_t pgprot; } pgprot_t;
typedef unsigned long long phys_addr_t;
typedef unsigned long pgoff_t;
"""
MM_STUB_TYPES = {"bool", "pgprot_t", "phys_addr_t", "pgoff_t", "pgprotval_t"}
MM_MACROS = {
    "BITS_PER_LONG": "64",
    "DECLARE_BITMAP(name, bits)": "unsigned long name[((bits) + 63) / 64]",
}
# The declarations the model needs from mm_types.h (mm/util.c mmap_action_*).
MM_ROOTS = ("enum mmap_action_type", "struct mmap_action", "struct vm_area_desc")


@dataclass(frozen=True)
class Macro:
    name: str
    body: str
    coord: Coord


def display_path(path: Path, root: Path) -> str:
    """How a file is named in messages: relative to the project root when inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def read_header(path: Path, root: Path) -> str:
    """A header's text; HeaderError at the line and column of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise HeaderError(Coord(display_path(path, root), line, col),
                          f"not UTF-8 (byte {data[e.start]:#04x})") from None


def collect_macros(text: str, display: str) -> list[Macro]:
    """Object-like #defines with a body, in order (function-like ones are the stubs' business)."""
    macros = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i]
        i += 1
        m = re.match(r"\s*#\s*define\s+([A-Za-z_]\w*)(\(?)(.*)$", line)
        if not m or m.group(2):
            continue
        body = re.sub(r"/\*.*?\*/", " ", m.group(3)).split("//")[0].strip()
        if body:
            col = line.find(m.group(1)) + 1
            macros.append(Macro(m.group(1), body, Coord(display, start + 1, col)))
    return macros


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the brace that closes the one at `open_at` (comments already blanked)."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def _find_decl(text: str, spelled: str) -> tuple[int, int] | None:
    """(start, end) of `enum X {...};` / `struct X {...};` in text, by brace matching."""
    kind, name = spelled.split()
    m = re.search(rf"^{kind}\s+{re.escape(name)}\s*\{{", text, re.M)
    close = _closing_brace(text, m.end() - 1) if m else None
    if close is None:
        return None
    return m.start(), text.index(";", close) + 1


def _find_typedef(text: str, name: str) -> tuple[int, int] | None:
    """(start, end) of `typedef struct {...} name;` in text."""
    for m in re.finditer(r"^typedef\s+struct\s*\{", text, re.M):
        close = _closing_brace(text, m.end() - 1)
        if close is None:
            break
        tail = re.match(r"\s*(\w+)\s*;", text[close + 1:])
        if tail and tail.group(1) == name:
            return m.start(), close + 1 + tail.end()
    return None


def slice_mm_types(text: str, display: str, roots=MM_ROOTS) -> str:
    """The declarations `roots` name, with what they reference, each behind a #line.

    Referenced records and typedefs defined in the file are sliced too; pointers to
    other structs become opaque declarations; anything else must be a stub type.
    """
    def strip_comments(s: str) -> str:
        return re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group()), s, flags=re.S)

    clean = strip_comments(text)
    pieces: list[tuple[int, str]] = []
    seen: set[str] = set()
    opaque: set[str] = set()
    todo = list(roots)
    while todo:
        spelled = todo.pop(0)
        if spelled in seen:
            continue
        seen.add(spelled)
        span = _find_typedef(clean, spelled) if " " not in spelled else _find_decl(clean, spelled)
        if span is None:
            raise HeaderError(Coord(display, 1), f"cannot slice '{spelled}': no such declaration in the file")
        body = clean[span[0]:span[1]]
        line = clean.count("\n", 0, span[0]) + 1
        pieces.append((line, body))
        inner = body[body.index("{"):]
        for m in re.finditer(r"\b(struct|union|enum)\s+(\w+)\s*(\*)?", inner):
            ref = f"{m.group(1)} {m.group(2)}"
            if m.group(3):
                opaque.add(ref)
            elif ref not in seen:
                todo.append(ref)
        for m in re.finditer(r"^\s*(?:const\s+)?(\w+_t|bool)\s+\**\w+", inner, re.M):
            tname = m.group(1)
            if tname in MM_STUB_TYPES or tname in seen:
                continue
            if _find_typedef(clean, tname):
                todo.append(tname)
            else:
                ln = line + inner[: m.start()].count("\n") + body[: body.index("{")].count("\n")
                raise HeaderError(
                    Coord(display, ln),
                    f"cannot slice '{spelled}': it uses '{tname}', which is neither in the file nor a stub type",
                )
    out = ['#line 1 "codegen/preprocess.py:MM_STUBS"', MM_STUBS]
    out += [f"{o};" for o in sorted(opaque - seen)]
    for name, value in MM_MACROS.items():
        out.append(f"#define {name} {value}")
    # Object-like macros of the file that the slice uses (NUM_VMA_FLAG_BITS), transitively.
    defined = {m.name: m for m in collect_macros(text, display)}
    used: list[Macro] = []
    words = " ".join(body for _, body in pieces)
    while True:
        new = [defined[w] for w in dict.fromkeys(re.findall(r"\b[A-Z_][A-Z0-9_]*\b", words))
               if w in defined and defined[w] not in used]
        if not new:
            break
        used += new
        words = " ".join(m.body for m in new)
    for m in reversed(used):
        out.append(f'#line {m.coord.line} "{display}"\n#define {m.name} {m.body}')
    # Definitions must precede uses: the file's own order is the order that compiles.
    for line, body in sorted(pieces):
        out.append(f'#line {line} "{display}"\n{body}')
    return "\n".join(out) + "\n"


def preprocess(headers: list[Path], root: Path, mm_types: Path | None = None) -> tuple[str, list[Macro]]:
    """Preprocess the header set into one translation unit; returns (text, macros)."""
    cpp = shutil.which("cpp") or shutil.which("gcc")
    if cpp is None:
        raise HeaderError(None, "no C preprocessor: install gcc (Debian package cpp)")
    for h in headers + ([mm_types] if mm_types else []):
        if not h.is_file():
            raise HeaderError(
                None,
                f"{display_path(h, root)}: missing; run `iommufd-conformance headers fetch` first",
            )
    macros: list[Macro] = []
    for h in headers:
        macros += collect_macros(read_header(h, root), display_path(h, root))
    with tempfile.TemporaryDirectory(prefix="iommufd-cpp-") as tmp:
        t = Path(tmp)
        (t / "linux").mkdir()
        (t / "linux" / "types.h").write_text(TYPES_H)
        (t / "linux" / "ioctl.h").write_text(IOCTL_H)
        (t / "linux" / "stddef.h").write_text(STDDEF_H)
        # iommufd_test.h includes <linux/iommufd.h>: the version's own copy.
        for h in headers:
            if h.name == "iommufd.h":
                (t / "linux" / "iommufd.h").write_text(f'#include "{h.resolve()}"\n')
        tu = [f'#include "{h.resolve()}"' for h in headers]
        if mm_types is not None:
            (t / "mm_slice.h").write_text(slice_mm_types(read_header(mm_types, root), display_path(mm_types, root)))
            tu.append('#include "mm_slice.h"')
        seen = set()
        for m in macros:
            if m.name in seen or m.name.startswith("_UAPI"):
                continue
            seen.add(m.name)
            tu.append(f'#line {m.coord.line} "{m.coord.file}"\nlong long {CONST_PREFIX}{m.name} = ({m.name});')
        (t / "tu.c").write_text("\n".join(tu) + "\n")
        strips = [f"-D{name}=" for name in HEADERS_INSTALL_STRIPS]
        cmd = [cpp] + (["-E"] if cpp.endswith("gcc") else []) + ["-nostdinc", "-undef", *strips, "-I", tmp, str(t / "tu.c")]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise HeaderError(None, f"the C preprocessor failed:\n{p.stderr.strip()}")
        text = p.stdout
        # Name every file as the project does, so coordinates are headers/linux_X_Y/x.h:LINE.
        names = {str(h.resolve()): display_path(h, root) for h in headers}

        def fix(m: re.Match) -> str:
            path = m.group(2)
            real = os.path.realpath(path) if os.path.isabs(path) else path
            return f'# {m.group(1)} "{names.get(real, path)}"'

        text = re.sub(r'^# (\d+) "([^"]*)"', fix, text, flags=re.M)
        # cpp's trailing flags (1, 2, 3) after line markers are not for pycparser.
        text = re.sub(r'^(# \d+ "[^"]*")[ \d]*$', r"\1", text, flags=re.M)
        return text, macros
