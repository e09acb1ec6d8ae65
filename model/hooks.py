"""The CONFIG_IOMMUFD_TEST hooks iommufd_private.h declares: selftest.c's functions when the
model plays a test kernel (model/selftest/), the header's inline stubs otherwise."""
from __future__ import annotations

from model.limits import CONFIG_IOMMUFD_TEST

if CONFIG_IOMMUFD_TEST:
    from model.selftest import iommufd_selftest_destroy, iommufd_test, iommufd_test_syz_conv_iova_id  # noqa: F401
    from model.selftest import iommufd_test_dma_buf_iommufd_map  # noqa: F401
else:
    iommufd_test = None  # no IOMMU_TEST_CMD row in the IOCTL_OP table: ENOTTY
    iommufd_selftest_destroy = None  # no IOMMUFD_OBJ_SELFTEST row in the object-ops table

    def iommufd_test_syz_conv_iova_id(ucmd, ioas_id: int, iova: int, flags: int) -> tuple[int, int]:
        return iova, flags

    def iommufd_test_dma_buf_iommufd_map(attach) -> tuple[int, tuple[int, int]]:
        import errno

        return -errno.EOPNOTSUPP, (0, 0)
