"""Intel VT-d second-stage page table entries (drivers/iommu/generic_pt/fmt/vtdss.h; Intel
Virtualization Technology for Directed I/O Architecture Specification, 3.7 "Second-Stage
Translation" and 9.8 "Second-Stage Paging Entries").

Which domains use it (drivers/iommu/intel/iommu.c, Linux 7.2.13):
- intel_iommu_domain_alloc_paging_flags() (iommu.c:3003) tries the first stage (fmt/x86_64.py)
  and falls back to this one (iommu.c:3013-3017) when the first stage answers -EOPNOTSUPP: the
  unit is in legacy mode or lacks first-stage translation (!sm_supported || !ecap_flts,
  iommu.c:2856), or the allocation asks for anything but IOMMU_HWPT_ALLOC_PASID
  (iommu.c:2852), i.e. NEST_PARENT or DIRTY_TRACKING. Legacy mode always has it; scalable mode
  needs ecap SLTS (iommu.c:2947).
- Under QEMU 7.2's intel-iommu with x-scalable-mode=on (conformance/vm.py's `vtd` profile) the
  measured ecap 0x0000490080f00fca has SMTS (bit 43) and SLTS (bit 46) but not FLTS (bit 47;
  intel/iommu.h:191-195): every paging domain iommufd makes there is this format. Its cap
  0x00d2008c222f0606 (MGAW 48, SAGAW 39+48 bits, SLLPS 2M+1G) gives compute_vasz_lg2_ss()
  (iommu.c:2896) a 4-level table (top level 3) of 48 bits, and pgsize_bitmap 4K | 2M | 1G
  (iommu.c:2983-2989); SC (ecap bit 7) makes iommufd enforce cache coherency on each new HWPT
  (hw_pagetable.c:182 -> intel_iommu_enforce_cache_coherency_ss(), iommu.c:3215-3230), so
  every leaf it maps carries SNP.
- domain config (iommu.c:2954-2967): hw_max_oasz_lg2 52, PT_FEAT_FLUSH_RANGE;
  PT_FEAT_VTDSS_FORCE_WRITEABLE for a NEST_PARENT (the ERRATA_772415_SPR17 work-around:
  read-only maps are -EINVAL, vtdss.h:235-240); dirty ops only with DIRTY_TRACKING
  (iommu.c:2973).

A 64-bit entry (spec 9.8, tables "Second-Stage PML5E/PML4E/PDPE/PDE/PTE"):
- R (bit 0) read, W (bit 1) write: there is no present bit; an entry is empty when it is all
  zero (vtdss_pt_load_entry_raw(), vtdss.h:94) and a map needs R or W (vtdss.h:225);
- PS (bit 7) in an SS-PDPE or SS-PDE: a 1 GiB or 2 MiB leaf (vtdss.h:96-97, 116-117); levels
  3 and 4 (PML4E, PML5E) are always table pointers, level 0 (SS-PTE) always a leaf;
- A (bit 8) accessed and D (bit 9) dirty: set by the hardware only (with SSADE); the kernel
  maps with neither, reads D and clears it for dirty tracking (vtdss.h:144-167);
- SNP (bit 11) snoop: set on leaves when PT_FEAT_VTDSS_FORCE_COHERENCE (vtdss.h:232-233);
- ADDR (bits 51:12, spec "HAW-1:12"): the output address, or the next table, >> 12
  (VTDSS_FMT_OA, vtdss.h:50);
- a table pointer is R | W | ADDR (vtdss_pt_install_table(), vtdss.h:130-131).
Levels: 512 items of 8 bytes per 4 KiB table at every level (vtdss.h:82-85), so a level-n
item is 2^(12 + 9n); leaves at levels 0-2 only (vtdss_pt_can_have_leaf(), vtdss.h:76-79):
4 KiB, 2 MiB, 1 GiB; no contiguous replicas. Top level 2-4 (3, 4 or 5 levels, vtdss.h:252).

These functions are numba-jitted, take plain integers, and never raise.
"""
from __future__ import annotations

from numba import njit

# spec 9.8 / vtdss.h:44-56
R = 1 << 0
W = 1 << 1
PS = 1 << 7
A = 1 << 8
D = 1 << 9
SNP = 1 << 11
OA_SHIFT = 12
OA_MASK = ((1 << 52) - 1) & ~((1 << 12) - 1)  # GENMASK_ULL(51, 12)

# entry types (enum pt_entry_type), as fmt/amdv1.py
EMPTY, TABLE, OA = 0, 1, 2

# vtdss.h:31-41
MAX_OUTPUT_ADDRESS_LG2 = 52
MAX_VA_ADDRESS_LG2 = 57
MAX_TOP_LEVEL = 4
MIN_TOP_LEVEL = 2  # vtdss_pt_iommu_fmt_init(): top_level 2..4 (vtdss.h:252)
GRANULE_LG2SZ = 12
TABLEMEM_LG2SZ = 12
ITEMS_LG2 = 9
MAX_LEAF_LEVEL = 2  # vtdss_pt_can_have_leaf()

# include/linux/generic_pt/common.h:175-180, enum pt_features numbers (bit positions)
FEAT_FORCE_COHERENCE = 7
FEAT_FORCE_WRITEABLE = 8

# include/linux/iommu.h: the prot bits entry_prot() answers in (model.domain.IOMMU_READ/WRITE)
_IOMMU_READ, _IOMMU_WRITE = 1, 2


@njit(cache=True, inline="always")
def entry_type(e, level):
    """vtdss_pt_load_entry_raw() (vtdss.h:88-100): all zero is EMPTY; a leaf at level 0, or at
    levels 1-2 with PS; anything else a table pointer."""
    if e == 0:
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
    """vtdss_pt_entry_oa() (vtdss.h:69-73): ADDR << 12."""
    return ((e & OA_MASK) >> OA_SHIFT) << GRANULE_LG2SZ


@njit(cache=True, inline="always")
def leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write, features):
    """vtdss_pt_install_leaf_entry() (vtdss.h:114-117) with vtdss_pt_iommu_set_prot()'s
    descriptor bits (vtdss.h:228-233): ADDR | R? | W? | SNP? | PS above level 0."""
    e = ((oa >> GRANULE_LG2SZ) << OA_SHIFT) & OA_MASK
    if prot_read:
        e |= R
    if prot_write:
        e |= W
    if (features >> FEAT_FORCE_COHERENCE) & 1:
        e |= SNP
    if isz_lg2 != granule_lg2:  # pts->level != 0
        e |= PS
    return e


@njit(cache=True, inline="always")
def table_entry(table_pa, level, granule_lg2):
    """vtdss_pt_install_table() (vtdss.h:130-131): R | W | ADDR."""
    return R | W | (((table_pa >> GRANULE_LG2SZ) << OA_SHIFT) & OA_MASK)


@njit(cache=True, inline="always")
def table_pa(e, granule_lg2):
    """vtdss_pt_table_pa() (vtdss.h:62-66)."""
    return ((e & OA_MASK) >> OA_SHIFT) << TABLEMEM_LG2SZ


@njit(cache=True, inline="always")
def entry_prot(e):
    """The IOMMU_READ / IOMMU_WRITE a leaf grants: R and W as written."""
    p = 0
    if e & R:
        p |= _IOMMU_READ
    if e & W:
        p |= _IOMMU_WRITE
    return p


@njit(cache=True, inline="always")
def is_dirty(e):
    """vtdss_pt_entry_is_write_dirty() (vtdss.h:144-149)."""
    return (e & D) != 0


@njit(cache=True, inline="always")
def make_dirty(e):
    """vtdss_pt_entry_make_write_dirty() (vtdss.h:160-166): what the hardware does on a write."""
    return e | D


@njit(cache=True, inline="always")
def make_clean(e):
    """vtdss_pt_entry_make_write_clean() (vtdss.h:152-157)."""
    return e & ~D


@njit(cache=True, inline="always")
def leaf_sizes(level, granule_lg2, top_level):
    """pt_possible_sizes() default (pt_fmt_defaults.h:147-159): the item size at levels 0-2."""
    if level > MAX_LEAF_LEVEL:
        return 0
    return 1 << (granule_lg2 + ITEMS_LG2 * level)


def describe(e: int, level: int) -> str:
    """An entry in the spec's fields (plain Python, for messages)."""
    kind = ("SS-PTE", "SS-PDE", "SS-PDPE", "SS-PML4E", "SS-PML5E")[level]
    bits = [n for n, b in (("R", R), ("W", W), ("PS", PS), ("A", A), ("D", D), ("SNP", SNP)) if e & b]
    return f"L{level} {kind} {e:#018x} ADDR={e & OA_MASK:#x} {' '.join(bits)}"
