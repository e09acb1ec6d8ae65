"""The iommu core under a real IOMMU driver (drivers/iommu/iommu.c): iommu_groups with their
current, default and blocking domains, DMA ownership, the group-wide attach that walks every
device of the group, and a device's probe (its group, max_pasids, default domain).

model/device.py reaches these through a device's `group` (an IommuGroup here). The selftest's
mock devices (model/selftest/mock.py) predate it: each is alone in a group that is a bare
object, and the mock's ops attach it directly; device.py keeps that path for them.

Domain types are the kernel's names (include/linux/iommu.h): "BLOCKED", "IDENTITY",
"UNMANAGED" (a paging domain iommufd allocates), "DMA_FQ" (a default DMA domain), "NESTED".
"""
from __future__ import annotations

import errno

from model.objects import IommufdError

# enum iommu_resv_type as sysfs names them (iommu.c:114-120, iommu_group_resv_type_string):
# IOMMU_RESV_MSI and IOMMU_RESV_SW_MSI both print "msi"; x86 units have hardware MSI windows.
RESV_DIRECT, RESV_DIRECT_RELAXABLE, RESV_RESERVED, RESV_MSI = "direct", "direct-relaxable", "reserved", "msi"


class IommuGroup:
    """struct iommu_group: its devices, the domain they are attached to, its default domain
    (the DMA API's) and blocking domain, the DMA owner (iommufd's context) and the PASIDs
    attached (group->pasid_array)."""

    def __init__(self, id: int):
        self.id = id
        self.devices: list = []
        self.domain = None
        self.default_domain = None
        self.blocking_domain = None
        self.owner = None
        self.owner_cnt = 0
        self.pasid_array: dict[int, object] = {}

    def __repr__(self) -> str:
        return f"IommuGroup({self.id}, {len(self.devices)} devices)"

    # -- domains ---------------------------------------------------------------------------------

    def _device_set_domain(self, dev, new, old, must_succeed: bool) -> None:
        """__iommu_device_set_domain() (iommu.c:2396): a device whose firmware asks for a 1:1
        mapping (an IOMMU_RESV_DIRECT region) refuses the blocking domain (EINVAL); then the
        driver's attach_dev (__iommu_attach_device(), iommu.c:2163). A failure when the attach
        must succeed parks the device on the blocking domain."""
        if dev.require_direct and (new.type == "BLOCKED" or new is self.blocking_domain):
            raise IommufdError(errno.EINVAL)
        try:
            dev.ops.attach_dev(new, dev)
        except IommufdError:
            if must_succeed and self.blocking_domain is not None and self.blocking_domain is not new:
                dev.ops.attach_dev(self.blocking_domain, dev)
            raise

    def set_domain(self, new, must_succeed: bool = False) -> None:
        """__iommu_group_set_domain_internal() (iommu.c:2457): nothing if the group has it; else
        each device attaches; a failure puts the devices done back on the group's domain
        (unless the attach must succeed: the others are tried and the error answered)."""
        if self.domain is new:
            return
        old = self.domain
        result = None
        for i, dev in enumerate(self.devices):
            try:
                self._device_set_domain(dev, new, old, must_succeed)
            except IommufdError as e:
                if must_succeed:
                    result = e
                    continue
                if old is not None:
                    for done in self.devices[:i]:
                        try:
                            self._device_set_domain(done, old, new, True)
                        except IommufdError:
                            pass  # WARN_ON: a driver failing a domain it had
                raise
        self.domain = new
        if result is not None:
            raise result

    def set_core_domain(self) -> None:
        """__iommu_group_set_core_domain() (iommu.c:2151): the blocking domain while owned, the
        default domain otherwise (nofail)."""
        new = self.blocking_domain if self.owner is not None else self.default_domain
        try:
            self.set_domain(new, must_succeed=True)
        except IommufdError:
            pass  # WARN_ON in __iommu_group_set_domain_nofail()

    # -- DMA ownership ---------------------------------------------------------------------------

    def claim_dma_owner(self, owner) -> None:
        """iommu_device_claim_dma_owner() (iommu.c:3453): another owner EPERM; the first claim
        (__iommu_take_dma_ownership(), iommu.c:3394) needs the group on its default domain and
        no PASID attached (EBUSY), then moves it to the blocking domain (its errors)."""
        if self.owner_cnt:
            if self.owner is not owner:
                raise IommufdError(errno.EPERM)
            self.owner_cnt += 1
            return
        if (self.domain is not None and self.domain is not self.default_domain) or self.pasid_array:
            raise IommufdError(errno.EBUSY)
        self.set_domain(self.blocking_domain)
        self.owner = owner
        self.owner_cnt += 1

    def release_dma_owner(self) -> None:
        """iommu_device_release_dma_owner() (iommu.c:3513) -> __iommu_release_dma_ownership():
        the last release puts the group back on its default domain."""
        if self.owner_cnt > 1:
            self.owner_cnt -= 1
            return
        if not self.owner_cnt or self.owner is None or self.pasid_array:
            return  # WARN_ON
        self.owner_cnt = 0
        self.owner = None
        try:
            self.set_domain(self.default_domain, must_succeed=True)
        except IommufdError:
            pass  # WARN_ON in __iommu_group_set_domain_nofail()

    def has_isolated_msi(self) -> bool:
        """iommu_group_has_isolated_msi() (iommu.c:2032): every device's MSI domain isolates
        (msi_device_has_isolated_msi(), kernel/irq/msi.c:1768: an interrupt-remapping domain
        carries IRQ_DOMAIN_FLAG_ISOLATED_MSI; x86's arch_is_isolated_msi() is false)."""
        return all(dev.isolated_msi for dev in self.devices)


class BlockedDomainOps:
    """The iommu_domain_ops of a driver's static blocking domain: attach_dev and set_dev_pasid
    (intel/iommu.c:2794, amd/iommu.c:2908)."""

    set_dev_pasid = True


class IommuOps:
    """What the iommu core does for every real driver's iommu_ops (a driver subclasses it):
    iommufd's detach of a group's domain (iommu_detach_group_handle() ->
    __iommu_group_set_core_domain(): the blocking domain while iommufd owns the group) or of a
    PASID (iommu_detach_device_pasid() -> __iommu_remove_group_pasid(), iommu.c:3595: the
    blocking domain's set_dev_pasid on each device with PASIDs)."""

    user_pasid_table = False  # io-pgfault.c:130: only arm-smmu-v3 and the mock keep one

    def detach(self, domain, dev, pasid: int) -> None:
        group = dev.group
        if pasid == 0:  # IOMMU_NO_PASID
            group.set_core_domain()
            return
        for d in group.devices:
            if d.max_pasids:
                d.ops.set_dev_pasid(d.ops.blocked_domain, d, pasid, domain)
        group.pasid_array.pop(pasid, None)


def dev_iommu_get_max_pasids(pci_max_pasids: int, iommu_max_pasids: int) -> int:
    """dev_iommu_get_max_pasids() (iommu.c:438): the PCI PASID capability's count (0 without
    one), capped by the IOMMU instance's max_pasids."""
    return min(max(pci_max_pasids, 0), iommu_max_pasids)


def iommu_probe_device(dev, ops, group: IommuGroup) -> bool:
    """__iommu_probe_device() (iommu.c:511-533) and the group's default domain: the driver's
    probe_device (its per-device state), the group (ops->device_group: pci_device_group()),
    dev->iommu->max_pasids, then iommu_setup_default_domain(): a paging domain of the driver,
    PASID-capable when the device has PASIDs (__iommu_group_alloc_default_domain(),
    iommu.c:1735), the kernel's default type DMA_FQ (CONFIG_IOMMU_DEFAULT_DMA_LAZY on x86).
    False when the driver refuses the device: it is left without an IOMMU (no ops, no group)."""
    try:
        ops.probe_device(dev)
    except IommufdError:
        dev.ops = dev.iommu_dev = dev.group = None
        return False
    dev.group = group
    group.devices.append(dev)
    dev.max_pasids = dev_iommu_get_max_pasids(dev.pci_max_pasids(), dev.iommu_dev.max_pasids)
    ops.probe_finalize(dev)
    if group.blocking_domain is None:
        group.blocking_domain = ops.blocked_domain
    if group.default_domain is None:
        group.default_domain = _alloc_default_domain(dev, ops)
    if group.domain is None:
        group.set_domain(group.default_domain, must_succeed=True)
    else:  # iommu_group_add_device(): a device joining a group takes the group's domain
        group._device_set_domain(dev, group.domain, None, True)
    return True


def _alloc_default_domain(dev, ops):
    """__iommu_group_alloc_default_domain() (iommu.c:1720): a PASID-capable paging domain when
    the device has PASIDs, else (or when the driver refuses that) a plain one."""
    from model.uapi import B

    try:
        domain = ops.domain_alloc_paging_flags(dev, B.IOMMU_HWPT_ALLOC_PASID if dev.max_pasids else 0, None)
    except IommufdError:
        if not dev.max_pasids:
            raise
        domain = ops.domain_alloc_paging_flags(dev, 0, None)
    domain.type = "DMA_FQ"
    domain.owner = ops
    return domain
