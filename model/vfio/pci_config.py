"""Config space as vfio-pci presents it to user space (drivers/vfio/pci/vfio_pci_config.c).

vfio_config_init() (:1750) builds, per open device, a virtual copy of config space (vconfig,
read from the device after vfio_pci_core_enable()) and a map of which capability owns each
byte; the capabilities vfio does not know the length of, or hides, leave the chain. Reads and
writes go through permission tables by capability (`perm_bits`: which bits are virtual, i.e.
kept in vconfig, and which are writable): basic header (:661-702), PM, VPD, PCI-X, PCIe, AF,
MSI (per device), AER and power budgeting, default read-only and non-virtual for the rest;
bytes no capability owns are raw (unassigned_perms, :333). vfio_pci_config_rw() (:1977) cuts an
access into aligned pieces of at most one capability and a dword (:1884-1907).

What reaches the hardware goes to the PCI function (model/hw/pci.py) through `vdev.pdev`
(pci_core.PciDev: the struct pci_dev vfio-pci reads). Power states other than D0, VPD contents
and function-level resets through config space are not modelled (NotModelled).
"""
from __future__ import annotations

import errno

from model.objects import IommufdError, NotModelled
from model.uaccess import copy_from_user, copy_to_user

# include/uapi/linux/pci_regs.h
PCI_CFG_SPACE_SIZE, PCI_CFG_SPACE_EXP_SIZE, PCI_STD_HEADER_SIZEOF = 256, 4096, 64
PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_COMMAND, PCI_STATUS = 0x00, 0x02, 0x04, 0x06
PCI_CACHE_LINE_SIZE, PCI_LATENCY_TIMER, PCI_BIST = 0x0C, 0x0D, 0x0F
PCI_BASE_ADDRESS_0, PCI_BASE_ADDRESS_5, PCI_ROM_ADDRESS = 0x10, 0x24, 0x30
PCI_CAPABILITY_LIST, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN = 0x34, 0x3C, 0x3D
PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_COMMAND_INTX_DISABLE = 0x1, 0x2, 0x400
PCI_STATUS_CAP_LIST = 0x10
PCI_BASE_ADDRESS_SPACE_IO, PCI_BASE_ADDRESS_SPACE_MEMORY = 0x01, 0x00
PCI_BASE_ADDRESS_MEM_TYPE_64, PCI_BASE_ADDRESS_MEM_PREFETCH = 0x04, 0x08
PCI_ROM_ADDRESS_ENABLE = 0x01
PCI_CAP_LIST_ID, PCI_CAP_LIST_NEXT, PCI_CAP_FLAGS, PCI_CAP_SIZEOF = 0, 1, 2, 4
(PCI_CAP_ID_PM, PCI_CAP_ID_AGP, PCI_CAP_ID_VPD, PCI_CAP_ID_SLOTID, PCI_CAP_ID_MSI, PCI_CAP_ID_CHSWP,
 PCI_CAP_ID_PCIX, PCI_CAP_ID_HT, PCI_CAP_ID_VNDR, PCI_CAP_ID_DBG, PCI_CAP_ID_CCRC, PCI_CAP_ID_SHPC,
 PCI_CAP_ID_SSVID, PCI_CAP_ID_AGP3, PCI_CAP_ID_SECDEV, PCI_CAP_ID_EXP, PCI_CAP_ID_MSIX, PCI_CAP_ID_SATA,
 PCI_CAP_ID_AF, PCI_CAP_ID_EA) = range(1, 0x15)
PCI_CAP_ID_BASIC = 0  # vfio_pci_config.c:31: the header, a fake capability
PCI_CAP_ID_MAX = PCI_CAP_ID_EA
PCI_CAP_ID_INVALID, PCI_CAP_ID_INVALID_VIRT = 0xFF, 0xFE  # vfio_pci_priv.h:8-9
PCI_PM_PMC, PCI_PM_CTRL, PCI_PM_SIZEOF = 2, 4, 8
PCI_PM_CAP_PME_MASK, PCI_PM_CTRL_STATE_MASK, PCI_PM_CTRL_NO_SOFT_RESET = 0xF800, 0x0003, 0x0008
PCI_PM_CTRL_PME_ENABLE, PCI_PM_CTRL_PME_STATUS = 0x0100, 0x8000
PCI_AGP_SIZEOF, PCI_CAP_VPD_SIZEOF, PCI_VPD_ADDR, PCI_VPD_DATA = 12, 8, 2, 4
PCI_MSI_FLAGS, PCI_MSI_ADDRESS_LO, PCI_MSI_ADDRESS_HI = 2, 4, 8
PCI_MSI_DATA_32, PCI_MSI_MASK_32, PCI_MSI_PENDING_32 = 8, 12, 16
PCI_MSI_DATA_64, PCI_MSI_MASK_64, PCI_MSI_PENDING_64 = 12, 16, 20
PCI_MSI_FLAGS_ENABLE, PCI_MSI_FLAGS_QMASK, PCI_MSI_FLAGS_QSIZE = 0x0001, 0x000E, 0x0070
PCI_MSI_FLAGS_64BIT, PCI_MSI_FLAGS_MASKBIT = 0x0080, 0x0100
PCI_MSIX_FLAGS, PCI_MSIX_TABLE, PCI_CAP_MSIX_SIZEOF = 2, 4, 12
PCI_MSIX_FLAGS_QSIZE, PCI_MSIX_TABLE_BIR, PCI_MSIX_TABLE_OFFSET = 0x07FF, 0x7, 0xFFFFFFF8
PCI_AF_CAP, PCI_AF_CTRL, PCI_CAP_AF_SIZEOF = 3, 4, 6
PCI_AF_CAP_TP, PCI_AF_CAP_FLR, PCI_AF_CTRL_FLR = 0x01, 0x02, 0x01
PCI_X_CMD, PCI_X_ECC_CSR, PCI_CAP_PCIX_SIZEOF_V0, PCI_CAP_PCIX_SIZEOF_V2 = 2, 8, 8, 24
PCI_EXP_FLAGS, PCI_EXP_DEVCAP, PCI_EXP_DEVCTL, PCI_EXP_DEVCTL2 = 0x02, 0x04, 0x08, 0x28
PCI_EXP_FLAGS_VERS, PCI_EXP_FLAGS_TYPE, PCI_EXP_TYPE_RC_END = 0x000F, 0x00F0, 0x9
PCI_EXP_DEVCAP_FLR, PCI_EXP_DEVCAP_PAYLOAD = 0x10000000, 0x00000007
PCI_EXP_DEVCTL_PAYLOAD, PCI_EXP_DEVCTL_PHANTOM = 0x00E0, 0x0200
PCI_EXP_DEVCTL_READRQ, PCI_EXP_DEVCTL_BCR_FLR, PCI_EXP_DEVCTL2_ARI = 0x7000, 0x8000, 0x0020
PCI_CAP_EXP_ENDPOINT_SIZEOF_V1, PCI_CAP_EXP_ENDPOINT_SIZEOF_V2 = 20, 0x34
PCI_SATA_REGS, PCI_SATA_REGS_MASK, PCI_SATA_REGS_INLINE = 4, 0xF, 0xF
PCI_SATA_SIZEOF_SHORT, PCI_SATA_SIZEOF_LONG = 8, 16
HT_3BIT_CAP_MASK, HT_CAP_SIZEOF_LONG, HT_CAP_SIZEOF_SHORT = 0xE0, 28, 24
(PCI_EXT_CAP_ID_ERR, PCI_EXT_CAP_ID_VC, PCI_EXT_CAP_ID_DSN, PCI_EXT_CAP_ID_PWR, PCI_EXT_CAP_ID_RCLD,
 PCI_EXT_CAP_ID_RCILC, PCI_EXT_CAP_ID_RCEC, PCI_EXT_CAP_ID_MFVC, PCI_EXT_CAP_ID_VC9, PCI_EXT_CAP_ID_RCRB,
 PCI_EXT_CAP_ID_VNDR, PCI_EXT_CAP_ID_CAC, PCI_EXT_CAP_ID_ACS, PCI_EXT_CAP_ID_ARI, PCI_EXT_CAP_ID_ATS,
 PCI_EXT_CAP_ID_SRIOV, PCI_EXT_CAP_ID_MRIOV, PCI_EXT_CAP_ID_MCAST, PCI_EXT_CAP_ID_PRI,
 PCI_EXT_CAP_ID_AMD_XXX, PCI_EXT_CAP_ID_REBAR, PCI_EXT_CAP_ID_DPA, PCI_EXT_CAP_ID_TPH, PCI_EXT_CAP_ID_LTR,
 PCI_EXT_CAP_ID_SECPCI, PCI_EXT_CAP_ID_PMUX, PCI_EXT_CAP_ID_PASID) = range(1, 0x1C)
PCI_EXT_CAP_ID_DVSEC = 0x23
PCI_EXT_CAP_ID_MAX = 0x31  # PCI_EXT_CAP_ID_PL_64GT
PCI_ERR_UNCOR_STATUS, PCI_ERR_UNCOR_MASK, PCI_ERR_UNCOR_SEVER = 0x04, 0x08, 0x0C
PCI_ERR_COR_STATUS, PCI_ERR_COR_MASK, PCI_ERR_CAP, PCI_ERR_ROOT_COMMAND = 0x10, 0x14, 0x18, 0x2C
PCI_PWR_DATA = 0x08
PCI_VNDR_HEADER, PCI_DVSEC_HEADER1 = 4, 4
PCI_VC_PORT_CAP1, PCI_VC_PORT_CAP2, PCI_VC_CAP1_EVCC = 0x04, 0x08, 0x7
PCI_VC_CAP2_32_PHASE, PCI_VC_CAP2_64_PHASE, PCI_VC_CAP2_128_PHASE = 0x2, 0x4, 0x8
PCI_CAP_VC_BASE_SIZEOF, PCI_CAP_VC_PER_VC_SIZEOF = 0x10, 0x0C
PCI_ACS_CAP, PCI_ACS_EGRESS_BITS, PCI_ACS_EC = 0x04, 0x05, 0x20
PCI_REBAR_CTRL, PCI_REBAR_CTRL_NBAR_MASK, PCI_REBAR_CTRL_NBAR_SHIFT = 8, 0xE0, 5
PCI_DPA_CAP, PCI_DPA_CAP_SUBSTATE_MASK, PCI_DPA_BASE_SIZEOF = 4, 0x1F, 16
PCI_TPH_CAP, PCI_TPH_CAP_LOC_MASK, PCI_TPH_LOC_CAP = 4, 0x600, 0x200
PCI_TPH_CAP_ST_MASK, PCI_TPH_CAP_ST_SHIFT, PCI_TPH_BASE_SIZEOF = 0x07FF0000, 16, 0xC
# include/linux/ioport.h
IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_PREFETCH, IORESOURCE_MEM_64 = 0x100, 0x200, 0x2000, 0x100000
VFIO_PCI_MSI_IRQ_INDEX = 1
PCI_D0, PCI_D1, PCI_D2, PCI_D3HOT = 0, 1, 2, 3

NO_VIRT, ALL_VIRT, NO_WRITE, ALL_WRITE = 0, 0xFFFFFFFF, 0, 0xFFFFFFFF

# pci_cap_length[] (:43-65): 0 hidden from the user's chain, 0xFF variable
PCI_CAP_LENGTH = {
    PCI_CAP_ID_BASIC: PCI_STD_HEADER_SIZEOF, PCI_CAP_ID_PM: PCI_PM_SIZEOF, PCI_CAP_ID_AGP: PCI_AGP_SIZEOF,
    PCI_CAP_ID_VPD: PCI_CAP_VPD_SIZEOF, PCI_CAP_ID_MSI: 0xFF, PCI_CAP_ID_PCIX: 0xFF, PCI_CAP_ID_HT: 0xFF,
    PCI_CAP_ID_VNDR: 0xFF, PCI_CAP_ID_EXP: 0xFF, PCI_CAP_ID_MSIX: PCI_CAP_MSIX_SIZEOF, PCI_CAP_ID_SATA: 0xFF,
    PCI_CAP_ID_AF: PCI_CAP_AF_SIZEOF,
}
# pci_ext_cap_length[] (:71-101)
PCI_EXT_CAP_LENGTH = {
    PCI_EXT_CAP_ID_ERR: PCI_ERR_ROOT_COMMAND, PCI_EXT_CAP_ID_VC: 0xFF, PCI_EXT_CAP_ID_DSN: 12,
    PCI_EXT_CAP_ID_PWR: 0x10, PCI_EXT_CAP_ID_MFVC: 0xFF, PCI_EXT_CAP_ID_VC9: 0xFF, PCI_EXT_CAP_ID_VNDR: 0xFF,
    PCI_EXT_CAP_ID_ACS: 0xFF, PCI_EXT_CAP_ID_ARI: 8, PCI_EXT_CAP_ID_ATS: 8, PCI_EXT_CAP_ID_SRIOV: 0x40,
    PCI_EXT_CAP_ID_MCAST: 40, PCI_EXT_CAP_ID_PRI: 16, PCI_EXT_CAP_ID_REBAR: 0xFF, PCI_EXT_CAP_ID_DPA: 0xFF,
    PCI_EXT_CAP_ID_TPH: 0xFF, PCI_EXT_CAP_ID_LTR: 8, PCI_EXT_CAP_ID_DVSEC: 0xFF,
}


def _le(buf, off: int, n: int) -> int:
    return int.from_bytes(bytes(buf[off:off + n]).ljust(n, b"\0"), "little")


def _put(buf, off: int, n: int, value: int) -> None:
    buf[off:off + n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


def _mask(count: int) -> int:
    return (1 << (8 * count)) - 1


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


class PermBits:
    """struct perm_bits (:109): per byte of a capability, its virtual and its writable bits, and
    the read and write functions (each returns the count done or -errno; reads also the value)."""

    def __init__(self, size: int = 0, readfn=None, writefn=None):
        size = _round_up(size, 4)  # alloc_perm_bits() (:351): whole dwords
        self.virt = bytearray(size)
        self.write = bytearray(size)
        self.readfn = readfn if readfn is not None else (vfio_default_config_read if size else None)
        self.writefn = writefn if writefn is not None else (vfio_default_config_write if size else None)

    def setb(self, off: int, virt: int, write: int) -> None:
        _put(self.virt, off, 1, virt)
        _put(self.write, off, 1, write)

    def setw(self, off: int, virt: int, write: int) -> None:
        _put(self.virt, off, 2, virt)
        _put(self.write, off, 2, write)

    def setd(self, off: int, virt: int, write: int) -> None:
        _put(self.virt, off, 4, virt)
        _put(self.write, off, 4, write)


# -- reads and writes of the hardware (pci_user_read/write_config_*) ----------------------------

def vfio_user_config_read(pdev, offset: int, count: int) -> tuple[int, int]:
    """vfio_user_config_read() (:123): (0 or -EINVAL for a size that is not 1, 2, 4, the value)."""
    if count not in (1, 2, 4):
        return -errno.EINVAL, 0
    return 0, pdev.read_config(offset, count)


def vfio_user_config_write(pdev, offset: int, val: int, count: int) -> int:
    """vfio_user_config_write() (:155)."""
    if count not in (1, 2, 4):
        return -errno.EINVAL
    pdev.write_config(offset, count, val)
    return 0


# -- the generic read and write functions -------------------------------------------------------

def vfio_default_config_read(vdev, pos, count, perm, offset):
    """vfio_default_config_read() (:175): vconfig where virtual, the hardware elsewhere."""
    val = _le(vdev.vconfig, pos, count)
    virt = _le(perm.virt, offset, count)
    if virt != _mask(count):
        ret, phys = vfio_user_config_read(vdev.pdev, pos, count)
        if ret:
            return ret, 0
        val = (phys & ~virt) | (val & virt)
    return count, val


def vfio_default_config_write(vdev, pos, count, perm, offset, val):
    """vfio_default_config_write() (:201): writable virtual bits to vconfig, writable others to
    the hardware (read-modify-write); nothing writable drops the write."""
    write = _le(perm.write, offset, count)
    if not write:
        return count
    virt = _le(perm.virt, offset, count)
    if write & virt:
        v = _le(vdev.vconfig, pos, count)
        v &= ~(write & virt)
        v |= val & (write & virt)
        _put(vdev.vconfig, pos, count, v)
    if write & ~virt & _mask(count):
        ret, phys = vfio_user_config_read(vdev.pdev, pos, count)
        if ret:
            return ret
        phys &= ~(write & ~virt)
        phys |= val & (write & ~virt)
        ret = vfio_user_config_write(vdev.pdev, pos, phys, count)
        if ret:
            return ret
    return count


def vfio_direct_config_read(vdev, pos, count, perm, offset):
    """vfio_direct_config_read() (:248): the hardware, but a capability's ID/next bytes (and an
    extended one's header dword) from vconfig, where the chain may have been edited."""
    ret, val = vfio_user_config_read(vdev.pdev, pos, count)
    if ret:
        return ret, 0
    if pos >= PCI_CFG_SPACE_SIZE:
        if offset < 4:
            val = _le(vdev.vconfig, pos, count)
    elif pos >= PCI_STD_HEADER_SIZEOF:
        if offset == PCI_CAP_LIST_ID and count > 1:
            k = min(PCI_CAP_FLAGS, count)
            val = (val & ~_mask(k)) | _le(vdev.vconfig, pos, k)
        elif offset == PCI_CAP_LIST_NEXT:
            val = (val & ~0xFF) | vdev.vconfig[pos]
    return count, val


def vfio_raw_config_write(vdev, pos, count, perm, offset, val):
    """vfio_raw_config_write() (:273)."""
    ret = vfio_user_config_write(vdev.pdev, pos, val, count)
    return ret if ret else count


def vfio_raw_config_read(vdev, pos, count, perm, offset):
    """vfio_raw_config_read() (:286)."""
    ret, val = vfio_user_config_read(vdev.pdev, pos, count)
    return (ret, 0) if ret else (count, val)


def vfio_virt_config_write(vdev, pos, count, perm, offset, val):
    _put(vdev.vconfig, pos, count, val)
    return count


def vfio_virt_config_read(vdev, pos, count, perm, offset):
    return count, _le(vdev.vconfig, pos, count)


# -- the basic header ---------------------------------------------------------------------------

def is_bar(offset: int) -> bool:
    """is_bar() (:34)."""
    return PCI_BASE_ADDRESS_0 <= offset < PCI_BASE_ADDRESS_5 + 4 or PCI_ROM_ADDRESS <= offset < PCI_ROM_ADDRESS + 4


def vfio_pci_memory_enabled(vdev) -> bool:
    """__vfio_pci_memory_enabled() (:404): D0-D2 and the virtual command's memory enable."""
    cmd = _le(vdev.vconfig, PCI_COMMAND, 2)
    return vdev.pdev.current_state < PCI_D3HOT and bool(vdev.pdev.no_command_memory or cmd & PCI_COMMAND_MEMORY)


def vfio_bar_restore(vdev) -> None:
    """vfio_bar_restore() (:425): the BARs vfio saved, written back after a reset it caught."""
    pdev = vdev.pdev
    for i in range(6):
        pdev.write_config(PCI_BASE_ADDRESS_0 + 4 * i, 4, vdev.rbar[i])
    pdev.write_config(PCI_ROM_ADDRESS, 4, vdev.rbar[6])
    if vdev.nointx:
        pdev.write_config(PCI_COMMAND, 2, pdev.read_config(PCI_COMMAND, 2) | PCI_COMMAND_INTX_DISABLE)


def vfio_generate_bar_flags(pdev, bar: int) -> int:
    """vfio_generate_bar_flags() (:449): the BAR's low bits from its resource flags."""
    flags = pdev.resource_flags(bar)
    if flags & IORESOURCE_IO:
        return PCI_BASE_ADDRESS_SPACE_IO
    val = PCI_BASE_ADDRESS_SPACE_MEMORY
    if flags & IORESOURCE_PREFETCH:
        val |= PCI_BASE_ADDRESS_MEM_PREFETCH
    if flags & IORESOURCE_MEM_64:
        val |= PCI_BASE_ADDRESS_MEM_TYPE_64
    return val


def vfio_bar_fixup(vdev) -> None:
    """vfio_bar_fixup() (:472): the virtual BARs answer BAR sizing as hardware would: the
    resource's address under its size mask with its type bits; unset BARs read 0."""
    if not vdev.bardirty:
        return
    pdev = vdev.pdev
    i = 0
    while i < 6:
        off = PCI_BASE_ADDRESS_0 + 4 * i
        if not pdev.resource_start(i):
            _put(vdev.vconfig, off, 4, 0)
            i += 1
            continue
        mask = ~(pdev.resource_len(i) - 1) & ((1 << 64) - 1)
        v = _le(vdev.vconfig, off, 4) & mask & 0xFFFFFFFF
        v |= vfio_generate_bar_flags(pdev, i)
        _put(vdev.vconfig, off, 4, v)
        if v & PCI_BASE_ADDRESS_MEM_TYPE_64:
            i += 1
            off += 4
            _put(vdev.vconfig, off, 4, _le(vdev.vconfig, off, 4) & (mask >> 32))
        i += 1
    if pdev.resource_start(6):
        mask = (~(pdev.resource_len(6) - 1) | PCI_ROM_ADDRESS_ENABLE) & 0xFFFFFFFF
        _put(vdev.vconfig, PCI_ROM_ADDRESS, 4, _le(vdev.vconfig, PCI_ROM_ADDRESS, 4) & mask)
    else:  # no shadow ROM (pdev->rom) on the captured machines
        _put(vdev.vconfig, PCI_ROM_ADDRESS, 4, 0)
    vdev.bardirty = False


def vfio_basic_config_read(vdev, pos, count, perm, offset):
    """vfio_basic_config_read() (:526)."""
    if is_bar(offset):
        vfio_bar_fixup(vdev)
    ret, val = vfio_default_config_read(vdev, pos, count, perm, offset)
    if ret >= 0 and offset == PCI_COMMAND and vdev.pdev.no_command_memory:
        val |= _le(vdev.vconfig, PCI_COMMAND, 2) & PCI_COMMAND_MEMORY
    return ret, val


def vfio_need_bar_restore(vdev) -> bool:
    """vfio_need_bar_restore() (:548): a saved BAR the hardware no longer holds."""
    for i in range(6):
        if vdev.rbar[i] and vdev.pdev.read_config(PCI_BASE_ADDRESS_0 + 4 * i, 4) != vdev.rbar[i]:
            return True
    return False


def vfio_basic_config_write(vdev, pos, count, perm, offset, val):
    """vfio_basic_config_write() (:564): the command register's memory and I/O enables go to
    the hardware (after restoring BARs a backdoor reset lost), INTx disable is emulated, a BAR
    write marks the virtual BARs for fixup."""
    pdev = vdev.pdev
    new_cmd = 0
    if offset == PCI_COMMAND:
        phys_cmd = pdev.read_config(PCI_COMMAND, 2)
        virt_cmd = _le(vdev.vconfig, PCI_COMMAND, 2)
        new_cmd = val & 0xFFFF
        phys_io, virt_io, new_io = (bool(c & PCI_COMMAND_IO) for c in (phys_cmd, virt_cmd, new_cmd))
        phys_mem, virt_mem, new_mem = (bool(c & PCI_COMMAND_MEMORY) for c in (phys_cmd, virt_cmd, new_cmd))
        if (new_mem and virt_mem and not phys_mem and not pdev.no_command_memory) or \
                (new_io and virt_io and not phys_io) or vfio_need_bar_restore(vdev):
            vfio_bar_restore(vdev)
    count = vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if count < 0:
        return count
    if offset == PCI_COMMAND:
        mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO
        v = _le(vdev.vconfig, PCI_COMMAND, 2)
        _put(vdev.vconfig, PCI_COMMAND, 2, (v & ~mask) | (new_cmd & mask))
    if PCI_COMMAND <= offset <= PCI_COMMAND + 1:
        virt_intx_disable = bool(_le(vdev.vconfig, PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE)
        if virt_intx_disable and not vdev.virq_disabled:
            vdev.virq_disabled = True
            vdev.intx_mask()
        elif not virt_intx_disable and vdev.virq_disabled:
            vdev.virq_disabled = False
            vdev.intx_unmask()
    if is_bar(offset):
        vdev.bardirty = True
    return count


def init_pci_cap_basic_perm() -> PermBits:
    """init_pci_cap_basic_perm() (:661)."""
    p = PermBits(PCI_STD_HEADER_SIZEOF, vfio_basic_config_read, vfio_basic_config_write)
    p.setw(PCI_VENDOR_ID, 0xFFFF, NO_WRITE)
    p.setw(PCI_DEVICE_ID, 0xFFFF, NO_WRITE)
    p.setw(PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, 0xFFFF)
    p.setw(PCI_STATUS, PCI_STATUS_CAP_LIST, NO_WRITE)
    p.setb(PCI_CACHE_LINE_SIZE, NO_VIRT, 0xFF)
    p.setb(PCI_LATENCY_TIMER, NO_VIRT, 0xFF)
    p.setb(PCI_BIST, NO_VIRT, 0xFF)
    for off in range(PCI_BASE_ADDRESS_0, PCI_BASE_ADDRESS_5 + 4, 4):
        p.setd(off, ALL_VIRT, ALL_WRITE)
    p.setd(PCI_ROM_ADDRESS, ALL_VIRT, ALL_WRITE)
    p.setb(PCI_CAPABILITY_LIST, 0xFF, NO_WRITE)
    p.setb(PCI_INTERRUPT_LINE, 0xFF, 0xFF)
    p.setb(PCI_INTERRUPT_PIN, 0xFF, NO_WRITE)
    return p


# -- capabilities ---------------------------------------------------------------------------------

def vfio_pm_config_write(vdev, pos, count, perm, offset, val):
    """vfio_pm_config_write() (:728): a power state change is vfio's to make. The model has D0."""
    count = vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if count < 0:
        return count
    if offset == PCI_PM_CTRL and val & PCI_PM_CTRL_STATE_MASK != PCI_D0:
        raise NotModelled(f"vfio_pm_config_write(): power state D{val & PCI_PM_CTRL_STATE_MASK}")
    return count


def init_pci_cap_pm_perm() -> PermBits:
    """init_pci_cap_pm_perm() (:761)."""
    p = PermBits(PCI_PM_SIZEOF, writefn=vfio_pm_config_write)
    p.setb(PCI_CAP_LIST_NEXT, 0xFF, NO_WRITE)
    p.setw(PCI_PM_PMC, PCI_PM_CAP_PME_MASK, NO_WRITE)
    p.setd(PCI_PM_CTRL, PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS,
           ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS | PCI_PM_CTRL_STATE_MASK) & 0xFFFFFFFF)
    return p


def vfio_vpd_config_write(vdev, pos, count, perm, offset, val):
    """vfio_vpd_config_write() (:800): the address register's flag starts a VPD access."""
    count = vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if count < 0 or offset > PCI_VPD_ADDR + 1 or offset + count <= PCI_VPD_ADDR + 1:
        return count
    raise NotModelled("VPD reads and writes (pci_read_vpd() / pci_write_vpd(): no VPD contents)")


def init_pci_cap_vpd_perm() -> PermBits:
    p = PermBits(PCI_CAP_VPD_SIZEOF, writefn=vfio_vpd_config_write)
    p.setb(PCI_CAP_LIST_NEXT, 0xFF, NO_WRITE)
    p.setw(PCI_VPD_ADDR, 0xFFFF, 0xFFFF)
    p.setd(PCI_VPD_DATA, ALL_VIRT, ALL_WRITE)
    return p


def init_pci_cap_pcix_perm() -> PermBits:
    p = PermBits(PCI_CAP_PCIX_SIZEOF_V2)
    p.setb(PCI_CAP_LIST_NEXT, 0xFF, NO_WRITE)
    p.setw(PCI_X_CMD, NO_VIRT, 0xFFFF)
    p.setd(PCI_X_ECC_CSR, NO_VIRT, ALL_WRITE)
    return p


def vfio_exp_config_write(vdev, pos, count, perm, offset, val):
    """vfio_exp_config_write() (:882): FLR is virtual (a reset, then cleared); a changed MRRS
    goes to the hardware no lower than the device's MPS."""
    ctrl = pos - offset + PCI_EXP_DEVCTL
    readrq = _le(vdev.vconfig, ctrl, 2) & PCI_EXP_DEVCTL_READRQ
    count = vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if count < 0:
        return count
    c = _le(vdev.vconfig, ctrl, 2)
    if c & PCI_EXP_DEVCTL_BCR_FLR:
        _put(vdev.vconfig, ctrl, 2, c & ~PCI_EXP_DEVCTL_BCR_FLR)
        if vdev.pdev.read_config(pos - offset + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR:
            vdev.reset_function()
    c = _le(vdev.vconfig, ctrl, 2)
    if readrq != c & PCI_EXP_DEVCTL_READRQ:
        rq = max(128 << ((c & PCI_EXP_DEVCTL_READRQ) >> 12), vdev.pdev.mps())
        vdev.pdev.set_readrq(rq)
    return count


def init_pci_cap_exp_perm() -> PermBits:
    """init_pci_cap_exp_perm() (:945)."""
    p = PermBits(PCI_CAP_EXP_ENDPOINT_SIZEOF_V2, writefn=vfio_exp_config_write)
    p.setb(PCI_CAP_LIST_NEXT, 0xFF, NO_WRITE)
    p.setw(PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR | PCI_EXP_DEVCTL_PAYLOAD | PCI_EXP_DEVCTL_READRQ,
           ~PCI_EXP_DEVCTL_PHANTOM & 0xFFFF)
    p.setw(PCI_EXP_DEVCTL2, NO_VIRT, ~PCI_EXP_DEVCTL2_ARI & 0xFFFF)
    return p


def vfio_af_config_write(vdev, pos, count, perm, offset, val):
    """vfio_af_config_write() (:969)."""
    ctrl = pos - offset + PCI_AF_CTRL
    count = vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if count < 0:
        return count
    if vdev.vconfig[ctrl] & PCI_AF_CTRL_FLR:
        vdev.vconfig[ctrl] &= ~PCI_AF_CTRL_FLR & 0xFF
        cap = vdev.pdev.read_config(pos - offset + PCI_AF_CAP, 1)
        if cap & PCI_AF_CAP_FLR and cap & PCI_AF_CAP_TP:
            vdev.reset_function()
    return count


def init_pci_cap_af_perm() -> PermBits:
    p = PermBits(PCI_CAP_AF_SIZEOF, writefn=vfio_af_config_write)
    p.setb(PCI_CAP_LIST_NEXT, 0xFF, NO_WRITE)
    p.setb(PCI_AF_CTRL, PCI_AF_CTRL_FLR, PCI_AF_CTRL_FLR)
    return p


def init_pci_ext_cap_err_perm() -> PermBits:
    """init_pci_ext_cap_err_perm() (:1022)."""
    p = PermBits(PCI_EXT_CAP_LENGTH[PCI_EXT_CAP_ID_ERR])
    p.setd(0, ALL_VIRT, NO_WRITE)
    unc = (0x00000001 | 0x00000010 | 0x00000020 | 0x00001000 | 0x00002000 | 0x00004000 | 0x00008000
           | 0x00010000 | 0x00020000 | 0x00040000 | 0x00080000 | 0x00100000 | 0x00200000 | 0x00400000
           | 0x00800000 | 0x01000000 | 0x02000000)
    for off in (PCI_ERR_UNCOR_STATUS, PCI_ERR_UNCOR_MASK, PCI_ERR_UNCOR_SEVER):
        p.setd(off, NO_VIRT, unc)
    cor = 0x00000001 | 0x00000040 | 0x00000080 | 0x00000100 | 0x00001000 | 0x00002000 | 0x00004000 | 0x00008000
    p.setd(PCI_ERR_COR_STATUS, NO_VIRT, cor)
    p.setd(PCI_ERR_COR_MASK, NO_VIRT, cor)
    p.setd(PCI_ERR_CAP, NO_VIRT, 0x00000040 | 0x00000100)
    return p


def init_pci_ext_cap_pwr_perm() -> PermBits:
    p = PermBits(0x10)
    p.setd(0, ALL_VIRT, NO_WRITE)
    p.setb(PCI_PWR_DATA, NO_VIRT, 0xFF)
    return p


def vfio_pci_init_perm_bits():
    """vfio_pci_init_perm_bits() (:1105): the shared tables, default read-only direct."""
    cap = [PermBits(readfn=vfio_direct_config_read) for _ in range(PCI_CAP_ID_MAX + 1)]
    ecap = [PermBits(readfn=vfio_direct_config_read) for _ in range(PCI_EXT_CAP_ID_MAX + 1)]
    cap[PCI_CAP_ID_BASIC] = init_pci_cap_basic_perm()
    cap[PCI_CAP_ID_PM] = init_pci_cap_pm_perm()
    cap[PCI_CAP_ID_VPD] = init_pci_cap_vpd_perm()
    cap[PCI_CAP_ID_PCIX] = init_pci_cap_pcix_perm()
    cap[PCI_CAP_ID_VNDR].writefn = vfio_raw_config_write
    cap[PCI_CAP_ID_EXP] = init_pci_cap_exp_perm()
    cap[PCI_CAP_ID_AF] = init_pci_cap_af_perm()
    ecap[PCI_EXT_CAP_ID_ERR] = init_pci_ext_cap_err_perm()
    ecap[PCI_EXT_CAP_ID_PWR] = init_pci_ext_cap_pwr_perm()
    ecap[PCI_EXT_CAP_ID_VNDR].writefn = vfio_raw_config_write
    ecap[PCI_EXT_CAP_ID_DVSEC].writefn = vfio_raw_config_write
    return cap, ecap


CAP_PERMS, ECAP_PERMS = vfio_pci_init_perm_bits()
DIRECT_RO_PERMS = PermBits(readfn=vfio_direct_config_read)
UNASSIGNED_PERMS = PermBits(readfn=vfio_raw_config_read, writefn=vfio_raw_config_write)
VIRT_PERMS = PermBits(readfn=vfio_virt_config_read, writefn=vfio_virt_config_write)


def vfio_find_cap_start(vdev, pos: int) -> int:
    """vfio_find_cap_start() (:1132)."""
    base = PCI_CFG_SPACE_SIZE if pos >= PCI_CFG_SPACE_SIZE else PCI_STD_HEADER_SIZEOF
    cap = vdev.pci_config_map[pos]
    if cap == PCI_CAP_ID_BASIC:
        return 0
    while pos - 1 >= base and vdev.pci_config_map[pos - 1] == cap:
        pos -= 1
    return pos


def vfio_msi_config_read(vdev, pos, count, perm, offset):
    """vfio_msi_config_read() (:1149): the flags show the vectors vfio enabled (msi_qmax)."""
    if offset <= PCI_MSI_FLAGS and offset + count >= PCI_MSI_FLAGS:
        start = vfio_find_cap_start(vdev, pos)
        # as the kernel writes it: the flags word at the capability's start (its ID and next)
        f = _le(vdev.vconfig, start, 2)
        _put(vdev.vconfig, start, 2, (f & ~PCI_MSI_FLAGS_QMASK) | (vdev.msi_qmax << 1))
    return vfio_default_config_read(vdev, pos, count, perm, offset)


def vfio_msi_config_write(vdev, pos, count, perm, offset, val):
    """vfio_msi_config_write() (:1169): the enable is vfio's (SET_IRQS), the queue size at most
    what it enabled; the fixed-up flags go to the hardware too."""
    count = vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if count < 0:
        return count
    if offset <= PCI_MSI_FLAGS and offset + count >= PCI_MSI_FLAGS:
        start = vfio_find_cap_start(vdev, pos)
        flags = _le(vdev.vconfig, start + PCI_MSI_FLAGS, 2)
        if vdev.irq_type != VFIO_PCI_MSI_IRQ_INDEX:
            flags &= ~PCI_MSI_FLAGS_ENABLE
        if (flags & PCI_MSI_FLAGS_QSIZE) >> 4 > vdev.msi_qmax:
            flags = (flags & ~PCI_MSI_FLAGS_QSIZE) | (vdev.msi_qmax << 4)
        _put(vdev.vconfig, start + PCI_MSI_FLAGS, 2, flags)
        vdev.pdev.write_config(start + PCI_MSI_FLAGS, 2, flags)
    return count


def init_pci_cap_msi_perm(length: int, flags: int) -> PermBits:
    """init_pci_cap_msi_perm() (:1215)."""
    p = PermBits(length, vfio_msi_config_read, vfio_msi_config_write)
    p.setb(PCI_CAP_LIST_NEXT, 0xFF, NO_WRITE)
    p.setb(PCI_MSI_FLAGS, 0xFF, 0xFF)
    p.setd(PCI_MSI_ADDRESS_LO, ALL_VIRT, ALL_WRITE)
    if flags & PCI_MSI_FLAGS_64BIT:
        p.setd(PCI_MSI_ADDRESS_HI, ALL_VIRT, ALL_WRITE)
        p.setw(PCI_MSI_DATA_64, 0xFFFF, 0xFFFF)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            p.setd(PCI_MSI_MASK_64, NO_VIRT, ALL_WRITE)
            p.setd(PCI_MSI_PENDING_64, NO_VIRT, ALL_WRITE)
    else:
        p.setw(PCI_MSI_DATA_32, 0xFFFF, 0xFFFF)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            p.setd(PCI_MSI_MASK_32, NO_VIRT, ALL_WRITE)
            p.setd(PCI_MSI_PENDING_32, NO_VIRT, ALL_WRITE)
    return p


def vfio_msi_cap_len(vdev, pos: int) -> int:
    """vfio_msi_cap_len() (:1249): 10, 14, 20 or 24 bytes; the device's MSI perms on first use."""
    flags = vdev.pdev.read_config(pos + PCI_MSI_FLAGS, 2)
    length = 10 + (4 if flags & PCI_MSI_FLAGS_64BIT else 0) + (10 if flags & PCI_MSI_FLAGS_MASKBIT else 0)
    if vdev.msi_perm is None:
        vdev.msi_perm = init_pci_cap_msi_perm(length, flags)
    return length


def vfio_vc_cap_len(vdev, pos: int) -> int:
    """vfio_vc_cap_len() (:1283)."""
    pdev = vdev.pdev
    evcc = pdev.read_config(pos + PCI_VC_PORT_CAP1, 4) & PCI_VC_CAP1_EVCC
    tmp = pdev.read_config(pos + PCI_VC_PORT_CAP2, 4)
    phases = 128 if tmp & PCI_VC_CAP2_128_PHASE else 64 if tmp & PCI_VC_CAP2_64_PHASE else \
        32 if tmp & PCI_VC_CAP2_32_PHASE else 0
    vc_arb = phases * 4
    length = PCI_CAP_VC_BASE_SIZEOF + (1 + evcc) * PCI_CAP_VC_PER_VC_SIZEOF
    if vc_arb:
        length = _round_up(length, 16) + vc_arb // 8
    return length


def vfio_cap_len(vdev, cap: int, pos: int) -> int:
    """vfio_cap_len() (:1324): the variable-length capabilities; an unknown one is hidden (0)."""
    pdev = vdev.pdev
    if cap == PCI_CAP_ID_MSI:
        return vfio_msi_cap_len(vdev, pos)
    if cap == PCI_CAP_ID_PCIX:
        word = pdev.read_config(pos + PCI_X_CMD, 2)
        if (word >> 12) & 3:
            if pdev.cfg_size > PCI_CFG_SPACE_SIZE:
                vdev.extended_caps = pdev.read_config(PCI_CFG_SPACE_SIZE, 4) != 0
            return PCI_CAP_PCIX_SIZEOF_V2
        return PCI_CAP_PCIX_SIZEOF_V0
    if cap == PCI_CAP_ID_VNDR:
        return pdev.read_config(pos + PCI_CAP_FLAGS, 1)
    if cap == PCI_CAP_ID_EXP:
        if pdev.cfg_size > PCI_CFG_SPACE_SIZE:
            vdev.extended_caps = pdev.read_config(PCI_CFG_SPACE_SIZE, 4) != 0
        flags = pdev.read_config(pos + PCI_EXP_FLAGS, 2)
        rc_end = (flags & PCI_EXP_FLAGS_TYPE) >> 4 == PCI_EXP_TYPE_RC_END
        if flags & PCI_EXP_FLAGS_VERS == 1:
            return 0xC if rc_end else PCI_CAP_EXP_ENDPOINT_SIZEOF_V1
        return 0x2C if rc_end else PCI_CAP_EXP_ENDPOINT_SIZEOF_V2
    if cap == PCI_CAP_ID_HT:
        byte = pdev.read_config(pos + 3, 1)
        return HT_CAP_SIZEOF_SHORT if byte & HT_3BIT_CAP_MASK else HT_CAP_SIZEOF_LONG
    if cap == PCI_CAP_ID_SATA:
        byte = pdev.read_config(pos + PCI_SATA_REGS, 1) & PCI_SATA_REGS_MASK
        return PCI_SATA_SIZEOF_LONG if byte == PCI_SATA_REGS_INLINE else PCI_SATA_SIZEOF_SHORT
    vdev.log.append(f"vfio_cap_len: unknown length for PCI cap {cap:#x}@{pos:#x}")
    return 0


def vfio_ext_cap_len(vdev, ecap: int, epos: int) -> int:
    """vfio_ext_cap_len() (:1399)."""
    pdev = vdev.pdev
    if ecap == PCI_EXT_CAP_ID_VNDR:
        return (pdev.read_config(epos + PCI_VNDR_HEADER, 4) >> 20) & 0xFFF
    if ecap in (PCI_EXT_CAP_ID_VC, PCI_EXT_CAP_ID_VC9, PCI_EXT_CAP_ID_MFVC):
        return vfio_vc_cap_len(vdev, epos)
    if ecap == PCI_EXT_CAP_ID_ACS:
        if pdev.read_config(epos + PCI_ACS_CAP, 1) & PCI_ACS_EC:
            byte = pdev.read_config(epos + PCI_ACS_EGRESS_BITS, 1)
            bits = _round_up(byte, 32) if byte else 256
            return 8 + bits // 8
        return 8
    if ecap == PCI_EXT_CAP_ID_REBAR:
        byte = pdev.read_config(epos + PCI_REBAR_CTRL, 1)
        return 4 + ((byte & PCI_REBAR_CTRL_NBAR_MASK) >> PCI_REBAR_CTRL_NBAR_SHIFT) * 8
    if ecap == PCI_EXT_CAP_ID_DPA:
        return PCI_DPA_BASE_SIZEOF + (pdev.read_config(epos + PCI_DPA_CAP, 1) & PCI_DPA_CAP_SUBSTATE_MASK) + 1
    if ecap == PCI_EXT_CAP_ID_TPH:
        dword = pdev.read_config(epos + PCI_TPH_CAP, 4)
        if dword & PCI_TPH_CAP_LOC_MASK == PCI_TPH_LOC_CAP:
            return PCI_TPH_BASE_SIZEOF + ((dword & PCI_TPH_CAP_ST_MASK) >> PCI_TPH_CAP_ST_SHIFT) * 2 + 2
        return PCI_TPH_BASE_SIZEOF
    if ecap == PCI_EXT_CAP_ID_DVSEC:
        return (pdev.read_config(epos + PCI_DVSEC_HEADER1, 4) >> 20) & 0xFFF
    vdev.log.append(f"vfio_ext_cap_len: unknown length for PCI ecap {ecap:#x}@{epos:#x}")
    return 0


def vfio_update_pm_vconfig_bytes(vdev, offset: int) -> None:
    """vfio_update_pm_vconfig_bytes() (:1479): PME support, status and enable read as clear."""
    pmc = _le(vdev.vconfig, offset + PCI_PM_PMC, 2)
    _put(vdev.vconfig, offset + PCI_PM_PMC, 2, pmc & ~PCI_PM_CAP_PME_MASK)
    ctrl = _le(vdev.vconfig, offset + PCI_PM_CTRL, 2)
    _put(vdev.vconfig, offset + PCI_PM_CTRL, 2, ctrl & ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS))


def vfio_fill_vconfig_bytes(vdev, offset: int, size: int) -> None:
    """vfio_fill_vconfig_bytes() (:1490): vconfig from the hardware, dwords where aligned."""
    while size:
        n = 4 if size >= 4 and not offset % 4 else 2 if size >= 2 and not offset % 2 else 1
        _put(vdev.vconfig, offset, n, vdev.pdev.read_config(offset, n))
        offset += n
        size -= n


def vfio_cap_init(vdev) -> None:
    """vfio_cap_init() (:1537): walk the chain; each known capability's bytes are mapped to it
    and copied to vconfig; an unknown or hidden one is skipped in the virtual chain."""
    pdev, cmap = vdev.pdev, vdev.pci_config_map
    if not pdev.read_config(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST:
        return
    pos = pdev.read_config(PCI_CAPABILITY_LIST, 1)
    prev = PCI_CAPABILITY_LIST
    loops = (PCI_CFG_SPACE_SIZE - PCI_STD_HEADER_SIZEOF) // PCI_CAP_SIZEOF
    caps = 0
    while pos and loops:
        loops -= 1
        cap = pdev.read_config(pos, 1)
        nxt = pdev.read_config(pos + PCI_CAP_LIST_NEXT, 1)
        length = 0
        if cap and cap <= PCI_CAP_ID_MAX:
            length = PCI_CAP_LENGTH.get(cap, 0)
            if length == 0xFF:
                length = vfio_cap_len(vdev, cap, pos)
        if not length:
            vdev.vconfig[prev] = nxt  # hiding the capability
            pos = nxt
            continue
        for i in range(length):
            if pos + i < len(cmap) and cmap[pos + i] != PCI_CAP_ID_INVALID:
                vdev.log.append(f"vfio_cap_init: PCI config conflict @{pos + i:#x}, was cap {cmap[pos + i]:#x} "
                                f"now cap {cap:#x}")
        end = min(pos + length, len(cmap))
        cmap[pos:end] = bytes([cap]) * (end - pos)
        vfio_fill_vconfig_bytes(vdev, pos, end - pos)
        if cap == PCI_CAP_ID_PM:
            vfio_update_pm_vconfig_bytes(vdev, pos)
        prev = pos + PCI_CAP_LIST_NEXT
        pos = nxt
        caps += 1
    if not caps:
        _put(vdev.vconfig, PCI_STATUS, 2, _le(vdev.vconfig, PCI_STATUS, 2) & ~PCI_STATUS_CAP_LIST)


def vfio_ecap_init(vdev) -> None:
    """vfio_ecap_init() (:1630): the extended chain likewise; a hidden first capability stays as
    an anchor with its ID hidden; no real one leaves the header 0."""
    pdev, cmap = vdev.pdev, vdev.pci_config_map
    if not vdev.extended_caps:
        return
    epos = PCI_CFG_SPACE_SIZE
    prev = None
    loops = (pdev.cfg_size - PCI_CFG_SPACE_SIZE) // PCI_CAP_SIZEOF
    ecaps = 0
    while loops and epos >= PCI_CFG_SPACE_SIZE:
        loops -= 1
        header = pdev.read_config(epos, 4)
        ecap = header & 0xFFFF
        length, hidden = 0, False
        if ecap <= PCI_EXT_CAP_ID_MAX:
            length = PCI_EXT_CAP_LENGTH.get(ecap, 0)
            if length == 0xFF:
                length = vfio_ext_cap_len(vdev, ecap, epos)
        if not length:
            if prev is not None:
                val = epos = (header >> 20) & 0xFFC
                v = _le(vdev.vconfig, prev, 4)
                _put(vdev.vconfig, prev, 4, (v & ~(0xFFC << 20)) | (val << 20))
                continue
            length, hidden = PCI_CAP_SIZEOF, True
        end = min(epos + length, len(cmap))
        cmap[epos:end] = bytes([ecap & 0xFF]) * (end - epos)
        vfio_fill_vconfig_bytes(vdev, epos, end - epos)
        if hidden:
            _put(vdev.vconfig, epos, 4, _le(vdev.vconfig, epos, 4) & (0xFFC << 20))
        else:
            ecaps += 1
        prev = epos
        epos = (header >> 20) & 0xFFC
    if not ecaps:
        _put(vdev.vconfig, PCI_CFG_SPACE_SIZE, 4, 0)


def vfio_config_init(vdev) -> None:
    """vfio_config_init() (:1750): the map (header BASIC, the rest unassigned until a capability
    claims it), vconfig's header from the hardware, the saved BARs, the interrupt pin hidden
    without an IRQ, then the capabilities."""
    pdev = vdev.pdev
    vdev.pci_config_map = bytearray([PCI_CAP_ID_BASIC]) * PCI_STD_HEADER_SIZEOF + \
        bytearray([PCI_CAP_ID_INVALID]) * (pdev.cfg_size - PCI_STD_HEADER_SIZEOF)
    vdev.vconfig = bytearray(pdev.cfg_size)
    vfio_fill_vconfig_bytes(vdev, 0, PCI_STD_HEADER_SIZEOF)
    vdev.bardirty = True
    vdev.rbar = [_le(vdev.vconfig, PCI_BASE_ADDRESS_0 + 4 * i, 4) for i in range(6)] + \
        [_le(vdev.vconfig, PCI_ROM_ADDRESS, 4)]
    if vdev.nointx or not pdev.irq:  # CONFIG_VFIO_PCI_INTX=y
        vdev.vconfig[PCI_INTERRUPT_PIN] = 0
    vfio_cap_init(vdev)
    vfio_ecap_init(vdev)


def vfio_pci_cap_remaining_dword(vdev, pos: int) -> int:
    """vfio_pci_cap_remaining_dword() (:1872)."""
    cap = vdev.pci_config_map[pos]
    i = 1
    while (pos + i) % 4 and vdev.pci_config_map[pos + i] == cap:
        i += 1
    return i


def vfio_pci_config_rw_single(vdev, mem, buf: int, count: int, pos: int, iswrite: bool) -> int:
    """vfio_pci_config_rw_single() (:1884): one aligned piece of one capability; the bytes from
    or to user memory at `buf`. Returns the count done or -errno."""
    pdev = vdev.pdev
    if pos < 0 or pos >= pdev.cfg_size or pos + count > pdev.cfg_size:
        return -errno.EFAULT
    count = min(count, vfio_pci_cap_remaining_dword(vdev, pos))
    count = 4 if count >= 4 and not pos % 4 else 2 if count >= 2 and not pos % 2 else 1
    ret = count
    cap_id = vdev.pci_config_map[pos]
    cap_start = 0
    if cap_id == PCI_CAP_ID_INVALID:
        perm, cap_start = UNASSIGNED_PERMS, pos
    elif cap_id == PCI_CAP_ID_INVALID_VIRT:
        perm, cap_start = VIRT_PERMS, pos
    elif pos >= PCI_CFG_SPACE_SIZE:
        perm = DIRECT_RO_PERMS if cap_id > PCI_EXT_CAP_ID_MAX else ECAP_PERMS[cap_id]
        cap_start = vfio_find_cap_start(vdev, pos)
    else:
        perm = vdev.msi_perm if cap_id == PCI_CAP_ID_MSI else CAP_PERMS[cap_id]
        if cap_id > PCI_CAP_ID_BASIC:
            cap_start = vfio_find_cap_start(vdev, pos)
    offset = pos - cap_start
    if iswrite:
        if perm.writefn is None:
            return ret
        try:
            val = int.from_bytes(copy_from_user(mem, buf, count), "little")
        except IommufdError:
            return -errno.EFAULT
        return perm.writefn(vdev, pos, count, perm, offset, val)
    val = 0
    if perm.readfn is not None:
        ret, val = perm.readfn(vdev, pos, count, perm, offset)
        if ret < 0:
            return ret
    try:
        copy_to_user(mem, buf, val.to_bytes(count, "little"))
    except IommufdError:
        return -errno.EFAULT
    return ret


def vfio_pci_config_rw(vdev, mem, buf: int, count: int, ppos: int, iswrite: bool) -> int:
    """vfio_pci_config_rw() (:1977): piece by piece; the first failure is the answer (what was
    done before it stays done). Returns the bytes done; IommufdError with the errno."""
    done = 0
    pos = ppos & ((1 << 40) - 1)  # VFIO_PCI_OFFSET_MASK
    while count:
        ret = vfio_pci_config_rw_single(vdev, mem, buf, count, pos, iswrite)
        if ret < 0:
            raise IommufdError(-ret)
        count -= ret
        done += ret
        buf += ret
        pos += ret
    return done
