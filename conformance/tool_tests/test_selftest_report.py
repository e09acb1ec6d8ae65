"""`kernel selftest --target model`: the reasons given for the model's known failures, and the
report that fails the command for a failure without one."""
from __future__ import annotations

from conformance import selftests
from conformance.cli.kernel import _report_model


def _result(name, passed=(), failed=(), skipped=(), status=0):
    r = selftests.SelftestResult(name, list(passed), list(failed), list(skipped))
    r.exit_status = status
    return r


def test_known_failures_have_reasons_and_others_do_not():
    assert "DMABUF_GET" in selftests.model_failure_reason("iommufd_ioas.mock_domain.dmabuf_revoke", 64)
    assert "CAP_SYS_RESOURCE" in selftests.model_failure_reason("change_process.account_mm.basic", 64)
    assert selftests.model_failure_reason("change_process.account_none.basic", 64) is None
    assert selftests.model_failure_reason("iommufd_ioas.mock_domain.access_rw", 64) is None
    # huge page variants are excused only when the host could not reserve the pages
    assert selftests.model_failure_reason("iommufd_dirty_tracking.domain_dirty64M_huge.set_dirty_tracking", 64) is None
    assert "huge pages" in selftests.model_failure_reason(
        "iommufd_dirty_tracking.domain_dirty64M_huge.set_dirty_tracking", 0)


def test_report_fails_on_an_unexplained_failure_and_compares_with_the_kernel(capsys):
    vm = [_result("iommufd", passed=["a.b.c", "a.b.d", "x.y.z"])]
    ok = [_result("iommufd", passed=["a.b.c"], failed=["iommufd_ioas.no_domain.dmabuf_simple"], skipped=["a.b.d"],
                  status=1)]
    # a.b.d skipped on the model only, x.y.z not run at all: MISSING fails the report
    assert _report_model(ok, 64, None, 1.0, vm) is True
    out = capsys.readouterr().out
    assert "SKIP a.b.d on the model only" in out and "MISSING x.y.z" in out
    assert "FAIL iommufd_ioas.no_domain.dmabuf_simple (fails on the kernel too): IOMMU_TEST_OP_DMABUF_GET" in out
    explained = [_result("iommufd", passed=["a.b.c", "a.b.d", "x.y.z"], failed=["z.dmabuf_simple"], status=1)]
    assert _report_model(explained, 64, None, 1.0, vm) is False
    unexplained = [_result("iommufd", passed=["a.b.c"], failed=["a.b.d", "x.y.z"], status=1)]
    assert _report_model(unexplained, 64, None, 1.0, vm) is True
    assert "FAIL a.b.d (passes on the kernel): NO KNOWN REASON" in capsys.readouterr().out
    assert _report_model([_result("iommufd", status=None)], 64, None, 1.0, None) is True  # timed out
