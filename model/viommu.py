"""vIOMMU, vDEVICE and HW queue objects (drivers/iommu/iommufd/viommu.c).

A vIOMMU is allocated in two phases, as Linux 7.2 does it (iommufd_viommu_alloc_ioctl()): the core asks the
device's driver for the size of its structure for the type (get_viommu_size: here the driver's
subclass of IommufdViommu, None for a type it does not know), allocates it and fills the core
part (ictx, type, the nesting parent HWPT and a user of it, iommu_dev), and only then calls the
driver's viommu_init(), which sets viommu.ops. HW queues follow the same pattern
(get_hw_queue_size, hw_queue_init_phys). The model's only driver is the mock IOMMU's
(model/selftest/viommu.py), reached through the device's ops as the kernel reaches it.
"""
from __future__ import annotations

import errno

from model.device import (
    access_user_pages, iommufd_access_attach_internal, iommufd_access_create_internal, iommufd_access_destroy_internal,
    iommufd_access_detach_internal, iommufd_access_pin_pages, iommufd_access_unpin_pages, iommufd_get_device,
)
from model.hw_pagetable import IommuUserData, iommufd_get_hwpt_paging
from model.limits import PAGE_SIZE, U64_MAX, ULONG_MAX
from model.memory import machine_pfns
from model.objects import IommufdError, IommufdObject
from model.uapi import B

INT_MAX = (1 << 31) - 1
PTR_SIZE = 8  # sizeof(struct page *)


class IommufdViommu(IommufdObject):
    """struct iommufd_viommu (the core part; a driver subclasses it, as VIOMMU_STRUCT_SIZE()
    embeds it at the start of the driver's structure)."""

    type = "VIOMMU"

    def __init__(self):
        super().__init__()
        self.ictx = None
        self.hwpt = None  # the nesting parent HWPT_PAGING
        self.viommu_type = 0
        self.iommu_dev = None
        self.ops = None  # struct iommufd_viommu_ops, set by the driver's viommu_init
        self.vdevs: dict[int, "IommufdVdevice | None"] = {}  # virt_id -> vDEVICE (None: reserved)
        self.veventqs: list = []

    def find_veventq(self, type: int):
        """iommufd_viommu_find_veventq() (iommufd_private.h)."""
        return next((q for q in self.veventqs if q.veventq_type == type), None)


class IommufdVdevice(IommufdObject):
    """struct iommufd_vdevice: `idev`'s presence at `virt_id` on `viommu`."""

    type = "VDEVICE"

    def __init__(self, viommu: IommufdViommu, idev, virt_id: int):
        super().__init__()
        self.viommu = viommu
        self.idev = idev
        self.virt_id = virt_id
        self.destroy = None  # the driver's vdev->destroy


class IommufdHwQueue(IommufdObject):
    """struct iommufd_hw_queue (the core part of the driver's structure)."""

    type = "HW_QUEUE"

    def __init__(self):
        super().__init__()
        self.viommu = None
        self.access = None  # the internal access pinning the queue's memory
        self.queue_type = 0
        self.length = 0
        self.base_addr = 0
        self.destroy = None  # the driver's hw_queue->destroy


def iommufd_get_viommu(ucmd, id: int) -> IommufdViommu:
    """iommufd_get_viommu() (iommufd_private.h): iommufd_get_object(id, IOMMUFD_OBJ_VIOMMU)."""
    return ucmd.ictx.objects.get(id, "VIOMMU")


# -- IOMMU_VIOMMU_ALLOC ----------------------------------------------------------------------------

def iommufd_viommu_destroy(viommu: IommufdViommu) -> None:
    """iommufd_viommu_destroy() (viommu.c:6): the driver's destroy, then the parent HWPT loses
    its user. Also the abort of an allocation that failed (viommu_init not done: no ops)."""
    if viommu.ops is not None and getattr(viommu.ops, "destroy", None):
        viommu.ops.destroy(viommu)
    viommu.hwpt.refs -= 1
    viommu.vdevs.clear()


def iommufd_viommu_alloc_ioctl(ucmd) -> int:
    """iommufd_viommu_alloc_ioctl() (viommu.c:17): flags or type DEFAULT EOPNOTSUPP; the device
    (ENOENT); a driver without the two vIOMMU ops, or one that has no structure for the type,
    EOPNOTSUPP; hwpt_id must be a HWPT_PAGING (ENOENT) made NEST_PARENT (EINVAL); then the
    object (ID reserved), its core part, and the driver's viommu_init() with the driver data
    (data_len 0: none). A failure anywhere after the allocation destroys it (ID freed)."""

    cmd = ucmd.cmd
    if cmd.flags or cmd.type == B.IOMMU_VIOMMU_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    idev = iommufd_get_device(ucmd, cmd.dev_id)
    ops = idev.dev.ops
    get_size = getattr(ops, "get_viommu_size", None)
    init = getattr(ops, "viommu_init", None)
    if get_size is None or init is None:
        raise IommufdError(errno.EOPNOTSUPP)
    cls = get_size(idev.dev, cmd.type)
    if cls is None or not issubclass(cls, IommufdViommu):  # 0, or the WARN_ON_ONCE size check
        raise IommufdError(errno.EOPNOTSUPP)
    hwpt_paging = iommufd_get_hwpt_paging(ucmd, cmd.hwpt_id)
    if not hwpt_paging.nest_parent:
        raise IommufdError(errno.EINVAL)
    objects = ucmd.ictx.objects
    viommu = objects.alloc(cls())  # _iommufd_object_alloc_ucmd(): the core aborts it on failure
    viommu.viommu_type = cmd.type
    viommu.ictx = ucmd.ictx
    viommu.hwpt = hwpt_paging
    hwpt_paging.refs += 1
    viommu.iommu_dev = idev.dev.iommu_dev
    try:
        user_data = IommuUserData(cmd.type, cmd.data_uptr, cmd.data_len, ucmd.mem)
        init(viommu, hwpt_paging.domain, user_data if user_data.len else None)
        if viommu.ops is None:  # WARN_ON_ONCE: a driver bug
            raise IommufdError(errno.EOPNOTSUPP)
        cmd.out_viommu_id = viommu.id
        ucmd.respond()
    except BaseException:
        objects.abort_and_destroy(viommu)
        raise
    objects.finalize(viommu)
    return 0


# -- IOMMU_VDEVICE_ALLOC ---------------------------------------------------------------------------

def iommufd_vdevice_abort(vdev: IommufdVdevice) -> None:
    """iommufd_vdevice_abort() (viommu.c:124): the driver's destroy, the vIOMMU's slot (if it
    holds this vDEVICE) and user, and the device's pointer to it."""
    viommu = vdev.viommu
    if vdev.destroy is not None:
        vdev.destroy(vdev)
    if viommu.vdevs.get(vdev.virt_id, vdev) is vdev:  # xa_cmpxchg(): only our own entry
        viommu.vdevs.pop(vdev.virt_id, None)
    viommu.refs -= 1
    vdev.idev.vdev = None


def iommufd_vdevice_destroy(vdev: IommufdVdevice) -> None:
    """iommufd_vdevice_destroy() (viommu.c:140): abort, then the device's reference goes."""
    iommufd_vdevice_abort(vdev)
    vdev.idev.refs -= 1


def iommufd_vdevice_alloc_ioctl(ucmd) -> int:
    """iommufd_vdevice_alloc_ioctl() (viommu.c:152): virt_id > ULONG_MAX EINVAL (never on a
    64-bit kernel); the vIOMMU, then the device (ENOENT); another IOMMU instance EINVAL; a
    device being destroyed ENOENT; a device with a vDEVICE already (on any vIOMMU) EEXIST;
    then the object, and the virt_id slot (EEXIST when taken). The vDEVICE holds a reference
    on the device until it goes (iommufd_device_pre_destroy() tombstones it)."""

    cmd = ucmd.cmd
    virt_id = cmd.virt_id
    if virt_id > ULONG_MAX:
        raise IommufdError(errno.EINVAL)
    viommu = iommufd_get_viommu(ucmd, cmd.viommu_id)
    idev = iommufd_get_device(ucmd, cmd.dev_id)
    if viommu.iommu_dev is not idev.dev.iommu_dev:
        raise IommufdError(errno.EINVAL)
    if idev.destroying:
        raise IommufdError(errno.ENOENT)
    if idev.vdev is not None:
        raise IommufdError(errno.EEXIST)
    vdevice_size = getattr(viommu.ops, "vdevice_size", None)
    cls = vdevice_size if vdevice_size is not None else IommufdVdevice
    objects = ucmd.ictx.objects
    vdev = objects.alloc(cls(viommu, idev, virt_id))
    viommu.refs += 1
    idev.refs += 1  # the idev reference iommufd_get_device() took stays with the vDEVICE
    idev.vdev = vdev
    try:
        if virt_id in viommu.vdevs:  # xa_insert(): -EBUSY, answered as EEXIST
            raise IommufdError(errno.EEXIST)
        viommu.vdevs[virt_id] = None  # reserved until vdevice_init accepts it
        init = getattr(viommu.ops, "vdevice_init", None)
        if init is not None:
            try:
                init(vdev)
            except BaseException:
                del viommu.vdevs[virt_id]  # xa_release()
                raise
        viommu.vdevs[virt_id] = vdev
        cmd.out_vdevice_id = vdev.id
        ucmd.respond()
    except BaseException:
        objects.abort_and_destroy(vdev)  # iommufd_vdevice_abort() leaves the device's reference
        idev.refs -= 1  # to the error path's iommufd_put_object() (out_put_idev)
        raise
    objects.finalize(vdev)
    return 0


# -- IOMMU_HW_QUEUE_ALLOC --------------------------------------------------------------------------

def _hw_queue_destroy_access(ictx, access, base_iova: int, length: int) -> None:
    """iommufd_hw_queue_destroy_access() (viommu.c:300)."""
    aligned_iova = base_iova & ~(PAGE_SIZE - 1)
    offset = base_iova - aligned_iova
    iommufd_access_unpin_pages(access, aligned_iova, -(-(length + offset) // PAGE_SIZE) * PAGE_SIZE)
    iommufd_access_detach_internal(access)
    iommufd_access_destroy_internal(ictx, access)


def iommufd_hw_queue_destroy(hw_queue: IommufdHwQueue) -> None:
    """iommufd_hw_queue_destroy() (viommu.c:313): the driver's destroy, the pinning access, the
    vIOMMU's user; each only if set (also the abort of a failed allocation)."""
    if hw_queue.destroy is not None:
        hw_queue.destroy(hw_queue)
    if hw_queue.access is not None:
        _hw_queue_destroy_access(hw_queue.viommu.ictx, hw_queue.access, hw_queue.base_addr, hw_queue.length)
    if hw_queue.viommu is not None:
        hw_queue.viommu.refs -= 1


def _physically_contiguous(access, iova: int, length: int, pfns: list[int]) -> bool:
    """The check of iommufd_hw_queue_alloc_phys() (viommu.c:344) on the machine's frames where
    /proc/PID/pagemap shows them (pages of user memory, one process), so that a queue over
    small pages that happen to be adjacent succeeds as on the kernel; else on the model's
    numbering (hugetlb blocks contiguous, small pages never)."""
    if len(pfns) > 1:
        user = access_user_pages(access, iova, length)
        if user is not None and len({pid for pid, _ in user}) == 1:
            real = machine_pfns(user[0][0], [va for _, va in user])
            if real is not None:
                pfns = real
    return all(b == a + 1 for a, b in zip(pfns, pfns[1:]))


def iommufd_hw_queue_alloc_phys(cmd, viommu: IommufdViommu):
    """iommufd_hw_queue_alloc_phys() (viommu.c:335): the queue's pages pinned through an
    internal access on the nesting parent's IOAS (an ACCESS object with an ID of its own, which
    locks the areas: IOAS_UNMAP of them is EBUSY); ERANGE when offset + length overflows,
    ENOMEM when the page array is too large for kvzalloc(), the pin's errors, EFAULT for pages
    that are not physically contiguous. Returns (access, base physical address)."""
    aligned_iova = cmd.nesting_parent_iova & ~(PAGE_SIZE - 1)
    offset = cmd.nesting_parent_iova - aligned_iova
    length = offset + cmd.length
    if length > U64_MAX or length + PAGE_SIZE - 1 > U64_MAX:  # check_add_overflow() twice
        raise IommufdError(errno.ERANGE)
    max_npages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    length = max_npages * PAGE_SIZE
    if max_npages * PTR_SIZE > INT_MAX:  # kvmalloc() refuses sizes above INT_MAX
        raise IommufdError(errno.ENOMEM)
    ictx = viommu.ictx
    access = iommufd_access_create_internal(ictx)
    try:
        iommufd_access_attach_internal(access, viommu.hwpt.ioas)
        try:
            pfns = iommufd_access_pin_pages(access, aligned_iova, length, False)
            if not _physically_contiguous(access, aligned_iova, length, pfns):
                iommufd_access_unpin_pages(access, aligned_iova, length)
                raise IommufdError(errno.EFAULT)
        except BaseException:
            iommufd_access_detach_internal(access)
            raise
    except BaseException:
        iommufd_access_destroy_internal(ictx, access)
        raise
    return access, pfns[0] * PAGE_SIZE + offset


def iommufd_hw_queue_alloc_ioctl(ucmd) -> int:
    """iommufd_hw_queue_alloc_ioctl() (viommu.c:400): flags or type DEFAULT EOPNOTSUPP; length 0
    EINVAL; nesting_parent_iova + length - 1 past U64_MAX EOVERFLOW; the vIOMMU (ENOENT); a
    driver without the queue ops or with no structure for the type EOPNOTSUPP; then the object
    (ID reserved, before the access's), the pinned memory, and the driver's
    hw_queue_init_phys() with index and base physical address. Failures destroy what was made."""
    cmd = ucmd.cmd
    if cmd.flags or cmd.type == B.IOMMU_HW_QUEUE_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.length:
        raise IommufdError(errno.EINVAL)
    if cmd.nesting_parent_iova + cmd.length - 1 > U64_MAX:
        raise IommufdError(errno.EOVERFLOW)
    viommu = iommufd_get_viommu(ucmd, cmd.viommu_id)
    ops = viommu.ops
    get_size = getattr(ops, "get_hw_queue_size", None)
    init_phys = getattr(ops, "hw_queue_init_phys", None)
    if get_size is None or init_phys is None:
        raise IommufdError(errno.EOPNOTSUPP)
    cls = get_size(viommu, cmd.type)
    if cls is None or not issubclass(cls, IommufdHwQueue):
        raise IommufdError(errno.EOPNOTSUPP)
    objects = ucmd.ictx.objects
    hw_queue = objects.alloc(cls())
    try:
        hw_queue.access, base_pa = iommufd_hw_queue_alloc_phys(cmd, viommu)
        hw_queue.viommu = viommu
        viommu.refs += 1
        hw_queue.queue_type = cmd.type
        hw_queue.length = cmd.length
        hw_queue.base_addr = cmd.nesting_parent_iova
        init_phys(hw_queue, cmd.index, base_pa)
        cmd.out_hw_queue_id = hw_queue.id
        ucmd.respond()
    except BaseException:
        objects.abort_and_destroy(hw_queue)
        raise
    objects.finalize(hw_queue)
    return 0
