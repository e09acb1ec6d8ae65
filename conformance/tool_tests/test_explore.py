"""explore: the model against a second model context, invariants after every step; a broken
invariant is found and reported; the example database lives outside the clone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conformance import explore

ROOT = Path(__file__).resolve().parents[2]


def test_a_model_campaign_runs_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("IOMMUFD_CONFORMANCE_CACHE", str(tmp_path))
    r = explore.campaign("model", examples=30, steps=20, seed=3)
    assert r["failure"] is None and r["steps"] >= 30
    assert Path(explore.database("model").path) == tmp_path / "hypothesis" / "explore-model"


def test_a_broken_invariant_is_found(tmp_path, monkeypatch):
    """A broken invariant is found, kept in the example database, and comes with both
    reproducers (conformance/repro.py), which the command writes under --out."""
    from conformance.cli.explore import _write_reproducers
    from model.main import IommufdCtx

    monkeypatch.setenv("IOMMUFD_CONFORMANCE_CACHE", str(tmp_path))

    def broken(self):
        assert len(self.objects.objects) < 2, "two objects"

    monkeypatch.setattr(IommufdCtx, "check_invariants", broken)
    r = explore.campaign("model", examples=100, steps=20, seed=3)
    assert r["failure"] and "two objects" in r["failure"]
    assert any((tmp_path / "hypothesis" / "explore-model").rglob("*"))  # kept: it replays next run
    assert "two objects" in r["reproducers"]["c"] and "int main(void)" in r["reproducers"]["c"]
    args = type("Args", (), {"out": str(tmp_path / "out"), "target": "model"})()
    written = _write_reproducers([r], args)
    assert sorted(Path(p).suffix for p in written) == [".c", ".py"] and "reproducers" not in r
    assert all(Path(p).read_text() for p in written)


def test_explore_command_with_workers():
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "explore", "--examples", "20", "--steps", "10",
                        "--jobs", "2", "--seed", "7", "--json"], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["jobs"] == 2 and r["steps"] > 0 and r["failures"] == [] and len(r["workers"]) == 2
