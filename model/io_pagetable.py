"""struct io_pagetable (drivers/iommu/iommufd/io_pagetable.c): areas, reserved and allowed ranges.

The kernel keeps three interval trees (area_itree, reserved_itree, allowed_itree). Here:
- areas are disjoint: sorted by start in blocks (_Areas), O(log n + B) per lookup/insert/remove;
- the holes of reserved ∪ areas (what interval_tree_for_each_double_span() walks in
  iopt_alloc_iova()) are kept as maximal holes in blocks of at most 2*_B, each block knowing
  its longest hole, so the first-fit search skips whole blocks that cannot fit the length;
- reserved and allowed ranges are few (sorted lists, their merged spans precomputed).
Every operation validates before it changes anything, so a failed one leaves no trace, except
where the kernel itself commits part of the work (iopt_unmap_iova_range()).

The block structures and the allocator answer status codes (0 or an errno, as the kernel's
return -errno); the iopt_* entry points the handlers call raise IommufdError.

Domains: iopt->domains are IommuDomains (model/domain.py). Every area of the table is filled
into every domain (iopt_area_fill_domains() for a new area, iopt_fill_domain() for a new
domain); an area's pages are pinned while it is filled (area.filled, the pages' domains_itree).
"""
from __future__ import annotations

import bisect
import errno

from model import fault_inject
from model.domain import IOMMU_CACHE, IOMMU_MMIO, IOMMU_WRITE, IommuDomain
from model.limits import CONFIG_TRANSPARENT_HUGEPAGE, HPAGE_SIZE, PAGE_SIZE, U64_MAX, ULONG_MAX
from model.objects import IommufdError
from model.pages import (
    IOPT_ADDRESS_DMABUF, IOPT_ADDRESS_USER, iopt_dmabuf_track_all_domains, iopt_dmabuf_track_domain,
    iopt_dmabuf_untrack_all_domains, iopt_dmabuf_untrack_domain, iopt_put_pages, temp_kmalloc,
)

_B = 64


def _err(e: int):
    raise IommufdError(e)


class _Blk:
    __slots__ = ("starts", "lasts", "maxlen")

    def __init__(self, starts, lasts):
        self.starts = starts
        self.lasts = lasts
        self.maxlen = max((l - s + 1 for s, l in zip(starts, lasts)), default=0)

    def recompute(self):
        self.maxlen = max((l - s + 1 for s, l in zip(self.starts, self.lasts)), default=0)


class _Holes:
    """Maximal holes of reserved ∪ areas, in address order, blocked for first fit."""

    def __init__(self, holes):
        self.build(holes)

    def build(self, holes):
        self.blks = [_Blk([s for s, _ in holes[i:i + _B]], [l for _, l in holes[i:i + _B]])
                     for i in range(0, len(holes), _B)]
        self.firsts = [b.starts[0] for b in self.blks]

    def __iter__(self):
        for b in self.blks:
            yield from zip(b.starts, b.lasts)

    def _locate(self, x):
        """(block, index) of the hole with the largest start <= x, or (0, -1)."""
        bi = bisect.bisect_right(self.firsts, x) - 1
        if bi < 0:
            return 0, -1
        return bi, bisect.bisect_right(self.blks[bi].starts, x) - 1

    def _fix(self, bi):
        b = self.blks[bi]
        if not b.starts:
            del self.blks[bi], self.firsts[bi]
            return
        self.firsts[bi] = b.starts[0]
        if len(b.starts) > 2 * _B:
            nb = _Blk(b.starts[_B:], b.lasts[_B:])
            del b.starts[_B:], b.lasts[_B:]
            b.recompute()
            self.blks.insert(bi + 1, nb)
            self.firsts.insert(bi + 1, nb.starts[0])

    def take(self, s, l):
        """[s, l] becomes used; it lies inside one hole (iopt_check_iova() / the allocator said so)."""
        bi, j = self._locate(s)
        b = self.blks[bi]
        hs, hl = b.starts[j], b.lasts[j]
        assert hs <= s and l <= hl, (hs, hl, s, l)
        new_s, new_l = [], []
        if hs < s:
            new_s.append(hs), new_l.append(s - 1)
        if l < hl:
            new_s.append(l + 1), new_l.append(hl)
        b.starts[j:j + 1] = new_s
        b.lasts[j:j + 1] = new_l
        if hl - hs + 1 == b.maxlen:
            b.recompute()
        self._fix(bi)

    def give(self, s, l):
        """[s, l] (a removed area, never reserved) becomes a hole, merged with its neighbours."""
        if not self.blks:
            self.build([(s, l)])
            return
        bi, j = self._locate(s)
        if j >= 0 and self.blks[bi].lasts[j] == s - 1:
            pb, pj = bi, j
        else:
            pb = None
        # the next hole
        if j + 1 < len(self.blks[bi].starts):
            nb_, nj = bi, j + 1
        elif bi + 1 < len(self.blks) and j >= 0:
            nb_, nj = bi + 1, 0
        elif j < 0:
            nb_, nj = 0, 0
        else:
            nb_ = None
        if nb_ is not None and not (nb_ < len(self.blks) and self.blks[nb_].starts[nj] == l + 1):
            nb_ = None
        if pb is not None and nb_ is not None:
            p, n = self.blks[pb], self.blks[nb_]
            p.lasts[pj] = n.lasts[nj]
            ln = p.lasts[pj] - p.starts[pj] + 1
            del n.starts[nj], n.lasts[nj]
            if n is not p:
                n.recompute()
                if ln > p.maxlen:
                    p.maxlen = ln
                self._fix(nb_)
            elif ln > p.maxlen:
                p.maxlen = ln
            self._fix(pb)
        elif pb is not None:
            p = self.blks[pb]
            p.lasts[pj] = l
            p.maxlen = max(p.maxlen, l - p.starts[pj] + 1)
        elif nb_ is not None:
            n = self.blks[nb_]
            n.starts[nj] = s
            n.maxlen = max(n.maxlen, n.lasts[nj] - s + 1)
            self._fix(nb_)
        else:
            if j < 0:
                bi, j = 0, -1
            b = self.blks[bi]
            b.starts.insert(j + 1, s)
            b.lasts.insert(j + 1, l)
            b.maxlen = max(b.maxlen, l - s + 1)
            self._fix(bi)

    def first_fit(self, first, last, fits):
        """interval_tree_for_each_double_span(first, last), holes only, first hole `fits` accepts.
        Holes shorter than `fits.length` cannot fit after alignment: whole blocks of them are skipped."""
        length = fits.length
        bi, j = self._locate(first)
        if j < 0:
            j = 0
        nblks = len(self.blks)
        while bi < nblks:
            b = self.blks[bi]
            if b.maxlen >= length:
                starts, lasts = b.starts, b.lasts
                for k in range(j, len(starts)):
                    hs, hl = starts[k], lasts[k]
                    if hl < first:
                        continue
                    if hs > last:
                        return None
                    if hl - hs + 1 < length:
                        continue
                    r = fits(max(hs, first), min(hl, last))
                    if r is not None:
                        return r
            elif b.starts and b.starts[0] > last:
                return None
            bi += 1
            j = 0
        return None


def _spans(nodes):
    """interval_tree_span_iter used spans: overlapping or adjacent nodes merged."""
    out = []
    for s, l in sorted((n[0], n[1]) for n in nodes):
        if out and (out[-1][1] >= s or out[-1][1] + 1 == s):
            if l > out[-1][1]:
                out[-1] = (out[-1][0], l)
        else:
            out.append((s, l))
    return out


def _holes_of(spans, first=0, last=U64_MAX):
    """The holes of sorted disjoint `spans` within [first, last]."""
    cur = first
    for rs, rl in spans:
        if rl < cur:
            continue
        if rs > last:
            break
        if rs > cur:
            yield cur, rs - 1
        if rl >= last:
            return
        cur = rl + 1
    if cur <= last:
        yield cur, last


def roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


class _Fits:
    """__alloc_iova_check_range()."""

    __slots__ = ("length", "align", "page_offset")

    def __init__(self, length, align, page_offset):
        self.length, self.align, self.page_offset = length, align, page_offset

    def __call__(self, start, last):
        aligned = start + self.align - 1
        if aligned > U64_MAX:  # check_add_overflow()
            return None
        aligned = (aligned & ~(self.align - 1)) | self.page_offset
        if aligned >= last or last - aligned < self.length - 1:
            return None
        return aligned


class IopArea:
    """struct iopt_area: [start, last] of IOVA mapping the bytes of `pages` from index*PAGE_SIZE+page_offset."""

    __slots__ = ("start", "last", "pages", "page_offset", "index", "last_index", "iommu_prot",
                 "num_locks", "num_accesses", "prevent_access", "filled")

    def __init__(self, start, last, pages, page_offset, index, last_index, iommu_prot):
        self.start, self.last, self.pages = start, last, pages
        self.page_offset, self.index, self.last_index = page_offset, index, last_index
        self.iommu_prot = iommu_prot
        self.num_locks = 0
        self.num_accesses = 0
        self.prevent_access = False  # set by an unmap waiting for accesses to go
        self.filled = False  # in pages->domains_itree: pinned and mapped into every domain

    def start_byte(self, iova: int) -> int:
        """iopt_area_start_byte()."""
        return (iova - self.start) + self.page_offset + self.index * PAGE_SIZE


class _Areas:
    """The area tree: disjoint areas sorted by start, in blocks of at most 2*_B (bisect on the
    blocks' first starts, then in the block): O(log n + B) lookup, insertion and removal."""

    __slots__ = ("bs", "ba", "firsts", "n")

    def __init__(self):
        self.bs: list[list[int]] = []  # starts per block
        self.ba: list[list[IopArea]] = []  # areas per block
        self.firsts: list[int] = []
        self.n = 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for blk in self.ba:
            yield from blk

    def clear(self):
        self.bs, self.ba, self.firsts, self.n = [], [], [], 0

    def first(self, start: int, last: int):
        """iopt_area_iter_first(): (block, index) of the lowest area meeting [start, last], or None."""
        firsts = self.firsts
        bi = bisect.bisect_right(firsts, start) - 1
        if bi >= 0:
            bs = self.bs[bi]
            j = bisect.bisect_right(bs, start) - 1
            if self.ba[bi][j].last >= start:
                return bi, j
            j += 1
            if j == len(bs):
                bi, j = bi + 1, 0
        else:
            bi, j = 0, 0
        if bi < len(firsts) and self.bs[bi][j] <= last:
            return bi, j
        return None

    def next(self, bi: int, j: int):
        j += 1
        if j == len(self.bs[bi]):
            bi, j = bi + 1, 0
            if bi == len(self.bs):
                return None
        return bi, j

    def at(self, pos) -> IopArea:
        return self.ba[pos[0]][pos[1]]

    def insert(self, area: IopArea) -> None:
        if not self.bs:
            self.bs.append([area.start]), self.ba.append([area]), self.firsts.append(area.start)
            self.n = 1
            return
        bi = max(0, bisect.bisect_right(self.firsts, area.start) - 1)
        bs, ba = self.bs[bi], self.ba[bi]
        j = bisect.bisect_left(bs, area.start)
        bs.insert(j, area.start)
        ba.insert(j, area)
        self.firsts[bi] = bs[0]
        self.n += 1
        if len(bs) > 2 * _B:
            self.bs.insert(bi + 1, bs[_B:]), self.ba.insert(bi + 1, ba[_B:])
            del bs[_B:], ba[_B:]
            self.firsts.insert(bi + 1, self.bs[bi + 1][0])

    def remove(self, area: IopArea) -> None:
        bi = bisect.bisect_right(self.firsts, area.start) - 1
        bs, ba = self.bs[bi], self.ba[bi]
        j = bisect.bisect_left(bs, area.start)
        del bs[j], ba[j]
        self.n -= 1
        if not bs:
            del self.bs[bi], self.ba[bi], self.firsts[bi]
        else:
            self.firsts[bi] = bs[0]



class _NoBitmap:
    """iommu_dirty_bitmap_init(&dirty, NULL, ...): records go nowhere."""

    def record(self, iova: int, length: int) -> None:
        pass


class IoPagetable:
    def __init__(self):
        self.iova_alignment = 1  # iopt_init_table(): SW tables have no alignment restriction
        self.reserved: list[tuple[int, int]] = []  # merged spans of the reserved tree
        self._reserved_nodes: list[tuple[int, int, object]] = []  # (start, last, owner)
        self.allowed: list[tuple[int, int]] = []  # allowed_itree nodes, sorted
        self._allowed_spans: list[tuple[int, int]] = []
        self._areas = _Areas()
        self._holes = _Holes([(0, U64_MAX)])
        self.domains: list[IommuDomain] = []  # iopt->domains: every area is filled into each
        self.accesses: dict[int, object] = {}  # access_list: iommufd_access by its 16-bit ID
        self.disable_large_pages = False

    # -- introspection (model only) ------------------------------------------------------

    @property
    def areas(self) -> list[IopArea]:
        return list(self._areas)

    def iter_areas(self):
        """iopt_area_iter_first(0, ULONG_MAX) / iopt_area_iter_next(): every area in IOVA order."""
        return iter(self._areas)

    @property
    def pinned_pages(self) -> int:
        """Sum of npinned over the distinct iopt_pages this table's areas use."""
        return sum(p.npinned for p in {id(a.pages): a.pages for a in self._areas}.values())

    def snapshot(self):
        """Everything observable about the table, for 'a failed ioctl changed nothing' checks."""
        return (self.iova_alignment, tuple(self._reserved_nodes), tuple(self.allowed),
                tuple((a.start, a.last, id(a.pages), a.page_offset, a.index, a.iommu_prot) for a in self._areas),
                tuple(self._holes), self.pinned_pages,
                tuple(sorted({id(a.pages): a.pages.refs for a in self._areas}.items())))

    def check_invariants(self) -> None:
        """AssertionError unless the table is consistent: areas sorted and disjoint, outside the
        reserved ranges, the hole blocks exactly the complement of reserved ∪ areas with their
        longest holes right, each area's pages referenced and pinned as its domains need."""
        areas = list(self._areas)
        for a, b in zip(areas, areas[1:]):
            assert a.last < b.start, f"areas overlap or are out of order: {a.start:#x}-{a.last:#x}, {b.start:#x}"
        for a in areas:
            assert a.start <= a.last and not self._reserved_intersects(a.start, a.last), f"area {a.start:#x}"
            assert a.pages.refs >= 1, f"area {a.start:#x}: its pages have no reference"
            assert a.filled == bool(self.domains), f"area {a.start:#x}: filled={a.filled}, {len(self.domains)} domains"
            if a.filled:
                assert (a.index, a.last_index) in a.pages.domain_spans, f"area {a.start:#x} not in domains_itree"
        assert len(self._areas) == len(areas) and self._areas.firsts == [b[0] for b in self._areas.bs]
        used = _spans(self.reserved + [(a.start, a.last) for a in areas])
        assert list(self._holes) == list(_holes_of(used)), "the hole list is not the complement of reserved and areas"
        for blk in self._holes.blks:
            assert blk.maxlen == max((l - s + 1 for s, l in zip(blk.starts, blk.lasts)), default=0)
        assert self._holes.firsts == [b.starts[0] for b in self._holes.blks]
        assert self.reserved == _spans(self._reserved_nodes) and self._allowed_spans == _spans(self.allowed)
        for p in {id(a.pages): a.pages for a in areas}.values():
            if p.type == IOPT_ADDRESS_DMABUF:  # nothing pinned; every filled area tracked per domain
                assert not p.pfns and not p.npinned and not p.access_users, "a dma-buf with pins"
                continue
            assert set(p.pfns) == p.held_indexes() and p.npinned == len(p.pfns), \
                "the pinned pages are not what the filled areas and accesses hold"
        for a in areas:
            if a.pages.type == IOPT_ADDRESS_DMABUF:
                tracked = [d for t, d in a.pages.dmabuf.tracker if t is a]
                assert len(tracked) == len(self.domains) and all(any(d is t for t in tracked) for d in self.domains), \
                    f"area {a.start:#x}: its dma-buf tracker is not the table's domains"

    def allowed_holes(self, start: int, last: int):
        """interval_tree_for_each_span over reserved_itree: the holes in [start, last]."""
        return _holes_of(self.reserved, start, last)

    # -- lookups ---------------------------------------------------------------------------

    def area_iter_first(self, start: int, last: int):
        """iopt_area_iter_first(): position of the lowest area intersecting [start, last], or None."""
        return self._areas.first(start, last)

    def _reserved_intersects(self, start: int, last: int) -> bool:
        """iopt_reserved_iter_first() != NULL."""
        r = self.reserved
        i = bisect.bisect_right(r, (start, U64_MAX + 1)) - 1
        if i >= 0 and r[i][1] >= start:
            return True
        return i + 1 < len(r) and r[i + 1][0] <= last

    def _allowed_intersects(self, start: int, last: int) -> bool:
        return any(s <= last and start <= l for s, l in self.allowed)

    # -- the IOVA allocator ------------------------------------------------------------------

    def alloc_iova(self, addr: int, length: int) -> tuple[int, int]:
        """iopt_alloc_iova() (io_pagetable.c): (0, iova) or (errno, 0); never IOVA 0."""
        page_offset = addr % PAGE_SIZE
        if length == 0 or length >= ULONG_MAX // 2:
            return errno.EOVERFLOW, 0
        if not addr:
            iova_alignment = roundup_pow_of_two(length)
        else:
            iova_alignment = min(roundup_pow_of_two(length), addr & -addr)  # 1UL << __ffs64(addr)
        # CONFIG_TRANSPARENT_HUGEPAGE: at most HPAGE_SIZE, else PAGE_SIZE
        max_alignment = HPAGE_SIZE if CONFIG_TRANSPARENT_HUGEPAGE else PAGE_SIZE
        if iova_alignment >= max_alignment:
            iova_alignment = max_alignment
        if iova_alignment < self.iova_alignment:
            return errno.EINVAL, 0
        fits = _Fits(length, iova_alignment, page_offset)
        lo, hi = PAGE_SIZE, ULONG_MAX - PAGE_SIZE
        if not self.allowed:
            allowed = [(lo, hi)]
        else:
            allowed = [(max(s, lo), min(l, hi)) for s, l in self._allowed_spans if s <= hi and l >= lo]
        for a_start, a_last in allowed:
            a_start = fits(a_start, a_last)  # __alloc_iova_check_used() moves start_used
            if a_start is None:
                continue
            iova = self._holes.first_fit(a_start, a_last, fits)
            if iova is not None:
                return 0, iova
        return errno.ENOSPC, 0

    def check_iova(self, iova: int, length: int) -> int:
        """iopt_check_iova(): EINVAL misaligned or reserved, EOVERFLOW, EEXIST over an area, or 0.
        Allowed ranges are not consulted: they only steer the allocator."""
        if iova & (self.iova_alignment - 1):
            return errno.EINVAL
        last = iova + length - 1
        if last > U64_MAX:
            return errno.EOVERFLOW
        if self._reserved_intersects(iova, last):
            return errno.EINVAL
        if self.area_iter_first(iova, last) is not None:
            return errno.EEXIST
        return 0

    # -- map / unmap ---------------------------------------------------------------------------

    def map_pages(self, mm, pages_list, length: int, iova: int, iommu_prot: int, alloc: bool) -> int:
        """iopt_map_pages() -> iopt_alloc_area_pages() + iopt_insert_area() + iopt_fill_domains_pages().

        pages_list: [(pages, start_byte, length)], the areas to make back to back from iova.
        Each area takes a reference on its pages (the list's references move in). The areas
        are allocated first, before any check (io_pagetable.c:266)."""
        for _ in pages_list:
            fault_inject.kmalloc("iopt_alloc_area_pages: iopt_area_alloc")
        if (length & (self.iova_alignment - 1)) or not length:
            _err(errno.EINVAL)
        if alloc:
            pages, start_byte, _ = pages_list[0]  # "the first entry to guess the ideal IOVA alignment"
            if pages.type == IOPT_ADDRESS_USER:
                start = start_byte + pages.uptr
            else:
                start = start_byte + pages.start
            rc, iova = self.alloc_iova(start, length)
            if rc:
                _err(rc)
            rc = self.check_iova(iova, length)  # WARN_ON under CONFIG_IOMMUFD_TEST
        else:
            rc = self.check_iova(iova, length)
        if rc:
            _err(rc)
        new = []
        cur = iova
        for pages, start_byte, elm_length in pages_list:  # iopt_insert_area()
            if (iommu_prot & IOMMU_WRITE) and not pages.writable:
                _err(errno.EPERM)
            page_offset = start_byte % PAGE_SIZE
            if page_offset & (self.iova_alignment - 1):
                _err(errno.EINVAL)
            last = cur + elm_length - 1
            if last > U64_MAX:
                _err(errno.EOVERFLOW)
            plast = start_byte + elm_length - 1
            if plast > U64_MAX:
                _err(errno.EOVERFLOW)
            if plast // PAGE_SIZE >= pages.npages:  # WARN_ON
                _err(errno.EOVERFLOW)
            new.append(IopArea(cur, last, pages, page_offset, start_byte // PAGE_SIZE, plast // PAGE_SIZE,
                               iommu_prot))
            cur += elm_length
        if self.domains:  # iopt_fill_domains_pages(): undone as a whole on failure
            done = []
            try:
                for area in new:
                    self.area_fill_domains(mm, area)
                    done.append(area)
            except BaseException:
                for area in done:
                    self.area_unfill_domains(area)
                raise
        for area in new:
            self._areas.insert(area)
            self._holes.take(area.start, area.last)
            area.pages.refs += 1
        return iova

    def _release(self, area: IopArea) -> None:
        if area.filled:
            self.area_unfill_domains(area)
        iopt_put_pages(area.pages)

    # -- domains ---------------------------------------------------------------------------------

    def _area_map(self, domain: IommuDomain, area: IopArea, pfns: list[int]) -> None:
        """batch_to_domain() (pages.c): the area's pages into one domain, one iommu_map() per run
        of consecutive frames; the first from area.page_offset, the last up to area.last."""
        iova, k, n = area.start, 0, len(pfns)
        page_offset = area.page_offset
        prot = area.iommu_prot
        if area.pages.type == IOPT_ADDRESS_DMABUF:  # BATCH_MMIO (pages.c:520)
            prot = (prot & ~IOMMU_CACHE) | IOMMU_MMIO
        while k < n:
            j = k + 1
            while j < n and pfns[j] == pfns[j - 1] + 1:
                j += 1
            next_iova = min(area.last + 1, iova + (j - k) * PAGE_SIZE - page_offset)
            paddr = pfns[k] * PAGE_SIZE + page_offset
            if self.disable_large_pages:
                self._map_small(domain, iova, paddr, next_iova - iova, prot)
            else:
                domain.map(iova, paddr, next_iova - iova, prot)
            iova, k, page_offset = next_iova, j, 0

    @staticmethod
    def _map_small(domain: IommuDomain, iova: int, paddr: int, size: int, prot: int) -> None:
        """batch_iommu_map_small(): one PAGE_SIZE iommu_map() at a time (no large IOPTE that a
        type1 unmap would have to split); what was mapped is unmapped on a failure."""
        done = 0
        try:
            while done < size:
                domain.map(iova + done, paddr + done, PAGE_SIZE, prot)
                done += PAGE_SIZE
        except IommufdError:
            if done:
                domain.unmap(iova, done)
            raise

    @staticmethod
    def _area_unmap(domain: IommuDomain, area: IopArea) -> None:
        """iopt_area_unmap_domain(): iommu_unmap_nofail() of the area's whole IOVA range; never
        for a revoked dma-buf, which iopt_revoke_notify() unmapped (every caller checks
        iopt_dmabuf_revoked(): io_pagetable.c:1012, pages.c:1858, 2017)."""
        if area.pages.revoked:
            return
        domain.unmap(area.start, area.last - area.start + 1)

    def area_fill_domains(self, mm, area: IopArea) -> None:
        """iopt_area_fill_domains(): pin the area's pages, then map them into every domain; on a
        failure the domains already filled are unmapped and the pin is dropped. A dma-buf's
        area is tracked in every domain first, and a revoked one maps nothing (pages.c:1920)."""
        pages = area.pages
        if pages.type == IOPT_ADDRESS_DMABUF:
            iopt_dmabuf_track_all_domains(area, pages, self.domains)
        try:
            pfns = pages.fill(mm, area.index, area.last_index)
        except BaseException:
            if pages.type == IOPT_ADDRESS_DMABUF:
                iopt_dmabuf_untrack_all_domains(area, pages)
            raise
        done = []
        try:
            for domain in self.domains if pfns is not None else ():
                self._area_map(domain, area, pfns)
                done.append(domain)
        except BaseException:
            for domain in done:
                self._area_unmap(domain, area)
            pages.unfill(area.index, area.last_index)
            if pages.type == IOPT_ADDRESS_DMABUF:
                iopt_dmabuf_untrack_all_domains(area, pages)
            raise
        area.filled = True

    def area_unfill_domains(self, area: IopArea) -> None:
        """iopt_area_unfill_domains(): unmap from every domain, then unpin what no other area holds."""
        for domain in self.domains:
            self._area_unmap(domain, area)
        area.pages.unfill(area.index, area.last_index)
        if area.pages.type == IOPT_ADDRESS_DMABUF:
            iopt_dmabuf_untrack_all_domains(area, area.pages)
        area.filled = False

    def table_add_domain(self, mm, domain: IommuDomain) -> None:
        """iopt_table_add_domain(): the domain's smallest page size above PAGE_SIZE is EINVAL, an
        area it cannot map EADDRINUSE (iopt_check_iova_alignment()); what lies outside its
        aperture becomes reserved (owned by the domain; EADDRINUSE over an area or an allowed
        range); then iopt_fill_domain(): every area into the new domain (pinning the first time
        a domain appears). On failure the areas done are taken out again and the reservations go."""
        new_alignment = max(domain.pgsize_bitmap & -domain.pgsize_bitmap, self.iova_alignment)
        if new_alignment > PAGE_SIZE:
            _err(errno.EINVAL)
        if new_alignment != self.iova_alignment:
            self.check_iova_alignment(new_alignment)
        try:
            if domain.aperture_start != 0:
                self.reserve_iova(0, domain.aperture_start - 1, domain)
            if domain.aperture_end != ULONG_MAX:
                self.reserve_iova(domain.aperture_end + 1, ULONG_MAX, domain)
            self._fill_domain(mm, domain)
        except BaseException:
            self.remove_reserved_iova(domain)
            raise
        self.domains.append(domain)
        self.iova_alignment = new_alignment

    def _fill_domain(self, mm, domain: IommuDomain) -> None:
        """iopt_fill_domain(): each area through a pfn_reader (its batch first); a dma-buf's area
        is tracked in the domain first (io_pagetable.c:1068) and, revoked, maps nothing."""
        done = []
        try:
            for area in self._areas:
                pages = area.pages
                dmabuf = pages.type == IOPT_ADDRESS_DMABUF
                if dmabuf:
                    iopt_dmabuf_track_domain(pages, area, domain)
                try:
                    if area.filled:
                        pfns = pages.domain_pfns(area.index, area.last_index)
                        if pfns is not None:
                            temp_kmalloc("__batch_init")  # iopt_area_fill_domain() -> pfn_reader_first()
                            self._area_map(domain, area, pfns)
                    else:
                        pfns = pages.fill(mm, area.index, area.last_index)
                        try:
                            if pfns is not None:
                                self._area_map(domain, area, pfns)
                        except BaseException:
                            pages.unfill(area.index, area.last_index)
                            raise
                except BaseException:
                    if dmabuf:
                        iopt_dmabuf_untrack_domain(pages, area, domain)
                    raise
                done.append(area)
        except BaseException:
            for area in done:
                self._area_unmap(domain, area)
                if not area.filled:
                    area.pages.unfill(area.index, area.last_index)
                if area.pages.type == IOPT_ADDRESS_DMABUF:
                    iopt_dmabuf_untrack_domain(area.pages, area, domain)
            raise
        for area in done:
            area.filled = True

    def table_remove_domain(self, domain: IommuDomain) -> None:
        """iopt_table_remove_domain() -> iopt_unfill_domain(): unmap every area; the last domain
        going unpins them."""
        self.domains.remove(domain)
        for area in self._areas:
            self._area_unmap(domain, area)
            if area.pages.type == IOPT_ADDRESS_DMABUF:  # io_pagetable.c:1014, 1037
                iopt_dmabuf_untrack_domain(area.pages, area, domain)
            if not self.domains and area.filled:
                area.pages.unfill(area.index, area.last_index)
                area.filled = False
        self.remove_reserved_iova(domain)
        self.calculate_iova_alignment()

    def unmap_iova_range(self, start: int, last: int) -> tuple[int, int]:
        """iopt_unmap_iova_range(): every area inside [start, last] goes, in IOVA order; the first
        area that sticks out of the range stops the walk with ENOENT, and what was unmapped before
        it stays unmapped. Returns (unmapped bytes, errno or 0)."""
        areas = self._areas
        pos = areas.first(start, last)
        rc, unmapped, gone = 0, 0, []
        tries = 0
        while pos is not None:
            a = areas.at(pos)
            if a.start > last:
                break
            if a.num_locks:  # locked by an object that has not been destroyed
                rc = errno.EBUSY
                break
            if a.start < start or a.last > last:
                rc = errno.ENOENT
                break
            if a.num_accesses:
                # iommufd_access_notify_unmap(): every access's unmap op must unpin, then retry
                a.prevent_access = True
                self.notify_unmap(a.start, a.last - a.start + 1)
                tries += 1
                if tries > 100:  # WARN_ON: something is not responding to unmap requests
                    rc = errno.EDEADLOCK
                    break
                continue
            tries = 0
            unmapped += a.last - a.start + 1
            gone.append(a)
            pos = areas.next(*pos)
        if not gone:
            return 0, rc
        for a in gone:
            self._release(a)
        if len(gone) == len(areas):
            areas.clear()
            self._holes.build(list(_holes_of(self.reserved)))
        else:
            for a in gone:
                areas.remove(a)
                self._holes.give(a.start, a.last)
        return unmapped, rc

    def notify_unmap(self, iova: int, length: int) -> None:
        """iommufd_access_notify_unmap(): each access's ops->unmap, in access_list order."""
        for access in list(self.accesses.values()):
            access.notify_unmap(iova, length)

    def area_split(self, area: IopArea, iova: int) -> None:
        """iopt_area_split(): [start, iova] and [iova + 1, last] over the same pages. Cutting at
        the area's first or last byte changes nothing; both halves must start aligned (EINVAL);
        an area with accesses cannot split (EINVAL). No hole or pin changes."""
        if iova in (area.start, area.last):
            return
        if area.pages.type == IOPT_ADDRESS_DMABUF:  # io_pagetable.c:1318
            _err(errno.EOPNOTSUPP)
        new_start = iova + 1
        align = self.iova_alignment - 1
        if new_start & align or area.start_byte(new_start) & align:
            _err(errno.EINVAL)
        if area.num_accesses:
            _err(errno.EINVAL)
        halves = []
        for start, last in ((area.start, iova), (new_start, area.last)):
            sb = area.start_byte(start)
            halves.append(IopArea(start, last, area.pages, sb % PAGE_SIZE, sb // PAGE_SIZE,
                                  (sb + last - start) // PAGE_SIZE, area.iommu_prot))
        self._areas.remove(area)
        for half in halves:
            self._areas.insert(half)
        area.pages.refs += 1  # kref_get() for the second half

    def cut_iova(self, iovas) -> None:
        """iopt_cut_iova(): split the area holding each IOVA there, stopping at the first error."""
        for iova in iovas:
            pos = self._areas.first(iova, iova)
            if pos is not None:
                self.area_split(self._areas.at(pos), iova)

    def unmap_iova(self, iova: int, length: int) -> tuple[int, int]:
        """iopt_unmap_iova(): EINVAL length 0, EOVERFLOW past the end."""
        if not length:
            _err(errno.EINVAL)
        if iova + length - 1 > U64_MAX:
            _err(errno.EOVERFLOW)
        return self.unmap_iova_range(iova, iova + length - 1)

    def unmap_all(self) -> tuple[int, int]:
        """iopt_unmap_all()."""
        return self.unmap_iova_range(0, ULONG_MAX)

    def get_pages(self, iova: int, length: int):
        """iopt_get_pages(): the (pages, start_byte, length) slices of contiguous areas covering
        [iova, iova + length - 1]; any part of an area may be taken. ENOENT on a gap."""
        if not length:
            _err(errno.EINVAL)
        last_iova = iova + length - 1
        if last_iova > U64_MAX:
            _err(errno.EOVERFLOW)
        areas = self._areas
        pos = areas.first(iova, iova)  # iopt_area_contig_init()
        out = []
        cur = iova
        while pos is not None:
            a = areas.at(pos)
            if a.start > cur or a.last < cur:
                break
            fault_inject.kmalloc("iopt_get_pages: kzalloc elm")  # io_pagetable.c:718
            out.append((a.pages, a.start_byte(cur), min(last_iova, a.last) - cur + 1))
            if last_iova <= a.last:
                return out  # iopt_area_contig_done()
            cur = a.last + 1
            pos = areas.next(*pos)
        _err(errno.ENOENT)

    # -- allowed and reserved ranges --------------------------------------------------------

    def set_allow_iova(self, ranges: list[tuple[int, int]]) -> None:
        """iopt_set_allow_iova(): EADDRINUSE if a range intersects a reserved one; areas are not checked."""
        for s, l in ranges:
            if self._reserved_intersects(s, l):
                _err(errno.EADDRINUSE)
        self.allowed = sorted(ranges)
        self._allowed_spans = _spans(self.allowed)

    def reserve_iova(self, start: int, last: int, owner=None) -> None:
        """iopt_reserve_iova(): EADDRINUSE over an area or an allowed range, then the node's
        kzalloc (io_pagetable.c:901)."""
        if self.area_iter_first(start, last) is not None or self._allowed_intersects(start, last):
            _err(errno.EADDRINUSE)
        fault_inject.kmalloc("iopt_reserve_iova: kzalloc")
        self._reserved_nodes.append((start, last, owner))
        self._reserved_changed()

    def remove_reserved_iova(self, owner) -> None:
        """iopt_remove_reserved_iova(): every range `owner` reserved."""
        self._reserved_nodes = [n for n in self._reserved_nodes if n[2] is not owner]
        self._reserved_changed()

    def _reserved_changed(self):
        self.reserved = _spans(self._reserved_nodes)
        used = _spans(self.reserved + [(a.start, a.last) for a in self._areas])
        self._holes.build(list(_holes_of(used)))

    def check_iova_alignment(self, new: int) -> None:
        """iopt_check_iova_alignment(): EADDRINUSE if an area does not suit the new alignment."""
        mask = new - 1
        for a in self._areas:
            if a.start & mask or (a.last - a.start + 1) & mask or a.page_offset & mask:
                _err(errno.EADDRINUSE)

    def calculate_iova_alignment(self) -> int:
        """iopt_calculate_iova_alignment(): PAGE_SIZE with large pages disabled, else 1, and at least
        each domain's smallest page size and each access's alignment; growing it fails with
        EADDRINUSE if an area is not aligned (nothing changes then)."""
        new = PAGE_SIZE if self.disable_large_pages else 1
        for domain in self.domains:
            new = max(new, domain.pgsize_bitmap & -domain.pgsize_bitmap)
        for access in self.accesses.values():
            new = max(new, access.iova_alignment)
        if new > self.iova_alignment:
            self.check_iova_alignment(new)
        self.iova_alignment = new
        return new

    # -- in-kernel accesses (iommufd_access) --------------------------------------------------

    def add_access(self, access) -> int:
        """iopt_add_access(): the lowest free 16-bit ID in access_list; the alignment grows to the
        access's (EADDRINUSE if an area does not suit it: the access is not added)."""
        new_id = next(i for i in range(len(self.accesses) + 1) if i not in self.accesses)
        if new_id > 0xFFFF:
            _err(errno.EBUSY)  # xa_limit_16b
        self.accesses[new_id] = access
        try:
            self.calculate_iova_alignment()
        except IommufdError:
            del self.accesses[new_id]
            raise
        return new_id

    def remove_access(self, access_id: int) -> None:
        """iopt_remove_access()."""
        del self.accesses[access_id]
        self.calculate_iova_alignment()

    def contig_areas(self, iova: int, last_iova: int) -> tuple[list, bool]:
        """iopt_for_each_contig_area(): the areas covering [iova, last_iova] without a gap from
        iova on, as (area, cur_iova, last in area), and whether they reach last_iova
        (iopt_area_contig_done())."""
        areas = self._areas
        pos = areas.first(iova, iova)
        out, cur = [], iova
        while pos is not None:
            a = areas.at(pos)
            if a.start > cur or a.last < cur:
                break
            out.append((a, cur, min(last_iova, a.last)))
            if last_iova <= a.last:
                return out, True
            cur = a.last + 1
            pos = areas.next(*pos)
        return out, False

    # -- dirty tracking ------------------------------------------------------------------------

    def set_dirty_tracking(self, domain, enable: bool) -> None:
        """iopt_set_dirty_tracking(): EOPNOTSUPP without dirty ops; enabling first clears the D
        bits of every area's IOPTEs (iopt_clear_dirty_data()), then set_dirty_tracking()."""
        if domain.dirty_ops is None:
            _err(errno.EOPNOTSUPP)
        if enable:
            for a in self._areas:
                domain.read_and_clear_dirty(a.start, a.last - a.start + 1, 0, _NoBitmap())
        domain.dirty_ops.set_dirty_tracking(domain, enable)

    def check_dirty_range(self, iova: int, length: int, page_size: int) -> int:
        """iommufd_check_iova_range(): EOVERFLOW past ULONG_MAX, EINVAL misaligned to the table's
        alignment or to page_size, or page_size 0. Returns the last IOVA."""
        # length - 1 wraps for length 0 in the kernel: only iova 0 then escapes EOVERFLOW
        last_iova = iova + length - 1 if length else (U64_MAX if iova == 0 else U64_MAX + 1)
        if last_iova > ULONG_MAX:
            _err(errno.EOVERFLOW)
        mask = self.iova_alignment - 1
        if iova & mask or ((last_iova + 1) & U64_MAX) & mask:
            _err(errno.EINVAL)
        if not page_size:
            _err(errno.EINVAL)
        if iova & (page_size - 1) or ((last_iova + 1) & U64_MAX) & (page_size - 1):
            _err(errno.EINVAL)
        return last_iova

    def read_and_clear_dirty(self, domain, iova: int, last_iova: int, flags: int, bitmap) -> None:
        """iommu_read_and_clear_dirty() -> __iommu_read_and_clear_dirty(): the domain's
        read_and_clear_dirty over each contiguous area of the range. Its result, a gap included,
        is dropped: iova_bitmap_for_each()'s return value is ignored and 0 returned (7.2)."""
        if domain.dirty_ops is None:
            _err(errno.EOPNOTSUPP)
        areas, _done = self.contig_areas(iova, last_iova)
        for area, cur, last in areas:
            try:
                domain.read_and_clear_dirty(cur, last - cur + 1, flags, bitmap)
            except IommufdError:
                return

    def destroy(self) -> None:
        """iommufd_ioas_destroy(): iopt_unmap_all() + iopt_destroy_table()."""
        self.unmap_all()
        self.allowed, self._allowed_spans = [], []


def iopt_disable_large_pages(iopt: IoPagetable) -> None:
    """iopt_disable_large_pages(): EINVAL once domains hold mappings; the flag is rolled back if
    the alignment cannot grow."""
    if iopt.disable_large_pages:
        return
    if iopt.domains and len(iopt._areas):
        _err(errno.EINVAL)
    iopt.disable_large_pages = True
    try:
        iopt.calculate_iova_alignment()
    except IommufdError:
        iopt.disable_large_pages = False
        raise


def iopt_enable_large_pages(iopt: IoPagetable) -> None:
    """iopt_enable_large_pages()."""
    iopt.disable_large_pages = False
    iopt.calculate_iova_alignment()
