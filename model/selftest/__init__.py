"""What CONFIG_IOMMUFD_TEST adds to iommufd (drivers/iommu/iommufd/selftest.c, uapi in
iommufd_test.h): IOMMU_TEST_CMD, the mock IOMMU, and the hooks the rest of iommufd calls.

The rest of the model reaches this package only through model/hooks.py, as iommufd reaches
selftest.c only through iommufd_private.h; with CONFIG_IOMMUFD_TEST off it is never imported.
"""
from __future__ import annotations

from model.objects import NotModelled
from model.selftest.syz import iommufd_test_syz_conv_iova_id  # noqa: F401 (model/hooks.py takes it from here)


def iommufd_test(ucmd) -> int:
    """iommufd_test(): IOMMU_TEST_CMD, by op. The mock IOMMU is not modelled yet."""
    raise NotModelled("IOMMU_TEST_CMD")
