"""Coverage from what ran (conformance/coverage.py, model/outcomes.py): the model records each
outcome and raise site as it answers; documents merge; a site is confirmed by a test that also
passed on a kernel target."""
from __future__ import annotations

import ctypes
import errno
import json
import subprocess
import sys
from pathlib import Path

from conformance import coverage
from conformance.report import CaseResult
from model import open_iommufd, outcomes
from model.uapi import B

ROOT = Path(__file__).resolve().parents[2]


def _destroy(fd, id_):
    fd.ioctl(B.IOMMU_DESTROY, B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=id_))


def test_the_model_records_outcomes_and_the_site_that_raised():
    outcomes.take()
    fd = open_iommufd()
    try:
        c = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        fd.ioctl(B.IOMMU_IOAS_ALLOC, c)
        try:
            _destroy(fd, c.out_ioas_id + 100)
        except OSError as e:
            assert e.errno == errno.ENOENT
    finally:
        fd.close()
    got = outcomes.take()
    assert got[(B.IOMMU_IOAS_ALLOC, 0, "")] == 1
    (site,) = [s for (req, e, s) in got if req == B.IOMMU_DESTROY and e == errno.ENOENT]
    file, func, line = site.rsplit(":", 2)
    # the site is a raise statement of the model's source, listed by raise_sites()
    assert file.startswith("model/") and "raise IommufdError(errno.ENOENT)" in \
        (ROOT / file).read_text().splitlines()[int(line) - 1]
    assert outcomes.raise_sites()[site] == "ENOENT"
    assert not outcomes.OUTCOMES  # take() starts afresh


def test_raise_sites_name_each_raise_under_its_innermost_function():
    sites = outcomes.raise_sites()
    for site, e in list(sites.items())[:400]:
        file, func, line = site.rsplit(":", 2)
        text = (ROOT / file).read_text().splitlines()[int(line) - 1]
        assert "raise" in text and (e == "?" or e in text or (e == "ENOSYS" and "NotModelled" in text)), site
    assert any(e == "ENOSYS" for e in sites.values())


def _case(nodeid, outcome, calls, sites=()):
    return CaseResult(nodeid, "x", outcome=outcome, calls=list(calls), sites={s: 1 for s in sites})


def test_documents_merge_and_kernel_passes_confirm_sites(tmp_path):
    site = next(iter(outcomes.raise_sites()))
    model = coverage.from_results("model", [_case("t::a", "passed", [("IOMMU_DESTROY", 2)], [site]),
                                            _case("t::b", "passed", [("IOMMU_DESTROY", 0)])])
    assert model["outcomes"]["model"]["IOMMU_DESTROY"] == {"ENOENT": 1, "success": 1}
    s = coverage.summary(model)
    assert s["reached"] == 1 and s["confirmed"] == 0 and not s["kernel_run"] and site not in s["unreached"]
    vm_failed = coverage.from_results("vm", [_case("t::a", "failed", [("IOMMU_DESTROY", 22)])])
    assert coverage.summary(coverage.merge(model, vm_failed))["confirmed"] == 0
    vm = coverage.from_results("vm", [_case("t::a", "passed", [("IOMMU_DESTROY", 2)])])
    both = coverage.merge(model, vm)
    assert coverage.summary(both)["confirmed"] == 1
    assert both["outcomes"]["vm"]["IOMMU_DESTROY"] == {"ENOENT": 1}
    # writing merges into what the file holds
    f = tmp_path / "cov.json"
    coverage.write(f, model)
    coverage.write(f, vm)
    on_disk = json.loads(f.read_text())
    assert on_disk["passed"] == {"model": ["t::a", "t::b"], "vm": ["t::a"]} and on_disk["sites"] == {site: ["t::a"]}
    text = coverage.render(on_disk)
    assert "model raise sites reached: 1 of" in text and "1 by a test that also passed on the kernel" in text


def test_run_writes_and_merges_a_coverage_file(tmp_path):
    f = tmp_path / "cov.json"
    for k in ("unmap_all", "test_destroy"):
        p = subprocess.run([sys.executable, "-m", "conformance.cli", "run", "-k", k, "--coverage", str(f)],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads(f.read_text())
    passed = doc["passed"]["model"]
    assert any("unmap_all" in t for t in passed) and any("test_destroy" in t for t in passed)
    assert doc["sites"] and "model raise sites reached" in p.stdout
