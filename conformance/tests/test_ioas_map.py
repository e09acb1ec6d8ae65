"""IOMMU_IOAS_MAP: iommufd_ioas_map() (ioas.c) -> iopt_map_user_pages() (io_pagetable.c).

No device is attached in these tests, so the IOAS has no iommu_domain: iova_alignment is 1
and nothing is pinned (iopt_area_fill_domains() returns at once; see test_pinning.py).
"""
import ctypes
import errno
import mmap

import pytest

from model.uapi import TARGET_SERIES

from conformance.tests.helpers import (
    FIXED, PAGE, RW, U64, B, Buf, R, W, destroy, err, ioas_alloc, map_, map_cmd, snapshot, unmap,
)

HPAGE = 2 << 20


def test_auto_iova_starts_at_page_size_and_packs(iommufd):
    # iopt_alloc_iova(): the allowed span is [PAGE_SIZE, ULONG_MAX - PAGE_SIZE] ("Does not return
    # a 0 IOVA"), first fit in address order.
    ioas = ioas_alloc(iommufd)
    buf = Buf(4, align=HPAGE)  # alignment from the length alone
    assert map_(iommufd, ioas, buf.addr, PAGE) == PAGE
    assert map_(iommufd, ioas, buf.addr + PAGE, PAGE) == 2 * PAGE
    assert map_(iommufd, ioas, buf.addr, 2 * PAGE) == 4 * PAGE  # aligned to 2 pages: 3*PAGE skipped


def test_auto_iova_reuses_the_first_hole_that_fits(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1, align=HPAGE)
    a = [map_(iommufd, ioas, buf.addr, PAGE) for _ in range(4)]
    assert a == [PAGE, 2 * PAGE, 3 * PAGE, 4 * PAGE]
    assert unmap(iommufd, ioas, a[1], PAGE) == PAGE
    assert map_(iommufd, ioas, buf.addr, PAGE) == a[1]
    assert unmap(iommufd, ioas, a[2], PAGE) == PAGE
    # a two-page request does not fit the one-page hole left at a[2]
    assert map_(iommufd, ioas, buf.addr, 2 * PAGE) == 6 * PAGE


def test_auto_iova_keeps_the_alignment_of_the_user_address_up_to_a_huge_page(iommufd):
    # iova_alignment = min(roundup_pow_of_two(length), 1 << __ffs64(addr)), capped at HPAGE_SIZE
    # with CONFIG_TRANSPARENT_HUGEPAGE (PAGE_SIZE without it).
    ioas = ioas_alloc(iommufd)
    buf = Buf(2048, align=4 * HPAGE)  # 8 MiB at a 8 MiB boundary
    assert map_(iommufd, ioas, buf.addr, 2 * HPAGE) == HPAGE  # capped at 2 MiB, not 4 MiB
    assert map_(iommufd, ioas, buf.addr, PAGE) == PAGE  # small length: small alignment
    # a 2 MiB length at an address only 64 KiB aligned: 64 KiB alignment, but [2 PAGE, 2 MiB)
    # is too short, so it goes right after the first area
    assert map_(iommufd, ioas, buf.addr + 0x10000, HPAGE) == 3 * HPAGE
    assert map_(iommufd, ioas, buf.addr + 0x10000, 0x10000) == 0x10000
    assert map_(iommufd, ioas, buf.addr, HPAGE) == 4 * HPAGE


def test_auto_iova_carries_the_offset_in_the_page(iommufd):
    # __alloc_iova_check_range(): aligned_start |= addr % PAGE_SIZE
    ioas = ioas_alloc(iommufd)
    buf = Buf(2)
    assert map_(iommufd, ioas, buf.addr + 0x800, 0x800) == PAGE + 0x800
    # length 1: alignment 1, offset 3 -> the hole [PAGE, PAGE + 0x7ff] before the first area
    assert map_(iommufd, ioas, buf.addr + 3, 1) == PAGE + 3
    # alignment 0x10 (lowest bit of the address): ALIGN_UP(PAGE + 4, 0x10) | 0x10 = PAGE + 0x10,
    # an OR, not an addition
    assert map_(iommufd, ioas, buf.addr + 0x10, 0x100) == PAGE + 0x10
    # the same again: right after, at PAGE + 0x110
    assert map_(iommufd, ioas, buf.addr + 0x10, 0x100) == PAGE + 0x110
    # alignment 0x100 (from the length), offset 0x200: ALIGN_UP(PAGE + 0x210, 0x100) | 0x200
    assert map_(iommufd, ioas, buf.addr + 0x200, 0x100) == PAGE + 0x300


def test_auto_iova_needs_one_byte_more_than_the_length(iommufd):
    # __alloc_iova_check_range(): `aligned_start >= last` rejects a hole of exactly one byte.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    from conformance.tests.helpers import allow
    allow(iommufd, ioas, [(0x10000, 0x10001)])
    assert map_(iommufd, ioas, buf.addr, 1, iova=0x10000) == 0x10000
    with pytest.raises(OSError) as e:
        map_(iommufd, ioas, buf.addr, 1)
    assert e.value.errno == errno.ENOSPC
    unmap(iommufd, ioas, 0x10000, 1)
    assert map_(iommufd, ioas, buf.addr, 1) == 0x10000


def test_fixed_iova_needs_no_alignment_without_a_domain(iommufd):
    # iopt_check_iova(): iova & (iopt->iova_alignment - 1), and iova_alignment is 1.
    ioas = ioas_alloc(iommufd)
    buf = Buf(2)
    assert map_(iommufd, ioas, buf.addr, PAGE, iova=0x12345) == 0x12345
    assert map_(iommufd, ioas, buf.addr + 1, 3, iova=0x12345 + PAGE) == 0x12345 + PAGE
    assert unmap(iommufd, ioas, 0x12345, PAGE + 3) == PAGE + 3


def test_fixed_iova_overlapping_an_area_is_eexist(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(4)
    map_(iommufd, ioas, buf.addr, 2 * PAGE, iova=0x100000)
    for iova, length in [(0x100000, PAGE), (0x100000 + PAGE, 2 * PAGE), (0x100000 - PAGE, PAGE + 1),
                         (0x100000 - PAGE, 4 * PAGE), (0x100000 + 2 * PAGE - 1, 1)]:
        before = snapshot(iommufd, ioas, [(0x100000, 2 * PAGE)])
        assert err(map_, iommufd, ioas, buf.addr, length, iova=iova) == errno.EEXIST, hex(iova)
        assert snapshot(iommufd, ioas, [(0x100000, 2 * PAGE)]) == before
    # touching is fine on both sides
    map_(iommufd, ioas, buf.addr, PAGE, iova=0x100000 - PAGE)
    map_(iommufd, ioas, buf.addr, PAGE, iova=0x100000 + 2 * PAGE)
    assert unmap(iommufd, ioas, 0x100000 - PAGE, 4 * PAGE) == 4 * PAGE


def test_fixed_iova_may_end_at_the_last_byte(iommufd):
    # iommufd_ioas_map() refuses iova >= ULONG_MAX; iopt_check_iova() only iova + length - 1 overflow.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    assert map_(iommufd, ioas, buf.addr, PAGE, iova=U64 - PAGE + 1) == U64 - PAGE + 1
    assert err(map_, iommufd, ioas, buf.addr, 2 * PAGE, iova=U64 - 2 * PAGE + 2) == errno.EOVERFLOW
    assert map_(iommufd, ioas, buf.addr, 1, iova=0) == 0  # IOVA 0 is fine when asked for
    assert unmap(iommufd, ioas, 0, U64) == PAGE + 1


@pytest.mark.parametrize("flags,reserved,length,iova,want", [
    (RW | 8, 0, PAGE, 0, errno.EOPNOTSUPP),          # unknown flag
    (RW | (1 << 31), 0, U64, 0, errno.EOPNOTSUPP),   # flags before EOVERFLOW
    (RW, 1, PAGE, 0, errno.EOPNOTSUPP),              # __reserved
    (RW, 0, U64, 0, errno.EOVERFLOW),                # length >= ULONG_MAX
    (RW | FIXED, 0, PAGE, U64, errno.EOVERFLOW),     # iova >= ULONG_MAX
    (0, 0, U64, 0, errno.EOVERFLOW),                 # EOVERFLOW before "neither R nor W"
    (0, 0, PAGE, 0, errno.EINVAL),                   # neither READABLE nor WRITEABLE
    (FIXED, 0, PAGE, 0x1000, errno.EINVAL),
    (RW, 0, 0, 0, errno.EINVAL),                     # iopt_alloc_pages(): length 0
    (RW | FIXED, 0, 0, 0x1000, errno.EINVAL),
])
def test_map_argument_checks_in_kernel_order(iommufd, flags, reserved, length, iova, want):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    before = snapshot(iommufd, ioas, [(0x1000, PAGE)])
    cmd = map_cmd(ioas, buf.addr, length, None, flags, reserved)
    cmd.iova = iova
    with pytest.raises(OSError) as e:
        iommufd.ioctl(B.IOMMU_IOAS_MAP, cmd)
    assert e.value.errno == want
    assert snapshot(iommufd, ioas, [(0x1000, PAGE)]) == before


def test_unknown_ioas_is_enoent_after_the_flag_checks(iommufd):
    buf = Buf(1)
    assert err(map_, iommufd, 7, buf.addr, PAGE) == errno.ENOENT
    assert err(map_, iommufd, 7, buf.addr, 0) == errno.ENOENT  # lookup before the length-0 check
    assert err(map_, iommufd, 7, buf.addr, PAGE, flags=0) == errno.EINVAL
    ioas = ioas_alloc(iommufd)
    destroy(iommufd, ioas)
    assert err(map_, iommufd, ioas, buf.addr, PAGE) == errno.ENOENT


# Depends on the version: 7.2's iopt_alloc_user_pages() checks uptr + length for a wrap before
# iopt_alloc_pages() checks the length; 6.12's iopt_alloc_pages() (pages.c:1152) checks the length
# (EINVAL) before the wrap (EOVERFLOW), so a huge length that also wraps answers EINVAL there.
WRAP_AND_HUGE = errno.EINVAL if TARGET_SERIES == "6.12" else errno.EOVERFLOW


@pytest.mark.parametrize("user_va,length,want", [
    (U64 - PAGE + 1, 2 * PAGE, errno.EOVERFLOW),  # iopt_alloc_user_pages(): uptr + length wraps
    (2, U64 - 1, WRAP_AND_HUGE),
    (1, U64 - 1, errno.EINVAL),                   # no wrap; iopt_alloc_pages(): > SIZE_MAX - PAGE_SIZE
    (0, U64 - PAGE + 1, errno.EINVAL),
    (0, U64 // 2, errno.EOVERFLOW),               # iopt_alloc_iova(): length >= ULONG_MAX / 2
])
def test_huge_lengths(iommufd, user_va, length, want):
    ioas = ioas_alloc(iommufd)
    before = snapshot(iommufd, ioas)
    assert err(map_, iommufd, ioas, user_va, length) == want
    assert snapshot(iommufd, ioas) == before


def test_a_quarter_of_the_address_space_maps_lazily(iommufd):
    # Nothing is pinned without a domain, so the length is only IOVA bookkeeping.
    ioas = ioas_alloc(iommufd)
    length = 1 << 62
    assert map_(iommufd, ioas, 0, length) == HPAGE  # alignment capped at HPAGE_SIZE
    assert err(map_, iommufd, ioas, 0, 1 << 62, iova=U64 - (1 << 61)) == errno.EOVERFLOW
    assert unmap(iommufd, ioas, 0, U64) == length


def test_no_space_left_is_enospc_and_changes_nothing(iommufd):
    ioas = ioas_alloc(iommufd)
    from conformance.tests.helpers import allow
    allow(iommufd, ioas, [(0x10000, 0x1ffff)])
    buf = Buf(32)
    assert map_(iommufd, ioas, buf.addr, 0x8000) == 0x10000
    before = snapshot(iommufd, ioas, [(0x10000, 0x8000)], auto_probe=(buf.addr, PAGE))
    assert err(map_, iommufd, ioas, buf.addr, 0x10000) == errno.ENOSPC
    assert snapshot(iommufd, ioas, [(0x10000, 0x8000)], auto_probe=(buf.addr, PAGE)) == before
    assert map_(iommufd, ioas, buf.addr, 0x8000) == 0x18000
    assert err(map_, iommufd, ioas, buf.addr, PAGE) == errno.ENOSPC


def test_efault_on_the_reply_keeps_the_mapping(iommufd):
    # iommufd_ioas_map(): iommufd_ucmd_respond() runs after iopt_map_user_pages() succeeded and
    # nothing undoes the area when the copy back fails.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    m = mmap.mmap(-1, PAGE)
    cmd = map_cmd(ioas, buf.addr, PAGE, 0x40000)
    m[:ctypes.sizeof(cmd)] = bytes(cmd)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(addr), PAGE, mmap.PROT_READ) == 0
    try:
        assert err(iommufd.ioctl, B.IOMMU_IOAS_MAP, addr) == errno.EFAULT
    finally:
        libc.mprotect(ctypes.c_void_p(addr), PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=0x40000) == errno.EEXIST
    assert unmap(iommufd, ioas, 0x40000, PAGE) == PAGE


def test_read_only_and_write_only_mappings(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    assert map_(iommufd, ioas, buf.addr, PAGE, flags=R) == PAGE
    assert map_(iommufd, ioas, buf.addr, PAGE, flags=W) == 2 * PAGE


def test_destroy_an_ioas_with_areas(iommufd):
    # iommufd_ioas_destroy(): iopt_unmap_all() then iopt_destroy_table(); no reference without devices.
    ioas = ioas_alloc(iommufd)
    buf = Buf(4)
    for i in range(4):
        map_(iommufd, ioas, buf.addr + i * PAGE, PAGE)
    destroy(iommufd, ioas)
    assert err(unmap, iommufd, ioas, 0, U64) == errno.ENOENT
    assert ioas_alloc(iommufd) == ioas


def test_many_areas_keep_order(iommufd):
    # Fixed areas in scrambled order, then automatic ones fill the holes in address order.
    ioas = ioas_alloc(iommufd)
    buf = Buf(1)
    fixed = [PAGE * (2 * i + 1) for i in range(1, 200)]
    for i in sorted(range(len(fixed)), key=lambda i: (i * 37) % len(fixed)):
        map_(iommufd, ioas, buf.addr, PAGE, iova=fixed[i])
    got = [map_(iommufd, ioas, buf.addr, PAGE) for _ in range(5)]
    assert got == [PAGE, 2 * PAGE, 4 * PAGE, 6 * PAGE, 8 * PAGE]
    assert unmap(iommufd, ioas, 0, U64) == (len(fixed) + 5) * PAGE
