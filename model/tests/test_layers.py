"""The layout rules of the tree (README, Layout), checked on the source:
- data flows headers -> codegen -> generated -> model / conformance: generated imports only the
  standard library and numpy, the model never imports codegen or conformance, codegen (outside
  its tests) imports neither the model nor conformance;
- no import cycle among the project's modules (imports inside functions count too);
- the kernel version is chosen in one place: generated.load() is called only by model/uapi.py.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("codegen", "generated", "model", "conformance")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports, resolved to modules that exist."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_generated_imports_only_stdlib_and_numpy():
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    for name, path in MODULES.items():
        if _top(name) != "generated":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), (name, ast.dump(node))
            elif isinstance(node, ast.ImportFrom) and not node.level:
                assert node.module.split(".")[0] in allowed, (name, node.module)


def test_data_flows_one_way():
    for name, deps in GRAPH.items():
        tops = {_top(d) for d in deps}
        if _top(name) == "model":
            assert not tops & {"codegen", "conformance"}, (name, deps)
        if _top(name) == "codegen" and ".tests" not in name:
            assert not tops & {"model", "conformance"}, (name, deps)


def test_no_import_cycles():
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            # a package importing its own submodules is how packages work, not a cycle
            if w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    assert cycles == []


def test_the_version_is_chosen_once():
    callers = sorted(str(p.relative_to(ROOT)) for name, p in MODULES.items()
                     if "generated.load(" in p.read_text() and ".tests" not in name
                     and _top(name) != "generated")
    assert callers == ["model/uapi.py"]
