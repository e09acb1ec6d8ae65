"""`kernel selftest --target model`: the reasons given for the model's known failures, and the
report that fails the command for a failure without one."""
from __future__ import annotations

from conformance import selftests
from conformance.cli.kernel import _report_model


def _result(name, passed=(), failed=(), skipped=(), status=0):
    r = selftests.SelftestResult(name, list(passed), list(failed), list(skipped))
    r.exit_status = status
    return r


GRANTED = selftests.Host(hugepages=64, sys_resource=True)
DENIED = selftests.Host(hugepages=0, sys_resource=False)


def test_excuses_hold_only_while_their_condition_does():
    assert "CAP_SYS_RESOURCE" in selftests.model_failure_reason("change_process.account_mm.basic", DENIED)
    assert selftests.model_failure_reason("change_process.account_mm.basic", GRANTED) is None
    assert selftests.model_failure_reason("iommufd.global_options", GRANTED) is None
    assert selftests.model_failure_reason("change_process.account_none.basic", DENIED) is None
    assert selftests.model_failure_reason("iommufd_ioas.mock_domain.access_rw", DENIED) is None
    # huge page variants are excused only when the host could not reserve the pages
    case = "iommufd_dirty_tracking.domain_dirty64M_huge.set_dirty_tracking"
    assert selftests.model_failure_reason(case, GRANTED) is None
    assert "huge pages" in selftests.model_failure_reason(case, DENIED)
    # no excuse is unconditional: each one lapses on a host that grants everything
    for e in selftests.MODEL_EXCUSES:
        assert not e.holds(GRANTED), e.pattern


def test_this_hosts_capability_is_read_from_capget():
    import os
    from model.libc import effective_caps
    host = selftests.Host.now(7)
    assert host.hugepages == 7
    assert host.sys_resource == bool(effective_caps(os.getpid()) >> 24 & 1)


def test_report_fails_on_an_unexplained_failure_and_compares_with_the_kernel(capsys):
    vm = [_result("iommufd", passed=["a.b.c", "a.b.d", "x.y.z", "f.g_huge.h"])]
    ok = [_result("iommufd", passed=["a.b.c"], failed=["change_process.account_mm.basic"], skipped=["a.b.d"],
                  status=1)]
    # a.b.d skipped on the model only (the kernel passes it), x.y.z not run at all: both fail the report
    assert _report_model(ok, DENIED, None, 1.0, vm) is True
    out = capsys.readouterr().out
    assert "SKIP a.b.d on the model, passes on the kernel: NO KNOWN REASON" in out and "MISSING x.y.z" in out
    assert "FAIL change_process.account_mm.basic (fails on the kernel too): its set-up sets IOMMU_OPTION_RLIMIT_MODE" in out
    # a skip the kernel passes is allowed only with a reason that holds here
    skipped_huge = [_result("iommufd", passed=["a.b.c", "a.b.d", "x.y.z"], skipped=["f.g_huge.h"])]
    assert _report_model(skipped_huge, DENIED, None, 1.0, vm) is False
    assert _report_model(skipped_huge, GRANTED, None, 1.0, vm) is True
    explained = [_result("iommufd", passed=["a.b.c", "a.b.d", "x.y.z"], failed=["f.g_huge.h"], status=1)]
    assert _report_model(explained, DENIED, None, 1.0, vm) is False
    assert _report_model(explained, GRANTED, None, 1.0, vm) is True  # the same failure, no longer excused
    unexplained = [_result("iommufd", passed=["a.b.c"], failed=["a.b.d", "x.y.z"], status=1)]
    assert _report_model(unexplained, DENIED, None, 1.0, vm) is True
    assert "FAIL a.b.d (passes on the kernel): NO KNOWN REASON" in capsys.readouterr().out
    assert _report_model([_result("iommufd", status=None)], DENIED, None, 1.0, None) is True  # timed out
