"""`run`: the conformance suite against one target or several side by side.

Everything `run` does not know is pytest's: `run -k unmap`, `run conformance/tests/x.py::test -v`,
`run -x`. With no path or node id the whole suite runs. The report (target, kernel, uapi, the
matrix per ioctl, the outcome coverage on the model) ends the output; --ktap, --junit-xml and
--json write it for tools.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conformance.run import SUITE

USAGE = ("iommufd-conformance run [--target T ...] [--ktap FILE] [--junit-xml FILE] [--json FILE] "
         "[--coverage FILE] [pytest options, paths, node ids]")


def _selects(args: list[str]) -> bool:
    """Does the user name what to run (a path or a node id)?"""
    return any(not a.startswith("-") and ("::" in a or Path(a.split("::")[0]).exists()) for a in args)


def _pytest_args(target: str, extra: list[str], ktap=None, junit=None, js=None, cov=None) -> list[str]:
    suite = str(SUITE.relative_to(Path.cwd())) if SUITE.is_relative_to(Path.cwd()) else str(SUITE)
    quiet = [] if any(a in ("-v", "-vv", "--verbose", "-q", "--quiet") for a in extra) else ["-q"]
    out = ([] if _selects(extra) else [suite]) + [f"--iommufd-target={target}", "--iommufd-report", *quiet, *extra]
    for opt, value in (("--iommufd-ktap", ktap), ("--junit-xml", junit), ("--iommufd-json", js),
                       ("--iommufd-coverage", cov)):
        if value:
            out.append(f"{opt}={Path(value).resolve()}")
    return out


def cmd_run(args) -> int:
    from conformance.cli import target as parse

    targets = args.target or [os.environ.get("IOMMUFD_CONFORMANCE_TARGET", "model")]
    for t in targets:
        parse(t)
    extra = getattr(args, "pytest_args", [])
    if len(targets) == 1:
        import pytest

        return int(pytest.main(_pytest_args(targets[0], extra, args.ktap, args.junit_xml, args.json, args.coverage)))
    return _side_by_side(targets, extra, args)


def _side_by_side(targets: list[str], extra: list[str], args) -> int:
    """Each target in its own pytest run, then the matrices next to each other."""
    from conformance import coverage, report

    worst, matrices, merged, cov = 0, {}, {}, coverage.empty()
    with tempfile.TemporaryDirectory(prefix="iommufd-run-") as tmp:
        for t in targets:
            js = Path(tmp) / f"{t.replace('/', '_').replace('=', '_')}.json"
            print(f"== target {t}", flush=True)
            rc = subprocess.run([sys.executable, "-m", "pytest", *_pytest_args(t, extra, js=js)]).returncode
            worst = max(worst, rc)
            if js.exists():
                data = json.loads(js.read_text())
                matrices[t] = data["matrix"]
                merged[t] = data
                cov = coverage.merge(cov, data["coverage"])
    print("\n== side by side")
    print(report.render_matrix(matrices))
    if args.coverage:
        cov = coverage.write(args.coverage, cov)
    print()
    print(coverage.render(cov))
    if args.json:
        Path(args.json).write_text(json.dumps(merged, indent=1))
    if args.ktap or args.junit_xml:
        print("iommufd-conformance: --ktap and --junit-xml are written for one target at a time", file=sys.stderr)
    return worst


def register(sub) -> None:
    r = sub.add_parser("run", usage=USAGE, help="run the conformance suite (default target: the model)",
                       description=__doc__)
    r.add_argument("--target", action="append", metavar="T",
                   help="model (default: in this process), served (the model as a server in this process, the "
                        "suite re-run under the preload library as C programs are: the read()/write() rules of "
                        "the descriptors it hands out), kernel (this machine's /dev/iommu), vm[=BZIMAGE] (the "
                        "test kernel in QEMU); repeat for several, side by side")
    r.add_argument("--ktap", metavar="FILE", help="write the results as KTAP (Documentation/dev-tools/ktap.rst)")
    r.add_argument("--junit-xml", metavar="FILE", help="write JUnit XML (with target, kernel and uapi properties)")
    r.add_argument("--json", metavar="FILE", help="write results, the matrix and the coverage as JSON")
    r.add_argument("--coverage", metavar="FILE",
                   help="write the coverage measured from what ran (outcomes per ioctl and target; the model's raise "
                        "sites, confirmed where a test reaching one also passed on a kernel target) as JSON, merged "
                        "into FILE when it exists")
    r.set_defaults(func=cmd_run, takes_extra=True)
