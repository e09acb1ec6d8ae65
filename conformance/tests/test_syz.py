"""syzkaller's IOVA form (CONFIG_IOMMUFD_TEST, selftest.c:57-113): with MOCK_FLAGS_ACCESS_SYZ an
IOVA is (offset << 32) | nth, the nth area of the IOAS (in IOVA order) plus offset, so a fuzzer
reaches mappings whose IOVAs it cannot know. IOMMU_TEST_OP_ACCESS_PAGES and ACCESS_RW convert it
through the access's IOAS (iommufd_test_syz_conv_iova()), IOMMU_IOAS_COPY through src_ioas_id
(iommufd_test_syz_conv_iova_id(), ioas.c:293, which also clears the flag); no nth area gives IOVA 0.
"""
import ctypes
import errno

from conformance.tests.helpers import (
    PAGE, access_pages, access_rw, copy, create_access, destroy_access_pages, err, ioas_alloc, map_, touched,
)
from model.uapi import T as B

SYZ = B.MOCK_FLAGS_ACCESS_SYZ
PIN = B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES
IOVA0, IOVA1 = 1 << 24, 1 << 28  # two areas, the second far from the first


def syz(nth: int, offset: int) -> int:
    return offset << 32 | nth


def _two_areas(fd):
    """(ioas, buffers): two 4-page areas with distinct bytes, in IOVA order IOVA0, IOVA1."""
    ioas = ioas_alloc(fd)
    bufs = [touched(4), touched(4)]
    for i, (buf, iova) in enumerate(zip(bufs, (IOVA0, IOVA1))):
        buf.m[:] = bytes([0x10 + i]) * len(buf.m)
        map_(fd, ioas, buf.addr, 4 * PAGE, iova=iova)
    return ioas, bufs


def _read(fd, access, iova, length, flags=0) -> bytes:
    out = (ctypes.c_char * length)()
    access_rw(fd, access, iova, ctypes.addressof(out), length, flags)
    return out.raw


def test_access_rw_names_an_area_by_position(iommufd):
    ioas, bufs = _two_areas(iommufd)
    bufs[1].m[PAGE + 5:PAGE + 9] = b"syz!"
    access = create_access(iommufd, ioas)
    assert _read(iommufd, access, syz(1, PAGE + 5), 4, SYZ) == b"syz!"
    assert _read(iommufd, access, syz(0, 0), 4, SYZ) == b"\x10" * 4
    # a write lands where the position says, as a plain IOVA reads it back
    data = (ctypes.c_char * 3)(*b"abc")
    access_rw(iommufd, access, syz(1, 2 * PAGE), ctypes.addressof(data), 3, SYZ | B.MOCK_ACCESS_RW_WRITE)
    assert _read(iommufd, access, IOVA1 + 2 * PAGE, 3) == b"abc" and bytes(bufs[1].m[2 * PAGE:2 * PAGE + 3]) == b"abc"
    # without the flag the same number is an IOVA nothing is mapped at
    assert err(_read, iommufd, access, syz(1, PAGE + 5), 4) == errno.ENOENT


def test_no_such_area_is_iova_zero(iommufd):
    ioas, _ = _two_areas(iommufd)
    access = create_access(iommufd, ioas)
    assert err(_read, iommufd, access, syz(2, 0), 4, SYZ) == err(_read, iommufd, access, 0, 4) == errno.ENOENT


def test_access_pages_names_an_area_by_position(iommufd):
    ioas, bufs = _two_areas(iommufd)
    access = create_access(iommufd, ioas, PIN)
    # uptr is compared with the pinned pages (iommufd_test_check_pages(): EBADE where they differ):
    # the second area's second page is bufs[1]'s
    item = access_pages(iommufd, access, syz(1, PAGE), PAGE, uptr=bufs[1].addr + PAGE, flags=SYZ)
    destroy_access_pages(iommufd, access, item)
    assert err(access_pages, iommufd, access, syz(1, PAGE), PAGE, uptr=bufs[0].addr + PAGE, flags=SYZ) == errno.EBADE


def test_ioas_copy_takes_the_source_by_position(iommufd):
    src, bufs = _two_areas(iommufd)
    dst = ioas_alloc(iommufd)
    access = create_access(iommufd, dst)  # first: without CONFIG_IOMMUFD_TEST the flag is unknown (EOPNOTSUPP)
    iova = copy(iommufd, dst, src, syz(1, PAGE), PAGE, dst_iova=1 << 30, flags=B.IOMMU_IOAS_MAP_READABLE | SYZ)
    assert iova == 1 << 30 and _read(iommufd, access, iova, 4) == b"\x11" * 4
