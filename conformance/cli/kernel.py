"""`kernel build` and `kernel selftest`."""
from __future__ import annotations

import sys
from pathlib import Path

from codegen import debian
from conformance import kbuild, selftests, vm
from model.uapi import SERIES


def register(subparsers) -> None:
    p = subparsers.add_parser("kernel", help="build the iommufd test kernel, run its own selftests")
    sub = p.add_subparsers(dest="kernel_command", required=True, metavar="SUBCOMMAND")
    b = sub.add_parser("build", help="build (or find cached) the test kernel; prints the bzImage path last")
    b.add_argument("--source", type=Path, help=f"kernel source tree (default: Debian's linux-source-{SERIES})")
    b.add_argument("--jobs", "-j", type=int, help="make -j (default: CPUs + 1)")
    b.add_argument("--refresh", action="store_true", help=f"check Debian for a newer linux-source-{SERIES} first")
    b.add_argument("--series", default=SERIES, help=f"kernel series from Debian: 7.2 (sid), 6.12 (stable); default {SERIES}")
    b.add_argument("--patch", type=Path, action="append", default=[], metavar="FILE",
                   help="a patch to apply (patch -p1), repeatable, in order; the cache key covers them")
    b.set_defaults(func=_cmd_build)
    s = sub.add_parser("selftest", help="run the kernel's tools/testing/selftests/iommu in the test VM")
    s.add_argument("--kernel", type=Path, help="bzImage (default: build or reuse the cached test kernel)")
    s.add_argument("--source", type=Path, help="kernel source tree for the selftests (default: the kernel's)")
    s.add_argument("--timeout", type=float, default=900)
    s.add_argument("--series", default=SERIES, help=f"kernel series to build when --kernel is not given (default {SERIES})")
    s.add_argument("-v", "--verbose", action="store_true", help="print the selftests' full output")
    s.set_defaults(func=_cmd_selftest)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _cmd_build(args) -> int:
    try:
        image = kbuild.build_kernel(args.source, args.jobs, log=_err, refresh=args.refresh, series=args.series,
                                    patches=args.patch)
    except (kbuild.KernelBuildError, debian.DependencyError, debian.FetchError) as e:
        _err(f"kernel build: {e}")
        return 1
    print(image)
    return 0


def _cmd_selftest(args) -> int:
    try:
        kernel = args.kernel.resolve() if args.kernel else kbuild.build_kernel(args.source, log=_err,
                                                                               series=args.series)
        results, findings, output = selftests.run_selftests(kernel, args.source, timeout=args.timeout, log=_err)
    except (kbuild.KernelBuildError, debian.DependencyError, debian.FetchError) as e:
        _err(f"kernel selftest: {e}")
        return 1
    except vm.VmError as e:
        _err(f"kernel selftest: {e}")
        return 1
    if args.verbose:
        print(output)
    bad = False
    for r in results:
        unexpected = [c for c in r.failed if c not in selftests.KNOWN_SELFTEST_FAILURES]
        bad |= bool(unexpected) or r.exit_status is None or (r.exit_status != 0 and not r.failed)
        print(f"{r.name}: {len(r.passed)} pass, {len(r.failed)} fail, {len(r.skipped)} skip"
              f" (exit {r.exit_status}; harness: {r.totals_line or 'no totals line'})")
        for c in r.failed:
            print(f"  FAIL {c}{' (known)' if c in selftests.KNOWN_SELFTEST_FAILURES else ''}")
    if findings:
        print(f"kernel reports during the selftests: {len(findings)}")
        for f in findings:
            print("  " + f.replace("\n", "\n  "))
    else:
        print("kernel reports during the selftests: none")
    return 1 if bad or findings else 0
