"""AMD IOMMU v1 page table entries (drivers/iommu/generic_pt/fmt/amdv1.h; AMD I/O Virtualization
Technology (IOMMU) Specification, 48882, "I/O Page Tables for Host Translations").

A 64-bit entry: PR (bit 0) present; D (bit 6) dirty; NextLevel (bits 11:9): 0 a leaf of the
level's natural size, 7 a leaf whose size is encoded in the address field (trailing ones), 1..6 a
pointer to a table of that level; OA (bits 51:12) the output address >> granule; IR (61) / IW (62)
read / write permission; FC (60) force coherent, a feature the mock leaves off.

A leaf larger than its level's item is written to every item it covers (the "contiguous"
replicas), each replica holding the block's start address with the size encoded:
OA |= 2^(size_lg2 - granule - 1) - 1 (amdv1pt_install_leaf_entry()).

These functions are numba-jitted, take plain integers, and never raise.
"""
from __future__ import annotations

from numba import njit

PR = 1 << 0
D = 1 << 6
NL_SHIFT = 9
NL_MASK = 7 << NL_SHIFT
NL_DEFAULT = 0
NL_SIZE = 7
OA_SHIFT = 12
OA_MASK = ((1 << 52) - 1) & ~((1 << 12) - 1)  # GENMASK_ULL(51, 12)
FC = 1 << 60
IR = 1 << 61
IW = 1 << 62

# entry types (enum pt_entry_type)
EMPTY, TABLE, OA = 0, 1, 2

MAX_OUTPUT_ADDRESS_LG2 = 51  # the mock; 52 on real hardware
TABLEMEM_LG2SZ = 12  # one table is 4 KiB: 512 eight-byte items
ITEMS_LG2 = 9


@njit(cache=True, inline="always")
def entry_type(e, level):
    """amdv1pt_load_entry_raw(): EMPTY without PR; at level 0 every present entry is a leaf;
    above it NextLevel 0 or 7 is a leaf, anything else a table pointer."""
    if not e & PR:
        return EMPTY
    if level == 0:
        return OA
    nl = (e & NL_MASK) >> NL_SHIFT
    if nl == NL_DEFAULT or nl == NL_SIZE:
        return OA
    return TABLE


@njit(cache=True, inline="always")
def _oa_field(e):
    return (e & OA_MASK) >> OA_SHIFT


@njit(cache=True, inline="always")
def entry_lg2sz(e, isz_lg2, granule_lg2):
    """The leaf's size: the item size, or with NextLevel 7 granule + 1 + the trailing ones of OA."""
    if (e & NL_MASK) >> NL_SHIFT != NL_SIZE:
        return isz_lg2
    f = _oa_field(e)
    n = 0
    while f & 1:
        f >>= 1
        n += 1
    return granule_lg2 + 1 + n


@njit(cache=True, inline="always")
def entry_oa(e, lg2sz, granule_lg2):
    """The output address of the block's start (the size encoding cleared)."""
    f = _oa_field(e)
    clear = lg2sz - granule_lg2
    if clear > 0:
        f &= ~((1 << clear) - 1)
    return f << granule_lg2


@njit(cache=True, inline="always")
def leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write):
    """amdv1pt_install_leaf_entry(): the value every replica of the leaf holds."""
    e = PR | (((oa >> granule_lg2) << OA_SHIFT) & OA_MASK)
    if oasz_lg2 > isz_lg2:
        ones = (1 << (oasz_lg2 - granule_lg2 - 1)) - 1
        e |= (ones << OA_SHIFT) | (NL_SIZE << NL_SHIFT)
    if prot_read:
        e |= IR
    if prot_write:
        e |= IW
    return e


@njit(cache=True, inline="always")
def table_entry(table_pa, level, granule_lg2):
    """amdv1pt_install_table(): PR | NextLevel = the level of the table holding the entry | OA | IR | IW."""
    return PR | (level << NL_SHIFT) | (((table_pa >> granule_lg2) << OA_SHIFT) & OA_MASK) | IR | IW


@njit(cache=True, inline="always")
def table_pa(e, granule_lg2):
    return _oa_field(e) << granule_lg2


@njit(cache=True, inline="always")
def leaf_sizes(level, granule_lg2, top_level):
    """amdv1pt_possible_sizes(): every power of two from the item size up to half a table, at
    levels below the top; a bit mask of sizes (log2 positions)."""
    isz = granule_lg2 + ITEMS_LG2 * level
    hi = min(MAX_OUTPUT_ADDRESS_LG2, isz + ITEMS_LG2 - 1)
    if level >= 4:  # PT_MAX_TOP_LEVEL for the mock: no leaves at the top
        return 0
    m = ((1 << (hi + 1)) - 1) & ~((1 << isz) - 1)
    return m & ~(1 << 39)  # ~SZ_512G: the workaround for the AMD erratum
