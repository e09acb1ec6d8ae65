"""Coverage from what ran (conformance/coverage.py, model/outcomes.py): the model records each
outcome and raise site as it answers; documents merge; a site is confirmed by a test that also
passed on a kernel target."""
from __future__ import annotations

import ast
import ctypes
import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance import coverage
from conformance.report import CaseResult
from model import open_iommufd, outcomes
from model.uapi import B

ROOT = Path(__file__).resolve().parents[2]


def _line_of(file: str, text: str) -> int:
    (n,) = [i for i, ln in enumerate((ROOT / file).read_text().splitlines(), 1) if ln.strip() == text]
    return n


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
    for site, e in sites.items():
        file, func, line = site.rsplit(":", 2)
        text = (ROOT / file).read_text().splitlines()[int(line) - 1]
        raises = "raise" in text or any(f"{h}(" in text for h in outcomes.RAISE_HELPERS)
        assert raises and (e == "?" or e in text or (e == "ENOSYS" and "NotModelled" in text)), site
    assert any(e == "ENOSYS" for e in sites.values())
    # a raise helper's body is no site; each call of it is
    assert not any(func in outcomes.RAISE_HELPERS for func in (s.rsplit(":", 2)[1] for s in sites))
    assert any("_err(" in n for n in outcomes.raise_site_names().values())


def test_a_raise_helper_is_recorded_where_it_is_called():
    """io_pagetable.py's _err(): the site is the caller's line (an IOAS_MAP over an area: EEXIST)."""
    outcomes.take()
    fd = open_iommufd()
    try:
        c = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        fd.ioctl(B.IOMMU_IOAS_ALLOC, c)
        m = B.iommu_ioas_map(size=ctypes.sizeof(B.iommu_ioas_map), ioas_id=c.out_ioas_id, user_va=4096,
                             length=4096, flags=B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_FIXED_IOVA,
                             iova=1 << 20)
        fd.ioctl(B.IOMMU_IOAS_MAP, m)
        try:
            fd.ioctl(B.IOMMU_IOAS_MAP, m)
        except OSError as e:
            assert e.errno == errno.EEXIST
    finally:
        fd.close()
    (site,) = [s for (req, e, s) in outcomes.take() if req == B.IOMMU_IOAS_MAP and e]
    assert site.startswith("model/io_pagetable.py:map_pages:"), site
    assert "_err(" in outcomes.raise_site_names()[site], site


def test_stable_names_survive_edits_above_and_number_repeats():
    src = textwrap.dedent("""
        class Q:
            def read(self, n):
                if n < 0:
                    raise IommufdError(errno.EINVAL)  # a comment is no part of the name
                if n > 9:
                    raise IommufdError(errno.EINVAL)
                _err(errno.ENOENT)
        def read(n):
            raise IommufdError(errno.EINVAL)
        """)

    def scan(text):
        v = outcomes._Raises(Path("model/x.py"))
        v.visit(ast.parse(text))
        return v.names

    before, after = scan(src), scan("import os\n\n\n" + src.replace("  # a comment", "  # edited"))
    assert sorted(before.values()) == sorted(after.values()) == [
        "model/x.py:Q.read: _err(errno.ENOENT)",
        "model/x.py:Q.read: raise IommufdError(errno.EINVAL)",
        "model/x.py:Q.read: raise IommufdError(errno.EINVAL) #2",
        "model/x.py:read: raise IommufdError(errno.EINVAL)"]
    assert set(before) != set(after)  # the line numbers of the sites moved


def test_a_driver_error_inside_invalidate_keeps_its_site():
    """iommufd_hwpt_invalidate() writes entry_num back, then raises what the driver raised: the
    site recorded is the driver's (mock_domain_cache_invalidate_user()), not the re-raise."""
    from conformance.tests import helpers as h

    outcomes.take()
    fd = open_iommufd()
    try:
        ioas = h.ioas_alloc(fd)
        _, _, idev = h.mock_device(fd, ioas)
        parent = h.hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
        nested = h.hwpt_alloc(fd, idev, parent, data_type=B.IOMMU_HWPT_DATA_SELFTEST, data=h.hwpt_selftest())
        inv = B.iommu_hwpt_invalidate_selftest(flags=0, iotlb_id=99)
        e, done = h.hwpt_invalidate(fd, nested, bytes(inv), B.iommu_hwpt_invalidate_selftest,
                                    B.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST)
        assert (e, done) == (errno.EINVAL, 0)
    finally:
        fd.close()
    (site,) = [s for (req, e, s) in outcomes.take() if req == B.IOMMU_HWPT_INVALIDATE and e]
    assert site.startswith("model/selftest/mock.py:cache_invalidate_user:"), site


def test_a_failed_mmap_records_its_site():
    outcomes.take()
    fd = open_iommufd()
    try:
        try:
            fd.mmap(4096, offset=1 << 30)  # no region there: iommufd_fops_mmap() ENXIO
        except OSError as e:
            assert e.errno == errno.ENXIO
    finally:
        fd.close()
    assert outcomes.take()[(outcomes.MMAP, errno.ENXIO, "model/main.py:iommufd_mmap_region:"
                            + str(_line_of("model/main.py", "raise IommufdError(-rc)")))] == 1


def _case(nodeid, outcome, calls, sites=()):
    return CaseResult(nodeid, "x", outcome=outcome, calls=list(calls), sites={s: 1 for s in sites})


def test_documents_merge_and_kernel_passes_confirm_sites(tmp_path):
    listed = coverage.unreachable()
    site = next(s for s, n in outcomes.raise_site_names().items() if n not in listed)
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


# -- the list of sites user space cannot reach (conformance/coverage_unreachable.json) --------------


def test_every_listed_site_is_a_raise_site_with_a_kind_and_a_reason():
    """A listed name that no raise site has any more fails here: the list must follow the model."""
    data = json.loads(coverage.UNREACHABLE.read_text())
    names = set(outcomes.raise_site_names().values())
    stale = sorted(n for n in data["sites"] if n not in names)
    assert not stale, "listed in coverage_unreachable.json, no such raise site:\n" + "\n".join(stale)
    for name, entry in data["sites"].items():
        assert entry["kind"] in data["kinds"], name
        assert entry["reason"].strip() and "\n" not in entry["reason"], name
    assert coverage.summary(coverage.empty())["unknown_listed"] == []


def test_listed_fault_injection_sites_are_reached_by_the_faults_sweeps():
    """faults: true says `iommufd-conformance faults` reaches the site; it must."""
    from conformance import faults

    listed = {n for n, e in coverage.unreachable().items() if e.get("faults")}
    assert listed and all(coverage.unreachable()[n]["kind"] == "fault-injection" for n in listed)
    outcomes.take()
    faults.run("model", list(faults.SCENARIOS))
    names = outcomes.raise_site_names()
    reached = {names[s] for (_, _, s) in outcomes.take() if s in names}
    assert listed <= reached, sorted(listed - reached)


def test_the_figure_is_over_the_sites_not_listed():
    sites = outcomes.raise_sites()
    names = outcomes.raise_site_names()
    a, b, c = sorted(sites)[:3]
    listed = {names[a]: {"kind": "race", "reason": "r"}, names[b]: {"kind": "limit", "reason": "r"},
              "model/gone.py:f: raise IommufdError(errno.EINVAL)": {"kind": "race", "reason": "r"}}
    doc = coverage.from_results("model", [_case("t::a", "passed", [], [b, c])])
    s = coverage.summary(doc, listed)
    assert (s["sites"], s["listed"], s["reachable"]) == (len(sites), 2, len(sites) - 2)
    assert s["reached"] == 1 and c not in s["unreached"] and a not in s["unreached"] and b not in s["unreached"]
    assert s["listed_but_reached"] == [b]  # the list says b cannot be reached: flagged
    assert s["unknown_listed"] == ["model/gone.py:f: raise IommufdError(errno.EINVAL)"]
    assert s["listed_by_kind"] == {"limit": 1, "race": 1}


def test_render_flags_a_reached_listed_site_and_a_stale_name(monkeypatch):
    sites = outcomes.raise_sites()
    names = outcomes.raise_site_names()
    a = sorted(sites)[0]
    listed = {names[a]: {"kind": "race", "reason": "r"}, "model/gone.py:f: x": {"kind": "race", "reason": "r"}}
    monkeypatch.setattr(coverage, "unreachable", lambda path=None: listed)
    text = coverage.render(coverage.from_results("model", [_case("t::a", "passed", [], [a])]))
    assert f"model raise sites reached: 0 of {len(sites) - 1} reachable" in text
    assert "LISTED UNREACHABLE BUT REACHED (1)" in text and a in text
    assert "LISTED BUT NO SUCH RAISE SITE (1)" in text and "model/gone.py:f: x" in text


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the preload library")
def test_a_served_run_records_the_servers_sites(tmp_path):
    """Under --target served the model answers in the parent's server: the plugin takes the
    server's sites around each test (FILE_OUTCOMES), read() of the model's files included."""
    f = tmp_path / "cov.json"
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "run", "--target", "served", "--coverage", str(f),
                        "conformance/tests/test_fault_queue.py", "-k", "semantics"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads(f.read_text())
    espipe = [s for s in doc["sites"] if s.startswith("model/eventq.py:fops_read:")]
    assert espipe and doc["sites"][espipe[0]] == ["conformance/tests/test_fault_queue.py::test_fault_file_semantics"]
