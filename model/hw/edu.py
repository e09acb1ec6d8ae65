"""QEMU's educational PCI device (hw/misc/edu.c) as QEMU 7.2 builds it, the device the VMs
carry: vendor 0x1234, device 0x11e8, one 1 MiB memory BAR of registers, one MSI vector
(msi_init(pdev, 0, 1, true, false): 64-bit, no masking) and INTx pin A.

BAR0 registers (edu_mmio_read() / edu_mmio_write()): below 0x80 only 4-byte accesses mean
anything, from 0x80 on 4- or 8-byte ones (others read all ones and write nothing); an access of
1 or 2 bytes, or a misaligned one, is refused by QEMU's memory core before the device sees it
(edu_mmio_ops.valid: 4 to 8 bytes, aligned), which reads 0 (unassigned_mem_read()).
  0x00 identification 0x010000ed (RO)     0x04 liveness: reads back the inverse of the write
  0x08 factorial: a write starts it unless one is computing; reads the result
  0x20 status: bit 0 computing (RO), bit 7 raise FACT_IRQ (0x1) when done
  0x24 interrupt status (RO)   0x60 raise: irq_status |= value   0x64 acknowledge: &= ~value
  0x80 DMA source  0x88 destination  0x90 count  0x98 command: bit 0 run, bit 1 direction
       (1: to the bus address, EDU_DMA_TO_PCI), bit 2 raise DMA_IRQ (0x100) when done.
  A 4-byte write to 0x80/0x88/0x90 sets the whole 64-bit register (dma_rw() stores the value);
  0x84, 0x8c, 0x94 are no registers. While a transfer runs the DMA registers ignore writes.
The DMA engine copies between the device's 4 KiB buffer at device address 0x40000 and a bus
address masked with dma_mask ((1 << 28) - 1, edu_instance_init(); a clamp is logged), through
pci_dma_read() / pci_dma_write() (model/hw/iommu.py: bus mastering, then the IOMMU).

Two things of 7.2 are reproduced rather than smoothed over:
- edu_check_range() (7.2: `within(end1, start, end2)`, end exclusive) refuses a transfer whose
  end is exactly the buffer's end, or of length 0, or outside the buffer, with hw_error(): QEMU
  aborts and the whole VM is gone. The model raises HwError naming the range, and the device
  stays dead: every later access raises it again (the machine is not there any more). QEMU 8.0
  fixed the check (a transfer may end at the buffer's end) and only logs a bad range, then
  copies outside its buffer: for a profile captured on QEMU 8 or later the model takes the
  fixed check, and a bad range there is NotModelled (QEMU's own memory would be overwritten).
- Time: QEMU runs the transfer 100 ms of virtual time after the command (timer_mod(... + 100)),
  the factorial on a thread. The model has no virtual clock of its own: by default a transfer
  completes when its command is written, as if the 100 ms had passed before the next access,
  and the factorial when it is written. With `deferred_dma = True` the transfer waits for
  `advance(ms)` to pass 100 ms, so "running" can be observed.
"""
from __future__ import annotations

import re

from model.hw.pci import PciFunction
from model.objects import NotModelled

FACT_IRQ, DMA_IRQ = 0x00000001, 0x00000100
DMA_START, DMA_SIZE = 0x40000, 4096
EDU_STATUS_COMPUTING, EDU_STATUS_IRQFACT = 0x01, 0x80
EDU_DMA_RUN, EDU_DMA_TO_PCI_BIT, EDU_DMA_IRQ = 0x1, 0x2, 0x4
DMA_DELAY_MS = 100
U64 = (1 << 64) - 1


def qemu_version(platform) -> tuple[int, int]:
    """The QEMU a profile was captured on (provenance "QEMU emulator version X.Y..."); 7.2, the
    VMs', when it does not say."""
    prof = getattr(platform, "profile", None)
    text = str(prof.provenance.get("qemu", "")) if prof is not None else ""
    m = re.search(r"version (\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else (7, 2)


class HwError(RuntimeError):
    """hw_error(): QEMU printed the message and aborted; the machine is gone."""


class EduDevice(PciFunction):
    """struct EduState."""

    def __init__(self, info, platform, dev):
        super().__init__(info, platform, dev)
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma = {"src": 0, "dst": 0, "cnt": 0, "cmd": 0}
        self.dma_buf = bytearray(DMA_SIZE)
        self.dma_mask = (1 << 28) - 1  # edu_instance_init()
        self.log: list[str] = []  # what QEMU printed (the clamp's printf)
        self.stopped: str | None = None  # hw_error()'s message once the machine is gone
        self.deferred_dma = False
        self.clock_ms = 0  # QEMU_CLOCK_VIRTUAL, as far as the model advances it
        self._timer_at: int | None = None
        self.qemu_version = qemu_version(platform)

    def _alive(self) -> None:
        if self.stopped is not None:
            raise HwError(self.stopped)

    # -- interrupts (edu_raise_irq(), edu_lower_irq()) ------------------------------------------

    def raise_irq(self, val: int) -> None:
        self.irq_status |= val
        if self.irq_status:
            if self.msi_enabled():
                self.msi_notify(0)
            else:
                self.set_irq(1)

    def lower_irq(self, val: int) -> None:
        self.irq_status &= ~val & 0xFFFFFFFF
        if not self.irq_status and not self.msi_enabled():
            self.set_irq(0)

    # -- BAR0 ------------------------------------------------------------------------------------

    @staticmethod
    def _valid(off: int, size: int) -> bool:
        """edu_mmio_ops.valid (4..8 bytes, aligned) as memory_region_access_valid() checks it."""
        return size in (4, 8) and not off % size

    def mmio_read(self, bar: int, off: int, size: int) -> int:
        """edu_mmio_read() (the value truncated to the access, as the memory core does)."""
        self._alive()
        if bar != 0 or not self._valid(off, size):
            return 0 if bar == 0 else super().mmio_read(bar, off, size)
        mask = (1 << (8 * size)) - 1
        if off < 0x80 and size != 4:
            return U64 & mask
        val = U64
        if off == 0x00:
            val = 0x010000ED
        elif off == 0x04:
            val = self.addr4
        elif off == 0x08:
            val = self.fact
        elif off == 0x20:
            val = self.status
        elif off == 0x24:
            val = self.irq_status
        elif off in (0x80, 0x88, 0x90, 0x98):
            val = self.dma[{0x80: "src", 0x88: "dst", 0x90: "cnt", 0x98: "cmd"}[off]]
        return val & mask

    def mmio_write(self, bar: int, off: int, size: int, value: int) -> None:
        """edu_mmio_write()."""
        self._alive()
        if bar != 0 or not self._valid(off, size):
            return
        if off < 0x80 and size != 4:
            return
        value &= (1 << (8 * size)) - 1
        if off == 0x04:
            self.addr4 = ~value & 0xFFFFFFFF
        elif off == 0x08:
            if self.status & EDU_STATUS_COMPUTING:
                return
            self.fact = value & 0xFFFFFFFF
            self.status |= EDU_STATUS_COMPUTING
            self._fact_thread()
        elif off == 0x20:
            if value & EDU_STATUS_IRQFACT:
                self.status |= EDU_STATUS_IRQFACT
            else:
                self.status &= ~EDU_STATUS_IRQFACT
        elif off == 0x60:
            self.raise_irq(value & 0xFFFFFFFF)
        elif off == 0x64:
            self.lower_irq(value & 0xFFFFFFFF)
        elif off in (0x80, 0x88, 0x90):
            self._dma_rw({0x80: "src", 0x88: "dst", 0x90: "cnt"}[off], value, timer=False)
        elif off == 0x98:
            if value & EDU_DMA_RUN:
                self._dma_rw("cmd", value, timer=True)

    def _dma_rw(self, reg: str, value: int, timer: bool) -> None:
        """dma_rw() of a write: ignored while a transfer runs; the command (re)arms the timer."""
        if self.dma["cmd"] & EDU_DMA_RUN:
            return
        self.dma[reg] = value
        if timer:
            self._timer_at = self.clock_ms + DMA_DELAY_MS  # timer_mod()
            if not self.deferred_dma:
                self.advance(DMA_DELAY_MS)

    def advance(self, ms: int) -> None:
        """Let `ms` of virtual time pass: the DMA timer fires when due."""
        self._alive()
        self.clock_ms += ms
        if self._timer_at is not None and self.clock_ms >= self._timer_at:
            self._timer_at = None
            self._dma_timer()

    # -- the factorial thread --------------------------------------------------------------------

    def _fact_thread(self) -> None:
        """edu_fact_thread(): ret *= val-- in 32 bits (zero from 34! on: it has 32 factors of 2)."""
        val, ret = self.fact, 1
        if val >= 34:
            ret = 0
        else:
            while val > 0:
                ret = (ret * val) & 0xFFFFFFFF
                val -= 1
        self.fact = ret
        self.status &= ~EDU_STATUS_COMPUTING
        if self.status & EDU_STATUS_IRQFACT:
            self.raise_irq(FACT_IRQ)

    # -- the DMA engine --------------------------------------------------------------------------

    def _check_range(self, addr: int, size1: int, start: int, size2: int) -> None:
        """edu_check_range() as QEMU 7.2 has it: the end must be inside the buffer (exclusive),
        so a transfer ending exactly at its end stops the machine, as does a zero length."""
        end1 = (addr + size1) & U64
        end2 = (start + size2) & U64
        if self.qemu_version >= (8, 0):  # the fixed check: [start, end) inside [start2, end2)
            if end2 >= start and end1 >= addr and addr >= start and end1 <= end2:
                return
            self.log.append(f"EDU: DMA range 0x{addr:016x}-0x{(end1 - 1) & U64:016x} out of bounds "
                            f"(0x{start:016x}-0x{(end2 - 1) & U64:016x})!")
            raise NotModelled("QEMU's edu copying outside its DMA buffer (QEMU 8.0 on only logs a bad range)")

        def within(a: int) -> bool:
            return start <= a < end2

        if within(addr) and end1 > addr and within(end1):
            return
        self.stopped = (f"EDU: DMA range 0x{addr:016x}-0x{(end1 - 1) & U64:016x} out of bounds "
                        f"(0x{start:016x}-0x{(end2 - 1) & U64:016x})! (QEMU 7.2 hw_error(): the VM aborts)")
        raise HwError(self.stopped)

    def _clamp(self, addr: int) -> int:
        """edu_clamp_addr(): the bus address masked with dma_mask (logged when that changes it)."""
        res = addr & self.dma_mask
        if res != addr:
            self.log.append(f"EDU: clamping DMA {addr:#018x} to {res:#018x}!")
        return res

    def _dma_timer(self) -> None:
        """edu_dma_timer()."""
        d = self.dma
        if not d["cmd"] & EDU_DMA_RUN:
            return
        if not d["cmd"] & EDU_DMA_TO_PCI_BIT:  # EDU_DMA_FROM_PCI: bus -> buffer
            self._check_range(d["dst"], d["cnt"], DMA_START, DMA_SIZE)
            at = d["dst"] - DMA_START
            self.dma_buf[at:at + d["cnt"]] = self.dma_read(self._clamp(d["src"]), d["cnt"])
        else:
            self._check_range(d["src"], d["cnt"], DMA_START, DMA_SIZE)
            at = d["src"] - DMA_START
            self.dma_write(self._clamp(d["dst"]), bytes(self.dma_buf[at:at + d["cnt"]]))
        d["cmd"] &= ~EDU_DMA_RUN
        if d["cmd"] & EDU_DMA_IRQ:
            self.raise_irq(DMA_IRQ)
