"""Distributed campaigns (conformance/distributed.py): a real Dask scheduler with two worker
processes and a real redis-server, all on loopback. One worker finds a planted model bug; the
other, given one example of its own, replays it from the shared database."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

pytest.importorskip("distributed", reason="dask distributed is a dependency: pip install -e . installs it")
redis = pytest.importorskip("redis", reason="redis-py is a dependency: pip install -e . installs it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of its own on 127.0.0.1, no persistence; yields a URL factory (a fresh
    database number per call)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        n = iter(range(16))
        yield lambda: f"redis://127.0.0.1:{port}/{next(n)}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c, Client(c) as client:
        yield client, sorted(client.scheduler_info()["workers"])


def planted_campaign(db: str, examples: int, seed: int) -> dict:
    """A worker's campaign with the old GET_INFO page sizes planted in one model context (as
    test_explore_finds.py plants it), on the shared database `db`."""
    from conformance import explore
    from conformance.tool_tests import test_explore_finds as finds
    from model import vfio_compat
    from model.limits import PAGE_SIZE, ULONG_MAX

    real = getattr(vfio_compat.iommufd_get_pagesizes, "real", vfio_compat.iommufd_get_pagesizes)

    def pagesizes(iopt):
        return ULONG_MAX & ~(PAGE_SIZE - 1) if finds._planted_iopt(iopt) else real(iopt)

    pagesizes.real = real
    vfio_compat.iommufd_get_pagesizes = pagesizes
    machine = finds._machine(finds.GET_INFO_RULES, plant=True)
    return explore.campaign("model", examples, 20, seed, db=db, machine_base=machine)


def test_a_failure_found_on_one_worker_replays_on_the_other(cluster, redis_server):
    client, (first, second) = cluster
    shared = redis_server()
    t0 = time.perf_counter()
    found = client.submit(planted_campaign, shared, 300, 7, workers=[first], pure=False).result(timeout=600)
    t_find = time.perf_counter() - t0
    assert found["failure"] and "VFIO_IOMMU_GET_INFO" in found["failure"], found
    # the other worker, one example of its own: the shared database's example fails first
    t0 = time.perf_counter()
    replayed = client.submit(planted_campaign, shared, 1, 8, workers=[second], pure=False).result(timeout=600)
    t_replay = time.perf_counter() - t0
    assert replayed["failure"] and "VFIO_IOMMU_GET_INFO" in replayed["failure"], replayed
    assert replayed["steps"] < found["steps"]
    # the same one example against an empty database finds nothing: the replay came from redis
    alone = client.submit(planted_campaign, redis_server(), 1, 8, workers=[second], pure=False).result(timeout=600)
    assert not alone["failure"], alone
    print(f"find on worker 1: {t_find:.1f} s ({found['steps']} steps); replay on worker 2: {t_replay:.1f} s "
          f"({replayed['steps']} steps)")


def test_explore_cli_submits_to_the_engine(cluster, redis_server):
    import json
    import sys
    from pathlib import Path

    client, _ = cluster
    address = client.scheduler.address
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "explore", "--engine", address, "--db", redis_server(),
                        "--examples", "20", "--steps", "10", "--jobs", "2", "--seed", "3", "--json"],
                       capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    assert summary["jobs"] == 2 and len(summary["workers"]) == 2 and summary["steps"] > 0
    assert not summary["failures"]


def test_explore_engine_errors_are_clear(redis_server):
    import sys

    p = subprocess.run([sys.executable, "-m", "conformance.cli", "explore", "--db", "redis://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--db needs --engine" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "explore", "--engine", f"tcp://127.0.0.1:{_free_port()}",
                        "--examples", "1"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--engine" in p.stderr and "Traceback" not in p.stderr
