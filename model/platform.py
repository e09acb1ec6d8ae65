"""A machine built from a hardware profile (model/profile.py): its IOMMU unit, driven by the
model of the driver the unit's sysfs names (model/intel_iommu.py, model/amd_iommu.py), and its
PCI devices, probed by that driver into iommu_groups (model/iommu.py) as the kernel probes them
at boot.

    m = machine("qemu-vtd")                # one Platform per profile in a process
    dev = m.devices["0000:00:03.0"]        # the `dev` iommufd binds
    idev = model.device.iommufd_device_bind(ictx, dev)

A device's config space, BARs, group and reserved regions are the profile's; everything the
drivers decide (page tables, capabilities, what HWPT_ALLOC accepts, PASIDs, MSI isolation) comes
from the unit's registers as the kernel's drivers read them. The profile's `observed` answers are
never read here: tests compare the model against them.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path

from model.iommu import RESV_DIRECT, IommuGroup, iommu_probe_device
from model.profile import PciDeviceInfo, Profile, load

# The driver model of each unit kind, by the attribute group its sysfs directory carries
# (/sys/class/iommu/*/intel-iommu, .../amd-iommu): "module:class" of the unit's model.
DRIVERS = {
    "intel-iommu": "model.intel_iommu:IntelIommu",
    "amd-iommu": "model.amd_iommu:AmdIommu",
}

# include/uapi/linux/pci_regs.h
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_HEADER_TYPE = 0x0E
PCI_CAPABILITY_LIST = 0x34
PCI_CB_CAPABILITY_LIST = 0x14
PCI_CFG_SPACE_SIZE = 256
PCI_CAP_ID_EXP = 0x10
PCI_EXT_CAP_ID_ATS = 0x0F
PCI_EXT_CAP_ID_PRI = 0x13
PCI_EXT_CAP_ID_PASID = 0x1B
PCI_ATS_CAP = 0x04
PCI_ATS_CAP_PAGE_ALIGNED = 0x0020
PCI_PRI_STATUS = 0x06
PCI_PRI_STATUS_PASID = 0x8000
PCI_PASID_CAP = 0x04
PCI_PASID_CAP_EXEC = 0x0002
PCI_PASID_CAP_PRIV = 0x0004
PCI_PASID_CAP_WIDTH = 0x1F00
PCI_PASID_CTRL_ENABLE = 0x0001
PCI_FIND_CAP_TTL = 48


class PciDev:
    """A PCI function of the machine as the iommu core and its driver hold it (struct pci_dev
    with its dev->iommu): the `dev` iommufd binds. Same duck type as the mock's MockDev: ops,
    iommu_dev, group, is_pci, max_pasids, domain (the domain the device is attached to now),
    resv_regions(); plus the profile's `info`, `bdf`, and the driver's per-device state (priv)."""

    is_pci = True

    def __init__(self, platform: "Platform", info: PciDeviceInfo, unit):
        self.platform = platform
        self.info = info
        self.bdf = info.bdf
        self.unit = unit  # the driver's struct intel_iommu / amd_iommu this device sits behind
        self.ops = unit.ops
        self.iommu_dev = unit  # dev->iommu->iommu_dev (its .ops, .max_pasids)
        self.group: IommuGroup | None = None
        self.max_pasids = 0
        self.domain = None
        self.priv = None  # dev_iommu_priv_get(): the driver's device_domain_info / iommu_dev_data
        self.isolated_msi = False  # the driver put the device's MSIs behind interrupt remapping
        self.pasid_ctrl = 0  # the PASID capability's control register (pci_enable_pasid() writes it)
        # iommu_create_device_direct_mappings() (iommu.c:1220): an IOMMU_RESV_DIRECT region
        self.require_direct = any(kind == RESV_DIRECT for _, _, kind in info.reserved_regions)
        self.pasid_cap = self.find_ext_capability(PCI_EXT_CAP_ID_PASID)  # pci_pasid_init() (ats.c:430)
        self.ats_cap = self.find_ext_capability(PCI_EXT_CAP_ID_ATS)  # pci_ats_init()
        self.pri_cap = self.find_ext_capability(PCI_EXT_CAP_ID_PRI)  # pci_pri_init()
        self.untrusted = False  # pci_set_untrusted(): behind an external-facing port (none captured)

    def __repr__(self) -> str:
        return f"PciDev({self.bdf}, group {self.info.iommu_group})"

    # -- config space --------------------------------------------------------------------------

    def config_word(self, off: int) -> int:
        return int.from_bytes(self.info.config[off:off + 2].ljust(2, b"\0"), "little")

    def config_dword(self, off: int) -> int:
        return int.from_bytes(self.info.config[off:off + 4].ljust(4, b"\0"), "little")

    def find_capability(self, cap_id: int) -> int:
        """pci_find_capability() (drivers/pci/pci.c): the standard list's entry, 0 for none."""
        if not self.config_word(PCI_STATUS) & PCI_STATUS_CAP_LIST:
            return 0
        htype = self.info.config[PCI_HEADER_TYPE] & 0x7F
        pos = self.info.config[PCI_CB_CAPABILITY_LIST if htype == 2 else PCI_CAPABILITY_LIST]
        for _ in range(PCI_FIND_CAP_TTL):  # __pci_find_next_cap_ttl()
            pos &= ~3
            if pos < 0x40:
                break
            cid, nxt = self.info.config[pos], self.info.config[pos + 1]
            if cid == 0xFF:
                break
            if cid == cap_id:
                return pos
            pos = nxt
        return 0

    def is_pcie(self) -> bool:
        """pci_is_pcie(): a PCI Express capability."""
        return bool(self.find_capability(PCI_CAP_ID_EXP))

    def find_ext_capability(self, cap_id: int) -> int:
        """pci_find_ext_capability() (drivers/pci/pci.c): the extended list from 0x100, in the
        4 KiB config space of a PCIe function; 0 for none (a 256-byte config space has none)."""
        if len(self.info.config) <= PCI_CFG_SPACE_SIZE or not self.is_pcie():
            return 0
        pos = PCI_CFG_SPACE_SIZE
        for _ in range((len(self.info.config) - PCI_CFG_SPACE_SIZE) // 8):
            header = self.config_dword(pos)
            if header in (0, 0xFFFFFFFF):
                return 0
            if header & 0xFFFF == cap_id and pos:
                return pos
            pos = (header >> 20) & 0xFFC
            if pos < PCI_CFG_SPACE_SIZE:
                return 0
        return 0

    # -- drivers/pci/ats.c -----------------------------------------------------------------------

    def ats_supported(self) -> bool:
        """pci_ats_supported() (ats.c:41)."""
        return bool(self.ats_cap) and not self.untrusted

    def ats_page_aligned(self) -> bool:
        """pci_ats_page_aligned(): the ATS capability's Page Aligned Request bit."""
        return bool(self.ats_cap) and bool(self.config_word(self.ats_cap + PCI_ATS_CAP) & PCI_ATS_CAP_PAGE_ALIGNED)

    def prg_resp_pasid_required(self) -> bool:
        """pci_prg_resp_pasid_required(): the PRI status's PRG Response PASID Required bit."""
        return bool(self.pri_cap) and bool(self.config_word(self.pri_cap + PCI_PRI_STATUS) & PCI_PRI_STATUS_PASID)

    def pri_supported(self) -> bool:
        """pci_pri_supported()."""
        return bool(self.pri_cap)

    def pasid_features(self) -> int:
        """pci_pasid_features() (ats.c:544): EXEC | PRIV the capability offers, -EINVAL without one."""
        if not self.pasid_cap:
            return -22
        return self.config_word(self.pasid_cap + PCI_PASID_CAP) & (PCI_PASID_CAP_EXEC | PCI_PASID_CAP_PRIV)

    def pci_max_pasids(self) -> int:
        """pci_max_pasids() (ats.c:571): 1 << the capability's width, -EINVAL without one."""
        if not self.pasid_cap:
            return -22
        return 1 << ((self.config_word(self.pasid_cap + PCI_PASID_CAP) & PCI_PASID_CAP_WIDTH) >> 8)

    def enable_pasid(self, features: int) -> int:
        """pci_enable_pasid() (ats.c:442): EINVAL without the capability or for a feature it lacks;
        the control becomes ENABLE | features. (Its End-End TLP prefix and ACS path conditions
        are not in a profile: taken as met.)"""
        if not self.pasid_cap:
            return -22
        supported = self.pasid_features()
        if supported & features != features:
            return -22
        self.pasid_ctrl = PCI_PASID_CTRL_ENABLE | features
        return 0

    def pasid_status(self) -> int:
        """pci_pasid_status() (ats.c:601): the control's ENABLE | EXEC | PRIV."""
        return self.pasid_ctrl & 0x7

    # -- the iommu core's view -------------------------------------------------------------------

    def resv_regions(self) -> list[tuple[int, int, str]]:
        """iommu_get_resv_regions(): the driver's get_resv_regions, (start, last, type)."""
        return self.ops.get_resv_regions(self)

    @property
    def allow_unsafe_interrupts(self) -> bool:
        """iommufd's module parameter allow_unsafe_interrupts (device.c:14)."""
        return self.platform.param_bool("iommufd.allow_unsafe_interrupts")


class Platform:
    """A machine from a profile: `unit` (the IOMMU instance, the driver's struct), `ops` (its
    driver's iommu_ops), `groups` (iommu_group id -> IommuGroup), `devices` (BDF -> PciDev), and
    `faults`: the kernel log lines a DMA model appends (DMAR / AMD-Vi fault reports)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.name = profile.name
        self.params = dict(profile.params)
        try:
            where = DRIVERS[profile.unit.driver]
        except KeyError:
            raise ValueError(f"{profile.path}: no driver model for an {profile.unit.driver!r} unit "
                             f"(the model has {', '.join(DRIVERS)})") from None
        module, cls = where.split(":")
        self.unit = getattr(importlib.import_module(module), cls)(profile.unit.registers, self)
        self.ops = self.unit.ops
        self.groups: dict[int, IommuGroup] = {}
        self.devices: dict[str, PciDev] = {}
        self.faults: list[str] = []
        for info in profile.devices:  # pci_bus_add_devices() order: the profile's
            dev = PciDev(self, info, self.unit)
            group = self.groups.get(info.iommu_group) or IommuGroup(info.iommu_group)
            if iommu_probe_device(dev, self.ops, group):
                self.groups[info.iommu_group] = group
            self.devices[info.bdf] = dev

    def __repr__(self) -> str:
        return f"Platform({self.name!r}, {self.profile.unit.driver}, {len(self.devices)} devices)"

    def param_bool(self, name: str) -> bool:
        """A bool module parameter as sysfs shows it ("Y"/"N"); absent: the default, off."""
        return str(self.params.get(name, "N")).strip().upper() in ("Y", "1")


_MACHINES: dict[Path, Platform] = {}
_LOCK = threading.Lock()


def machine(name_or_path: str | Path) -> Platform:
    """The process's Platform of a profile (model/profiles/NAME.json, or a file): built once."""
    profile = load(name_or_path)
    key = profile.path.resolve()
    with _LOCK:
        m = _MACHINES.get(key)
        if m is None:
            m = _MACHINES[key] = Platform(profile)
        return m
