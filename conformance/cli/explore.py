"""`explore --target model|vm[=...]`: differential campaigns (conformance/explore.py).

model: the model against a second model context, every invariant checked after every step;
vm: the model on this machine against the test kernel's /dev/iommu in a guest, whose executor
(conformance/executor) makes the kernel's steps (one VM per worker). --jobs J runs J workers in
parallel with seeds S, S+1, ...; the report gives steps and steps per second.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from conformance.run import ROOT


def _worker_args(other: str, examples: int, steps: int, seed, mix: str = "full") -> list[str]:
    out = ["--other", other, "--examples", str(examples), "--steps", str(steps), "--mix", mix]
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

    other = "vm" if target.name == "vm" else "model"
    vm_args = []
    if other == "vm":
        vm_args = [*(["--vm-kernel", target.value] if target.value else []),
                   *(["--vm-profile", target.profile] if target.profile else [])]

    def run_worker(worker):
        # a host process per worker: hypothesis and the model here, for vm a guest of its own
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "conformance.explore",
                            *_worker_args(other, per, args.steps, seeds[worker], args.mix), *vm_args],
                           capture_output=True, text=True, cwd=str(ROOT))
        sys.stdout.write(p.stdout if p.returncode else "")
        sys.stderr.write(p.stderr)
        return _result(p.stdout) or {"failure": f"worker exit {p.returncode}", "steps": 0}

    if args.db and not args.engine:
        raise UsageError("explore --db needs --engine (a local campaign keeps its database in the cache)")
    if args.engine:
        from conformance import distributed

        try:
            results, wall = distributed.submit(args.engine, args.db, other, args.examples, args.steps, jobs, seeds,
                                               vm=(target.value, target.profile) if other == "vm" else None,
                                               mix=args.mix)
        except OSError as e:
            raise UsageError(f"explore --engine {args.engine}: {e}") from None
    else:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(run_worker, range(jobs)))
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
               "raise_sites": {k: figures[k] for k in ("sites", "reachable", "reached", "confirmed")}, "workers": results}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"explore {args.target}: {jobs} worker(s), {per * jobs} sequences of up to {args.steps} steps: "
              f"{steps} steps in {wall:.1f} s ({steps / wall:.0f} steps/s), "
              f"{'no disagreement' if not failures else f'{len(failures)} failure(s)'}")
        rates = [r["steps_per_s"] for r in results if r.get("steps_per_s")]
        if rates:  # a worker's own rate leaves out its start (a VM's boot)
            print(f"  per worker: {', '.join(f'{x:.0f}' for x in rates)} steps/s")
        print(f"  model raise sites reached: {figures['reached']} of {figures['reachable']} reachable"
              + (f", {figures['confirmed']} confirmed by the kernel" if figures["kernel_run"] else ""))
        for f in failures:
            print("  " + f[:2000])
        for path in written:
            print(f"  reproducer: {path}")
    short = []
    if args.min_steps and steps < args.min_steps:
        short.append(f"{steps} steps, fewer than --min-steps {args.min_steps}")
    if args.max_seconds and wall > args.max_seconds:
        short.append(f"{wall:.0f} s, more than --max-seconds {args.max_seconds:g}")
    for s in short:
        print(f"iommufd-conformance: explore: {s}", file=sys.stderr)
    return 1 if failures or short else 0


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
    p.add_argument("--mix", choices=("full", "plain"), default="full",
                   help="the rules: full (default; every run starts from mock objects) or plain (IOAS, VFIO "
                        "compatibility and the generated rule)")
    p.add_argument("--out", help="where a failure's C and Python reproducers go (default: the cache's reproducers/)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--min-steps", type=int, help="fail unless the campaign ran at least this many steps")
    p.add_argument("--max-seconds", type=float, help="fail if the campaign took longer (wall time, with boots)")
    p.add_argument("--engine", metavar="ADDRESS",
                   help="submit the campaign to a Dask distributed scheduler (tcp://HOST:8786): --jobs tasks on its "
                        "workers, on any machine (conformance/distributed.py); for vm each boots its own guest")
    p.add_argument("--db", metavar="redis://HOST:PORT",
                   help="with --engine: hypothesis's RedisExampleDatabase on that server, shared by every worker, so "
                        "a failure found on one machine replays on the others")
    p.add_argument("--coverage", metavar="FILE",
                   help="write the outcomes and model raise sites the campaign reached as JSON, merged into FILE "
                        "when it exists (with `run --coverage FILE`: the suite plus the campaign)")
    p.set_defaults(func=_cmd_explore)
