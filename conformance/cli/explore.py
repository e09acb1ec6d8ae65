"""`explore --target model|vm[=...]`: differential campaigns (conformance/explore.py).

model: the model against a second model context, every invariant checked after every step;
vm: the model against the test kernel's /dev/iommu in the guest (one VM per worker). --jobs J runs
J workers in parallel with seeds S, S+1, ...; the report gives steps and steps per second.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from conformance.run import ROOT


def _worker_args(other: str, examples: int, steps: int, seed) -> list[str]:
    out = ["--other", other, "--examples", str(examples), "--steps", str(steps)]
    return out + (["--seed", str(seed)] if seed is not None else [])


def _result(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("EXPLORE-RESULT "):
            return json.loads(line.removeprefix("EXPLORE-RESULT "))
    return None


def _cmd_explore(args) -> int:
    from conformance.cli import UsageError, target as parse

    target = parse(args.target)
    if target.name == "kernel":
        raise UsageError("explore runs on model or vm (the kernel side runs in the guest)")
    jobs = max(1, args.jobs)
    per = -(-args.examples // jobs)
    seeds = [None if args.seed is None else args.seed + i for i in range(jobs)]

    def run_model(worker):
        seed = seeds[worker]
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "conformance.explore",
                            *_worker_args("model", per, args.steps, seed)], capture_output=True, text=True)
        sys.stdout.write(p.stdout if p.returncode else "")
        sys.stderr.write(p.stderr)
        return _result(p.stdout) or {"failure": f"worker exit {p.returncode}", "steps": 0}

    def run_vm(worker):
        from codegen.debian import cache_dir
        from conformance.run import vm_run

        # each guest's writable scratch (its example database) is kept, one per worker, so a
        # failure found in the guest replays on the next run
        scratch = cache_dir() / "explore-vm" / f"worker{worker}"
        res, failed = vm_run([sys.executable, "-X", "faulthandler", "-m", "conformance.explore",
                               *_worker_args("kernel", per, args.steps, seeds[worker])], target.value, 3600,
                              str(ROOT), echo=sys.stderr if args.json else None, scratch=scratch,
                              profile=target.profile)
        if failed:
            return {"failure": "the VM run failed", "steps": 0}
        out = _result(res.stdout) or {"failure": f"worker exit {res.returncode}", "steps": 0}
        if res.findings:
            out["failure"] = (out.get("failure") or "") + " kernel reports: " + " | ".join(res.findings)
        return out

    if args.db and not args.engine:
        raise UsageError("explore --db needs --engine (a local campaign keeps its database in the cache)")
    if args.engine:
        if target.name != "model":
            raise UsageError("explore --engine runs model campaigns: in a VM, hypothesis runs in the guest, which "
                             "cannot reach the shared database")
        from conformance import distributed

        try:
            results, wall = distributed.submit(args.engine, args.db, "model", args.examples, args.steps, jobs, seeds)
        except OSError as e:
            raise UsageError(f"explore --engine {args.engine}: {e}") from None
    else:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(run_vm if target.name == "vm" else run_model, range(jobs)))
        wall = time.perf_counter() - t0
    written = _write_reproducers(results, args)
    from conformance import coverage

    cov = coverage.empty()
    for r in results:
        cov = coverage.merge(cov, r.pop("coverage", coverage.empty()))
    if args.coverage:
        cov = coverage.write(args.coverage, cov)
    figures = coverage.summary(cov)
    steps = sum(r.get("steps", 0) for r in results)
    failures = [r["failure"] for r in results if r.get("failure")]
    summary = {"target": args.target, "jobs": jobs, "examples": per * jobs, "steps": steps,
               "seconds": round(wall, 2), "steps_per_s": round(steps / wall, 1), "failures": failures,
               "raise_sites": {k: figures[k] for k in ("sites", "reached", "confirmed")}, "workers": results}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"explore {args.target}: {jobs} worker(s), {per * jobs} sequences of up to {args.steps} steps: "
              f"{steps} steps in {wall:.1f} s ({steps / wall:.0f} steps/s), "
              f"{'no disagreement' if not failures else f'{len(failures)} failure(s)'}")
        print(f"  model raise sites reached: {figures['reached']} of {figures['sites']}"
              + (f", {figures['confirmed']} confirmed by the kernel" if figures["kernel_run"] else ""))
        for f in failures:
            print("  " + f[:2000])
        for path in written:
            print(f"  reproducer: {path}")
    return 1 if failures else 0


def _write_reproducers(results: list[dict], args) -> list[str]:
    """Each failing worker's shrunk sequence as repro.c and repro.py under --out (the texts
    leave the summary; their paths stay)."""
    from pathlib import Path

    from codegen.debian import cache_dir

    out = Path(args.out) if args.out else cache_dir() / "reproducers"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    written = []
    for i, r in enumerate(results):
        texts = r.pop("reproducers", None)
        if not texts:
            continue
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for ext, text in texts.items():
            path = out / f"explore-{args.target.split('=')[0]}-{stamp}-w{i}.{ext}"
            path.write_text(text)
            paths[ext] = str(path)
            written.append(str(path))
        r["reproducer_files"] = paths
    return written


def register(sub) -> None:
    p = sub.add_parser("explore", help="differential campaigns: the model against itself or the VM kernel")
    p.add_argument("--target", default="model", help="model (default) or vm[=BZIMAGE|SERIES]")
    p.add_argument("--examples", type=int, default=200, help="random sequences in all (default 200)")
    p.add_argument("--steps", type=int, default=50, help="steps per sequence at most (default 50)")
    p.add_argument("--seed", type=int, help="a seed for reproducible campaigns (worker i gets seed + i)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="workers in parallel (one VM each for vm)")
    p.add_argument("--out", help="where a failure's C and Python reproducers go (default: the cache's reproducers/)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--engine", metavar="ADDRESS",
                   help="submit the campaign to a Dask distributed scheduler (tcp://HOST:8786): --jobs tasks on its "
                        "workers, on any machine (conformance/distributed.py)")
    p.add_argument("--db", metavar="redis://HOST:PORT",
                   help="with --engine: hypothesis's RedisExampleDatabase on that server, shared by every worker, so "
                        "a failure found on one machine replays on the others")
    p.add_argument("--coverage", metavar="FILE",
                   help="write the outcomes and model raise sites the campaign reached as JSON, merged into FILE "
                        "when it exists (with `run --coverage FILE`: the suite plus the campaign)")
    p.set_defaults(func=_cmd_explore)
