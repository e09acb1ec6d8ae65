"""VFIO_IOMMU_MAP_DMA / UNMAP_DMA on /dev/iommu (vfio_compat.c iommufd_vfio_map_dma,
iommufd_vfio_unmap_dma): fixed-IOVA maps into the compat IOAS; type1 unmaps may cut areas."""
import ctypes
import errno
import mmap
import os

import pytest

from conformance.tests.helpers import (
    PAGE, access_pages, create_access, destroy_access_pages, err, require,
)
from model.uapi import T as B

require("VFIO_IOMMU_MAP_DMA")  # vfio.h is fetched for 7.2 only


@pytest.fixture
def compat(iommufd):
    cmd = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    iommufd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    iommufd.ioctl(B.IOMMU_VFIO_IOAS, B.iommu_vfio_ioas(size=ctypes.sizeof(B.iommu_vfio_ioas),
                                                       op=B.IOMMU_VFIO_IOAS_SET, ioas_id=cmd.out_ioas_id))
    return iommufd, cmd.out_ioas_id


@pytest.fixture(scope="module")
def memory():
    m = mmap.mmap(-1, 64 * PAGE)
    yield ctypes.addressof(ctypes.c_char.from_buffer(m))


def map_dma(fd, iova, vaddr, size, flags=B.VFIO_DMA_MAP_FLAG_READ | B.VFIO_DMA_MAP_FLAG_WRITE, argsz=None):
    m = B.vfio_iommu_type1_dma_map(argsz=argsz or ctypes.sizeof(B.vfio_iommu_type1_dma_map), flags=flags,
                                   vaddr=vaddr, iova=iova, size=size)
    return fd.ioctl(B.VFIO_IOMMU_MAP_DMA, m)


def unmap_dma(fd, iova, size, flags=0):
    u = B.vfio_iommu_type1_dma_unmap(argsz=ctypes.sizeof(B.vfio_iommu_type1_dma_unmap), flags=flags,
                                     iova=iova, size=size)
    try:
        fd.ioctl(B.VFIO_IOMMU_UNMAP_DMA, u)
    except OSError as e:
        return e.errno, u.size
    return 0, u.size


def test_needs_the_compat_ioas(iommufd, memory):
    assert err(map_dma, iommufd, 1 << 20, memory, PAGE) == errno.ENODEV
    assert unmap_dma(iommufd, 1 << 20, PAGE)[0] == errno.ENODEV


def test_map_and_unmap(compat, memory):
    fd, _ = compat
    assert map_dma(fd, 1 << 20, memory, 4 * PAGE) == 0
    assert err(map_dma, fd, 1 << 20, memory, PAGE) == errno.EEXIST
    assert unmap_dma(fd, 1 << 20, 4 * PAGE) == (0, 4 * PAGE)
    # Nothing mapped there: success with 0 bytes (IOMMU_IOAS_UNMAP would say ENOENT).
    assert unmap_dma(fd, 1 << 20, 4 * PAGE) == (0, 0)


@pytest.mark.parametrize("kw", [dict(flags=4), dict(argsz=8)])
def test_map_bad_flags_or_argsz_is_einval(compat, memory, kw):
    assert err(map_dma, compat[0], 1 << 20, memory, PAGE, **kw) == errno.EINVAL


def test_map_without_read_or_write_is_accepted(compat, memory):
    # Unlike IOMMU_IOAS_MAP, the compat path does not require READ or WRITE.
    assert map_dma(compat[0], 1 << 20, memory, PAGE, flags=0) == 0


def test_unmap_all(compat, memory):
    fd, _ = compat
    map_dma(fd, 1 << 20, memory, PAGE)
    map_dma(fd, 2 << 20, memory, 2 * PAGE)
    assert unmap_dma(fd, 0, PAGE, flags=B.VFIO_DMA_UNMAP_FLAG_ALL)[0] == errno.EINVAL
    assert unmap_dma(fd, 0, 0, flags=B.VFIO_DMA_UNMAP_FLAG_ALL) == (0, 3 * PAGE)
    assert unmap_dma(fd, 0, 0, flags=8)[0] == errno.EINVAL


def test_type1v2_cannot_unmap_inside_an_area(compat, memory):
    fd, _ = compat
    assert fd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1v2_IOMMU) == 0
    map_dma(fd, 1 << 20, memory, 4 * PAGE)
    assert unmap_dma(fd, (1 << 20) + PAGE, PAGE) == (errno.ENOENT, 0)


def test_type1_cuts_areas_to_unmap_inside_them(compat, memory):
    """VFIO_TYPE1_IOMMU disables large pages; iopt_cut_iova() then splits the area."""
    fd, ioas = compat
    assert fd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1_IOMMU) == 0
    base = 1 << 20
    map_dma(fd, base, memory, 8 * PAGE)
    assert unmap_dma(fd, base + 2 * PAGE, 2 * PAGE) == (0, 2 * PAGE)
    # What is left is two areas: [base, +2 pages) and [+4 pages, +8 pages).
    assert err(map_dma, fd, base + PAGE, memory, PAGE) == errno.EEXIST
    assert map_dma(fd, base + 2 * PAGE, memory, 2 * PAGE) == 0
    assert unmap_dma(fd, base, 8 * PAGE) == (0, 8 * PAGE)
    # Unmapping [base + 1, base + PAGE): the cut at base + PAGE - 1 splits; the cut at base,
    # the area's first byte, does not (iopt_area_split: iova == start), so [base, base + PAGE)
    # sticks out of the range: ENOENT, 0 bytes, and the split that was made stays.
    map_dma(fd, base, memory, 4 * PAGE)
    assert unmap_dma(fd, base + 1, PAGE - 1) == (errno.ENOENT, 0)
    assert unmap_dma(fd, base + PAGE, 3 * PAGE) == (0, 3 * PAGE)
    assert unmap_dma(fd, base, PAGE) == (0, PAGE)


def test_type1_cut_must_be_aligned(compat, memory):
    fd, _ = compat
    fd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1_IOMMU)  # iova_alignment becomes PAGE_SIZE
    map_dma(fd, 1 << 20, memory, 4 * PAGE)
    # The cut at the range's last byte would start the second half unaligned: EINVAL, no reply.
    assert unmap_dma(fd, (1 << 20) + 100, PAGE) == (errno.EINVAL, PAGE)
    assert unmap_dma(fd, 1 << 20, 4 * PAGE) == (0, 4 * PAGE)  # the failed cut changed nothing


def test_type1_cut_of_an_area_an_access_pins_is_einval(compat, memory):
    """The cut (vfio_compat.c:229-241) meets iopt_area_split()'s refusal to split an area with
    an access (io_pagetable.c:1334-1342): EINVAL, no reply, nothing unmapped. Once the pin is
    gone the same unmap cuts and unmaps."""
    fd, ioas = compat
    assert fd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1_IOMMU) == 0
    base = 1 << 20
    map_dma(fd, base, memory, 4 * PAGE)
    access = create_access(fd, ioas, B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    try:
        item = access_pages(fd, access, base, PAGE)
        assert unmap_dma(fd, base + PAGE, PAGE) == (errno.EINVAL, PAGE)
        assert err(map_dma, fd, base + PAGE, memory, PAGE) == errno.EEXIST  # still mapped
        destroy_access_pages(fd, access, item)
        assert unmap_dma(fd, base + PAGE, PAGE) == (0, PAGE)
        assert unmap_dma(fd, base, 4 * PAGE) == (0, 3 * PAGE)
    finally:
        os.close(access)
