"""A conventional PCI function as QEMU 7.2 emulates one (hw/pci/pci.c PCIDevice): what the
host's drivers reach through config cycles, BAR accesses, its interrupt pin and MSI, and what
leaves it as bus-master DMA.

Config space is the captured bytes (model.profile.PciDeviceInfo.config) with QEMU's write
masks (pci_init_wmask(), pci_init_w1cmask(), pci_register_bar(), pci_add_capability(),
msi_init()): a write changes only writable bits, clears write-1-to-clear status bits, and the
command register's bits take effect (memory decoding gates BAR accesses; bus mastering gates
DMA; INTx disable gates the pin). For a function QEMU did not build (a real machine's capture)
the same masks are a guess: the header's as QEMU's, MSI's as msi_init(), every other capability
read-only, the device-specific rest of config space writable.

BAR registers are the device model's (`mmio_read` / `mmio_write`, edu.py); a plain function has
none: reads answer all ones and writes go nowhere.
"""
from __future__ import annotations

# include/uapi/linux/pci_regs.h
PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_COMMAND, PCI_STATUS = 0x00, 0x02, 0x04, 0x06
PCI_CACHE_LINE_SIZE, PCI_BASE_ADDRESS_0, PCI_ROM_ADDRESS = 0x0C, 0x10, 0x30
PCI_CAPABILITY_LIST, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN = 0x34, 0x3C, 0x3D
PCI_STD_HEADER_SIZEOF = 64
PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 0x1, 0x2, 0x4
PCI_COMMAND_SERR, PCI_COMMAND_INTX_DISABLE = 0x100, 0x400
PCI_STATUS_INTERRUPT, PCI_STATUS_CAP_LIST = 0x08, 0x10
PCI_STATUS_PARITY, PCI_STATUS_SIG_TARGET_ABORT, PCI_STATUS_REC_TARGET_ABORT = 0x100, 0x800, 0x1000
PCI_STATUS_REC_MASTER_ABORT, PCI_STATUS_SIG_SYSTEM_ERROR, PCI_STATUS_DETECTED_PARITY = 0x2000, 0x4000, 0x8000
PCI_CAP_ID_MSI, PCI_CAP_ID_EXP = 0x05, 0x10
PCI_MSI_FLAGS, PCI_MSI_ADDRESS_LO, PCI_MSI_ADDRESS_HI = 2, 4, 8
PCI_MSI_DATA_32, PCI_MSI_DATA_64, PCI_MSI_MASK_32, PCI_MSI_MASK_64 = 8, 12, 12, 16
PCI_MSI_FLAGS_ENABLE, PCI_MSI_FLAGS_QMASK, PCI_MSI_FLAGS_QSIZE = 0x1, 0x0E, 0x70
PCI_MSI_FLAGS_64BIT, PCI_MSI_FLAGS_MASKBIT = 0x80, 0x100
# include/linux/ioport.h: the sysfs `resource` flags
IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_PREFETCH, IORESOURCE_MEM_64 = 0x100, 0x200, 0x2000, 0x100000
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04


def capabilities(config: bytes) -> list[tuple[int, int]]:
    """The standard capability list as a config-space walk finds it: (position, ID) in order,
    at most 48 (pci_find_capability()'s TTL)."""
    out = []
    if not int.from_bytes(config[PCI_STATUS:PCI_STATUS + 2], "little") & PCI_STATUS_CAP_LIST:
        return out
    pos = config[PCI_CAPABILITY_LIST] & ~3
    while pos >= PCI_STD_HEADER_SIZEOF and len(out) < 48:
        out.append((pos, config[pos]))
        pos = config[pos + 1] & ~3
    return out


def msi_cap_len(flags: int) -> int:
    """The MSI capability's size by its flags (vfio_msi_cap_len(), vfio_pci_config.c:1249)."""
    return 10 + (4 if flags & PCI_MSI_FLAGS_64BIT else 0) + (10 if flags & PCI_MSI_FLAGS_MASKBIT else 0)


class PciFunction:
    """One function: its config space and write masks, BARs, interrupt pin, MSI, bus mastering.

    `intx_sink(level)` and `msi_sink(vector)` are the host's side of the interrupt (a driver that
    requested it: vfio-pci's handlers, model/vfio/pci_core.py); `bus` is the bus-master path
    (model/hw/iommu.py)."""

    def __init__(self, info, platform, dev):
        from model.hw.iommu import BusMaster

        self.info, self.platform, self.dev = info, platform, dev
        self.config = bytearray(info.config)
        n = len(self.config)
        self.wmask, self.w1cmask = bytearray(n), bytearray(n)
        self._init_masks()
        self.irq_state = 0  # the pin's level as the device drives it (pci_irq_state())
        self.intx_sink = None
        self.msi_sink = None
        self.bus = BusMaster(self)

    # -- config space ----------------------------------------------------------------------------

    def _word(self, buf: bytearray, off: int, value: int | None = None) -> int:
        if value is not None:
            buf[off:off + 2] = (value & 0xFFFF).to_bytes(2, "little")
        return int.from_bytes(buf[off:off + 2], "little")

    def _init_masks(self) -> None:
        """pci_init_wmask() / pci_init_w1cmask() (hw/pci/pci.c), the BARs' masks as
        pci_register_bar() sets them, each capability read-only (pci_add_capability()) but
        MSI's fields as msi_init() (hw/pci/msi.c) makes them writable."""
        w = self.wmask
        w[PCI_CACHE_LINE_SIZE] = 0xFF
        w[PCI_INTERRUPT_LINE] = 0xFF
        self._word(w, PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                   | PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_SERR)
        w[PCI_STD_HEADER_SIZEOF:] = b"\xff" * (len(w) - PCI_STD_HEADER_SIZEOF)
        self._word(self.w1cmask, PCI_STATUS, PCI_STATUS_PARITY | PCI_STATUS_SIG_TARGET_ABORT
                   | PCI_STATUS_REC_TARGET_ABORT | PCI_STATUS_REC_MASTER_ABORT
                   | PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY)
        i = 0
        while i < 6:
            start, size, flags = self.info.bar(i)
            if size:
                mask = ~(size - 1) & ((1 << 64) - 1)
                w[PCI_BASE_ADDRESS_0 + 4 * i:PCI_BASE_ADDRESS_0 + 4 * i + 4] = (mask & 0xFFFFFFFF).to_bytes(4, "little")
                if flags & IORESOURCE_MEM_64 and i < 5:
                    w[PCI_BASE_ADDRESS_0 + 4 * i + 4:PCI_BASE_ADDRESS_0 + 4 * i + 8] = (mask >> 32).to_bytes(4, "little")
                    i += 1
            i += 1
        self.msi_cap = 0
        for pos, cap in capabilities(self.config):
            flags = self._word(self.config, pos + PCI_MSI_FLAGS)
            if cap == PCI_CAP_ID_MSI:
                length = msi_cap_len(flags)
            elif cap == 0x09:  # PCI_CAP_ID_VNDR: its length follows the next pointer
                length = max(self.config[pos + 2], 2)
            else:  # PM, MSI-X, PCIe, ...: their registers (PCI_PM_SIZEOF, PCI_CAP_MSIX_SIZEOF,
                # PCI_CAP_EXP_ENDPOINT_SIZEOF_V2), else the header alone
                length = {0x01: 8, 0x11: 12, PCI_CAP_ID_EXP: 0x3C}.get(cap, 4)
            end = min(pos + length, len(w))
            w[pos:end] = bytes(end - pos)
            if cap == PCI_CAP_ID_MSI and not self.msi_cap:
                self.msi_cap = pos
                wide = flags & PCI_MSI_FLAGS_64BIT
                self._word(w, pos + PCI_MSI_FLAGS, PCI_MSI_FLAGS_QSIZE | PCI_MSI_FLAGS_ENABLE)
                w[pos + PCI_MSI_ADDRESS_LO:pos + PCI_MSI_ADDRESS_LO + 4] = (0xFFFFFFFC).to_bytes(4, "little")
                if wide:
                    w[pos + PCI_MSI_ADDRESS_HI:pos + PCI_MSI_ADDRESS_HI + 4] = b"\xff" * 4
                data = pos + (PCI_MSI_DATA_64 if wide else PCI_MSI_DATA_32)
                self._word(w, data, 0xFFFF)
                if flags & PCI_MSI_FLAGS_MASKBIT:
                    mask = pos + (PCI_MSI_MASK_64 if wide else PCI_MSI_MASK_32)
                    nvec = 1 << ((flags & PCI_MSI_FLAGS_QMASK) >> 1)
                    w[mask:mask + 4] = (0xFFFFFFFF >> (32 - nvec)).to_bytes(4, "little")

    @property
    def cfg_size(self) -> int:
        return len(self.config)

    def config_read(self, off: int, size: int) -> int:
        """pci_default_read_config(): little-endian bytes at off."""
        return int.from_bytes(self.config[off:off + size], "little")

    def config_write(self, off: int, size: int, value: int) -> None:
        """pci_default_write_config() (hw/pci/pci.c): writable bits take the value, W1C bits clear
        where it has ones; then the command register's effects (INTx disable, bus mastering)
        and MSI's (msi_write_config())."""
        irq_was_disabled = self.intx_disabled
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            a = off + i
            wm, w1c = self.wmask[a], self.w1cmask[a]
            self.config[a] = (self.config[a] & ~wm & 0xFF) | (byte & wm)
            self.config[a] &= ~(byte & w1c) & 0xFF
        if off <= PCI_COMMAND < off + size and irq_was_disabled != self.intx_disabled:
            self._update_irq_disabled()

    @property
    def command(self) -> int:
        return self._word(self.config, PCI_COMMAND)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & PCI_COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        """The bus_master_enable_region's state: DMA leaves the function only with it."""
        return bool(self.command & PCI_COMMAND_MASTER)

    @property
    def intx_disabled(self) -> bool:
        return bool(self.command & PCI_COMMAND_INTX_DISABLE)

    # -- BARs ------------------------------------------------------------------------------------

    def mmio_read(self, bar: int, off: int, size: int) -> int:
        """A load from BAR `bar` at off (memory decoding is the caller's to check): no registers."""
        return (1 << (8 * size)) - 1

    def mmio_write(self, bar: int, off: int, size: int, value: int) -> None:
        """A store to BAR `bar`: no registers, the write goes nowhere."""

    # -- interrupts ------------------------------------------------------------------------------

    def set_irq(self, level: int) -> None:
        """pci_set_irq() -> pci_irq_handler(): the pin's state and the status register's
        Interrupt Status bit follow the device; the line changes only while INTx is enabled."""
        level = 1 if level else 0
        if level == self.irq_state:
            return
        self.irq_state = level
        st = self._word(self.config, PCI_STATUS)
        self._word(self.config, PCI_STATUS, (st | PCI_STATUS_INTERRUPT) if level else (st & ~PCI_STATUS_INTERRUPT))
        if not self.intx_disabled and self.intx_sink is not None:
            self.intx_sink(level)

    def _update_irq_disabled(self) -> None:
        """pci_update_irq_disabled(): a pending pin is asserted (or withdrawn) on the line when
        INTx disable is cleared (or set)."""
        if self.irq_state and self.intx_sink is not None:
            self.intx_sink(0 if self.intx_disabled else 1)

    def msi_enabled(self) -> bool:
        """msi_enabled(): MSI capability present and its Enable bit set."""
        return bool(self.msi_cap) and bool(self._word(self.config, self.msi_cap + PCI_MSI_FLAGS) & PCI_MSI_FLAGS_ENABLE)

    def msi_notify(self, vector: int) -> None:
        """msi_notify(): the message of `vector` goes out (to the host's handler) while enabled."""
        if self.msi_enabled() and self.msi_sink is not None:
            self.msi_sink(vector)

    # -- DMA -------------------------------------------------------------------------------------

    def dma_read(self, addr: int, n: int) -> bytes:
        """pci_dma_read(): n bytes at bus address addr (model/hw/iommu.py)."""
        return self.bus.rw(addr, n, None)

    def dma_write(self, addr: int, data: bytes) -> None:
        """pci_dma_write()."""
        self.bus.rw(addr, len(data), bytes(data))
