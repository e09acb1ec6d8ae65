"""Pinning and accounting: struct iopt_pages (pages.c).

Pages are pinned only when an area is filled into an iommu_domain (iopt_area_fill_domains()
returns 0 while iopt->domains is empty), charged by iopt_pages_update_pinned(): mm->pinned_vm
always (VmPin in /proc/self/status), and RLIMIT_MEMLOCK against user->locked_vm in
IOPT_PAGES_ACCOUNT_USER (without CAP_IPC_LOCK). A domain without real devices comes from the
mock device of IOMMU_TEST_OP_MOCK_DOMAIN (CONFIG_IOMMUFD_TEST).
"""
import ctypes
import errno
import resource

import pytest

from conformance.tests.helpers import (
    PAGE, U64, Buf, copy, err, ioas_alloc, map_, model_iopt, mock_domain, snapshot, unmap, unmapped_va,
    vm_pin_kb,
)

BASE = 1 << 24  # inside the mock domain's aperture (MOCK_APERTURE_START, selftest.c); outside is reserved


def test_no_domain_pins_nothing_and_reads_no_user_memory(iommufd):
    ioas = ioas_alloc(iommufd)
    pin0 = vm_pin_kb(iommufd)
    buf = Buf(64)
    assert map_(iommufd, ioas, buf.addr, 64 * PAGE, iova=BASE) == BASE
    assert map_(iommufd, ioas, unmapped_va(), 4 * PAGE, iova=2 * BASE) == 2 * BASE
    assert map_(iommufd, ioas, 0, PAGE, iova=3 * BASE) == 3 * BASE  # NULL too
    assert vm_pin_kb(iommufd) == pin0
    iopt = model_iopt(iommufd, ioas)
    if iopt is not None:
        assert iopt.pinned_pages == 0
    assert unmap(iommufd, ioas, 0, U64) == 69 * PAGE


def test_a_domain_pins_at_map_time(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_domain(iommufd, ioas)
    pin0 = vm_pin_kb(iommufd)
    buf = Buf(4)
    map_(iommufd, ioas, buf.addr, 4 * PAGE, iova=BASE)
    assert vm_pin_kb(iommufd) == pin0 + 4 * PAGE // 1024
    # a copy into the same IOAS shares the pinned pages (pfn_reader reads the domains_itree)
    copy(iommufd, ioas, ioas, BASE, 4 * PAGE, dst_iova=BASE + 0x100000)
    assert vm_pin_kb(iommufd) == pin0 + 4 * PAGE // 1024
    assert unmap(iommufd, ioas, BASE, 4 * PAGE) == 4 * PAGE
    assert vm_pin_kb(iommufd) == pin0 + 4 * PAGE // 1024  # the copy still holds them
    assert unmap(iommufd, ioas, 0, U64) == 4 * PAGE
    assert vm_pin_kb(iommufd) == pin0


def test_a_domain_makes_an_unmapped_user_va_efault(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_domain(iommufd, ioas)
    pin0 = vm_pin_kb(iommufd)
    before = snapshot(iommufd, ioas, [(BASE, 4 * PAGE)])
    assert err(map_, iommufd, ioas, unmapped_va(), 4 * PAGE, iova=BASE) == errno.EFAULT
    assert snapshot(iommufd, ioas, [(BASE, 4 * PAGE)]) == before
    # half good, half unmapped: what was pinned is unpinned again
    buf = Buf(2)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.munmap(ctypes.c_void_p(buf.addr + PAGE), PAGE) == 0
    assert err(map_, iommufd, ioas, buf.addr, 2 * PAGE, iova=BASE) == errno.EFAULT
    assert vm_pin_kb(iommufd) == pin0
    assert snapshot(iommufd, ioas, [(BASE, 4 * PAGE)]) == before


class _CapIpcLockOff:
    """CAP_IPC_LOCK out of this process's effective set and a soft RLIMIT_MEMLOCK, both put back
    on exit (capset() can raise an effective capability again while it is permitted)."""

    def __init__(self, memlock: int):
        self.memlock = memlock
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _caps(self):
        class Hdr(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        hdr, data = Hdr(0x20080522, 0), (Data * 2)()
        assert self.libc.capget(ctypes.byref(hdr), data) == 0
        return hdr, data

    def __enter__(self):
        self.hdr, self.saved = self._caps()
        hdr, data = self._caps()
        data[0].effective &= ~(1 << 14)
        assert self.libc.capset(ctypes.byref(hdr), data) == 0
        self.rlimit = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (self.memlock, self.rlimit[1]))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, self.rlimit)
        assert self.libc.capset(ctypes.byref(self.hdr), self.saved) == 0


def test_rlimit_memlock_without_cap_ipc_lock_is_enomem(iommufd):
    # IOPT_PAGES_ACCOUNT_USER: incr_user_locked_vm() against RLIMIT_MEMLOCK, read when pinning;
    # the whole map fails and is undone.
    ioas = ioas_alloc(iommufd)
    mock_domain(iommufd, ioas)
    buf = Buf(64)
    if resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] < 8 * PAGE:
        pytest.skip("the hard RLIMIT_MEMLOCK is below 8 pages")
    with _CapIpcLockOff(8 * PAGE):
        before = snapshot(iommufd, ioas, [(BASE, 64 * PAGE)])
        assert err(map_, iommufd, ioas, buf.addr, 64 * PAGE, iova=BASE) == errno.ENOMEM
        assert snapshot(iommufd, ioas, [(BASE, 64 * PAGE)]) == before
        assert map_(iommufd, ioas, buf.addr, 4 * PAGE, iova=BASE) == BASE
    assert unmap(iommufd, ioas, 0, U64) == 4 * PAGE
