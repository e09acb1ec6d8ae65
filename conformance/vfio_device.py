"""A VFIO PCI device driven from user space the way a VMM drives one through iommufd, and the
DMA engine of QEMU's `edu` device behind it.

The device path is the VFIO device cdev (drivers/vfio/device_cdev.c): open
/dev/vfio/devices/vfioN, VFIO_DEVICE_BIND_IOMMUFD to an iommufd, VFIO_DEVICE_ATTACH_IOMMUFD_PT
to an IOAS or HWPT, then regions (vfio_pci_core_ioctl()'s GET_REGION_INFO; config space at
its region's offset through pread/pwrite, BARs by mmap). Devices are named by PCI address as
the kernel's VFIO selftests name them, already bound to vfio-pci: the VM's profiles bind theirs
(conformance/vm.py) and pass them in IOMMUFD_VFIO_DEVICES; on a real machine the user names
them with --vfio-device; `--target model:vtd` plays a captured machine's devices (model/vfio,
`ModelVfioDevice`), whose BARs are objects rather than memory (Python in the same process cannot
trap a load from a mapping), so BAR registers are reached through `Bar.read32/write32` on both.

Edu (QEMU hw/misc/edu.c): BAR0 is 1 MiB of registers that take 4- or 8-byte accesses only; the
DMA engine copies between a 4 KiB buffer at device address 0x40000 and a bus address (an IOVA
once an IOMMU translates the device), masked with the device's dma_mask (28 bits by default),
100 ms of the machine's virtual clock after the command is written.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import time
from pathlib import Path

from conformance.vm import EDU_DEVICE, EDU_VENDOR
from model import libc
from model.uapi import T as B

DEVICES_ENV = "IOMMUFD_VFIO_DEVICES"
SYSFS_PCI = Path("/sys/bus/pci/devices")
PCI_COMMAND = 0x04  # include/uapi/linux/pci_regs.h
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4


# Called with (request, errno or 0) after every device ioctl; the pytest plugin counts them in the
# running test's ioctl matrix, beside the iommufd file's.
ON_IOCTL = None


def device_ioctl_name(request: int) -> str:
    """The name of a device-fd ioctl: VFIO numbers repeat across the container and device
    files (VFIO_BASE + N on each), so the device's are looked up among VFIO_DEVICE_* rows."""
    for row in B.IOCTLS:
        if row.number == request and row.name.startswith("VFIO_DEVICE_"):
            return row.name
    return f"{request:#x}"


# The profile the model plays in this process (`--iommufd-target model:vtd`; the pytest plugin
# sets it), or None: devices are then the machine's.
PLAYED_PROFILE: str | None = None


def devices_from_env() -> list[str]:
    return [d for d in os.environ.get(DEVICES_ENV, "").split(",") if d]


def cdev_path(bdf: str) -> Path:
    """/dev/vfio/devices/vfioN of a device bound to vfio-pci; LookupError saying why not."""
    dev = SYSFS_PCI / bdf
    if not dev.exists():
        raise LookupError(f"no PCI device {bdf} ({dev} does not exist)")
    names = sorted(p.name for p in (dev / "vfio-dev").glob("vfio*")) if (dev / "vfio-dev").is_dir() else []
    if not names:
        drv = (dev / "driver").resolve().name if (dev / "driver").exists() else "no driver"
        raise LookupError(f"{bdf} has no VFIO device cdev (driver: {drv}; bind it to vfio-pci, with "
                          "CONFIG_VFIO_DEVICE_CDEV)")
    return Path("/dev/vfio/devices") / names[0]


def iommu_group(bdf: str) -> int | None:
    g = SYSFS_PCI / bdf / "iommu_group"
    return int(g.resolve().name) if g.exists() else None


def pci_id(bdf: str) -> tuple[int, int]:
    d = SYSFS_PCI / bdf
    return int((d / "vendor").read_text(), 16), int((d / "device").read_text(), 16)


def _sz(cls) -> int:
    return ctypes.sizeof(cls)


class MappedBar:
    """A BAR mapped into this process: registers are loads and stores (ctypes' integer types
    load and store whole words, as edu's 4- and 8-byte-only registers need)."""

    def __init__(self, mapping: libc.Mapping):
        self.mapping = mapping

    def read32(self, reg: int) -> int:
        return ctypes.c_uint32.from_address(self.mapping.addr + reg).value

    def write32(self, reg: int, value: int) -> None:
        ctypes.c_uint32.from_address(self.mapping.addr + reg).value = value

    def munmap(self) -> None:
        self.mapping.munmap()


class VfioDevice:
    """An open VFIO device cdev. Every call raises OSError with the kernel's errno."""

    def __init__(self, bdf: str):
        self.bdf = bdf
        self.path = cdev_path(bdf)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._regions: dict[int, object] = {}
        self._maps: list = []

    def reopen(self) -> "VfioDevice":
        """Another open of the same device (the cdev admits one open file at a time)."""
        return VfioDevice(self.bdf)

    # What sysfs says of the device and its IOMMU (the model's device answers from its machine)
    def pci_id(self) -> tuple[int, int]:
        return pci_id(self.bdf)

    def iommu_group(self) -> int | None:
        return iommu_group(self.bdf)

    def reserved_regions(self) -> list[tuple[int, int, str]]:
        """The device's IOMMU group's reserved regions (iommu_group_show_resv_regions())."""
        text = Path(f"/sys/kernel/iommu_groups/{self.iommu_group()}/reserved_regions").read_text()
        return [(int(s, 16), int(e, 16), kind) for s, e, kind in (ln.split() for ln in text.splitlines())]

    def unit_registers(self) -> list[dict[str, int]]:
        """Every IOMMU unit's registers as its driver shows them (/sys/class/iommu/*/intel-iommu or
        amd-iommu: cap, ecap, ...)."""
        units = []
        for u in sorted(Path("/sys/class/iommu").glob("*")):
            for drv in ("intel-iommu", "amd-iommu"):
                d = u / drv
                if d.is_dir():
                    units.append({a: int((d / a).read_text().split(":")[0], 16) for a in ("cap", "ecap", "features")
                                  if (d / a).is_file()})
        return units

    def _ioctl(self, request: int, arg):
        return fcntl.ioctl(self.fd, request, arg)

    def _pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def _pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def ioctl(self, request: int, arg):
        if self.fd < 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        try:
            rc = self._ioctl(request, arg)
        except OSError as e:
            if ON_IOCTL:
                ON_IOCTL(request, e.errno)
            raise
        if ON_IOCTL:
            ON_IOCTL(request, 0)
        return rc

    def bind(self, iommufd: int, flags: int = 0) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD (vfio_df_ioctl_bind_iommufd()): the device's ID in that iommufd."""
        cmd = B.vfio_device_bind_iommufd(argsz=_sz(B.vfio_device_bind_iommufd), flags=flags, iommufd=iommufd)
        self.ioctl(B.VFIO_DEVICE_BIND_IOMMUFD, cmd)
        return cmd.out_devid

    def attach(self, pt_id: int, pasid: int | None = None) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS (the automatic domain) or a HWPT; returns the
        pt_id the kernel wrote back (the automatic HWPT's ID for an IOAS)."""
        cmd = B.vfio_device_attach_iommufd_pt(argsz=_sz(B.vfio_device_attach_iommufd_pt), pt_id=pt_id,
                                              flags=0 if pasid is None else B.VFIO_DEVICE_ATTACH_PASID,
                                              pasid=pasid or 0)
        self.ioctl(B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
        return cmd.pt_id

    def detach(self, pasid: int | None = None) -> None:
        cmd = B.vfio_device_detach_iommufd_pt(argsz=_sz(B.vfio_device_detach_iommufd_pt),
                                              flags=0 if pasid is None else B.VFIO_DEVICE_DETACH_PASID,
                                              pasid=pasid or 0)
        self.ioctl(B.VFIO_DEVICE_DETACH_IOMMUFD_PT, cmd)

    def info(self):
        cmd = B.vfio_device_info(argsz=_sz(B.vfio_device_info))
        self.ioctl(B.VFIO_DEVICE_GET_INFO, cmd)
        return cmd

    def region(self, index: int):
        """VFIO_DEVICE_GET_REGION_INFO (vfio_pci_ioctl_get_region_info()): flags, size, offset."""
        if index not in self._regions:
            cmd = B.vfio_region_info(argsz=_sz(B.vfio_region_info), index=index)
            self.ioctl(B.VFIO_DEVICE_GET_REGION_INFO, cmd)
            self._regions[index] = cmd
        return self._regions[index]

    def config_read(self, offset: int, n: int) -> bytes:
        return self._pread(n, self.region(B.VFIO_PCI_CONFIG_REGION_INDEX).offset + offset)

    def config_write(self, offset: int, data: bytes) -> None:
        if self._pwrite(data, self.region(B.VFIO_PCI_CONFIG_REGION_INDEX).offset + offset) != len(data):
            raise OSError(errno.EIO, f"short config space write at {offset:#x}")

    def enable_bus_master(self) -> None:
        """Memory decoding and bus mastering in the command register: without the latter a PCI
        device's DMA does not leave it (QEMU's pci_dma_rw checks it)."""
        cmd = int.from_bytes(self.config_read(PCI_COMMAND, 2), "little")
        self.config_write(PCI_COMMAND, (cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER).to_bytes(2, "little"))

    def mmap_bar(self, index: int = 0):
        """mmap of BAR `index` at its region's offset (vfio_pci_core_mmap()), as a Bar; unmapped by
        close()."""
        r = self.region(index)
        if not r.flags & B.VFIO_REGION_INFO_FLAG_MMAP:
            raise OSError(errno.EINVAL, f"region {index} of {self.bdf} cannot be mmapped (flags {r.flags:#x})")
        m = self._mmap_region(r)
        self._maps.append(m)
        return m

    def _mmap_region(self, r):
        return MappedBar(libc.mmap(self.fd, r.size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, r.offset))

    def close(self) -> None:
        """Unmap the BARs and close: a mapping holds the device file open, and the cdev admits
        one open file at a time (vfio_df_open()), so the next open would find it busy."""
        for m in self._maps:
            m.munmap()
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ModelVfioDevice(VfioDevice):
    """A device of the machine the model plays (model/vfio: the device cdev and vfio-pci over the
    profile's devices), with the same calls; its BAR mapping is the model's MMIO object."""

    def __init__(self, bdf: str, profile: str):
        from model.vfio import open_device

        self.bdf = bdf
        self.path = Path(f"model:{profile}:{bdf}")
        self._profile = profile
        self._file = open_device(bdf, profile)
        self.fd = self._file.fileno()
        self._regions = {}
        self._maps = []

    def _ioctl(self, request: int, arg):
        return self._file.ioctl(request, arg)

    def reopen(self) -> "VfioDevice":
        return ModelVfioDevice(self.bdf, self._profile)

    def _info(self):
        from model.platform import machine

        return machine(self._profile).devices[self.bdf].info

    def pci_id(self) -> tuple[int, int]:
        return self._info().vendor, self._info().device

    def iommu_group(self) -> int | None:
        return self._info().iommu_group

    def reserved_regions(self) -> list[tuple[int, int, str]]:
        return list(self._info().reserved_regions)

    def unit_registers(self) -> list[dict[str, int]]:
        from model.platform import machine

        return [dict(machine(self._profile).profile.unit.registers)]

    def _pread(self, n: int, offset: int) -> bytes:
        return self._file.pread(n, offset)

    def _pwrite(self, data: bytes, offset: int) -> int:
        return self._file.pwrite(data, offset)

    def _mmap_region(self, r):
        return ModelBar(self._file.mmap_bar(r.index))

    def close(self) -> None:
        for m in self._maps:
            m.munmap()
        self._maps.clear()
        if self.fd >= 0:
            self._file.close()
            self.fd = -1


class ModelBar:
    """The model's BAR mapping (model.vfio) with MappedBar's calls."""

    def __init__(self, mmio):
        self.mmio = mmio

    def read32(self, reg: int) -> int:
        return self.mmio.read(reg, 4)

    def write32(self, reg: int, value: int) -> None:
        self.mmio.write(reg, 4, value)

    def munmap(self) -> None:
        self.mmio.munmap()


def open_device(bdf: str) -> VfioDevice:
    """The device `bdf`: the model's when it plays a profile here (PLAYED_PROFILE), else the
    machine's cdev."""
    return ModelVfioDevice(bdf, PLAYED_PROFILE) if PLAYED_PROFILE else VfioDevice(bdf)


class Edu:
    """QEMU's edu device through its BAR0 mapping (hw/misc/edu.c)."""

    VENDOR, DEVICE = EDU_VENDOR, EDU_DEVICE
    REG_ID, REG_ALIVE = 0x00, 0x04
    REG_DMA_SRC, REG_DMA_DST, REG_DMA_CNT, REG_DMA_CMD = 0x80, 0x88, 0x90, 0x98
    DMA_RUN, DMA_TO_PCI = 0x1, 0x2  # EDU_DMA_RUN; EDU_DMA_DIR: 1 writes the bus address
    BUF, BUF_SIZE = 0x40000, 4096
    # QEMU 7.2's edu_check_range() stops the whole machine (hw_error) for a transfer that ends
    # exactly at the end of the buffer (an off-by-one, later turned into a log line): stay short.
    MAX_XFER = BUF_SIZE - 8
    DMA_MASK = (1 << 28) - 1  # edu_instance_init()'s default dma_mask

    def __init__(self, dev: VfioDevice):
        self.dev = dev
        self.bar = dev.mmap_bar(0)
        dev.enable_bus_master()

    # BAR0 takes 4- and 8-byte accesses only
    def read32(self, reg: int) -> int:
        return self.bar.read32(reg)

    def write32(self, reg: int, value: int) -> None:
        self.bar.write32(reg, value)

    def alive(self) -> bool:
        """The identification register, and the liveness register's inversion."""
        self.write32(self.REG_ALIVE, 0x12345678)
        return self.read32(self.REG_ID) >> 16 == 0x0100 and self.read32(self.REG_ALIVE) == ~0x12345678 & 0xFFFFFFFF

    def _dma(self, src: int, dst: int, n: int, to_pci: bool, timeout: float) -> None:
        if not 0 < n <= self.MAX_XFER:
            raise ValueError(f"edu transfers 1..{self.MAX_XFER} bytes, not {n}")
        edu_transfer(self, src, dst, n, to_pci, timeout)

    def read_iova(self, iova: int, n: int, buf_off: int = 0, timeout: float = 10) -> None:
        """The device reads n bytes at `iova` into its buffer (EDU_DMA_FROM_PCI)."""
        self._dma(iova, self.BUF + buf_off, n, False, timeout)

    def write_iova(self, iova: int, n: int, buf_off: int = 0, timeout: float = 10) -> None:
        """The device writes n bytes of its buffer to `iova` (EDU_DMA_TO_PCI)."""
        self._dma(self.BUF + buf_off, iova, n, True, timeout)

    def close(self) -> None:
        self.bar.munmap()


def edu_transfer(regs, src: int, dst: int, n: int, to_pci: bool, timeout: float = 10) -> None:
    """One DMA of edu's engine through BAR0's registers (`regs`: read32/write32 of BAR0, a mapping
    or region reads and writes), waiting for the engine to finish; TimeoutError when it does not."""
    for reg, v in ((Edu.REG_DMA_SRC, src), (Edu.REG_DMA_DST, dst), (Edu.REG_DMA_CNT, n)):
        regs.write32(reg, v & 0xFFFFFFFF)
        regs.write32(reg + 4, v >> 32)
    regs.write32(Edu.REG_DMA_CMD, Edu.DMA_RUN | (Edu.DMA_TO_PCI if to_pci else 0))
    deadline = time.monotonic() + timeout
    while regs.read32(Edu.REG_DMA_CMD) & Edu.DMA_RUN:
        if time.monotonic() > deadline:
            raise TimeoutError(f"edu: a DMA {src:#x} -> {dst:#x} did not complete in {timeout} s")
        time.sleep(0.002)
