"""The `iommufd-conformance` command: one subcommand per job.

Each module that owns a job registers its own subcommands (register(sub)) and
sets `func`, so this file only assembles them.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from conformance import commands_codegen, kernel, vm, run

    p = argparse.ArgumentParser(prog="iommufd-conformance", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands_codegen.register(sub)
    kernel.register(sub)
    vm.register(sub)
    run.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
