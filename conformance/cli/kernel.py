"""`kernel build` and `kernel selftest`."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from codegen import debian
from conformance import kbuild, selftests, vm
from model.profile import ProfileError
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
    b.add_argument("--no-iommufd-test", dest="production", action="store_true",
                   help="a production kernel: the same configuration without CONFIG_IOMMUFD_TEST (no mock IOMMU, "
                        "no IOMMU_TEST_CMD), as distributions ship it; run the suite on it with "
                        "--target vm=production:vtd")
    b.set_defaults(func=_cmd_build)
    s = sub.add_parser("selftest", help="run the kernel's iommufd (or VFIO) selftests in the test VM or on the model")
    s.add_argument("--suite", choices=("iommu", "vfio"), default="iommu",
                   help="iommu: tools/testing/selftests/iommu (default); vfio: tools/testing/selftests/vfio on the "
                        "profile's devices, in every iommu mode libvfio has (default target vm:vtd)")
    s.add_argument("--kernel", type=Path, help="bzImage (default: build or reuse the cached test kernel)")
    s.add_argument("--source", type=Path, help="kernel source tree for the selftests (default: the kernel's)")
    s.add_argument("--timeout", type=float, default=900)
    s.add_argument("--series", default=SERIES, help=f"kernel series to build when --kernel is not given (default {SERIES})")
    s.add_argument("--target", action="append", metavar="vm[:PROFILE]|model[:PROFILE]",
                   help="where to run them, repeatable: vm (the test kernel in QEMU, default; vm:vtd or vm:amd for "
                        "a machine with an IOMMU and devices), model (the same binaries against the model through the "
                        "preload library; model:vtd or model:amd for --suite vfio: the model's machine of that "
                        "profile, its sysfs in a private mount namespace); vm and model together compares them")
    s.add_argument("-v", "--verbose", action="store_true", help="print the selftests' full output")
    s.set_defaults(func=_cmd_selftest)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _cmd_build(args) -> int:
    try:
        image = kbuild.build_kernel(args.source, args.jobs, log=_err, refresh=args.refresh, series=args.series,
                                    patches=args.patch, production=args.production)
    except (kbuild.KernelBuildError, debian.DependencyError, debian.FetchError) as e:
        _err(f"kernel build: {e}")
        return 1
    print(image)
    return 0


def _selftest_targets(args) -> list[tuple[str, str | None]]:
    """(where, profile) per --target: vm[:PROFILE] or model[:PROFILE]; what the suite cannot run
    on is a usage error. The model plays a profile only for the VFIO selftests (the iommufd ones
    use the mock IOMMU, which needs none)."""
    from conformance.cli import UsageError

    out = []
    for spec in dict.fromkeys(args.target or (["vm:vtd"] if args.suite == "vfio" else ["vm"])):
        where, _, profile = spec.partition(":")
        if where not in ("vm", "model"):
            raise UsageError(f"kernel selftest --target {spec}: choose vm, vm:PROFILE, model or model:PROFILE")
        if where == "model" and args.suite != "vfio" and profile:
            raise UsageError(f"kernel selftest --target {spec}: the iommufd selftests run on the model's mock IOMMU; "
                             "use --target model (a profile is for --suite vfio)")
        if profile and not profile.endswith(".json") and profile not in vm.PROFILES:
            raise UsageError(f"kernel selftest --target {spec}: unknown profile; choose one of {', '.join(vm.PROFILES)}")
        if profile.endswith(".json") and where != "model":
            raise UsageError(f"kernel selftest --target {spec}: a profile file is for the model (model:FILE.json)")
        if args.suite == "vfio" and where == "vm" and not vm.PROFILES[profile or "mock"].edu:
            raise UsageError(f"kernel selftest --suite vfio --target {spec}: the VFIO selftests need PCI devices "
                             "behind an IOMMU: --target vm:vtd or vm:amd")
        if args.suite == "vfio" and where == "model" and not profile.endswith(".json") and \
                not (profile and vm.PROFILES[profile].edu and vm.PROFILES[profile].model_profile):
            raise UsageError(f"kernel selftest --suite vfio --target {spec}: the model needs a machine with PCI "
                             "devices to play: --target model:vtd or model:amd")
        out.append((where, profile or None))
    return out


def _cmd_selftest(args) -> int:
    targets = _selftest_targets(args)
    runs: dict[str, list[selftests.SelftestResult]] = {}
    bad = False
    try:
        kernel = args.kernel.resolve() if args.kernel else kbuild.build_kernel(args.source, log=_err,
                                                                               series=args.series)
        for target, profile in targets:
            if args.suite == "vfio" and target == "model":
                why = selftests.vfio_model_unavailable()
                if why is not None:
                    print(f"model:{profile}: SKIPPED, the VFIO selftests cannot run on the model here: {why}")
                    continue
                results, host, output, seconds = selftests.run_vfio_selftests_model(
                    kernel, profile, args.source, timeout=args.timeout, log=_err)
                bad |= _report_vfio_model(results, host, output if args.verbose else None, seconds, profile,
                                          runs.get(f"vm:{profile}"))
                continue
            if args.suite == "vfio":
                start = time.monotonic()
                results, findings, output = selftests.run_vfio_selftests(kernel, profile, args.source,
                                                                         timeout=args.timeout, log=_err)
                bad |= _report_vfio(results, findings, output if args.verbose else None, time.monotonic() - start,
                                    profile)
                runs[f"vm:{profile}"] = results
                continue
            if target == "vm":
                start = time.monotonic()
                results, findings, output = selftests.run_selftests(kernel, args.source, timeout=args.timeout,
                                                                    log=_err, profile=profile)
                bad |= _report_vm(results, findings, output if args.verbose else None,
                                  time.monotonic() - start)
            else:
                results, host, output, seconds = selftests.run_selftests_model(kernel, args.source, log=_err)
                bad |= _report_model(results, host, output if args.verbose else None, seconds,
                                     runs.get("vm"))
            runs[target] = results
    except (kbuild.KernelBuildError, debian.DependencyError, debian.FetchError, vm.VmError, ProfileError) as e:
        _err(f"kernel selftest: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        _err(f"kernel selftest: building the preload library failed (gcc exit {e.returncode})")
        return 1
    return 1 if bad else 0


def _totals(r) -> str:
    return (f"{len(r.passed)} pass, {len(r.failed)} fail, {len(r.skipped)} skip"
            f" (exit {r.exit_status}; harness: {r.totals_line or 'no totals line'})")


def _report_vm(results, findings, output, seconds) -> bool:
    if output:
        print(output)
    bad = False
    for r in results:
        unexpected = [c for c in r.failed if c not in selftests.KNOWN_SELFTEST_FAILURES]
        bad |= bool(unexpected) or r.exit_status is None or (r.exit_status != 0 and not r.failed)
        print(f"vm: {r.name}: {_totals(r)}")
        for c in r.failed:
            print(f"  FAIL {c}{' (known)' if c in selftests.KNOWN_SELFTEST_FAILURES else ''}")
    print(f"vm: {seconds:.1f} s with the boot; kernel reports during the selftests: {len(findings) or 'none'}")
    for f in findings:
        print("  " + f.replace("\n", "\n  "))
    return bad or bool(findings)


def _report_vfio(results, findings, output, seconds, profile) -> bool:
    """Each binary's totals, then pass/fail/skip per iommu mode; every failure and skip with the
    harness's reason. Any failure, a binary that ended without its totals, or a kernel report fails."""
    if output:
        print(output)
    bad = False
    modes: dict[str, list[int]] = {m: [0, 0, 0] for m in selftests.VFIO_MODES}
    for r in results:
        whole = r.totals_line.startswith("skipped as a whole")
        took = "" if r.seconds is None else f" [{r.seconds:.1f} s]"
        print(f"vm:{profile}: {r.name}: " + (r.totals_line if whole else _totals(r)) + took)
        bad |= r.exit_status is None or bool(r.failed) or (r.exit_status not in (0, 4) and not r.failed) or \
            (r.exit_status == 4 and not whole and not r.skipped)
        for i, cases in enumerate((r.passed, r.failed, r.skipped)):
            for c in cases:
                if (m := selftests.vfio_mode(c)) is not None:
                    modes[m][i] += 1
        for c in r.failed:
            print(f"  FAIL {c}")
        for c, why in r.skip_reasons.items():
            print(f"  SKIP {c}: {why}")
    print(f"vm:{profile}: per iommu mode (pass, fail, skip): " +
          "; ".join(f"{m} {p}/{f}/{s}" for m, (p, f, s) in modes.items()))
    print(f"vm:{profile}: {seconds:.1f} s with the boot; kernel reports: {len(findings) or 'none'}")
    for f in findings:
        print("  " + f.replace("\n", "\n  "))
    return bad or bool(findings)


def _vfio_modes(results) -> dict[str, list[int]]:
    modes: dict[str, list[int]] = {m: [0, 0, 0] for m in selftests.VFIO_MODES}
    for r in results:
        for i, cases in enumerate((r.passed, r.failed, r.skipped)):
            for c in cases:
                if (m := selftests.vfio_mode(c)) is not None:
                    modes[m][i] += 1
    return modes


def _report_vfio_model(results, host, output, seconds, profile, vm_results) -> bool:
    """The VFIO selftests on the model's machine: each binary's totals and time (beside the
    VM's when both ran), then pass/fail/skip per iommu mode. A failure fails the command unless
    an excuse holds now (selftests.VFIO_MODEL_EXCUSES); so does a case the VM passes that the
    model skips or does not run, and a binary the VM ran that the model skipped as a whole for
    another reason."""
    if output:
        print(output)
    where = f"model:{profile}"
    print(f"{where}: this host: {host.hugepages} 2 MiB and {host.hugepages_1g} 1 GiB huge pages; "
          f"/dev/vfio/vfio played by {host.container}'s compat container")
    bad = False
    vm_by_name = {r.name: r for r in vm_results or []}
    told: dict[str, int] = {}  # each excuse's text once, then its number

    def why(reason: str | None) -> str:
        if reason is None:
            return "NO KNOWN REASON"
        if reason in told:
            return f"excuse {told[reason]} (above)"
        told[reason] = len(told) + 1
        return f"excuse {told[reason]}: {reason}"

    for r in results:
        v = vm_by_name.get(r.name)
        whole = r.totals_line.startswith("skipped as a whole")
        took = "" if r.seconds is None else f" [{r.seconds:.1f} s" + (
            f"; vm {v.seconds:.1f} s]" if v is not None and v.seconds is not None else "]")
        vtxt = "" if v is None else ("; vm: " + (v.totals_line if v.totals_line.startswith("skipped as a whole")
                                                  else f"{len(v.passed)} pass, {len(v.failed)} fail, "
                                                       f"{len(v.skipped)} skip"))
        print(f"{where}: {r.name}: " + (r.totals_line if whole else _totals(r)) + took + vtxt)
        bad |= r.exit_status is None or (r.exit_status not in (0, 4) and not r.failed) or \
            (r.exit_status == 4 and not whole and not r.skipped)
        for c in r.failed:
            reason = selftests.vfio_model_failure_reason(c, host)
            on_vm = "" if v is None else " (passes on the kernel)" if c in v.passed else " (fails on the kernel too)"
            print(f"  FAIL {c}{on_vm}: {why(reason)}")
            bad |= reason is None
        for c, said in r.skip_reasons.items():
            reason = selftests.vfio_model_failure_reason(c, host)
            if v is not None and c in v.passed:
                print(f"  SKIP {c} on the model, passes on the kernel ({said}): {why(reason)}")
                bad |= reason is None
            else:
                print(f"  SKIP {c}: {said}")
        if v is not None:
            vwhole = v.totals_line.startswith("skipped as a whole")
            if whole and not vwhole:
                print("  SKIPPED AS A WHOLE on the model, the kernel ran it")
                bad = True
            elif whole and vwhole and r.totals_line != v.totals_line:
                print("  skipped as a whole on both, for different reasons")
                bad = True
            for c in sorted(set(v.passed) - set(r.passed) - set(r.failed) - set(r.skipped)):
                print(f"  MISSING {c}: passed on the kernel, not run on the model")
                bad = True
    modes = _vfio_modes(results)
    print(f"{where}: per iommu mode (pass, fail, skip): " +
          "; ".join(f"{m} {p}/{f}/{s}" for m, (p, f, s) in modes.items()))
    print(f"{where}: {seconds:.1f} s")
    return bad


def _report_model(results, host, output, seconds, vm_results) -> bool:
    """Each binary's totals on the model, beside the kernel's when both ran. A failure fails the
    command unless an excuse holds on this host (selftests.MODEL_EXCUSES, checked at run time);
    so does a case the kernel passes that the model skips or does not run."""
    if output:
        print(output)
    print(f"model: this host: {host.hugepages} huge pages reserved, CAP_SYS_RESOURCE "
          f"{'held' if host.sys_resource else 'not held'}")
    bad = False
    vm_by_name = {r.name: r for r in vm_results or []}
    for r in results:
        v = vm_by_name.get(r.name)
        print(f"model: {r.name}: {_totals(r)}" + (f"; vm: {len(v.passed)} pass, {len(v.failed)} fail, "
                                                   f"{len(v.skipped)} skip" if v else ""))
        bad |= r.exit_status is None or (r.exit_status != 0 and not r.failed)
        for c in r.failed:
            reason = selftests.model_failure_reason(c, host)
            on_vm = "" if v is None else " (passes on the kernel)" if c in v.passed else " (fails on the kernel too)"
            print(f"  FAIL {c}{on_vm}: {reason or 'NO KNOWN REASON'}")
            bad |= reason is None
        if v is not None:
            for c in sorted(set(r.skipped) & set(v.passed)):
                reason = selftests.model_failure_reason(c, host)
                print(f"  SKIP {c} on the model, passes on the kernel: {reason or 'NO KNOWN REASON'}")
                bad |= reason is None
            for c in sorted(set(v.passed) - set(r.passed) - set(r.failed) - set(r.skipped)):
                print(f"  MISSING {c}: passed on the kernel, not run on the model")
                bad = True
    print(f"model: {seconds:.1f} s")
    return bad
