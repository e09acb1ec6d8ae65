"""Devices (drivers/iommu/iommufd/device.c): bind, attach, replace and detach (PASIDs too), the
automatic domains of an IOAS, in-kernel accesses (iommufd_access_*), and IOMMU_GET_HW_INFO.

A device is a driver's struct device with its iommu_ops (`dev.ops`), reached through those ops as
device.c reaches a driver, never by import: the mock IOMMU of CONFIG_IOMMUFD_TEST
(model/selftest/mock.py), or a real unit's driver (model/intel_iommu.py, model/amd_iommu.py) for
a PCI device of a machine (model/platform.py). A real device's group is an iommu_group of the
iommu core (model/iommu.py: its devices attach together, DMA ownership); each mock device is
alone in a group that is a bare object (generic_device_group()), attached through the mock's
ops. The context keeps one iommufd_group per iommu_group (ictx->groups), with the group's
per-PASID attach table (igroup->pasid_attach) as the kernel does.

References: the kernel's obj->users is the model's `refs + 1` (objects.py); a driver holding an
object (bind, access_create) or an attachment adds one, and IOMMU_DESTROY answers EBUSY while
any is held.
"""
from __future__ import annotations

import errno

from model.domain import (  # noqa: F401 (the mock driver takes the caps from here)
    IOMMU_CAP_CACHE_COHERENCY, IOMMU_CAP_DIRTY_TRACKING, IOMMU_CAP_ENFORCE_CACHE_COHERENCY,
    IOMMU_CAP_PCI_ATS_SUPPORTED,
)
from model.hw_pagetable import iommufd_hwpt_paging_alloc
from model.objects import IommufdError, IommufdObject, NotModelled
from model.pages import IOMMUFD_ACCESS_RW_WRITE
from model.uapi import B

IOMMU_NO_PASID = 0
PCI_PASID_CTRL_ENABLE, PCI_PASID_CTRL_EXEC, PCI_PASID_CTRL_PRIV = 0x01, 0x02, 0x04  # uapi/linux/pci_regs.h


class IommufdAttach:
    """struct iommufd_attach: the HWPT a group's PASID is attached to, and its devices."""

    def __init__(self):
        self.hwpt = None
        self.device_array: dict[int, "IommufdDevice"] = {}


class IommufdGroup:
    """struct iommufd_group: one per iommu_group and context (ictx->groups), kref'd by the
    devices bound there."""

    def __init__(self, ictx, group):
        self.ictx = ictx
        self.group = group
        self.refs = 1
        self.pasid_attach: dict[int, IommufdAttach] = {}
        self.sw_msi_start = None  # PHYS_ADDR_MAX: no IOMMU_RESV_SW_MSI region seen


def _ctx_groups(ictx) -> dict:
    """ictx->groups (xa_init() in iommufd_fops_open()): the context's iommufd_groups by group."""
    groups = getattr(ictx, "groups", None)
    if groups is None:
        groups = ictx.groups = {}
    return groups


def iommufd_get_group(ictx, dev) -> IommufdGroup:
    """iommufd_get_group() (device.c:66): ENODEV for a device without an iommu_group; the
    context's iommufd_group of the device's group, a new one the first time."""
    if dev.group is None:
        raise IommufdError(errno.ENODEV)
    groups = _ctx_groups(ictx)
    igroup = groups.get(dev.group)
    if igroup is not None:
        igroup.refs += 1
        return igroup
    igroup = groups[dev.group] = IommufdGroup(ictx, dev.group)
    return igroup


def iommufd_put_group(igroup: IommufdGroup) -> None:
    """iommufd_put_group() -> iommufd_group_release() (device.c:26): the last reference takes it
    out of ictx->groups."""
    igroup.refs -= 1
    if not igroup.refs:
        groups = _ctx_groups(igroup.ictx)
        if groups.get(igroup.group) is igroup:
            del groups[igroup.group]


def iommufd_selftest_is_mock_dev(dev) -> bool:
    """iommufd_selftest_is_mock_dev() (selftest.c: dev->release == mock_dev_release): the
    model's devices off the PCI bus are the mock bus's."""
    return not dev.is_pci


def _group_devices(dev) -> list:
    """for_each_group_device(): an iommu_group's devices; a mock device is alone in its group."""
    return getattr(dev.group, "devices", None) or [dev]


class IommufdDevice(IommufdObject):
    """struct iommufd_device."""

    type = "DEVICE"

    def __init__(self, ictx, dev, igroup: IommufdGroup):
        super().__init__()
        self.ictx = ictx
        self.dev = dev
        self.igroup = igroup
        self.enforce_cache_coherency = dev.ops.capable(dev, IOMMU_CAP_ENFORCE_CACHE_COHERENCY)
        self.vdev = None
        self.destroying = False


def iommufd_device_destroy(idev: IommufdDevice) -> None:
    """iommufd_device_destroy() (device.c:184): DMA ownership is released (a real group goes
    back to its default domain with the last owner), then the group reference."""
    _release_dma_owner(idev.dev)
    iommufd_put_group(idev.igroup)


def _claim_dma_owner(dev, owner) -> None:
    """iommu_device_claim_dma_owner(): a real iommu_group's ownership (model/iommu.py); the mock's
    groups keep none (each mock device is bound once, alone in its group)."""
    claim = getattr(dev.group, "claim_dma_owner", None)
    if claim is not None:
        claim(owner)


def _release_dma_owner(dev) -> None:
    """iommu_device_release_dma_owner()."""
    release = getattr(dev.group, "release_dma_owner", None)
    if release is not None:
        release()


def iommufd_get_device(ucmd, id: int) -> IommufdDevice:
    """iommufd_get_device() (iommufd_private.h): iommufd_get_object(id, IOMMUFD_OBJ_DEVICE)."""
    return ucmd.ictx.objects.get(id, "DEVICE")


def iommufd_device_bind(ictx, dev) -> IommufdDevice:
    """iommufd_device_bind() (device.c:211): EINVAL without IOMMU_CAP_CACHE_COHERENCY (a device
    without an IOMMU has none: device_iommu_capable(), iommu.c:2007); the group (ENODEV); a
    real device whose group cannot isolate MSI is EPERM unless the module parameter
    iommufd.allow_unsafe_interrupts is set (device.c:236-247; the mock's devices are exempt);
    DMA ownership of the group (EPERM: another owner; EBUSY: in use); then the object, finalized
    at once, with the binding driver as a user until iommufd_device_unbind()."""
    if dev.ops is None or not dev.ops.capable(dev, IOMMU_CAP_CACHE_COHERENCY):
        raise IommufdError(errno.EINVAL)
    igroup = iommufd_get_group(ictx, dev)
    try:
        if not iommufd_selftest_is_mock_dev(dev) and not igroup.group.has_isolated_msi():
            if not dev.allow_unsafe_interrupts:
                raise IommufdError(errno.EPERM)
            # dev_warn(): "MSI interrupts are not secure, they cannot be isolated by the platform..."
        _claim_dma_owner(dev, ictx)
        try:
            idev = ictx.objects.alloc(IommufdDevice(ictx, dev, igroup))
        except BaseException:
            _release_dma_owner(dev)
            raise
    except BaseException:
        iommufd_put_group(igroup)
        raise
    idev.refs += 1
    ictx.objects.finalize(idev)
    return idev


def iommufd_device_pre_destroy(idev: IommufdDevice) -> None:
    """iommufd_device_pre_destroy() -> iommufd_device_remove_vdev() (device.c:140): no new
    vDEVICE from now on; a vDEVICE still alive is destroyed and its ID left a tombstone
    (iommufd_object_tombstone_user(): IOMMU_DESTROY of it is ENOENT, the ID is never reused)."""
    idev.destroying = True
    vdev = idev.vdev
    if vdev is not None:
        objects = idev.ictx.objects
        objects.destroy(objects.remove(vdev.id, tombstone=True))


def iommufd_device_unbind(idev: IommufdDevice) -> None:
    """iommufd_device_unbind() -> iommufd_object_destroy_user() with REMOVE_WAIT: the driver's
    reference goes; a vDEVICE's wait_cnt reference makes it call pre_destroy first."""
    idev.refs -= 1
    if idev.vdev is not None:
        iommufd_device_pre_destroy(idev)
    objects = idev.ictx.objects
    try:
        obj = objects.remove(idev.id)
    except IommufdError:
        # An attachment still holds it (a PASID the mock's destroy does not detach,
        # selftest.c iommufd_selftest_destroy()): the kernel WARNs (iommufd_private.h:231) and
        # leaves the device to the file's release, which cannot free it either (main.c:389).
        idev.ictx.warn("iommufd_object_destroy_user", "ret")
        return
    objects.destroy(obj)


# -- attach / replace / detach -------------------------------------------------------------------

def find_hwpt_paging(hwpt):
    """find_hwpt_paging() (iommufd_private.h): a paging HWPT itself, a nested one's parent."""
    if hwpt.type == "HWPT_PAGING":
        return hwpt
    if hwpt.type == "HWPT_NESTED":
        return hwpt.parent
    return None


def _hwpt_pasid_compat(hwpt, idev: IommufdDevice, pasid: int) -> None:
    """iommufd_hwpt_pasid_compat(): a HWPT without IOMMU_HWPT_ALLOC_PASID cannot be the RID's
    while PASIDs are attached, nor a PASID's; nor can any PASID attach beside a RID HWPT
    without it (EINVAL)."""
    pa = idev.igroup.pasid_attach
    if pasid == IOMMU_NO_PASID:
        if not hwpt.pasid_compat and any(p != IOMMU_NO_PASID for p in pa):
            raise IommufdError(errno.EINVAL)
    else:
        if not hwpt.pasid_compat:
            raise IommufdError(errno.EINVAL)
        attach = pa.get(IOMMU_NO_PASID)
        if attach is not None and attach.hwpt is not None and not attach.hwpt.pasid_compat:
            raise IommufdError(errno.EINVAL)


def _ops_compatible(ops, domain) -> bool:
    """domain_iommu_ops_compatible() (iommu.c:2342): the domain is its driver's, or one of the
    driver's static domains (no owner)."""
    return domain.owner is ops or domain is getattr(ops, "blocked_domain", None) or \
        domain is getattr(ops, "identity_domain", None)


def _domain_attach(domain, idev: IommufdDevice, pasid: int, old=None) -> None:
    """iommu_attach_group_handle() / iommu_attach_device_pasid() / the replace variants: the
    driver's attach_dev or set_dev_pasid for each device of the group (iommu.c). A real group
    attaches as one (__iommu_attach_group(), iommu.c:2355: EBUSY when the group is on a domain
    other than its default or blocking one; then __iommu_group_set_domain(), which puts the
    devices done back on failure). A PASID needs set_dev_pasid (EOPNOTSUPP) and a domain of the
    device's driver (EINVAL); devices without PASID support (max_pasids 0) skip the PASID
    checks and the driver call (iommu.c:3660-3671, __iommu_set_group_pasid(): 3556)."""
    dev = idev.dev
    group = dev.group
    if pasid == IOMMU_NO_PASID:
        set_domain = getattr(group, "set_domain", None)
        if set_domain is not None and old is None and group.domain is not None and \
                group.domain is not group.default_domain and group.domain is not group.blocking_domain:
            raise IommufdError(errno.EBUSY)
        if not _ops_compatible(dev.ops, domain):
            if old is None:  # __iommu_attach_group(): domain_iommu_ops_compatible() (iommu.c:2366)
                raise IommufdError(errno.EINVAL)
            # iommu_replace_group_handle() (iommu.c:3976) has no such check: the other driver's
            # attach_dev gets this device (the mock's mock_domain_nop_attach() reads a PCI device
            # as a struct mock_dev, selftest.c). Measured on 7.2.13 under QEMU: replacing an
            # attached VT-d device onto an IOAS whose automatic domain is the mock's hangs the call.
            raise NotModelled("a replace onto another driver's domain (the 7.2 test kernel hangs there)")
        if set_domain is None:
            dev.ops.attach_dev(domain, dev)
            return
        set_domain(domain)
        return
    if domain.dops is None or not hasattr(domain.dops, "set_dev_pasid"):
        raise IommufdError(errno.EOPNOTSUPP)
    if domain.owner is not dev.ops:
        raise IommufdError(errno.EINVAL)
    devices = _group_devices(dev)
    for d in devices:
        if d.max_pasids and pasid >= d.max_pasids:
            raise IommufdError(errno.EINVAL)
    done = []
    try:
        for d in devices:
            if d.max_pasids:
                d.ops.set_dev_pasid(domain, d, pasid, old)
                done.append(d)
    except BaseException:
        for d in done:  # err_revert: back to the old domain, or off the PASID
            if old is not None:
                d.ops.set_dev_pasid(old, d, pasid, domain)
            else:
                d.ops.set_dev_pasid(d.ops.blocked_domain, d, pasid, domain)
        raise
    pasid_array = getattr(group, "pasid_array", None)
    if pasid_array is not None:
        pasid_array[pasid] = domain


def iommufd_hw_pagetable_attach(hwpt, idev: IommufdDevice, pasid: int) -> None:
    """iommufd_hw_pagetable_attach(): EBUSY if the device is already attached at this PASID,
    EINVAL if the group's PASID has another HWPT; the first device of the group attaches the
    domain (compat checks, then the driver); the HWPT gains a user per device."""
    igroup = idev.igroup
    hwpt_paging = find_hwpt_paging(hwpt)
    attach_resv = hwpt_paging is not None and pasid == IOMMU_NO_PASID
    attach = igroup.pasid_attach.get(pasid)
    first = attach is None
    if first:
        attach = IommufdAttach()
    if idev.id in attach.device_array:
        raise IommufdError(errno.EBUSY)  # xa_insert()
    if attach.hwpt is not None and attach.hwpt is not hwpt:
        raise IommufdError(errno.EINVAL)
    if attach_resv:
        iommufd_device_attach_reserved_iova(idev, hwpt_paging)
    try:
        if first:  # iommufd_hwpt_compatible_device() refuses only PCI VFs with PRI: none here
            _hwpt_pasid_compat(hwpt, idev, pasid)
            _domain_attach(hwpt.domain, idev, pasid)
            attach.hwpt = hwpt
            igroup.pasid_attach[pasid] = attach
    except BaseException:
        if attach_resv:
            hwpt_paging.ioas.iopt.remove_reserved_iova(idev.dev)
        raise
    hwpt.refs += 1
    attach.device_array[idev.id] = idev


def iommufd_device_attach_reserved_iova(idev: IommufdDevice, hwpt_paging) -> None:
    """iommufd_device_attach_reserved_iova() (device.c:406) -> iopt_table_enforce_dev_resv_regions()
    (io_pagetable.c:1502): the device's reserved regions (iommu_get_resv_regions(): the driver's,
    (start, last, type)) become reserved IOVA owned by the device, except direct-relaxable ones;
    a driver offering both hardware and software MSI windows, or two software ones, is EINVAL
    (WARN_ON). The mock driver reports none. A software MSI window (IOMMU_RESV_SW_MSI, an ARM
    unit's) would make the group's sw_msi_start and iommufd_group_setup_msi() install the MSI
    pages; x86's units report hardware windows only, so that path is not modelled."""
    iopt = hwpt_paging.ioas.iopt
    dev = idev.dev
    num_hw_msi = num_sw_msi = 0
    try:
        for start, last, kind in dev.resv_regions():
            if kind == "direct-relaxable":
                continue
            if kind == "msi":
                num_hw_msi += 1
            elif kind == "sw_msi":
                idev.igroup.sw_msi_start = start
                num_sw_msi += 1
            iopt.reserve_iova(start, last, dev)
        if (num_sw_msi and num_hw_msi) or num_sw_msi > 1:
            raise IommufdError(errno.EINVAL)
    except IommufdError:
        iopt.remove_reserved_iova(dev)
        raise


def iommufd_hw_pagetable_put(ictx, hwpt) -> None:
    """iommufd_hw_pagetable_put(): an automatic domain goes with its last user
    (iommufd_object_put_and_try_destroy()); any other HWPT just loses the user."""
    hwpt.refs -= 1
    if hwpt.type == "HWPT_PAGING" and hwpt.auto_domain and hwpt.refs == 0:
        ictx.objects.destroy(ictx.objects.remove(hwpt.id))


def iommufd_hw_pagetable_detach(idev: IommufdDevice, pasid: int):
    """iommufd_hw_pagetable_detach(): the device leaves; the last one of the group detaches
    the domain (the device goes to the blocking domain). Returns the HWPT or None."""
    igroup = idev.igroup
    attach = igroup.pasid_attach.get(pasid)
    if attach is None:
        return None
    hwpt = attach.hwpt
    hwpt_paging = find_hwpt_paging(hwpt)
    del attach.device_array[idev.id]
    if not attach.device_array:
        idev.dev.ops.detach(hwpt.domain, idev.dev, pasid)
        hwpt_fault_auto_response(hwpt, idev)
        del igroup.pasid_attach[pasid]
    if hwpt_paging is not None and pasid == IOMMU_NO_PASID:
        hwpt_paging.ioas.iopt.remove_reserved_iova(idev.dev)
    iommufd_hw_pagetable_put(idev.ictx, hwpt)
    return hwpt


def hwpt_fault_auto_response(hwpt, idev) -> None:
    """iommufd_auto_response_faults(): the fault groups of this device still waiting for a
    response are answered with IOMMUFD_PAGE_RESP_INVALID and dropped."""
    if hwpt.fault is not None:
        hwpt.fault.auto_response(idev)


def iommufd_device_do_attach(idev: IommufdDevice, pasid: int, hwpt):
    iommufd_hw_pagetable_attach(hwpt, idev, pasid)
    return None


def iommufd_device_do_replace(idev: IommufdDevice, pasid: int, hwpt):
    """iommufd_device_do_replace(): EINVAL unless this device is attached at this PASID;
    replacing with the same HWPT changes nothing. The users of every device of the group move
    to the new HWPT; the old one is returned for the caller to put."""
    igroup = idev.igroup
    hwpt_paging = find_hwpt_paging(hwpt)
    attach_resv = hwpt_paging is not None and pasid == IOMMU_NO_PASID
    attach = igroup.pasid_attach.get(pasid)
    if attach is None or idev.id not in attach.device_array:
        raise IommufdError(errno.EINVAL)
    old_hwpt = attach.hwpt
    if hwpt is old_hwpt:
        return None
    old_paging = find_hwpt_paging(old_hwpt)
    new_ioas = old_paging is None or hwpt_paging is None or hwpt_paging.ioas is not old_paging.ioas
    if attach_resv and new_ioas:
        done = []
        try:
            for cur in attach.device_array.values():
                iommufd_device_attach_reserved_iova(cur, hwpt_paging)
                done.append(cur)
        except BaseException:
            for cur in done:
                hwpt_paging.ioas.iopt.remove_reserved_iova(cur.dev)
            raise
    try:
        _hwpt_pasid_compat(hwpt, idev, pasid)
        _domain_attach(hwpt.domain, idev, pasid, old_hwpt.domain)
    except BaseException:
        if attach_resv and new_ioas:
            for cur in attach.device_array.values():
                hwpt_paging.ioas.iopt.remove_reserved_iova(cur.dev)
        raise
    hwpt_fault_auto_response(old_hwpt, idev)
    if old_paging is not None and pasid == IOMMU_NO_PASID and new_ioas:
        for cur in attach.device_array.values():
            old_paging.ioas.iopt.remove_reserved_iova(cur.dev)
    attach.hwpt = hwpt
    n = len(attach.device_array)
    hwpt.refs += n
    old_hwpt.refs -= n - 1
    return old_hwpt


def iommufd_device_auto_get_domain(idev: IommufdDevice, pasid: int, ioas, do_attach):
    """iommufd_device_auto_get_domain(): the first automatic HWPT of the IOAS that takes the
    device (EINVAL means incompatible: try the next; any other error is the answer), else a new
    automatic HWPT_PAGING. Returns (HWPT to put or None, the HWPT's ID)."""
    immediate_attach = do_attach is iommufd_device_do_attach
    for hwpt in list(ioas.hwpt_list):
        if not hwpt.auto_domain:
            continue
        try:
            destroy_hwpt = do_attach(idev, pasid, hwpt)
        except IommufdError as e:
            if e.errno == errno.EINVAL:
                continue
            raise
        return destroy_hwpt, hwpt.id
    ictx = idev.ictx
    hwpt = iommufd_hwpt_paging_alloc(ictx, ioas, idev, pasid, 0, None,
                                     (iommufd_hw_pagetable_attach, iommufd_hw_pagetable_detach)
                                     if immediate_attach else None)
    destroy_hwpt = None
    if not immediate_attach:
        try:
            destroy_hwpt = do_attach(idev, pasid, hwpt)
        except BaseException:
            ictx.objects.abort_and_destroy(hwpt)
            raise
    hwpt.auto_domain = True
    ictx.objects.finalize(hwpt)
    return destroy_hwpt, hwpt.id


def iommufd_device_change_pt(idev: IommufdDevice, pasid: int, pt_id: int, do_attach) -> int:
    """iommufd_device_change_pt(): pt_id an IOAS (automatic domain) or a HWPT; anything else
    EINVAL, unknown ENOENT. Returns the HWPT ID attached."""
    pt_obj = idev.ictx.objects.get(pt_id)
    if pt_obj.type in ("HWPT_NESTED", "HWPT_PAGING"):
        destroy_hwpt = do_attach(idev, pasid, pt_obj)
    elif pt_obj.type == "IOAS":
        destroy_hwpt, pt_id = iommufd_device_auto_get_domain(idev, pasid, pt_obj, do_attach)
    else:
        raise IommufdError(errno.EINVAL)
    if destroy_hwpt is not None:
        iommufd_hw_pagetable_put(idev.ictx, destroy_hwpt)
    return pt_id


def iommufd_device_attach(idev: IommufdDevice, pasid: int, pt_id: int) -> int:
    """iommufd_device_attach(): the attachment holds the device (a user until detach)."""
    pt_id = iommufd_device_change_pt(idev, pasid, pt_id, iommufd_device_do_attach)
    idev.refs += 1
    return pt_id


def iommufd_device_replace(idev: IommufdDevice, pasid: int, pt_id: int) -> int:
    """iommufd_device_replace(): detach + attach with no window; a failure changes nothing."""
    return iommufd_device_change_pt(idev, pasid, pt_id, iommufd_device_do_replace)


def iommufd_device_detach(idev: IommufdDevice, pasid: int) -> None:
    """iommufd_device_detach()."""
    if iommufd_hw_pagetable_detach(idev, pasid) is not None:
        idev.refs -= 1


# -- in-kernel accesses --------------------------------------------------------------------------

class IommufdAccess(IommufdObject):
    """struct iommufd_access: a driver reading and writing an IOAS without DMA. `ops` is the
    driver's iommufd_access_ops (needs_pin_pages, unmap(iova, length))."""

    type = "ACCESS"

    def __init__(self, ictx, ops):
        super().__init__()
        self.ictx = ictx
        self.ops = ops
        self.ioas = None
        self.ioas_unpin = None
        self.iopt_access_list_id = 0
        self.iova_alignment = 1

    @property
    def internal(self) -> bool:
        """iommufd_access_is_internal(): made by the core (a HW queue's), no driver ops."""
        return self.ops is None

    def notify_unmap(self, iova: int, length: int) -> None:
        """iommufd_access_notify_unmap()'s call of ops->unmap for this access (internal
        accesses are skipped: their areas are locked instead)."""
        if not self.internal:
            self.ops.unmap(iova, length)


def iommufd_access_destroy_object(access: IommufdAccess) -> None:
    """iommufd_access_destroy_object(): detach from the IOAS (the driver's unmap op runs)."""
    if access.ioas is not None:
        iommufd_access_change_ioas(access, None)


def iommufd_access_create(ictx, ops) -> IommufdAccess:
    """iommufd_access_create(): finalized at once, the driver a user until destroy; alignment
    PAGE_SIZE if the driver pins pages, else 1."""
    from model.limits import PAGE_SIZE

    access = ictx.objects.alloc(IommufdAccess(ictx, ops))
    access.refs += 1
    access.iova_alignment = PAGE_SIZE if ops.needs_pin_pages else 1
    ictx.objects.finalize(access)
    return access


def iommufd_access_destroy(access: IommufdAccess) -> None:
    """iommufd_access_destroy() -> iommufd_object_destroy_user()."""
    access.refs -= 1
    objects = access.ictx.objects
    objects.destroy(objects.remove(access.id))


def iommufd_access_create_internal(ictx) -> IommufdAccess:
    """iommufd_access_create_internal() (device.c:1154): an ACCESS object with an ID like any
    other (finalized at once, the core a user), PAGE_SIZE alignment, no driver ops."""
    from model.limits import PAGE_SIZE

    access = ictx.objects.alloc(IommufdAccess(ictx, None))
    access.refs += 1
    access.iova_alignment = PAGE_SIZE
    ictx.objects.finalize(access)
    return access


def iommufd_access_attach_internal(access: IommufdAccess, ioas) -> None:
    """iommufd_access_attach_internal() (device.c:1246)."""
    iommufd_access_change_ioas(access, ioas)


def iommufd_access_detach_internal(access: IommufdAccess) -> None:
    """iommufd_access_detach_internal(): leave the IOAS."""
    iommufd_access_change_ioas(access, None)


def iommufd_access_destroy_internal(ictx, access: IommufdAccess) -> None:
    """iommufd_access_destroy_internal(): iommufd_object_destroy_user()."""
    iommufd_access_destroy(access)


def iommufd_access_change_ioas(access: IommufdAccess, new_ioas) -> None:
    """iommufd_access_change_ioas(): join the new IOAS (iopt_add_access(): EADDRINUSE when its
    areas do not suit the access's alignment; nothing changes then), then leave the old one
    after the driver's unmap op has dropped every pin it held there."""
    cur_ioas = access.ioas
    if cur_ioas is not access.ioas_unpin:
        raise IommufdError(errno.EBUSY)
    if cur_ioas is new_ioas:
        return
    access.ioas = None
    if new_ioas is not None:
        try:
            new_id = new_ioas.iopt.add_access(access)
        except BaseException:
            access.ioas = cur_ioas
            raise
        new_ioas.refs += 1
    if cur_ioas is not None:
        if not access.internal:
            access.ops.unmap(0, (1 << 64) - 1)
        cur_ioas.iopt.remove_access(access.iopt_access_list_id)
        cur_ioas.refs -= 1
    if new_ioas is not None:
        access.iopt_access_list_id = new_id
    access.ioas = new_ioas
    access.ioas_unpin = new_ioas


def iommufd_access_attach(access: IommufdAccess, ictx, ioas_id: int) -> None:
    """iommufd_access_attach(): iommufd_get_ioas() (ENOENT), then change_ioas."""
    ioas = ictx.objects.get(ioas_id, "IOAS")
    iommufd_access_change_ioas(access, ioas)


def iommufd_access_replace(access: IommufdAccess, ictx, ioas_id: int) -> None:
    """iommufd_access_replace(): ENOENT when the access has no IOAS."""
    if access.ioas is None:
        raise IommufdError(errno.ENOENT)
    ioas = ictx.objects.get(ioas_id, "IOAS")
    iommufd_access_change_ioas(access, ioas)


def _check_range(iova: int, length: int) -> int:
    if not length:
        raise IommufdError(errno.EINVAL)
    last = iova + length - 1
    if last > (1 << 64) - 1:
        raise IommufdError(errno.EOVERFLOW)
    return last


def access_user_pages(access: IommufdAccess, iova: int, length: int) -> list[tuple[int, int]] | None:
    """(pid, VA) of each page of [iova, iova + length) that an access pinned, for pages of user
    memory; None when any is a file's page (no VA to look it up by) or the range has a gap."""
    from model.limits import PAGE_SIZE

    areas, done = access.ioas.iopt.contig_areas(iova, iova + length - 1)
    if not done:
        return None
    out = []
    for area, cur, last in areas:
        pages = area.pages
        if pages.file is not None or not pages.uptr:
            return None
        for i in range(area.start_byte(cur) // PAGE_SIZE, area.start_byte(last) // PAGE_SIZE + 1):
            out.append((pages.source_pid, pages.uptr + i * PAGE_SIZE))
    return out


def iommufd_access_pin_pages(access: IommufdAccess, iova: int, length: int, write: bool) -> list[int]:
    """iommufd_access_pin_pages(): EINVAL length 0 (or an access without pin ops), EOVERFLOW,
    ENOENT without an IOAS; then over the contiguous areas: EINVAL for an area being unmapped
    or a range not page aligned inside it, EPERM for a write through a read-only area or pages,
    ENOENT for a gap. What was pinned before a failure is unpinned. Returns the frames."""
    from model.limits import PAGE_SIZE

    if access.iova_alignment != PAGE_SIZE:  # WARN_ON under CONFIG_IOMMUFD_TEST
        raise IommufdError(errno.EINVAL)
    last_iova = _check_range(iova, length)
    if access.ioas is None:
        raise IommufdError(errno.ENOENT)
    iopt = access.ioas.iopt
    areas, done = iopt.contig_areas(iova, last_iova)
    pinned, pfns = [], []
    try:
        for k, (area, cur, last) in enumerate(areas):
            contig_done = k == len(areas) - 1 and done
            if area.prevent_access or area.start_byte(cur) % PAGE_SIZE or (
                    not contig_done and area.start_byte(area.last) % PAGE_SIZE != PAGE_SIZE - 1):
                raise IommufdError(errno.EINVAL)
            if not _check_area_prot(area, write):
                raise IommufdError(errno.EPERM)
            if write and not area.pages.writable:
                raise IommufdError(errno.EPERM)
            first_i, last_i = area.start_byte(cur) // PAGE_SIZE, area.start_byte(last) // PAGE_SIZE
            pfns += area.pages.add_access(None, first_i, last_i)
            area.num_accesses += 1
            area.num_locks += access.internal  # iopt_area_add_access(lock_area)
            pinned.append((area, first_i, last_i))
        if not done:
            raise IommufdError(errno.ENOENT)
    except BaseException:
        for area, first_i, last_i in pinned:
            area.num_accesses -= 1
            area.num_locks -= access.internal
            area.pages.remove_access(first_i, last_i)
        raise
    return pfns


def iommufd_access_unpin_pages(access: IommufdAccess, iova: int, length: int) -> None:
    """iommufd_access_unpin_pages(): undo a pin of exactly this range (WARNs aside)."""
    from model.limits import PAGE_SIZE

    if not length or access.ioas_unpin is None:
        return
    last_iova = iova + length - 1
    areas, _ = access.ioas_unpin.iopt.contig_areas(iova, last_iova)
    for area, cur, last in areas:
        first_i, last_i = area.start_byte(cur) // PAGE_SIZE, area.start_byte(last) // PAGE_SIZE
        area.num_accesses -= 1
        area.num_locks -= access.internal
        area.pages.remove_access(first_i, last_i)


def _check_area_prot(area, write: bool) -> bool:
    """check_area_prot()."""
    from model.domain import IOMMU_READ, IOMMU_WRITE

    return bool(area.iommu_prot & (IOMMU_WRITE if write else IOMMU_READ))


def iommufd_access_rw(access: IommufdAccess, iova: int, length: int, flags: int, payload: bytes = b"",
                      current_pid: int = 0) -> bytes:
    """iommufd_access_rw() (device.c:1493): EINVAL length 0, EOVERFLOW, ENOENT without an IOAS;
    over the contiguous areas EINVAL for an area being unmapped, EPERM for the wrong direction,
    ENOENT at a gap (after copying what came before); each area's part through
    iopt_pages_rw_access() with the IOMMUFD_ACCESS_RW_* `flags`, for the caller whose mm is
    `current_pid`'s. Returns the bytes read."""
    last_iova = _check_range(iova, length)
    if access.ioas is None:
        raise IommufdError(errno.ENOENT)
    areas, done = access.ioas.iopt.contig_areas(iova, last_iova)
    out, off = [], 0
    for area, cur, last in areas:
        n = last - cur + 1
        if area.prevent_access:
            raise IommufdError(errno.EINVAL)
        if not _check_area_prot(area, bool(flags & IOMMUFD_ACCESS_RW_WRITE)):
            raise IommufdError(errno.EPERM)
        out.append(area.pages.rw_access(area.start_byte(cur), n, flags, payload[off:off + n], current_pid))
        off += n
    if not done:
        raise IommufdError(errno.ENOENT)
    return b"".join(out)


# -- IOMMU_GET_HW_INFO ---------------------------------------------------------------------------

def iommufd_get_hw_info(ucmd) -> int:
    """iommufd_get_hw_info() (device.c:1545): flags other than INPUT_TYPE EOPNOTSUPP,
    __reserved[0..2] EOPNOTSUPP, in_data_type cleared without INPUT_TYPE, then the device
    (ENOENT). The driver's hw_info (its error: EOPNOTSUPP for a type it does not know) gives data
    and length; a driver without the op answers type NONE and no data whatever the type asked;
    min(data_len, length) bytes go to data_uptr and the rest of the user's data_len is cleared
    (EFAULT), data_len answers the driver's length. Capabilities: DIRTY_TRACKING, and
    PCI_ATS_NOT_SUPPORTED when the driver cannot use ATS for the device; max_pasid_log2 from
    dev->iommu->max_pasids, and for a PCI device with PASIDs the PASID control's EXEC and PRIV
    (pci_pasid_status(), device.c:1633-1652)."""
    cmd = ucmd.cmd
    if cmd.flags & ~B.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        raise IommufdError(errno.EOPNOTSUPP)
    if any(cmd.__reserved):
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.flags & B.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        cmd.in_data_type = B.IOMMU_HW_INFO_TYPE_DEFAULT
    idev = iommufd_get_device(ucmd, cmd.dev_id)
    dev = idev.dev
    hw_info = getattr(dev.ops, "hw_info", None)
    if hw_info is not None:
        data, cmd.out_data_type = hw_info(dev, cmd.in_data_type)
    else:  # a driver without the op (amd_iommu without CONFIG_AMD_IOMMU_IOMMUFD): NONE, no data
        data, cmd.out_data_type = b"", B.IOMMU_HW_INFO_TYPE_NONE
    copy_len = min(cmd.data_len, len(data))
    from model.uaccess import clear_user, copy_to_user

    if cmd.data_len:
        copy_to_user(ucmd.mem, cmd.data_uptr, data[:copy_len])
        clear_user(ucmd.mem, cmd.data_uptr + copy_len, cmd.data_len - copy_len)
    cmd.data_len = len(data)
    cmd.out_capabilities = 0
    if dev.ops.capable(dev, IOMMU_CAP_DIRTY_TRACKING):
        cmd.out_capabilities |= B.IOMMU_HW_CAP_DIRTY_TRACKING
    if not dev.ops.capable(dev, IOMMU_CAP_PCI_ATS_SUPPORTED):
        cmd.out_capabilities |= B.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    cmd.out_max_pasid_log2 = dev.max_pasids.bit_length() - 1 if dev.max_pasids else 0
    if dev.max_pasids and dev.is_pci:  # pci_pasid_status(): the PASID control as the driver enabled it
        ctrl = dev.pasid_status()
        if ctrl < 0 or not ctrl & PCI_PASID_CTRL_ENABLE:  # WARN_ON_ONCE (device.c:1642)
            idev.ictx.warn("iommufd_get_hw_info", "ctrl < 0 || !(ctrl & PCI_PASID_CTRL_ENABLE)")
        if ctrl & PCI_PASID_CTRL_EXEC:
            cmd.out_capabilities |= B.IOMMU_HW_CAP_PCI_PASID_EXEC
        if ctrl & PCI_PASID_CTRL_PRIV:
            cmd.out_capabilities |= B.IOMMU_HW_CAP_PCI_PASID_PRIV
    ucmd.respond()
    return 0
