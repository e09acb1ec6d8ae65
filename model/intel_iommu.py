"""intel-iommu (drivers/iommu/intel/) as iommufd sees it, decided from a unit's CAP and ECAP
registers as the driver decides: iommu_ops intel_iommu_ops (iommu.c:3942) with its paging,
nested and blocking domains, capable(), hw_info(), probe and reserved regions.

Every `file:line` below is drivers/iommu/intel/ of Linux 7.2 unless it names another directory.
The page table a paging domain gets (first stage x86_64 or second stage vtdss, its IOVA width
and page sizes) is model.pt.table.intel_paging_domain(), which follows
intel_iommu_domain_alloc_paging_flags() (iommu.c:3003) bit for bit.

The kernel the model plays: CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON and CONFIG_IRQ_REMAP are
set (conformance/kernel/iommufd.config), the VM boots with intel_iommu=on,sm_on, superpages on.

Not modelled: SVA domains (domain_alloc_sva: not reachable from iommufd), the identity domain
(iommufd never attaches it), RMRR-based require_direct beyond what the profile's reserved
regions say, SATC/ATSR tables (a device on bus 0 is integrated, so ATS is allowed by
dmar_ats_supported(); behind a bridge the DMAR's ATSR is not in a profile: refused), DMA
incoherent page-table walks (PT_FEAT_DMA_INCOHERENT changes no iommufd answer), copied contexts
(kdump), domain ID exhaustion.
"""
from __future__ import annotations

import ctypes
import errno

from model import fault_inject
from model.domain import (IOMMU_CAP_CACHE_COHERENCY, IOMMU_CAP_DIRTY_TRACKING, IOMMU_CAP_ENFORCE_CACHE_COHERENCY,
                          IOMMU_CAP_PCI_ATS_SUPPORTED, IommuDomain)
from model.hw_pagetable import copy_struct_from_user_array, copy_struct_from_user_data
from model.iommu import RESV_DIRECT, RESV_DIRECT_RELAXABLE, RESV_MSI, BlockedDomainOps, IommuOps
from model.objects import IommufdError
from model.pt.fmt import PT_FEAT_VTDSS_FORCE_COHERENCE
from model.pt.table import intel_paging_domain
from model.uapi import B

# The test kernel's configuration (conformance/kernel/iommufd.config)
CONFIG_IRQ_REMAP = True
CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON = True  # intel_iommu_sm (iommu.c:206); the VM adds sm_on

IOAPIC_RANGE_START, IOAPIC_RANGE_END = 0xFEE00000, 0xFEEFFFFF  # iommu.c:45-46
VTD_PAGE_SIZE = 1 << 12
U64_MAX = (1 << 64) - 1


# -- the registers (iommu.h:157-218) ---------------------------------------------------------------

def _bit(reg: int, n: int) -> bool:
    return bool(reg >> n & 1)


def cap_super_page_val(cap: int) -> int:
    return (cap >> 34) & 0xF


def cap_mgaw(cap: int) -> int:
    return ((cap >> 16) & 0x3F) + 1


def cap_sagaw(cap: int) -> int:
    return (cap >> 8) & 0x1F


def ecap_pss(ecap: int) -> int:
    return (ecap >> 35) & 0x1F


class IntelIommu:
    """struct intel_iommu (and its struct iommu_device: `ops`, `max_pasids`) of one DMAR unit,
    from its sysfs registers (cap, ecap, version, address)."""

    def __init__(self, registers: dict, platform=None):
        self.platform = platform
        self.cap = registers["cap"]
        self.ecap = registers["ecap"]
        self.address = registers.get("address", 0)
        self.ops = INTEL_IOMMU_OPS
        self.intel_iommu_sm = CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON
        self.intel_iommu_superpage = True  # iommu.c:212 (intel_iommu=sp_off clears it)
        # alloc_iommu() (dmar.c:1140): PSS = N means N + 1 PASID bits
        self.max_pasids = 2 << ecap_pss(self.ecap) if self.pasid_supported else 0
        # intel_prepare_irq_remapping() (irq_remapping.c:700-760): every unit has ecap IR (the
        # DMAR table's INTR_REMAP flag, dmar_ir_support() dmar.c:2104, and the IOAPIC scope come
        # with it on QEMU, whose intremap=on sets both); the IR domain isolates MSI
        # (IRQ_DOMAIN_FLAG_ISOLATED_MSI, irq_remapping.c:525).
        self.irq_remapping = CONFIG_IRQ_REMAP and self.ecap_ir_support

    # iommu.h:531-538 and the ecap bits the driver reads
    @property
    def sm_supported(self) -> bool:
        return bool(self.intel_iommu_sm) and _bit(self.ecap, 43)  # ecap_smts

    @property
    def pasid_supported(self) -> bool:
        return self.sm_supported and _bit(self.ecap, 40)  # ecap_pasid

    @property
    def ssads_supported(self) -> bool:
        return self.sm_supported and _bit(self.ecap, 45) and _bit(self.ecap, 48)  # slads, smpwc

    @property
    def nested_supported(self) -> bool:
        return self.sm_supported and _bit(self.ecap, 26)  # ecap_nest

    @property
    def ecap_sc_support(self) -> bool:
        return _bit(self.ecap, 7)  # Snooping Control

    @property
    def ecap_ir_support(self) -> bool:
        return _bit(self.ecap, 3)

    @property
    def ecap_dev_iotlb_support(self) -> bool:
        return _bit(self.ecap, 2)

    @property
    def ecap_slts(self) -> bool:
        return _bit(self.ecap, 46)

    @property
    def ecap_flts(self) -> bool:
        return _bit(self.ecap, 47)


class DeviceDomainInfo:
    """struct device_domain_info: dev_iommu_priv_get() of a device behind the unit."""

    def __init__(self, dev, iommu: IntelIommu):
        self.dev = dev
        self.iommu = iommu
        self.ats_supported = False
        self.pasid_supported = 0  # features | 1
        self.pri_supported = False
        self.ats_enabled = False
        self.pasid_enabled = False
        self.pri_enabled = False
        self.iopf_refcount = 0
        self.domain = None  # the dmar_domain the RID is attached to (None: blocked)
        self.dev_pasids: dict[int, IommuDomain] = {}


# -- domains -------------------------------------------------------------------------------------

class IntelPagingDomainOps:
    """intel_fs_paging_domain_ops / intel_ss_paging_domain_ops (iommu.c:3920-3940): the page
    table's map ops (model/pt), attach_dev, set_dev_pasid, enforce_cache_coherency."""

    set_dev_pasid = True

    @staticmethod
    def enforce_cache_coherency(domain: IommuDomain) -> bool:
        """intel_iommu_enforce_cache_coherency_fs() (iommu.c:3195) / _ss() (iommu.c:3215): every
        unit of the attached devices has snooping control (domain_support_force_snooping());
        the second stage then snoops per PTE (PT_FEAT_VTDSS_FORCE_COHERENCE, SNP in each leaf
        mapped after)."""
        if domain.stage == "first" and domain.force_snooping:
            return True
        if not all(d.priv.iommu.ecap_sc_support for d in domain.devices):
            return False
        if domain.stage == "second":
            domain.ops.add_features(1 << PT_FEAT_VTDSS_FORCE_COHERENCE)
        domain.force_snooping = True
        return True


class IntelNestedDomainOps:
    """intel_nested_domain_ops (nested.c:188): attach_dev, set_dev_pasid, cache_invalidate_user."""

    set_dev_pasid = True

    @staticmethod
    def cache_invalidate_user(domain: IommuDomain, array) -> None:
        """intel_nested_cache_invalidate_user() (nested.c:91): EINVAL for another data type; per
        entry: the copy's errors, EOPNOTSUPP for flags other than LEAF or a nonzero __reserved,
        EINVAL for an address not 4 KiB aligned or npages U64_MAX with an address; entry_num
        answers the entries processed."""
        processed = 0
        try:
            if array.type != B.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1:
                raise IommufdError(errno.EINVAL)
            for i in range(array.entry_num):
                inv = copy_struct_from_user_array(array, B.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                                                  B.iommu_hwpt_vtd_s1_invalidate,
                                                  ctypes.sizeof(B.iommu_hwpt_vtd_s1_invalidate), i)
                if inv.flags & ~B.IOMMU_VTD_INV_FLAGS_LEAF or getattr(inv, "__reserved"):
                    raise IommufdError(errno.EOPNOTSUPP)
                if inv.addr % VTD_PAGE_SIZE or (inv.npages == U64_MAX and inv.addr):
                    raise IommufdError(errno.EINVAL)
                processed += 1  # cache_tag_flush_range(): the model caches no stage-1 translation
        finally:
            array.entry_num = processed


class IntelDirtyOps:
    """intel_second_stage_dirty_ops (iommu.c:2921): read_and_clear_dirty is the vtdss table's."""

    @staticmethod
    def set_dirty_tracking(domain: IommuDomain, enable: bool) -> None:
        """intel_iommu_set_dirty_tracking() (iommu.c:3767): the PASID entries of the attached
        devices get SSADE (intel_pasid_setup_dirty_tracking()), and a nesting parent's stage-1
        domains follow; always 0 here."""
        domain.dirty_tracking = enable


PAGING_DOPS = IntelPagingDomainOps()
NESTED_DOPS = IntelNestedDomainOps()


# -- iommu_ops -------------------------------------------------------------------------------------

class IntelIommuOps(IommuOps):
    """const struct iommu_ops intel_iommu_ops (iommu.c:3942). No get_viommu_size/viommu_init:
    IOMMU_VIOMMU_ALLOC is EOPNOTSUPP on VT-d in 7.2."""

    def __init__(self):
        # blocking_domain (iommu.c:2794): the static blocked domain, also release_domain
        self.blocked_domain = IommuDomain(None, type="BLOCKED", owner=self)
        self.blocked_domain.dops = BlockedDomainOps()

    # -- probe -------------------------------------------------------------------------------------

    @staticmethod
    def probe_device(dev) -> None:
        """intel_iommu_probe_device() (iommu.c:3253): ATS when the unit has a device IOTLB
        (ecap DT), the function has the ATS capability and the DMAR allows it
        (dmar_ats_supported(), iommu.c:2248: an integrated device on the root bus); in scalable
        mode with PASID support the function's PASID features; PRI needs ATS and the unit's PRS
        and PDS. The device's MSIs go through the unit's interrupt remapping when enabled."""
        iommu = dev.unit
        info = DeviceDomainInfo(dev, iommu)
        if dev.is_pci:
            integrated = int(dev.bdf.split(":")[1], 16) == 0
            if iommu.ecap_dev_iotlb_support and dev.ats_supported() and integrated:
                info.ats_supported = True
            if iommu.sm_supported:
                if iommu.pasid_supported:
                    features = dev.pasid_features()
                    if features >= 0:
                        info.pasid_supported = features | 1
                if info.ats_supported and _bit(iommu.ecap, 29) and _bit(iommu.ecap, 42) and dev.pri_supported():
                    info.pri_supported = True  # ecap_prs, ecap_pds
        dev.priv = info
        dev.isolated_msi = iommu.irq_remapping

    @staticmethod
    def probe_finalize(dev) -> None:
        """intel_iommu_probe_finalize() (iommu.c:3350): PASID enabled with the features the
        function offers, ATS in scalable mode (iommu_enable_pci_ats(): a page-aligned ATS
        capability), then PRI (iommu_enable_pci_pri(), iommu.c:901)."""
        info = dev.priv
        if info.pasid_supported and not dev.enable_pasid(info.pasid_supported & ~1):
            info.pasid_enabled = True
        if info.iommu.sm_supported and info.ats_supported and dev.ats_page_aligned():
            info.ats_enabled = True
        if info.ats_enabled and info.pri_supported and \
                not (info.pasid_enabled and not dev.prg_resp_pasid_required()):
            info.pri_enabled = True

    def get_resv_regions(self, dev) -> list[tuple[int, int, str]]:
        """intel_iommu_get_resv_regions() (iommu.c:3406): the RMRRs that cover the device
        (firmware: the profile's direct and direct-relaxable regions), then the IOAPIC range as
        an IOMMU_RESV_MSI window. (CONFIG_INTEL_IOMMU_FLOPPY_WA is off.)"""
        out = [(s, last, kind) for s, last, kind in dev.info.reserved_regions
               if kind in (RESV_DIRECT, RESV_DIRECT_RELAXABLE)]
        out.append((IOAPIC_RANGE_START, IOAPIC_RANGE_END, RESV_MSI))
        return out

    # -- capabilities and hardware information ----------------------------------------------------

    @staticmethod
    def capable(dev, cap: str) -> bool:
        """intel_iommu_capable() (iommu.c:3233)."""
        info = dev.priv
        if cap == IOMMU_CAP_CACHE_COHERENCY:
            return True
        if cap == IOMMU_CAP_ENFORCE_CACHE_COHERENCY:
            return info.iommu.ecap_sc_support
        if cap == IOMMU_CAP_DIRTY_TRACKING:
            return info.iommu.ssads_supported
        if cap == IOMMU_CAP_PCI_ATS_SUPPORTED:
            return info.ats_supported
        return False

    @staticmethod
    def hw_info(dev, type: int) -> tuple[bytes, int]:
        """intel_iommu_hw_info() (iommu.c:3689): EOPNOTSUPP unless DEFAULT or INTEL_VTD; struct
        iommu_hw_info_vtd with the ERRATA_772415_SPR17 flag (always) and the unit's registers."""
        if type not in (B.IOMMU_HW_INFO_TYPE_DEFAULT, B.IOMMU_HW_INFO_TYPE_INTEL_VTD):
            raise IommufdError(errno.EOPNOTSUPP)
        fault_inject.kmalloc("intel_iommu_hw_info: kzalloc")
        iommu = dev.priv.iommu
        vtd = B.iommu_hw_info_vtd(flags=B.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, cap_reg=iommu.cap,
                                  ecap_reg=iommu.ecap)
        return bytes(vtd), B.IOMMU_HW_INFO_TYPE_INTEL_VTD

    # -- domain allocation -------------------------------------------------------------------------

    def domain_alloc_paging_flags(self, dev, flags: int, user_data) -> IommuDomain:
        """intel_iommu_domain_alloc_paging_flags() (iommu.c:3003): driver data EOPNOTSUPP; the
        first stage when the unit has one and the flags allow (only PASID), else the second
        stage: NEST_PARENT needs nesting (ecap NEST), DIRTY_TRACKING SSADS (SLADS and SMPWC),
        EOPNOTSUPP otherwise (model.pt.table.intel_paging_domain())."""
        if user_data is not None:
            raise IommufdError(errno.EOPNOTSUPP)
        iommu = dev.priv.iommu
        rc, table, stage = intel_paging_domain(iommu.cap, iommu.ecap, flags, sm=iommu.intel_iommu_sm,
                                               superpage=iommu.intel_iommu_superpage)
        if rc:
            raise IommufdError(-rc)
        fault_inject.kmalloc("paging_domain_alloc: kzalloc")
        dirty = IntelDirtyOps if stage == "second" and flags & B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING else None
        domain = IommuDomain(table, owner=self, dirty_ops=dirty)
        domain.dops = PAGING_DOPS
        domain.stage = stage
        domain.nested_parent = stage == "second" and bool(flags & B.IOMMU_HWPT_ALLOC_NEST_PARENT)
        domain.force_snooping = False
        domain.dirty_tracking = False
        domain.devices = []  # dmar_domain->devices: the device_domain_infos attached
        domain.s1_domains = []
        return domain

    def domain_alloc_nested(self, dev, parent: IommuDomain, flags: int, user_data) -> IommuDomain:
        """intel_iommu_domain_alloc_nested() (nested.c:196): EOPNOTSUPP without nesting support or
        for flags other than PASID, or data other than IOMMU_HWPT_DATA_VTD_S1; EINVAL for a parent
        that is not a second-stage NEST_PARENT domain; then the struct iommu_hwpt_vtd_s1."""
        iommu = dev.priv.iommu
        if not iommu.nested_supported or flags & ~B.IOMMU_HWPT_ALLOC_PASID:
            raise IommufdError(errno.EOPNOTSUPP)
        if user_data.type != B.IOMMU_HWPT_DATA_VTD_S1:
            raise IommufdError(errno.EOPNOTSUPP)
        if getattr(parent, "stage", None) != "second" or not parent.nested_parent:
            raise IommufdError(errno.EINVAL)
        vtd = copy_struct_from_user_data(user_data, B.IOMMU_HWPT_DATA_VTD_S1, B.iommu_hwpt_vtd_s1,
                                         ctypes.sizeof(B.iommu_hwpt_vtd_s1))
        fault_inject.kmalloc("intel_iommu_domain_alloc_nested: kzalloc")
        domain = IommuDomain(None, type="NESTED", owner=self)
        domain.dops = NESTED_DOPS
        domain.s2_domain = parent
        domain.s1_cfg = vtd
        domain.devices = []
        parent.s1_domains.append(domain)
        return domain

    # -- attach ------------------------------------------------------------------------------------

    @staticmethod
    def _compatible(domain: IommuDomain, info: DeviceDomainInfo) -> None:
        """paging_domain_compatible() (iommu.c:3124) for this unit: first stage needs scalable
        mode and FLTS, and 1 GiB pages the unit has (FL1GP); second stage: dirty tracking needs
        SSADS, a nesting parent nesting, the unit SLTS, the IOVA width within MGAW, superpages
        within SLLPS, forced snooping SC (EINVAL). A domain is always made for this unit's
        registers, so only its flags can disagree with another unit."""
        iommu = info.iommu
        table = domain.ops
        if domain.stage == "first":
            if not iommu.sm_supported or not iommu.ecap_flts or \
                    (not _bit(iommu.cap, 60) and table.max_vasz_lg2 > 48) or \
                    (not _bit(iommu.cap, 56) and domain.pgsize_bitmap & (1 << 30)):
                raise IommufdError(errno.EINVAL)
            return
        sllps = cap_super_page_val(iommu.cap)
        if (domain.dirty_ops is not None and not iommu.ssads_supported) or \
                (domain.nested_parent and not iommu.nested_supported) or \
                (iommu.sm_supported and not iommu.ecap_slts) or \
                cap_mgaw(iommu.cap) < table.max_vasz_lg2 or \
                (not sllps & 1 and domain.pgsize_bitmap & (1 << 21)) or \
                (not sllps & 2 and domain.pgsize_bitmap & (1 << 30)) or \
                (table.features >> PT_FEAT_VTDSS_FORCE_COHERENCE & 1 and not iommu.ecap_sc_support):
            raise IommufdError(errno.EINVAL)

    @staticmethod
    def _iopf_set(domain, info: DeviceDomainInfo) -> None:
        """iopf_for_domain_set() (iommu.h:1254) -> intel_iommu_enable_iopf() (iommu.c:3472):
        a domain with a fault handler needs PRI enabled on the device (ENODEV)."""
        if domain is None or domain.iopf_handler is None:
            return
        if not info.pri_enabled:
            raise IommufdError(errno.ENODEV)
        info.iopf_refcount += 1

    @staticmethod
    def _iopf_remove(domain, info: DeviceDomainInfo) -> None:
        """iopf_for_domain_remove() (iommu.h:1269)."""
        if domain is None or domain.iopf_handler is None:
            return
        if info.iopf_refcount:
            info.iopf_refcount -= 1

    def _block_translation(self, dev) -> None:
        """device_block_translation() (iommu.c:2744): the RID's context/PASID entry torn down;
        the device is off its domain."""
        info = dev.priv
        if info.domain is not None and dev in info.domain.devices:
            info.domain.devices.remove(dev)
        info.domain = None
        dev.domain = self.blocked_domain

    def attach_dev(self, domain: IommuDomain, dev) -> None:
        """The domain's attach_dev: blocking_domain_attach_dev() (iommu.c:2779),
        intel_iommu_attach_device() (iommu.c:3147: block, compatible, IOPF, attach) or
        intel_nested_attach_dev() (nested.c:21: the parent's compatibility, IOPF). A failure
        leaves the device blocked (translation was blocked first)."""
        info = dev.priv
        old = dev.domain
        if domain.type == "BLOCKED":
            self._iopf_remove(info.domain, info)
            self._block_translation(dev)
            return
        self._block_translation(dev)
        if domain.type == "NESTED":
            self._compatible(domain.s2_domain, info)
            self._iopf_set(domain, info)
        else:
            self._compatible(domain, info)
            self._iopf_set(domain, info)
            self._iopf_remove(old, info)
        info.domain = domain
        domain.devices.append(dev)
        dev.domain = domain

    def set_dev_pasid(self, domain: IommuDomain, dev, pasid: int, old) -> None:
        """The domain's set_dev_pasid: blocking_domain_set_dev_pasid() (iommu.c:3583),
        intel_iommu_set_dev_pasid() (iommu.c:3633) or intel_nested_set_dev_pasid() (nested.c:145):
        EOPNOTSUPP without PASID support, the compatibility checks (EINVAL), IOPF (ENODEV)."""
        info = dev.priv
        if domain.type == "BLOCKED":
            self._iopf_remove(old, info)
            info.dev_pasids.pop(pasid, None)
            return
        if not info.iommu.pasid_supported:
            raise IommufdError(errno.EOPNOTSUPP)
        self._compatible(domain.s2_domain if domain.type == "NESTED" else domain, info)
        fault_inject.kmalloc("domain_add_dev_pasid: kzalloc")
        self._iopf_set(domain, info)
        self._iopf_remove(old, info)
        info.dev_pasids[pasid] = domain


INTEL_IOMMU_OPS = IntelIommuOps()
