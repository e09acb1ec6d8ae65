"""model/mm.py against a plain reference written here, and KUnit-like cases.

The reference states the kernel's rules with Python's unbounded integers: where the C code lets
an unsigned long wrap, the reference tests for the overflow explicitly and subtracts 2^64; it
does not use model/mm.py's helpers. Hypothesis compares the two over __simple_ioremap_prep(),
simple_ioremap_prepare(), remap_pfn_range_prepare(), map_kernel_pages_prepare() and the whole
.mmap_prepare -> prepare -> VMA -> complete -> mapped sequence of mmap_region(), and the legacy
.mmap path through vm_iomap_memory(), with inputs at the 64-bit edges.
"""
from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings, strategies as st

from model import mm as M
from model.uapi import B

U64 = 1 << 64
PG = 4096  # x86-64 PAGE_SIZE
ADDR = 0x10_0000_0000  # where the sequence tests map
TASK_SIZE_4L = (1 << 47) - PG

# The x86-64 values (include/linux/mm.h, arch/x86/mm/pgprot.c), typed again on purpose: the
# tests check the model's constants against them.
READ, WRITE, EXEC, SHARED = 0x1, 0x2, 0x4, 0x8
MAYREAD, MAYWRITE, MAYEXEC, MAYSHARE = 0x10, 0x20, 0x40, 0x80
PFNMAP, LOCKED, IO, DONTEXPAND, ACCOUNT, NORESERVE = 1 << 10, 1 << 13, 1 << 14, 1 << 18, 1 << 20, 1 << 21
SYNC, DONTDUMP, MIXEDMAP, NOHUGEPAGE = 1 << 23, 1 << 26, 1 << 28, 1 << 30
REMAP = IO | PFNMAP | DONTEXPAND | DONTDUMP
NX = 1 << 63
PROT_SHARED_RW = NX | 0x27  # PAGE_SHARED: present, rw, user, accessed, nx
PROT_RO = NX | 0x25  # PAGE_READONLY = PAGE_COPY

EDGES = [0, 1, 2, PG - 1, PG, PG + 1, 2 * PG, 1 << 32, (1 << 52) - 1, 1 << 52, 1 << 63,
         U64 - 1, U64 - 2, U64 - PG, U64 - PG - 1, U64 - 2 * PG, ADDR, ADDR + PG]


WRAPPING_COUNTS = st.integers(0, 20).map(lambda k: (1 << 52) + k)  # PAGE_SIZE * n wraps to k pages


def u64s():
    """Unsigned longs that favour the edges, page-aligned values and small ones."""
    return st.one_of(st.sampled_from(EDGES), st.integers(0, U64 - 1),
                     st.integers(0, 1 << 40).map(lambda p: p * PG % U64),
                     st.integers(0, U64 - 1).map(lambda x: x & ~(PG - 1)),
                     st.integers(0, 64 * PG), st.integers(1, 64).map(lambda p: U64 - p * PG))


# ---------------------------------------------------------------------------------------------
# The reference


def ref_wrap(x):
    """One explicit wrap of a sum of two unsigned longs."""
    return x - U64 if x >= U64 else x


def ref_simple_ioremap_prep(vm_len, vm_pgoff, start_phys, size):
    """__simple_ioremap_prep(): (0, pfn) or (-EINVAL, None)."""
    if start_phys + size >= U64:  # the physical range wraps round
        return -errno.EINVAL, None
    size += start_phys % PG  # <= start_phys + size: no overflow possible
    rounded = ref_wrap(size + PG - 1)  # (size + ~PAGE_MASK) can wrap: keeps the low bits
    pages = rounded // PG
    first = start_phys // PG
    assert first + pages < U64  # both below 2^52: the kernel's overflow test cannot fire
    if vm_pgoff > pages:
        return -errno.EINVAL, None
    if vm_len // PG > pages - vm_pgoff:
        return -errno.EINVAL, None
    return 0, first + vm_pgoff


def ref_remap_prepare(d_start, d_end, d_pgoff, d_flags, start, pfn, size):
    """remap_pfn_range_prepare(): (err, pgoff, flags)."""
    end = ref_wrap(start + size)
    if not (d_start <= start and end <= d_end):
        return -errno.EFAULT, d_pgoff, d_flags
    cow = bool(d_flags & MAYWRITE) and not d_flags & SHARED
    if cow and (start != d_start or end != d_end):
        return -errno.EINVAL, d_pgoff, d_flags
    return 0, (pfn if cow else d_pgoff), d_flags | REMAP


def ref_remap_warnings(d_start, d_end, start, size):
    """mmap_action_remap()'s two WARN_ON_ONCE()s."""
    w = []
    if start < d_start or start >= d_end:
        w.append("mmap_action_remap")
    if ref_wrap(start + size) > d_end:
        w.append("mmap_action_remap")
    return w


def ref_page_align(x):
    x = ref_wrap(x + PG - 1)
    return x - x % PG


def override_ok(v):
    return v == 0 or -4095 <= v <= -1


class Page:
    def __init__(self, refcount=1):
        self.refcount = refcount

    def __repr__(self):
        return f"Page({self.refcount})"


def desc_of(start, end, pgoff=0, flags=SHARED | MAYSHARE | MAYWRITE | MAYREAD | READ | WRITE, prot=PROT_SHARED_RW,
            debug_vm=False):
    return M.VmAreaDesc(M.Mm(debug_vm=debug_vm), start=start, end=end, pgoff=pgoff, vma_flags=flags, page_prot=prot)


def warning_names(mm):
    return [w.split(":")[0] for w in mm.warnings]


FLAG_SETS = {
    "shared": READ | WRITE | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE,
    "shared_ro": READ | MAYREAD | MAYEXEC | MAYSHARE,  # MAP_SHARED of an O_RDONLY file
    "private": READ | WRITE | MAYREAD | MAYWRITE | MAYEXEC,  # COW
}
PROTS = {"shared": PROT_SHARED_RW, "shared_ro": PROT_RO, "private": PROT_RO}


# ---------------------------------------------------------------------------------------------
# Constants


def test_constants_are_the_kernels():
    assert (M.VM_READ, M.VM_WRITE, M.VM_EXEC, M.VM_SHARED) == (READ, WRITE, EXEC, SHARED)
    assert (M.VM_MAYREAD, M.VM_MAYWRITE, M.VM_MAYEXEC, M.VM_MAYSHARE) == (MAYREAD, MAYWRITE, MAYEXEC, MAYSHARE)
    assert M.VMA_REMAP_FLAGS == REMAP == 0x4044400
    assert (M.VM_MIXEDMAP, M.VM_LOCKED, M.VM_SYNC, M.VM_NOHUGEPAGE) == (MIXEDMAP, LOCKED, SYNC, NOHUGEPAGE)
    assert M.PAGE_SIZE == PG and M.PAGE_MASK == U64 - PG
    assert M.vm_get_page_prot(FLAG_SETS["shared"]) == PROT_SHARED_RW
    assert M.vm_get_page_prot(FLAG_SETS["private"]) == PROT_RO
    assert M.vm_get_page_prot(0) == 0x120  # PAGE_NONE: accessed | global (protnone)
    assert M.pgprot_noncached(PROT_SHARED_RW) == PROT_SHARED_RW | 0x10  # _PAGE_PCD: UC-
    assert [B.MMAP_NOTHING, B.MMAP_REMAP_PFN, B.MMAP_IO_REMAP_PFN, B.MMAP_SIMPLE_IO_REMAP,
            B.MMAP_MAP_KERNEL_PAGES] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Property tests against the reference


@settings(max_examples=600)
@given(vm_len=u64s(), vm_pgoff=u64s(), start_phys=u64s(), size=u64s())
def test_simple_ioremap_prep_matches_reference(vm_len, vm_pgoff, start_phys, size):
    assert M.__simple_ioremap_prep(vm_len, vm_pgoff, start_phys, size) == \
        ref_simple_ioremap_prep(vm_len, vm_pgoff, start_phys, size)


@settings(max_examples=400)
@given(npages=st.integers(0, 16), vm_pgoff=st.integers(0, 20), phys=u64s(), size=st.integers(0, 24 * PG))
def test_simple_ioremap_prep_plausible_inputs(npages, vm_pgoff, phys, size):
    """Sizes near the VMA's, where both answers occur."""
    assert M.__simple_ioremap_prep(npages * PG, vm_pgoff, phys, size) == \
        ref_simple_ioremap_prep(npages * PG, vm_pgoff, phys, size)


@settings(max_examples=500)
@given(start=u64s(), npages=st.one_of(st.integers(0, 16), st.sampled_from([U64 // PG - 1, 1 << 40])),
       pgoff=st.one_of(st.integers(0, 20), u64s()), kind=st.sampled_from(sorted(FLAG_SETS)),
       phys=u64s(), size=st.one_of(u64s(), st.integers(0, 24 * PG)))
def test_simple_ioremap_prepare_matches_reference(start, npages, pgoff, kind, phys, size):
    start &= ~(PG - 1)
    end = ref_wrap(start + npages * PG)
    flags = FLAG_SETS[kind]
    d = desc_of(start, end, pgoff, flags, PROTS[kind])
    M.mmap_action_simple_ioremap(d, phys, size)
    err = M.simple_ioremap_prepare(d)

    vm_len = end - start if end >= start else end - start + U64
    want, pfn = ref_simple_ioremap_prep(vm_len, pgoff, phys, size)
    if want:
        assert err == want
        assert d.action.type == B.MMAP_SIMPLE_IO_REMAP and d.vma_flags == flags and d.pgoff == pgoff
        assert d.mm.warnings == []
        return
    # Delegated: an I/O remap of the whole descriptor, prepared as a plain remap.
    werr, wpgoff, wflags = ref_remap_prepare(start, end, pgoff, flags, start, pfn, vm_len)
    assert err == werr
    assert warning_names(d.mm) == ref_remap_warnings(start, end, start, vm_len)
    assert (d.pgoff, d.vma_flags) == (wpgoff, wflags)
    r = d.action.remap
    assert (r.start, r.start_pfn, r.size, r.pgprot.pgprot) == (start, pfn, vm_len, PROTS[kind])
    assert d.action.type == (B.MMAP_REMAP_PFN if not werr else B.MMAP_IO_REMAP_PFN)


@settings(max_examples=600)
@given(d_start=u64s(), npages=st.integers(0, 16), pgoff=u64s(), kind=st.sampled_from(sorted(FLAG_SETS)),
       start=st.one_of(u64s(), st.integers(-3, 19)), pfn=u64s(),
       size=st.one_of(u64s(), st.integers(0, 20).map(lambda p: p * PG), st.integers(0, 20 * PG)),
       io=st.booleans())
def test_remap_pfn_range_prepare_matches_reference(d_start, npages, pgoff, kind, start, pfn, size, io):
    """range_in_vma_desc(), get_remap_pgoff()'s COW rule and the pgoff it writes, the flags."""
    d_start &= ~(PG - 1)
    d_end = ref_wrap(d_start + npages * PG)
    if -3 <= start <= 19:  # a page index near the descriptor
        start = (d_start + start * PG) % U64
    flags = FLAG_SETS[kind]
    d = desc_of(d_start, d_end, pgoff, flags, PROTS[kind])
    (M.mmap_action_ioremap if io else M.mmap_action_remap)(d, start, pfn, size)
    assert warning_names(d.mm) == ref_remap_warnings(d_start, d_end, start, size)
    err = (M.io_remap_pfn_range_prepare if io else M.remap_pfn_range_prepare)(d)
    werr, wpgoff, wflags = ref_remap_prepare(d_start, d_end, pgoff, flags, start, pfn, size)
    assert (err, d.pgoff, d.vma_flags) == (werr, wpgoff, wflags)
    r = d.action.remap
    assert (r.start, r.start_pfn, r.size, r.pgprot.pgprot) == (start, pfn, size, PROTS[kind])
    if io:
        assert d.action.type == (B.MMAP_IO_REMAP_PFN if werr else B.MMAP_REMAP_PFN)


@settings(max_examples=500)
@given(d_start=u64s(), npages=st.integers(0, 16), addr=st.one_of(u64s(), st.integers(-3, 19)),
       nr=st.one_of(u64s(), st.integers(0, 20), WRAPPING_COUNTS), flags=st.sampled_from([0, PFNMAP, MIXEDMAP, PFNMAP | MIXEDMAP]),
       debug_vm=st.booleans())
def test_map_kernel_pages_prepare_matches_reference(d_start, npages, addr, nr, flags, debug_vm):
    d_start &= ~(PG - 1)
    d_end = ref_wrap(d_start + npages * PG)
    if -3 <= addr <= 19:
        addr = (d_start + addr * PG) % U64
    d = desc_of(d_start, d_end, 5, FLAG_SETS["shared"] | flags, debug_vm=debug_vm)
    M.mmap_action_map_kernel_pages(d, addr, [Page()], nr)
    assert d.action.map_kernel.pgoff == 5
    err = M.map_kernel_pages_prepare(d)
    end = (addr + PG * nr) % U64  # PAGE_SIZE * nr_pages and the sum both wrap
    assert err == (0 if d_start <= addr and end <= d_end else -errno.EFAULT)
    assert d.vma_flags == FLAG_SETS["shared"] | flags | MIXEDMAP  # set even when the range is refused
    fires = debug_vm and flags == PFNMAP
    assert warning_names(d.mm) == (["map_kernel_pages_prepare"] if fires else [])


# The whole .mmap_prepare sequence through mmap_region()

OVERRIDES = [-errno.EIO, -errno.ENOMEM, -4095, -4096, 1, (1 << 31) - 1, -(1 << 31)]


def often(draw, usual, other):
    """usual seven times in ten (shrinking towards it), else other."""
    return draw(usual) if draw(st.integers(0, 9)) < 7 else draw(other)


@st.composite
def driver_specs(draw):
    """A driver's choices: mostly plausible (inside the VMA, pages enough), often at the edges."""
    npages = draw(st.integers(1, 8))
    length = npages * PG
    index = draw(st.integers(0, npages - 1))
    near = st.one_of(u64s(), st.integers(-2, npages + 2).map(lambda p: ADDR + p * PG),
                     st.integers(ADDR - 2 * PG, ADDR + length + 2 * PG))
    sizes = st.one_of(u64s(), st.integers(0, npages + 1).map(lambda p: p * PG), st.integers(0, length + PG))
    spec = dict(npages=npages, kind=draw(st.sampled_from(sorted(FLAG_SETS))),
                pgoff=often(draw, st.integers(0, 4), u64s()),
                action=draw(st.sampled_from(["nothing", "remap", "ioremap", "simple", "kernel", "unknown"])),
                override=often(draw, st.just(0), st.sampled_from(OVERRIDES)),
                mapped=often(draw, st.sampled_from([None, 0]), st.sampled_from([-errno.EPERM, 7])),
                hide=draw(st.booleans()))
    if spec["action"] in ("remap", "ioremap"):
        if draw(st.booleans()):  # the whole VMA, as a COW mapping needs
            spec.update(start=ADDR, size=length)
        else:
            spec.update(start=often(draw, st.just(ADDR + index * PG), near),
                        size=often(draw, st.integers(1, npages - index).map(lambda p: p * PG), sizes))
        spec.update(pfn=draw(u64s()))
    elif spec["action"] == "simple":
        spec.update(phys=often(draw, st.integers(0, 1 << 40), u64s()),
                    size=often(draw, st.integers(0, 16).map(lambda p: p * PG), sizes))
    elif spec["action"] == "kernel":
        nr = often(draw, st.integers(0, npages - index),
                   st.one_of(st.integers(0, npages + 2), u64s(), WRAPPING_COUNTS))
        count = often(draw, st.just(min(nr, npages + 1)), st.integers(0, npages + 1))
        spec.update(start=often(draw, st.just(ADDR + index * PG), near), nr=nr,
                    pages=[Page(often(draw, st.just(1), st.sampled_from([0, 1]))) for _ in range(count)])
    return spec


class Driver:
    """An .mmap_prepare driver doing what the spec says, and recording the hooks' calls."""

    def __init__(self, spec):
        self.spec, self.mapped_calls, self.closed, self.rmap_hidden_in_mapped = spec, [], 0, None
        self.file = M.File(M.FileOperations(mmap_prepare=self.mmap_prepare))

    def mmap_prepare(self, desc):
        s = self.spec
        a = s["action"]
        if a == "remap":
            M.mmap_action_remap(desc, s["start"], s["pfn"], s["size"])
        elif a == "ioremap":
            M.mmap_action_ioremap(desc, s["start"], s["pfn"], s["size"])
        elif a == "simple":
            M.mmap_action_simple_ioremap(desc, s["phys"], s["size"])
        elif a == "kernel":
            M.mmap_action_map_kernel_pages(desc, s["start"], s["pages"], s["nr"])
        elif a == "unknown":
            desc.action.type = 9
        desc.action.error_override = s["override"]
        desc.action.hide_from_rmap_until_complete = s["hide"]
        desc.vm_ops = M.VmOps(close=self.close, mapped=self.mapped if s["mapped"] is not None else None)
        desc.private_data = "driver"
        return 0

    def close(self, vma):
        self.closed += 1

    def mapped(self, start, end, pgoff, file, box):
        self.mapped_calls.append((start, end, pgoff, file))
        self.rmap_hidden_in_mapped = self.mm.vmas[0].rmap_hidden
        if self.spec["mapped"] == 0:
            box[0] = "mapped"
        return self.spec["mapped"]


def ref_sequence(s, file):
    """What mmap_region() of Driver(s) gives: a dict of the observable outcome."""
    addr, end = ADDR, ADDR + s["npages"] * PG
    flags = FLAG_SETS[s["kind"]]
    if flags & WRITE and not flags & SHARED:
        flags |= ACCOUNT  # accountable_mapping()
    prot, pgoff, a = PROTS[s["kind"]], s["pgoff"], s["action"]
    out = dict(ret=None, vma=None, warnings=[], bug=False, closed=0, mapped_calls=[])
    fail = lambda err: dict(out, ret=err)  # noqa: E731

    if a in ("remap", "ioremap"):  # the setter, in the driver's hook
        out["warnings"] += ref_remap_warnings(addr, end, s["start"], s["size"])
    if not override_ok(s["override"]):
        out["warnings"].append("check_mmap_action")
        return fail(-errno.EINVAL)
    # prepare: an error here is returned as is, no VMA
    if a == "unknown":
        out["warnings"].append("mmap_action_prepare")
        return fail(-errno.EINVAL)
    if a in ("remap", "ioremap"):
        rstart, rpfn, rsize = s["start"], s["pfn"], s["size"]
    if a == "simple":
        err, rpfn = ref_simple_ioremap_prep(end - addr, pgoff, s["phys"], s["size"])
        if err:
            return fail(err)
        rstart, rsize = addr, end - addr
    if a in ("remap", "ioremap", "simple"):
        err, pgoff, flags = ref_remap_prepare(addr, end, pgoff, flags, rstart, rpfn, rsize)
        if err:
            return fail(err)
    if a == "kernel":
        flags |= MIXEDMAP
        if not (addr <= s["start"] and (s["start"] + PG * s["nr"]) % U64 <= end):
            return fail(-errno.EFAULT)

    # the VMA, then complete
    vma = dict(start=addr, end=end, pgoff=pgoff, flags=flags, prot=prot, remaps=[], pages=[], ctx=None,
               private="driver")
    err = 0
    if a in ("remap", "ioremap", "simple"):
        aligned = ref_page_align(rsize)
        rend = ref_wrap(rstart + aligned)
        if rstart % PG:
            out["warnings"].append("remap_pfn_range_internal")
            err = -errno.EINVAL
        elif rstart >= rend:
            out["bug"], err = True, -errno.EINVAL
        else:
            vma["remaps"] = [(rstart, rpfn, rend - rstart, prot)]
            if rstart == addr and rend == end:
                vma["ctx"] = (rpfn, aligned)
    if a == "kernel":
        i = 0
        while i < s["nr"]:
            if i >= len(s["pages"]):
                out["bug"], err = True, -errno.EFAULT
                break
            if s["pages"][i].refcount == 0:
                err = -errno.EINVAL
                break
            vma["pages"].append((s["start"] + i * PG) % U64 // PG * PG)
            i += 1
    if not err and s["mapped"] is not None:
        out["mapped_calls"] = [(addr, end, pgoff, file)]
        err = s["mapped"]
        if not err:
            vma["private"] = "mapped"
    if err:  # the VMA is unmapped: vm_ops->close runs; error_override replaces the error
        return dict(out, ret=s["override"] or err, closed=1)
    vma["pages"].sort()  # a start near 2^64 wraps round to 0
    return dict(out, ret=addr, vma=vma)


def observe(mm, drv, ret):
    out = dict(ret=ret, vma=None, warnings=warning_names(mm), bug=bool(mm.bugs), closed=drv.closed,
               mapped_calls=drv.mapped_calls)
    assert len(mm.vmas) <= 1
    if mm.vmas:
        v = mm.vmas[0]
        assert not v.rmap_hidden and v.file is drv.file
        out["vma"] = dict(start=v.start, end=v.end, pgoff=v.pgoff, flags=v.flags, prot=v.page_prot,
                          remaps=v.remaps, pages=sorted(v.pages),
                          ctx=(v.pfnmap_track_ctx.pfn, v.pfnmap_track_ctx.size) if v.pfnmap_track_ctx else None,
                          private=v.private_data)
    return out


@settings(max_examples=1500)
@given(spec=driver_specs())
def test_mmap_prepare_sequence_matches_reference(spec):
    mm = M.Mm()
    drv = Driver(spec)
    drv.mm = mm
    ret = M.mmap_region(mm, drv.file, ADDR, spec["npages"] * PG, FLAG_SETS[spec["kind"]], spec["pgoff"])
    assert observe(mm, drv, ret) == ref_sequence(spec, drv.file)
    if drv.mapped_calls:
        assert drv.rmap_hidden_in_mapped == spec["hide"]  # the i_mmap lock is dropped after mapped


@settings(max_examples=500)
@given(npages=st.integers(1, 8), kind=st.sampled_from(sorted(FLAG_SETS)), pgoff=st.one_of(st.integers(0, 10), u64s()),
       phys=u64s(), size=st.one_of(u64s(), st.integers(0, 10 * PG)))
def test_legacy_mmap_vm_iomap_memory_matches_reference(npages, kind, pgoff, phys, size):
    """A legacy .mmap hook doing vm_iomap_memory(): the VMA-side remap_pfn_range()."""
    seen = []

    def mmap(file, vma):
        seen.append(vma.pgoff)
        return M.vm_iomap_memory(vma, phys, size)

    mm = M.Mm()
    ret = M.mmap_region(mm, M.File(M.FileOperations(mmap=mmap)), ADDR, npages * PG, FLAG_SETS[kind], pgoff)
    assert seen == [pgoff]
    err, pfn = ref_simple_ioremap_prep(npages * PG, pgoff, phys, size)
    if err:
        assert (ret, mm.vmas) == (err, [])
        return
    v, = mm.vmas
    cow = kind == "private"  # MAYWRITE without SHARED: the pgoff becomes the pfn
    flags = FLAG_SETS[kind] | REMAP | (ACCOUNT if cow else 0)
    assert (ret, v.pgoff, v.flags) == (ADDR, pfn if cow else pgoff, flags)
    assert v.remaps == [(ADDR, pfn, npages * PG, PROTS[kind])]
    assert (v.pfnmap_track_ctx.pfn, v.pfnmap_track_ctx.size) == (pfn, npages * PG)
    assert mm.warnings == mm.bugs == []


# ---------------------------------------------------------------------------------------------
# KUnit-like cases


def prepare_file(hook):
    return M.File(M.FileOperations(mmap_prepare=hook))


def test_error_override_replaces_complete_time_errors():
    closed = []

    def bad_page(desc):
        M.mmap_action_map_kernel_pages_full(desc, [Page(), Page(0)])
        desc.action.error_override = -errno.EAGAIN
        desc.vm_ops = M.VmOps(close=closed.append)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(bad_page), ADDR, 2 * PG, FLAG_SETS["shared"], 0) == -errno.EAGAIN
    assert mm.vmas == [] and len(closed) == 1  # unmapped, and the driver's close ran

    def failing_mapped(desc):
        desc.action.error_override = -errno.EAGAIN
        desc.vm_ops = M.VmOps(mapped=lambda *a: -errno.EPERM)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(failing_mapped), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.EAGAIN
    assert mm.vmas == []


def test_error_override_does_not_replace_prepare_time_errors():
    def outside(desc):
        M.mmap_action_remap(desc, desc.end, 0x100, PG)
        desc.action.error_override = -errno.EAGAIN
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(outside), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.EFAULT
    assert mm.vmas == [] and warning_names(mm) == ["mmap_action_remap", "mmap_action_remap"]

    def hook_fails(desc):
        desc.action.error_override = -errno.EAGAIN
        return -errno.ENODEV

    assert M.mmap_region(M.Mm(), prepare_file(hook_fails), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.ENODEV


@pytest.mark.parametrize("override, ok", [(-1, True), (-4095, True), (-4096, False), (1, False),
                                          ((1 << 31) - 1, False), (-(1 << 31), False)])
def test_error_override_must_be_an_errno(override, ok):
    def hook(desc):
        desc.action.error_override = override
        return 0

    mm = M.Mm()
    ret = M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0)
    if ok:
        assert ret == ADDR and mm.warnings == []
    else:
        assert ret == -errno.EINVAL and mm.vmas == []
        assert mm.warnings == ["check_mmap_action: WARN_ON_ONCE(override && !IS_ERR_VALUE(override))"]


def test_mapped_hook_runs_after_complete_and_sets_private_data():
    calls, file = [], None

    def mapped(start, end, pgoff, f, box):
        calls.append((start, end, pgoff, f is file, box[0], [r[:3] for r in mm.vmas[0].remaps]))
        box[0] = "replaced"
        return 0

    def hook(desc):
        M.mmap_action_remap_full(desc, 0x1234)
        desc.vm_ops, desc.private_data = M.VmOps(mapped=mapped), "mine"
        return 0

    mm, file = M.Mm(), prepare_file(hook)
    assert M.mmap_region(mm, file, ADDR, 2 * PG, FLAG_SETS["shared"], 3) == ADDR
    assert calls == [(ADDR, ADDR + 2 * PG, 3, True, "mine", [(ADDR, 0x1234, 2 * PG)])]
    assert mm.vmas[0].private_data == "replaced"


def test_mapped_hook_error_unmaps():
    closed = []

    def hook(desc):
        desc.vm_ops = M.VmOps(mapped=lambda *a: -errno.ENOSPC, close=closed.append)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.ENOSPC
    assert mm.vmas == [] and len(closed) == 1


def test_mapped_hook_positive_return_is_an_error_returned_as_is():
    def hook(desc):
        desc.vm_ops = M.VmOps(mapped=lambda *a: 1)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0) == 1
    assert mm.vmas == []


def test_mapped_hook_is_not_called_for_legacy_mmap():
    called = []

    def mmap(file, vma):
        vma.vm_ops = M.VmOps(mapped=lambda *a: called.append(a) or -errno.EIO)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, M.File(M.FileOperations(mmap=mmap)), ADDR, PG, FLAG_SETS["shared"], 0) == ADDR
    assert called == [] and len(mm.vmas) == 1


@pytest.mark.parametrize("atype", [B.MMAP_IO_REMAP_PFN, B.MMAP_SIMPLE_IO_REMAP])
@pytest.mark.parametrize("is_compat", [False, True])
def test_undelegated_io_remap_at_complete_warns(atype, is_compat):
    mm = M.Mm()
    vma = M.Vma(mm, ADDR, ADDR + PG, flags=FLAG_SETS["shared"])
    mm.insert(vma)
    action = M.MmapAction()
    action.type, action.error_override = atype, -errno.EIO
    err = M.mmap_action_complete(vma, action, is_compat)
    assert mm.warnings == ["mmap_action_complete: WARN_ON_ONCE(1)"]
    if is_compat:  # the compat caller cleans up; no override
        assert err == -errno.EINVAL and mm.vmas == [vma]
    else:
        assert err == -errno.EIO and mm.vmas == []


def test_unknown_action_type():
    d = desc_of(ADDR, ADDR + PG)
    d.action.type = 7
    assert M.mmap_action_prepare(d) == -errno.EINVAL
    assert warning_names(d.mm) == ["mmap_action_prepare"]
    mm = M.Mm()
    vma = M.Vma(mm, ADDR, ADDR + PG)
    action = M.MmapAction()
    action.type = 7
    assert M.mmap_action_complete(vma, action, False) == 0  # no default in complete's switch
    assert mm.warnings == []


def test_simple_ioremap_delegates_to_remap_pfn():
    d = desc_of(ADDR, ADDR + 3 * PG, pgoff=1)
    M.mmap_action_simple_ioremap(d, 0xFE00_0010, 4 * PG)  # a sub-page start: 5 pages in all
    assert M.mmap_action_prepare(d) == 0
    r = d.action.remap
    assert d.action.type == B.MMAP_REMAP_PFN
    assert (r.start, r.start_pfn, r.size, r.pgprot.pgprot) == (ADDR, 0xFE000 + 1, 3 * PG, PROT_SHARED_RW)
    assert d.vma_flags & REMAP == REMAP and d.pgoff == 1  # shared: pgoff kept
    assert d.mm.warnings == []

    d = desc_of(ADDR, ADDR + 5 * PG, pgoff=1)  # one page too many once vm_pgoff is skipped
    M.mmap_action_simple_ioremap(d, 0xFE00_0010, 4 * PG)
    assert M.mmap_action_prepare(d) == -errno.EINVAL
    assert d.action.type == B.MMAP_SIMPLE_IO_REMAP and d.vma_flags & REMAP == 0

    cow = FLAG_SETS["private"]
    d = desc_of(ADDR, ADDR + 2 * PG, pgoff=0, flags=cow)
    M.mmap_action_simple_ioremap(d, 0xFE00_0000, 2 * PG)
    assert M.mmap_action_prepare(d) == 0 and d.pgoff == 0xFE000  # COW: pgoff = pfn


def test_simple_ioremap_through_mmap_region():
    def hook(desc):
        M.mmap_action_simple_ioremap(desc, 0xFEDC_B000, 4 * PG)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, 2 * PG, FLAG_SETS["shared"], 2) == ADDR
    v, = mm.vmas
    assert v.remaps == [(ADDR, 0xFEDCB + 2, 2 * PG, PROT_SHARED_RW)]
    assert v.flags == FLAG_SETS["shared"] | REMAP and v.pgoff == 2
    assert M.mmap_region(M.Mm(), prepare_file(hook), ADDR, 2 * PG, FLAG_SETS["shared"], 3) == -errno.EINVAL


def test_remap_size_zero_passes_prepare_and_bugs_at_complete():
    """A zero size is inside the descriptor and not WARNed by mmap_action_remap(), but
    remap_pfn_range_internal() BUG()s on addr >= end."""
    def hook(desc):
        M.mmap_action_remap(desc, desc.start, 0x10, 0)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.EINVAL
    assert mm.warnings == [] and mm.bugs == ["remap_pfn_range_internal: BUG_ON(addr >= end)"]


def test_remap_wrapping_size_is_not_warned_and_bugs():
    def hook(desc):
        M.mmap_action_remap(desc, desc.start, 0x10, U64 - PG)  # start + size wraps below start
        return 0

    mm = M.Mm()
    M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0)
    assert mm.warnings == [] and len(mm.bugs) == 1


def test_unaligned_remap_start_warns_at_complete():
    def hook(desc):
        M.mmap_action_remap(desc, desc.start + 1, 0x10, PG - 1)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.EINVAL
    assert warning_names(mm) == ["remap_pfn_range_internal"] and mm.vmas == []


def test_hide_from_rmap_is_cleared_by_complete():
    def hook(desc):
        desc.action.hide_from_rmap_until_complete = True
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0) == ADDR
    assert mm.vmas[0].rmap_hidden is False


def test_vm_warn_only_with_debug_vm():
    for debug_vm, want in ((False, []), (True, ["maybe_rmap_unlock_action"])):
        def hook(desc):
            desc.action.hide_from_rmap_until_complete = True
            desc.vm_ops = None  # anonymous: vma_is_anonymous() in maybe_rmap_unlock_action()
            return 0

        mm = M.Mm(debug_vm=debug_vm)
        assert M.mmap_region(mm, prepare_file(hook), ADDR, PG, FLAG_SETS["shared"], 0) == ADDR
        assert warning_names(mm) == want and mm.vmas[0].vm_ops is None


def test_map_kernel_pages_complete():
    pages = [Page(), Page(), Page()]

    def hook(desc):
        M.mmap_action_map_kernel_pages(desc, desc.start + PG, pages, 2)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(hook), ADDR, 3 * PG, FLAG_SETS["shared"], 0) == ADDR
    v, = mm.vmas
    assert v.flags & MIXEDMAP and v.flags & PFNMAP == 0
    assert v.pages == {ADDR + PG: (pages[0], PROT_SHARED_RW), ADDR + 2 * PG: (pages[1], PROT_SHARED_RW)}

    # nr_pages whose byte size wraps to one page passes prepare; complete runs past the array
    def wraps(desc):
        M.mmap_action_map_kernel_pages(desc, desc.start, pages[:1], (U64 // PG) + 1)
        return 0

    mm = M.Mm()
    assert M.mmap_region(mm, prepare_file(wraps), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.EFAULT
    assert mm.bugs and mm.vmas == []


def test_insert_pages_stops_at_a_present_pte():
    mm = M.Mm()
    vma = M.Vma(mm, ADDR, ADDR + 4 * PG, flags=FLAG_SETS["shared"], page_prot=PROT_SHARED_RW)
    assert M.remap_pfn_range(vma, ADDR + 2 * PG, 0x10, PG, 0) == 0
    action = M.MmapAction()
    action.type, action.map_kernel.start, action.map_kernel.nr_pages = B.MMAP_MAP_KERNEL_PAGES, ADDR, 4
    action.pages = [Page() for _ in range(4)]
    assert M.map_kernel_pages_complete(vma, action) == -errno.EBUSY
    assert sorted(vma.pages) == [ADDR, ADDR + PG]  # inserted before the error: they stay
    action.pages[0] = Page(0)
    assert M.map_kernel_pages_complete(M.Vma(mm, ADDR, ADDR + 4 * PG), action) == -errno.EINVAL


def test_compat_vma_mmap():
    """A legacy .mmap calling a nested .mmap_prepare: no override, no unmap by the action."""
    def nested(desc):
        M.mmap_action_remap_full(desc, 0x55)
        desc.action.error_override = -errno.EIO
        desc.action.hide_from_rmap_until_complete = True
        return 0

    inner = prepare_file(nested)
    mm = M.Mm()
    ret = M.mmap_region(mm, M.File(M.FileOperations(mmap=lambda f, vma: M.compat_vma_mmap(inner, vma))),
                        ADDR, PG, FLAG_SETS["shared"], 0)
    v, = mm.vmas
    assert ret == ADDR and v.remaps == [(ADDR, 0x55, PG, PROT_SHARED_RW)] and v.private_data is None

    vma = M.Vma(mm, ADDR + PG, ADDR + 2 * PG, flags=FLAG_SETS["shared"])
    vma.pfnmap_track_ctx = M.PfnmapTrackCtx(1, PG)  # a whole-VMA remap is already tracked
    assert M.compat_vma_mmap(inner, vma) == -errno.EINVAL  # not -EIO: compat ignores the override


def test_legacy_mmap_error_drops_the_vma_without_close():
    closed = []

    def mmap(file, vma):
        vma.vm_ops = M.VmOps(close=closed.append)
        assert M.io_remap_pfn_range(vma, vma.start, 0x99, vma.end - vma.start, vma.page_prot) == 0
        return -errno.ENXIO

    mm = M.Mm()
    assert M.mmap_region(mm, M.File(M.FileOperations(mmap=mmap)), ADDR, PG, FLAG_SETS["shared"], 0) == -errno.ENXIO
    assert mm.vmas == [] and closed == []


def test_remap_pfn_range_rules():
    mm = M.Mm()
    vma = M.Vma(mm, ADDR, ADDR + 4 * PG, pgoff=7, flags=FLAG_SETS["private"])
    assert M.remap_pfn_range(vma, ADDR + PG, 0x10, PG, 0) == -errno.EINVAL  # COW: whole VMA only
    assert M.remap_pfn_range(vma, ADDR, 0x10, 4 * PG - 5, 0) == 0  # size page-aligned up: whole
    assert vma.pgoff == 0x10 and vma.flags & REMAP == REMAP
    assert vma.remaps == [(ADDR, 0x10, 4 * PG, 0)]
    assert M.remap_pfn_range(vma, ADDR, 0x20, 4 * PG, 0) == -errno.EINVAL  # one PAT reservation
    shared = M.Vma(mm, ADDR, ADDR + 4 * PG, pgoff=7, flags=FLAG_SETS["shared"])
    assert M.remap_pfn_range(shared, ADDR + PG, 0x10, PG, 0) == 0 and shared.pgoff == 7
    assert shared.pfnmap_track_ctx is None
    assert M.remap_pfn_range(shared, ADDR + PG, 0x10, PG, 0) == -errno.EINVAL
    assert mm.bugs == ["remap_pte_range: BUG_ON(!pte_none(ptep_get(pte)))"]
    assert M.remap_pfn_range(shared, ADDR + 1, 0x10, PG, 0) == -errno.EINVAL
    assert warning_names(mm) == ["remap_pfn_range_internal"]


def test_munmap_splits_and_closes():
    events = []
    ops = M.VmOps(open=lambda v: events.append(("open", v.start, v.end, v.pgoff)),
                  close=lambda v: events.append(("close", v.start, v.end)))

    def mmap(file, vma):
        vma.vm_ops = ops
        return M.remap_pfn_range(vma, vma.start, 0x100, vma.end - vma.start, 0)

    mm = M.Mm()
    assert M.mmap_region(mm, M.File(M.FileOperations(mmap=mmap)), ADDR, 4 * PG, FLAG_SETS["shared"], 10) == ADDR
    assert M.do_munmap(mm, ADDR + PG, 2 * PG) == 0
    assert events == [("open", ADDR, ADDR + PG, 10), ("open", ADDR + 3 * PG, ADDR + 4 * PG, 13),
                      ("close", ADDR + PG, ADDR + 3 * PG)]
    assert [(v.start, v.end, v.pgoff, v.remaps) for v in mm.vmas] == [
        (ADDR, ADDR + PG, 10, [(ADDR, 0x100, PG, 0)]),
        (ADDR + 3 * PG, ADDR + 4 * PG, 13, [(ADDR + 3 * PG, 0x103, PG, 0)])]
    assert M.do_munmap(mm, ADDR + 1, PG) == -errno.EINVAL
    assert M.do_munmap(mm, ADDR, 0) == -errno.EINVAL
    assert M.do_munmap(mm, U64 - PG, PG) == -errno.EINVAL


RW, RO, WO = 3, 1, 2  # f_mode: FMODE_READ | FMODE_WRITE ...
PR, PW, PX = 1, 2, 4
SH, PRIV, SHV = 1, 2, 3


@pytest.mark.parametrize("length, prot, flags, offset, f_mode, kw, want", [
    # the iommufd mmap: MAP_SHARED, PROT_READ | PROT_WRITE on an O_RDWR file
    (PG, PR | PW, SH, 0, RW, {}, READ | WRITE | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE),
    (PG, PR | PW | PX, SH, 0, RW, {}, 0xFF),
    (PG, PR, SH, 0, RO, {}, READ | MAYREAD | MAYEXEC | MAYSHARE),  # no VM_SHARED, no VM_MAYWRITE
    (PG, PR | PW, SH, 0, RO, {}, -errno.EACCES),
    (PG, PR | PW, SHV, 0, RO, {}, -errno.EACCES),
    (PG, PR | PW, PRIV, 0, RO, {}, READ | WRITE | MAYREAD | MAYWRITE | MAYEXEC),  # COW is fine
    (PG, PW, SH, 0, WO, {}, -errno.EACCES),  # mmap needs FMODE_READ
    (PG, PR, SH, 1, RW, {}, -errno.EINVAL),  # the syscall's offset alignment
    (PG, PR, SH, PG - 1, RW, {}, -errno.EINVAL),
    (0, PR, SH, 0, RW, {}, -errno.EINVAL),
    (0, PR, SH, 0, RO, {}, -errno.EINVAL),
    (U64 - 1, PR, SH, 0, RW, {}, -errno.ENOMEM),  # PAGE_ALIGN() wraps to 0
    (U64 - PG, PR, SH, 0, RW, {}, -errno.ENOMEM),  # > TASK_SIZE
    (TASK_SIZE_4L + 1, PR, SH, 0, RW, {}, -errno.ENOMEM),
    (TASK_SIZE_4L + 1, PR | PW, SH, 0, RO, {}, -errno.ENOMEM),  # before the f_mode checks
    (TASK_SIZE_4L, PR, SH, 0, RW, {}, READ | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE),
    (PG, PR, SH, U64 - PG, RW, {}, -errno.EOVERFLOW),  # file_mmap_ok(): pgoff 2^52 - 1
    (PG, PR, SH, U64 - 2 * PG, RW, {}, READ | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE),
    (PG, PR, 0, 0, RW, {}, -errno.EINVAL),  # MAP_TYPE 0
    (PG, PR, 0x08, 0, RW, {}, -errno.EINVAL),  # MAP_DROPPABLE is for anonymous memory
    (PG, PR, 0x0F, 0, RW, {}, -errno.EINVAL),
    (PG, PR, SH | 0x080000, 0, RW, {}, READ | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE | SYNC),
    (PG, PR, SHV | 0x080000, 0, RW, {}, -errno.EOPNOTSUPP),  # MAP_SYNC needs FOP_MMAP_SYNC
    (PG, PR, SH | 0x800000, 0, RW, {}, READ | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE),
    (PG, PR, SHV | 0x800000, 0, RW, {}, -errno.EOPNOTSUPP),
    (PG, PR, SHV | 0x100000, 0, RW, {}, -errno.EOPNOTSUPP),  # MAP_FIXED_NOREPLACE is not legacy
    (PG, PR, PRIV | 0x800000, 0, RW, {}, READ | MAYREAD | MAYWRITE | MAYEXEC),  # private: unchecked
    (PG, PR, SH | 0x040000, 0, RW, {}, -errno.EINVAL),  # MAP_HUGETLB on a character device
    (PG, PR, SH | 0x0100, 0, RW, {}, -errno.EINVAL),  # MAP_GROWSDOWN
    (PG, PR, SH | 0x020000 | 0x4000, 0, RW, {},
     READ | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE | NOHUGEPAGE | NORESERVE),  # MAP_STACK, MAP_NORESERVE
    (PG, PR | PX, SH, 0, RW, {"noexec": True}, -errno.EPERM),
    (PG, PR, SH, 0, RW, {"noexec": True}, READ | SHARED | MAYREAD | MAYWRITE | MAYSHARE),
    (PG, PR, SH | 0x2000, 0, RW, {}, READ | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE | LOCKED),
    (PG, PR, SH | 0x2000, 0, RW, {"memlock_rlimit": 0}, -errno.EPERM),
    (2 * PG, PR, SH | 0x2000, 0, RW, {"memlock_rlimit": PG}, -errno.EAGAIN),
    (PG, 0x8 | 0x1000000, SH, 0, RW, {}, SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE),  # prot unchecked
    (PG, PR | PW, SH | 0x20, 5 * PG, 0, {}, READ | WRITE | SHARED | MAYREAD | MAYWRITE | MAYEXEC | MAYSHARE),
    (PG, PR, SHV | 0x20, 0, RW, {}, -errno.EINVAL),  # anonymous MAP_SHARED_VALIDATE
])
def test_do_mmap_checks(length, prot, flags, offset, f_mode, kw, want):
    assert M.do_mmap_checks(length, prot, flags, offset, f_mode, **kw) == want


def test_do_mmap_checks_can_mmap_file():
    both = M.File(M.FileOperations(mmap=lambda f, v: 0, mmap_prepare=lambda d: 0))
    mm = M.Mm()
    assert M.do_mmap_checks(PG, PR, SH, 0, RW, file=both, mm=mm) == -errno.ENODEV
    assert warning_names(mm) == ["can_mmap_file"]
    assert M.do_mmap_checks(PG, PR, SH, 0, RW, file=M.File(M.FileOperations())) == -errno.ENODEV


@given(length=u64s(), prot=u64s(), flags=u64s(), offset=u64s(), f_mode=st.integers(0, 3),
       noexec=st.booleans(), memlock=st.one_of(st.none(), u64s()))
def test_do_mmap_checks_never_raises(length, prot, flags, offset, f_mode, noexec, memlock):
    r = M.do_mmap_checks(length, prot, flags, offset, f_mode, noexec=noexec, memlock_rlimit=memlock)
    assert -4095 <= r < 0 or r & (MAYREAD | MAYEXEC * (not noexec)) == MAYREAD | MAYEXEC * (not noexec)


def test_do_mmap_places_and_refuses():
    mm = M.Mm()
    f = M.File(M.FileOperations(mmap=lambda file, vma: 0))
    a = M.do_mmap(mm, f, 0, PG, PR, SH, 0)
    assert 0 < a < TASK_SIZE_4L and a % PG == 0 and mm.vmas[0].start == a
    assert M.do_mmap(mm, f, a, PG, PR, SH | 0x100000, 0) == -errno.EEXIST  # MAP_FIXED_NOREPLACE
    assert M.do_mmap(mm, f, a + 1, PG, PR, SH | 0x10, 0) == -errno.EINVAL  # MAP_FIXED, unaligned
    assert M.do_mmap(mm, f, TASK_SIZE_4L, PG, PR, SH | 0x10, 0) == -errno.ENOMEM
    assert M.do_mmap(mm, f, a, PG, PR, SH | 0x10, 0) == a and len(mm.vmas) == 1  # replaced
    ro = M.File(f.f_op, f_mode=RO)
    assert M.do_mmap(mm, ro, 0, PG, PR | PW, SH, 0) == -errno.EACCES


def test_vm_locked_is_dropped_for_special_vmas():
    plain = M.File(M.FileOperations(mmap=lambda file, vma: 0))
    pfnmap = M.File(M.FileOperations(mmap=lambda file, vma: M.remap_pfn_range(vma, vma.start, 1, PG, 0)))
    for file, locked in ((plain, LOCKED), (pfnmap, 0)):
        mm = M.Mm()
        assert M.do_mmap(mm, file, 0, PG, PR, SH | 0x2000, 0) > 0  # MAP_LOCKED
        assert mm.vmas[0].flags & LOCKED == locked


def test_no_integer_raises():
    """Any unsigned long (or negative) argument gives an errno, never an exception."""
    mm = M.Mm()
    vma = M.Vma(mm, ADDR, ADDR + PG, flags=FLAG_SETS["shared"])
    for x in (0, 1, -1, U64 - 1, U64, 1 << 70, -(1 << 70)):
        assert isinstance(M.remap_pfn_range(vma, x, x, x, x), int)
        assert isinstance(M.vm_iomap_memory(vma, x, x), int)
        assert isinstance(M.do_munmap(mm, x, x), int)
        d = desc_of(x, x, x)
        M.mmap_action_remap(d, x, x, x)
        assert isinstance(M.mmap_action_prepare(d), int)
        M.mmap_action_map_kernel_pages(d, x, None, x)
        assert isinstance(M.mmap_action_prepare(d), int)
        assert isinstance(M.mmap_region(M.Mm(), None, x, x, x, x), int)
