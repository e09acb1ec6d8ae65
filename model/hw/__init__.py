"""The hardware below the drivers: PCI functions as the captured machines' QEMU (7.2) emulates
them, and the IOMMU unit a function's DMA goes through.

- pci.py: a conventional PCI function (QEMU's PCIDevice, hw/pci/pci.c): config space with its
  write masks, BARs whose registers are the device model's, INTx and MSI, bus mastering;
- iommu.py: a function's DMA (pci_dma_rw()) through the unit: the attached domain's page table
  walked per page, the bytes moved to and from the frames the domain maps (model/memory.py),
  blocked requests reported in the kernel's words on the machine's fault log;
- edu.py: QEMU's educational device (hw/misc/edu.c as of 7.2), what the VMs carry.

`function_of(platform, dev)` is the one hardware instance of a machine's PCI device (made on
first use, kept for the machine's life: hardware state outlives the files that drive it).
"""
from __future__ import annotations

import threading

_FUNCTIONS: dict[int, tuple[object, object]] = {}  # id(platform's device) -> (device, function)
_LOCK = threading.Lock()

EDU_ID = (0x1234, 0x11E8)  # PCI_VENDOR_ID_QEMU, edu's device ID (edu_class_init())


def function_of(platform, dev):
    """The PCI function behind `dev` (a platform device: .info a model.profile.PciDeviceInfo,
    .bdf, .domain): QEMU's edu for edu's vendor and device IDs, else a function with no
    registers behind its BARs (reads all ones, writes dropped)."""
    with _LOCK:
        held = _FUNCTIONS.get(id(dev))
        if held is not None and held[0] is dev:
            return held[1]
        from model.hw.edu import EduDevice
        from model.hw.pci import PciFunction

        info = dev.info
        cls = EduDevice if (info.vendor, info.device) == EDU_ID else PciFunction
        fn = cls(info, platform, dev)
        _FUNCTIONS[id(dev)] = (dev, fn)
        return fn
