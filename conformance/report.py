"""What a conformance run reports, beside pytest's own lines: which ioctls each test exercised
and with what outcome, a matrix per ioctl, the outcomes and model raise sites that ran
(conformance/coverage.py), and the run as KTAP, JSON or JUnit properties for tools.

The plugin records every ioctl a test makes through the `iommufd` fixtures (name and errno), and
each test's outcome; this module turns those into reports.
"""
from __future__ import annotations

import errno
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model.uapi import T


_PREFERRED = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EAGAIN: "EAGAIN", errno.EDEADLK: "EDEADLK"}


def errno_name(e: int) -> str:
    """The kernel's name for an errno (EOPNOTSUPP, not its alias ENOTSUP)."""
    return "0" if e == 0 else _PREFERRED.get(e) or errno.errorcode.get(e, str(e))


class Errno(int):
    """An errno that prints as its name (EINVAL(22)) in assertion messages."""

    def __repr__(self) -> str:
        return f"{errno_name(int(self))}({int(self)})" if self else "0"


@dataclass
class CaseResult:
    nodeid: str
    family: str  # the test module, less test_: ioas_map, vfio_dma ...
    outcome: str = "passed"  # passed | failed | skipped
    reason: str = ""  # the skip reason or the failure's last line
    location: str = ""
    calls: list[tuple[str, int]] = field(default_factory=list)  # (ioctl name, errno or 0)
    sites: dict[str, int] = field(default_factory=dict)  # the model's raise sites reached (model/outcomes.py)

    @property
    def ioctls(self) -> list[str]:
        return sorted({name for name, _ in self.calls})


_VFIO_COMPAT = ("VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU", "VFIO_IOMMU_GET_INFO",
                "VFIO_IOMMU_MAP_DMA", "VFIO_IOMMU_UNMAP_DMA")


def ioctl_name(request: int | str) -> str:
    """The ioctl's name: a row of the bindings under test, a VFS ioctl, or its number; a call
    that is not an ioctl is named already (model/outcomes.py MMAP)."""
    from model import vfs

    if isinstance(request, str):
        return request
    request &= 0xFFFFFFFF
    # VFIO numbers repeat across files (VFIO_BASE + N): on /dev/iommu, the ones vfio_compat.c's
    # iommufd_vfio_ioctl() answers (not the SPAPR ioctl of the same number)
    for name in _VFIO_COMPAT:
        if getattr(T, name, None) == request:
            return name
    row = T.BY_NUMBER.get(request)
    if row is not None:
        return row.name
    names = {getattr(vfs, n): n for n in ("FIOCLEX", "FIONCLEX", "FIONBIO", "FIOASYNC", "FIOQSIZE")}
    return names.get(request, f"{request:#x}")


def family_of(nodeid: str) -> str:
    module = Path(nodeid.split("::")[0]).stem
    return module.removeprefix("test_")


# --- the matrix ----------------------------------------------------------------------------------


def matrix(results: list[CaseResult]) -> dict[str, dict]:
    """ioctl -> {cases, passed, failed, skipped, skip_reasons}: every test that called it counts."""
    rows: dict[str, dict] = defaultdict(lambda: {"cases": 0, "passed": 0, "failed": 0, "skipped": 0,
                                                 "skip_reasons": defaultdict(int)})
    for r in results:
        for name in r.ioctls or ["(no ioctl)"]:
            row = rows[name]
            row["cases"] += 1
            row[r.outcome] += 1
            if r.outcome == "skipped":
                row["skip_reasons"][r.reason] += 1
    return {k: dict(v, skip_reasons=dict(v["skip_reasons"])) for k, v in sorted(rows.items())}


def render_matrix(columns: dict[str, dict[str, dict]]) -> str:
    """One matrix per target, side by side: `columns` is target label -> matrix()."""
    names = sorted({n for m in columns.values() for n in m})
    w = max([len(n) for n in names] + [5])
    head = f"{'ioctl':<{w}}" + "".join(f" | {label:^26}" for label in columns)
    sub = f"{'':<{w}}" + "".join(f" | {'cases':>6}{'pass':>6}{'fail':>6}{'skip':>6} " for _ in columns)
    lines = [head, sub, "-" * len(sub)]
    for n in names:
        cells = []
        for m in columns.values():
            r = m.get(n)
            cells.append(f" | {r['cases']:>6}{r['passed']:>6}{r['failed']:>6}{r['skipped']:>6} " if r
                         else f" | {'-':>6}{'':>18} ")
        lines.append(f"{n:<{w}}" + "".join(cells))
    reasons = defaultdict(int)
    for m in columns.values():
        for r in m.values():
            for why, k in r["skip_reasons"].items():
                reasons[why] += k
    if reasons:
        lines.append("skips:")
        for why, k in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:>4} x {why}")
    return "\n".join(lines)


# --- KTAP ------------------------------------------------------------------------------------------


def ktap_name(s: str) -> str:
    """Documentation/dev-tools/ktap.rst: test names in [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", s).strip("_") or "test"


def ktap(results: list[CaseResult], header: list[str]) -> str:
    """KTAP version 1, one subtest per ioctl family (test module), its tests inside."""
    families: dict[str, list[CaseResult]] = defaultdict(list)
    for r in results:
        families[r.family].append(r)
    lines = ["KTAP version 1"] + [f"# {h}" for h in header] + [f"1..{len(families)}"]
    for i, (fam, rs) in enumerate(sorted(families.items()), 1):
        lines += ["    KTAP version 1", f"    # Subtest: {ktap_name(fam)}", f"    1..{len(rs)}"]
        for j, r in enumerate(rs, 1):
            name = ktap_name(r.nodeid.split("::", 1)[-1])
            if r.outcome == "skipped":
                lines.append(f"    ok {j} {name} # SKIP {r.reason.splitlines()[0] if r.reason else ''}".rstrip())
            elif r.outcome == "failed":
                lines += [f"    # {ln}" for ln in r.reason.splitlines()[-3:]]
                lines.append(f"    not ok {j} {name}")
            else:
                lines.append(f"    ok {j} {name}")
        failed = any(r.outcome == "failed" for r in rs)
        all_skipped = all(r.outcome == "skipped" for r in rs)
        lines.append(f"{'not ok' if failed else 'ok'} {i} {ktap_name(fam)}{' # SKIP' if all_skipped and not failed else ''}")
    return "\n".join(lines) + "\n"


def as_json(results: list[CaseResult], header: dict, coverage: dict | None = None) -> str:
    """The run for tools; `coverage`: its conformance/coverage.py document."""
    return json.dumps({**header, "tests": [asdict(r) for r in results], "matrix": matrix(results),
                       "coverage": coverage}, indent=1)
