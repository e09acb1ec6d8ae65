"""IOMMU_OPTION: RLIMIT_MODE per context, HUGE_PAGES per IOAS (main.c iommufd_option,
ioas.c iommufd_option_rlimit_mode / iommufd_ioas_option)."""
import ctypes
import errno
import mmap
import os

import pytest

from model.uapi import T as B
from conformance.tests.helpers import (
    PAGE, U64, err, ioas_alloc, map_, mock_domain, needs_cap_sys_resource, touched, unmap,
)


def option(fd, option_id, op, object_id=0, val64=0, reserved=0):
    cmd = B.iommu_option(size=ctypes.sizeof(B.iommu_option), option_id=option_id, op=op,
                         object_id=object_id, val64=val64, __reserved=reserved)
    fd.ioctl(B.IOMMU_OPTION, cmd)
    return cmd.val64


RLIMIT, HUGE = B.IOMMU_OPTION_RLIMIT_MODE, B.IOMMU_OPTION_HUGE_PAGES
GET, SET = B.IOMMU_OPTION_OP_GET, B.IOMMU_OPTION_OP_SET


@needs_cap_sys_resource
def test_rlimit_mode_defaults_to_per_user_and_switches_while_empty(iommufd):
    assert option(iommufd, RLIMIT, GET) == 0  # IOPT_PAGES_ACCOUNT_USER
    option(iommufd, RLIMIT, SET, val64=1)
    assert option(iommufd, RLIMIT, GET) == 1
    option(iommufd, RLIMIT, SET, val64=0)
    assert option(iommufd, RLIMIT, GET) == 0


@needs_cap_sys_resource
def test_rlimit_mode_is_ebusy_once_an_object_exists(iommufd):
    ioas_alloc(iommufd)
    assert err(option, iommufd, RLIMIT, SET, val64=1) == errno.EBUSY
    assert option(iommufd, RLIMIT, GET) == 0


@pytest.mark.parametrize("kw,expected", [
    pytest.param(dict(option_id=RLIMIT, op=SET, val64=2), errno.EINVAL, marks=needs_cap_sys_resource),
    (dict(option_id=RLIMIT, op=GET, object_id=1), errno.EOPNOTSUPP),
    (dict(option_id=RLIMIT, op=7), errno.EOPNOTSUPP),
    (dict(option_id=99, op=GET), errno.EOPNOTSUPP),
    (dict(option_id=RLIMIT, op=GET, reserved=1), errno.EOPNOTSUPP),
    (dict(option_id=HUGE, op=GET, object_id=1), errno.ENOENT),
])
def test_bad_option_arguments(iommufd, kw, expected):
    assert err(option, iommufd, **kw) == expected
    assert option(iommufd, RLIMIT, GET) == 0  # nothing changed


def test_only_val64_is_written_back(iommufd):
    cmd = B.iommu_option(size=ctypes.sizeof(B.iommu_option), option_id=RLIMIT, op=GET, val64=77)
    before = bytearray(bytes(cmd))
    iommufd.ioctl(B.IOMMU_OPTION, cmd)
    after = bytes(cmd)
    off = B.iommu_option.val64.offset
    assert after[:off] == before[:off] and cmd.val64 == 0


def test_rlimit_mode_set_needs_cap_sys_resource(iommufd, open_iommufd):
    """capable(CAP_SYS_RESOURCE) of the calling task: a child that dropped it gets EPERM.

    The child opens its own file: the model's state is not shared across fork() (an inherited
    model file answers ENOSYS in the child), and the parent's file must stay as it was either way."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops CAP_SYS_RESOURCE from its effective set, then asks
        code = 99
        try:
            own = open_iommufd()
            os.close(r)
            hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
            data = (ctypes.c_uint32 * 6)()
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.syscall(125, hdr, data) == 0  # capget
            data[0] &= ~(1 << 24)  # effective, CAP_SYS_RESOURCE
            assert libc.syscall(126, hdr, data) == 0  # capset
            try:
                option(own, RLIMIT, SET, val64=1)
                code = 0
            except OSError as e:
                code = e.errno
            if option(own, RLIMIT, GET) != 0:  # the failed SET changed the mode
                code = 98
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    code = os.read(r, 1)[0]
    os.waitpid(pid, 0)
    assert code == errno.EPERM
    assert option(iommufd, RLIMIT, GET) == 0


def test_huge_pages_per_ioas_and_its_effect_on_alignment(iommufd):
    a, b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    assert option(iommufd, HUGE, GET, object_id=a) == 1

    def alignment(id):
        cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id)
        with pytest.raises(OSError):
            iommufd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, cmd)  # EMSGSIZE: no room, but answered
        return cmd.out_iova_alignment

    option(iommufd, HUGE, SET, object_id=a, val64=0)
    assert option(iommufd, HUGE, GET, object_id=a) == 0
    assert option(iommufd, HUGE, GET, object_id=b) == 1
    # iopt_calculate_iova_alignment(): batch_iommu_map_small() needs PAGE_SIZE.
    assert alignment(a) == mmap.PAGESIZE and alignment(b) == 1
    assert err(option, iommufd, HUGE, SET, object_id=a, val64=2) == errno.EINVAL
    option(iommufd, HUGE, SET, object_id=a, val64=1)
    assert alignment(a) == 1
    assert err(option, iommufd, HUGE, 5, object_id=a) == errno.EOPNOTSUPP


def test_huge_pages_stay_on_while_a_domain_holds_mappings(iommufd):
    """IOMMU_OPTION_HUGE_PAGES SET 0 (ioas.c:635-636) -> iopt_disable_large_pages(): EINVAL
    while the IOAS has both a domain and an area (io_pagetable.c:1447-1452), the option left
    on; with the area gone it turns off."""
    ioas = ioas_alloc(iommufd)
    mock_domain(iommufd, ioas)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=B.MOCK_APERTURE_START)
    assert err(option, iommufd, HUGE, SET, object_id=ioas, val64=0) == errno.EINVAL
    assert option(iommufd, HUGE, GET, object_id=ioas) == 1
    assert unmap(iommufd, ioas, 0, U64) == PAGE
    option(iommufd, HUGE, SET, object_id=ioas, val64=0)
    assert option(iommufd, HUGE, GET, object_id=ioas) == 0
