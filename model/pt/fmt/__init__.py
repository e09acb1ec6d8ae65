"""Page-table formats: one file each (fmt/amdv1.py ...), bound into the generic walker here.

Numba compiles the walker once (and caches it) with these dispatch functions, which switch on
the format number a table carries in its meta[M_FMT]. A new format (ARM LPAE ...) is its file,
with the same functions and constants, and one branch in each function below.

meta[M_FMT] is the format number in its low FEAT_SHIFT bits and, above them, the table's
features as the kernel's struct pt_common.features holds them (BIT(enum pt_features),
include/linux/generic_pt/common.h:87-214): a format reads the ones its encoding depends on
(vtdss: PT_FEAT_VTDSS_FORCE_COHERENCE puts SNP in every leaf).
"""
from __future__ import annotations

from numba import njit

from model.pt.fmt import amdv1, vtdss, x86_64

AMDV1 = 1
VTDSS = 2  # VT-d second stage (fmt/vtdss.py)
X86_64 = 3  # x86-64 long mode, VT-d first stage (fmt/x86_64.py)
NAMES = {AMDV1: "amdv1", VTDSS: "vtdss", X86_64: "x86_64"}
MODULES = {AMDV1: amdv1, VTDSS: vtdss, X86_64: x86_64}

FMT_MASK = 0xFF
FEAT_SHIFT = 8

# enum pt_features (include/linux/generic_pt/common.h:87-143): bit numbers
PT_FEAT_DMA_INCOHERENT = 0
PT_FEAT_FULL_VA = 1
PT_FEAT_DYNAMIC_TOP = 2
PT_FEAT_SIGN_EXTEND = 3
PT_FEAT_FLUSH_RANGE = 4
PT_FEAT_FLUSH_RANGE_NO_GAPS = 5
PT_FEAT_DETAILED_GATHER = 6
PT_FEAT_VTDSS_FORCE_COHERENCE = vtdss.FEAT_FORCE_COHERENCE  # common.h:175, = PT_FEAT_FMT_START
PT_FEAT_VTDSS_FORCE_WRITEABLE = vtdss.FEAT_FORCE_WRITEABLE  # common.h:180

EMPTY, TABLE, OA = amdv1.EMPTY, amdv1.TABLE, amdv1.OA
assert (EMPTY, TABLE, OA) == (vtdss.EMPTY, vtdss.TABLE, vtdss.OA) == (x86_64.EMPTY, x86_64.TABLE, x86_64.OA)
ITEMS_LG2 = 9  # every supported format: 512 eight-byte items in a 4 KiB table
TABLEMEM_LG2SZ = 12


def fmt_word(fmt_id: int, features: int = 0) -> int:
    """The meta[M_FMT] value of a table of this format with these BIT(pt_features)."""
    return fmt_id | (features << FEAT_SHIFT)


@njit(cache=True, inline="always")
def entry_type(f, e, level):
    k = f & FMT_MASK
    if k == AMDV1:
        return amdv1.entry_type(e, level)
    if k == VTDSS:
        return vtdss.entry_type(e, level)
    if k == X86_64:
        return x86_64.entry_type(e, level)
    return EMPTY


@njit(cache=True, inline="always")
def entry_lg2sz(f, e, isz_lg2, granule_lg2):
    if f & FMT_MASK == AMDV1:
        return amdv1.entry_lg2sz(e, isz_lg2, granule_lg2)
    return isz_lg2  # vtdss, x86_64: no contiguous entries


@njit(cache=True, inline="always")
def entry_oa(f, e, lg2sz, granule_lg2):
    k = f & FMT_MASK
    if k == AMDV1:
        return amdv1.entry_oa(e, lg2sz, granule_lg2)
    if k == VTDSS:
        return vtdss.entry_oa(e, lg2sz, granule_lg2)
    if k == X86_64:
        return x86_64.entry_oa(e, lg2sz, granule_lg2)
    return 0


@njit(cache=True, inline="always")
def leaf_entry(f, oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write):
    k = f & FMT_MASK
    if k == AMDV1:
        return amdv1.leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write)
    if k == VTDSS:
        return vtdss.leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write, f >> FEAT_SHIFT)
    if k == X86_64:
        return x86_64.leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write)
    return 0


@njit(cache=True, inline="always")
def table_entry(f, table_pa, level, granule_lg2):
    k = f & FMT_MASK
    if k == AMDV1:
        return amdv1.table_entry(table_pa, level, granule_lg2)
    if k == VTDSS:
        return vtdss.table_entry(table_pa, level, granule_lg2)
    if k == X86_64:
        return x86_64.table_entry(table_pa, level, granule_lg2)
    return 0


@njit(cache=True, inline="always")
def table_pa(f, e, granule_lg2):
    k = f & FMT_MASK
    if k == AMDV1:
        return amdv1.table_pa(e, granule_lg2)
    if k == VTDSS:
        return vtdss.table_pa(e, granule_lg2)
    if k == X86_64:
        return x86_64.table_pa(e, granule_lg2)
    return 0


@njit(cache=True, inline="always")
def entry_prot(f, e):
    """The IOMMU_READ | IOMMU_WRITE a present leaf grants, as the hardware reads its bits."""
    k = f & FMT_MASK
    if k == AMDV1:
        return (1 if e & amdv1.IR else 0) | (2 if e & amdv1.IW else 0)
    if k == VTDSS:
        return vtdss.entry_prot(e)
    if k == X86_64:
        return x86_64.entry_prot(e)
    return 0


@njit(cache=True, inline="always")
def leaf_sizes(f, level, granule_lg2, top_level):
    """pt_possible_sizes() of a level: a bit mask of leaf sizes (log2 positions)."""
    k = f & FMT_MASK
    if k == AMDV1:
        return amdv1.leaf_sizes(level, granule_lg2, top_level)
    if k == VTDSS:
        return vtdss.leaf_sizes(level, granule_lg2, top_level)
    if k == X86_64:
        return x86_64.leaf_sizes(level, granule_lg2, top_level)
    return 0


def dirty_supported(f: int) -> bool:
    """pt_dirty_supported() (pt_fmt_defaults.h:61-84): the format defines
    pt_entry_is_write_dirty(); x86_64 does not, so its domains have no read_and_clear_dirty."""
    return f & FMT_MASK in (AMDV1, VTDSS)


@njit(cache=True, inline="always")
def is_dirty(f, e):
    k = f & FMT_MASK
    if k == AMDV1:
        return (e & amdv1.D) != 0
    if k == VTDSS:
        return vtdss.is_dirty(e)
    return False  # x86_64: pt_entry_is_write_dirty() is false (pt_fmt_defaults.h:62-66)


@njit(cache=True, inline="always")
def make_dirty(f, e):
    k = f & FMT_MASK
    if k == AMDV1:
        return e | amdv1.D
    if k == VTDSS:
        return vtdss.make_dirty(e)
    return e


@njit(cache=True, inline="always")
def make_clean(f, e):
    k = f & FMT_MASK
    if k == AMDV1:
        return e & ~amdv1.D
    if k == VTDSS:
        return vtdss.make_clean(e)
    return e
