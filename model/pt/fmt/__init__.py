"""Page-table formats: one file each (fmt/amdv1.py ...), bound into the generic walker here.

Numba compiles the walker once (and caches it) with these dispatch functions, which switch on
the format number a table carries in its meta[M_FMT]. A new format (VT-d second stage, ARM LPAE)
is its file, with the same functions and constants, and one branch in each function below.
"""
from __future__ import annotations

from numba import njit

from model.pt.fmt import amdv1

AMDV1 = 1

EMPTY, TABLE, OA = amdv1.EMPTY, amdv1.TABLE, amdv1.OA
ITEMS_LG2 = 9  # every supported format: 512 eight-byte items in a 4 KiB table
TABLEMEM_LG2SZ = 12


@njit(cache=True, inline="always")
def entry_type(f, e, level):
    if f == AMDV1:
        return amdv1.entry_type(e, level)
    return EMPTY


@njit(cache=True, inline="always")
def entry_lg2sz(f, e, isz_lg2, granule_lg2):
    if f == AMDV1:
        return amdv1.entry_lg2sz(e, isz_lg2, granule_lg2)
    return isz_lg2


@njit(cache=True, inline="always")
def entry_oa(f, e, lg2sz, granule_lg2):
    if f == AMDV1:
        return amdv1.entry_oa(e, lg2sz, granule_lg2)
    return 0


@njit(cache=True, inline="always")
def leaf_entry(f, oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write):
    if f == AMDV1:
        return amdv1.leaf_entry(oa, oasz_lg2, isz_lg2, granule_lg2, prot_read, prot_write)
    return 0


@njit(cache=True, inline="always")
def table_entry(f, table_pa, level, granule_lg2):
    if f == AMDV1:
        return amdv1.table_entry(table_pa, level, granule_lg2)
    return 0


@njit(cache=True, inline="always")
def table_pa(f, e, granule_lg2):
    if f == AMDV1:
        return amdv1.table_pa(e, granule_lg2)
    return 0


@njit(cache=True, inline="always")
def is_dirty(f, e):
    if f == AMDV1:
        return (e & amdv1.D) != 0
    return False


@njit(cache=True, inline="always")
def make_dirty(f, e):
    if f == AMDV1:
        return e | amdv1.D
    return e


@njit(cache=True, inline="always")
def make_clean(f, e):
    if f == AMDV1:
        return e & ~amdv1.D
    return e
