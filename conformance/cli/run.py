"""`run`: the conformance suite against a target (model by default, kernel, or vm)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from conformance.run import SUITE


def cmd_run(args) -> int:
    import pytest

    from conformance.targets import parse_target

    try:
        parse_target(args.target)
    except ValueError as e:
        print(f"iommufd-conformance: {e}", file=sys.stderr)
        return 2
    pargs = [str(SUITE.relative_to(Path.cwd())) if SUITE.is_relative_to(Path.cwd()) else str(SUITE),
             f"--iommufd-target={args.target}", "-q", *args.pytest_args]
    if args.junit_xml:
        pargs.append(f"--junit-xml={args.junit_xml}")
    return int(pytest.main(pargs))


def register(sub) -> None:
    r = sub.add_parser("run", help="run the conformance suite (default target: the model)")
    r.add_argument("--target", default=os.environ.get("IOMMUFD_CONFORMANCE_TARGET", "model"),
                   help="model (default), kernel (this machine's /dev/iommu), vm[=BZIMAGE] (the test kernel in QEMU)")
    r.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report")
    r.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    r.set_defaults(func=cmd_run)
