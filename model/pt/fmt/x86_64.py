"""x86-64 long-mode page table entries, VT-d's first stage (drivers/iommu/generic_pt/fmt/x86_64.h;
Intel SDM Vol. 3A 4.5 "4-Level Paging and 5-Level Paging", tables 4-15 to 4-20; VT-d
specification 3.6 "First-Stage Translation" and 9.7 "First-Stage Paging Entries").

Which domains use it (drivers/iommu/intel/iommu.c, Linux 7.2.13):
- intel_iommu_domain_alloc_paging_flags() prefers it ("Prefer first stage if possible by
  default", iommu.c:3013-3015): intel_iommu_domain_alloc_first_stage() (iommu.c:2845) makes it
  when the unit runs in scalable mode with first-stage translation (sm_supported &&
  ecap_flts, iommu.c:2856; intel_iommu_sm is CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON or
  intel_iommu=sm_on, iommu.c:206, 270) and the allocation asks for nothing but
  IOMMU_HWPT_ALLOC_PASID (iommu.c:2852). Any other flag (NEST_PARENT, DIRTY_TRACKING) or a
  legacy-mode unit gets the second stage (fmt/vtdss.py).
- Not under QEMU 7.2's intel-iommu: its ecap has no FLTS (bit 47) even with
  x-scalable-mode=on (fmt/vtdss.py says what it measures). QEMU's x-flts=on (newer QEMUs) is
  what makes a unit offer it.
- domain config (iommu.c:2863-2891): hw_max_vasz_lg2 from compute_vasz_lg2_fs()
  (iommu.c:2822-2842): 57 with 5 levels (top level 4) when MGAW > 48 and cap FL5LP, else 48
  with 4 levels (top level 3); hw_max_oasz_lg2 52; PT_FEAT_SIGN_EXTEND | PT_FEAT_FLUSH_RANGE;
  pgsize_bitmap without 1G unless cap FL1GP (bit 56), 4K only with intel_iommu=sp_off.
- PT_FEAT_SIGN_EXTEND (pt_iter.h:28-46, 231-237): the domain's aperture is the lower half,
  [0, 2^(vasz-1) - 1]; a range starting in [2^(vasz-1), 2^vasz) is -ERANGE (its prefix would
  have to be all ones); one starting below 2^(vasz-1) may end below 2^vasz. The upper half
  (addresses from 2^64 - 2^(vasz-1)) is outside the aperture and outside the model's int64.
- No dirty tracking: x86_64.h defines no pt_entry_is_write_dirty() (pt_fmt_defaults.h:61-75),
  so the first-stage domain has no dirty ops; the kernel instead sets A and D on every map
  (x86_64_pt_iommu_set_prot(), x86_64.h:222-224) so the walker never has to write them.

A 64-bit entry (SDM 4.5, tables 4-15..4-20; VT-d 9.7):
- P (bit 0) present: without it the entry is empty (x86_64_pt_load_entry_raw(), x86_64.h:116);
- R/W (bit 1): writes allowed; reads are allowed by every present entry (x86 has no read bit),
  so a write-only map reads back as read-write;
- U/S (bit 2): user-mode access allowed; the kernel sets it on every entry (x86_64.h:153, 222);
- A (bit 5) accessed: set on every entry the kernel writes (x86_64.h:153, 222);
- D (bit 6) dirty: set on writable leaves at map (x86_64.h:224);
- PS (bit 7) in a PDPTE or PDE: a 1 GiB or 2 MiB page (x86_64.h:118-120, 139-140); PML4E and
  PML5E are always table pointers, the PTE always a leaf;
- ADDR (bits 51:12, X86_64_FMT_OA): the page frame or next table >> 12 (in a 2M/1G leaf bits
  12 (PAT) up to 20/29 are then zero by alignment; the kernel leaves PAT clear);
- XD (bit 63): never set by the iommu path;
- a table pointer is P | R/W | U/S | A | ADDR (x86_64_pt_install_table(), x86_64.h:153-154).
Levels: 512 items of 8 bytes per 4 KiB table (x86_64.h:104-108); leaves at levels 0-2
(x86_64_pt_can_have_leaf(), x86_64.h:98-102): 4 KiB, 2 MiB, 1 GiB; no contiguous replicas; top
level 3 or 4 (x86_64.h:245).

These functions are numba-jitted, take plain integers, and never raise.
"""
from __future__ import annotations

from numba import njit

# SDM 4.5 tables 4-15..4-20 / x86_64.h:60-74
P = 1 << 0
RW = 1 << 1
U = 1 << 2
A = 1 << 5
D = 1 << 6
PS = 1 << 7
XD = 1 << 63
OA_SHIFT = 12
OA_MASK = ((1 << 52) - 1) & ~((1 << 12) - 1)  # GENMASK_ULL(51, 12)

# entry types (enum pt_entry_type), as fmt/amdv1.py
EMPTY, TABLE, OA = 0, 1, 2

# x86_64.h:45-58
MAX_OUTPUT_ADDRESS_LG2 = 52
MAX_VA_ADDRESS_LG2 = 57
MAX_TOP_LEVEL = 4
MIN_TOP_LEVEL = 3  # x86_64_pt_iommu_fmt_init(): top_level 3..4 (x86_64.h:245)
GRANULE_LG2SZ = 12
TABLEMEM_LG2SZ = 12
ITEMS_LG2 = 9
MAX_LEAF_LEVEL = 2  # x86_64_pt_can_have_leaf()

# include/linux/iommu.h: the prot bits entry_prot() answers in (model.domain.IOMMU_READ/WRITE)
_IOMMU_READ, _IOMMU_WRITE = 1, 2


@njit(cache=True, inline="always")
def entry_type(e, level):
    """x86_64_pt_load_entry_raw() (x86_64.h:110-122): EMPTY without P; a leaf at level 0, or at
    levels 1-2 with PS; anything else a table pointer."""
    if not e & P:
        return EMPTY
    if level == 0 or (level <= MAX_LEAF_LEVEL and (e & PS) != 0):
        return OA
    return TABLE


@njit(cache=True, inline="always")
def entry_lg2sz(e, isz_lg2, granule_lg2):
    """No contiguous entries (pt_fmt_defaults.h:46-59): a leaf is its level's item."""
    return isz_lg2


@njit(cache=True, inline="always")
def entry_oa(e, lg2sz, granule_lg2):
    """x86_64_pt_entry_oa() (x86_64.h:87-95; no AMD memory encryption): ADDR << 12."""
    return ((e & OA_MASK) >> OA_SHIFT) << GRANULE_LG2SZ


@njit(cache=True, inline="always")
def leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write):
    """x86_64_pt_install_leaf_entry() (x86_64.h:136-140) with x86_64_pt_iommu_set_prot()'s
    descriptor bits (x86_64.h:222-224): P | ADDR | U | A, R/W | D when writable, PS above
    level 0. A read-only map is P | U | A (reads need no bit)."""
    e = P | (((oa >> GRANULE_LG2SZ) << OA_SHIFT) & OA_MASK) | U | A
    if prot_write:
        e |= RW | D
    if isz_lg2 != granule_lg2:  # pts->level != 0
        e |= PS
    return e


@njit(cache=True, inline="always")
def table_entry(table_pa, level, granule_lg2):
    """x86_64_pt_install_table() (x86_64.h:153-154): P | R/W | U | A | ADDR."""
    return P | RW | U | A | (((table_pa >> GRANULE_LG2SZ) << OA_SHIFT) & OA_MASK)


@njit(cache=True, inline="always")
def table_pa(e, granule_lg2):
    """x86_64_pt_table_pa() (x86_64.h:76-84)."""
    return ((e & OA_MASK) >> OA_SHIFT) << TABLEMEM_LG2SZ


@njit(cache=True, inline="always")
def entry_prot(e):
    """The IOMMU_READ / IOMMU_WRITE a leaf grants: every present entry reads; R/W writes."""
    p = _IOMMU_READ
    if e & RW:
        p |= _IOMMU_WRITE
    return p


@njit(cache=True, inline="always")
def leaf_sizes(level, granule_lg2, top_level):
    """pt_possible_sizes() default (pt_fmt_defaults.h:147-159): the item size at levels 0-2."""
    if level > MAX_LEAF_LEVEL:
        return 0
    return 1 << (granule_lg2 + ITEMS_LG2 * level)


def describe(e: int, level: int) -> str:
    """An entry in the SDM's fields (plain Python, for messages)."""
    kind = ("PTE", "PDE", "PDPTE", "PML4E", "PML5E")[level]
    bits = [n for n, b in (("P", P), ("R/W", RW), ("U/S", U), ("A", A), ("D", D), ("PS", PS), ("XD", XD))
            if e & b]
    return f"L{level} {kind} {e & ((1 << 64) - 1):#018x} ADDR={e & OA_MASK:#x} {' '.join(bits)}"
