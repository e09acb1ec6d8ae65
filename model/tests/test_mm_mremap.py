"""model/mm.py's mremap(2), /proc views, loads through a mapping and /dev/hpet: KUnit-like cases
with the kernel's rules (mm/mremap.c, drivers/char/hpet.c of 7.2) stated in each. The same rules
against a real kernel: conformance/tests/test_simple_ioremap.py (the VM runs it)."""
from __future__ import annotations

import errno

from hypothesis import given, settings, strategies as st

from model import mm as M

PG = 4096
U64 = 1 << 64
PHYS = 0xFED00000
CAP = 0x009896808086A201
ANON = M.MAP_PRIVATE | M.MAP_ANONYMOUS
R, RW = M.PROT_READ, M.PROT_READ | M.PROT_WRITE
MAYMOVE, FIXED, DONTUNMAP = M.MREMAP_MAYMOVE, M.MREMAP_FIXED, M.MREMAP_DONTUNMAP


def hpet_mm(**kw):
    h = M.Hpet(PHYS, CAP.to_bytes(8, "little"), **kw)
    return h, M.Mm(iomem=h.iomem)


def reserve(mm, pages):
    base = M.do_mmap(mm, None, 0, pages * PG, M.PROT_NONE, ANON, 0)
    assert base > 0
    return base


def spans(mm):
    return [(v.start, v.end) for v in mm.vmas]


# ---------------------------------------------------------------------------------------------
# /dev/hpet


def test_hpet_open_refuses_writers_and_runs_out_of_timers():
    h = M.Hpet(PHYS, b"", ntimer=3, reserved=0b001)  # timer 0 taken by platform code (hpet.c:904)
    assert M.hpet_open(h, M.FMODE_READ | M.FMODE_WRITE) == -errno.EINVAL  # hpet.c:230
    assert M.hpet_open(h, M.FMODE_WRITE) == -errno.EINVAL
    a, b = M.hpet_open(h, M.FMODE_READ), M.hpet_open(h, M.FMODE_READ)
    assert (a.private_data.index, b.private_data.index) == (1, 2)
    assert M.hpet_open(h, M.FMODE_READ) == -errno.EBUSY
    M.hpet_release(a)
    assert M.hpet_open(h, M.FMODE_READ).private_data.index == 1


def test_hpet_mmap_one_page_reads_the_registers():
    h, mm = hpet_mm()
    f = M.hpet_open(h, M.FMODE_READ)
    a = M.do_mmap(mm, f, 0, PG, R, M.MAP_SHARED, 0)
    v, = mm.vmas
    assert v.flags & M.VMA_REMAP_FLAGS == M.VMA_REMAP_FLAGS and v.page_prot & M._PAGE_PCD  # uncached
    assert v.remaps == [(a, PHYS >> 12, PG, v.page_prot)] and v.pgoff == 0
    assert int.from_bytes(M.access_vm(mm, a, 8), "little") == CAP
    assert M.access_vm(mm, a + 8, 8) == bytes(8)  # the rest of the page reads 0
    assert M.access_vm(mm, a + PG, 1) == -errno.EFAULT
    assert (M.show_map_perms(v), M.smaps_vm_flags(v)) == ("r--s", {"rd", "mr", "me", "ms", "io", "pf", "de", "dd"})
    assert M.do_mmap(mm, f, 0, PG, R, M.MAP_PRIVATE, 0) > 0
    assert mm.vmas[0].pgoff == PHYS >> 12  # a COW mapping: pgoff = pfn (get_remap_pgoff())
    assert mm.warnings == [] and mm.bugs == []


def test_hpet_mmap_refusals():
    for kw, want in (({"mmap_enabled": False}, -errno.EACCES), ({"config_hpet_mmap": False}, -errno.ENOSYS)):
        h, mm = hpet_mm(**kw)
        assert M.do_mmap(mm, M.hpet_open(h, M.FMODE_READ), 0, PG, R, M.MAP_SHARED, 0) == want
    h = M.Hpet(PHYS + 0x400, CAP.to_bytes(8, "little"))  # not page-aligned: hpet.c:369
    mm = M.Mm(iomem=h.iomem)
    assert M.do_mmap(mm, M.hpet_open(h, M.FMODE_READ), 0, PG, R, M.MAP_SHARED, 0) == -errno.ENOSYS
    assert h.iomem[PHYS >> 12][0x400:0x408] == CAP.to_bytes(8, "little")
    h, mm = hpet_mm()
    f = M.hpet_open(h, M.FMODE_READ)
    for length, offset in ((2 * PG, 0), (PG, PG), (PG, 2 * PG)):  # __simple_ioremap_prep()
        assert M.do_mmap(mm, f, 0, length, R, M.MAP_SHARED, offset) == -errno.EINVAL
    assert M.do_mmap(mm, f, 0, PG, RW, M.MAP_SHARED, 0) == -errno.EACCES
    assert mm.vmas == []


# ---------------------------------------------------------------------------------------------
# mremap of a VM_PFNMAP mapping


def test_mremap_pfnmap():
    h, mm = hpet_mm()
    f = M.hpet_open(h, M.FMODE_READ)
    base = reserve(mm, 6)
    assert M.do_mmap(mm, f, base, PG, R, M.MAP_SHARED | M.MAP_FIXED, 0) == base
    assert M.do_mremap(mm, base, PG, PG // 2, 0) == base  # page-aligned: no resize
    assert M.do_mremap(mm, base, PG, 2 * PG, 0) == -errno.EFAULT  # mremap.c:1854
    assert M.do_mremap(mm, base, PG, 2 * PG, MAYMOVE) == -errno.EFAULT
    assert M.do_mremap(mm, base, PG, 2 * PG, MAYMOVE | FIXED, base + 3 * PG) == -errno.EFAULT
    assert M.do_mremap(mm, base, PG, PG, MAYMOVE | DONTUNMAP) == -errno.EINVAL  # mremap.c:1814
    assert M.do_mremap(mm, base, 0, PG, MAYMOVE) == -errno.EFAULT  # shared: may be duplicated, not grown
    assert M.vma_lookup(mm, base + 3 * PG).vm_ops is None  # the failures unmapped nothing
    assert M.do_mremap(mm, base, PG, PG, MAYMOVE | FIXED, base + 3 * PG) == base + 3 * PG
    moved = M.vma_lookup(mm, base + 3 * PG)
    assert moved.file is f and moved.remaps[0][:3] == (base + 3 * PG, PHYS >> 12, PG)
    assert M.vma_lookup(mm, base) is None
    assert int.from_bytes(M.access_vm(mm, base + 3 * PG, 8), "little") == CAP
    # a move of several VMAs keeps the gaps between them (remap_move())
    assert M.do_mremap(mm, base + 3 * PG, 2 * PG, 2 * PG, MAYMOVE | FIXED, base + PG) == base + PG
    assert M.vma_lookup(mm, base + PG).file is f and M.vma_lookup(mm, base + 2 * PG).vm_ops is None
    assert M.do_mremap(mm, base + 3 * PG, PG, PG, MAYMOVE | FIXED, base) == -errno.EFAULT  # nothing there
    assert mm.warnings == [] and mm.bugs == []


def test_mremap_private_duplicate_is_einval():
    h, mm = hpet_mm()
    a = M.do_mmap(mm, M.hpet_open(h, M.FMODE_READ), 0, PG, R, M.MAP_PRIVATE, 0)
    assert M.do_mremap(mm, a, 0, PG, MAYMOVE) == -errno.EINVAL  # mremap.c:1808


# ---------------------------------------------------------------------------------------------
# mremap of ordinary mappings


def test_check_mremap_params():
    mm = M.Mm()
    a = M.do_mmap(mm, None, 0, 2 * PG, RW, ANON, 0)
    for args in [(a, PG, PG, 8), (a + 1, PG, PG, 0), (a, PG, 0, 0), (a, PG, M.TASK_SIZE + PG, 0),
                 (a, PG, PG, FIXED, a + 4 * PG), (a, PG, PG, MAYMOVE | FIXED, a + 1),
                 (a, PG, PG, MAYMOVE | FIXED, M.TASK_SIZE), (a, PG, 2 * PG, MAYMOVE | DONTUNMAP),
                 (a, 2 * PG, 2 * PG, MAYMOVE | FIXED, a + PG)]:
        assert M.do_mremap(mm, *args) == -errno.EINVAL, args
    assert M.do_mremap(mm, a, PG, U64 - 1, 0) == -errno.EINVAL  # PAGE_ALIGN wraps to 0


def test_mremap_anonymous_shrink_grow_move():
    mm = M.Mm()
    base = reserve(mm, 8)
    assert M.do_munmap(mm, base, 8 * PG) == 0  # a free range of 8 pages
    a = M.do_mmap(mm, None, base, 2 * PG, RW, ANON | M.MAP_FIXED, 0)
    assert M.do_mremap(mm, a, 2 * PG, PG, 0) == a and spans(mm) == [(a, a + PG)]  # shrink in place
    assert M.do_mremap(mm, a, PG, 3 * PG, 0) == a and spans(mm) == [(a, a + 3 * PG)]  # grow in place
    M.do_mmap(mm, None, a + 3 * PG, PG, RW, ANON | M.MAP_FIXED, 0)  # a neighbour in the way
    assert M.do_mremap(mm, a, 3 * PG, 4 * PG, 0) == -errno.ENOMEM  # expand_vma(): no MAYMOVE
    b = M.do_mremap(mm, a, 3 * PG, 4 * PG, MAYMOVE)
    assert b > 0 and b != a and M.vma_lookup(mm, b).end == b + 4 * PG and M.vma_lookup(mm, a) is None
    assert M.vma_lookup(mm, b).pgoff == b >> 12  # an unfaulted anonymous VMA: pgoff follows the address
    assert M.do_mremap(mm, b + PG, PG, PG, 0) == b + PG  # inside a VMA, same size: nothing to do
    assert M.do_mremap(mm, b + PG, PG, 2 * PG, 0) == -errno.ENOMEM  # not at the VMA's end
    assert M.do_mremap(mm, b, 8 * PG, 8 * PG, MAYMOVE | FIXED, a) == -errno.EINVAL  # overlaps b's range
    assert M.do_mremap(mm, b + 4 * PG, PG, 2 * PG, 0) == -errno.EFAULT  # no VMA
    assert M.do_mremap(mm, b, 5 * PG, 6 * PG, MAYMOVE) == -errno.EFAULT  # old range past the VMA's end
    # the same size without a new address is MREMAP_NO_RESIZE: check_prep_vma() returns before
    # the range is compared with the VMA (mremap.c:1794), so even a range past it answers addr
    assert M.do_mremap(mm, b, 5 * PG, 5 * PG, MAYMOVE) == b


def test_mremap_dontunmap_keeps_the_source():
    mm = M.Mm()
    a = M.do_mmap(mm, None, 0, 2 * PG, RW, ANON | M.MAP_LOCKED, 0)
    b = M.do_mremap(mm, a, 2 * PG, 2 * PG, MAYMOVE | DONTUNMAP)
    assert b > 0 and b != a
    old, new = M.vma_lookup(mm, a), M.vma_lookup(mm, b)
    assert (old.start, old.end, new.end - new.start) == (a, a + 2 * PG, 2 * PG)
    assert not old.flags & M.VM_LOCKED and new.flags & M.VM_LOCKED  # dontunmap_complete()


def test_mremap_hooks():
    events = []

    def mremap_hook(new):
        events.append(("mremap", new.start))
        return -errno.EBUSY if len(events) > 3 else 0

    ops = M.VmOps(open=lambda v: events.append(("open", v.start)), close=lambda v: events.append(("close", v.start)),
                  mremap=mremap_hook)

    def mmap(file, vma):
        vma.vm_ops = ops
        return M.remap_pfn_range(vma, vma.start, 0x100, vma.end - vma.start, 0)

    mm = M.Mm()
    base = reserve(mm, 4)
    f = M.File(M.FileOperations(mmap=mmap))
    assert M.do_mmap(mm, f, base, PG, RW, M.MAP_SHARED | M.MAP_FIXED, 0) == base
    assert M.do_mremap(mm, base, PG, PG, MAYMOVE | FIXED, base + 2 * PG) == base + 2 * PG
    # copy_vma() opens the copy, vm_ops->mremap runs on it, the source is unmapped (closed)
    assert events == [("open", base + 2 * PG), ("mremap", base + 2 * PG), ("close", base)]
    events.clear()
    events.append(("x", 0))
    events.append(("y", 0))
    # a failing vm_ops->mremap: the entries move back and the copy is unmapped instead
    assert M.do_mremap(mm, base + 2 * PG, PG, PG, MAYMOVE | FIXED, base) == -errno.EBUSY
    assert events[2:] == [("open", base), ("mremap", base), ("close", base)]
    v = M.vma_lookup(mm, base + 2 * PG)
    assert v.remaps == [(base + 2 * PG, 0x100, PG, 0)] and M.vma_lookup(mm, base) is None


def test_mremap_may_split_refuses_a_partial_move():
    def mmap(file, vma):
        vma.vm_ops = M.VmOps(may_split=lambda v, addr: -errno.EINVAL)
        return 0

    mm = M.Mm()
    a = M.do_mmap(mm, M.File(M.FileOperations(mmap=mmap)), 0, 2 * PG, RW, M.MAP_SHARED, 0)
    assert M.do_mremap(mm, a, PG, PG, MAYMOVE | FIXED, a - 4 * PG) == -errno.EINVAL  # prep_move_vma()
    assert spans(mm) == [(a, a + 2 * PG)]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, U64 - 1), st.integers(0, U64 - 1), st.integers(0, U64 - 1), st.integers(0, 15),
       st.integers(0, U64 - 1))
def test_mremap_never_raises(addr, old_len, new_len, flags, new_addr):
    h, mm = hpet_mm()
    a = M.do_mmap(mm, M.hpet_open(h, M.FMODE_READ), 0, PG, R, M.MAP_SHARED, 0)
    picks = [addr, a, a + PG, addr & M.PAGE_MASK]
    r = M.do_mremap(mm, picks[addr % 4], old_len % (4 * PG) if flags & 8 else old_len,
                    new_len % (4 * PG) if flags & 8 else new_len, flags & 7, new_addr)
    assert isinstance(r, int) and (r < 0 or r % PG == 0)
    assert mm.bugs == [] and mm.warnings == []
