"""The generic page-table walker (drivers/iommu/generic_pt/iommu_pt.h, pt_iter.h), numba-jitted.

A table is a row of `tables` (int64[ncap, 512]); row 0 is the top table, and a table's "physical
address" is its row << 12. `meta` holds the geometry and the table allocator's counters, `free`
the rows freed for reuse. The format's entry encoding is model/pt/fmt/ (AMDv1 here).

Every kernel returns a status (0 or -errno) and never raises: the Python layer (model/pt/table.py)
validates arguments, makes room for tables before a map, and maps statuses to errno.

Rules, as generic_pt has them in Linux 7.2:
- map_range: at each IOVA the largest page size of pgsize_bitmap that IOVA and OA are aligned to
  and that fits the rest of the length (pt_compute_best_pgsize()); a size above the level's item
  is written to all its replicas; anything present where a leaf goes is -EADDRINUSE, except
  tables with nothing mapped below, which are freed (clear_contig()); leaves written before a
  failure stay (the caller unmaps `mapped` bytes);
- unmap_range: whole leaves from the IOVA on; an IOVA inside a leaf (not at its start) stops
  with nothing unmapped there; a range ending inside a leaf removes all of it; the first hole
  stops the walk; tables whose whole span was unmapped without a hole are freed;
- read_and_clear_dirty: every present leaf meeting the range whose replicas have any D bit is
  recorded with record_dirty()'s length (for a contiguous leaf, up to min(its last item, the
  range's end index) from the current item: the last replica is not counted when the range
  covers it) and cleared on every replica unless NO_CLEAR;
- set_dirty: the D bit of the one item under the IOVA (IOMMU_TEST_OP_DIRTY's set_dirty()).
"""
from __future__ import annotations

import errno

import numpy as np
from numba import njit

from model.pt import fmt

# meta[] slots
M_TOP, M_GRANULE, M_VASZ, M_OASZ, M_NFREE, M_HIWATER, M_LIVE, M_FMT = range(8)
META_LEN = 8
ITEMS_LG2 = fmt.ITEMS_LG2
NITEMS = 1 << ITEMS_LG2
EMPTY, TABLE, OA = fmt.EMPTY, fmt.TABLE, fmt.OA
# Depth-first stacks: at most NITEMS - 1 siblings wait per level, for at most 6 levels.
_STACK = NITEMS * 8


def new_state(fmt_id: int, top_level: int, granule_lg2: int, max_vasz_lg2: int, max_oasz_lg2: int,
              ncap: int = 16):
    """(tables, meta, free) of an empty page table: the top table allocated."""
    tables = np.zeros((ncap, NITEMS), dtype=np.int64)
    meta = np.zeros(META_LEN, dtype=np.int64)
    meta[M_FMT] = fmt_id
    meta[M_TOP], meta[M_GRANULE], meta[M_VASZ], meta[M_OASZ] = top_level, granule_lg2, max_vasz_lg2, max_oasz_lg2
    meta[M_HIWATER] = meta[M_LIVE] = 1
    return tables, meta, np.zeros(ncap, dtype=np.int64)


@njit(cache=True, inline="always")
def _isz(level, g):
    return g + ITEMS_LG2 * level


@njit(cache=True)
def _alloc_table(tables, meta, free):
    if meta[M_NFREE] > 0:
        meta[M_NFREE] -= 1
        row = free[meta[M_NFREE]]
    else:
        row = meta[M_HIWATER]
        meta[M_HIWATER] += 1
    tables[row, :] = 0
    meta[M_LIVE] += 1
    return row


@njit(cache=True)
def _free_table(meta, free, row):
    free[meta[M_NFREE]] = row
    meta[M_NFREE] += 1
    meta[M_LIVE] -= 1


@njit(cache=True)
def _subtree_has_oa(tables, meta, row, level):
    """__collect_tables(check_mapped): does anything below this table map an address?"""
    f, g = meta[M_FMT], meta[M_GRANULE]
    stack_row = np.empty(_STACK, dtype=np.int64)
    stack_lvl = np.empty(_STACK, dtype=np.int64)
    stack_row[0], stack_lvl[0] = row, level
    sp = 1
    while sp:
        sp -= 1
        r, lv = stack_row[sp], stack_lvl[sp]
        for i in range(NITEMS):
            e = tables[r, i]
            t = fmt.entry_type(f, e, lv)
            if t == OA:
                return True
            if t == TABLE:
                if sp == stack_row.shape[0]:
                    return True  # deeper than any format: refuse rather than overrun
                stack_row[sp] = _table_row(f, e, g)
                stack_lvl[sp] = lv - 1
                sp += 1
    return False


@njit(cache=True, inline="always")
def _table_row(f, e, g):
    return fmt.table_pa(f, e, g) >> fmt.TABLEMEM_LG2SZ


@njit(cache=True)
def _free_subtree(tables, meta, free, row, level):
    """Free a table and every table below it (their leaves are already gone)."""
    f, g = meta[M_FMT], meta[M_GRANULE]
    stack_row = np.empty(_STACK, dtype=np.int64)
    stack_lvl = np.empty(_STACK, dtype=np.int64)
    stack_row[0], stack_lvl[0] = row, level
    sp = 1
    while sp:
        sp -= 1
        r, lv = stack_row[sp], stack_lvl[sp]
        if lv > 0:
            for i in range(NITEMS):
                e = tables[r, i]
                if fmt.entry_type(f, e, lv) == TABLE and sp < stack_row.shape[0]:
                    stack_row[sp] = _table_row(f, e, g)
                    stack_lvl[sp] = lv - 1
                    sp += 1
        _free_table(meta, free, r)


@njit(cache=True, inline="always")
def _fls(x):
    """The index of the highest set bit of x > 0 (__fls())."""
    n = 0
    if x >> 32:
        x >>= 32
        n += 32
    if x >> 16:
        x >>= 16
        n += 16
    if x >> 8:
        x >>= 8
        n += 8
    if x >> 4:
        x >>= 4
        n += 4
    if x >> 2:
        x >>= 2
        n += 2
    if x >> 1:
        n += 1
    return n


@njit(cache=True, inline="always")
def _ffs(x):
    """The index of the lowest set bit of x > 0 (__ffs())."""
    return _fls(x & -x)


@njit(cache=True)
def best_pgsize_lg2(pgsize_bitmap, va, last, oa):
    """pt_compute_best_pgsize(): log2 of the page size, or -1 when none fits."""
    mask = va | oa | (1 << _fls(last - va + 1))
    best = _ffs(mask)
    bm = pgsize_bitmap
    if best < 62:
        bm &= (1 << (best + 1)) - 1
    if bm == 0:
        return -1
    return _fls(bm)


@njit(cache=True, inline="always")
def _pgsz_count(pgsize_bitmap, va, last, oa, lg2):
    """pt_pgsz_count(): how many leaves of 2^lg2 before the next larger size could start."""
    length = last - va + 1
    bigger = pgsize_bitmap & ~((2 << lg2) - 1)
    if bigger:
        nxt = _ffs(bigger)
        if not (va ^ oa) & ((1 << nxt) - 1):
            length = min(length, (va | ((1 << nxt) - 1)) - va + 1)
    return length >> lg2


@njit(cache=True)
def _check_range(meta, va, length):
    if length <= 0:
        return -errno.EINVAL
    last = va + length - 1
    if last < va:
        return -errno.EOVERFLOW
    if va < 0 or last >> meta[M_VASZ]:
        return -errno.ERANGE
    return 0


@njit(cache=True)
def map_range(tables, meta, free, va, oa, length, prot_read, prot_write, pgsize_bitmap):
    """NS(map_range)(): (status, bytes mapped before any failure)."""
    if not (prot_read or prot_write):
        return -errno.EINVAL, 0
    rc = _check_range(meta, va, length)
    if rc:
        return rc, 0
    if oa < 0 or oa >> meta[M_OASZ]:
        return -errno.ERANGE, 0
    f, g, top = meta[M_FMT], meta[M_GRANULE], meta[M_TOP]
    last = va + length - 1
    mapped = 0
    while va <= last:
        lg2 = best_pgsize_lg2(pgsize_bitmap, va, last, oa)
        if lg2 < 0:
            return -errno.ENXIO, mapped
        level = (lg2 - g) // ITEMS_LG2
        if level > top:
            level = top
        # walk down to the leaf's table, making tables where there are none
        row = 0
        lv = top
        while lv > level:
            isz = _isz(lv, g)
            idx = (va >> isz) & (NITEMS - 1)
            e = tables[row, idx]
            t = fmt.entry_type(f, e, lv)
            if t == OA:
                return -errno.EADDRINUSE, mapped
            if t == EMPTY:
                child = _alloc_table(tables, meta, free)
                tables[row, idx] = fmt.table_entry(f, child << fmt.TABLEMEM_LG2SZ, lv, g)
                row = child
            else:
                row = _table_row(f, e, g)
            lv -= 1
        isz = _isz(level, g)
        n = 1 << (lg2 - isz)
        idx = (va >> isz) & (NITEMS - 1)
        # as many leaves of this size as fit before a larger one could start, in this table
        k = min(_pgsz_count(pgsize_bitmap, va, last, oa, lg2), (NITEMS - idx) >> (lg2 - isz))
        # clear_contig(): a leaf refuses, a table with nothing mapped below gives way; the leaves
        # before the one that refuses are written, as the kernel writes them one by one
        conflict = False
        for i in range(idx, idx + k * n):
            e = tables[row, i]
            if e:
                t = fmt.entry_type(f, e, level)
                if t == OA or (t == TABLE and _subtree_has_oa(tables, meta, _table_row(f, e, g), level - 1)):
                    conflict = True
                    k = (i - idx) >> (lg2 - isz)
                    break
        for i in range(idx, idx + k * n):
            e = tables[row, i]
            if e and fmt.entry_type(f, e, level) == TABLE:
                _free_subtree(tables, meta, free, _table_row(f, e, g), level - 1)
        size = 1 << lg2
        for j in range(k):
            leaf = fmt.leaf_entry(f, oa + j * size, lg2, isz, g, prot_read, prot_write)
            for i in range(idx + j * n, idx + (j + 1) * n):
                tables[row, i] = leaf
        va += k * size
        oa += k * size
        mapped += k * size
        if conflict:
            return -errno.EADDRINUSE, mapped
    return 0, mapped


@njit(cache=True)
def _find(tables, meta, va):
    """The entry under va: (type, row, level, index); for EMPTY the level where the walk stopped."""
    f, g = meta[M_FMT], meta[M_GRANULE]
    row = 0
    lv = meta[M_TOP]
    while True:
        isz = _isz(lv, g)
        idx = (va >> isz) & (NITEMS - 1)
        e = tables[row, idx]
        t = fmt.entry_type(f, e, lv)
        if t != TABLE:
            return t, row, lv, idx
        row = _table_row(f, e, g)
        lv -= 1


@njit(cache=True)
def _free_covered_tables(tables, meta, free, first, last):
    """Free the tables whose whole span lies in [first, last] (their leaves are gone)."""
    f, g = meta[M_FMT], meta[M_GRANULE]
    top = meta[M_TOP]
    stack_row = np.empty(_STACK, dtype=np.int64)
    stack_lvl = np.empty(_STACK, dtype=np.int64)
    stack_row[0], stack_lvl[0] = 0, top
    stack_base = np.empty(_STACK, dtype=np.int64)
    stack_base[0] = 0
    sp = 1
    while sp:
        sp -= 1
        row, lv, base = stack_row[sp], stack_lvl[sp], stack_base[sp]
        isz = _isz(lv, g)
        lo = max(first, base)
        hi = min(last, base + (1 << (isz + ITEMS_LG2)) - 1)
        if lo > hi:
            continue
        for i in range((lo - base) >> isz, ((hi - base) >> isz) + 1):
            e = tables[row, i]
            if fmt.entry_type(f, e, lv) != TABLE:
                continue
            span_first = base + (i << isz)
            span_last = span_first + (1 << isz) - 1
            child = _table_row(f, e, g)
            if first <= span_first and span_last <= last:
                tables[row, i] = 0
                _free_subtree(tables, meta, free, child, lv - 1)
            elif lv - 1 > 0 and sp < stack_row.shape[0]:
                stack_row[sp], stack_lvl[sp], stack_base[sp] = child, lv - 1, span_first
                sp += 1


@njit(cache=True)
def unmap_range(tables, meta, free, va, length):
    """NS(unmap_range)(): the bytes unmapped (whole leaves), stopping at a hole or a leaf the
    IOVA is inside of."""
    if _check_range(meta, va, length):
        return 0
    f, g = meta[M_FMT], meta[M_GRANULE]
    last = va + length - 1
    pos = va
    unmapped = 0
    while pos <= last:
        t, row, lv, idx = _find(tables, meta, pos)
        if t != OA:
            break  # a hole
        isz = _isz(lv, g)
        e = tables[row, idx]
        lg2 = fmt.entry_lg2sz(f, e, isz, g)
        if pos & ((1 << lg2) - 1):
            break  # inside a leaf: nothing of it is unmapped
        # this leaf, and the leaves after it in the same table
        hole = False
        while True:
            nrep = 1 << (lg2 - isz)
            for i in range(idx, idx + nrep):
                tables[row, i] = 0
            unmapped += 1 << lg2
            pos += 1 << lg2
            idx += nrep
            if pos > last or idx >= NITEMS:
                break
            e = tables[row, idx]
            t = fmt.entry_type(f, e, lv)
            if t == TABLE:
                break  # the next round walks down into it
            if t != OA:
                hole = True
                break
            lg2 = fmt.entry_lg2sz(f, e, isz, g)
        if hole:
            break
    stop = min(last, pos - 1)
    if stop >= va:
        _free_covered_tables(tables, meta, free, va, stop)
    return unmapped


@njit(cache=True)
def iova_to_phys(tables, meta, vas, out):
    """NS(iova_to_phys)() for each IOVA of `vas` into `out`: 0 where nothing is mapped."""
    f, g, top, vasz = meta[M_FMT], meta[M_GRANULE], meta[M_TOP], meta[M_VASZ]
    for k in range(vas.shape[0]):
        va = vas[k]
        out[k] = 0
        if va < 0 or va >> vasz:
            continue
        row = 0
        lv = top
        while True:
            isz = g + ITEMS_LG2 * lv
            e = tables[row, (va >> isz) & (NITEMS - 1)]
            t = fmt.entry_type(f, e, lv)
            if t == TABLE:
                row = _table_row(f, e, g)
                lv -= 1
                continue
            if t == OA:
                lg2 = fmt.entry_lg2sz(f, e, isz, g)
                out[k] = fmt.entry_oa(f, e, lg2, g) | (va & ((1 << lg2) - 1))
            break
    return 0


# translate()'s answer per IOVA: out[k, T_STATUS] is one of these
T_STATUS, T_PA, T_PROT = 0, 1, 2
T_NONE, T_LEAF, T_RANGE = 0, 1, 2  # nothing mapped; a leaf (pa, prot); past the table's IOVA bits


@njit(cache=True)
def translate(tables, meta, vas, out):
    """The walk a unit's hardware makes for a DMA request at each IOVA of `vas`: out[k] = (status,
    physical address, prot), prot the IOMMU_READ | IOMMU_WRITE the leaf grants as the hardware
    reads its bits (fmt.entry_prot()). T_NONE where no leaf maps the IOVA (the walk met a
    non-present entry), T_RANGE for an IOVA the table's address width does not reach."""
    f, g, top, vasz = meta[M_FMT], meta[M_GRANULE], meta[M_TOP], meta[M_VASZ]
    for k in range(vas.shape[0]):
        va = vas[k]
        out[k, T_STATUS], out[k, T_PA], out[k, T_PROT] = T_NONE, 0, 0
        if va < 0 or va >> vasz:
            out[k, T_STATUS] = T_RANGE
            continue
        row = 0
        lv = top
        while True:
            isz = g + ITEMS_LG2 * lv
            e = tables[row, (va >> isz) & (NITEMS - 1)]
            t = fmt.entry_type(f, e, lv)
            if t == TABLE:
                row = _table_row(f, e, g)
                lv -= 1
                continue
            if t == OA:
                lg2 = fmt.entry_lg2sz(f, e, isz, g)
                out[k, T_STATUS] = T_LEAF
                out[k, T_PA] = fmt.entry_oa(f, e, lg2, g) | (va & ((1 << lg2) - 1))
                out[k, T_PROT] = fmt.entry_prot(f, e)
            break
    return 0


@njit(cache=True)
def read_and_clear_dirty(tables, meta, va, length, no_clear, out):
    """NS(read_and_clear_dirty)(): (status, records written to out[:, (iova, length)], the IOVA to
    resume from when out filled up, else -1)."""
    rc = _check_range(meta, va, length)
    if rc:
        return rc, 0, -1
    f, g = meta[M_FMT], meta[M_GRANULE]
    last = va + length - 1
    pos = va
    n = 0
    while pos <= last:
        if n == out.shape[0]:
            return 0, n, pos
        t, row, lv, idx = _find(tables, meta, pos)
        isz = _isz(lv, g)
        if t != OA:  # EMPTY: skipped, not a stop
            pos = (pos | ((1 << isz) - 1)) + 1
            if pos == 0:
                break
            continue
        e = tables[row, idx]
        lg2 = fmt.entry_lg2sz(f, e, isz, g)
        ncontig = lg2 - isz
        first_idx = idx & ~((1 << ncontig) - 1)
        dirty = False
        for i in range(first_idx, first_idx + (1 << ncontig)):
            if fmt.is_dirty(f, tables[row, i]):
                dirty = True
        if dirty:
            if ncontig == 0:
                dirty_len = 1 << isz
            else:
                # record_dirty(): min(the block's last index, the range's end index) - index
                end_index = min(NITEMS, ((last >> isz) & (NITEMS - 1)) + 1
                                if (last >> (isz + ITEMS_LG2)) == (pos >> (isz + ITEMS_LG2)) else NITEMS)
                dirty_len = (min(first_idx + (1 << ncontig) - 1, end_index) - idx) << isz
            out[n, 0] = pos
            out[n, 1] = dirty_len
            n += 1
            if not no_clear:
                for i in range(first_idx, first_idx + (1 << ncontig)):
                    tables[row, i] = fmt.make_clean(f, tables[row, i])
        pos = (pos & ~((1 << lg2) - 1)) + (1 << lg2)
    return 0, n, -1


@njit(cache=True)
def set_dirty(tables, meta, va):
    """NS(set_dirty)(): D on the item under va; -ENOENT where nothing is mapped."""
    if va < 0 or va >> meta[M_VASZ]:
        return -errno.ERANGE
    t, row, lv, idx = _find(tables, meta, va)
    if t != OA:
        return -errno.ENOENT
    tables[row, idx] = fmt.make_dirty(meta[M_FMT], tables[row, idx])
    return 0


@njit(cache=True)
def dump(tables, meta, out):
    """Every present leaf item (replicas included) as (iova, level, entry) rows; the row count."""
    f, g = meta[M_FMT], meta[M_GRANULE]
    stack_row = np.empty(_STACK, dtype=np.int64)
    stack_lvl = np.empty(_STACK, dtype=np.int64)
    stack_base = np.empty(_STACK, dtype=np.int64)
    stack_row[0], stack_lvl[0], stack_base[0] = 0, meta[M_TOP], 0
    sp = 1
    n = 0
    while sp:
        sp -= 1
        row, lv, base = stack_row[sp], stack_lvl[sp], stack_base[sp]
        isz = _isz(lv, g)
        for i in range(NITEMS - 1, -1, -1):  # pushed in reverse: visited in IOVA order
            e = tables[row, i]
            t = fmt.entry_type(f, e, lv)
            if t == TABLE and sp < stack_row.shape[0]:
                stack_row[sp], stack_lvl[sp], stack_base[sp] = _table_row(f, e, g), lv - 1, base + (i << isz)
                sp += 1
        for i in range(NITEMS):
            e = tables[row, i]
            if fmt.entry_type(f, e, lv) == OA:
                if n < out.shape[0]:
                    out[n, 0], out[n, 1], out[n, 2] = base + (i << isz), lv, e
                n += 1
    return n
