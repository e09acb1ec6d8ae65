"""The IOVA allocator's block structures against plain sorted-list references.

_Holes keeps the maximal holes of (reserved ∪ areas) in blocks with their longest hole; _Areas
keeps disjoint areas sorted in blocks. Hypothesis drives random take/give and insert/remove
sequences, with block sizes small enough to split and merge blocks, into both and compares
every lookup and the whole content after every step.
"""
from __future__ import annotations

import bisect

from hypothesis import given, settings, strategies as st

from model import io_pagetable
from model.io_pagetable import IopArea, _Areas, _Fits, _Holes

SPACE = 1 << 12  # a small address space: collisions and adjacency are frequent


class RefHoles:
    """The holes as a sorted list of (start, last), rebuilt naively."""

    def __init__(self, holes):
        self.h = list(holes)

    def take(self, s, l):
        out = []
        for hs, hl in self.h:
            if hl < s or hs > l:
                out.append((hs, hl))
                continue
            if hs < s:
                out.append((hs, s - 1))
            if l < hl:
                out.append((l + 1, hl))
        self.h = out

    def give(self, s, l):
        spans = sorted(self.h + [(s, l)])
        out = []
        for hs, hl in spans:
            if out and out[-1][1] + 1 >= hs:
                out[-1] = (out[-1][0], max(out[-1][1], hl))
            else:
                out.append((hs, hl))
        self.h = out

    def first_fit(self, first, last, fits):
        for hs, hl in self.h:
            if hl < first or hs > last:
                continue
            r = fits(max(hs, first), min(hl, last))
            if r is not None:
                return r
        return None


ops = st.lists(st.tuples(st.booleans(), st.integers(0, SPACE - 1), st.integers(1, 64),
                         st.integers(0, SPACE - 1), st.integers(0, 6)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_holes_match_a_sorted_list(steps):
    saved = io_pagetable._B
    io_pagetable._B = 2  # blocks of 2..4 holes: every step splits or empties some
    try:
        holes = _Holes([(0, SPACE - 1)])
        ref = RefHoles([(0, SPACE - 1)])
        used = []  # ranges taken, to give back
        for take, start, length, probe, align_log in steps:
            if take:
                last = min(SPACE - 1, start + length - 1)
                # take only inside one hole, as the callers guarantee
                inside = next(((hs, hl) for hs, hl in ref.h if hs <= start and last <= hl), None)
                if inside is None:
                    continue
                holes.take(start, last)
                ref.take(start, last)
                used.append((start, last))
            elif used:
                s, l = used.pop(start % len(used))
                holes.give(s, l)
                ref.give(s, l)
            assert list(holes) == ref.h
            for b in holes.blks:  # each block knows its longest hole
                assert b.maxlen == max(l - s + 1 for s, l in zip(b.starts, b.lasts))
            fits = _Fits(length, 1 << align_log, 0)
            assert holes.first_fit(probe, SPACE - 1, fits) == ref.first_fit(probe, SPACE - 1, fits)
    finally:
        io_pagetable._B = saved


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, SPACE - 1), st.integers(1, 32),
                          st.integers(0, SPACE - 1), st.integers(0, 64)), max_size=80))
def test_areas_match_a_sorted_list(steps):
    saved = io_pagetable._B
    io_pagetable._B = 2
    try:
        areas = _Areas()
        ref: list[tuple[int, int]] = []  # sorted, disjoint
        by_start: dict[int, IopArea] = {}
        for insert, start, length, probe, probe_len in steps:
            if insert:
                last = start + length - 1
                k = bisect.bisect_left(ref, (start, last))
                if (k > 0 and ref[k - 1][1] >= start) or (k < len(ref) and ref[k][0] <= last):
                    continue  # overlaps: the io_pagetable never inserts that
                a = IopArea(start, last, None, 0, 0, 0, 0)
                areas.insert(a)
                ref.insert(k, (start, last))
                by_start[start] = a
            elif ref:
                s, _ = ref.pop(start % len(ref))
                areas.remove(by_start.pop(s))
            assert [(a.start, a.last) for a in areas] == ref and len(areas) == len(ref)
            # iopt_area_iter_first(): the lowest area meeting [probe, probe + probe_len]
            first, last = probe, probe + probe_len
            want = next(((s, l) for s, l in ref if l >= first and s <= last), None)
            pos = areas.first(first, last)
            got = None if pos is None else (areas.at(pos).start, areas.at(pos).last)
            assert got == want
    finally:
        io_pagetable._B = saved
