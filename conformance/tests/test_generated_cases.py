"""The generated cases (generated/linux_X_Y/cases.py, from codegen/cases.py), one test each.

Generic kinds run on the all-zero command and also hold the generated validator to the same
answer; kinds that need a valid command take it from conformance/tests/bases.py (device-facing
ones on a mock device) and skip, saying why, where there is none (the vIOMMU family).
"""
import errno

import pytest

from conformance.report import Errno
from conformance.tests.bases import BASES, close_devices
from conformance.tests.helpers import err
from model.uapi import T as B


def _answer(fd, number, buf) -> int:
    return err(fd.ioctl, number, buf)


def _put(buf: bytearray, offset: int, size: int, value: int) -> None:
    buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _expect(case) -> int:
    return 0 if case.expect == "0" else getattr(errno, case.expect)


def _wrong_type_id(fd, case) -> int:
    """An existing object of a type the field does not take: an IOAS, or for a field that takes
    IOASes the HWPT of a mock device (IOMMU_TEST_CMD)."""
    from conformance.tests.helpers import ioas_alloc, mock_domain

    row = B.BY_NAME[case.ioctl]
    types = next(s.object_types for s in row.ids if s.name == case.field)
    if "IOAS" not in types:
        return ioas_alloc(fd)
    if "HWPT" in types:
        pytest.skip(f"{case.ioctl}.{case.field} takes IOASes and HWPTs: another type needs a vIOMMU or access")
    return mock_domain(fd, ioas_alloc(fd))[1]


@pytest.fixture(autouse=True)
def _close_devices():
    yield
    close_devices()


@pytest.mark.parametrize("case", B.CASES, ids=lambda c: f"{c.ioctl}-{c.kind}-{c.field}")
def test_generated_case(iommufd, case):
    row = B.BY_NAME[case.ioctl]
    if not case.needs_base:
        buf = bytearray(row.size + 8)
        _put(buf, 0, 4, row.size)
        if case.kind == "nonzero_tail":
            _put(buf, 0, 4, row.size + 8)
        _put(buf, case.offset, case.size, case.value)
        got = _answer(iommufd, row.number, buf)
        if case.expect == "as_base":
            exact = bytearray(row.size + 8)
            _put(exact, 0, 4, row.size)
            assert got == _answer(iommufd, row.number, exact) and got != errno.E2BIG
            assert B.validate(row.number, buf) == B.validate(row.number, exact)
        else:
            assert got == _expect(case)
            assert B.validate(row.number, buf) == _expect(case)
        return
    make = BASES.get(case.ioctl)
    if case.ioctl == "IOMMU_TEST_CMD":
        pytest.skip("IOMMU_TEST_CMD's fields are a union chosen by op: one valid command cannot serve them "
                    "(the mock ops are covered by test_mock_domain.py, test_access.py, test_hwpt.py)")
    if make is None:
        pytest.skip(f"conformance/tests/bases.py has no valid {case.ioctl} command yet: it needs a vIOMMU "
                    "(the vIOMMU family comes with its own work)")
    base = make(iommufd)
    buf = bytearray(base.cmd)
    if case.kind == "outputs_in_size":
        size = case.value  # min_size: the bytes after it are not the user's struct
        buf = bytearray(buf[:size]) + bytearray(b"\xa5" * 16)
        _put(buf, 0, 4, size)
        assert _answer(iommufd, row.number, buf) == 0
        assert bytes(buf[size:]) == b"\xa5" * 16
        return
    value = case.value
    if case.kind == "id_wrong_type":
        value = _wrong_type_id(iommufd, case)
    _put(buf, case.offset, case.size, value)
    got = _answer(iommufd, row.number, buf)
    if case.field in base.unread and case.kind in ("bad_pointer", "id_missing", "id_wrong_type"):
        assert got == 0, base.unread[case.field]
    elif (case.kind, case.field) in base.answers:
        name, why = base.answers[(case.kind, case.field)]
        assert got == Errno(getattr(errno, name)), why
    else:
        assert got == Errno(_expect(case))
