"""struct iopt_pages (drivers/iommu/iommufd/pages.c, io_pagetable.h): what an area maps, pins and accounts.

The model pins nothing for real. What it keeps is the kernel's bookkeeping:
- an iopt_pages is created per IOMMU_IOAS_MAP / MAP_FILE (iopt_alloc_pages()) and shared
  (kref) by the areas IOMMU_IOAS_COPY makes from it;
- pages are pinned only when an area is filled into an iommu_domain
  (iopt_area_fill_domains() returns 0 at once while iopt->domains is empty); an IOAS without
  a device/domain therefore pins and accounts nothing, and its user_va is not read at map time;
- npinned counts distinct PAGE_SIZE indexes pinned (domains_itree: several areas sharing one
  iopt_pages pin a page once), charged by iopt_pages_update_pinned(): RLIMIT_MEMLOCK of the
  source task against user_struct->locked_vm (IOPT_PAGES_ACCOUNT_USER, incr_user_locked_vm()),
  or mm->locked_vm (IOPT_PAGES_ACCOUNT_MM), or nothing with CAP_IPC_LOCK (ACCOUNT_NONE);
  every charge also adds to mm->pinned_vm.
"""
from __future__ import annotations

import ctypes
import errno
import os
import resource

from model.limits import PAGE_SHIFT, PAGE_SIZE, SIZE_MAX, U64_MAX
from model.objects import IommufdError


IOPT_PAGES_ACCOUNT_NONE = 0
IOPT_PAGES_ACCOUNT_USER = 1
IOPT_PAGES_ACCOUNT_MM = 2
_ACCOUNT_MODES = {"none": IOPT_PAGES_ACCOUNT_NONE, "user": IOPT_PAGES_ACCOUNT_USER, "mm": IOPT_PAGES_ACCOUNT_MM}

IOPT_ADDRESS_USER = 0
IOPT_ADDRESS_FILE = 1
IOPT_ADDRESS_DMABUF = 2

CAP_IPC_LOCK = 14

# struct user_struct.locked_vm, per uid, shared by every context of the model (the kernel's
# user_struct is per user, system wide). mm->locked_vm / pinned_vm per pid.
USER_LOCKED_VM: dict[int, int] = {}
MM_LOCKED_VM: dict[int, int] = {}
MM_PINNED_VM: dict[int, int] = {}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capable(pid: int, cap: int) -> bool:
    """capable(): `cap` in the effective set of process `pid` (capget(2))."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        return False
    return bool(data[cap // 32].effective & (1 << (cap % 32)))


def _uid_of(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return os.getuid()


def _memlock_limit_pages(pid: int) -> int:
    """task_rlimit(source_task, RLIMIT_MEMLOCK) >> PAGE_SHIFT."""
    if pid == os.getpid():
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    else:
        soft, _ = resource.prlimit(pid, resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return U64_MAX >> PAGE_SHIFT
    return soft >> PAGE_SHIFT


class IoptPages:
    """struct iopt_pages."""

    __slots__ = ("refs", "npages", "npinned", "last_npinned", "type", "uptr", "file", "start",
                 "writable", "account_mode", "source_pid", "source_uid", "domain_spans")

    def __init__(self, npages: int, writable: bool, pid: int, account_mode: int):
        self.refs = 1  # kref_init()
        self.npages = npages
        self.npinned = 0
        self.last_npinned = 0
        self.type = IOPT_ADDRESS_USER
        self.uptr = 0
        self.file = None  # (st_dev, st_ino) of the file: the model holds no reference on it
        self.start = 0
        self.writable = writable
        self.account_mode = account_mode
        self.source_pid = pid
        self.source_uid = _uid_of(pid)
        # domains_itree: (first index, last index) of the areas filled into domains
        self.domain_spans: list[tuple[int, int]] = []

    # -- accounting ------------------------------------------------------------------

    def update_pinned(self, npages: int, inc: bool) -> None:
        """iopt_pages_update_pinned(): ENOMEM over RLIMIT_MEMLOCK in ACCOUNT_USER."""
        if self.account_mode == IOPT_PAGES_ACCOUNT_USER:
            cur = USER_LOCKED_VM.get(self.source_uid, 0)
            if inc:
                if cur + npages > _memlock_limit_pages(self.source_pid):  # incr_user_locked_vm()
                    raise IommufdError(errno.ENOMEM)
                USER_LOCKED_VM[self.source_uid] = cur + npages
            else:
                USER_LOCKED_VM[self.source_uid] = cur - min(cur, npages)  # decr_user_locked_vm()
        elif self.account_mode == IOPT_PAGES_ACCOUNT_MM:
            cur = MM_LOCKED_VM.get(self.source_pid, 0)  # __account_locked_vm()
            if inc:
                if cur + npages > _memlock_limit_pages(self.source_pid) and not capable(self.source_pid, CAP_IPC_LOCK):
                    raise IommufdError(errno.ENOMEM)
                MM_LOCKED_VM[self.source_pid] = cur + npages
            else:
                MM_LOCKED_VM[self.source_pid] = cur - min(cur, npages)
        self.last_npinned = self.npinned
        pinned = MM_PINNED_VM.get(self.source_pid, 0)
        MM_PINNED_VM[self.source_pid] = pinned + npages if inc else pinned - npages

    # -- pinning (only reached with domains) -----------------------------------------

    @staticmethod
    def _union_size(spans) -> int:
        n, cur = 0, -1
        for s, l in sorted(spans):
            if l <= cur:
                continue
            n += l - max(s, cur + 1) + 1
            cur = l
        return n

    def fill(self, mem, first_index: int, last_index: int) -> None:
        """iopt_area_fill_domains() -> pfn_reader: pin [first, last], EFAULT on an unmapped page,
        then pfn_reader_user_update_pinned() charges the growth; on failure nothing stays pinned."""
        if self.type == IOPT_ADDRESS_USER:
            for index in range(first_index, last_index + 1):
                # pin_user_pages_fast(): one byte per page tells whether it is mapped.
                mem.read(self.uptr + index * PAGE_SIZE, 1)
        new_spans = self.domain_spans + [(first_index, last_index)]
        npinned = self._union_size(new_spans)
        if npinned > self.npinned:
            old = self.npinned
            self.npinned = npinned
            try:
                self.update_pinned(npinned - old, True)
            except IommufdError:
                self.npinned = old
                raise
        self.domain_spans = new_spans

    def unfill(self, first_index: int, last_index: int) -> None:
        """iopt_area_unfill_domains(): unpin what no other area still holds (update_unpinned())."""
        self.domain_spans.remove((first_index, last_index))
        npinned = self._union_size(self.domain_spans)
        if npinned < self.npinned:
            old = self.npinned
            self.npinned = npinned
            self.update_pinned(old - npinned, False)


def account_mode_of(ictx, pid: int) -> int:
    """iopt_alloc_pages(): ACCOUNT_NONE with CAP_IPC_LOCK, else ACCOUNT_USER; iopt_map_common()
    turns USER into MM when the ctx is in IOMMU_OPTION_RLIMIT_MODE 1 (ictx->account_mode)."""
    if capable(pid, CAP_IPC_LOCK):
        mode = IOPT_PAGES_ACCOUNT_NONE
    else:
        mode = IOPT_PAGES_ACCOUNT_USER
    ctx_mode = getattr(ictx, "account_mode", "user")
    ctx_mode = _ACCOUNT_MODES.get(ctx_mode, ctx_mode) if isinstance(ctx_mode, str) else ctx_mode
    if ctx_mode == IOPT_PAGES_ACCOUNT_MM and mode == IOPT_PAGES_ACCOUNT_USER:
        mode = IOPT_PAGES_ACCOUNT_MM
    return mode


def iopt_alloc_pages(ictx, pid: int, start_byte: int, length: int, writable: bool) -> IoptPages:
    """iopt_alloc_pages(): EINVAL for length 0 or > SIZE_MAX - PAGE_SIZE."""
    if length > SIZE_MAX - PAGE_SIZE or length == 0:
        raise IommufdError(errno.EINVAL)
    npages = (length + start_byte + PAGE_SIZE - 1) // PAGE_SIZE
    return IoptPages(npages, writable, pid, account_mode_of(ictx, pid))


def iopt_alloc_user_pages(ictx, pid: int, uptr: int, length: int, writable: bool) -> IoptPages:
    """iopt_alloc_user_pages(): EOVERFLOW when uptr + length wraps; the VA is not read here."""
    if uptr + length > U64_MAX:
        raise IommufdError(errno.EOVERFLOW)
    uptr_down = uptr & ~(PAGE_SIZE - 1)
    pages = iopt_alloc_pages(ictx, pid, uptr - uptr_down, length, writable)
    pages.uptr = uptr_down
    pages.type = IOPT_ADDRESS_USER
    return pages


def iopt_alloc_file_pages(ictx, pid: int, file, start_byte: int, start: int, length: int,
                          writable: bool) -> IoptPages:
    """iopt_alloc_file_pages(): no check of the file here; pin_memfd_pages() runs at fill time."""
    pages = iopt_alloc_pages(ictx, pid, start_byte, length, writable)
    pages.file = file
    pages.start = start - start_byte
    pages.type = IOPT_ADDRESS_FILE
    return pages
