"""`iommufd-conformance bench explore`: what exploring costs.

Default: what explore's Recorder (conformance/repro.py) adds to a model call.
IOMMU_IOAS_IOVA_RANGES on a fresh IOAS, called on the model directly and through the Recorder
that explore wraps around the model's file (it snapshots the struct and the buffers it points
to, and names the rule from the stack). The figure is the ratio, measured in the same run,
best of three each.

`--target vm`: explore's steps per second against the test kernel in a guest, three ways in one
run, for the plain mix and the full (mock-heavy) mix (conformance/explore.py MIXES):
- old: the whole explorer (hypothesis, the model, the machine) in the guest under TCG, beside
  the kernel, as explore --target vm ran before conformance/executor;
- new: the explorer on this machine, the kernel's steps made by the guest's executor;
- executor alone: the requests the new run sent, replayed by the executor back to back with no
  host in the loop: the kernel's own speed for the same steps;
- host alone: the same campaign with a second model context for the kernel (no guest): what
  hypothesis, the machine and the model cost here, the other limit.
Then the shrink time of a HW-queue divergence planted in the model (conformance/explore.py
PLANTS), old and new: the campaign's time to the failure unshrunk, and with shrinking.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time

from model import open_iommufd
from model.uapi import B


class _Machine:
    """Stands for the explore machine whose rules the Recorder looks for on the stack."""


def per_call(n: int, recorded: bool) -> float:
    from conformance.repro import Recorder

    with open_iommufd() as model:
        rec = Recorder(_Machine(), 0, 0, -1, 0)
        fd = rec.wrap(model) if recorded else model
        a = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        fd.ioctl(B.IOMMU_IOAS_ALLOC, a)
        ranges = (B.iommu_iova_range * 4)()
        r = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=a.out_ioas_id,
                                     num_iovas=4, allowed_iovas=rec.buffer(ranges, "ranges"))
        t = time.perf_counter()
        for _ in range(n):
            r.num_iovas = 4
            fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        seconds = (time.perf_counter() - t) / n
        assert not recorded or len(rec.calls) == n + 1
        return seconds




def _worker(argv: list[str], where: str, kernel, profile) -> dict:
    """One explore worker's EXPLORE-RESULT: `where` "guest" runs it in the VM beside the kernel
    (the old design), "host" here with a guest executor (the new)."""
    import subprocess

    from conformance.cli.explore import _result
    from conformance.run import ROOT, vm_run

    cmd = [sys.executable, "-m", "conformance.explore", "--fresh", *argv]
    if where == "guest":
        with tempfile.TemporaryDirectory(prefix="iommufd-bench-") as scratch:
            res, failed = vm_run([*cmd, "--other", "kernel"], kernel, 3600, str(ROOT), echo=sys.stderr,
                                 scratch=scratch, profile=profile)
        if failed:
            raise RuntimeError("the VM run failed")
        text = res.stdout
    else:
        vm = [*(["--vm-kernel", kernel] if kernel else []), *(["--vm-profile", profile] if profile else [])]
        text = subprocess.run([*cmd, "--other", "vm", *vm], capture_output=True, text=True, cwd=str(ROOT)).stdout
    out = _result(text)
    if out is None:
        raise RuntimeError(f"no result from the {where} worker:\n{text[-2000:]}")
    return out


def vm_rates(mix: str, examples: int, old_examples: int, steps: int, seed: int, kernel, profile) -> dict:
    """Steps per second of one mix: old, new, and the executor alone on the new run's requests."""
    from conformance import explore
    from conformance.executor import Guest

    base = explore.with_rules(explore.ModelVsKernel, explore.MIXES[mix]) if explore.MIXES[mix] else None
    with Guest(kernel, profile) as channel:
        channel.hello(explore.user_memory(), explore.MEMFD, explore.CLOSED_FD)
        channel.record = []
        new = explore._campaign("vm", examples, steps, seed, None, base, channel, keep=False)
        requests = len(channel.record)
        with tempfile.TemporaryDirectory(prefix="iommufd-bench-") as d:
            replayed, alone_s = channel.replay(channel.record, d)
    if new["failure"]:
        raise RuntimeError(f"the new run failed: {new['failure']}")
    host = explore._campaign("model", examples, steps, seed, None, base, keep=False)
    old = _worker(["--mix", mix, "--examples", str(old_examples), "--steps", str(steps), "--seed", str(seed)],
                  "guest", kernel, profile)
    return {"mix": mix, "steps": new["steps"], "requests": requests, "replayed": replayed,
            "old_steps": old["steps"], "old": old["steps_per_s"], "new": new["steps_per_s"],
            "alone": round(new["steps"] / alone_s, 1) if alone_s else None, "host": host["steps_per_s"],
            "requests_per_step": round(requests / max(1, new["steps"]), 1)}


def shrink_times(examples: int, steps: int, seed: int, kernel, profile) -> dict:
    """The planted HW-queue divergence, old and new: seconds to the failure unshrunk, and with
    the shrink (hypothesis's generate phase is the same for both: same seed)."""
    out = {}
    for where, name in (("guest", "old"), ("host", "new")):
        argv = ["--plant", "hw-queue", "--examples", str(examples), "--steps", str(steps), "--seed", str(seed)]
        found = _worker([*argv, "--no-shrink"], where, kernel, profile)
        shrunk = _worker(argv, where, kernel, profile)
        if not found["failure"] or not shrunk["failure"]:
            raise RuntimeError(f"the {name} design did not find the planted HW-queue divergence with seed {seed}")
        out[name] = {"find_s": found["seconds"], "find_and_shrink_s": shrunk["seconds"],
                     "shrink_s": round(shrunk["seconds"] - found["seconds"], 1), "failure": shrunk["failure"][:300]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="calls per measurement (default 5000)")
    ap.add_argument("--target", choices=("model", "vm"), default="model",
                    help="model (default): the Recorder's cost; vm: explore's three rates against the VM")
    ap.add_argument("--kernel", help="with --target vm: the vm target's kernel (series or bzImage)")
    ap.add_argument("--profile", help="with --target vm: the VM profile")
    ap.add_argument("--examples", type=int, default=60, help="with --target vm: sequences of the new run")
    ap.add_argument("--old-examples", type=int, default=40,
                    help="with --target vm: sequences of the old run (its first compiles the page-table code in "
                         "the guest, under TCG: enough sequences that the rate is the steady one)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shrink-seed", type=int, default=1)
    ap.add_argument("--shrink-examples", type=int, default=300)
    ap.add_argument("--no-shrink", action="store_true", help="skip the shrink-time measurement")
    ap.add_argument("--no-rates", action="store_true", help="measure the shrink time only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.target == "vm":
        return _main_vm(args)
    direct = min(per_call(args.n, False) for _ in range(3))
    recorded = min(per_call(args.n, True) for _ in range(3))
    print(f"IOMMU_IOAS_IOVA_RANGES, {args.n} calls, best of 3:")
    print(f"  the model's file                    {direct * 1e6:8.1f} us/call   1.00x (baseline)")
    print(f"  through explore's Recorder          {recorded * 1e6:8.1f} us/call   {recorded / direct:.2f}x")
    return 0


def _main_vm(args) -> int:
    result = {"rates": [] if args.no_rates else [
        vm_rates(mix, args.examples, args.old_examples, args.steps, args.seed, args.kernel, args.profile)
        for mix in ("plain", "full")]}
    if not args.no_shrink:
        result["shrink"] = shrink_times(args.shrink_examples, args.steps, args.shrink_seed, args.kernel,
                                        args.profile)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("explore against the VM kernel, steps per second per worker (boot excluded):")
    print(f"  {'mix':6} {'old (in guest)':>15} {'new (host+executor)':>20} {'executor alone':>15} "
          f"{'host alone':>11} {'new/old':>8} {'alone/new':>10} {'host/new':>9} {'requests/step':>14}")
    for r in result["rates"]:
        print(f"  {r['mix']:6} {r['old']:15.1f} {r['new']:20.1f} {r['alone']:15.1f} {r['host']:11.1f} "
              f"{r['new'] / r['old']:7.1f}x {r['alone'] / r['new']:9.1f}x {r['host'] / r['new']:8.2f}x "
              f"{r['requests_per_step']:14.1f}")
    for name, s in result.get("shrink", {}).items():
        print(f"  HW-queue divergence, {name}: found in {s['find_s']:.1f} s, found and shrunk in "
              f"{s['find_and_shrink_s']:.1f} s (shrink {s['shrink_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
