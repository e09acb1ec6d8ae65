"""The object table: IDs, types and IOMMU_DESTROY (drivers/iommu/iommufd/main.c)."""
import ctypes
import errno
import mmap

import pytest

from model.uapi import T as B
from conformance.tests.helpers import destroy, ioas_alloc


def test_ids_start_at_one_and_reuse_the_lowest_free(iommufd):
    # xa_init_flags(XA_FLAGS_ALLOC1) + xa_alloc(xa_limit_31b) in iommufd_object_alloc.
    assert [ioas_alloc(iommufd) for _ in range(4)] == [1, 2, 3, 4]
    destroy(iommufd, 3)
    destroy(iommufd, 2)
    assert ioas_alloc(iommufd) == 2
    assert ioas_alloc(iommufd) == 3
    assert ioas_alloc(iommufd) == 5


def test_contexts_are_independent(open_iommufd):
    a, b = open_iommufd(), open_iommufd()
    assert ioas_alloc(a) == 1 and ioas_alloc(a) == 2
    assert ioas_alloc(b) == 1
    with pytest.raises(OSError) as e:
        destroy(b, 2)
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("id", [0, 1, 2, 0xFFFFFFFF])
def test_destroy_unknown_id_is_enoent(iommufd, id):
    with pytest.raises(OSError) as e:
        destroy(iommufd, id)
    assert e.value.errno == errno.ENOENT


def test_destroy_twice_is_enoent(iommufd):
    id = ioas_alloc(iommufd)
    destroy(iommufd, id)
    with pytest.raises(OSError) as e:
        destroy(iommufd, id)
    assert e.value.errno == errno.ENOENT


def test_ioas_alloc_flags_must_be_zero(iommufd):
    cmd = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc), flags=1)
    with pytest.raises(OSError) as e:
        iommufd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    assert e.value.errno == errno.EOPNOTSUPP
    assert ioas_alloc(iommufd) == 1  # nothing was allocated


def test_ioas_alloc_into_read_only_memory_is_efault_and_allocates_nothing(iommufd):
    # iommufd_ucmd_respond() fails -> iommufd_object_abort_and_destroy(): the ID is freed.
    m = mmap.mmap(-1, mmap.PAGESIZE)
    m[:4] = ctypes.sizeof(B.iommu_ioas_alloc).to_bytes(4, "little")
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(addr), mmap.PAGESIZE, mmap.PROT_READ) == 0
    try:
        with pytest.raises(OSError) as e:
            iommufd.ioctl(B.IOMMU_IOAS_ALLOC, addr)
        assert e.value.errno == errno.EFAULT
    finally:
        libc.mprotect(ctypes.c_void_p(addr), mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    assert ioas_alloc(iommufd) == 1


def test_iova_ranges_of_an_empty_ioas_is_everything(iommufd):
    id = ioas_alloc(iommufd)
    ranges = (B.iommu_iova_range * 2)()
    cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id,
                                   num_iovas=2, allowed_iovas=ctypes.addressof(ranges))
    iommufd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, cmd)
    assert cmd.num_iovas == 1
    assert (ranges[0].start, ranges[0].last) == (0, (1 << 64) - 1)
    assert cmd.out_iova_alignment == 1


def test_iova_ranges_of_a_destroyed_ioas_is_enoent(iommufd):
    id = ioas_alloc(iommufd)
    destroy(iommufd, id)
    cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id)
    with pytest.raises(OSError) as e:
        iommufd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, cmd)
    assert e.value.errno == errno.ENOENT


def test_iova_ranges_bad_output_pointer_is_efault(iommufd):
    id = ioas_alloc(iommufd)
    cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id,
                                   num_iovas=1, allowed_iovas=8)
    with pytest.raises(OSError) as e:
        iommufd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, cmd)
    assert e.value.errno == errno.EFAULT


def test_pointer_into_a_small_argument_buffer_sees_fcntls_copy(iommufd):
    """fcntl.ioctl passes a copy of a buffer of up to 1024 bytes and copies it back after the
    call: an output array placed inside the argument buffer is overwritten by that copy."""
    id = ioas_alloc(iommufd)
    hdr = ctypes.sizeof(B.iommu_ioas_iova_ranges)
    for extra, survives in ((16, False), (1024, True)):
        buf = bytearray(hdr + extra)
        cmd = B.iommu_ioas_iova_ranges.from_buffer(buf)
        cmd.size, cmd.ioas_id, cmd.num_iovas = hdr, id, 1
        cmd.allowed_iovas = ctypes.addressof(ctypes.c_char.from_buffer(buf, hdr))
        iommufd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, buf)
        del cmd
        assert cmd_num(buf) == 1
        assert (bytes(buf[hdr + 8:hdr + 16]) == b"\xff" * 8) == survives


def cmd_num(buf):
    return B.iommu_ioas_iova_ranges.from_buffer_copy(bytes(buf[:ctypes.sizeof(B.iommu_ioas_iova_ranges)])).num_iovas
