"""What the model answered, as it ran: each ioctl's outcome and, for a failure, the model's raise
site (file:function:line, the innermost model frame of the error). The conformance reports read
this for coverage measured from what actually ran (conformance/coverage.py).

Recording costs one dict update per ioctl (a traceback walk only on failure). The counts are
per process: a test run reads them at its end; a server reports its own.
"""
from __future__ import annotations

import ast
import errno as _errno
import os
from collections import Counter
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent

# (request number, errno or 0, site "file.py:function:line" or "") -> count
OUTCOMES: Counter = Counter()
# the requests of calls that are not ioctls: mmap(2) of the file (iommufd_fops_mmap()), read(2)
# and write(2) of the files it hands out (through the server: conformance/server.py)
MMAP, READ, WRITE = "mmap", "read", "write"


_PREFIX = str(MODEL_DIR.parent) + os.sep  # what a site's file name is relative to
_MODEL, _TESTS = str(MODEL_DIR) + os.sep, str(MODEL_DIR / "tests") + os.sep

# Functions that only raise the errno they are given (`_err(errno.EINVAL)`): the site is where
# one is called, as if the raise were written there.
RAISE_HELPERS = frozenset({"_err"})


def _site(tb) -> str:
    """The innermost frame of the model in a traceback: where the error was raised (a raise
    helper's caller). String prefixes, not Path objects: this runs for every failed ioctl (an
    explore step makes dozens)."""
    site = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        name = code.co_filename
        if name.startswith(_MODEL) and not name.startswith(_TESTS) and code.co_name not in RAISE_HELPERS:
            site = f"{name[len(_PREFIX):]}:{code.co_name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return site


def record(request: int | str, err: int, exc: BaseException | None = None) -> None:
    """One answer: `request` an ioctl number or the name of another call (MMAP)."""
    key = request & 0xFFFFFFFF if isinstance(request, int) else request
    OUTCOMES[(key, err, _site(exc.__traceback__) if exc is not None else "")] += 1


def take() -> Counter:
    """The outcomes recorded so far, and a fresh start."""
    out = Counter(OUTCOMES)
    OUTCOMES.clear()
    return out


class _Raises(ast.NodeVisitor):
    """Each `raise IommufdError(...)` / `raise NotModelled(...)` and each call of a raise helper
    (`_err(...)`) under its innermost function, with its stable name (raise_site_names())."""

    def __init__(self, rel: Path):
        self.rel, self.stack, self.qual, self.out, self.names = rel, [], [], {}, {}
        self.seen: Counter = Counter()

    def visit_FunctionDef(self, node):
        self.stack.append(node.name)
        self.qual.append(node.name)
        self.generic_visit(node)
        self.qual.pop()
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.qual.append(node.name)
        self.generic_visit(node)
        self.qual.pop()

    def visit_Raise(self, node):
        if self.stack and self.stack[-1] not in RAISE_HELPERS and isinstance(node.exc, ast.Call):
            f = node.exc.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name == "NotModelled":
                self._add(node, "ENOSYS")
            elif name == "IommufdError" and node.exc.args:
                self._add(node, self._errno(node.exc.args[0]))

    def visit_Call(self, node):
        f = node.func
        if self.stack and isinstance(f, ast.Name) and f.id in RAISE_HELPERS and node.args:
            self._add(node, self._errno(node.args[0]))
        self.generic_visit(node)

    def _add(self, node, errno_name: str) -> None:
        site = f"{self.rel}:{self.stack[-1]}:{node.lineno}"
        self.out[site] = errno_name
        # the stable name: the qualified function and the statement's text (comments and
        # layout aside), numbered from the second of its kind in that function
        key = f"{self.rel}:{'.'.join(self.qual)}: {ast.unparse(node)}"
        self.seen[key] += 1
        self.names[site] = key if self.seen[key] == 1 else f"{key} #{self.seen[key]}"

    @staticmethod
    def _errno(a) -> str:
        named = isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id == "errno"
        return a.attr if named and hasattr(_errno, a.attr) else "?"


def _scan() -> tuple[dict[str, str], dict[str, str]]:
    out: dict[str, str] = {}
    names: dict[str, str] = {}
    for path in sorted(MODEL_DIR.rglob("*.py")):
        if "tests" in path.parts or path.name == "outcomes.py":
            continue
        v = _Raises(path.relative_to(MODEL_DIR.parent))
        v.visit(ast.parse(path.read_text()))
        out.update(v.out)
        names.update(v.names)
    return out, names


def raise_sites() -> dict[str, str]:
    """Every site in the model that raises an ioctl's errno: "file:function:line" -> the errno's
    name ("?" where it is computed). Read from the source: `raise IommufdError(...)`,
    `raise NotModelled(...)` (ENOSYS) and the calls of a raise helper (RAISE_HELPERS), each
    under its innermost function."""
    return _scan()[0]


def raise_site_names() -> dict[str, str]:
    """Each site of raise_sites() -> its stable name, which survives edits elsewhere in the file:
    "file:Class.function: statement" (the statement as ast.unparse() writes it), with " #N" for
    the Nth identical statement of that function. Lists about sites (conformance/
    coverage_unreachable.json) are keyed by it."""
    return _scan()[1]
