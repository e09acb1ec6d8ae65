"""The served target (conformance/targets.py ServedTarget, `--target served`): the suite re-run
under the preload library against a model server in the parent process, so that the files the
model hands out answer read(), write(), pread(), readlink() and poll() with the kernel's rules,
and fd.mmap() goes through the server; the tests that skip on the model in process run."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.targets import ServedTarget, parse_target

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the preload library")

# what skips on the model in process (conformance/tests/helpers.py kernel_file_semantics())
FILE_TESTS = [
    "conformance/tests/test_access.py::test_the_access_file_is_an_anon_inode_without_read_or_write",
    "conformance/tests/test_fault_queue.py::test_fault_file_semantics",
    "conformance/tests/test_fault_queue.py::test_a_detached_faults_cookie_is_einval",
    "conformance/tests/test_veventq.py::test_veventq_file_semantics",
    "conformance/tests/test_veventq.py::test_the_lost_events_header_moves_and_goes",
    "conformance/tests/test_veventq.py::test_the_veventq_file_outlives_the_iommufd",
]
# the mapping object (a mmap.mmap) through the server
MMAP_TESTS = [
    "conformance/tests/test_viommu_mmap.py::test_the_mapping_is_an_mmap_object",
    "conformance/tests/test_viommu_mmap.py::test_a_closed_mapping_raises_valueerror",
    "conformance/tests/test_viommu_mmap.py::test_a_read_only_mapping_is_a_read_only_mmap_object",
]


def test_served_is_a_target_that_needs_the_preload_library_in_process():
    t = parse_target("served")
    assert isinstance(t, ServedTarget) and t.in_process
    assert "preload" in t.unavailable()  # this process was not started under it
    with pytest.raises(ValueError, match="no value"):
        parse_target("served=x")


def test_the_descriptor_tests_run_and_pass_on_the_served_target():
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs",
                          "--iommufd-target=served", *FILE_TESTS, *MMAP_TESTS],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "iommufd target: served" in out.stdout
    for node in FILE_TESTS + MMAP_TESTS:
        assert f"{node} PASSED" in out.stdout, node
