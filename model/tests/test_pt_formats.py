"""The intel-iommu page-table formats (model/pt/fmt/vtdss.py, model/pt/fmt/x86_64.py) on the numba
walker: hypothesis drives map / unmap / lookup / dirty sequences with 4 KiB, 2 MiB and 1 GiB
leaves into the walker and the plain-Python reference and compares every answer, lookup and leaf
(test_pagetable.py runs its own operations on both formats too); the entries' encoding round
trips; the bits of known mappings are the specifications' (VT-d 9.8 for the second stage,
Intel SDM Vol. 3A 4.5 for x86-64), written here as numbers, not computed by the code under test;
intel_paging_domain() picks the format intel-iommu picks for a unit's registers.

test_the_same_under_numba_disable_jit runs this file again with NUMBA_DISABLE_JIT=1.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from model.domain import IOMMU_DIRTY_NO_CLEAR, IOMMU_READ, IOMMU_WRITE
from model.pt import fmt
from model.pt.fmt import vtdss as ss
from model.pt.fmt import x86_64 as fs
from model.pt.table import IoPageTable, intel_paging_domain, vtdss, x86_64
from model.tests.test_pagetable import Rec, _reachable_tables, _reference

EXAMPLES = int(os.environ.get("IOMMUFD_PT_EXAMPLES", 100))
K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
RW = IOMMU_READ | IOMMU_WRITE

VARIANTS = [
    ("vtdss_3lvl", lambda: vtdss(3)),
    ("vtdss_4lvl", lambda: vtdss(4)),
    ("vtdss_5lvl", lambda: vtdss(5)),
    ("vtdss_snp_2m_only", lambda: vtdss(4, pgsize_bitmap=K4 | M2,
                                         features=1 << fmt.PT_FEAT_VTDSS_FORCE_COHERENCE)),
    ("vtdss_nest_parent", lambda: vtdss(4, features=1 << fmt.PT_FEAT_VTDSS_FORCE_WRITEABLE)),
    ("x86_64_4lvl", lambda: x86_64(4)),
    ("x86_64_5lvl", lambda: x86_64(5)),
    ("x86_64_no_1g", lambda: x86_64(4, pgsize_bitmap=K4 | M2)),
]


def ops(sign_bit: int):
    """IOVAs: 4 KiB steps in 8 MiB about the 1 GiB line, 2 MiB steps in [0, 4 GiB), whole GiBs, and
    4 KiB steps about 2^sign_bit (x86-64's lower-half end); lengths of 4 KiB pages, 2 MiB and 1 GiB
    multiples. Maps with an unrelated physical address take small lengths only (each 4 KiB page is
    a leaf to compare); 'map_same' keeps the physical address aligned as the IOVA, so large leaves
    form. The '..._leaf' operations aim at a leaf mapped at the time (the n-th, at a page offset):
    unmaps from inside a leaf, from its start ending inside it, or running over several."""
    small = st.integers(0, 2048).map(lambda k: G1 - (4 << 20) + k * K4)
    big = st.one_of(st.integers(0, 2047).map(lambda k: k * M2), st.integers(0, 3).map(lambda k: k * G1))
    edge = st.integers(-16, 16).map(lambda d: (1 << sign_bit) + d * K4)
    iova = st.one_of(small, big, edge)
    small_len = st.integers(1, 64).map(lambda k: k * K4)
    big_len = st.one_of(st.integers(1, 4).map(lambda k: k * M2), st.sampled_from([G1, G1 + M2, 2 * G1, G1 - K4]))
    length = st.one_of(small_len, big_len)
    pa = st.integers(0, 1 << 12).map(lambda k: (1 << 33) + k * K4)
    prot = st.sampled_from([IOMMU_READ, IOMMU_WRITE, RW, RW, RW, 0])
    leaf = st.tuples(st.integers(0, 1 << 16), st.sampled_from([0, 0, 0, 0, 1, 255, 511, 512, 513]))
    mapping = st.one_of(st.tuples(st.just("map"), iova, pa, small_len, prot),
                        st.tuples(st.just("map_same"), iova, length, prot))
    return st.lists(st.one_of(
        mapping, mapping, mapping,  # (one_of draws its branches alike: maps are half the steps)
        st.tuples(st.just("unmap"), iova, length),
        st.tuples(st.just("unmap_leaf"), leaf, length),
        st.tuples(st.just("dirty_leaf"), leaf),
        st.tuples(st.just("dirty_leaf"), leaf),
        st.tuples(st.just("read_dirty"), iova, length, st.booleans()),
        st.tuples(st.just("read_dirty_leaf"), leaf, length, st.booleans()),
    ), max_size=30)


def _at_leaf(ref, leaf) -> int:
    """The IOVA a '..._leaf' operation aims at: the n-th mapped leaf's start + k pages (or k pages
    into the window when nothing is mapped)."""
    n, k = leaf
    leaves = ref.leaves()
    return (leaves[n % len(leaves)][0] if leaves else G1) + k * K4


@pytest.mark.parametrize("name,make", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_large_pages_and_partial_unmaps_agree_with_the_reference(name, make):
    sign_bit = make().max_vasz_lg2 - 1

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops(sign_bit))
    def run(steps):
        t = make()
        ref = _reference(t)
        probes = set()
        for step in steps:
            kind = step[0]
            if kind.endswith("_leaf"):
                kind, step = kind[:-5], (kind[:-5], _at_leaf(ref, step[1])) + step[2:]
            if kind == "map":
                _, iova, pa, length, prot = step
                assert t.map_range(iova, pa, length, prot) == ref.map_range(iova, pa, length, prot), step
                probes.update((iova, iova + length - 1, iova + length))
            elif kind == "map_same":
                _, iova, length, prot = step
                pa = iova + (1 << 32)
                assert t.map_range(iova, pa, length, prot) == ref.map_range(iova, pa, length, prot), step
                probes.update((iova, iova + length // 2, iova + length - 1, iova + length))
            elif kind == "unmap":
                _, iova, length = step
                assert t.unmap_range(iova, length) == ref.unmap_range(iova, length), step
            elif kind == "dirty":
                assert t.set_dirty(step[1]) == ref.set_dirty(step[1]), step
            else:
                _, iova, length, no_clear = step
                a, b = Rec(), Rec()
                flags = IOMMU_DIRTY_NO_CLEAR if no_clear else 0
                assert t.read_and_clear_dirty(iova, length, flags, a) == \
                    ref.read_and_clear_dirty(iova, length, flags, b), step
                assert a.r == b.r, step
            assert t.leaves() == ref.leaves(), step
            p = sorted(probes)
            assert list(t.iova_to_phys_many(np.array(p, dtype=np.int64))) == [ref.iova_to_phys(v) for v in p]
            assert [t.iova_to_phys(v) for v in p[:8]] == [ref.iova_to_phys(v) for v in p[:8]]
            assert t.table_pages == _reachable_tables(t)

    run()


# -- encoding ------------------------------------------------------------------------------------

FORMATS = [("vtdss", fmt.VTDSS, ss), ("x86_64", fmt.X86_64, fs)]


@pytest.mark.parametrize("name,fid,mod", FORMATS, ids=[f[0] for f in FORMATS])
@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(level=st.integers(0, 2), frame=st.integers(0, (1 << 40) - 1), prot=st.sampled_from([1, 2, 3]),
       table_frame=st.integers(1, (1 << 40) - 1), table_level=st.integers(1, 4), snp=st.booleans())
def test_entries_round_trip(name, fid, mod, level, frame, prot, table_frame, table_level, snp):
    isz = 12 + 9 * level
    oa = (frame << isz) & ((1 << 52) - 1)  # any isz-aligned address below 2^52
    f = fmt.fmt_word(fid, (1 << fmt.PT_FEAT_VTDSS_FORCE_COHERENCE) if snp else 0)
    e = int(fmt.leaf_entry(f, oa, isz, isz, 12, bool(prot & 1), bool(prot & 2)))
    assert int(fmt.entry_type(f, e, level)) == fmt.OA
    assert int(fmt.entry_lg2sz(f, e, isz, 12)) == isz
    assert int(fmt.entry_oa(f, e, isz, 12)) == oa
    # x86-64 cannot refuse reads: a write-only map reads back as read-write
    assert int(fmt.entry_prot(f, e)) == (prot if fid == fmt.VTDSS else prot | IOMMU_READ)
    assert bool(e & mod.PS) == (level > 0)
    assert not fmt.is_dirty(f, e)  # the kernel never maps a leaf dirty-tracked as dirty
    if fid == fmt.VTDSS:
        assert bool(e & ss.SNP) == snp
        dirty = int(fmt.make_dirty(f, e))
        assert fmt.is_dirty(f, dirty) and int(fmt.make_clean(f, dirty)) == e
        assert int(fmt.entry_oa(f, dirty | ss.A, isz, 12)) == oa  # A and D leave the address alone
    else:
        assert int(fmt.make_dirty(f, e)) == e and not fmt.is_dirty(f, e | fs.D)  # no dirty tracking
    pa = table_frame << 12
    te = int(fmt.table_entry(f, pa, table_level, 12))
    assert int(fmt.entry_type(f, te, table_level)) == fmt.TABLE
    assert int(fmt.table_pa(f, te, 12)) == pa
    assert int(fmt.entry_type(f, 0, level)) == fmt.EMPTY
    # PS above level 2 is not a leaf: PML4E and PML5E are always table pointers
    if table_level >= 3:
        assert int(fmt.entry_type(f, te | mod.PS, table_level)) == fmt.TABLE


def _entries(t: IoPageTable, iova: int) -> list[tuple[int, int]]:
    """(level, raw entry) of each table entry on the walk to iova, from the top (the table's
    "physical address" is its row << 12)."""
    out, row = [], 0
    for level in range(t.top_level, -1, -1):
        e = int(t.tables[row, (iova >> (12 + 9 * level)) & 511])
        out.append((level, e))
        if level == 0 or e & (1 << 7) or e == 0:  # a leaf (PS) or nothing
            break
        row = (e & ((1 << 52) - 4096)) >> 12
    return out


def test_vtdss_entries_are_the_specs_bits():
    """VT-d 9.8: R bit 0, W bit 1, PS bit 7 (SS-PDE, SS-PDPE), SNP bit 11, ADDR 51:12; a table
    pointer is R | W | ADDR (vtdss.h:130). Nothing sets A (8) or D (9) at map."""
    t = vtdss(4)
    assert t.map_range(0x40201000, 0x123456000, K4, RW) == (0, K4)
    # rows 1, 2, 3 are the PDPT, PD and PT the walk allocated: "addresses" 0x1000, 0x2000, 0x3000
    assert _entries(t, 0x40201000) == [(3, 0x1003), (2, 0x2003), (1, 0x3003), (0, 0x123456003)]
    assert t.map_range(0x80000000, 0x40000000, M2, IOMMU_READ) == (0, M2)  # 2 MiB, read-only
    assert _entries(t, 0x80000000)[-1] == (1, 0x40000081)
    assert t.map_range(3 * G1, 1 << 32, G1, IOMMU_WRITE) == (0, G1)  # 1 GiB, write-only
    assert _entries(t, 3 * G1)[-1] == (2, 0x100000082)
    top = (1 << 52) - K4  # the highest frame the 52-bit address field holds
    assert t.map_range(0x7000, top, K4, RW) == (0, K4)
    assert _entries(t, 0x7000)[-1] == (0, 0x000FFFFFFFFFF003)
    # enforce_cache_coherency: SNP (bit 11) on the leaves mapped from then on
    t.add_features(1 << fmt.PT_FEAT_VTDSS_FORCE_COHERENCE)
    assert t.map_range(0x8000, 0x9000, K4, RW) == (0, K4)
    assert _entries(t, 0x8000)[-1] == (0, 0x9803)
    assert _entries(t, 0x7000)[-1] == (0, 0x000FFFFFFFFFF003)  # the old leaves keep theirs
    # the hardware's D bit (9) is what dirty tracking reads and clears
    assert t.set_dirty(0x80000000 + 0x1234) == 0
    assert _entries(t, 0x80000000)[-1] == (1, 0x40000281)
    r = Rec()
    assert t.read_and_clear_dirty(0, 1 << 32, 0, r) == 0 and r.r == [(0x80000000, M2)]
    assert _entries(t, 0x80000000)[-1] == (1, 0x40000081)


def test_x86_64_entries_are_the_sdms_bits():
    """SDM 4.5 tables 4-18..4-20: P bit 0, R/W 1, U/S 2, A 5, D 6, PS 7 (PDE, PDPTE), address
    51:12. The kernel maps every leaf P | U/S | A, writable ones R/W | D too (x86_64.h:222-224),
    and points to tables with P | R/W | U/S | A (x86_64.h:153)."""
    t = x86_64(4)
    assert t.map_range(0x40201000, 0x123456000, K4, RW) == (0, K4)
    assert _entries(t, 0x40201000) == [(3, 0x1027), (2, 0x2027), (1, 0x3027), (0, 0x123456067)]
    assert t.map_range(0x40202000, 0x123457000, K4, IOMMU_READ) == (0, K4)
    assert _entries(t, 0x40202000)[-1] == (0, 0x123457025)
    assert t.map_range(0x80000000, 0x40000000, M2, IOMMU_READ) == (0, M2)
    assert _entries(t, 0x80000000)[-1] == (1, 0x400000A5)
    assert t.map_range(3 * G1, 1 << 32, G1, IOMMU_WRITE) == (0, G1)
    assert _entries(t, 3 * G1)[-1] == (2, 0x1000000E7)
    top = (1 << 52) - K4
    assert t.map_range(0x7000, top, K4, RW) == (0, K4)
    assert _entries(t, 0x7000)[-1] == (0, 0x000FFFFFFFFFF067)
    # no dirty tracking in generic_pt's x86_64: the domain has no read_and_clear_dirty
    assert t.set_dirty(0x7000) == -errno.EOPNOTSUPP
    assert t.read_and_clear_dirty(0, K4, 0, Rec()) == -errno.EOPNOTSUPP


def test_x86_64_sign_extension_keeps_the_lower_half():
    """PT_FEAT_SIGN_EXTEND (pt_iter.h:28-46, 231-237): the aperture is [0, 2^47 - 1]; a range
    starting at 2^47 or above is -ERANGE; one starting below may run past it (into the top
    table's upper half, which the hardware reads as the upper canonical half), and the lookups
    past 2^47 answer nothing, as make_range() refuses them."""
    t = x86_64(4)
    assert (t.aperture_start, t.aperture_end) == (0, (1 << 47) - 1)
    assert t.map_range(1 << 47, 1 << 32, K4, RW) == (-errno.ERANGE, 0)
    assert t.map_range((1 << 47) - K4, 1 << 32, 2 * K4, RW) == (0, 2 * K4)
    assert int(t.tables[0, 255]) != 0 and int(t.tables[0, 256]) != 0
    assert t.iova_to_phys((1 << 47) - 1) == (1 << 32) + K4 - 1
    assert t.iova_to_phys(1 << 47) == 0
    assert list(t.iova_to_phys_many(np.array([(1 << 47) - K4, 1 << 47], dtype=np.int64))) == [1 << 32, 0]
    assert t.unmap_range(1 << 47, K4) == 0
    assert t.unmap_range((1 << 47) - K4, 2 * K4) == 2 * K4
    assert x86_64(5).aperture_end == (1 << 56) - 1
    assert vtdss(4).aperture_end == (1 << 48) - 1  # no sign extension in the second stage


def test_vtdss_nest_parent_refuses_read_only_maps():
    """PT_FEAT_VTDSS_FORCE_WRITEABLE (ERRATA_772415_SPR17, vtdss.h:235-240)."""
    t = vtdss(4, features=1 << fmt.PT_FEAT_VTDSS_FORCE_WRITEABLE)
    assert t.map_range(0, 0, K4, IOMMU_READ) == (-errno.EINVAL, 0)
    assert t.map_range(0, 1 << 52, K4, IOMMU_READ) == (-errno.ERANGE, 0)  # paddr is checked first
    assert t.map_range(0, 0, K4, IOMMU_WRITE) == (0, K4)


def test_page_sizes_are_4k_2m_1g():
    """pt_possible_sizes() (pt_fmt_defaults.h:147-159) at levels 0-2 of both formats; get_info()
    hides sizes of 2^(vasz - 1) and above (iommu_pt.h:1156): none here."""
    for t in (vtdss(3), vtdss(4), vtdss(5), x86_64(4), x86_64(5)):
        assert t.pgsize_bitmap == K4 | M2 | G1, t.fmt_id


# QEMU 7.2.22's intel-iommu with x-scalable-mode=on, x-pasid-mode=on, aw-bits=48, snoop-control=on,
# as the vtd profile measured them (README: GET_HW_INFO's cap_reg and ecap_reg)
QEMU_CAP, QEMU_ECAP = 0x00D2008C222F0606, 0x0000490080F00FCA


def test_intel_iommu_under_qemu_uses_the_second_stage():
    """intel_iommu_domain_alloc_paging_flags() (iommu.c:3003-3018): the first stage needs ECAP
    FLTS (bit 47), which QEMU 7.2's unit lacks; the second stage has 4 levels of 48 bits
    (SAGAW 39+48, MGAW 48) and 4K | 2M | 1G (SLLPS 2M+1G)."""
    rc, t, stage = intel_paging_domain(QEMU_CAP, QEMU_ECAP)
    assert (rc, stage, t.fmt_id, t.top_level, t.max_vasz_lg2) == (0, "second", fmt.VTDSS, 3, 48)
    assert t.pgsize_bitmap == K4 | M2 | G1 and t.aperture_end == (1 << 48) - 1
    # no SLADS, no nesting: DIRTY_TRACKING and NEST_PARENT are EOPNOTSUPP (README, measured)
    from model.uapi import B
    assert intel_paging_domain(QEMU_CAP, QEMU_ECAP, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)[0] == -errno.EOPNOTSUPP
    assert intel_paging_domain(QEMU_CAP, QEMU_ECAP, B.IOMMU_HWPT_ALLOC_NEST_PARENT)[0] == -errno.EOPNOTSUPP
    assert intel_paging_domain(QEMU_CAP, QEMU_ECAP, B.IOMMU_HWPT_ALLOC_PASID)[2] == "second"
    # legacy mode (no sm_on): the second stage too; intel_iommu=sp_off: 4 KiB only
    assert intel_paging_domain(QEMU_CAP, QEMU_ECAP, sm=False)[2] == "second"
    assert intel_paging_domain(QEMU_CAP, QEMU_ECAP, superpage=False)[1].pgsize_bitmap == K4


def test_intel_iommu_with_first_stage_prefers_it():
    """With FLTS (as QEMU's x-flts=on offers): the x86-64 table, sign-extended, 48 bits for 4
    levels; no 1G without CAP FL1GP (bit 56); flags other than PASID fall back to the second
    stage; a legacy-mode unit never uses it."""
    from model.uapi import B
    ecap = QEMU_ECAP | 1 << 47
    rc, t, stage = intel_paging_domain(QEMU_CAP, ecap)
    assert (rc, stage, t.fmt_id, t.top_level, t.max_vasz_lg2) == (0, "first", fmt.X86_64, 3, 48)
    assert t.pgsize_bitmap == K4 | M2 and t.aperture_end == (1 << 47) - 1
    assert intel_paging_domain(QEMU_CAP | 1 << 56, ecap)[1].pgsize_bitmap == K4 | M2 | G1
    assert intel_paging_domain(QEMU_CAP, ecap, B.IOMMU_HWPT_ALLOC_PASID)[2] == "first"
    assert intel_paging_domain(QEMU_CAP, ecap | 1 << 45 | 1 << 48, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)[2] == "second"
    assert intel_paging_domain(QEMU_CAP, ecap, sm=False)[2] == "second"
    # MGAW 57 with FL5LP (cap bit 60): five levels
    cap57 = (QEMU_CAP & ~(0x3F << 16)) | (56 << 16) | 1 << 60
    rc, t, _ = intel_paging_domain(cap57, ecap)
    assert (t.top_level, t.max_vasz_lg2, t.aperture_end) == (4, 57, (1 << 56) - 1)


def test_the_same_under_numba_disable_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", IOMMUFD_PT_EXAMPLES="10")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "not disable_jit"], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
