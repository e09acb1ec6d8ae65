"""Explore campaigns across machines: Dask distributed schedules the workers, hypothesis's
RedisExampleDatabase on a real redis-server shares what they find.

Why Dask distributed: a campaign is a Python function call (explore.campaign) per worker, and
Dask runs Python callables on a cluster with nothing else to operate: `dask scheduler` on one
machine, `dask worker tcp://SCHEDULER:8786` on each of the others (pip-installable, no broker,
no container runtime), results and exceptions come back as Python objects, and a LocalCluster
gives tests the same scheduler and worker processes on loopback. Celery needs a broker and
result backend for the same; Ray brings its own object store and runtime, far more than a
function call per worker needs.

Why the example database: a failing example that hypothesis shrinks on one machine is saved
under the machine's key; every other worker reading the same redis replays it first (the reuse
phase), so a failure found anywhere replays everywhere, and on the next run too.

A VM campaign distributes the same way: hypothesis and the model stay in the worker's process,
and each task boots a guest on the worker's machine whose executor makes the kernel's steps
(conformance/executor), so the worker machines need QEMU and the test kernel (built or cached
there by `kernel build`).
"""
from __future__ import annotations

import time


def run_campaign(other: str, examples: int, steps: int, seed: int | None, db: str | None, vm=None,
                 mix: str = "full") -> dict:
    """One worker's campaign (the task a Dask worker runs), with its host's name."""
    import socket

    from conformance import explore

    out = explore.campaign(other, examples, steps, seed, db=db, vm=vm, mix=mix)
    out["host"] = socket.gethostname()
    return out


def submit(engine: str, db: str | None, other: str, examples: int, steps: int, jobs: int,
           seeds: list[int | None], vm=None, mix: str = "full") -> tuple[list[dict], float]:
    """The campaign as `jobs` tasks on the Dask scheduler at `engine` (tcp://HOST:PORT); each
    worker runs examples/jobs sequences. Returns each task's result and the wall time."""
    from distributed import Client

    per = -(-examples // jobs)
    t0 = time.perf_counter()
    with Client(engine, timeout="10s") as client:
        futures = [client.submit(run_campaign, other, per, steps, seeds[i], db, vm, mix, pure=False, key=f"explore-{i}-{time.time_ns()}")
                   for i in range(jobs)]
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - a worker's task that died is a failure of the campaign
                results.append({"failure": f"worker task {f.key} failed: {type(e).__name__}: {e}", "steps": 0})
    return results, time.perf_counter() - t0
