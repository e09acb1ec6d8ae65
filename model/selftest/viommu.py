"""The mock IOMMU's vIOMMU (selftest.c: mock_viommu_*, mock_hw_queue_*): the selftest vIOMMU
type with its driver data and MMIO page, nested domains of a vIOMMU, invalidation of the
devices' caches by virtual ID, and HW queues whose indexes depend on each other.
"""
from __future__ import annotations

import ctypes
import errno

from model.driver import iommufd_alloc_mmap, iommufd_destroy_mmap, iommufd_object_depend, \
    iommufd_object_undepend, iommufd_viommu_find_dev
from model.hw_pagetable import IommuUserData
from model.limits import PAGE_SIZE
from model.memory import KernelPages
from model.objects import IommufdError
from model.uaccess import copy_from_user, copy_struct_from_user, copy_to_user
from model.uapi import B
from model.viommu import IommufdHwQueue, IommufdViommu

IOMMU_TEST_INVALIDATE_FLAG_ALL = 1 << 0
MOCK_DEV_CACHE_NUM = B.MOCK_DEV_CACHE_ID_MAX + 1
SELFTEST_DATA = B.iommu_viommu_selftest
SELFTEST_DATA_MIN = B.iommu_viommu_selftest.out_data.offset + 4  # offsetofend(out_data)
INVALIDATE = B.iommu_viommu_invalidate_selftest
SELFTEST_SIZE = ctypes.sizeof(SELFTEST_DATA)
INVALIDATE_SIZE = ctypes.sizeof(INVALIDATE)


class MockViommu(IommufdViommu):
    """struct mock_viommu: the core vIOMMU first (VIOMMU_STRUCT_SIZE), then the driver's part."""

    def __init__(self):
        super().__init__()
        self.s2_parent = None
        self.hw_queue: list[MockHwQueue | None] = [None] * B.IOMMU_TEST_HW_QUEUE_MAX
        self.mmap_offset = 0
        self.page: KernelPages | None = None  # two pages; the first u32 loops back in_data


class MockHwQueue(IommufdHwQueue):
    """struct mock_hw_queue."""

    def __init__(self):
        super().__init__()
        self.mock_viommu = None
        self.prev = None
        self.index = 0


def _copy_to_user_data(user_data: IommuUserData, data) -> None:
    """iommu_copy_struct_to_user(): EINVAL for another type or a length outside
    [offsetofend(min_last), sizeof]; then the first len bytes."""
    if user_data.type != B.IOMMU_VIOMMU_TYPE_SELFTEST:
        raise IommufdError(errno.EINVAL)
    if user_data.len < SELFTEST_DATA_MIN or user_data.len > SELFTEST_SIZE:
        raise IommufdError(errno.EINVAL)
    copy_to_user(user_data.mem, user_data.uptr, bytes(data)[: user_data.len])


def mock_get_viommu_size(dev, viommu_type: int):
    """mock_get_viommu_size(): the driver's structure for the selftest type only."""
    return MockViommu if viommu_type == B.IOMMU_VIOMMU_TYPE_SELFTEST else None


def mock_viommu_init(viommu: MockViommu, parent_domain, user_data: IommuUserData | None) -> None:
    """mock_viommu_init(): with driver data, read it (iommu_copy_struct_from_user: EINVAL for a
    length outside [8, sizeof]), allocate two zeroed pages, register them for mmap, put in_data
    in the first u32 and answer out_data = in_data, the mmap offset and length (a failure
    unregisters and frees). Then the S2 parent and the ops."""
    if user_data is not None:
        if user_data.type != B.IOMMU_VIOMMU_TYPE_SELFTEST or not (
                SELFTEST_DATA_MIN <= user_data.len <= SELFTEST_SIZE):
            raise IommufdError(errno.EINVAL)
        data = copy_struct_from_user(user_data.mem, SELFTEST_DATA, user_data.uptr, user_data.len)
        viommu.page = KernelPages(viommu.ictx.accounts.memory, 1, "mock_viommu")
        try:
            viommu.mmap_offset = iommufd_alloc_mmap(viommu.ictx, viommu, viommu.page.phys, PAGE_SIZE * 2)
            try:
                viommu.page.buf[0:4] = data.in_data.to_bytes(4, "little")
                data.out_data = data.in_data
                data.out_mmap_length = PAGE_SIZE * 2
                data.out_mmap_offset = viommu.mmap_offset
                _copy_to_user_data(user_data, data)
            except BaseException:
                iommufd_destroy_mmap(viommu.ictx, viommu, viommu.mmap_offset)
                viommu.mmap_offset = 0
                raise
        except BaseException:
            viommu.page.free()
            viommu.page = None
            raise
    viommu.s2_parent = parent_domain
    viommu.ops = MOCK_VIOMMU_OPS


class MockViommuOps:
    """struct iommufd_viommu_ops mock_viommu_ops."""

    @staticmethod
    def destroy(viommu: MockViommu) -> None:
        """mock_viommu_destroy(): the mmap region and the pages go."""
        if viommu.mmap_offset:
            iommufd_destroy_mmap(viommu.ictx, viommu, viommu.mmap_offset)
        if viommu.page is not None:
            viommu.page.free()

    @staticmethod
    def alloc_domain_nested(viommu: MockViommu, flags: int, user_data: IommuUserData):
        """mock_viommu_alloc_domain_nested(): EOPNOTSUPP for flags but PASID; a mock nested
        domain that knows its vIOMMU (attach then needs the device's vDEVICE there)."""
        if flags & ~B.IOMMU_HWPT_ALLOC_PASID:
            raise IommufdError(errno.EOPNOTSUPP)
        return viommu.iommu_dev.ops.alloc_nested(user_data, viommu)  # __mock_domain_alloc_nested()

    @staticmethod
    def cache_invalidate(viommu: MockViommu, array) -> None:
        """mock_viommu_cache_invalidate(): an empty array of the selftest type is accepted; else
        the whole array is copied (another type or an empty one EINVAL, the copy's errors),
        then per entry: EOPNOTSUPP unknown flags, EINVAL cache_id > MAX or a virt_id with no
        vDEVICE; FLAG_ALL clears every cache of the device, else the one. entry_num answers
        the entries done."""
        if array.entry_num == 0 and array.type == B.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST:
            return
        done = 0
        try:
            # iommu_copy_struct_from_full_user_array()
            if array.type != B.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST or not array.entry_num:
                raise IommufdError(errno.EINVAL)
            if array.entry_len == INVALIDATE_SIZE:
                raw = copy_from_user(array.mem, array.uptr, array.entry_num * array.entry_len)
                cmds = [INVALIDATE.from_buffer_copy(raw, i * INVALIDATE_SIZE) for i in range(array.entry_num)]
            else:
                cmds = [copy_struct_from_user(array.mem, INVALIDATE, array.uptr + array.entry_len * i,
                                              array.entry_len) for i in range(array.entry_num)]
            for cur in cmds:
                if cur.flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise IommufdError(errno.EOPNOTSUPP)
                if cur.cache_id > B.MOCK_DEV_CACHE_ID_MAX:
                    raise IommufdError(errno.EINVAL)
                dev = iommufd_viommu_find_dev(viommu, cur.vdev_id)
                if dev is None:
                    raise IommufdError(errno.EINVAL)
                if cur.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    dev.cache[:] = [0] * MOCK_DEV_CACHE_NUM
                else:
                    dev.cache[cur.cache_id] = 0
                done += 1
        finally:
            array.entry_num = done

    @staticmethod
    def get_hw_queue_size(viommu: MockViommu, queue_type: int):
        """mock_viommu_get_hw_queue_size(): the selftest queue type only."""
        return MockHwQueue if queue_type == B.IOMMU_HW_QUEUE_TYPE_SELFTEST else None

    @staticmethod
    def hw_queue_init_phys(hw_queue: MockHwQueue, index: int, base_addr_pa: int) -> None:
        """mock_hw_queue_init_phys(): EINVAL index >= IOMMU_TEST_HW_QUEUE_MAX, EEXIST a taken
        index, EIO when index - 1 has no queue, EFAULT when the base's physical address is not
        what the S2 parent translates its IOVA to; queue N depends on N - 1 (which cannot be
        destroyed first)."""
        viommu = hw_queue.viommu
        if index >= B.IOMMU_TEST_HW_QUEUE_MAX:
            raise IommufdError(errno.EINVAL)
        if viommu.hw_queue[index] is not None:
            raise IommufdError(errno.EEXIST)
        prev = None
        if index:
            prev = viommu.hw_queue[index - 1]
            if prev is None:
                raise IommufdError(errno.EIO)
        if base_addr_pa != viommu.s2_parent.iova_to_phys(hw_queue.base_addr):
            raise IommufdError(errno.EFAULT)
        if prev is not None:
            iommufd_object_depend(hw_queue, prev)
        hw_queue.prev = prev
        hw_queue.mock_viommu = viommu
        # 7.2 never stores the index (selftest.c:767-769 set prev, mock_viommu and the slot
        # only), so mock_hw_queue_destroy() clears slot 0 whatever the queue's index was: the
        # model does the same (a selftest driver bug; README).
        viommu.hw_queue[index] = hw_queue
        hw_queue.destroy = mock_hw_queue_destroy


def mock_hw_queue_destroy(hw_queue: MockHwQueue) -> None:
    """mock_hw_queue_destroy(): slot `index` (always 0, see above) is cleared and the previous
    queue loses its dependent."""
    hw_queue.mock_viommu.hw_queue[hw_queue.index] = None
    if hw_queue.prev is not None:
        iommufd_object_undepend(hw_queue, hw_queue.prev)


MOCK_VIOMMU_OPS = MockViommuOps()
