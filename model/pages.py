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

import errno

from model.limits import CAP_IPC_LOCK, PAGE_SIZE, SIZE_MAX, U64_MAX
from model.objects import IommufdError
from model.task import Accounts, Task

IOPT_PAGES_ACCOUNT_NONE = 0
IOPT_PAGES_ACCOUNT_USER = 1
IOPT_PAGES_ACCOUNT_MM = 2

IOPT_ADDRESS_USER = 0
IOPT_ADDRESS_FILE = 1
IOPT_ADDRESS_DMABUF = 2


class IoptPages:
    """struct iopt_pages."""

    __slots__ = ("refs", "npages", "npinned", "last_npinned", "type", "uptr", "file", "start",
                 "writable", "account_mode", "source_pid", "source_uid", "accounts", "domain_spans", "pfns")

    def __init__(self, npages: int, writable: bool, task: Task, account_mode: int, accounts: Accounts):
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
        self.source_pid = task.pid  # source_task / source_mm
        self.source_uid = task.uid  # source_user
        self.accounts = accounts  # the user_struct and mm counters it is charged to
        # domains_itree: (first index, last index) of the areas filled into domains
        self.domain_spans: list[tuple[int, int]] = []
        self.pfns: dict[int, int] = {}  # index -> the frame pinned for it

    # -- accounting ------------------------------------------------------------------

    def update_pinned(self, npages: int, inc: bool) -> None:
        """iopt_pages_update_pinned(): ENOMEM over the source task's RLIMIT_MEMLOCK, read now."""
        acc, source = self.accounts, Task(self.source_pid)
        delta = npages if inc else -npages
        if self.account_mode == IOPT_PAGES_ACCOUNT_USER:  # incr_user_locked_vm() / decr_
            if not acc.charge(acc.user_locked_vm, self.source_uid, delta, source.memlock_pages if inc else None):
                raise IommufdError(errno.ENOMEM)
        elif self.account_mode == IOPT_PAGES_ACCOUNT_MM:  # __account_locked_vm()
            limit = None if not inc or source.capable(CAP_IPC_LOCK) else source.memlock_pages
            if not acc.charge(acc.mm_locked_vm, self.source_pid, delta, limit):
                raise IommufdError(errno.ENOMEM)
        self.last_npinned = self.npinned
        with acc.lock:  # mm->pinned_vm moves by exactly npages, either way
            acc.mm_pinned_vm[self.source_pid] = acc.mm_pinned_vm.get(self.source_pid, 0) + delta

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

    def fill(self, mm, first_index: int, last_index: int) -> list[int]:
        """The pinning half of iopt_area_fill_domains() -> pfn_reader: pin [first, last] (EFAULT on
        an unmapped page), pfn_reader_user_update_pinned() charges the growth; on failure nothing
        stays pinned. Returns the frame of each index: a page pinned by another area keeps its
        frame, a new pin gets one from the machine's frames (Accounts.alloc_frames)."""
        if self.type == IOPT_ADDRESS_USER:
            for index in range(first_index, last_index + 1):
                # pin_user_pages_fast(): one byte per page tells whether it is mapped.
                mm.read(self.uptr + index * PAGE_SIZE, 1)
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
        fresh = [i for i in range(first_index, last_index + 1) if i not in self.pfns]
        if fresh:
            base = self.accounts.alloc_frames(len(fresh))
            for k, i in enumerate(fresh):
                self.pfns[i] = base + k
        return [self.pfns[i] for i in range(first_index, last_index + 1)]

    def unfill(self, first_index: int, last_index: int) -> None:
        """iopt_area_unfill_domains(): unpin what no other area still holds (update_unpinned())."""
        self.domain_spans.remove((first_index, last_index))
        still = self.domain_spans
        for i in range(first_index, last_index + 1):
            if not any(s <= i <= l for s, l in still):
                del self.pfns[i]
        npinned = self._union_size(self.domain_spans)
        if npinned < self.npinned:
            old = self.npinned
            self.npinned = npinned
            self.update_pinned(old - npinned, False)


def account_mode_of(ictx, task: Task) -> int:
    """iopt_alloc_pages(): ACCOUNT_NONE with CAP_IPC_LOCK, else ACCOUNT_USER; iopt_map_common()
    turns USER into MM when the ctx is in IOMMU_OPTION_RLIMIT_MODE 1 (ictx->account_mode)."""
    if task.capable(CAP_IPC_LOCK):
        return IOPT_PAGES_ACCOUNT_NONE
    if ictx.account_mode == IOPT_PAGES_ACCOUNT_MM:
        return IOPT_PAGES_ACCOUNT_MM
    return IOPT_PAGES_ACCOUNT_USER


def iopt_alloc_pages(ictx, task: Task, start_byte: int, length: int, writable: bool) -> IoptPages:
    """iopt_alloc_pages(): EINVAL for length 0 or > SIZE_MAX - PAGE_SIZE."""
    if length > SIZE_MAX - PAGE_SIZE or length == 0:
        raise IommufdError(errno.EINVAL)
    npages = (length + start_byte + PAGE_SIZE - 1) // PAGE_SIZE
    return IoptPages(npages, writable, task, account_mode_of(ictx, task), ictx.accounts)


def iopt_alloc_user_pages(ictx, task: Task, uptr: int, length: int, writable: bool) -> IoptPages:
    """iopt_alloc_user_pages(): EOVERFLOW when uptr + length wraps; the VA is not read here."""
    if uptr + length > U64_MAX:
        raise IommufdError(errno.EOVERFLOW)
    uptr_down = uptr & ~(PAGE_SIZE - 1)
    pages = iopt_alloc_pages(ictx, task, uptr - uptr_down, length, writable)
    pages.uptr = uptr_down
    pages.type = IOPT_ADDRESS_USER
    return pages


def iopt_alloc_file_pages(ictx, task: Task, file, start_byte: int, start: int, length: int,
                          writable: bool) -> IoptPages:
    """iopt_alloc_file_pages(): no check of the file here; pin_memfd_pages() runs at fill time."""
    pages = iopt_alloc_pages(ictx, task, start_byte, length, writable)
    pages.file = file
    pages.start = start - start_byte
    pages.type = IOPT_ADDRESS_FILE
    return pages
