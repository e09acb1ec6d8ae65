"""The `iommufd-conformance` command: one subcommand per job.

All argparse code lives in this package: one module per job registers its subcommands
(register(sub)) and sets `func`; the libraries they call (conformance.kbuild, .vm, .run,
.selftests, codegen) take plain arguments.
"""
from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A bad command line the parser could not catch: printed, exit 2."""


def target(spec: str):
    """conformance.targets.parse_target(), its ValueError as a UsageError."""
    from conformance.targets import parse_target

    try:
        return parse_target(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from conformance.cli import bench, codegen, explore, faults, kernel, probe, run, server, vm

    p = argparse.ArgumentParser(prog="iommufd-conformance", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    codegen.register(sub)
    kernel.register(sub)
    vm.register(sub)
    run.register(sub)
    probe.register(sub)
    explore.register(sub)
    bench.register(sub)
    server.register(sub)
    faults.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # `run`: the rest is pytest's (options, paths, node ids), after an optional --
        args.pytest_args = extra[1:] if extra[0] == "--" else extra
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UsageError as e:
        print(f"iommufd-conformance: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
