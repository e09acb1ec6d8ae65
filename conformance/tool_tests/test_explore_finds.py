"""The explorer reaches the two divergences found outside the project on 7.2.13, so it would have
found them: each old model behaviour is planted back into one of two model contexts, and a
seeded campaign over the rules that lead there must report a disagreement naming the ioctl; the
same campaign without the plant passes. (Both are fixed, with regression tests that pass on the
model and on the 7.2 kernel: test_vfio_compat.py::test_get_info_page_sizes_follow_the_domains,
test_access_file.py.)"""
from __future__ import annotations

import contextvars
import inspect

import pytest
from hypothesis import seed, settings
from hypothesis.stateful import run_state_machine_as_test

from conformance import explore
from model import device, vfio_compat
from model.errors import NotModelled
from model.limits import PAGE_SIZE, ULONG_MAX
from model.pages import IOPT_ADDRESS_FILE, IoptPages

PLANTED: list = []  # the contexts that behave as the old model did


def _machine(keep: set[str], plant: bool):
    """ModelVsKernel against a second model context, with only the rules in `keep` (and the
    set-up), the old behaviour planted in the first context when `plant`."""
    rules = {name for name, v in inspect.getmembers(explore.ModelVsKernel)
             if getattr(v, "hypothesis_stateful_rule", None) is not None}

    def __init__(self):
        explore.ModelVsKernel.__init__(self)
        PLANTED.clear()
        if plant:
            PLANTED.append(self.model.ictx)

    return explore.with_rules(explore.ModelVsKernel, rules - keep, "Planted", OTHER="model", STEPS=0,
                              __init__=__init__)


def _campaign(machine, examples=150, steps=20):
    conf = settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                    report_multiple_bugs=False)
    run_state_machine_as_test(seed(7)(machine), settings=conf)


def _planted_iopt(iopt) -> bool:
    return any(o.iopt is iopt for ctx in PLANTED for o in ctx.objects.of_type("IOAS"))


@pytest.fixture
def old_get_info(monkeypatch):
    """Before the fix the model answered PAGE_SIZE and larger whatever the domains."""
    real = vfio_compat.iommufd_get_pagesizes

    def pagesizes(iopt):
        return ULONG_MAX & ~(PAGE_SIZE - 1) if _planted_iopt(iopt) else real(iopt)

    monkeypatch.setattr(vfio_compat, "iommufd_get_pagesizes", pagesizes)


_IN_PLANTED = contextvars.ContextVar("in_planted", default=False)


@pytest.fixture
def old_access_rw(monkeypatch):
    """Before the fix the model answered ENOSYS for ACCESS_RW of file-backed pages."""
    real_rw, real_pages = device.iommufd_access_rw, IoptPages.rw_access

    def access_rw(access, *a, **k):
        token = _IN_PLANTED.set(any(access.ictx is c for c in PLANTED))
        try:
            return real_rw(access, *a, **k)
        finally:
            _IN_PLANTED.reset(token)

    def rw_access(self, *a, **k):
        if _IN_PLANTED.get() and self.type == IOPT_ADDRESS_FILE:
            raise NotModelled("IOMMU_TEST_OP_ACCESS_RW of file-backed pages")
        return real_pages(self, *a, **k)

    monkeypatch.setattr(device, "iommufd_access_rw", access_rw)
    monkeypatch.setattr(IoptPages, "rw_access", rw_access)


GET_INFO_RULES = {"ioas_alloc", "mock_device", "vfio_ioas", "vfio_get_info"}
ACCESS_RULES = {"ioas_alloc", "map_file", "create_access", "access_rw"}


def test_a_campaign_finds_get_info_ignoring_the_domains(old_get_info):
    with pytest.raises(AssertionError, match="VFIO_IOMMU_GET_INFO"):
        _campaign(_machine(GET_INFO_RULES, plant=True), examples=300)
    _campaign(_machine(GET_INFO_RULES, plant=False), examples=100)  # nothing planted: agreement


def test_a_campaign_finds_access_rw_refusing_file_pages(old_access_rw):
    with pytest.raises(AssertionError, match="ACCESS_RW"):
        _campaign(_machine(ACCESS_RULES, plant=True))
    _campaign(_machine(ACCESS_RULES, plant=False), examples=100)  # nothing planted: agreement
