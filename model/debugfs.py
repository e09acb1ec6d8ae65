"""intel-iommu's debugfs page-table dump (drivers/iommu/intel/debugfs.c, Linux 7.2.13):
/sys/kernel/debug/iommu/intel/<BDF>/domain_translation_struct, rendered from the model's own
page table when the file is opened (seq_file's single_open: the text is made at open and read
from then on), as tools/testing/selftests/vfio/vfio_dma_mapping_test.c reads it.

domain_translation_struct_show() (debugfs.c:345-474) for a device without a PASID:
- nothing at all when the device's context or PASID entry is not present (debugfs.c:393-415:
  `goto iommu_unlock`): a device that is attached to no paging domain (the blocking domain
  clears its PASID entry: intel_pasid_tear_down_entry());
- else "Device %04x:%02x:%02x.%x " then, in scalable mode, "with pasid %x @0x%llx\\n" of the
  PASID and the page table's address (legacy mode: "@0x%llx\\n"), the header
  "%-17s\\t%-18s\\t%-18s\\t%-18s\\t%-18s\\t%-s\\n" of IOVA_PFN PML5E PML4E PDPE PDE PTE, and one
  line per present leaf from pgtable_walk_level(agaw + 2) (debugfs.c:321-343): in IOVA order,
  an entry is present when (val & 3) != 0 (dma_pte_present(), intel/iommu.h:855), a leaf when
  it is at level 1 or has bit 7 (dma_pte_superpage(), iommu.h:860), its child table at
  val & VTD_PAGE_MASK;
- each leaf line is dump_page_info() (debugfs.c:308-319): "0x%013lx |\\t0x%016llx\\t0x%016llx
  \\t0x%016llx" of the IOVA's page frame and the entries met at levels 5, 4 and 3 (0 above the
  table's top), then "\\t0x%016llx" of the level-2 entry if it is not 0, and of the level-1
  entry after it if that is not 0, then "\\n".

The entries are the model's raw entries (model/pt): the table pointers' addresses are the
model's (its tables are numbered, not placed in memory), so they are not the kernel's numbers,
but each field is zero exactly where the kernel's is.
"""
from __future__ import annotations

import numpy as np

from model.pt import fmt as _fmt
from model.pt import walk

VTD_PAGE_SHIFT = 12
VTD_STRIDE_SHIFT = 9
IOMMU_NO_PASID = 0


def _bdf_fields(bdf: str) -> tuple[int, int, int, int]:
    seg, bus, devfn = bdf.split(":")
    dev, fn = devfn.split(".")
    return int(seg, 16), int(bus, 16), int(dev, 16), int(fn, 16)


def walk_lines(table) -> list[str]:
    """pgtable_walk_level() from the top of the model's table `table` (model/pt/table.py
    IoPageTable): the leaf lines, in IOVA order."""
    f, g = int(table.meta[walk.M_FMT]), int(table.meta[walk.M_GRANULE])
    top = int(table.meta[walk.M_TOP]) + 1  # the kernel counts levels from 1: agaw + 2
    path = [0] * 6
    out: list[str] = []

    def level_walk(row: int, level: int, start: int) -> None:
        if level > 5 or level < 1:
            return
        entries = table.tables[row]
        size_lg2 = VTD_PAGE_SHIFT + VTD_STRIDE_SHIFT * (level - 1)  # level_to_directory_size()
        for i in np.nonzero(entries & 3)[0]:  # dma_pte_present()
            val = int(entries[i]) & 0xFFFFFFFFFFFFFFFF
            iova = start + (int(i) << size_lg2)
            path[level] = val
            if val & (1 << 7) or level == 1:  # dma_pte_superpage()
                line = (f"0x{iova >> VTD_PAGE_SHIFT:013x} |\t0x{path[5]:016x}\t0x{path[4]:016x}"
                        f"\t0x{path[3]:016x}")
                if path[2]:
                    line += f"\t0x{path[2]:016x}"
                    if path[1]:
                        line += f"\t0x{path[1]:016x}"
                out.append(line + "\n")
            else:
                child = int(_fmt.table_pa(f, int(entries[i]), g)) >> _fmt.TABLEMEM_LG2SZ
                level_walk(child, level - 1, iova)
            path[level] = 0

    level_walk(0, top, 0)
    return out


def intel_domain_translation_struct(bdf: str, table, pasid: int = IOMMU_NO_PASID, scalable: bool = True,
                                    pgd: int = 0) -> str:
    """The text of /sys/kernel/debug/iommu/intel/<bdf>/domain_translation_struct: `table` is the
    page table of the paging domain the device (its `pasid`) is attached to, None when it is
    attached to none (the PASID entry is not present: the file is empty); `scalable`: the unit
    runs in scalable mode (the `vtd` profile's intel_iommu=sm_on); `pgd`: the table's address
    as the PASID entry holds it."""
    if table is None:
        return ""
    seg, bus, dev, fn = _bdf_fields(bdf)
    head = f"Device {seg:04x}:{bus:02x}:{dev:02x}.{fn:x} "
    head += f"with pasid {pasid:x} @0x{pgd:x}\n" if scalable else f"@0x{pgd:x}\n"
    head += "%-17s\t%-18s\t%-18s\t%-18s\t%-18s\t%-s\n" % ("IOVA_PFN", "PML5E", "PML4E", "PDPE", "PDE", "PTE")
    return head + "".join(walk_lines(table))
