"""The benchmarks run and report every figure they promise (their values are for the closing
note, not for tests: these only check what cannot be noise)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pagetable_json_has_every_figure():
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "bench", "pagetable", "--json",
                        "--pages-lg2", "12", "--python-pages-lg2", "10"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    for prefix in ("", "c_", "python_"):
        # every rate, size and start-up time was measured (a figure of 0 or inf means it was not)
        for k in ("map_pte_per_s", "unmap_pte_per_s", "lookup_per_s", "bytes_per_page", "warm_start_s"):
            assert isinstance(r[prefix + k], float) and 0 < r[prefix + k] < math.inf, prefix + k
    # compiling: numba's and gcc's take time; the plain-Python oracle compiles nothing and says 0
    assert r["cold_compile_s"] > 0 and r["c_cold_compile_s"] > 0 and r["python_cold_compile_s"] == 0.0
    # 2^12 pages of 4 KiB, 4 KiB PTEs only: 8 leaf tables + one per level above = 11 pages
    assert r["bytes_per_page"] == r["c_bytes_per_page"] == 11 * 4096 / 4096
    # per format, numba against the run-filling C baseline (conformance/bench/c/pt_fill.c)
    assert set(r["formats"]) == {"amdv1", "vtdss", "x86_64"}
    for name, f in r["formats"].items():
        for k in ("map_pte_per_s", "unmap_pte_per_s", "lookup_per_s", "bytes_per_page"):
            for side in ("numba", "c"):
                assert isinstance(f[side][k], float) and 0 < f[side][k] < math.inf, (name, side, k)
            assert f["ratio"][k] == f["numba"][k] / f["c"][k], (name, k)
        assert f["numba"]["bytes_per_page"] == f["c"]["bytes_per_page"] == 11.0, name


def test_cli_output_into_a_closed_pipe_is_quiet():
    p = subprocess.run(f"{sys.executable} -m conformance.cli bench ioas -- -n 200 --areas 0 | head -1",
                       shell=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert "Traceback" not in p.stderr and p.stdout.startswith("operation")


def _ratio_run(bench: str) -> tuple[float, float, float]:
    """`bench BENCH -- -n 50`: (baseline, other, printed ratio) from its three lines."""
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "bench", bench, "--", "-n", "50"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "IOMMU_IOAS_IOVA_RANGES, 50 calls, best of 3:"
    return float(lines[1].split()[-4]), float(lines[2].split()[-3]), float(lines[2].split()[-1].rstrip("x"))


def test_bench_server_reports_both_figures_and_the_ratio():
    direct, served, ratio = _ratio_run("server")
    assert direct > 0 and served > 0
    assert abs(ratio - served / direct) <= 0.01 * ratio + 0.01  # the ratio is of the two printed figures


def test_bench_explore_reports_the_recorders_cost_as_a_ratio():
    direct, recorded, ratio = _ratio_run("explore")
    assert direct > 0 and recorded > 0
    assert abs(ratio - recorded / direct) <= 0.01 * ratio + 0.01


def test_bench_dma_moves_bytes_through_the_model_and_reports_ratios():
    from conformance.bench import dma

    r = dma.run(buffer_mb=2, size=4096, transfers=20)
    small = r["leaves"]["4K"]
    for side in ("model", "c"):
        assert all(v > 0 for v in small[side].values()), small
    assert all(0 < q < 10 for q in small["model_over_c"].values()), small
    assert "2M" in r["leaves"]  # measured, or skipped saying how many huge pages it lacked
