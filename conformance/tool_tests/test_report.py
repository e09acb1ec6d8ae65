"""The run's reports: KTAP that the kernel's own parser reads, JSON, the matrix, errno names,
skip locations, and `run`'s test selection."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codegen.debian import cache_dir
from conformance import report
from conformance.report import Errno, CaseResult

ROOT = Path(__file__).resolve().parents[2]


def _kunit_parser():
    """tools/testing/kunit/kunit_parser.py of the tree `kernel build` extracted for model.uapi's
    SERIES (the parser's API moves between releases), if any."""
    from model.uapi import SERIES

    for tree in sorted(cache_dir().glob(f"src/linux-source-{SERIES}_*/linux-source-{SERIES}")):
        kunit = tree / "tools" / "testing" / "kunit"
        if (kunit / "kunit_parser.py").is_file():
            sys.path.insert(0, str(kunit))
            try:
                import kunit_parser
                import kunit_printer
            finally:
                sys.path.pop(0)
            return kunit_parser, kunit_printer
    return None


def _results():
    return [
        CaseResult("conformance/tests/test_ioas_map.py::test_a[x-1]", "ioas_map", "passed",
                   calls=[("IOMMU_IOAS_MAP", 0), ("IOMMU_IOAS_MAP", 22)]),
        CaseResult("conformance/tests/test_ioas_map.py::test_b", "ioas_map", "skipped", "model: X is not modelled yet",
                   calls=[("IOMMU_IOAS_ALLOC", 0)]),
        CaseResult("conformance/tests/test_vfio_dma.py::test_c", "vfio_dma", "failed", "assert EINVAL(22) == 0",
                   calls=[("VFIO_IOMMU_MAP_DMA", 22)]),
    ]


def test_ktap_reads_cleanly_with_the_kernels_parser():
    found = _kunit_parser()
    if found is None:
        pytest.skip("no kernel tree with tools/testing/kunit in the cache (run `iommufd-conformance kernel build`)")
    kunit_parser, kunit_printer = found
    text = report.ktap(_results(), ["target: model"])
    test = kunit_parser.parse_run_tests(text.splitlines(), kunit_printer.null_printer)
    assert test.counts.errors == 0, text
    assert (test.counts.passed, test.counts.failed, test.counts.skipped) == (1, 1, 1)
    assert [t.name for t in test.subtests] == ["ioas_map", "vfio_dma"]


def test_ktap_names_and_skips():
    text = report.ktap(_results(), ["target: model"])
    assert "    ok 1 test_a_x-1" in text  # [A-Za-z0-9_-] only
    assert "    ok 2 test_b # SKIP model: X is not modelled yet" in text
    assert "not ok 2 vfio_dma" in text and text.startswith("KTAP version 1\n")


def test_matrix_counts_every_test_under_each_ioctl_it_called():
    m = report.matrix(_results())
    assert m["IOMMU_IOAS_MAP"] == {"cases": 1, "passed": 1, "failed": 0, "skipped": 0, "skip_reasons": {}}
    assert m["IOMMU_IOAS_ALLOC"]["skip_reasons"] == {"model: X is not modelled yet": 1}
    assert m["VFIO_IOMMU_MAP_DMA"]["failed"] == 1


def test_errnos_print_by_name():
    assert repr(Errno(22)) == "EINVAL(22)" and repr(Errno(95)) == "EOPNOTSUPP(95)" and repr(Errno(0)) == "0"


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "conformance.cli", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_run_selects_like_pytest_and_reports(tmp_path):
    ktap, js = tmp_path / "r.ktap", tmp_path / "r.json"
    p = _run("-k", "unmap_all", "--ktap", str(ktap), "--json", str(js))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "target: model" in p.stdout and "IOMMU_IOAS_UNMAP" in p.stdout and "model raise sites reached" in p.stdout
    tests = json.loads(js.read_text())["tests"]
    assert tests and all("unmap_all" in t["nodeid"] for t in tests)
    assert ktap.read_text().startswith("KTAP version 1")
    one = tests[0]["nodeid"]
    p = _run(one, "-v")
    assert p.returncode == 0 and f"{one} PASSED" in p.stdout and "1 passed" in p.stdout


def test_a_failure_names_errnos_and_a_skip_names_its_test(tmp_path):
    t = tmp_path / "test_x.py"
    t.write_text(
        "import errno\nfrom conformance.tests.helpers import err, ioas_alloc\nfrom model.uapi import B\n"
        "def test_fails(iommufd):\n    assert err(ioas_alloc, iommufd) == errno.ENOENT\n"
        "def test_skips(iommufd):\n    from model.errors import NotModelled\n"
        "    def not_modelled(*a):\n        raise NotModelled('IOMMU_X')\n"
        "    iommufd._f.ioctl = not_modelled  # what the model answers for a case it lacks\n"
        "    iommufd.ioctl(B.IOMMU_IOAS_ALLOC, bytearray(64))\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(t)], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert "0 == ENOENT(2)" in p.stdout, p.stdout[-3000:]
    assert "test_x.py:6: model: IOMMU_X is not modelled yet" in p.stdout, p.stdout[-3000:]


class _Lacking:
    """A target whose file answers ENOTTY for some ioctls, as an older kernel would."""

    name = "kernel"

    def __init__(self, missing):
        self.missing = missing

    def describe(self):
        return "a kernel without " + ", ".join(self.missing)

    def open(self):
        from model import open_iommufd
        from conformance.report import ioctl_name

        f = open_iommufd()
        real, missing = f.ioctl, self.missing

        def ioctl(request, arg=0, mutate_flag=True):
            if ioctl_name(request) in missing:
                raise OSError(25, "Inappropriate ioctl for device")
            return real(request, arg, mutate_flag)

        f.ioctl = ioctl
        return f


def test_probe_finds_what_a_target_lacks_and_the_uapi_it_speaks():
    from conformance.probe import probe
    from conformance.targets import parse_target

    p = probe(parse_target("model"))
    assert all(p.ioctls.values()) and p.uapi == "7.2" and p.map_file_memfd == "yes"
    assert p.iommufd_test == "yes"  # the mock IOMMU
    older = probe(_Lacking({"IOMMU_HW_QUEUE_ALLOC", "IOMMU_VEVENTQ_ALLOC"}))
    assert older.lacks("IOMMU_HW_QUEUE_ALLOC") and not older.lacks("IOMMU_IOAS_MAP")
    assert older.uapi == "6.12"  # every ioctl of 6.12, not every one of 7.2


def test_the_suite_skips_what_a_kernel_target_lacks(monkeypatch):
    from conformance import plugin
    from conformance.probe import probe

    target = _Lacking({"IOMMU_IOAS_COPY"})
    monkeypatch.setitem(plugin._PROBES, "kernel", probe(target))
    fd = plugin._Fd(target)
    with pytest.raises(pytest.skip.Exception, match="target lacks IOMMU_IOAS_COPY"):
        fd.ioctl(plugin_b().IOMMU_IOAS_COPY, bytearray(64))
    fd.close()


def plugin_b():
    from model.uapi import B

    return B
