"""main.py's tables are checked at import, like main.c's BUILD_BUG_ONs; these hold the checks
themselves to account with tables that are wrong on purpose."""
from __future__ import annotations

import pytest

from model import main
from model.main import IoctlOp, IoctlTableError, build_ioctl_table, check_object_ops
from model.objects import ObjectOps
from model.uapi import B


def _noop(ucmd):
    return 0


def test_every_iommufd_ioctl_row_has_an_op_or_is_listed():
    rows = {r.name for r in B.IOCTLS if r.struct and r.nr >= B.IOMMUFD_CMD_BASE}
    handled = {op.name for op in main.IOCTL_OPS}
    assert handled | set(main.UNHANDLED) == rows
    assert not handled & set(main.UNHANDLED)


def test_the_dispatch_array_is_indexed_by_nr():
    for i, slot in enumerate(main.IOCTL_TABLE):
        if slot is not None:
            row, handler = slot
            assert row.nr - B.IOMMUFD_CMD_BASE == i and callable(handler)


def test_a_misspelt_name_fails():
    with pytest.raises(IoctlTableError, match="IOMMU_IOAS_ALOC"):
        build_ioctl_table((IoctlOp("IOMMU_IOAS_ALOC", _noop),), B.IOCTLS)


def test_a_vfio_number_is_not_an_iommufd_op():
    with pytest.raises(IoctlTableError, match="VFIO_SET_IOMMU"):
        build_ioctl_table((IoctlOp("VFIO_SET_IOMMU", _noop),), B.IOCTLS)


def test_a_name_twice_fails():
    with pytest.raises(IoctlTableError, match="twice"):
        build_ioctl_table((IoctlOp("IOMMU_DESTROY", _noop), IoctlOp("IOMMU_DESTROY", _noop)), B.IOCTLS)


def test_a_missing_op_is_listed_not_found_at_call_time():
    table, unhandled = build_ioctl_table((IoctlOp("IOMMU_DESTROY", _noop),), B.IOCTLS)
    assert "IOMMU_IOAS_MAP" in unhandled and "IOMMU_DESTROY" not in unhandled
    assert table[B.BY_NAME["IOMMU_DESTROY"].nr - B.IOMMUFD_CMD_BASE][1] is _noop


def test_object_ops_name_kernel_object_types():
    check_object_ops({"IOAS": ObjectOps(destroy=_noop)})
    with pytest.raises(IoctlTableError, match="IOAS_TYPO"):
        check_object_ops({"IOAS_TYPO": ObjectOps(destroy=_noop)})
