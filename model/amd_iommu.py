"""amd_iommu (drivers/iommu/amd/) as iommufd sees it, decided from the unit's registers as the
driver decides: the PCI capability header (`cap`), the Extended Feature Registers (`features`:
amd_iommu_efr, `features2`: amd_iommu_efr2), and the firmware's IVRS table.

Every `file:line` below is drivers/iommu/amd/ of Linux 7.2 unless it names another directory.

Two inputs are the firmware's, which `probe --save-profile` captures beside the sysfs registers
(conformance/probe.py _amd_firmware()): "ivinfo", the IVRS table's IVinfo dword (EFRSup, VAsize),
and "intremap", whether interrupt remapping came up (the IVHD lists the southbridge IOAPIC).
QEMU 7.2's IVRS (hw/i386/acpi-build.c build_amd_iommu()) has IVinfo = PASize 40 only, no EFRSup,
and the IOAPIC entry only with intremap=on, which the VM's amd machine does not set. That
firmware decides the geometry: with no EFRSup the driver has no EFR when
early_amd_iommu_init() sizes the host page table (init.c:3271-3283: EFR[HATS] reads 0, so
amd_iommu_hpt_vasize = (0 + 4 - 1) * 9 + 21 = 48 bits) and learns it from MMIO only later
(late_iommu_features_init(), init.c:2122); the unit's own iommu->features stays 0, so
amd_iommu_hd_support() is false whatever EFR says.

The kernel the model plays: CONFIG_IRQ_REMAP=y, CONFIG_AMD_IOMMU_IOMMUFD off (it is not in
conformance/kernel/iommufd.config): amd_iommu_ops has no hw_info, get_viommu_size or viommu_init
(iommufd.h:16-18 define them NULL), so GET_HW_INFO answers type NONE with no data and
IOMMU_VIOMMU_ALLOC is EOPNOTSUPP. The guest CPU has no LA57; SEV-SNP is off (a guest).

Not modelled: SVA domains, the identity domain, ACPI HID devices, unity maps beyond the
profile's direct regions, the vIOMMU and nested domains of CONFIG_AMD_IOMMU_IOMMUFD (nested.c),
the dynamic top level of the v1 table (the model's table has its full height from the start:
no iommufd answer depends on it).
"""
from __future__ import annotations

import errno

from model import fault_inject
from model.domain import (IOMMU_CAP_CACHE_COHERENCY, IOMMU_CAP_DIRTY_TRACKING, IOMMU_CAP_ENFORCE_CACHE_COHERENCY,
                          IOMMU_CAP_PCI_ATS_SUPPORTED, IommuDomain)
from model.iommu import RESV_DIRECT, RESV_MSI, RESV_RESERVED, BlockedDomainOps, IommuOps
from model.objects import IommufdError
from model.pt.fmt import AMDV1, PT_FEAT_FLUSH_RANGE, PT_FEAT_FLUSH_RANGE_NO_GAPS
from model.pt.table import IoPageTable, x86_64
from model.uapi import B

# The test kernel's configuration (conformance/kernel/iommufd.config)
CONFIG_IRQ_REMAP = True
CONFIG_AMD_IOMMU_IOMMUFD = False
CPU_LA57 = False  # cpu_feature_enabled(X86_FEATURE_LA57): QEMU's default CPU models lack it

# QEMU 7.2's IVRS (see above): IVinfo PASize 40, no EFRSup, VAsize 0; no IOAPIC in the IVHD

# amd_iommu_types.h
FEATURE_PPR = 1 << 1
FEATURE_GT = 1 << 4
FEATURE_HATS_SHIFT, FEATURE_GATS_SHIFT = 10, 12
FEATURE_PASMAX_SHIFT = 32
FEATURE_GIOSUP = 1 << 48
FEATURE_EPHSUP = 1 << 50
FEATURE_HDSUP = 1 << 52
FEATURE_SNP = 1 << 63
FEATURE_GCR3TRPMODE = 1 << 3  # EFR2
FEATURE_HT_RANGE_IGNORE = 1 << 11  # EFR2
IOMMU_CAP_IOTLB, IOMMU_CAP_NPCACHE = 24, 26
IOMMU_IVINFO_EFRSUP = 1 << 0
IOMMU_IVINFO_VASIZE_SHIFT = 15
PAGE_MODE_4_LEVEL, PAGE_MODE_5_LEVEL = 4, 5
GUEST_PGTABLE_5_LEVEL = 1
AMD_IOMMU_PGSIZES = ((1 << 52) - (1 << 12)) ^ (1 << 39)  # GENMASK_ULL(51, 12) ^ SZ_512G (types.h:312)
PD_MODE_NONE, PD_MODE_V1, PD_MODE_V2 = 0, 1, 2
MSI_RANGE_START, MSI_RANGE_END = 0xFEE00000, 0xFEEFFFFF  # iommu.c:53-56
HT_RANGE_START, HT_RANGE_END = 0xFD00000000, 0xFFFFFFFFFF
# struct iommu_dev_data flags (amd_iommu_types.h)
DEVICE_FLAG_ATS_SUP, DEVICE_FLAG_PRI_SUP, DEVICE_FLAG_PASID_SUP = 1 << 0, 1 << 1, 1 << 2
DEVICE_FLAG_EXEC_SUP, DEVICE_FLAG_PRIV_SUP = 1 << 3, 1 << 4


class AmdIommu:
    """struct amd_iommu of the unit with the driver's globals it sets at init (init.c), and its
    struct iommu_device (`ops`, `max_pasids`)."""

    def __init__(self, registers: dict, platform=None):
        self.platform = platform
        self.ops = AMD_IOMMU_OPS
        self.cap = registers["cap"]
        self.efr = registers["features"]  # amd_iommu_efr: what sysfs `features` shows (init.c:2097)
        self.efr2 = registers.get("features2", 0)
        self.ivinfo = registers["ivinfo"]  # the firmware's (see the module docstring)
        intremap = registers["intremap"]
        # early_iommu_features_init() (init.c:305): the IVHD's EFR only with IVinfo EFRSup; an
        # IVHD's EFR image equals the MMIO register, which late_iommu_features_init() reads
        # when there is none (init.c:2133).
        efrsup = bool(self.ivinfo & IOMMU_IVINFO_EFRSUP)
        self.features = self.efr if efrsup else 0  # iommu->features
        early_efr = self.features  # amd_iommu_efr during early_amd_iommu_init()
        # early_amd_iommu_init() (init.c:3251-3301)
        max_vasize = (self.ivinfo >> IOMMU_IVINFO_VASIZE_SHIFT) & 0x7F or 64
        self.gpt_level = PAGE_MODE_5_LEVEL if CPU_LA57 and \
            (early_efr >> FEATURE_GATS_SHIFT) & 3 == GUEST_PGTABLE_5_LEVEL else PAGE_MODE_4_LEVEL
        efr_hats = (early_efr >> FEATURE_HATS_SHIFT) & 3
        self.hatdis = efr_hats == 3
        self.hpt_vasize = 0 if self.hatdis else min(max_vasize, (efr_hats + PAGE_MODE_4_LEVEL - 1) * 9 + 21)
        self.pgtable = PD_MODE_V1  # amd_iommu_pgtable (init.c:157), no amd_iommu=pgtbl_v2
        if self.hatdis:
            v2 = bool(early_efr & FEATURE_GIOSUP) and bool(early_efr & FEATURE_GT)
            self.pgtable = PD_MODE_V2 if v2 else PD_MODE_NONE
        self.pgsize_bitmap = AMD_IOMMU_PGSIZES  # amd_iommu_pgsize_bitmap (init.c:199)
        # iommu_init_pci() (init.c:2152-2200), after the MMIO EFR is known
        self.iotlb_sup = bool(self.cap >> IOMMU_CAP_IOTLB & 1)
        self.np_cache = bool(self.cap >> IOMMU_CAP_NPCACHE & 1)
        self.max_pasids = 0
        if self.check_feature(FEATURE_GT):
            pasmax = (self.efr >> FEATURE_PASMAX_SHIFT) & 0x1F
            self.max_pasids = (1 << (pasmax + 1)) - 1
        self.snp_en = False  # iommu_snp_enable() (init.c:3393): only on an SEV-SNP host
        # amd_iommu_irq_remap = check_ioapic_information() (init.c:3307, 3114): the IVHD lists
        # the southbridge IOAPIC; the remapping domain isolates MSI (iommu.c:4190)
        self.irq_remapping = CONFIG_IRQ_REMAP and bool(intremap)

    def check_feature(self, mask: int) -> bool:
        """check_feature() (amd_iommu.h:113)."""
        return bool(self.efr & mask)

    def check_feature2(self, mask: int) -> bool:
        return bool(self.efr2 & mask)

    @property
    def v2_pgtbl_supported(self) -> bool:
        """amd_iommu_v2_pgtbl_supported() (amd_iommu.h:123)."""
        return self.check_feature(FEATURE_GIOSUP) and self.check_feature(FEATURE_GT)

    @property
    def pasid_supported(self) -> bool:
        """amd_iommu_pasid_supported() (init.c:3943): the guest table's level matches the CPU's,
        GT, GIOSup, PPR and EPHSup (amd_iommu_gt_ppr_supported()), not SNP."""
        if CPU_LA57 and self.gpt_level != PAGE_MODE_5_LEVEL:
            return False
        return self.v2_pgtbl_supported and self.check_feature(FEATURE_PPR) and \
            self.check_feature(FEATURE_EPHSUP) and not self.snp_en

    @property
    def hd_support(self) -> bool:
        """amd_iommu_hd_support() (iommu.c:2571): the unit's own features (the IVHD's) HDSup."""
        return not self.hatdis and bool(self.features & FEATURE_HDSUP)

    @property
    def nest_parent_supported(self) -> bool:
        """is_nest_parent_supported() (iommu.c:2809): GT, GIOSup and EFR2 GCR3TRPMode."""
        return self.check_feature(FEATURE_GT) and self.check_feature(FEATURE_GIOSUP) and \
            self.check_feature2(FEATURE_GCR3TRPMODE)


class IommuDevData:
    """struct iommu_dev_data: dev_iommu_priv_get() of a device behind the unit."""

    def __init__(self, dev, iommu: AmdIommu):
        self.dev = dev
        self.iommu = iommu
        self.flags = 0
        self.max_pasids = 0
        self.domain = None
        self.ats_enabled = self.pasid_enabled = self.pri_enabled = False


class Amdv1DomainOps:
    """amdv1_ops / amdv2_ops (iommu.c:2664, 2741): the table's map ops (model/pt), attach_dev,
    enforce_cache_coherency; no set_dev_pasid (only SVA domains have one): a PASID attach of
    an iommufd HWPT is EOPNOTSUPP in iommu_attach_device_pasid()."""

    @staticmethod
    def enforce_cache_coherency(domain: IommuDomain) -> bool:
        """amd_iommu_enforce_cache_coherency() (iommu.c:3153): IOMMU_PTE_FC is always set."""
        return True


class AmdDirtyOps:
    """amdv1_dirty_ops (iommu.c:2674): read_and_clear_dirty is the AMDv1 table's."""

    @staticmethod
    def set_dirty_tracking(domain: IommuDomain, enable: bool) -> None:
        """amd_iommu_set_dirty_tracking() (iommu.c:3018): DTE[HAD] of the attached devices."""
        domain.dirty_tracking = enable


DOMAIN_OPS = Amdv1DomainOps()


def amdv1_table(vasz_lg2: int, features: int = 1 << PT_FEAT_FLUSH_RANGE) -> IoPageTable:
    """pt_iommu_amdv1_init() with starting level 2 and PT_FEAT_DYNAMIC_TOP: IOVA bits
    min(64, vasz) (amdv1pt_iommu_fmt_init(), generic_pt/fmt/amdv1.h:366); page sizes of every
    level whose items are below 2^vasz (NS(get_info)(), generic_pt/iommu_pt.h:1140-1146),
    aperture [0, 2^vasz - 1] (pt_iommu_init_domain(): the top range at the highest level). The
    model's table is as tall as those levels from the start. The model's walker computes in
    int64: a 64-bit table walks IOVAs below 2^63 (above, a map answers ERANGE), with the
    kernel's page sizes and aperture."""
    top = (vasz_lg2 - 13) // 9
    pgsizes = amdv1_pgsize_bitmap(vasz_lg2)
    if vasz_lg2 <= 63:
        return IoPageTable(AMDV1, top, 12, vasz_lg2, 52, pgsize_bitmap=pgsizes, features=features)
    return IoPageTable(AMDV1, top, 12, 63, 52, pgsize_bitmap=pgsizes, aperture=(0, (1 << vasz_lg2) - 1),
                       features=features)


def amdv1_pgsize_bitmap(vasz_lg2: int) -> int:
    """NS(get_info)() (generic_pt/iommu_pt.h:1132) of the real AMDv1 format (PT_MAX_TOP_LEVEL 5,
    amdv1.h:41-43) with PT_FEAT_DYNAMIC_TOP: amdv1pt_possible_sizes() (amdv1.h:156) of each level
    that can hold a leaf (below the top, amdv1.h:101) and whose items are below 2^vasz, then
    below 2^(vasz - 1) and 2^52. (model/pt/fmt/amdv1.py's leaf_sizes() is the mock variant's,
    PT_MAX_TOP_LEVEL 4: it has no level-4 leaves, which only a unit of more than 48 bits shows.)"""
    bm = 0
    for level in range(5):  # levels 0 .. PT_MAX_TOP_LEVEL - 1 can have leaves
        isz = 12 + 9 * level
        if isz >= vasz_lg2:
            break
        bm |= ((1 << (min(51, isz + 9 - 1) + 1)) - (1 << isz)) & ~(1 << 39)
    return bm & ((1 << (vasz_lg2 - 1)) - 1) & ((1 << 52) - 1)


class AmdIommuOps(IommuOps):
    """const struct iommu_ops amd_iommu_ops (iommu.c:3159), CONFIG_AMD_IOMMU_IOMMUFD off."""

    def __init__(self):
        # blocked_domain (iommu.c:2908), also release_domain
        self.blocked_domain = IommuDomain(None, type="BLOCKED", owner=self)
        self.blocked_domain.dops = BlockedDomainOps()

    if CONFIG_AMD_IOMMU_IOMMUFD:
        @staticmethod
        def hw_info(dev, type: int) -> tuple[bytes, int]:
            """amd_iommufd_hw_info() (iommufd.c:14): EOPNOTSUPP unless DEFAULT or AMD; struct
            iommu_hw_info_amd {efr, efr2}."""
            if type not in (B.IOMMU_HW_INFO_TYPE_DEFAULT, B.IOMMU_HW_INFO_TYPE_AMD):
                raise IommufdError(errno.EOPNOTSUPP)
            fault_inject.kmalloc("amd_iommufd_hw_info: kzalloc")
            iommu = dev.priv.iommu
            return bytes(B.iommu_hw_info_amd(efr=iommu.efr, efr2=iommu.efr2)), B.IOMMU_HW_INFO_TYPE_AMD

    # -- probe -------------------------------------------------------------------------------------

    @staticmethod
    def probe_device(dev) -> None:
        """amd_iommu_probe_device() (iommu.c:2447): the device's PCI capabilities (pdev_get_caps(),
        iommu.c:537), its PASIDs when the unit supports PASID, the interrupt-remapping MSI domain
        (amd_iommu_set_pci_msi_domain(), iommu.c:1085); ENODEV when the unit has no usable page
        table (PD_MODE_NONE): the device is left without an IOMMU."""
        iommu = dev.unit
        data = IommuDevData(dev, iommu)
        if dev.is_pci:
            if dev.ats_supported():
                data.flags |= DEVICE_FLAG_ATS_SUP
            if dev.pri_supported():
                data.flags |= DEVICE_FLAG_PRI_SUP
            features = dev.pasid_features()
            if features >= 0:
                data.flags |= DEVICE_FLAG_PASID_SUP
                data.flags |= (DEVICE_FLAG_EXEC_SUP if features & 0x2 else 0) | \
                    (DEVICE_FLAG_PRIV_SUP if features & 0x4 else 0)
        dev.priv = data
        dev.isolated_msi = iommu.irq_remapping and dev.is_pci
        if iommu.pasid_supported and dev.is_pci and data.flags & DEVICE_FLAG_PASID_SUP:
            data.max_pasids = min(iommu.max_pasids, dev.pci_max_pasids())
        if iommu.pgtable == PD_MODE_NONE:
            raise IommufdError(errno.ENODEV)

    @staticmethod
    def probe_finalize(dev) -> None:
        """amd_iommu_ops has no probe_finalize."""

    def get_resv_regions(self, dev) -> list[tuple[int, int, str]]:
        """amd_iommu_get_resv_regions() (iommu.c:3059): the IVMD unity maps covering the device
        (firmware: the profile's direct regions), the MSI range (IOMMU_RESV_MSI) and, unless EFR2
        says HT_RANGE_IGNORE (amd_iommu_ht_range_ignore(), init.c:259), the HyperTransport range
        (IOMMU_RESV_RESERVED)."""
        out = [(s, last, kind) for s, last, kind in dev.info.reserved_regions if kind == RESV_DIRECT]
        out.append((MSI_RANGE_START, MSI_RANGE_END, RESV_MSI))
        if not dev.unit.check_feature2(FEATURE_HT_RANGE_IGNORE):
            out.append((HT_RANGE_START, HT_RANGE_END, RESV_RESERVED))
        return out

    # -- capabilities ------------------------------------------------------------------------------

    @staticmethod
    def capable(dev, cap: str) -> bool:
        """amd_iommu_capable() (iommu.c:2989)."""
        data = dev.priv
        if cap in (IOMMU_CAP_CACHE_COHERENCY, IOMMU_CAP_ENFORCE_CACHE_COHERENCY):
            return True
        if cap == IOMMU_CAP_DIRTY_TRACKING:
            return data.iommu.hd_support
        if cap == IOMMU_CAP_PCI_ATS_SUPPORTED:
            return data.iommu.iotlb_sup and bool(data.flags & DEVICE_FLAG_ATS_SUP)
        return False

    # -- domain allocation -------------------------------------------------------------------------

    def _alloc_v1(self, iommu: AmdIommu, flags: int) -> IommuDomain:
        """amd_iommu_domain_alloc_paging_v1() (iommu.c:2679): EOPNOTSUPP with host translation
        disabled; AMDv1 over amd_iommu_hpt_vasize bits, its page sizes narrowed to
        amd_iommu_pgsize_bitmap (no 512 GiB pages)."""
        if iommu.hatdis:
            raise IommufdError(errno.EOPNOTSUPP)
        fault_inject.kmalloc("protection_domain_alloc: kzalloc")
        # FLUSH_RANGE_NO_GAPS under a hypervisor's non-present cache (iommu.c:2716-2719)
        table = amdv1_table(iommu.hpt_vasize, 1 << (PT_FEAT_FLUSH_RANGE_NO_GAPS if iommu.np_cache
                                                    else PT_FEAT_FLUSH_RANGE))
        table.pgsize_bitmap &= iommu.pgsize_bitmap
        domain = IommuDomain(table, owner=self,
                             dirty_ops=AmdDirtyOps if flags & B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING else None)
        domain.pd_mode = PD_MODE_V1
        return self._init_domain(domain)

    def _alloc_v2(self, iommu: AmdIommu, flags: int) -> IommuDomain:
        """amd_iommu_domain_alloc_paging_v2() (iommu.c:2760): EOPNOTSUPP without the v2 table
        (GIOSup and GT); x86-64 format, 47 bits (4 levels) or 56 (5), not sign-extended."""
        if not iommu.v2_pgtbl_supported:
            raise IommufdError(errno.EOPNOTSUPP)
        fault_inject.kmalloc("protection_domain_alloc: kzalloc")
        if iommu.gpt_level == PAGE_MODE_5_LEVEL:
            table = x86_64(5, 56, features=1 << PT_FEAT_FLUSH_RANGE)
        else:
            table = x86_64(4, 47, features=1 << PT_FEAT_FLUSH_RANGE)
        domain = IommuDomain(table, owner=self)
        domain.pd_mode = PD_MODE_V2
        return self._init_domain(domain)

    @staticmethod
    def _init_domain(domain: IommuDomain) -> IommuDomain:
        domain.dops = DOMAIN_OPS
        domain.dirty_tracking = False
        domain.devices = []  # pdom->dev_list
        return domain

    def domain_alloc_paging_flags(self, dev, flags: int, user_data) -> IommuDomain:
        """amd_iommu_domain_alloc_paging_flags() (iommu.c:2818): unknown flags or driver data
        EOPNOTSUPP; DIRTY_TRACKING and/or NEST_PARENT: v1 when the unit has HD support and
        nesting (GT, GIOSup, GCR3TRPMode) as asked; PASID alone: v2 when PASID is supported;
        none: the default mode's table (v1), the other as fallback; any other mix EOPNOTSUPP."""
        iommu = dev.priv.iommu
        supported = B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | B.IOMMU_HWPT_ALLOC_PASID | B.IOMMU_HWPT_ALLOC_NEST_PARENT
        if flags & ~supported or user_data is not None:
            raise IommufdError(errno.EOPNOTSUPP)
        f = flags & supported
        if f and not f & ~(B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | B.IOMMU_HWPT_ALLOC_NEST_PARENT):
            if not ((f & B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not iommu.hd_support) or
                    (f & B.IOMMU_HWPT_ALLOC_NEST_PARENT and not iommu.nest_parent_supported)):
                return self._alloc_v1(iommu, flags)
        elif f == B.IOMMU_HWPT_ALLOC_PASID:
            if iommu.pasid_supported:
                return self._alloc_v2(iommu, flags)
        elif f == 0:
            first, second = (self._alloc_v1, self._alloc_v2) if iommu.pgtable == PD_MODE_V1 else \
                (self._alloc_v2, self._alloc_v1)
            try:
                return first(iommu, flags)
            except IommufdError as e:
                if e.errno != errno.EOPNOTSUPP:
                    raise
            return second(iommu, flags)
        raise IommufdError(errno.EOPNOTSUPP)

    # -- attach ------------------------------------------------------------------------------------

    @staticmethod
    def _detach_device(dev) -> None:
        """detach_device() (iommu.c:2397): PCI capabilities off, off the domain's list."""
        data = dev.priv
        if data.domain is None:
            return
        data.ats_enabled = data.pri_enabled = False
        if data.pasid_enabled:
            dev.pasid_ctrl = 0  # pci_disable_pasid()
            data.pasid_enabled = False
        if dev in data.domain.devices:
            data.domain.devices.remove(dev)
        data.domain = None

    def attach_dev(self, domain: IommuDomain, dev) -> None:
        """The domain's attach_dev: blocked_domain_attach_device() (iommu.c:2883) or
        amd_iommu_attach_device() (iommu.c:2948): the same domain again is nothing; a
        dirty-tracking domain on a unit without HD support EINVAL; then attach_device()
        (iommu.c:2334): a v2 domain (SVA capable) enables the function's PASID (no EXEC/PRIV),
        ATS and PRI, a v1 domain ATS only."""
        data = dev.priv
        if domain.type == "BLOCKED":
            self._detach_device(dev)
            dev.domain = domain
            return
        if data.domain is domain:
            return
        if domain.dirty_ops is not None and not data.iommu.hd_support:
            raise IommufdError(errno.EINVAL)
        self._detach_device(dev)
        if dev.is_pci:
            if domain.pd_mode == PD_MODE_V2:  # pdom_is_sva_capable() (iommu.c:252)
                if data.flags & DEVICE_FLAG_PASID_SUP and not dev.enable_pasid(0):
                    data.pasid_enabled = True
                data.ats_enabled = data.iommu.iotlb_sup and bool(data.flags & DEVICE_FLAG_ATS_SUP)
                data.pri_enabled = data.ats_enabled and bool(data.flags & DEVICE_FLAG_PRI_SUP)
            else:
                data.ats_enabled = data.iommu.iotlb_sup and bool(data.flags & DEVICE_FLAG_ATS_SUP)
        data.domain = domain
        domain.devices.append(dev)
        dev.domain = domain

    def set_dev_pasid(self, domain: IommuDomain, dev, pasid: int, old) -> None:
        """blocked_domain_set_dev_pasid() (iommu.c:2900): amd_iommu_remove_dev_pasid(). Paging
        domains have no set_dev_pasid: the core answers EOPNOTSUPP before reaching a driver."""
        if domain.type != "BLOCKED":
            raise IommufdError(errno.EOPNOTSUPP)


AMD_IOMMU_OPS = AmdIommuOps()
