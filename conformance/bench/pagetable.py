"""`iommufd-conformance bench pagetable [--json]`: the numba page table against two baselines
measured in the same run: the same 4-level walk in C (conformance/bench/pt_walk.c, compiled here
with gcc -O2) and the plain-Python reference (model/pt/reference.py).

Per format (FORMATS: AMDv1 and intel-iommu's VT-d second stage and x86-64 first stage), the
numba table is measured against conformance/bench/c/pt_fill.c, C -O2 that walks as generic_pt's
iterator does (one descent per table item, each leaf table's run of PTEs filled in one loop,
fully covered tables freed on unmap) with that format's entry encoding: bulk map, unmap and
batched lookups of the same 2^20 pages, best of ROUNDS on both sides, their ratios, and bytes of
table memory per mapped 4 KiB page.

Workload: the real AMDv1 format with 4 KiB pages only (every page one PTE): a bulk map of
2^20 pages (one map_range of 4 GiB, physically contiguous), 2^20 random lookups in one batched
call, the bulk unmap; memory per mapped page from the tables allocated; start-up in a fresh
process with numba's cache warm (import to first map) and cold (an empty cache: compile time).
The Python reference runs 2^16 pages (it is slow); its figures are per second all the same.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

C_SOURCE = Path(__file__).with_name("pt_walk.c")
FILL_SOURCE = Path(__file__).with_name("c") / "pt_fill.c"
FORMATS = ("amdv1", "vtdss", "x86_64")
FORMAT_KEYS = ("map_pte_per_s", "unmap_pte_per_s", "lookup_per_s", "bytes_per_page")
ROUNDS = 3
PAGE = 1 << 12
BASE = 1 << 32

_STARTUP = """
import time; t0 = time.perf_counter()
from model.pt.table import amdv1
from model.domain import IOMMU_READ
t = amdv1(pgsize_bitmap=4096)
assert t.map_range(1 << 32, 1 << 33, 4096, IOMMU_READ) == (0, 4096)
print(time.perf_counter() - t0)
"""


def _startup_seconds(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _STARTUP], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return float(out.stdout.split()[-1])


def bench_numba(n: int, m: int) -> dict:
    from model.domain import IOMMU_READ
    from model.pt.table import amdv1

    warm = amdv1(pgsize_bitmap=PAGE)  # compile (or load) before timing
    warm.map_range(BASE, BASE, 2 * PAGE, IOMMU_READ)
    warm.unmap_range(BASE, 2 * PAGE)
    warm.iova_to_phys_many(np.array([BASE], dtype=np.int64))
    t = amdv1(pgsize_bitmap=PAGE)
    t0 = time.perf_counter()
    rc, mapped = t.map_range(BASE, 2 * BASE, n * PAGE, IOMMU_READ)
    t_map = time.perf_counter() - t0
    assert (rc, mapped) == (0, n * PAGE)
    bytes_per_page = t.table_bytes / n
    rnd = np.random.default_rng(0)
    vas = BASE + rnd.integers(0, n, m, dtype=np.int64) * PAGE + rnd.integers(0, PAGE, m, dtype=np.int64)
    t0 = time.perf_counter()
    pas = t.iova_to_phys_many(vas)
    t_lookup = time.perf_counter() - t0
    assert (pas == vas + BASE).all()
    t0 = time.perf_counter()
    assert t.unmap_range(BASE, n * PAGE) == n * PAGE
    t_unmap = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cold:
        cold_s = _startup_seconds(cold)
    warm_s = _startup_seconds(os.environ["NUMBA_CACHE_DIR"])
    return {"map_pte_per_s": n / t_map, "unmap_pte_per_s": n / t_unmap, "lookup_per_s": m / t_lookup,
            "bytes_per_page": bytes_per_page, "warm_start_s": warm_s, "cold_compile_s": cold_s}


def bench_c(n: int, m: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "pt_walk"
        t0 = time.perf_counter()
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(C_SOURCE)], check=True, capture_output=True, text=True)
        compile_s = time.perf_counter() - t0
        out = json.loads(subprocess.run([str(exe), str(n), str(m)], check=True, capture_output=True,
                                        text=True).stdout)
        t0 = time.perf_counter()
        subprocess.run([str(exe), "1", "1"], check=True, capture_output=True)
        start_s = time.perf_counter() - t0
    out.pop("checksum")
    return dict(out, warm_start_s=start_s, cold_compile_s=compile_s)


def bench_python(n: int) -> dict:
    from model.domain import IOMMU_READ
    from model.pt.reference import ReferencePageTable

    t0 = time.perf_counter()
    ref = ReferencePageTable(12, 3, 48, 52, PAGE)
    start_s = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    assert ref.map_range(BASE, 2 * BASE, n * PAGE, IOMMU_READ) == (0, n * PAGE)
    t_map = time.perf_counter() - t0
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rnd = np.random.default_rng(0)
    vas = [int(v) for v in BASE + rnd.integers(0, n, n, dtype=np.int64) * PAGE]
    t0 = time.perf_counter()
    for va in vas:
        ref.iova_to_phys(va)
    t_lookup = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert ref.unmap_range(BASE, n * PAGE) == n * PAGE
    t_unmap = time.perf_counter() - t0
    return {"map_pte_per_s": n / t_map, "unmap_pte_per_s": n / t_unmap, "lookup_per_s": n / t_lookup,
            "bytes_per_page": mem / n, "warm_start_s": start_s, "cold_compile_s": 0.0}


def _format_table(name: str):
    """A 4-level table of the format with 4 KiB pages only (every page one PTE)."""
    from model.pt.table import amdv1, vtdss, x86_64

    return {"amdv1": lambda: amdv1(pgsize_bitmap=PAGE), "vtdss": lambda: vtdss(4, pgsize_bitmap=PAGE),
            "x86_64": lambda: x86_64(4, pgsize_bitmap=PAGE)}[name]()


def bench_format_numba(name: str, n: int, m: int, rounds: int = ROUNDS) -> dict:
    from model.domain import IOMMU_READ, IOMMU_WRITE

    prot = IOMMU_READ | IOMMU_WRITE
    warm = _format_table(name)  # compile (or load) before timing
    warm.map_range(BASE, 2 * BASE, 2 * PAGE, prot)
    warm.iova_to_phys_many(np.array([BASE], dtype=np.int64))
    warm.unmap_range(BASE, 2 * PAGE)
    rnd = np.random.default_rng(0)
    vas = BASE + rnd.integers(0, n, m, dtype=np.int64) * PAGE + rnd.integers(0, PAGE, m, dtype=np.int64)
    best = {"map_pte_per_s": 0.0, "unmap_pte_per_s": 0.0, "lookup_per_s": 0.0}
    for _ in range(rounds):
        t = _format_table(name)
        t0 = time.perf_counter()
        rc = t.map_range(BASE, 2 * BASE, n * PAGE, prot)
        t_map = time.perf_counter() - t0
        assert rc == (0, n * PAGE), rc
        bytes_per_page = t.table_bytes / n
        t0 = time.perf_counter()
        pas = t.iova_to_phys_many(vas)
        t_lookup = time.perf_counter() - t0
        assert (pas == vas + BASE).all()
        t0 = time.perf_counter()
        assert t.unmap_range(BASE, n * PAGE) == n * PAGE
        t_unmap = time.perf_counter() - t0
        for k, v in (("map_pte_per_s", n / t_map), ("unmap_pte_per_s", n / t_unmap), ("lookup_per_s", m / t_lookup)):
            best[k] = max(best[k], v)
    return dict(best, bytes_per_page=bytes_per_page)


def bench_formats(n: int, m: int, rounds: int = ROUNDS) -> dict:
    """{format: {"numba": figures, "c": figures, "ratio": numba / C per figure}}."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "pt_fill"
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(FILL_SOURCE)], check=True, capture_output=True, text=True)
        for name in FORMATS:
            c = json.loads(subprocess.run([str(exe), name, str(n), str(m), str(rounds)], check=True,
                                          capture_output=True, text=True).stdout)
            c.pop("checksum")
            nb = bench_format_numba(name, n, m, rounds)
            out[name] = {"numba": nb, "c": c, "ratio": {k: nb[k] / c[k] for k in FORMAT_KEYS}}
    return out


KEYS = ("map_pte_per_s", "unmap_pte_per_s", "lookup_per_s", "bytes_per_page", "warm_start_s", "cold_compile_s")


def run(pages_lg2: int = 20, python_pages_lg2: int = 16) -> dict:
    n = 1 << pages_lg2
    result = bench_numba(n, n)
    result.update({f"c_{k}": v for k, v in bench_c(n, n).items()})
    result.update({f"python_{k}": v for k, v in bench_python(1 << python_pages_lg2).items()})
    result.update(pages=n, python_pages=1 << python_pages_lg2)
    result["formats"] = bench_formats(n, n)
    return result


def render(r: dict) -> str:
    lines = [f"{'':<18}{'numba':>16}{'C -O2':>16}{'Python ref':>16}{'numba/C':>10}{'numba/Py':>10}"]
    for k in KEYS:
        a, c, p = r[k], r[f"c_{k}"], r[f"python_{k}"]
        fmt = ",.0f" if k.endswith("per_s") else ".3f"
        ratio_c = f"{a / c:.2f}" if c else "-"
        ratio_p = f"{a / p:.2f}" if p else "-"
        lines.append(f"{k:<18}{a:>16{fmt}}{c:>16{fmt}}{p:>16{fmt}}{ratio_c:>10}{ratio_p:>10}")
    lines.append(f"({r['pages']:,} pages of 4 KiB for numba and C, {r['python_pages']:,} for the Python reference;"
                 " rates per second, sizes in bytes, times in seconds; C's start-up is exec to exit and its"
                 " 'cold compile' is gcc)")
    if r.get("formats"):
        lines += ["", f"per format, against C -O2 filling each table's run as generic_pt's iterator does"
                      f" (best of {ROUNDS}):",
                  f"{'format':<8}{'figure':<18}{'numba':>16}{'C -O2 (runs)':>16}{'numba/C':>10}"]
        for name, f in r["formats"].items():
            for k in FORMAT_KEYS:
                fmt = ",.0f" if k.endswith("per_s") else ".3f"
                lines.append(f"{name:<8}{k:<18}{f['numba'][k]:>16{fmt}}{f['c'][k]:>16{fmt}}{f['ratio'][k]:>10.2f}")
    return "\n".join(lines)
