"""The numba page table against the plain-Python reference: hypothesis drives random map, unmap,
lookup, set-dirty and read-and-clear-dirty sequences into both and compares every answer, every
lookup and the whole list of mapped leaves after every step; the table memory is checked against
a count of the tables reachable from the top.

test_the_same_under_numba_disable_jit runs this file again in a subprocess with
NUMBA_DISABLE_JIT=1, so the kernels' Python source is exercised (and covered) too.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from model.domain import IOMMU_DIRTY_NO_CLEAR, IOMMU_READ, IOMMU_WRITE
from model.pt import fmt, walk
from model.pt.reference import ReferencePageTable
from model.pt.table import IoPageTable, amdv1, amdv1_mock, amdv1_mock_huge, vtdss, x86_64

EXAMPLES = int(os.environ.get("IOMMUFD_PT_EXAMPLES", 150))

# (name, factory, unit) — unit: the granule the random IOVAs and lengths are multiples of
VARIANTS = [
    ("mock", amdv1_mock, 1 << 11),
    ("mock_huge", amdv1_mock_huge, 1 << 11),
    ("amdv1_4k_2m_1g", lambda: amdv1(pgsize_bitmap=(1 << 12) | (1 << 21) | (1 << 30)), 1 << 12),
    ("amdv1_contiguous", lambda: amdv1(pgsize_bitmap=(1 << 12) | (1 << 13) | (1 << 16) | (1 << 21)), 1 << 12),
    # the intel-iommu formats (model/tests/test_pt_formats.py has their own cases)
    ("vtdss", vtdss, 1 << 12),
    ("x86_64", x86_64, 1 << 12),
]


def _reference(t: IoPageTable) -> ReferencePageTable:
    return ReferencePageTable(t.granule_lg2, t.top_level, t.max_vasz_lg2, int(t.meta[walk.M_OASZ]),
                              t.pgsize_bitmap, (t.aperture_start, t.aperture_end), fmt=fmt.NAMES[t.fmt_id],
                              sign_extend=bool(t.features >> fmt.PT_FEAT_SIGN_EXTEND & 1),
                              force_writeable=bool(t.features >> fmt.PT_FEAT_VTDSS_FORCE_WRITEABLE & 1))


def _reachable_tables(t: IoPageTable) -> int:
    g, f, n, stack = t.granule_lg2, int(t.meta[walk.M_FMT]), 0, [(0, t.top_level)]
    while stack:
        row, level = stack.pop()
        n += 1
        for e in t.tables[row]:
            if fmt.entry_type(f, int(e), level) == fmt.TABLE:
                stack.append((int(fmt.table_pa(f, int(e), g)) >> 12, level - 1))
    return n


class Rec:
    def __init__(self):
        self.r = []

    def record(self, iova, length):
        self.r.append((iova, length))


def ops(unit):
    # IOVAs in a window of 8 MiB-worth of units around a 1 GiB boundary (crosses tables), lengths
    # up to 2 MiB + a bit, physical addresses aligned like the IOVAs or not.
    base = (1 << 30) - (1 << 22)
    iova = st.integers(0, (1 << 23) // unit).map(lambda k: base + k * unit)
    length = st.one_of(st.integers(1, 64), st.sampled_from([256, 512, 1024, 2048])).map(lambda k: k * unit)
    pa = st.integers(0, 1 << 12).map(lambda k: (1 << 32) + k * unit)
    prot = st.sampled_from([IOMMU_READ, IOMMU_WRITE, IOMMU_READ | IOMMU_WRITE, 0])
    return st.lists(st.one_of(
        st.tuples(st.just("map"), iova, pa, length, prot),
        st.tuples(st.just("map_same"), iova, length),  # paddr == iova: large pages line up
        st.tuples(st.just("unmap"), iova, length),
        st.tuples(st.just("dirty"), iova),
        st.tuples(st.just("read_dirty"), iova, length, st.booleans()),
        st.tuples(st.just("odd"), st.sampled_from([-1, 0, 1 << 60, unit // 2 + 1]), length),
    ), max_size=40)


@pytest.mark.parametrize("name,make,unit", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_the_walker_agrees_with_the_reference(name, make, unit):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops(unit))
    def run(steps):
        t = make()
        ref = _reference(t)
        probes = set()
        for step in steps:
            kind = step[0]
            if kind == "map":
                _, iova, pa, length, prot = step
                assert t.map_range(iova, pa, length, prot) == ref.map_range(iova, pa, length, prot), step
                probes.update((iova, iova + length - 1, iova + length))
            elif kind == "map_same":
                _, iova, length = step
                pa = iova + (1 << 32)
                assert t.map_range(iova, pa, length, IOMMU_READ) == ref.map_range(iova, pa, length, IOMMU_READ)
                probes.update((iova, iova + length // 2))
            elif kind == "unmap":
                _, iova, length = step
                assert t.unmap_range(iova, length) == ref.unmap_range(iova, length), step
            elif kind == "dirty":
                assert t.set_dirty(step[1]) == ref.set_dirty(step[1])
            elif kind == "read_dirty":
                _, iova, length, no_clear = step
                a, b = Rec(), Rec()
                flags = IOMMU_DIRTY_NO_CLEAR if no_clear else 0
                assert t.read_and_clear_dirty(iova, length, flags, a) == ref.read_and_clear_dirty(iova, length, flags, b)
                assert a.r == b.r, step
            else:  # out-of-range and misaligned arguments
                _, iova, length = step
                assert t.map_range(iova, iova, length, IOMMU_READ) == ref.map_range(iova, iova, length, IOMMU_READ)
                assert t.unmap_range(iova, length) == ref.unmap_range(iova, length)
            assert t.leaves() == ref.leaves(), step
            got = t.iova_to_phys_many(np.array(sorted(p for p in probes if p >= 0), dtype=np.int64))
            assert list(got) == [ref.iova_to_phys(p) for p in sorted(p for p in probes if p >= 0)]
            assert t.table_pages == _reachable_tables(t)

    run()


def test_unmap_inside_a_large_page_removes_nothing_and_past_its_end_removes_all():
    """kunit_iommu_pt.h test_unmap_split: no splitting; an unmap that ends inside a leaf takes the
    whole leaf and answers its size; one that starts inside it answers 0."""
    t = amdv1(pgsize_bitmap=(1 << 12) | (1 << 21))
    assert t.map_range(1 << 21, 1 << 21, 2 << 21, IOMMU_READ) == (0, 2 << 21)
    assert t.unmap_range((1 << 21) + 4096, 4096) == 0
    assert t.unmap_range(1 << 21, 4096) == 1 << 21
    assert t.unmap_range(2 << 21, 4096) == 1 << 21  # the next leaf is still there
    assert t.leaves() == []


def test_mock_4k_pages_are_contiguous_pairs_and_dirty_reads_one_replica():
    """The mock's granule is 2 KiB: a 4 KiB page is two replicas with NextLevel 7, and
    record_dirty() reports 2^n - 1 items of it (iommufd_utils.h expects exactly that)."""
    t = amdv1_mock()
    assert t.map_range(1 << 24, 1 << 32, 4096, IOMMU_READ | IOMMU_WRITE) == (0, 4096)
    entries = t.dump()
    assert [va for va, _lvl, _e in entries] == [1 << 24, (1 << 24) + 2048]
    assert len({e for _va, _lvl, e in entries}) == 1 and (entries[0][2] >> 9) & 7 == 7
    assert t.set_dirty((1 << 24) + 2048) == 0
    r = Rec()
    t.read_and_clear_dirty(1 << 24, 4096, 0, r)
    assert r.r == [(1 << 24, 2048)]
    r = Rec()
    t.read_and_clear_dirty(1 << 24, 4096, 0, r)
    assert r.r == []  # cleared on both replicas


def test_table_memory_of_a_dense_range():
    """2^12 pages of 4 KiB, 4 KiB only: 8 leaf tables + one per level above: about 8 bytes a page."""
    t = amdv1(pgsize_bitmap=1 << 12)
    assert t.map_range(1 << 30, 1 << 30, 4096 << 12, IOMMU_READ) == (0, 4096 << 12)
    assert t.table_pages == 1 + 1 + 1 + 8
    assert t.unmap_range(1 << 30, 4096 << 12) == 4096 << 12
    assert t.table_pages == 1 + 1 + 1  # the fully covered leaf tables are freed, the level-2 one is not
    assert t.table_pages == _reachable_tables(t)


def test_a_whole_mock_level_1_table_goes_with_its_512_leaf_tables():
    """512 MiB of 4 KiB pages in the mock: one level-1 table and 512 leaf tables below the top;
    an unmap covering the level-1 table's whole span frees all 513."""
    t = amdv1_mock_huge()
    t.pgsize_bitmap = 1 << 12  # 4 KiB pages only: every leaf table is filled
    span = 1 << 29
    assert t.map_range(span, span, span, IOMMU_READ) == (0, span)
    assert t.table_pages == 1 + 1 + 512 == _reachable_tables(t)
    assert t.unmap_range(span, span) == span
    assert t.table_pages == 1 == _reachable_tables(t)


def test_the_same_under_numba_disable_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", IOMMUFD_PT_EXAMPLES="15")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "not disable_jit"], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
