"""Pinning and accounting: struct iopt_pages (pages.c).

Pages are pinned only when an area is filled into an iommu_domain (iopt_area_fill_domains()
returns 0 while iopt->domains is empty), charged by iopt_pages_update_pinned(): mm->pinned_vm
always (VmPin in /proc/self/status), and RLIMIT_MEMLOCK against user->locked_vm in
IOPT_PAGES_ACCOUNT_USER (without CAP_IPC_LOCK). A domain without real devices comes from the
mock device of IOMMU_TEST_OP_MOCK_DOMAIN (CONFIG_IOMMUFD_TEST).
"""
import ctypes
import errno
import mmap
import os
import resource

import pytest

from conformance.tests.helpers import (
    PAGE, U64, Buf, copy, err, ioas_alloc, map_, model_iopt, mock_domain, snapshot, unmap, unmapped_va,
    needs_cap_sys_resource, vm_pin_kb,
)
from model.uapi import T as B

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


def test_a_shared_mapping_past_the_end_of_its_file_is_efault(iommufd):
    """pfn_reader_user_pin() pins with pin_user_pages_fast() (pages.c:932-934): a page of a
    MAP_SHARED mapping past the end of its memfd faults with SIGBUS (shmem_fault()), which GUP
    answers as EFAULT (vm_fault_to_errno(), mm/gup.c); the whole map is undone."""
    ioas = ioas_alloc(iommufd)
    mock_domain(iommufd, ioas)
    pin0 = vm_pin_kb(iommufd)
    mfd = os.memfd_create("iommufd-past-eof")
    try:
        os.ftruncate(mfd, 2 * PAGE)
        m = mmap.mmap(mfd, 2 * PAGE, mmap.MAP_SHARED)
        os.ftruncate(mfd, PAGE)  # the mapping stays; its second page is past the end now
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))  # only the model's pin reads it
        before = snapshot(iommufd, ioas, [(BASE, 2 * PAGE)])
        assert err(map_, iommufd, ioas, addr, 2 * PAGE, iova=BASE) == errno.EFAULT
        assert snapshot(iommufd, ioas, [(BASE, 2 * PAGE)]) == before
        assert vm_pin_kb(iommufd) == pin0
        assert map_(iommufd, ioas, addr, PAGE, iova=BASE) == BASE  # the first page is there
        assert unmap(iommufd, ioas, 0, U64) == PAGE
    finally:
        os.close(mfd)


def _option(fd, option_id, op, val64=0) -> int:
    cmd = B.iommu_option(size=ctypes.sizeof(B.iommu_option), option_id=option_id, op=op, val64=val64)
    fd.ioctl(B.IOMMU_OPTION, cmd)
    return cmd.val64


@needs_cap_sys_resource
def test_rlimit_mode_mm_charges_mm_locked_vm_against_rlimit_memlock(iommufd):
    # IOMMU_OPTION_RLIMIT_MODE 1 (ioas.c:616) turns the pages of a caller without CAP_IPC_LOCK
    # (pages.c:1388-1391) to IOPT_PAGES_ACCOUNT_MM (iopt_map_common(), io_pagetable.c:419-421):
    # update_mm_locked_vm() -> __account_locked_vm() with bypass_rlim false (pages.c:1002-1003)
    # is ENOMEM past RLIMIT_MEMLOCK (mm/util.c:516-519); the whole map fails and is undone.
    _option(iommufd, B.IOMMU_OPTION_RLIMIT_MODE, B.IOMMU_OPTION_OP_SET, 1)
    ioas = ioas_alloc(iommufd)
    mock_domain(iommufd, ioas)
    buf = Buf(64)
    if resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] < 8 * PAGE:
        pytest.skip("the hard RLIMIT_MEMLOCK is below 8 pages")
    if _vm_lck_kb(iommufd):
        pytest.skip("this process has locked memory already (VmLck)")
    with _CapIpcLockOff(8 * PAGE):
        before = snapshot(iommufd, ioas, [(BASE, 64 * PAGE)])
        assert err(map_, iommufd, ioas, buf.addr, 64 * PAGE, iova=BASE) == errno.ENOMEM
        assert snapshot(iommufd, ioas, [(BASE, 64 * PAGE)]) == before
        assert map_(iommufd, ioas, buf.addr, 4 * PAGE, iova=BASE) == BASE
        assert _vm_lck_kb(iommufd) == 4 * PAGE // 1024  # mm->locked_vm, not the user's
    assert unmap(iommufd, ioas, 0, U64) == 4 * PAGE
    assert _vm_lck_kb(iommufd) == 0


def _vm_lck_kb(fd) -> int:
    """mm->locked_vm of this process in KiB: the model's account on the model, else VmLck."""
    ictx = getattr(getattr(fd, "_f", fd), "ictx", None)
    if ictx is not None:
        return ictx.accounts.mm_locked_vm.get(os.getpid(), 0) * PAGE // 1024
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmLck:"))
