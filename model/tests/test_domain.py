"""The domain seam: IommuDomain over the numba page table, and io_pagetable filling, unmapping
and unwinding through it. (The table itself is held to the reference in test_pagetable.py.)"""
from __future__ import annotations

import ctypes
import errno
import mmap

import pytest
from hypothesis import given, settings, strategies as st

from model.domain import IOMMU_READ, IOMMU_WRITE, IommuDomain
from model.io_pagetable import IoPagetable
from model.limits import PAGE_SIZE
from model.main import IommufdCtx
from model.objects import IommufdError
from model.pages import iopt_alloc_user_pages
from model.pt.reference import best_pgsize_lg2
from model.pt.table import amdv1
from model.task import Accounts, Task

SZ_4K, SZ_2M, SZ_1G = 1 << 12, 1 << 21, 1 << 30
BITMAPS = st.sampled_from([SZ_4K, SZ_4K | SZ_2M, SZ_4K | SZ_2M | SZ_1G, SZ_4K | (SZ_4K << 4) | SZ_2M])


def _best_brute(bitmap, va, last, oa):
    """The largest size in the bitmap that va and oa are aligned to and that fits in [va, last]."""
    fits = [b for b in range(63) if bitmap >> b & 1 and not (va | oa) % (1 << b) and va + (1 << b) - 1 <= last]
    return max(fits, default=-1)


@settings(max_examples=500, deadline=None)
@given(BITMAPS, st.integers(0, 1 << 20), st.integers(0, 1 << 20), st.integers(1, 1 << 20))
def test_best_pgsize_matches_brute_force(bitmap, iova_pages, paddr_pages, size_pages):
    from model.pt import walk

    iova, paddr, size = iova_pages * SZ_4K, paddr_pages * SZ_4K, size_pages * SZ_4K
    want = _best_brute(bitmap, iova, iova + size - 1, paddr)
    assert best_pgsize_lg2(bitmap, iova, iova + size - 1, paddr) == want
    assert walk.best_pgsize_lg2(bitmap, iova, iova + size - 1, paddr) == want


@settings(max_examples=100, deadline=None)
@given(BITMAPS, st.integers(0, 4096), st.integers(0, 4096), st.integers(1, 2048))
def test_map_uses_large_pages_and_unmap_removes_them(bitmap, iova_pages, pfn, npages):
    pt = amdv1(pgsize_bitmap=bitmap)
    dom = IommuDomain(pt)
    iova, paddr, size = iova_pages * SZ_4K, pfn * SZ_4K, npages * SZ_4K
    dom.map(iova, paddr, size, IOMMU_READ)
    for off in range(0, size, SZ_4K):
        assert dom.iova_to_phys(iova + off) == paddr + off
    assert dom.iova_to_phys(iova + size) == 0
    # every leaf is a size the bitmap has, aligned in iova and paddr
    for va, pgsize, pa, _prot, _dirty in pt.leaves():
        assert pgsize & bitmap and not va % pgsize and not pa % pgsize
    assert dom.unmap(iova, size) == size
    assert pt.leaves() == []


def test_a_failed_map_is_undone_and_answers_the_table_status():
    pt = amdv1(pgsize_bitmap=SZ_4K)
    dom = IommuDomain(pt)
    with pytest.raises(IommufdError) as e:
        dom.map(0x1000, 0x2800, 0x1000, IOMMU_READ)  # paddr below the smallest page: no size fits
    assert e.value.errno == errno.ENXIO
    dom.map(0x5000, 0, SZ_4K, IOMMU_READ)
    with pytest.raises(IommufdError) as e:  # runs into the page at 0x5000 after 4 pages
        dom.map(0x1000, 0x10000, 8 * SZ_4K, IOMMU_READ)
    assert e.value.errno == errno.EADDRINUSE
    assert [leaf[0] for leaf in pt.leaves()] == [0x5000]  # the 4 pages it mapped first are gone again


class _Rec:
    def __init__(self):
        self.ranges = []

    def record(self, iova, length):
        self.ranges.append((iova, length))


def test_dirty_bits_are_read_and_cleared_unless_no_clear():
    from model.domain import IOMMU_DIRTY_NO_CLEAR

    pt = amdv1(pgsize_bitmap=SZ_4K | SZ_2M)
    dom = IommuDomain(pt)
    dom.map(SZ_2M, 0, SZ_2M + SZ_4K, IOMMU_READ | IOMMU_WRITE)
    assert pt.set_dirty(SZ_2M + 5) == pt.set_dirty(2 * SZ_2M) == 0 and pt.set_dirty(0) == -errno.ENOENT
    r = _Rec()
    dom.read_and_clear_dirty(0, 4 * SZ_2M, IOMMU_DIRTY_NO_CLEAR, r)
    assert r.ranges == [(SZ_2M, SZ_2M), (2 * SZ_2M, SZ_4K)]
    r = _Rec()
    dom.read_and_clear_dirty(0, 4 * SZ_2M, 0, r)
    assert len(r.ranges) == 2
    r = _Rec()
    dom.read_and_clear_dirty(0, 4 * SZ_2M, 0, r)
    assert r.ranges == []


class _User:
    """A task, its accounts and some user memory."""

    def __init__(self, npages):
        import os

        self.m = mmap.mmap(-1, npages * PAGE_SIZE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        self.task = Task(os.getpid(), caps=0, memlock=1 << 40)
        self.ictx = IommufdCtx(Accounts())

    def pages(self, offset, length):
        return iopt_alloc_user_pages(self.ictx, self.task, self.addr + offset, length, True)


def test_areas_fill_every_domain_and_pin_once():
    u = _User(16)
    iopt = IoPagetable()
    d1, d2 = IommuDomain(amdv1(pgsize_bitmap=SZ_4K)), IommuDomain(amdv1(pgsize_bitmap=SZ_4K | SZ_2M))
    iopt.table_add_domain(u.task.mm, d1)
    pages = u.pages(0, 8 * PAGE_SIZE)
    iova = iopt.map_pages(u.task.mm, [(pages, 0, 8 * PAGE_SIZE)], 8 * PAGE_SIZE, 1 << 30, IOMMU_READ, False)
    pages.refs -= 1
    assert pages.npinned == 8 and u.ictx.accounts.user_locked_vm[u.task.uid] == 8
    # a second domain gets the same frames, without pinning again
    iopt.table_add_domain(u.task.mm, d2)
    assert pages.npinned == 8
    for k in range(8):
        assert d1.iova_to_phys(iova + k * PAGE_SIZE) == d2.iova_to_phys(iova + k * PAGE_SIZE) == \
            pages.pfns[k] * PAGE_SIZE
    assert iopt.unmap_iova(iova, 8 * PAGE_SIZE) == (8 * PAGE_SIZE, 0)
    assert d1.ops.leaves() == [] and d2.ops.leaves() == []
    assert pages.npinned == 0 and u.ictx.accounts.user_locked_vm[u.task.uid] == 0


def test_a_fill_that_faults_leaves_nothing_behind():
    u = _User(4)
    iopt = IoPagetable()
    dom = IommuDomain(amdv1(pgsize_bitmap=SZ_4K))
    iopt.table_add_domain(u.task.mm, dom)
    good = u.pages(0, 4 * PAGE_SIZE)
    bad = iopt_alloc_user_pages(u.ictx, u.task, 0x1000, 4 * PAGE_SIZE, True)  # nothing mapped there
    before = iopt.snapshot()
    with pytest.raises(IommufdError) as e:  # get_user_pages(): EFAULT
        iopt.map_pages(u.task.mm, [(good, 0, 4 * PAGE_SIZE), (bad, 0, 4 * PAGE_SIZE)], 8 * PAGE_SIZE,
                       1 << 30, IOMMU_READ, False)
    assert e.value.errno == errno.EFAULT
    assert iopt.snapshot() == before and dom.ops.leaves() == []
    assert good.npinned == 0 and u.ictx.accounts.snapshot() == ((), (), ())


def test_adding_a_domain_checks_alignment_first():
    u = _User(4)
    iopt = IoPagetable()
    pages = u.pages(0x800, 2 * PAGE_SIZE)  # page_offset 0x800: no 4K domain can map it
    iopt.map_pages(u.task.mm, [(pages, 0x800, 2 * PAGE_SIZE)], 2 * PAGE_SIZE, (1 << 30) + 0x800, IOMMU_READ, False)
    dom = IommuDomain(amdv1(pgsize_bitmap=SZ_4K))
    with pytest.raises(IommufdError) as e:
        iopt.table_add_domain(u.task.mm, dom)
    assert e.value.errno == errno.EADDRINUSE
    assert iopt.domains == [] and pages.npinned == 0 and iopt.iova_alignment == 1


def test_large_pages_disabled_maps_page_by_page():
    from model.io_pagetable import iopt_disable_large_pages

    u = _User(1024)
    for disable in (False, True):
        iopt = IoPagetable()
        if disable:
            iopt_disable_large_pages(iopt)
        pt = amdv1(pgsize_bitmap=SZ_4K | SZ_2M)
        iopt.table_add_domain(u.task.mm, IommuDomain(pt))
        pages = u.pages(0, SZ_2M)
        iopt.map_pages(u.task.mm, [(pages, 0, SZ_2M)], SZ_2M, SZ_1G, IOMMU_READ, False)
        # the frames of one fill are consecutive; the domain takes a 2M page unless disabled
        aligned = pages.pfns[0] * PAGE_SIZE % SZ_2M == 0
        sizes = {leaf[1] for leaf in pt.leaves()}
        assert sizes == ({SZ_4K} if disable or not aligned else {SZ_2M})
        iopt.unmap_all()
        assert pt.leaves() == []
