"""IOMMU_VFIO_IOAS and the VFIO type1 ioctls /dev/iommu answers (vfio_compat.c)."""
import ctypes
import errno

from conformance.tests.helpers import PAGE, destroy, err, ioas_alloc, mock_domain, require
from model.limits import ULONG_MAX
from model.uapi import T as B

require("VFIO_IOMMU_MAP_DMA")  # vfio.h is fetched for 7.2 only


def vfio_ioas(fd, op, ioas_id=0, reserved=0):
    cmd = B.iommu_vfio_ioas(size=ctypes.sizeof(B.iommu_vfio_ioas), op=op, ioas_id=ioas_id, __reserved=reserved)
    fd.ioctl(B.IOMMU_VFIO_IOAS, cmd)
    return cmd.ioas_id


GET, SET, CLEAR = B.IOMMU_VFIO_IOAS_GET, B.IOMMU_VFIO_IOAS_SET, B.IOMMU_VFIO_IOAS_CLEAR


def test_compat_ioas_get_set_clear(iommufd):
    assert err(vfio_ioas, iommufd, GET) == errno.ENODEV  # get_compat_ioas()
    assert err(vfio_ioas, iommufd, SET, 5) == errno.ENOENT
    a, b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    vfio_ioas(iommufd, SET, b)
    assert vfio_ioas(iommufd, GET) == b
    vfio_ioas(iommufd, CLEAR)
    assert err(vfio_ioas, iommufd, GET) == errno.ENODEV
    vfio_ioas(iommufd, SET, a)
    assert err(vfio_ioas, iommufd, 9) == errno.EOPNOTSUPP
    assert err(vfio_ioas, iommufd, GET, reserved=1) == errno.EOPNOTSUPP


def test_destroying_the_compat_ioas_clears_it(iommufd):
    a = ioas_alloc(iommufd)
    vfio_ioas(iommufd, SET, a)
    iommufd.ioctl(B.IOMMU_DESTROY, B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=a))
    assert err(vfio_ioas, iommufd, GET) == errno.ENODEV


def test_api_version_and_extensions(iommufd):
    assert iommufd.ioctl(B.VFIO_GET_API_VERSION, 0) == B.VFIO_API_VERSION
    for ext in (B.VFIO_TYPE1_IOMMU, B.VFIO_TYPE1v2_IOMMU, B.VFIO_UNMAP_ALL):
        assert iommufd.ioctl(B.VFIO_CHECK_EXTENSION, ext) == 1
    # type 6: VFIO_TYPE1_NESTING_IOMMU until 6.13 removed it, __VFIO_RESERVED_TYPE1_NESTING_IOMMU since
    nesting = getattr(B.bindings, "__VFIO_RESERVED_TYPE1_NESTING_IOMMU", None) or B.VFIO_TYPE1_NESTING_IOMMU
    for ext in (B.VFIO_NOIOMMU_IOMMU, B.VFIO_UPDATE_VADDR, nesting, 1000):
        assert iommufd.ioctl(B.VFIO_CHECK_EXTENSION, ext) == 0
    # iommufd_vfio_cc_iommu() needs the compat IOAS.
    assert err(iommufd.ioctl, B.VFIO_CHECK_EXTENSION, B.VFIO_DMA_CC_IOMMU) == errno.ENODEV
    vfio_ioas(iommufd, SET, ioas_alloc(iommufd))
    assert iommufd.ioctl(B.VFIO_CHECK_EXTENSION, B.VFIO_DMA_CC_IOMMU) == 1


def test_dma_cc_iommu_follows_the_hwpts_on_the_compat_ioas(iommufd):
    """iommufd_vfio_cc_iommu() (vfio_compat.c:256): 0 while a paging HWPT on the compat IOAS
    does not enforce cache coherency (the mock IOMMU lacks IOMMU_CAP_ENFORCE_CACHE_COHERENCY),
    1 again once it is gone. Found by explore on the VM (the model answered 1)."""
    ioas = ioas_alloc(iommufd)
    vfio_ioas(iommufd, SET, ioas)
    stdev, hwpt = mock_domain(iommufd, ioas)
    assert iommufd.ioctl(B.VFIO_CHECK_EXTENSION, B.VFIO_DMA_CC_IOMMU) == 0
    destroy(iommufd, stdev)  # the auto domain goes with its last device
    assert iommufd.ioctl(B.VFIO_CHECK_EXTENSION, B.VFIO_DMA_CC_IOMMU) == 1


def test_unknown_vfio_ioctls_are_enotty(iommufd):
    for name in ("VFIO_IOMMU_DIRTY_PAGES", "VFIO_GROUP_GET_STATUS", "VFIO_IOMMU_ENABLE"):
        assert err(iommufd.ioctl, getattr(B, name), bytearray(64)) == errno.ENOTTY


def test_set_iommu(iommufd):
    assert err(iommufd.ioctl, B.VFIO_SET_IOMMU, B.VFIO_TYPE1v2_IOMMU) == errno.ENODEV
    a = ioas_alloc(iommufd)
    vfio_ioas(iommufd, SET, a)
    assert err(iommufd.ioctl, B.VFIO_SET_IOMMU, B.VFIO_NOIOMMU_IOMMU) == errno.EINVAL
    assert iommufd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1v2_IOMMU) == 0
    huge = B.iommu_option(size=ctypes.sizeof(B.iommu_option), option_id=B.IOMMU_OPTION_HUGE_PAGES,
                          op=B.IOMMU_OPTION_OP_GET, object_id=a)
    iommufd.ioctl(B.IOMMU_OPTION, huge)
    assert huge.val64 == 1
    # Type1 may unmap in the middle of a mapping: iommufd disables large IOPTEs.
    assert iommufd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1_IOMMU) == 0
    iommufd.ioctl(B.IOMMU_OPTION, huge)
    assert huge.val64 == 0


def _info(fd, argsz):
    buf = bytearray(max(argsz, ctypes.sizeof(B.vfio_iommu_type1_info)) + 64)
    info = B.vfio_iommu_type1_info.from_buffer(buf)
    info.argsz = argsz
    fd.ioctl(B.VFIO_IOMMU_GET_INFO, buf)
    return buf, info


def test_get_info_capability_chain(iommufd):
    assert err(_info, iommufd, 8) == errno.EINVAL
    assert err(_info, iommufd, ctypes.sizeof(B.vfio_iommu_type1_info)) == errno.ENODEV
    vfio_ioas(iommufd, SET, ioas_alloc(iommufd))
    base = ctypes.sizeof(B.vfio_iommu_type1_info)
    buf, info = _info(iommufd, base)  # no room for caps: argsz answers what is needed
    needed = info.argsz
    assert needed > base and info.cap_offset == 0
    assert info.flags == B.VFIO_IOMMU_INFO_PGSIZES | B.VFIO_IOMMU_INFO_CAPS
    assert info.iova_pgsizes & 4096
    assert bytes(buf[base:]) == bytes(len(buf) - base)  # nothing written past argsz
    buf, info = _info(iommufd, needed)
    assert info.argsz == needed and info.cap_offset == base
    caps, off = {}, info.cap_offset
    while off:
        hdr = B.vfio_info_cap_header.from_buffer(buf, off)
        caps[hdr.id] = off
        off = hdr.next
    avail = B.vfio_iommu_type1_info_dma_avail.from_buffer(buf, caps[B.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL])
    assert avail.avail == 0xFFFFFFFF
    ranges = B.vfio_iommu_type1_info_cap_iova_range.from_buffer(buf, caps[B.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE])
    assert ranges.nr_iovas == 1
    first = B.vfio_iova_range.from_buffer(buf, caps[B.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE]
                                          + ctypes.sizeof(B.vfio_iommu_type1_info_cap_iova_range))
    assert (first.start, first.end) == (0, ULONG_MAX)


def test_get_info_page_sizes_follow_the_domains(iommufd):
    """VFIO_IOMMU_GET_INFO's iova_pgsizes ANDs every domain's pgsize_bitmap of the compat IOAS
    (iommufd_get_pagesizes(), vfio_compat.c:351): all sizes from PAGE_SIZE up with no domain,
    the mock domain's sizes while one is attached, all again once it is gone."""
    def pgsizes():
        info = B.vfio_iommu_type1_info(argsz=ctypes.sizeof(B.vfio_iommu_type1_info))
        iommufd.ioctl(B.VFIO_IOMMU_GET_INFO, info)
        return info.iova_pgsizes

    every = -PAGE & (2**64 - 1)
    ioas = ioas_alloc(iommufd)
    vfio_ioas(iommufd, SET, ioas)
    assert pgsizes() == every
    stdev, _ = mock_domain(iommufd, ioas)
    with_domain = pgsizes()
    assert with_domain & PAGE and with_domain & (PAGE - 1) == 0
    assert with_domain & every == with_domain and with_domain != every, hex(with_domain)
    destroy(iommufd, stdev)
    assert pgsizes() == every
