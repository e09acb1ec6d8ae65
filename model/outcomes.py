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


_PREFIX = str(MODEL_DIR.parent) + os.sep  # what a site's file name is relative to
_MODEL, _TESTS = str(MODEL_DIR) + os.sep, str(MODEL_DIR / "tests") + os.sep


def _site(tb) -> str:
    """The innermost frame of the model in a traceback: where the error was raised. String
    prefixes, not Path objects: this runs for every failed ioctl (an explore step makes dozens)."""
    site = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        name = code.co_filename
        if name.startswith(_MODEL) and not name.startswith(_TESTS):
            site = f"{name[len(_PREFIX):]}:{code.co_name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return site


def record(request: int, err: int, exc: BaseException | None = None) -> None:
    OUTCOMES[(request & 0xFFFFFFFF, err, _site(exc.__traceback__) if exc is not None else "")] += 1


def take() -> Counter:
    """The outcomes recorded so far, and a fresh start."""
    out = Counter(OUTCOMES)
    OUTCOMES.clear()
    return out


class _Raises(ast.NodeVisitor):
    """Each `raise IommufdError(...)` / `raise NotModelled(...)` under its innermost function."""

    def __init__(self, rel: Path):
        self.rel, self.stack, self.out = rel, [], {}

    def visit_FunctionDef(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Raise(self, node):
        if self.stack and isinstance(node.exc, ast.Call):
            f = node.exc.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            site = f"{self.rel}:{self.stack[-1]}:{node.lineno}"
            if name == "NotModelled":
                self.out[site] = "ENOSYS"
            elif name == "IommufdError" and node.exc.args:
                a = node.exc.args[0]
                named = isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id == "errno"
                self.out[site] = a.attr if named and hasattr(_errno, a.attr) else "?"


def raise_sites() -> dict[str, str]:
    """Every site in the model that raises an ioctl's errno: "file:function:line" -> the errno's
    name ("?" where it is computed). Read from the source: `raise IommufdError(...)` and
    `raise NotModelled(...)` (ENOSYS), each under its innermost function."""
    out: dict[str, str] = {}
    for path in sorted(MODEL_DIR.rglob("*.py")):
        if "tests" in path.parts or path.name == "outcomes.py":
            continue
        v = _Raises(path.relative_to(MODEL_DIR.parent))
        v.visit(ast.parse(path.read_text()))
        out.update(v.out)
    return out
