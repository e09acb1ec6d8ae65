"""The mock IOMMU driver of selftest.c: mock devices, their iommu_ops, mock domains (AMDv1
page tables from model/pt with the mock's 2 KiB granule) and nested domains with their IOTLB.

device.c and hw_pagetable.c call these through a device's `ops`, as the kernel calls
dev_iommu_ops(dev); the rest of the model never imports this file.
"""
from __future__ import annotations

import ctypes
import errno

from model import fault_inject
from model.device import IOMMU_CAP_CACHE_COHERENCY, IOMMU_CAP_DIRTY_TRACKING, IOMMU_NO_PASID
from model.domain import IommuDomain
from model.driver import iommufd_viommu_get_vdev_id
from model.hw_pagetable import copy_struct_from_user_array, copy_struct_from_user_data
from model.objects import IommufdError
from model.pt.table import amdv1_mock, amdv1_mock_huge
from model.selftest.viommu import mock_get_viommu_size, mock_viommu_init
from model.uapi import B

MOCK_DIRTY_TRACK = 1
MOCK_PASID_WIDTH = 20  # iommufd_test.h (a #define the bindings do not carry)
IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF
IOMMU_HWPT_DATA_SELFTEST = 0xDEAD
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_TEST_DEV_CACHE_DEFAULT = 0xBADDAD
IOMMU_TEST_INVALIDATE_FLAG_ALL = 1 << 0
MOCK_NESTED_DOMAIN_IOTLB_NUM = 4
MOCK_DEV_CACHE_NUM = 4


def _u32s(*names):
    return type("S", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_uint32) for n in names]})


# struct iommu_hwpt_selftest, iommu_hwpt_invalidate_selftest, iommu_test_hw_info (iommufd_test.h)
HwptSelftest = _u32s("iotlb", "pagetable_type")
HwptInvalidateSelftest = _u32s("flags", "iotlb_id")
TestHwInfo = _u32s("flags", "test_reg")


class MockIommuDevice:
    """struct mock_iommu_device: the one mock IOMMU instance (viommu->iommu_dev)."""


MOCK_IOMMU = MockIommuDevice()


class MockDomainOps:
    """iommu_domain_ops of a mock paging domain (amdv1_mock_ops): attach_dev and set_dev_pasid."""

    set_dev_pasid = True


class MockNestedOps(MockDomainOps):
    """domain_nested_ops: with cache_invalidate_user."""

    @staticmethod
    def cache_invalidate_user(domain, array) -> None:
        """mock_domain_cache_invalidate_user(): EINVAL for another data type; per entry: the
        copy's errors, EOPNOTSUPP unknown flags, EINVAL iotlb_id > MAX; entry_num answers the
        entries processed."""
        processed = 0
        try:
            if array.type != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST:
                raise IommufdError(errno.EINVAL)
            for i in range(array.entry_num):
                inv = copy_struct_from_user_array(array, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
                                                  HwptInvalidateSelftest, 8, i)
                if inv.flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise IommufdError(errno.EOPNOTSUPP)
                if inv.iotlb_id > B.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX:
                    raise IommufdError(errno.EINVAL)
                if inv.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    domain.iotlb[:] = [0] * MOCK_NESTED_DOMAIN_IOTLB_NUM
                else:
                    domain.iotlb[inv.iotlb_id] = 0
                processed += 1
        finally:
            array.entry_num = processed


class MockDirtyOps:
    """amdv1_mock_dirty_ops: set_dirty_tracking() (mock_domain_set_dirty_tracking())."""

    @staticmethod
    def set_dirty_tracking(domain, enable: bool) -> None:
        if enable and domain.dirty_ops is None:
            raise IommufdError(errno.EINVAL)
        domain.mock_flags = (domain.mock_flags | MOCK_DIRTY_TRACK) if enable else (domain.mock_flags & ~MOCK_DIRTY_TRACK)


PAGING_DOPS = MockDomainOps()
NESTED_DOPS = MockNestedOps()


class MockDev:
    """struct mock_dev: one device on the mock bus, alone in its iommu_group."""

    is_pci = False
    iommu_dev = MOCK_IOMMU

    def __init__(self, flags: int, ops: "MockIommuOps"):
        self.flags = flags
        self.ops = ops
        self.group = object()
        # mock_dev_create() gives every device the "pasid-num-bits" property: MOCK_PASID_WIDTH
        # with MOCK_FLAGS_DEVICE_PASID, else 0 (selftest.c:986), and dev_iommu_get_max_pasids()
        # makes that 1 << bits (iommu.c:448): a device without PASIDs has max_pasids 1, so a
        # PASID attach is EINVAL (pasid >= max_pasids, iommu_attach_device_pasid()), not skipped.
        self.max_pasids = 1 << (MOCK_PASID_WIDTH if flags & B.MOCK_FLAGS_DEVICE_PASID else 0)
        self.cache = [IOMMU_TEST_DEV_CACHE_DEFAULT] * MOCK_DEV_CACHE_NUM
        self.viommu = None
        self.vdev_id = 0
        self.domain = ops.blocked_domain
        self.pasid_1024_fake_error = False
        self.iopf_refcount = 0

    def resv_regions(self) -> list[tuple[int, int]]:
        """iommu_get_resv_regions(): the mock driver has none."""
        return []


class MockIommuOps:
    """struct iommu_ops mock_ops."""

    user_pasid_table = True  # selftest.c:863: faults on any PASID may go to the RID's nested domain

    def __init__(self):
        self.blocked_domain = IommuDomain(None, type="BLOCKED", owner=self)
        self.blocked_domain.dops = PAGING_DOPS

    @staticmethod
    def capable(dev: MockDev, cap: str) -> bool:
        """mock_domain_capable()."""
        if cap == IOMMU_CAP_CACHE_COHERENCY:
            return True
        if cap == IOMMU_CAP_DIRTY_TRACKING:
            return not dev.flags & B.MOCK_FLAGS_DEVICE_NO_DIRTY
        return False

    @staticmethod
    def hw_info(dev: MockDev, type: int) -> tuple[bytes, int]:
        """mock_domain_hw_info(): EOPNOTSUPP unless DEFAULT or SELFTEST."""
        if type not in (B.IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_SELFTEST):
            raise IommufdError(errno.EOPNOTSUPP)
        return bytes(TestHwInfo(0, IOMMU_HW_INFO_SELFTEST_REGVAL)), IOMMU_HW_INFO_TYPE_SELFTEST

    def domain_alloc_paging_flags(self, dev: MockDev, flags: int, user_data) -> IommuDomain:
        """mock_domain_alloc_paging_flags() + mock_domain_alloc_pgtable()."""
        paging_flags = (B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | B.IOMMU_HWPT_ALLOC_NEST_PARENT
                        | B.IOMMU_HWPT_ALLOC_PASID)
        has_dirty = flags & B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
        if flags & ~paging_flags or (has_dirty and dev.flags & B.MOCK_FLAGS_DEVICE_NO_DIRTY):
            raise IommufdError(errno.EOPNOTSUPP)
        cfg = HwptSelftest()
        if user_data is not None:
            if user_data.type not in (IOMMU_HWPT_DATA_SELFTEST, B.IOMMU_HWPT_DATA_NONE):
                raise IommufdError(errno.EOPNOTSUPP)
            cfg = copy_struct_from_user_data(user_data, IOMMU_HWPT_DATA_SELFTEST, HwptSelftest, 4)
        fault_inject.kmalloc("mock_domain_alloc_pgtable: kzalloc")  # selftest.c:433, before the type check
        if cfg.pagetable_type == B.MOCK_IOMMUPT_DEFAULT:
            table = amdv1_mock()
        elif cfg.pagetable_type == B.MOCK_IOMMUPT_HUGE:
            table = amdv1_mock_huge()
        else:
            raise IommufdError(errno.EOPNOTSUPP)
        domain = IommuDomain(table, owner=self, dirty_ops=MockDirtyOps if has_dirty else None)
        domain.dops = PAGING_DOPS
        domain.mock_flags = 0
        return domain

    def domain_alloc_nested(self, dev: MockDev, parent: IommuDomain, flags: int, user_data) -> IommuDomain:
        """mock_domain_alloc_nested() -> __mock_domain_alloc_nested()."""
        if flags & ~B.IOMMU_HWPT_ALLOC_PASID:
            raise IommufdError(errno.EOPNOTSUPP)
        if parent is None or parent.type != "UNMANAGED":
            raise IommufdError(errno.EINVAL)
        return self.alloc_nested(user_data)

    def alloc_nested(self, user_data, viommu=None) -> IommuDomain:
        if user_data.type != IOMMU_HWPT_DATA_SELFTEST:
            raise IommufdError(errno.EOPNOTSUPP)
        cfg = copy_struct_from_user_data(user_data, IOMMU_HWPT_DATA_SELFTEST, HwptSelftest, 4)
        domain = IommuDomain(None, type="NESTED", owner=self)
        domain.dops = NESTED_DOPS
        domain.iotlb = [cfg.iotlb] * MOCK_NESTED_DOMAIN_IOTLB_NUM
        domain.mock_viommu = viommu
        return domain

    # -- the domain ops' attach_dev / set_dev_pasid --------------------------------------------

    def attach_dev(self, domain: IommuDomain, dev: MockDev) -> None:
        """mock_domain_nop_attach(): a dirty-tracking domain refuses a NO_DIRTY device (EINVAL);
        a nested domain of a vIOMMU needs the device's vDEVICE; IOPF is enabled for a domain
        with a fault handler and disabled for the one left."""
        if domain.dirty_ops is not None and dev.flags & B.MOCK_FLAGS_DEVICE_NO_DIRTY:
            raise IommufdError(errno.EINVAL)
        new_viommu = getattr(domain, "mock_viommu", None) if domain.type == "NESTED" else None
        vdev_id = 0
        if new_viommu is not None:
            vdev_id = iommufd_viommu_get_vdev_id(new_viommu, dev)  # ENOENT without a vDEVICE there
        self._enable_iopf(dev, domain)
        self._disable_iopf(dev, dev.domain)
        dev.viommu, dev.vdev_id = new_viommu, vdev_id
        dev.domain = domain

    # get_viommu_size / viommu_init: the selftest vIOMMU (model/selftest/viommu.py)
    get_viommu_size = staticmethod(mock_get_viommu_size)
    viommu_init = staticmethod(mock_viommu_init)

    def set_dev_pasid(self, domain: IommuDomain, dev: MockDev, pasid: int, old) -> None:
        """mock_domain_set_dev_pasid_nop(): PASID 1024 fails every second non-blocking set
        (ENOMEM), to exercise the core's rollback."""
        if pasid == 1024:
            if domain.type == "BLOCKED":
                dev.pasid_1024_fake_error = False
            elif dev.pasid_1024_fake_error:
                dev.pasid_1024_fake_error = False
                raise IommufdError(errno.ENOMEM)
            else:
                dev.pasid_1024_fake_error = True
        self._enable_iopf(dev, domain)
        self._disable_iopf(dev, old)

    def detach(self, domain: IommuDomain, dev: MockDev, pasid: int) -> None:
        """iommu_detach_group_handle() / iommu_detach_device_pasid(): back to blocking."""
        if pasid == IOMMU_NO_PASID:
            self.attach_dev(self.blocked_domain, dev)
        elif dev.max_pasids:
            self.set_dev_pasid(self.blocked_domain, dev, pasid, domain)

    @staticmethod
    def _enable_iopf(dev: MockDev, domain) -> None:
        if domain is None or domain.iopf_handler is None:
            return
        dev.iopf_refcount += 1

    @staticmethod
    def _disable_iopf(dev: MockDev, domain) -> None:
        if domain is None or domain.iopf_handler is None:
            return
        dev.iopf_refcount -= 1


MOCK_OPS = MockIommuOps()
MOCK_IOMMU.ops = MOCK_OPS  # iommu_dev->ops


def mock_dev_create(dev_flags: int) -> MockDev:
    """mock_dev_create(): EINVAL for flags other than NO_DIRTY and PASID."""
    if dev_flags & ~(B.MOCK_FLAGS_DEVICE_NO_DIRTY | B.MOCK_FLAGS_DEVICE_PASID):
        raise IommufdError(errno.EINVAL)
    return MockDev(dev_flags, MOCK_OPS)
