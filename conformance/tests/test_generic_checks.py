"""The generic checks that are not per-field cases: an unknown number (ENOTTY), an unreadable
size (EFAULT), a short struct written back only up to its size, and the fields a handler checks
out of the generic order. Size, tail, reserved and flag cases per IOCTL row are generated
(codegen/cases.py -> test_generated_cases.py), holding the validator to the same answers.
"""
import ctypes
import errno

import pytest

from model.uapi import T as B
from conformance.tests.helpers import err

ROWS = [r for r in B.IOCTLS if r.struct]


def _buf(row, size, extra=0):
    buf = bytearray(max(row.size, size) + extra)
    buf[0:4] = size.to_bytes(4, "little")
    return buf


def _errno(fd, number, buf):
    return err(fd.ioctl, number, buf)


def test_unknown_command_is_enotty(iommufd):
    # An IOCTL_OP slot with the right nr but other direction bits: ENOIOCTLCMD -> ENOTTY.
    row = B.BY_NAME["IOMMU_IOAS_ALLOC"]
    buf = _buf(row, row.size)
    assert _errno(iommufd, row.number | (3 << 30) | (len(buf) << 16), buf) == errno.ENOTTY
    # Past the end of the table: iommufd_vfio_ioctl() does not know it either.
    assert _errno(iommufd, (ord(";") << 8) | 0xFF, buf) == errno.ENOTTY


def test_unreadable_size_is_efault(iommufd):
    with pytest.raises(OSError) as e:
        iommufd.ioctl(B.IOMMU_IOAS_ALLOC, 16)  # a pointer into the unmapped first page
    assert e.value.errno == errno.EFAULT


def test_short_user_struct_is_accepted_and_written_back_only_up_to_its_size(iommufd):
    """min_size of IOAS_ALLOC is the whole struct; DESTROY's is too: use IOVA_RANGES' output."""
    alloc = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    iommufd.ioctl(B.IOMMU_IOAS_ALLOC, alloc)
    row = B.BY_NAME["IOMMU_IOAS_IOVA_RANGES"]
    # A user struct longer than the kernel's with a zero tail is fine, and the tail stays.
    buf = bytearray(row.size + 16)
    cmd = B.iommu_ioas_iova_ranges.from_buffer(buf)
    cmd.size = len(buf)
    cmd.ioas_id = alloc.out_ioas_id
    with pytest.raises(OSError) as e:
        iommufd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, buf)
    assert e.value.errno == errno.EMSGSIZE
    assert cmd.num_iovas == 1 and cmd.out_iova_alignment == 1
    assert bytes(buf[row.size:]) == bytes(16)


DEPARTURES = [(r, f) for r in ROWS for f in r.departures]


@pytest.mark.parametrize("row,field", DEPARTURES, ids=lambda x: x.name if hasattr(x, "name") else x[0])
def test_fields_checked_late_or_never_do_not_answer_first(iommufd, row, field):
    """headers/*/handler_facts.json: with no objects, such a field changes nothing.

    An 'after_lookup' field is refused only once the IDs resolve; an 'unchecked' one
    never is. Either way the all-zero command and the one with the field set must get
    the same answer here (which may be EOPNOTSUPP for another field: VIOMMU_ALLOC refuses
    type 0 first; test_no_devices.py sets a valid type), and the validator must not refuse it.
    """
    zero = _buf(row, row.size)
    with_field = _buf(row, row.size)
    with_field[field.offset + field.size - 1] = 0x80
    assert B.validate(row.number, with_field) == 0
    assert _errno(iommufd, row.number, with_field) == _errno(iommufd, row.number, zero)
