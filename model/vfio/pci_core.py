"""vfio-pci (drivers/vfio/pci/vfio_pci.c, vfio_pci_core.c, vfio_pci_rdwr.c, vfio_pci_intrs.c):
the vfio_device_ops of a PCI device, over the machine's PCI function (model/hw/pci.py).

- open/close: vfio_pci_core_enable() (:590) + finish_enable() on the first open,
  vfio_pci_core_disable() (:682) on the last close;
- VFIO_DEVICE_GET_INFO, GET_IRQ_INFO, RESET, SET_IRQS (vfio_pci_core_ioctl(), :1558),
  GET_REGION_INFO's driver part (vfio_pci_ioctl_get_region_info(), :1130), DEVICE_FEATURE's
  (vfio_pci_core_ioctl_feature(), :1613);
- read/write at VFIO_PCI_OFFSET_SHIFT offsets (vfio_pci_rw(), :1637): config space
  (pci_config.py), BARs through vfio_pci_bar_rw() (vfio_pci_rdwr.c:201) to the function's
  registers, 8/4/2/1-byte accesses as they align, EIO with memory decoding off;
- mmap of a BAR (vfio_pci_core_mmap(), :1817) and its fault (vfio_pci_mmap_huge_fault(),
  :1780: SIGBUS with memory decoding off);
- interrupts: INTx with DisINTx masking (pci_2_3) and MSI through eventfds (vfio_pci_intrs.c);
  the function's pin and messages reach the handlers here, which signal the user's eventfds.

The struct pci_dev vfio reads (`PciDev`) comes from the capture: resources from sysfs `resource`,
config cycles to the function, the IRQ taken as routed when the pin is set and the line register
holds one, no VF/SR-IOV, no shadow ROM, reset methods from the capabilities (PCIe or AF FLR, PM
without NoSoftRst; a bus reset is never assumed: the topology is not captured).

Not modelled (NotModelled): hot reset (GET_PCI_HOT_RESET_INFO, PCI_HOT_RESET), ioeventfds,
MSI-X vectors and dynamic MSI-X, the VGA region, ROM contents, INTx unmask through an eventfd
(virqfd), low-power and dma-buf features, power states other than D0.
"""
from __future__ import annotations

import ctypes
import errno
import os

from model import libc
from model.hw import function_of
from model.hw.pci import capabilities
from model.objects import IommufdError, NotModelled
from model.uaccess import copy_from_user, copy_to_user
from model.uapi import B
from model.vfio import pci_config as cfg
from model.vfio.iommufd import (vfio_iommufd_physical_attach_ioas, vfio_iommufd_physical_bind,
                                vfio_iommufd_physical_detach_ioas, vfio_iommufd_physical_pasid_attach_ioas,
                                vfio_iommufd_physical_pasid_detach_ioas, vfio_iommufd_physical_unbind)
from model.vfio.vfio import VfioDevice, info_cap_add, vfio_check_feature

# include/linux/vfio_pci_core.h:23-26
VFIO_PCI_OFFSET_SHIFT = 40
VFIO_PCI_OFFSET_MASK = (1 << VFIO_PCI_OFFSET_SHIFT) - 1


def VFIO_PCI_OFFSET_TO_INDEX(off: int) -> int:
    return off >> VFIO_PCI_OFFSET_SHIFT


def VFIO_PCI_INDEX_TO_OFFSET(index: int) -> int:
    return index << VFIO_PCI_OFFSET_SHIFT


INTX, MSI, MSIX, ERR, REQ = (B.VFIO_PCI_INTX_IRQ_INDEX, B.VFIO_PCI_MSI_IRQ_INDEX, B.VFIO_PCI_MSIX_IRQ_INDEX,
                             B.VFIO_PCI_ERR_IRQ_INDEX, B.VFIO_PCI_REQ_IRQ_INDEX)
NUM_IRQS, NUM_REGIONS = B.VFIO_PCI_NUM_IRQS, B.VFIO_PCI_NUM_REGIONS
CONFIG_INDEX, ROM_INDEX, VGA_INDEX = B.VFIO_PCI_CONFIG_REGION_INDEX, B.VFIO_PCI_ROM_REGION_INDEX, B.VFIO_PCI_VGA_REGION_INDEX
PAGE_SIZE = 4096
PCI_CLASS_DISPLAY_VGA = 0x0300
PCI_CAP_ID_PM, PCI_CAP_ID_MSI, PCI_CAP_ID_EXP, PCI_CAP_ID_MSIX, PCI_CAP_ID_AF = 0x01, 0x05, 0x10, 0x11, 0x13
VFIO_PCI_IO_WIDTH_4, VFIO_PCI_IO_WIDTH_8 = 4, 8


class SigBus(Exception):
    """A load or store through a BAR mapping that the kernel answers with SIGBUS (the fault
    handler's VM_FAULT_SIGBUS): memory decoding is off, or the device is not open any more."""


# -- struct pci_dev as vfio-pci reads it ------------------------------------------------------------

class PciDev:
    """The kernel's struct pci_dev of a captured function: resources, caps, the IRQ, config
    cycles (pci_read/write_config_*) to the function (model/hw/pci.py)."""

    def __init__(self, hw):
        self.hw = hw
        self.info = hw.info
        caps = dict((cap, pos) for pos, cap in reversed(capabilities(hw.config)))  # the first of each
        self.msi_cap = caps.get(PCI_CAP_ID_MSI, 0)
        self.msix_cap = caps.get(PCI_CAP_ID_MSIX, 0)
        self.pcie_cap = caps.get(PCI_CAP_ID_EXP, 0)
        self.pm_cap = caps.get(PCI_CAP_ID_PM, 0)
        self.af_cap = caps.get(PCI_CAP_ID_AF, 0)
        # pci_cfg_space_size() (drivers/pci/probe.c:1846): extended config for PCIe (or PCI-X
        # 266/533) where the capture holds it
        self.cfg_size = cfg.PCI_CFG_SPACE_EXP_SIZE if len(hw.config) >= cfg.PCI_CFG_SPACE_EXP_SIZE and \
            self.pcie_cap else cfg.PCI_CFG_SPACE_SIZE
        self.current_state = cfg.PCI_D0
        self.no_command_memory = False  # SR-IOV VFs only (drivers/pci/iov.c:330)
        self.is_virtfn = False
        self.class_code = int.from_bytes(hw.config[0x09:0x0C], "little")
        pin, line = hw.config[cfg.PCI_INTERRUPT_PIN], hw.config[cfg.PCI_INTERRUPT_LINE]
        self.irq = line if pin and line not in (0, 0xFF) else 0  # pcibios wrote the IRQ to the line
        self.broken_intx_masking = self._intx_mask_broken()
        self.enable_cnt = 0
        self.saved_state: bytes | None = None

    def read_config(self, off: int, size: int) -> int:
        return self.hw.config_read(off, size)

    def write_config(self, off: int, size: int, value: int) -> None:
        self.hw.config_write(off, size, value)

    def _intx_mask_broken(self) -> bool:
        """pci_intx_mask_broken() (drivers/pci/probe.c:1934): toggle DisINTx, see if it sticks."""
        orig = self.read_config(cfg.PCI_COMMAND, 2)
        toggle = orig ^ cfg.PCI_COMMAND_INTX_DISABLE
        self.write_config(cfg.PCI_COMMAND, 2, toggle)
        new = self.read_config(cfg.PCI_COMMAND, 2)
        self.write_config(cfg.PCI_COMMAND, 2, orig)
        return new != toggle

    def resource_start(self, i: int) -> int:
        return self.info.bar(i)[0] if self.info.bar(i)[1] else 0

    def resource_len(self, i: int) -> int:
        return self.info.bar(i)[1]

    def resource_flags(self, i: int) -> int:
        return self.info.bar(i)[2]

    def is_pcie(self) -> bool:
        return bool(self.pcie_cap)

    def mps(self) -> int:
        """pcie_get_mps(): 128 << DEVCTL's Max_Payload_Size."""
        return 128 << ((self.read_config(self.pcie_cap + cfg.PCI_EXP_DEVCTL, 2) & cfg.PCI_EXP_DEVCTL_PAYLOAD) >> 5)

    def set_readrq(self, rq: int) -> None:
        """pcie_set_readrq(): the power of two, at most 4096, into DEVCTL."""
        rq = min(4096, max(128, rq))
        v = (rq.bit_length() - 8) << 12
        ctl = self.read_config(self.pcie_cap + cfg.PCI_EXP_DEVCTL, 2)
        self.write_config(self.pcie_cap + cfg.PCI_EXP_DEVCTL, 2, (ctl & ~cfg.PCI_EXP_DEVCTL_READRQ) | v)

    def reset_methods(self) -> list[str]:
        """pci_reset_fn_methods as pci_init_reset_methods() finds them: PCIe FLR (DEVCAP FLR), AF
        FLR (AF cap with FLR and TP), PM (PM cap without NoSoftRst); no bus reset assumed."""
        out = []
        if self.pcie_cap and self.read_config(self.pcie_cap + cfg.PCI_EXP_DEVCAP, 4) & cfg.PCI_EXP_DEVCAP_FLR:
            out.append("flr")
        if self.af_cap:
            cap = self.read_config(self.af_cap + cfg.PCI_AF_CAP, 1)
            if cap & cfg.PCI_AF_CAP_FLR and cap & cfg.PCI_AF_CAP_TP:
                out.append("af_flr")
        if self.pm_cap and not self.read_config(self.pm_cap + cfg.PCI_PM_CTRL, 2) & cfg.PCI_PM_CTRL_NO_SOFT_RESET:
            out.append("pm")
        return out

    # the PCI core's calls vfio-pci makes
    def set_master(self, on: bool) -> None:
        cmd = self.read_config(cfg.PCI_COMMAND, 2)
        new = (cmd | 0x4) if on else (cmd & ~0x4)
        if new != cmd:
            self.write_config(cfg.PCI_COMMAND, 2, new)

    def intx(self, enable: bool) -> None:
        """pci_intx(): DisINTx cleared to enable."""
        cmd = self.read_config(cfg.PCI_COMMAND, 2)
        new = (cmd & ~cfg.PCI_COMMAND_INTX_DISABLE) if enable else (cmd | cfg.PCI_COMMAND_INTX_DISABLE)
        if new != cmd:
            self.write_config(cfg.PCI_COMMAND, 2, new)

    def check_and_set_intx_mask(self, mask: bool) -> bool:
        """pci_check_and_set_intx_mask() (drivers/pci/pci.c): mask only with an interrupt pending,
        unmask only without one."""
        status = self.read_config(cfg.PCI_STATUS, 2)
        pending = bool(status & 0x08)
        if mask != pending:
            return False
        self.intx(not mask)
        return True

    def enable_device(self) -> None:
        """pci_enable_device() -> pci_enable_resources(): decoding for each assigned BAR's space."""
        self.enable_cnt += 1
        cmd = old = self.read_config(cfg.PCI_COMMAND, 2)
        for i in range(6):
            if not self.resource_start(i):
                continue
            flags = self.resource_flags(i)
            if flags & cfg.IORESOURCE_IO:
                cmd |= cfg.PCI_COMMAND_IO
            if flags & cfg.IORESOURCE_MEM:
                cmd |= cfg.PCI_COMMAND_MEMORY
        if cmd != old:
            self.write_config(cfg.PCI_COMMAND, 2, cmd)

    def disable_device(self) -> None:
        """pci_disable_device(): bus mastering off."""
        self.enable_cnt = max(0, self.enable_cnt - 1)
        self.set_master(False)

    def save_state(self) -> None:
        """pci_save_state(): the header (and capabilities, which the model keeps in place)."""
        self.saved_state = bytes(self.hw.config[:cfg.PCI_STD_HEADER_SIZEOF])

    def restore_state(self) -> None:
        """pci_restore_state() -> pci_restore_config_space(): the header's dwords written back
        from the last (15) to the first where they differ."""
        if self.saved_state is None:
            return
        for off in range(cfg.PCI_STD_HEADER_SIZEOF - 4, -1, -4):
            val = int.from_bytes(self.saved_state[off:off + 4], "little")
            if self.read_config(off, 4) != val:
                self.write_config(off, 4, val)


# -- eventfds ---------------------------------------------------------------------------------------

_SYS_PIDFD_GETFD = 438  # x86_64


class EventfdCtx:
    """struct eventfd_ctx: a reference to the user's eventfd (a descriptor of our own)."""

    def __init__(self, fd: int):
        self.fd = fd

    def signal(self) -> None:
        """eventfd_signal(): add 1."""
        os.eventfd_write(self.fd, 1)

    def put(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def eventfd_ctx_fdget(task, fd: int) -> EventfdCtx:
    """eventfd_ctx_fdget() (fs/eventfd.c): fget() (EBADF), EINVAL for a file that is not an
    eventfd; the reference is a descriptor of this process (dup(), or pidfd_getfd() from the
    caller's table)."""
    pid = task.pid
    if fd < 0:
        raise IommufdError(errno.EBADF)
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            info = f.read()
    except OSError:
        raise IommufdError(errno.EBADF) from None
    if "eventfd-count:" not in info:
        raise IommufdError(errno.EINVAL)
    if pid == os.getpid():
        return EventfdCtx(os.dup(fd))
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            raise IommufdError(errno.EBADF)
        return EventfdCtx(got)
    finally:
        os.close(pidfd)


# -- the device -------------------------------------------------------------------------------------

class VfioPciCoreDevice(VfioDevice):
    """struct vfio_pci_core_device with vfio_pci_ops (vfio_pci.c:149): the iommufd ops are the
    physical ones (model/vfio/iommufd.py)."""

    name = "vfio-pci"
    bind_iommufd = staticmethod(vfio_iommufd_physical_bind)
    unbind_iommufd = staticmethod(vfio_iommufd_physical_unbind)
    attach_ioas = staticmethod(vfio_iommufd_physical_attach_ioas)
    detach_ioas = staticmethod(vfio_iommufd_physical_detach_ioas)
    pasid_attach_ioas = staticmethod(vfio_iommufd_physical_pasid_attach_ioas)
    pasid_detach_ioas = staticmethod(vfio_iommufd_physical_pasid_detach_ioas)

    def __init__(self, platform, dev):
        super().__init__(platform, dev)
        self.hw = function_of(platform, dev)
        self.pdev = PciDev(self.hw)
        # vfio_pci_core_init_dev() (:2182)
        self.irq_type = NUM_IRQS
        self.ctx: dict[int, dict] = {}  # vector -> {"trigger": EventfdCtx, "masked": bool}
        self.err_trigger: EventfdCtx | None = None
        self.req_trigger: EventfdCtx | None = None
        self.num_regions = 0
        self.nointxmask = False  # vfio_pci's module parameters, at their defaults
        self.disable_vga = False
        self.vconfig = bytearray()
        self.pci_config_map = bytearray()
        self.msi_perm = None
        self.msi_qmax = 0
        self.bardirty = True
        self.rbar = [0] * 7
        self.extended_caps = False
        self.reset_works = False
        self.nointx = False
        self.pci_2_3 = False
        self.virq_disabled = False
        self.has_vga = False
        self.msix_bar = 0xFF
        self.msix_offset = self.msix_size = 0
        self.bar_mmap_supported = [False] * 6
        self.needs_reset = False
        self.log: list[str] = []  # what vfio-pci would print (pci_warn / pci_dbg), for inspection

    # -- open and close ----------------------------------------------------------------------------

    def open_device(self) -> None:
        """vfio_pci_open_device() (vfio_pci.c:103): vfio_pci_core_enable() (:590) then
        vfio_pci_core_finish_enable() (:842)."""
        pdev = self.pdev
        pdev.set_master(False)  # "Don't allow our initial saved state to include busmaster"
        pdev.enable_device()
        methods = pdev.reset_methods()
        self.reset_works = bool(methods)  # pci_try_reset_function(): 0 when a method works
        if methods:
            self.hw_reset()
        pdev.save_state()
        if not self.nointxmask:
            if self.vfio_pci_nointx():
                self.log.append("Masking broken INTx support")
                self.nointx = True
                pdev.intx(False)
            else:
                self.pci_2_3 = not pdev.broken_intx_masking
        cmd = pdev.read_config(cfg.PCI_COMMAND, 2)
        if self.pci_2_3 and cmd & cfg.PCI_COMMAND_INTX_DISABLE:
            pdev.write_config(cfg.PCI_COMMAND, 2, cmd & ~cfg.PCI_COMMAND_INTX_DISABLE)
        cfg.vfio_config_init(self)
        if pdev.msix_cap:
            flags = pdev.read_config(pdev.msix_cap + cfg.PCI_MSIX_FLAGS, 2)
            table = pdev.read_config(pdev.msix_cap + cfg.PCI_MSIX_TABLE, 4)
            self.msix_bar = table & cfg.PCI_MSIX_TABLE_BIR
            self.msix_offset = table & cfg.PCI_MSIX_TABLE_OFFSET
            self.msix_size = ((flags & cfg.PCI_MSIX_FLAGS_QSIZE) + 1) * 16
        else:
            self.msix_bar = 0xFF
        self.has_vga = not self.disable_vga and pdev.class_code >> 8 == PCI_CLASS_DISPLAY_VGA
        self.vfio_pci_probe_mmaps()
        # the function's interrupts reach vfio-pci's handlers from now on
        self.hw.intx_sink = self._intx_line
        self.hw.msi_sink = self._msi_message

    def vfio_pci_nointx(self) -> bool:
        """vfio_pci_nointx() (:278): Intel NICs whose INTx is known broken."""
        if self.pdev.info.vendor != 0x8086:
            return False
        d = self.pdev.info.device
        return d in (0x1572, 0x1574, 0x1563) or 0x1580 <= d <= 0x1581 or 0x1583 <= d <= 0x158B or \
            0x37D0 <= d <= 0x37D2

    def vfio_pci_probe_mmaps(self) -> None:
        """vfio_pci_probe_mmaps() (:195): a memory BAR of at least a page maps; a smaller one
        that starts a page maps too (the rest of the page reserved)."""
        for i in range(6):
            flags, size, start = self.pdev.resource_flags(i), self.pdev.resource_len(i), self.pdev.resource_start(i)
            ok = bool(flags & cfg.IORESOURCE_MEM) and size > 0 and (size >= PAGE_SIZE or not start % PAGE_SIZE)
            self.bar_mmap_supported[i] = ok

    def close_device(self) -> None:
        """vfio_pci_core_close_device() (:817) -> vfio_pci_core_disable() (:682): bus mastering
        off, interrupts torn down, vconfig freed, the saved state restored after DisINTx (and a
        reset where one works), the device disabled."""
        pdev = self.pdev
        pdev.set_master(False)
        self.set_irqs(B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_TRIGGER, self.irq_type, 0, 0, None, None)
        self.virq_disabled = False
        self.vconfig = bytearray()
        self.pci_config_map = bytearray()
        self.msi_perm = None
        self.needs_reset = True
        pdev.write_config(cfg.PCI_COMMAND, 2, cfg.PCI_COMMAND_INTX_DISABLE)
        if self.reset_works:
            self.hw_reset()
            self.needs_reset = False
        pdev.restore_state()
        pdev.disable_device()
        self.hw.intx_sink = self.hw.msi_sink = None
        for t in (self.err_trigger, self.req_trigger):
            if t is not None:
                t.put()
        self.err_trigger = self.req_trigger = None

    def hw_reset(self) -> None:
        """A function reset: the device's own state (a function without one keeps it; QEMU's edu
        has no reset handler), config space saved and restored around it by the PCI core."""
        reset = getattr(self.hw, "function_reset", None)
        if reset is not None:
            reset()

    def reset_function(self) -> None:
        """pci_try_reset_function() from a config-space FLR (vfio_exp/af_config_write())."""
        self.hw_reset()

    # -- ioctls -----------------------------------------------------------------------------------

    def ioctl(self, task, cmd: int, arg: int) -> int:
        """vfio_pci_core_ioctl() (:1558): ENOTTY for what it does not know."""
        mem = task.mm
        if cmd == B.VFIO_DEVICE_GET_INFO:
            return self.ioctl_get_info(mem, arg)
        if cmd == B.VFIO_DEVICE_GET_IRQ_INFO:
            return self.ioctl_get_irq_info(mem, arg)
        if cmd == B.VFIO_DEVICE_RESET:
            if not self.reset_works:  # vfio_pci_ioctl_reset() (:1318)
                raise IommufdError(errno.EINVAL)
            self.hw_reset()
            return 0
        if cmd == B.VFIO_DEVICE_SET_IRQS:
            return self.ioctl_set_irqs(task, arg)
        if cmd == B.VFIO_DEVICE_IOEVENTFD:
            return self.ioctl_ioeventfd(mem, arg)
        if cmd in (B.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, B.VFIO_DEVICE_PCI_HOT_RESET):
            raise NotModelled("VFIO PCI hot reset (the bus and slot topology is not captured)")
        raise IommufdError(errno.ENOTTY)

    def ioctl_get_info(self, mem, arg: int) -> int:
        """vfio_pci_ioctl_get_info() (:1073): no capabilities here (no zPCI; AtomicOps completion
        needs the root port's support, which the capture does not hold)."""
        info = B.vfio_device_info()
        minsz = B.vfio_device_info.num_irqs.offset + 4
        ctypes.memmove(ctypes.addressof(info), copy_from_user(mem, arg, minsz), minsz)
        if info.argsz < minsz:
            raise IommufdError(errno.EINVAL)
        minsz = min(info.argsz, ctypes.sizeof(info))
        info.flags = B.VFIO_DEVICE_FLAGS_PCI | (B.VFIO_DEVICE_FLAGS_RESET if self.reset_works else 0)
        info.num_regions = NUM_REGIONS + self.num_regions
        info.num_irqs = NUM_IRQS
        copy_to_user(mem, arg, bytes(info)[:minsz])
        return 0

    def get_region_info_caps(self, info, caps: list) -> None:
        """vfio_pci_ioctl_get_region_info() (:1130): `info` (a vfio_region_info) filled, the
        capabilities appended to `caps` (vfio_info_cap_add())."""
        pdev, index = self.pdev, info.index
        if index == CONFIG_INDEX:
            info.offset = VFIO_PCI_INDEX_TO_OFFSET(index)
            info.size = pdev.cfg_size
            info.flags = B.VFIO_REGION_INFO_FLAG_READ | B.VFIO_REGION_INFO_FLAG_WRITE
        elif 0 <= index <= 5:
            info.offset = VFIO_PCI_INDEX_TO_OFFSET(index)
            info.size = pdev.resource_len(index)
            if not info.size:
                info.flags = 0
                return
            info.flags = B.VFIO_REGION_INFO_FLAG_READ | B.VFIO_REGION_INFO_FLAG_WRITE
            if self.bar_mmap_supported[index]:
                info.flags |= B.VFIO_REGION_INFO_FLAG_MMAP
                if index == self.msix_bar:  # msix_mmappable_cap() (:1004)
                    info_cap_add(caps, 8, B.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1)
        elif index == ROM_INDEX:
            info.offset = VFIO_PCI_INDEX_TO_OFFSET(index)
            info.flags = 0
            info.size = 0
            if pdev.resource_start(ROM_INDEX):
                raise NotModelled("a ROM BAR (pci_map_rom() reads its contents, which the capture does not hold)")
        elif index == VGA_INDEX:
            if not self.has_vga:
                raise IommufdError(errno.EINVAL)
            info.offset = VFIO_PCI_INDEX_TO_OFFSET(index)
            info.size = 0xC0000
            info.flags = B.VFIO_REGION_INFO_FLAG_READ | B.VFIO_REGION_INFO_FLAG_WRITE
        else:
            if index >= NUM_REGIONS + self.num_regions:
                raise IommufdError(errno.EINVAL)
            raise NotModelled("device-specific regions (vfio_pci_core_register_dev_region())")

    def vfio_pci_get_irq_count(self, irq_type: int) -> int:
        """vfio_pci_get_irq_count() (:857)."""
        pdev = self.pdev
        if irq_type == INTX:
            return 1 if self.vconfig[cfg.PCI_INTERRUPT_PIN] else 0
        if irq_type == MSI:
            if pdev.msi_cap:
                flags = pdev.read_config(pdev.msi_cap + cfg.PCI_MSI_FLAGS, 2)
                return 1 << ((flags & cfg.PCI_MSI_FLAGS_QMASK) >> 1)
            return 0
        if irq_type == MSIX:
            if pdev.msix_cap:
                return (pdev.read_config(pdev.msix_cap + cfg.PCI_MSIX_FLAGS, 2) & cfg.PCI_MSIX_FLAGS_QSIZE) + 1
            return 0
        if irq_type == ERR:
            return 1 if pdev.is_pcie() else 0
        if irq_type == REQ:
            return 1
        return 0

    def ioctl_get_irq_info(self, mem, arg: int) -> int:
        """vfio_pci_ioctl_get_irq_info() (:1245)."""
        info = B.vfio_irq_info.from_buffer_copy(copy_from_user(mem, arg, ctypes.sizeof(B.vfio_irq_info)))
        minsz = ctypes.sizeof(B.vfio_irq_info)
        if info.argsz < minsz or info.index >= NUM_IRQS:
            raise IommufdError(errno.EINVAL)
        if info.index == ERR and not self.pdev.is_pcie():
            raise IommufdError(errno.EINVAL)
        info.flags = B.VFIO_IRQ_INFO_EVENTFD
        info.count = self.vfio_pci_get_irq_count(info.index)
        if info.index == INTX:
            info.flags |= B.VFIO_IRQ_INFO_MASKABLE | B.VFIO_IRQ_INFO_AUTOMASKED
        else:  # index != MSIX || !has_dyn_msix: no dynamic MSI-X here
            info.flags |= B.VFIO_IRQ_INFO_NORESIZE
        copy_to_user(mem, arg, bytes(info))
        return 0

    def ioctl_set_irqs(self, task, arg: int) -> int:
        """vfio_pci_ioctl_set_irqs() (:1282) -> vfio_set_irqs_validate_and_prepare()
        (vfio_main.c:1635), then vfio_pci_set_irqs_ioctl() (vfio_pci_intrs.c:825)."""
        mem = task.mm
        minsz = ctypes.sizeof(B.vfio_irq_set)
        hdr = B.vfio_irq_set.from_buffer_copy(copy_from_user(mem, arg, minsz))
        max_ = self.vfio_pci_get_irq_count(hdr.index)
        dtype = hdr.flags & B.VFIO_IRQ_SET_DATA_TYPE_MASK
        if hdr.argsz < minsz or hdr.index >= NUM_IRQS or hdr.count >= 0xFFFFFFFF - hdr.start or \
                hdr.flags & ~(B.VFIO_IRQ_SET_DATA_TYPE_MASK | B.VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise IommufdError(errno.EINVAL)
        if hdr.start >= max_ or hdr.start + hdr.count > max_:
            raise IommufdError(errno.EINVAL)
        size = {B.VFIO_IRQ_SET_DATA_NONE: 0, B.VFIO_IRQ_SET_DATA_BOOL: 1, B.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(dtype)
        if size is None:
            raise IommufdError(errno.EINVAL)
        data = None
        if size:
            if hdr.argsz - minsz < hdr.count * size:
                raise IommufdError(errno.EINVAL)
            data = copy_from_user(mem, arg + minsz, hdr.count * size)  # memdup_user()
        rc = self.set_irqs(hdr.flags, hdr.index, hdr.start, hdr.count, data, task)
        if rc:
            raise IommufdError(-rc)
        return 0

    def ioctl_ioeventfd(self, mem, arg: int) -> int:
        """vfio_pci_ioctl_ioeventfd() (:1533): its checks; the ioeventfd itself is not modelled."""
        minsz = 28  # offsetofend(struct vfio_device_ioeventfd, fd)
        data = copy_from_user(mem, arg, minsz)
        argsz, flags = int.from_bytes(data[0:4], "little"), int.from_bytes(data[4:8], "little")
        fd = int.from_bytes(data[24:28], "little", signed=True)
        if argsz < minsz or flags & ~B.VFIO_DEVICE_IOEVENTFD_SIZE_MASK:
            raise IommufdError(errno.EINVAL)
        count = flags & B.VFIO_DEVICE_IOEVENTFD_SIZE_MASK
        if bin(count).count("1") != 1 or fd < -1:
            raise IommufdError(errno.EINVAL)
        raise NotModelled("VFIO_DEVICE_IOEVENTFD (vfio_pci_ioeventfd())")

    def device_feature(self, flags: int, arg: int, argsz: int) -> int:
        """vfio_pci_core_ioctl_feature() (:1613): no VF token here (not an SR-IOV PF: ENOTTY)."""
        feature = flags & B.VFIO_DEVICE_FEATURE_MASK
        low_power = {B.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: 0,  # vfio_pci_core_pm_entry() (:394)
                     B.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: 8,  # its struct (:412)
                     B.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: 0}  # vfio_pci_core_pm_exit() (:469)
        if feature in low_power:
            ret = vfio_check_feature(flags, argsz, B.VFIO_DEVICE_FEATURE_SET, low_power[feature])
            if ret != 1:
                if ret:
                    raise IommufdError(-ret)
                return 0
            raise NotModelled("runtime power management (VFIO_DEVICE_FEATURE_LOW_POWER_*)")
        if feature == B.VFIO_DEVICE_FEATURE_DMA_BUF:
            raise NotModelled("VFIO_DEVICE_FEATURE_DMA_BUF (vfio_pci_core_feature_dma_buf())")
        raise IommufdError(errno.ENOTTY)

    # -- interrupts ---------------------------------------------------------------------------------

    def is_intx(self) -> bool:
        return self.irq_type == INTX

    def set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes | None, task) -> int:
        """vfio_pci_set_irqs_ioctl() (vfio_pci_intrs.c:825): the function for index and action,
        -ENOTTY where there is none. Returns 0 or -errno."""
        action = flags & B.VFIO_IRQ_SET_ACTION_TYPE_MASK
        func = None
        if index == INTX:
            func = {B.VFIO_IRQ_SET_ACTION_MASK: self._set_intx_mask, B.VFIO_IRQ_SET_ACTION_UNMASK: self._set_intx_unmask,
                    B.VFIO_IRQ_SET_ACTION_TRIGGER: self._set_intx_trigger}.get(action)
        elif index in (MSI, MSIX):
            if action == B.VFIO_IRQ_SET_ACTION_TRIGGER:
                func = self._set_msi_trigger
        elif index == ERR:
            if action == B.VFIO_IRQ_SET_ACTION_TRIGGER and self.pdev.is_pcie():
                func = self._set_err_trigger
        elif index == REQ:
            if action == B.VFIO_IRQ_SET_ACTION_TRIGGER:
                func = self._set_req_trigger
        if func is None:
            return -errno.ENOTTY
        try:
            return func(index, start, count, flags, data, task)
        except IommufdError as e:
            return -e.errno

    def _fds(self, data: bytes, count: int) -> list[int]:
        return [int.from_bytes(data[4 * i:4 * i + 4], "little", signed=True) for i in range(count)]

    def _set_intx_unmask(self, index, start, count, flags, data, task) -> int:
        """vfio_pci_set_intx_unmask() (vfio_pci_intrs.c:583)."""
        if not self.is_intx() or start != 0 or count != 1:
            return -errno.EINVAL
        if flags & B.VFIO_IRQ_SET_DATA_NONE:
            self.intx_unmask()
        elif flags & B.VFIO_IRQ_SET_DATA_BOOL:
            if data[0]:
                self.intx_unmask()
        elif flags & B.VFIO_IRQ_SET_DATA_EVENTFD:
            if self._fds(data, 1)[0] >= 0:
                raise NotModelled("INTx unmask through an eventfd (vfio_virqfd_enable())")
        return 0

    def _set_intx_mask(self, index, start, count, flags, data, task) -> int:
        """vfio_pci_set_intx_mask() (vfio_pci_intrs.c:614)."""
        if not self.is_intx() or start != 0 or count != 1:
            return -errno.EINVAL
        if flags & B.VFIO_IRQ_SET_DATA_NONE:
            self.intx_mask()
        elif flags & B.VFIO_IRQ_SET_DATA_BOOL:
            if data[0]:
                self.intx_mask()
        elif flags & B.VFIO_IRQ_SET_DATA_EVENTFD:
            return -errno.ENOTTY
        return 0

    def _set_intx_trigger(self, index, start, count, flags, data, task) -> int:
        """vfio_pci_set_intx_trigger() (vfio_pci_intrs.c:634)."""
        if self.is_intx() and not count and flags & B.VFIO_IRQ_SET_DATA_NONE:
            self._intx_disable()
            return 0
        if not (self.is_intx() or self.irq_type == NUM_IRQS) or start != 0 or count != 1:
            return -errno.EINVAL
        if flags & B.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = self._fds(data, 1)[0]
            trigger = eventfd_ctx_fdget(task, fd) if fd >= 0 else None
            if self.is_intx():
                old = self.ctx[0]["trigger"]
                self.ctx[0]["trigger"] = trigger
                if old is not None:
                    old.put()
                return 0
            rc = self._intx_enable(trigger)
            if rc and trigger is not None:
                trigger.put()
            return rc
        if not self.is_intx():
            return -errno.EINVAL
        if flags & B.VFIO_IRQ_SET_DATA_NONE or (flags & B.VFIO_IRQ_SET_DATA_BOOL and data[0]):
            self._send_intx_eventfd()
        return 0

    def _intx_enable(self, trigger) -> int:
        """vfio_intx_enable() (vfio_pci_intrs.c:250): ENODEV without an IRQ; the initial mask from virq_disabled,
        DisINTx following it."""
        if self.irq_type != NUM_IRQS:
            return -errno.EINVAL
        if not self.pdev.irq:
            return -errno.ENODEV
        self.ctx[0] = {"trigger": trigger, "masked": self.virq_disabled}
        if self.pci_2_3:
            self.pdev.intx(not self.ctx[0]["masked"])
        self.irq_type = INTX
        return 0

    def _intx_disable(self) -> None:
        """vfio_intx_disable() (vfio_pci_intrs.c:349)."""
        ctx = self.ctx.pop(0, None)
        if ctx is not None and ctx["trigger"] is not None:
            ctx["trigger"].put()
        self.irq_type = NUM_IRQS

    def _send_intx_eventfd(self) -> None:
        """vfio_send_intx_eventfd() (vfio_pci_intrs.c:88)."""
        if self.is_intx() and not self.virq_disabled:
            trigger = self.ctx[0]["trigger"]
            if trigger is not None:
                trigger.signal()

    def _intx_line(self, level: int) -> None:
        """vfio_intx_handler() (vfio_pci_intrs.c:223), for the function's line going high: with DisINTx masking,
        mask it if it is ours and pending, and signal."""
        if not level or not self.is_intx():
            return
        ctx = self.ctx[0]
        handled = False
        if not self.pci_2_3:
            ctx["masked"] = handled = True
        elif not ctx["masked"] and self.pdev.check_and_set_intx_mask(True):
            ctx["masked"] = handled = True
        if handled:
            self._send_intx_eventfd()

    def intx_mask(self) -> None:
        """vfio_pci_intx_mask() / __vfio_pci_intx_mask() (vfio_pci_intrs.c:102)."""
        if not self.is_intx():
            if self.pci_2_3:
                self.pdev.intx(False)
            return
        ctx = self.ctx[0]
        if not ctx["masked"]:
            if self.pci_2_3:
                self.pdev.intx(False)
            ctx["masked"] = True

    def intx_unmask(self) -> None:
        """vfio_pci_intx_unmask() -> vfio_pci_intx_unmask_handler() (vfio_pci_intrs.c:165): a still pending
        interrupt stays masked and is signalled again."""
        if not self.is_intx():
            if self.pci_2_3:
                self.pdev.intx(True)
            return
        ctx = self.ctx[0]
        ret = 0
        if ctx["masked"] and not self.virq_disabled:
            if self.pci_2_3:
                if not self.pdev.check_and_set_intx_mask(False):
                    ret = 1
            ctx["masked"] = ret > 0
        if ret > 0:
            self._send_intx_eventfd()

    def _set_msi_trigger(self, index, start, count, flags, data, task) -> int:
        """vfio_pci_set_msi_trigger() (vfio_pci_intrs.c:681)."""
        msix = index == MSIX
        if self.irq_type == index and not count and flags & B.VFIO_IRQ_SET_DATA_NONE:
            self._msi_disable(msix)
            return 0
        if not (self.irq_type == index or self.irq_type == NUM_IRQS):
            return -errno.EINVAL
        if flags & B.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = self._fds(data, count)
            if self.irq_type == index:
                return self._msi_set_block(start, count, fds, task)
            rc = self._msi_enable(start + count, msix)
            if rc:
                return rc
            rc = self._msi_set_block(start, count, fds, task)
            if rc:
                self._msi_disable(msix)
            return rc
        if self.irq_type != index:
            return -errno.EINVAL
        for i in range(start, start + count):
            ctx = self.ctx.get(i)
            if ctx is None:
                continue
            if flags & B.VFIO_IRQ_SET_DATA_NONE or (flags & B.VFIO_IRQ_SET_DATA_BOOL and data[i - start]):
                ctx["trigger"].signal()
        return 0

    def _msi_enable(self, nvec: int, msix: bool) -> int:
        """vfio_msi_enable() (vfio_pci_intrs.c:381): pci_alloc_irq_vectors() enables MSI in the function (its
        message and Enable bit; DisINTx set, pci_intx_for_msi()); msi_qmax for the flags."""
        if self.irq_type != NUM_IRQS:
            return -errno.EINVAL
        if msix:
            raise NotModelled("MSI-X vectors")
        pdev = self.pdev
        pos = pdev.msi_cap
        flags = pdev.read_config(pos + cfg.PCI_MSI_FLAGS, 2)
        qsize = (nvec - 1).bit_length()
        # the host's message: the x86 interrupt window (0xfee00000), a vector number of its own
        pdev.write_config(pos + cfg.PCI_MSI_ADDRESS_LO, 4, 0xFEE00000)
        data_off = cfg.PCI_MSI_DATA_64 if flags & cfg.PCI_MSI_FLAGS_64BIT else cfg.PCI_MSI_DATA_32
        if flags & cfg.PCI_MSI_FLAGS_64BIT:
            pdev.write_config(pos + cfg.PCI_MSI_ADDRESS_HI, 4, 0)
        pdev.write_config(pos + data_off, 2, 0x4020)
        pdev.intx(False)
        pdev.write_config(pos + cfg.PCI_MSI_FLAGS, 2, (flags & ~cfg.PCI_MSI_FLAGS_QSIZE) | (qsize << 4)
                          | cfg.PCI_MSI_FLAGS_ENABLE)
        self.irq_type = MSI
        self.msi_qmax = (nvec * 2 - 1).bit_length() - 1
        return 0

    def _msi_set_block(self, start: int, count: int, fds: list[int], task) -> int:
        """vfio_msi_set_block() (vfio_pci_intrs.c:534): each vector's eventfd; a failure undoes the block."""
        ret, j = 0, start
        for i in range(count):
            ret = self._msi_set_vector_signal(j, fds[i], task)
            j += 1
            if ret:
                break
        if ret:
            for i in range(start, j):
                self._msi_set_vector_signal(i, -1, task)
        return ret

    def _msi_set_vector_signal(self, vector: int, fd: int, task) -> int:
        """vfio_msi_set_vector_signal() (vfio_pci_intrs.c:447)."""
        ctx = self.ctx.pop(vector, None)
        if ctx is not None:
            ctx["trigger"].put()
        if fd < 0:
            return 0
        try:
            trigger = eventfd_ctx_fdget(task, fd)
        except IommufdError as e:
            return -e.errno
        self.ctx[vector] = {"trigger": trigger, "masked": False}
        return 0

    def _msi_disable(self, msix: bool) -> None:
        """vfio_msi_disable() (vfio_pci_intrs.c:553): the vectors go, MSI is disabled in the function (DisINTx
        cleared again, pci_intx_for_msi()), no interrupt type."""
        for v in list(self.ctx):
            self._msi_set_vector_signal(v, -1, None)
        pdev = self.pdev
        if pdev.msi_cap:
            flags = pdev.read_config(pdev.msi_cap + cfg.PCI_MSI_FLAGS, 2)
            pdev.write_config(pdev.msi_cap + cfg.PCI_MSI_FLAGS, 2, flags & ~cfg.PCI_MSI_FLAGS_ENABLE)
        pdev.intx(True)
        if self.nointx:
            pdev.intx(False)
        self.irq_type = NUM_IRQS

    def _msi_message(self, vector: int) -> None:
        """vfio_msihandler() (vfio_pci_intrs.c:373): the vector's eventfd."""
        if self.irq_type == MSI:
            ctx = self.ctx.get(vector)
            if ctx is not None:
                ctx["trigger"].signal()

    def _set_ctx_trigger_single(self, attr: str, count: int, flags: int, data, task) -> int:
        """vfio_pci_set_ctx_trigger_single() (vfio_pci_intrs.c:734)."""
        cur = getattr(self, attr)
        if flags & B.VFIO_IRQ_SET_DATA_NONE:
            if cur is None:
                return -errno.EINVAL
            if count:
                cur.signal()
                return 0
            cur.put()
            setattr(self, attr, None)
            return 0
        if flags & B.VFIO_IRQ_SET_DATA_BOOL:
            if not count:
                return -errno.EINVAL
            if data[0] and cur is not None:
                cur.signal()
            return 0
        if flags & B.VFIO_IRQ_SET_DATA_EVENTFD:
            if not count:
                return -errno.EINVAL
            fd = self._fds(data, 1)[0]
            if fd == -1:
                if cur is not None:
                    cur.put()
                setattr(self, attr, None)
                return 0
            if fd >= 0:
                new = eventfd_ctx_fdget(task, fd)
                if cur is not None:
                    cur.put()
                setattr(self, attr, new)
                return 0
        return -errno.EINVAL

    def _set_err_trigger(self, index, start, count, flags, data, task) -> int:
        if index != ERR or start != 0 or count > 1:
            return -errno.EINVAL
        return self._set_ctx_trigger_single("err_trigger", count, flags, data, task)

    def _set_req_trigger(self, index, start, count, flags, data, task) -> int:
        if index != REQ or start != 0 or count > 1:
            return -errno.EINVAL
        return self._set_ctx_trigger_single("req_trigger", count, flags, data, task)

    # -- regions ---------------------------------------------------------------------------------

    def memory_enabled(self) -> bool:
        return cfg.vfio_pci_memory_enabled(self)

    def rw(self, mem, buf: int, count: int, ppos: int, iswrite: bool) -> int:
        """vfio_pci_core_read() / vfio_pci_core_write() -> vfio_pci_rw() (:1637): the bytes done;
        IommufdError with the errno."""
        if not count:
            return 0
        index = VFIO_PCI_OFFSET_TO_INDEX(ppos)
        if index >= NUM_REGIONS + self.num_regions:
            raise IommufdError(errno.EINVAL)
        if index == CONFIG_INDEX:
            return cfg.vfio_pci_config_rw(self, mem, buf, count, ppos, iswrite)
        if index == ROM_INDEX:
            if iswrite:
                raise IommufdError(errno.EINVAL)
            return self.bar_rw(mem, buf, count, ppos, False)
        if index <= 5:
            return self.bar_rw(mem, buf, count, ppos, iswrite)
        if index == VGA_INDEX:
            if not self.has_vga:  # vfio_pci_vga_rw()
                raise IommufdError(errno.EINVAL)
            raise NotModelled("legacy VGA ranges (vfio_pci_vga_rw())")
        raise NotModelled("device-specific regions")

    def bar_rw(self, mem, buf: int, count: int, ppos: int, iswrite: bool) -> int:
        """vfio_pci_bar_rw() (vfio_pci_rdwr.c:201) -> vfio_pci_core_do_io_rw() (:135): EINVAL
        for an unassigned BAR or a position past it, the MSI-X table excluded (reads all ones,
        writes dropped), EIO for a memory BAR while memory decoding is off."""
        pdev = self.pdev
        pos = ppos & VFIO_PCI_OFFSET_MASK
        bar = VFIO_PCI_OFFSET_TO_INDEX(ppos)
        if not pdev.resource_start(bar):
            raise IommufdError(errno.EINVAL)
        end = pdev.resource_len(bar)
        if pos >= end:
            raise IommufdError(errno.EINVAL)
        count = min(count, end - pos)
        if bar == ROM_INDEX:
            raise NotModelled("ROM contents (pci_map_rom())")
        x_start = x_end = 0
        if bar == self.msix_bar:
            x_start, x_end = self.msix_offset, self.msix_offset + self.msix_size
        test_mem = bool(pdev.resource_flags(bar) & cfg.IORESOURCE_MEM)
        done, off = 0, pos
        while count:
            if off < x_start:
                fillable = min(count, x_start - off)
            elif off >= x_end:
                fillable = count
            else:
                fillable = 0
            size = 8 if fillable >= 8 and not off % 8 else 4 if fillable >= 4 and not off % 4 else \
                2 if fillable >= 2 and not off % 2 else 1 if fillable else 0
            if size:
                if test_mem and not self.memory_enabled():
                    raise IommufdError(errno.EIO)
                if iswrite:
                    val = int.from_bytes(copy_from_user(mem, buf + done, size), "little")
                    self.hw.mmio_write(bar, off, size, val)
                else:
                    val = self.hw.mmio_read(bar, off, size)
                    copy_to_user(mem, buf + done, val.to_bytes(size, "little"))
                filled = size
            else:
                filled = min(count, x_end - off)
                if not iswrite:
                    copy_to_user(mem, buf + done, b"\xff" * filled)
            count -= filled
            done += filled
            off += filled
        return done

    def mmap(self, vma) -> None:
        """vfio_pci_core_mmap() (:1817): EINVAL for a region past the device's, a private
        mapping, a region that is not a mappable BAR, or a range past the BAR's pages."""
        index = vma.pgoff >> (VFIO_PCI_OFFSET_SHIFT - 12)
        if index >= NUM_REGIONS + self.num_regions:
            raise IommufdError(errno.EINVAL)
        if vma.end < vma.start:
            raise IommufdError(errno.EINVAL)
        if not vma.shared:
            raise IommufdError(errno.EINVAL)
        if index >= NUM_REGIONS:
            raise IommufdError(errno.EINVAL)
        if index >= ROM_INDEX:
            raise IommufdError(errno.EINVAL)
        if not self.bar_mmap_supported[index]:
            raise IommufdError(errno.EINVAL)
        phys_len = -(-self.pdev.resource_len(index) // PAGE_SIZE) * PAGE_SIZE
        pgoff = vma.pgoff & ((1 << (VFIO_PCI_OFFSET_SHIFT - 12)) - 1)
        if (pgoff << 12) + (vma.end - vma.start) > phys_len:
            raise IommufdError(errno.EINVAL)
        vma.bar = index
        vma.bar_offset = pgoff << 12

    def mmap_fault(self, bar: int) -> None:
        """vfio_pci_mmap_huge_fault() -> vfio_pci_vmf_insert_pfn() (:1757): SIGBUS with memory
        decoding off (or the device closed: its mappings were zapped)."""
        if not self.open_count or not self.memory_enabled():
            raise SigBus(f"BAR {bar} of {self.dev.bdf}: memory decoding is off (VM_FAULT_SIGBUS)")
