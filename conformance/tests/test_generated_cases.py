"""The generated cases (generated/linux_X_Y/cases.py, from codegen/cases.py), one test each.

Generic kinds run on the all-zero command and also hold the generated validator to the same
answer; kinds that need a valid command take it from conformance/tests/bases.py: one per ioctl,
and for IOMMU_TEST_CMD one per union member (its fields mean something only under their op).
"""
import errno

import pytest

from conformance.report import Errno
from conformance.tests.bases import BASES, TEST_CMD_BASES, close_devices, iommu_test_cmd
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
    IOASes a mock device's object (its device ID where HWPTs are taken too, else its HWPT)."""
    from conformance.tests.helpers import ioas_alloc, mock_device

    row = B.BY_NAME[case.ioctl]
    types = next(s.object_types for s in row.ids if s.name == case.field)
    if "IOAS" not in types:
        return ioas_alloc(fd)
    _, hwpt, idev = mock_device(fd, ioas_alloc(fd))
    return idev if "HWPT" in types else hwpt


@pytest.fixture(autouse=True)
def _close_devices(iommufd):
    yield  # torn down before iommufd is closed
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
    base = iommu_test_cmd(iommufd, case.field) if case.ioctl == "IOMMU_TEST_CMD" else BASES[case.ioctl](iommufd)
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


def _base_ids():
    present = {(c.ioctl, c.field.split(".")[0] if "." in c.field and c.ioctl == "IOMMU_TEST_CMD" else "")
               for c in B.CASES if c.needs_base}
    return sorted(present)


@pytest.mark.parametrize("ioctl,member", _base_ids(), ids=lambda v: v or "-")
def test_base_command_succeeds_unchanged(iommufd, ioctl, member):
    """Each case above changes one field of a command that would succeed: the base must."""
    base = TEST_CMD_BASES[member](iommufd) if ioctl == "IOMMU_TEST_CMD" else BASES[ioctl](iommufd)
    assert _answer(iommufd, B.BY_NAME[ioctl].number, bytearray(base.cmd)) == 0
