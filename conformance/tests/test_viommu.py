"""The vIOMMU family on the selftest vIOMMU: IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC,
IOMMU_HW_QUEUE_ALLOC (drivers/iommu/iommufd/viommu.c), a nested HWPT allocated on a vIOMMU and
IOMMU_HWPT_INVALIDATE of a vIOMMU (hw_pagetable.c), with the mock driver behind them
(mock_viommu_init(), mock_viommu_cache_invalidate(), mock_hw_queue_init_phys() in selftest.c)
and the ops that look inside (IOMMU_TEST_OP_DEV_CHECK_CACHE). The vEVENTQ is test_veventq.py,
mmap() of the vIOMMU's region test_viommu_mmap.py.

iommufd_viommu_alloc_ioctl() (viommu.c:17) checks flags and type, then the device, then asks the
driver about the type, then hwpt_id (a paging HWPT, ENOENT otherwise, that is a nesting parent,
EINVAL otherwise); it holds the parent, not the device. iommufd_vdevice_alloc_ioctl() (:143)
allows one vDEVICE per device (idev->vdev, EEXIST) and one per virt_id per vIOMMU (xa_insert(),
EEXIST); the vDEVICE holds its vIOMMU and its device. Unbinding a device with a vDEVICE
(iommufd_device_pre_destroy() -> iommufd_device_remove_vdev(), device.c:140) destroys the
vDEVICE and leaves its ID a tombstone (iommufd_object_tombstone_user(), REMOVE_OBJ_TOMBSTONE,
main.c:278) until the file closes. iommufd_hw_queue_alloc_ioctl() (:366) pins the queue's pages
of the nesting parent's IOAS through an internal access (iommufd_hw_queue_alloc_phys(), :300),
an object with an ID of its own, and locks their areas against IOAS_UNMAP (EBUSY,
io_pagetable.c:770). The mock IOMMU is one instance (selftest.c:543): the "vIOMMU and device on
different IOMMUs" EINVALs (viommu.c:167, hw_pagetable.c:395) cannot be reached with mock devices.
A queue of several pages needs physically contiguous memory: a 2 MiB huge page, or a skip.
"""
import ctypes
import errno
import mmap
import os

import pytest

from model.libc import mmap as libc_mmap
from model.uapi import T as B
from conformance.tests.helpers import (  # noqa: I001
    require, touched,
    PAGE, U64, check_iotlb, check_refs, destroy, dev_check_cache, err, hw_queue_alloc, hwpt_alloc, hwpt_selftest,
    ioas_alloc, map_, mock_device, mock_domain_replace, nest_parent, sz, unmap, vdevice_alloc, veventq_alloc,
    viommu_alloc, viommu_invalidate, viommu_selftest,
)

# the vIOMMU family as 7.2 has it (HW queues, vEVENTQs, the selftest vIOMMU's driver data)
require("IOMMU_VIOMMU_ALLOC", "IOMMU_HW_QUEUE_ALLOC", "IOMMU_VEVENTQ_ALLOC", "iommu_viommu_selftest",
        "IOMMU_TEST_OP_DEV_CHECK_CACHE", "MOCK_PAGE_SIZE")

START = B.MOCK_APERTURE_START
SELFTEST = B.IOMMU_HWPT_DATA_SELFTEST
PARENT = B.IOMMU_HWPT_ALLOC_NEST_PARENT
CACHE = B.IOMMU_TEST_DEV_CACHE_DEFAULT
ALL = B.IOMMU_TEST_INVALIDATE_FLAG_ALL
QMAX = B.IOMMU_TEST_HW_QUEUE_MAX
ENTRY = sz(B.iommu_viommu_invalidate_selftest)


def _viommu(fd, virt_id=None):
    """nest_parent() and a selftest vIOMMU on it (ID 6 on a fresh file), with a vDEVICE of the
    device when `virt_id` is given: (ioas, stdev, idev, parent, viommu, vdev)."""
    ioas, stdev, _, idev, parent = nest_parent(fd)
    viommu = viommu_alloc(fd, idev, parent)
    vdev = vdevice_alloc(fd, viommu, idev, virt_id) if virt_id is not None else None
    return ioas, stdev, idev, parent, viommu, vdev


def _caches(fd, idev, values):
    for i, v in enumerate(values):
        dev_check_cache(fd, idev, i, v)


# IOMMU_VIOMMU_ALLOC

def test_viommu_alloc(iommufd):
    ioas, stdev, auto, idev, parent = nest_parent(iommufd)
    viommu = viommu_alloc(iommufd, idev, parent)
    assert viommu == 6
    # it holds its nesting parent (viommu.c:82); a parent takes several
    assert err(destroy, iommufd, parent) == errno.EBUSY
    assert viommu_alloc(iommufd, idev, parent) == 7
    destroy(iommufd, 7)
    # but not the device it was allocated with (viommu.c:109 puts it back): the device goes,
    # the vIOMMU stays and serves another device
    destroy(iommufd, stdev)
    assert err(destroy, iommufd, idev) == errno.ENOENT
    _, _, idev2 = mock_device(iommufd, ioas)
    vdev = vdevice_alloc(iommufd, viommu, idev2, 1)
    destroy(iommufd, vdev)
    destroy(iommufd, viommu)
    destroy(iommufd, parent)


def test_viommu_alloc_checks_in_order(iommufd):
    ioas, stdev, auto, idev, parent = nest_parent(iommufd)
    plain = hwpt_alloc(iommufd, idev, ioas)
    nested = hwpt_alloc(iommufd, idev, parent, data_type=SELFTEST, data=hwpt_selftest())
    # viommu.c:32: flags, or the DEFAULT type, before any ID is looked up
    assert err(viommu_alloc, iommufd, 99, 99, flags=1) == errno.EOPNOTSUPP
    assert err(viommu_alloc, iommufd, 99, 99, type=B.IOMMU_VIOMMU_TYPE_DEFAULT) == errno.EOPNOTSUPP
    # the device (:35)
    for wrong in (0, 99, ioas, stdev, parent):
        assert err(viommu_alloc, iommufd, wrong, parent) == errno.ENOENT
    # the driver's types (mock_get_viommu_size()) before hwpt_id
    assert err(viommu_alloc, iommufd, idev, 99, type=B.IOMMU_VIOMMU_TYPE_ARM_SMMUV3) == errno.EOPNOTSUPP
    # iommufd_get_hwpt_paging(): anything but a paging HWPT is ENOENT (a nested one too)
    for wrong in (0, 99, ioas, idev, nested):
        assert err(viommu_alloc, iommufd, idev, wrong) == errno.ENOENT
    # a paging HWPT that is not a nesting parent (:66), the automatic one included
    for wrong in (auto, plain):
        assert err(viommu_alloc, iommufd, idev, wrong) == errno.EINVAL
    # __reserved is never read
    assert viommu_alloc(iommufd, idev, parent, reserved=0xFFFFFFFF) == 8
    assert ioas_alloc(iommufd) == 9


def test_viommu_alloc_driver_data(iommufd):
    _, _, _, idev, parent = nest_parent(iommufd)
    data = viommu_selftest(0xCAFE)
    assert viommu_alloc(iommufd, idev, parent, data=data) == 6
    # mock_viommu_init() (selftest.c:793): out_data loops in_data back; a region of two pages
    # for mmap() at the first free offset past page 0 (_iommufd_alloc_mmap(), driver.c:39)
    assert (data.out_data, data.out_mmap_offset, data.out_mmap_length) == (0xCAFE, PAGE, 2 * PAGE)
    # the initial struct ends at out_data (iommu_copy_struct_from_user(..., out_data)): 8 bytes
    # do, and only 8 are written back, though the driver registers its region all the same
    short = viommu_selftest(7)
    short.out_mmap_offset = short.out_mmap_length = 0xAAAA
    assert viommu_alloc(iommufd, idev, parent, data=short, data_len=8) == 7
    assert (short.out_data, short.out_mmap_offset, short.out_mmap_length) == (7, 0xAAAA, 0xAAAA)
    mid = viommu_selftest(8)
    mid.out_mmap_length = 0xAAAA
    assert viommu_alloc(iommufd, idev, parent, data=mid, data_len=16) == 8
    assert (mid.out_data, mid.out_mmap_offset, mid.out_mmap_length) == (8, 5 * PAGE, 0xAAAA)
    # __iommu_copy_struct_from_user(): shorter than out_data, or longer than the kernel's struct
    # (even zero-filled), is EINVAL; a bad pointer EFAULT
    big = (ctypes.c_ubyte * 32)()
    for n in (1, 4, 7, 25):
        assert err(viommu_alloc, iommufd, idev, parent, data=big, data_len=n) == errno.EINVAL
    assert err(viommu_alloc, iommufd, idev, parent, data=big) == errno.EINVAL
    assert err(viommu_alloc, iommufd, idev, parent, data=data, data_uptr=8) == errno.EFAULT
    # the failures took no ID and no region
    after = viommu_selftest(9)
    assert viommu_alloc(iommufd, idev, parent, data=after) == 9
    assert after.out_mmap_offset == 7 * PAGE


def test_viommu_alloc_reply_fault_undoes_the_region(iommufd):
    _, _, _, idev, parent = nest_parent(iommufd)
    ro = libc_mmap(-1, PAGE, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, 0)
    try:
        # the driver data reads (zeros) but cannot be written back: mock_viommu_init() undoes
        # its region (selftest.c:840), the core the object
        assert err(viommu_alloc, iommufd, idev, parent, data_len=sz(B.iommu_viommu_selftest),
                   data_uptr=ro.addr) == errno.EFAULT
    finally:
        ro.munmap()
    data = viommu_selftest(1)
    assert viommu_alloc(iommufd, idev, parent, data=data) == 6
    assert data.out_mmap_offset == PAGE


# IOMMU_VDEVICE_ALLOC

def test_vdevice_alloc(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    vdev = vdevice_alloc(iommufd, viommu, idev, 0x99)
    assert vdev == 7
    # it holds its vIOMMU
    assert err(destroy, iommufd, viommu) == errno.EBUSY
    # one vDEVICE per device (idev->vdev, viommu.c:178), whatever the virt_id or the vIOMMU
    other = viommu_alloc(iommufd, idev, parent)
    assert err(vdevice_alloc, iommufd, viommu, idev, 0x98) == errno.EEXIST
    assert err(vdevice_alloc, iommufd, other, idev, 0x77) == errno.EEXIST
    # one per virt_id per vIOMMU (xa_insert(), :226, its EBUSY made EEXIST)
    stdev2, _, idev2 = mock_device(iommufd, ioas)
    assert (stdev2, idev2) == (9, 10)
    assert err(vdevice_alloc, iommufd, viommu, idev2, 0x99) == errno.EEXIST
    # the failed one gave its ID back and left the device without a vDEVICE
    # (iommufd_vdevice_abort(): idev->vdev = NULL); virt_ids are per vIOMMU
    assert vdevice_alloc(iommufd, other, idev2, 0x99) == 11
    # a destroyed vDEVICE frees its device and its virt_id
    destroy(iommufd, vdev)
    destroy(iommufd, 11)
    assert vdevice_alloc(iommufd, viommu, idev2, 0x99) == 7
    assert vdevice_alloc(iommufd, other, idev, 0x99) == 11
    destroy(iommufd, 7)
    destroy(iommufd, 11)
    destroy(iommufd, other)
    destroy(iommufd, viommu)


def test_vdevice_alloc_lookups(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    # the vIOMMU (viommu.c:157), then the device (:161): any other object is ENOENT
    for wrong in (0, 99, ioas, stdev, idev, parent):
        assert err(vdevice_alloc, iommufd, wrong, idev, 1) == errno.ENOENT
    for wrong in (0, 99, ioas, stdev, parent, viommu):
        assert err(vdevice_alloc, iommufd, viommu, wrong, 1) == errno.ENOENT
    assert vdevice_alloc(iommufd, viommu, idev, 1) == 7


def test_vdevice_virt_ids(iommufd):
    """virt_id is a u64 xarray index (viommu.c:154 never refuses one on a 64-bit kernel), but
    struct iommu_viommu_invalidate_selftest names a vDEVICE by a u32 vdev_id."""
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    devs = [idev] + [mock_device(iommufd, ioas)[2] for _ in range(2)]
    for dev, virt_id in zip(devs, (0, U64, (1 << 32) | 0x99)):
        vdevice_alloc(iommufd, viommu, dev, virt_id)
    # vdev_id 0 names the vDEVICE at 0; 0x99 is not (1 << 32) | 0x99
    assert viommu_invalidate(iommufd, viommu, [(0, 0, 1)]) == (0, 1)
    _caches(iommufd, devs[0], [CACHE, 0, CACHE, CACHE])
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 1)]) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, [(0, 0xFFFFFFFF, 1)]) == (errno.EINVAL, 0)
    _caches(iommufd, devs[1], [CACHE] * 4)
    _caches(iommufd, devs[2], [CACHE] * 4)


def test_vdevice_tombstone(iommufd):
    """Unbinding the device destroys its vDEVICE (iommufd_device_remove_vdev(), device.c:140)
    and leaves the vDEVICE's ID reserved (XA_ZERO_ENTRY) until the file closes."""
    ioas, stdev, idev, parent, viommu, vdev = _viommu(iommufd, 0x99)
    assert vdev == 7
    destroy(iommufd, stdev)
    # iommufd_object_remove() sees a zero entry: ENOENT
    assert err(destroy, iommufd, vdev) == errno.ENOENT
    # new objects take the lowest free IDs, skipping the tombstone
    ids = [ioas_alloc(iommufd) for _ in range(4)]
    assert ids == [2, 3, 4, 8]
    # the vIOMMU lost its user and the virt_id is free on it
    _, _, idev2 = mock_device(iommufd, ioas)
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 0)]) == (errno.EINVAL, 0)
    vdev2 = vdevice_alloc(iommufd, viommu, idev2, 0x99)
    assert vdev2 not in ids + [vdev]
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 0)]) == (0, 1)
    _caches(iommufd, idev2, [0, CACHE, CACHE, CACHE])
    destroy(iommufd, vdev2)
    destroy(iommufd, viommu)
    assert err(destroy, iommufd, vdev) == errno.ENOENT


def test_vdevice_destroyed_first_leaves_no_tombstone(iommufd):
    ioas, stdev, idev, parent, viommu, vdev = _viommu(iommufd, 0x99)
    destroy(iommufd, vdev)
    destroy(iommufd, stdev)
    assert [ioas_alloc(iommufd) for _ in range(4)] == [2, 3, 4, 7]


# IOMMU_HW_QUEUE_ALLOC

def test_hw_queue_alloc_checks_in_order(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    # viommu.c:377-383, before the vIOMMU is looked up
    assert err(hw_queue_alloc, iommufd, 99, 0, START, PAGE, flags=1) == errno.EOPNOTSUPP
    assert err(hw_queue_alloc, iommufd, 99, 0, START, PAGE, type=B.IOMMU_HW_QUEUE_TYPE_DEFAULT) == errno.EOPNOTSUPP
    assert err(hw_queue_alloc, iommufd, 99, 0, START, 0) == errno.EINVAL
    assert err(hw_queue_alloc, iommufd, 99, 0, 2, U64) == errno.EOVERFLOW
    assert err(hw_queue_alloc, iommufd, 99, 0, U64, 2) == errno.EOVERFLOW
    for wrong in (0, 99, ioas, idev, parent):
        assert err(hw_queue_alloc, iommufd, wrong, 0, START, PAGE) == errno.ENOENT
    # mock_viommu_get_hw_queue_size(): the selftest type only
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, PAGE,
               type=B.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV) == errno.EOPNOTSUPP
    # iommufd_hw_queue_alloc_phys() (viommu.c:300): the page span must not overflow (ERANGE),
    # the page array must be allocatable (ENOMEM: kvzalloc with __GFP_NOWARN), and the range
    # mapped in the nesting parent's IOAS (ENOENT)
    assert err(hw_queue_alloc, iommufd, viommu, 0, 0, U64) == errno.ERANGE
    assert err(hw_queue_alloc, iommufd, viommu, 0, 1, U64) == errno.ERANGE
    assert err(hw_queue_alloc, iommufd, viommu, 0, PAGE // 2, U64 - PAGE // 2 + 1) == errno.ERANGE
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, 1 << 40) == errno.ENOMEM
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, PAGE) == errno.ENOENT
    # the nesting parent's IOAS, not any other
    other = ioas_alloc(iommufd)
    elsewhere = touched(1)
    map_(iommufd, other, elsewhere.addr, PAGE, iova=START)
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, PAGE) == errno.ENOENT
    destroy(iommufd, other)
    # the pages are pinned before the driver looks at the index
    assert err(hw_queue_alloc, iommufd, viommu, QMAX, START, PAGE) == errno.ENOENT
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START)
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, 2 * PAGE) == errno.ENOENT
    # mock_hw_queue_init_phys() (selftest.c:725): index < IOMMU_TEST_HW_QUEUE_MAX, and index N
    # needs index N - 1 (EIO)
    assert err(hw_queue_alloc, iommufd, viommu, QMAX, START, PAGE) == errno.EINVAL
    assert err(hw_queue_alloc, iommufd, viommu, 0xFFFFFFFF, START, PAGE) == errno.EINVAL
    assert err(hw_queue_alloc, iommufd, viommu, 1, START, PAGE) == errno.EIO
    # nothing was left behind: no ID, no lock on the area
    assert ioas_alloc(iommufd) == 7
    assert unmap(iommufd, ioas, START, PAGE) == PAGE
    destroy(iommufd, viommu)


def test_hw_queue_ids_and_destroy_order(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    buf = touched(2)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=START)
    q0 = hw_queue_alloc(iommufd, viommu, 0, START, PAGE)
    assert q0 == 7
    # the pin is an internal access (iommufd_access_create_internal()): an object with the next
    # ID, which IOMMU_DESTROY cannot take (the queue is its second user)
    assert err(destroy, iommufd, q0 + 1) == errno.EBUSY
    assert err(hw_queue_alloc, iommufd, viommu, 0, START + PAGE, PAGE) == errno.EEXIST
    # index 1 may share queue 0's page, at any byte
    q1 = hw_queue_alloc(iommufd, viommu, 1, START + PAGE // 2 + 8, PAGE // 4)
    assert q1 == 9
    # queue 1 depends on queue 0 (iommufd_hw_queue_depend()); both hold the vIOMMU
    assert err(destroy, iommufd, q0) == errno.EBUSY
    assert err(destroy, iommufd, viommu) == errno.EBUSY
    destroy(iommufd, q1)
    assert err(destroy, iommufd, q1 + 1) == errno.ENOENT  # its access went with it
    destroy(iommufd, q0)
    assert err(destroy, iommufd, q0 + 1) == errno.ENOENT
    destroy(iommufd, viommu)
    assert ioas_alloc(iommufd) == 6


def test_hw_queue_destroy_empties_slot_0_whatever_the_index(iommufd):
    """mock_hw_queue_init_phys() (selftest.c:725) never stores the index in struct mock_hw_queue
    (:164), so mock_hw_queue_destroy() (:717) empties slot 0 for every queue: once queue 1 is
    gone, index 1 stays taken (EEXIST: a stale pointer, never read) and index 0 is free again
    while queue 0 lives. (The kernel's own hw_queue test only destroys, never reallocates.)"""
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START)
    q0 = hw_queue_alloc(iommufd, viommu, 0, START, PAGE)
    q1 = hw_queue_alloc(iommufd, viommu, 1, START, PAGE)
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, PAGE) == errno.EEXIST
    destroy(iommufd, q1)
    assert err(hw_queue_alloc, iommufd, viommu, 1, START, PAGE) == errno.EEXIST
    q0b = hw_queue_alloc(iommufd, viommu, 0, START, PAGE)
    assert q0b == q1
    # the second queue 0 depends on nothing, nor does anything on the first
    destroy(iommufd, q0)
    assert err(hw_queue_alloc, iommufd, viommu, 1, START, PAGE) == errno.EEXIST
    destroy(iommufd, q0b)
    assert err(hw_queue_alloc, iommufd, viommu, 1, START, PAGE) == errno.EEXIST
    destroy(iommufd, viommu)
    assert unmap(iommufd, ioas, START, PAGE) == PAGE


def test_hw_queue_locks_its_area(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    buf = touched(3)
    for i in range(3):  # three areas, one page each
        map_(iommufd, ioas, buf.addr + i * PAGE, PAGE, iova=START + 4 * i * PAGE)
    q = hw_queue_alloc(iommufd, viommu, 0, START + 4 * PAGE + 0x100, 0x100)
    # one pin per page, whoever holds it (the domains already did)
    check_refs(iommufd, buf.addr, 3 * PAGE, 1)
    # iopt_unmap_iova_range() (io_pagetable.c:770): a locked area is EBUSY
    assert err(unmap, iommufd, ioas, START + 4 * PAGE, PAGE) == errno.EBUSY
    # unmapping everything stops at it: the area before it is gone, the one after it stays
    assert err(unmap, iommufd, ioas, 0, U64) == errno.EBUSY
    check_refs(iommufd, buf.addr, PAGE, 0)
    check_refs(iommufd, buf.addr + PAGE, 2 * PAGE, 1)
    destroy(iommufd, q)
    assert unmap(iommufd, ioas, 0, U64) == 2 * PAGE
    check_refs(iommufd, buf.addr, 3 * PAGE, 0)


def test_hw_queue_needs_physically_contiguous_pages(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START + PAGE)
    check_refs(iommufd, buf.addr, PAGE, 2)  # a pin per area
    # iommufd_hw_queue_alloc_phys() (viommu.c:344): the same page twice is not contiguous
    assert err(hw_queue_alloc, iommufd, viommu, 0, START, 2 * PAGE) == errno.EFAULT
    check_refs(iommufd, buf.addr, PAGE, 2)
    assert ioas_alloc(iommufd) == 7
    # each page alone is a queue
    q = hw_queue_alloc(iommufd, viommu, 0, START + PAGE, PAGE)
    assert unmap(iommufd, ioas, START, PAGE) == PAGE
    destroy(iommufd, q)


def _frames(addr: int, npages: int) -> list[int] | None:
    """The machine's frame numbers of this process's pages (/proc/self/pagemap), or None where
    they are hidden (without CAP_SYS_ADMIN)."""
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        entries = [int.from_bytes(f.read(8), "little") for _ in range(npages)]
    pfns = [e & ((1 << 55) - 1) for e in entries]
    return pfns if all(e >> 63 for e in entries) and all(pfns) else None


def test_hw_queue_over_small_pages_follows_their_frames(iommufd):
    """Two small pages make a queue exactly when the machine gave them adjacent frames
    (iommufd_hw_queue_alloc_phys(), viommu.c:344): the answer depends on physical placement,
    read here from pagemap. Found by explore on the VM, where fresh pages are often adjacent."""
    buf = touched(64)
    pfns = _frames(buf.addr, 64)
    if pfns is None:
        pytest.skip("pagemap hides frame numbers here (needs CAP_SYS_ADMIN)")
    adjacent = [i for i in range(63) if pfns[i + 1] == pfns[i] + 1]
    apart = [i for i in range(63) if pfns[i + 1] != pfns[i] + 1]
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    cases = ([(apart[0], False)] if apart else []) + ([(adjacent[0], True)] if adjacent else [])
    for i, contiguous in cases:
        map_(iommufd, ioas, buf.addr + i * PAGE, 2 * PAGE, iova=START)
        if contiguous:
            destroy(iommufd, hw_queue_alloc(iommufd, viommu, 0, START, 2 * PAGE))
        else:
            assert err(hw_queue_alloc, iommufd, viommu, 0, START, 2 * PAGE) == errno.EFAULT
        assert unmap(iommufd, ioas, START, 2 * PAGE) == 2 * PAGE


def test_hw_queue_over_a_huge_page(iommufd):
    huge = 2 << 20
    try:
        hp = mmap.mmap(-1, huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)  # MAP_HUGETLB
    except OSError as e:
        pytest.skip(f"no 2 MiB huge page here ({e})")
    hp[0] = 1
    addr = ctypes.addressof(ctypes.c_char.from_buffer(hp))
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    map_(iommufd, ioas, addr, 4 * PAGE, iova=START)
    # physically contiguous pages make a queue of several
    q = hw_queue_alloc(iommufd, viommu, 0, START + 0x80, 3 * PAGE)
    assert err(unmap, iommufd, ioas, START, 4 * PAGE) == errno.EBUSY
    destroy(iommufd, q)
    assert unmap(iommufd, ioas, START, 4 * PAGE) == 4 * PAGE


# IOMMU_HWPT_ALLOC on a vIOMMU

def test_hwpt_alloc_nested_on_a_viommu(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    nested = hwpt_alloc(iommufd, idev, viommu, data_type=SELFTEST, data=hwpt_selftest())
    assert nested == 7
    for i in range(B.MOCK_NESTED_DOMAIN_IOTLB_NUM):
        check_iotlb(iommufd, nested, i, B.IOMMU_TEST_IOTLB_DEFAULT)
    # it holds the vIOMMU (hw_pagetable.c:309), which holds the parent
    assert err(destroy, iommufd, viommu) == errno.EBUSY
    assert err(destroy, iommufd, parent) == errno.EBUSY
    # mock_domain_nop_attach() (selftest.c:214): the device needs a vDEVICE on that vIOMMU
    assert err(mock_domain_replace, iommufd, stdev, nested) == errno.ENOENT
    vdev = vdevice_alloc(iommufd, viommu, idev, 0x99)
    assert mock_domain_replace(iommufd, stdev, nested) == nested
    assert err(destroy, iommufd, nested) == errno.EBUSY
    assert mock_domain_replace(iommufd, stdev, ioas) != nested
    destroy(iommufd, nested)
    assert err(destroy, iommufd, viommu) == errno.EBUSY  # the vDEVICE
    destroy(iommufd, vdev)
    destroy(iommufd, viommu)
    destroy(iommufd, parent)


def test_hwpt_alloc_nested_on_a_viommu_errors(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    data = hwpt_selftest()
    # iommufd_viommu_alloc_hwpt_nested() (hw_pagetable.c:286): flags other than FAULT_ID_VALID
    # and PASID, or no data, are EOPNOTSUPP
    for flags in (B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, PARENT, 1 << 31):
        assert err(hwpt_alloc, iommufd, idev, viommu, flags, SELFTEST, data) == errno.EOPNOTSUPP
    assert err(hwpt_alloc, iommufd, idev, viommu) == errno.EOPNOTSUPP
    # mock_viommu_alloc_domain_nested() -> __mock_domain_alloc_nested()
    assert err(hwpt_alloc, iommufd, idev, viommu, data_type=B.IOMMU_HWPT_DATA_VTD_S1, data=data) == errno.EOPNOTSUPP
    assert err(hwpt_alloc, iommufd, idev, viommu, data_type=SELFTEST, data=data, data_len=2) == errno.EINVAL
    # a fault queue (looked up after the domain is made: hw_pagetable.c:411)
    cmd = B.iommu_fault_alloc(size=sz(B.iommu_fault_alloc))
    iommufd.ioctl(B.IOMMU_FAULT_QUEUE_ALLOC, cmd)
    os.close(cmd.out_fault_fd)
    fault = B.IOMMU_HWPT_FAULT_ID_VALID
    assert err(hwpt_alloc, iommufd, idev, viommu, fault, SELFTEST, data, fault_id=99) == errno.ENOENT
    assert err(hwpt_alloc, iommufd, idev, viommu, fault, SELFTEST, data, fault_id=viommu) == errno.ENOENT
    assert hwpt_alloc(iommufd, idev, viommu, fault, SELFTEST, data, fault_id=cmd.out_fault_id) == 8
    assert hwpt_alloc(iommufd, idev, viommu, B.IOMMU_HWPT_ALLOC_PASID, SELFTEST, data) == 9
    assert err(destroy, iommufd, cmd.out_fault_id) == errno.EBUSY


# IOMMU_HWPT_INVALIDATE of a vIOMMU

def test_viommu_invalidate(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd, 0x99)
    _, _, idev2 = mock_device(iommufd, ioas)
    vdevice_alloc(iommufd, viommu, idev2, 0x42)
    _caches(iommufd, idev, [CACHE] * 4)
    # mock_viommu_cache_invalidate() (selftest.c:633): the device by its vDEVICE's virt_id
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 1)]) == (0, 1)
    _caches(iommufd, idev, [CACHE, 0, CACHE, CACHE])
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 0), (0, 0x42, 3), (0, 0x99, 3)]) == (0, 3)
    _caches(iommufd, idev, [0, 0, CACHE, 0])
    _caches(iommufd, idev2, [CACHE, CACHE, CACHE, 0])
    # IOMMU_TEST_INVALIDATE_FLAG_ALL ignores cache_id, but cache_id is checked first
    assert viommu_invalidate(iommufd, viommu, [(ALL, 0x42, 4)]) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, [(ALL, 0x42, 3)]) == (0, 1)
    _caches(iommufd, idev2, [0] * 4)
    _caches(iommufd, idev, [0, 0, CACHE, 0])


def test_viommu_invalidate_stops_at_the_first_bad_entry(iommufd):
    _, _, idev, _, viommu, _ = _viommu(iommufd, 0x99)
    # entry_num answers how many were done
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 0), (2, 0x99, 1)]) == (errno.EOPNOTSUPP, 1)
    _caches(iommufd, idev, [0, CACHE, CACHE, CACHE])
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 1), (0, 0x99, 4), (0, 0x99, 2)]) == (errno.EINVAL, 1)
    _caches(iommufd, idev, [0, 0, CACHE, CACHE])
    # a vdev_id with no vDEVICE (iommufd_viommu_find_dev())
    assert viommu_invalidate(iommufd, viommu, [(0, 0x99, 2), (0, 0x98, 3)]) == (errno.EINVAL, 1)
    _caches(iommufd, idev, [0, 0, 0, CACHE])


def test_viommu_invalidate_array_errors(iommufd):
    ioas, _, idev, parent, viommu, _ = _viommu(iommufd, 0x99)
    one = [(0, 0x99, 0)]
    # an empty array of the selftest type checks the type (selftest.c:642), whatever the pointer
    assert viommu_invalidate(iommufd, viommu, [], num=0) == (0, 0)
    assert viommu_invalidate(iommufd, viommu, [], num=0, uptr=0, entry_len=0) == (0, 0)
    # of another type it is EINVAL (iommu_copy_struct_from_full_user_array()), empty or not
    bad = B.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID
    assert viommu_invalidate(iommufd, viommu, [], num=0, data_type=bad) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, one, data_type=bad) == (errno.EINVAL, 0)
    # the core's bounds (hw_pagetable.c:517) come first
    assert viommu_invalidate(iommufd, viommu, one, uptr=0) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, one, entry_len=0) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, one, entry_len=PAGE + 1) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, one, num=(1 << 19) + 1) == (errno.EINVAL, 0)
    assert viommu_invalidate(iommufd, viommu, one, uptr=8) == (errno.EFAULT, 0)
    arr = (B.iommu_viommu_invalidate_selftest * 1)(B.iommu_viommu_invalidate_selftest(vdev_id=0x99))
    cmd = B.iommu_hwpt_invalidate(size=sz(B.iommu_hwpt_invalidate), hwpt_id=viommu,
                                  data_uptr=ctypes.addressof(arr), data_type=B.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST,
                                  entry_len=ENTRY, entry_num=1)
    cmd.__reserved = 1
    assert err(iommufd.ioctl, B.IOMMU_HWPT_INVALIDATE, cmd) == errno.EOPNOTSUPP
    assert cmd.entry_num == 0
    # hwpt_id: a nested HWPT or a vIOMMU; 99 is ENOENT, other objects EINVAL
    assert viommu_invalidate(iommufd, 99, one) == (errno.ENOENT, 0)
    for wrong in (ioas, parent, idev):
        assert viommu_invalidate(iommufd, wrong, one) == (errno.EINVAL, 0)
    _caches(iommufd, idev, [CACHE] * 4)


def test_viommu_invalidate_entry_len(iommufd):
    """entry_len other than the struct's: copy_struct_from_user() per entry. A longer entry must
    be zero past the struct (E2BIG); a shorter one is zero-extended: no size check of its own."""
    ioas, _, idev, _, viommu, _ = _viommu(iommufd, 0x99)
    e1 = bytes(B.iommu_viommu_invalidate_selftest(flags=0, vdev_id=0x99, cache_id=1))
    e2 = bytes(B.iommu_viommu_invalidate_selftest(flags=0, vdev_id=0x99, cache_id=2))
    assert viommu_invalidate(iommufd, viommu, [], raw=e1 + b"\0" + e2 + b"\0", entry_len=ENTRY + 1, num=2) == (0, 2)
    _caches(iommufd, idev, [CACHE, 0, 0, CACHE])
    assert viommu_invalidate(iommufd, viommu, [], raw=e1 + b"\0\0\0\1", entry_len=ENTRY + 4, num=1) == (errno.E2BIG, 0)
    # 8 bytes: cache_id reads 0
    assert viommu_invalidate(iommufd, viommu, [], raw=e1[:8], entry_len=8, num=1) == (0, 1)
    _caches(iommufd, idev, [0, 0, 0, CACHE])
    # 4 bytes: vdev_id reads 0 too, a vDEVICE only if virt_id 0 has one
    assert viommu_invalidate(iommufd, viommu, [], raw=b"\0" * 4, entry_len=4, num=1) == (errno.EINVAL, 0)
    _, _, idev2 = mock_device(iommufd, ioas)
    vdevice_alloc(iommufd, viommu, idev2, 0)
    assert viommu_invalidate(iommufd, viommu, [], raw=b"\0" * 4, entry_len=4, num=1) == (0, 1)
    _caches(iommufd, idev2, [0, CACHE, CACHE, CACHE])


def test_dev_check_cache_errors(iommufd):
    ioas, stdev, idev, parent, viommu, _ = _viommu(iommufd)
    # iommufd_test_dev_check_cache() (selftest.c:1299): every mock device starts at the default
    dev_check_cache(iommufd, idev, B.MOCK_DEV_CACHE_ID_MAX, CACHE)
    assert err(dev_check_cache, iommufd, idev, B.MOCK_DEV_CACHE_ID_MAX + 1, CACHE) == errno.EINVAL
    assert err(dev_check_cache, iommufd, idev, 0, 0) == errno.EINVAL
    for wrong in (99, ioas, stdev, viommu):
        assert err(dev_check_cache, iommufd, wrong, 0, CACHE) == errno.ENOENT


# destroy order

def test_destroy_order_of_the_family(iommufd):
    ioas, stdev, idev, parent, viommu, vdev = _viommu(iommufd, 0x99)
    nested = hwpt_alloc(iommufd, idev, viommu, data_type=SELFTEST, data=hwpt_selftest())
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START)
    q0 = hw_queue_alloc(iommufd, viommu, 0, START, PAGE)
    q1 = hw_queue_alloc(iommufd, viommu, 1, START, PAGE)
    mock_domain_replace(iommufd, stdev, nested)
    veventq, qfd = veventq_alloc(iommufd, viommu)
    try:
        busy = {"ioas": ioas, "parent": parent, "viommu": viommu, "nested (attached)": nested,
                "hw queue 0 (queue 1 depends)": q0, "vEVENTQ (file open)": veventq, "device": idev}
        assert {k: err(destroy, iommufd, v) for k, v in busy.items()} == {k: errno.EBUSY for k in busy}
    finally:
        os.close(qfd)
    steps = [lambda: destroy(iommufd, veventq), lambda: destroy(iommufd, q1), lambda: destroy(iommufd, q0),
             lambda: mock_domain_replace(iommufd, stdev, ioas), lambda: destroy(iommufd, nested),
             lambda: destroy(iommufd, vdev)]
    for step in steps:
        # the vIOMMU stays busy until its last user goes, and holds its parent
        assert err(destroy, iommufd, viommu) == errno.EBUSY
        assert err(destroy, iommufd, parent) == errno.EBUSY
        step()
    destroy(iommufd, viommu)
    destroy(iommufd, parent)
    assert unmap(iommufd, ioas, START, PAGE) == PAGE
    destroy(iommufd, stdev)
    destroy(iommufd, ioas)
    assert ioas_alloc(iommufd) == 1


def test_closing_the_file_with_the_family_alive(open_iommufd):
    """iommufd_fops_release() (main.c:345) destroys leaves first: vEVENTQ, HW queues (their
    accesses), vDEVICE, nested HWPT, vIOMMU, parent; a tombstone is no object. The guest log must
    stay clean (the VM runner fails the run on a WARN)."""
    fd = open_iommufd()
    ioas, stdev, idev, parent, viommu, vdev = _viommu(fd, 0x99)
    buf = touched(1)
    map_(fd, ioas, buf.addr, PAGE, iova=START)
    hw_queue_alloc(fd, viommu, 0, START, PAGE)
    hw_queue_alloc(fd, viommu, 1, START, PAGE)
    nested = hwpt_alloc(fd, idev, viommu, data_type=SELFTEST, data=hwpt_selftest())
    mock_domain_replace(fd, stdev, nested)
    mock_device(fd, ioas)
    _, qfd = veventq_alloc(fd, viommu)
    os.close(qfd)
    stdev3, _, idev3 = mock_device(fd, ioas)
    vdevice_alloc(fd, viommu, idev3, 0x33)
    destroy(fd, stdev3)  # a tombstone
    fd.close()
    check_refs(open_iommufd(), buf.addr, PAGE, 0)
