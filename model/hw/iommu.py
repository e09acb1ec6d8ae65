"""A PCI function's DMA through the machine's IOMMU unit: the bus-master address space of QEMU
(pci_dma_rw() -> the bus_master_enable_region alias -> the vIOMMU's translation region ->
system memory), the unit walking the page table of the domain its driver attached, and the
report the kernel prints for a request the unit blocked.

Per 4 KiB page of a transfer: the attached domain (the platform device's `domain`, an
IommuDomain whose ops are a model/pt table) is walked as the hardware walks it
(IoPageTable.translate(): the leaf's address and the R/W bits it grants); a request the leaf
grants moves bytes to or from the frame (model/memory.py PhysicalMemory.frame_rw(): the
caller's real pages); any other is blocked: a device read gets zeros (QEMU's unassigned-memory
read), a device write goes nowhere, and the unit reports it.

Without bus mastering nothing leaves the function: QEMU disables the bus-master region, so reads
return zeros and writes vanish before any translation (no fault).

QEMU's units cache a successful walk in their IOTLB and use a hit without checking the access
(intel_iommu.c / amd_iommu.c: the entry's perm goes to the memory core, which drops a write the
entry does not allow, silently). The model keeps that IOTLB: after a read through a read-only
entry, a write to the same page is dropped without a report. An entry is used only while the
table still maps the page the same way (the kernel invalidates the IOTLB when it unmaps or
attaches), so the quirk is the only effect.

Reports go to the machine's fault log (`platform.faults`), one line per fault the kernel would
print, in its driver's words:
- intel-iommu: dmar_fault_do_one() (drivers/iommu/intel/dmar.c:1917-1923), the page address of the
  fault record (dma_frcd_page_addr()), the reason's text (dmar.c:1738-1754, 1756-1823). QEMU's
  unit records at most cap NFR + 1 faults before the kernel's handler runs (a transfer runs whole
  in QEMU's main loop first): later faults of the same transfer overflow (PFO), unreported. The
  PTE dump that follows a fault with CONFIG_DMAR_DEBUG (dmar_fault_dump_ptes()) and the
  "DRHD: handling fault status reg" line are not reproduced.
- amd_iommu: amd_iommu_report_page_fault() (drivers/iommu/amd/iommu.c:857-906) for each blocked
  page: "vfio-pci BDF: AMD-Vi: Event logged [IO_PAGE_FAULT domain=... address=... flags=...]",
  flags EVENT_FLAG_RW (amd_iommu_types.h:160) for a write and PR (0x10, the AMD IOMMU
  specification's IO_PAGE_FAULT event: the entry was present) for a permission fault. A device
  on the blocked domain has no dev_data->domain: "Event logged [Device not attached to domain
  properly]" (iommu.c:877-881). QEMU 7.2's amd-iommu delivers no such event to its guest (the
  VM profile measures that); the model reports what the kernel prints for hardware that does.
"""
from __future__ import annotations

import weakref

from model.domain import IOMMU_READ, IOMMU_WRITE
from model.limits import PAGE_SIZE
from model.objects import NotModelled

# What a walk found for a request: the leaf allows it, or why it is blocked.
OK, NOT_PRESENT, NO_PERMISSION, BEYOND_AW, BLOCKED, SILENT = range(6)

# drivers/iommu/intel/dmar.c:1738-1754 (dma_remap_fault_reasons[]) and 1756 (the SM reasons)
_VTD_REASONS = {
    0x2: "Present bit in context entry is clear",
    0x4: "Access beyond MGAW",
    0x5: "PTE Write access is not set",
    0x6: "PTE Read access is not set",
    0x58: "SM: Error attempting to access PASID Table Entry",
}
VTD_FR_CONTEXT_ENTRY_P, VTD_FR_ADDR_BEYOND_MGAW, VTD_FR_WRITE, VTD_FR_READ = 0x2, 0x4, 0x5, 0x6
VTD_FR_PASID_TABLE_INV = 0x58  # QEMU 7.2 hw/i386/intel_iommu_internal.h: a PASID entry not present
AMD_EVENT_FLAG_RW = 0x020  # drivers/iommu/amd/amd_iommu_types.h:160
AMD_EVENT_FLAG_PR = 0x010  # AMD IOMMU spec, IO_PAGE_FAULT event: PR, the page was present


def _bdf(bdf: str) -> tuple[int, int, int, int]:
    seg, bus, rest = bdf.split(":")
    dev, fn = rest.split(".")
    return int(seg, 16), int(bus, 16), int(dev, 16), int(fn, 16)


def unit_driver(platform) -> str:
    prof = getattr(platform, "profile", None)
    return prof.unit.driver if prof is not None else "intel-iommu"


def unit_registers(platform) -> dict:
    prof = getattr(platform, "profile", None)
    return dict(prof.unit.registers) if prof is not None else {}


def _qemu(platform) -> bool:
    """A machine QEMU emulates (its profile's provenance names the QEMU)."""
    prof = getattr(platform, "profile", None)
    return prof is not None and bool(prof.provenance.get("qemu"))


_DOMAIN_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # domain -> its number
_NEXT_DOMAIN_ID: dict[int, int] = {}  # id(platform) -> the next number


def _domain_id(platform, domain) -> int:
    """The protection domain's ID as the event carries it (DTE[DomainID]): the domain's own when
    its driver model keeps one, else a number per machine from 1 in the order DMA met them (the
    model's; the kernel's pdom_id_alloc() numbers are not observable otherwise)."""
    own = getattr(domain, "id", None)
    if isinstance(own, int):
        return own
    got = _DOMAIN_IDS.get(domain)
    if got is None:
        got = _NEXT_DOMAIN_ID.get(id(platform), 1)
        _NEXT_DOMAIN_ID[id(platform)] = got + 1
        _DOMAIN_IDS[domain] = got
    return got


class BusMaster:
    """A function's bus-master address space (QEMU: pci_get_address_space()) behind its IOMMU."""

    def __init__(self, fn):
        self.fn = fn
        self.memory = None  # the PhysicalMemory the domains' frames are in (the binding driver's)
        self._iotlb: dict[tuple[int, int], tuple[int, int]] = {}  # (id(domain), page) -> (pa page, prot)

    def _memory(self):
        if self.memory is None:
            from model.task import SYSTEM_ACCOUNTS

            return SYSTEM_ACCOUNTS.memory
        return self.memory

    def translate(self, iova: int, write: bool) -> tuple[int, int]:
        """The unit's answer for a request at iova: (OK or why not, physical address)."""
        domain = self.fn.dev.domain
        kind = getattr(domain, "type", None)
        if domain is None or kind == "BLOCKED":
            return BLOCKED, 0
        if kind == "IDENTITY":
            return OK, iova
        ops = getattr(domain, "ops", None)
        if ops is None or not hasattr(ops, "translate"):
            raise NotModelled(f"DMA through a {kind} domain (the model walks paging domains' tables only)")
        from model.pt import walk

        status, pa, prot = ops.translate(iova)
        need = IOMMU_WRITE if write else IOMMU_READ
        page = iova & ~(PAGE_SIZE - 1)
        key = (id(domain), page)
        if status == walk.T_LEAF and prot & need:
            if _qemu(self.fn.platform):
                self._iotlb[key] = (pa & ~(PAGE_SIZE - 1), prot)
            return OK, pa
        cached = self._iotlb.pop(key, None)
        if status == walk.T_LEAF and cached == (pa & ~(PAGE_SIZE - 1), prot):
            self._iotlb[key] = cached
            return SILENT, 0  # an IOTLB hit: the memory core drops it, the unit reports nothing
        if status == walk.T_RANGE:
            return BEYOND_AW, 0
        return (NO_PERMISSION if status == walk.T_LEAF else NOT_PRESENT), 0

    def rw(self, addr: int, n: int, data: bytes | None) -> bytes:
        """pci_dma_rw() of n bytes at bus address addr: `data` written, or the bytes read."""
        write = data is not None
        if not self.fn.bus_master:
            return b"" if write else bytes(n)
        memory = self._memory()
        out, pos, recorded = [], 0, 0
        while pos < n:
            iova = (addr + pos) & ((1 << 64) - 1)
            chunk = min(n - pos, PAGE_SIZE - iova % PAGE_SIZE)
            why, pa = self.translate(iova, write)
            if why == OK:
                if write:
                    memory.frame_rw(pa // PAGE_SIZE, pa % PAGE_SIZE, chunk, data[pos:pos + chunk])
                else:
                    out.append(memory.frame_rw(pa // PAGE_SIZE, pa % PAGE_SIZE, chunk))
            else:
                if why != SILENT:
                    recorded += self.report(iova, write, why, recorded)
                if not write:
                    out.append(bytes(chunk))
            pos += chunk
        return b"".join(out)

    def report(self, iova: int, write: bool, why: int, recorded: int) -> int:
        """The kernel's lines for one blocked request, on the machine's fault log; returns how
        many fault records the unit used (intel-iommu: bounded by cap NFR + 1 per transfer)."""
        platform = self.fn.platform
        faults = getattr(platform, "faults", None)
        if faults is None:
            return 0
        seg, bus, dev, fn = _bdf(self.fn.dev.bdf)
        if unit_driver(platform) == "amd-iommu":
            domain = self.fn.dev.domain
            if why == BLOCKED:
                faults.append("AMD-Vi: Event logged [Device not attached to domain properly]")
                faults.append(f"AMD-Vi:   device={seg:04x}:{bus:02x}:{dev:02x}.{fn:x} domain=0x0000")
                return 1
            flags = (AMD_EVENT_FLAG_RW if write else 0) | (AMD_EVENT_FLAG_PR if why == NO_PERMISSION else 0)
            domid = _domain_id(platform, domain)
            faults.append(f"vfio-pci {self.fn.dev.bdf}: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x{domid:04x} "
                          f"address=0x{iova:x} flags=0x{flags:04x}]")
            return 1
        cap = unit_registers(platform).get("cap", 0)
        if recorded >= ((cap >> 40) & 0xFF) + 1:  # cap_num_fault_regs() (intel/iommu.h): overflow
            return 0
        if why == BLOCKED:
            # device_block_translation() (intel/iommu.c:2757-2763): scalable mode tears the
            # RID_PASID entry down, legacy mode clears the context entry
            sm = getattr(getattr(self.fn.dev, "unit", None), "sm_supported", None)
            if sm is None:
                sm = bool(unit_registers(platform).get("ecap", 0) >> 43 & 1)
            reason = VTD_FR_PASID_TABLE_INV if sm else VTD_FR_CONTEXT_ENTRY_P
        elif why == BEYOND_AW:
            reason = VTD_FR_ADDR_BEYOND_MGAW
        else:
            reason = VTD_FR_WRITE if write else VTD_FR_READ
        page = iova & ~(PAGE_SIZE - 1)  # dma_frcd_page_addr()
        # dmar_fault_do_one() prints the PASID when the record has PP set. QEMU's unit in
        # scalable mode with PASID support records a walk through the RID_PASID entry's table
        # with its PASID, 0 (measured on 7.2.13 under QEMU 7.2: "[DMA Read PASID 0x0] ...");
        # a request it stops before any PASID entry (the blocked case) has none: NO_PASID.
        ecap = unit_registers(platform).get("ecap", 0)
        walked = why != BLOCKED and _qemu(platform) and ecap >> 43 & 1 and ecap >> 40 & 1
        faults.append(f"DMAR: [{'DMA Write' if write else 'DMA Read'} {'PASID 0x0' if walked else 'NO_PASID'}] Request device "
                      f"[{seg:04x}:{bus:02x}:{dev:02x}.{fn:d}] fault addr 0x{page:x} [fault reason 0x{reason:02x}] "
                      f"{_VTD_REASONS[reason]}")
        return 1
