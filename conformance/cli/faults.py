"""`faults`: fault-injection sweeps (conformance/faults.py) on the model, or the model and the
VM kernel compared attempt by attempt."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from conformance.cli import UsageError


def _cmd_faults(args) -> int:
    from conformance import faults

    names = args.ioctl or list(faults.SCENARIOS)
    unknown = [n for n in names if n not in faults.SCENARIOS]
    if unknown:
        raise UsageError(f"unknown sweep {', '.join(unknown)}; known: {', '.join(faults.SCENARIOS)}")
    start = time.monotonic()
    model = [asdict(s) for s in faults.run("model", names)]
    model_s = time.monotonic() - start
    kernel = None
    if args.target == "vm":
        from conformance import kbuild, vm

        image = kbuild.cached_kernel()
        if image is None:
            raise UsageError("no cached test kernel: run `iommufd-conformance kernel build` first")
        start = time.monotonic()
        try:
            res = vm.run_in_vm(image, [sys.executable, "-m", "conformance.faults", *names],
                               cwd=str(faults.ROOT), timeout=args.timeout)
        except vm.VmError as e:
            print(f"faults: {e}", file=sys.stderr)
            return 1
        if res.returncode != 0:
            print(f"faults: the sweep in the VM failed (exit {res.returncode}):\n{res.stdout[-2000:]}",
                  file=sys.stderr)
            return 1
        kernel = json.loads(res.stdout)
        kernel_s = time.monotonic() - start
        for f in res.findings:
            print("kernel report during the sweeps:\n  " + f.replace("\n", "\n  "))
    bad = False
    for i, m in enumerate(model):
        k = kernel[i] if kernel else None
        for label, s in (("model", m), ("kernel", k)):
            if s is None:
                continue
            errs = ",".join("ok" if a["errno"] == 0 else faults.errno.errorcode.get(a["errno"], str(a["errno"]))
                            for a in s["attempts"])
            print(f"{label:6} {s['scenario']:16} {len(s['attempts']):3} fault points, "
                  f"{s['succeeded_at']} calls to succeed: {errs or '-'}")
            for p in s["problems"]:
                print(f"       PROBLEM {p}")
                bad = True
    def rate(sweeps, seconds):
        n = sum(s["succeeded_at"] for s in sweeps)
        return f"{n} attempts in {seconds:.1f} s ({n / seconds:.1f}/s)"

    print(f"model: {rate(model, model_s)}" + (f"; kernel: {rate(kernel, kernel_s)} with the boot"
                                               if kernel is not None else ""))
    if kernel is not None:
        diffs = faults.compare(model, kernel)
        for d in diffs:
            print(f"DIFFERS {d}")
        print(f"{len(model) - len(diffs)} of {len(model)} sweeps agree with the kernel")
        bad |= bool(diffs)
    return 1 if bad else 0


def register(sub) -> None:
    p = sub.add_parser("faults", help="fault-injection sweeps (fail-nth): every failed attempt leaves the state "
                                      "unchanged; with --target vm, the model against the kernel attempt by attempt")
    p.add_argument("--target", choices=("model", "vm"), default="model")
    p.add_argument("--ioctl", action="append", metavar="NAME", help="one sweep (repeatable); default all")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(func=_cmd_faults)
