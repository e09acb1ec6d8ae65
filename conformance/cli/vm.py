"""`vm -- COMMAND`: a command as root in the test kernel's QEMU guest."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codegen.debian import DependencyError
from conformance.kbuild import cached_kernel
from conformance.vm import PROFILES, VmError, VmTimeout, run_in_vm


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "vm", help="run a command as root in a QEMU guest on the test kernel",
        description="Boot the test kernel in QEMU with the host's / as a read-only root and run "
                    "COMMAND as root. Exits with COMMAND's status; kernel warnings are printed on stderr "
                    "(124: timeout, 125: the guest did not boot or crashed).")
    p.add_argument("--kernel", type=Path, help="bzImage (default: the cached `kernel build` image)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before QEMU is killed (default 600)")
    p.add_argument("--memory", default="2G", help="guest RAM (default 2G)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--hugepages", type=int, default=0, help="2 MiB huge pages to reserve in the guest")
    p.add_argument("--profile", default="mock", choices=list(PROFILES),
                   help="the machine: mock (default: no IOMMU), vtd (intel-iommu + 2 edu), amd (amd-iommu + 2 edu); "
                        "the devices are bound to vfio-pci and listed in $IOMMUFD_VFIO_DEVICES")
    p.add_argument("--console", action="store_true", help="stream the guest console to stderr")
    p.add_argument("--fail-on-warning", action="store_true", help="exit 1 if the kernel logged a WARNING/BUG")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(func=_cmd_vm)


def _cmd_vm(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("vm: no command given (usage: vm [options] -- COMMAND...)", file=sys.stderr)
        return 2
    kernel = args.kernel or cached_kernel()
    if kernel is None:
        print("vm: no cached test kernel; build one with `iommufd-conformance kernel build` or pass --kernel",
              file=sys.stderr)
        return 2

    def out(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    def con(s: str) -> None:
        sys.stderr.write(s)
        sys.stderr.flush()

    try:
        res = run_in_vm(kernel, argv, timeout=args.timeout, memory=args.memory, cpus=args.cpus,
                        hugepages=args.hugepages, profile=args.profile, on_output=out, on_console=con if args.console else None)
    except VmError as e:
        print(f"vm: {e}", file=sys.stderr)
        _print_findings(e.result.findings)
        return 124 if isinstance(e, VmTimeout) else 125
    except (FileNotFoundError, ValueError, DependencyError) as e:  # bad kernel path, scratch, no QEMU
        print(f"vm: {e}", file=sys.stderr)
        return 2
    _print_findings(res.findings)
    if res.findings and args.fail_on_warning:
        return 1
    return res.returncode


def _print_findings(findings: list[str]) -> None:
    if not findings:
        return
    bar = "=" * 72
    print(f"{bar}\nvm: the kernel logged {len(findings)} report(s):", file=sys.stderr)
    for f in findings:
        print(f"{bar}\n{f}", file=sys.stderr)
    print(bar, file=sys.stderr)
