"""VFIO devices as a VMM uses them through iommufd, on a machine the model plays
(model/platform.py): the device cdev and its iommufd glue (drivers/vfio/device_cdev.c,
iommufd.c, vfio_main.c) over vfio-pci (drivers/vfio/pci/), over the machine's PCI functions
(model/hw: QEMU's edu, DMA through the IOMMU into the caller's memory).

    from model import open_iommufd
    from model.vfio import open_device

    iommufd = open_iommufd()
    dev = open_device("0000:00:03.0", "qemu-vtd")          # open("/dev/vfio/devices/vfioN")
    bind = B.vfio_device_bind_iommufd(argsz=24, iommufd=iommufd.fileno())
    dev.ioctl(B.VFIO_DEVICE_BIND_IOMMUFD, bind)             # bind.out_devid
    bar = dev.mmap_bar(0)                                   # BarMapping: bar.read(0, 4) ...

Files: vfio.py (struct vfio_device and vfio_device_file, vfio_df_open/close), vfio_main.py (the
device file's fops; VfioFile / BarMapping for Python callers), device_cdev.py (bind, attach,
detach), group.py (/dev/vfio/N), iommufd.py (the physical iommufd ops), pci_core.py (vfio-pci),
pci_config.py (the virtual config space). IOMMU faults a blocked DMA causes are logged on the
machine (`model.platform.machine(profile).faults`).
"""
from __future__ import annotations

__all__ = ["open_device"]


def open_device(bdf: str, profile: str = "qemu-vtd", pid: int | None = None):
    """open() of the VFIO device cdev of PCI function `bdf` on the machine of `profile` (a name
    in model/profiles or a profile file): a model.vfio.vfio_main.VfioFile. `pid`: whose memory and
    descriptor table the file's ioctl arguments address (None: the caller). LookupError for a
    device the machine does not have."""
    from model.platform import machine
    from model.vfio.vfio_main import VfioFile, vfio_device_of

    m = machine(profile)
    dev = m.devices.get(bdf)
    if dev is None:
        raise LookupError(f"{m.name} has no PCI device {bdf} (it has {', '.join(m.devices) or 'none'})")
    return VfioFile(vfio_device_of(m, dev), pid)
