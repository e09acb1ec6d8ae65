"""struct iopt_pages (drivers/iommu/iommufd/pages.c, io_pagetable.h): what an area maps, pins and accounts.

The model pins nothing for real: a pin is a count on a frame of model/memory.py's physical
memory. What it keeps is the kernel's bookkeeping:
- an iopt_pages is created per IOMMU_IOAS_MAP / MAP_FILE (iopt_alloc_pages()) and shared
  (kref) by the areas IOMMU_IOAS_COPY makes from it;
- pages are pinned only when an area is filled into an iommu_domain
  (iopt_area_fill_domains() returns 0 at once while iopt->domains is empty) or an in-kernel
  access pins them (iopt_area_add_access()); an IOAS without either pins and accounts nothing,
  and its user_va is not read at map time;
- npinned counts distinct PAGE_SIZE indexes pinned (domains_itree and access_itree: several
  areas or accesses sharing one iopt_pages pin a page once), charged by iopt_pages_update_pinned(): RLIMIT_MEMLOCK of the
  source task against user_struct->locked_vm (IOPT_PAGES_ACCOUNT_USER, incr_user_locked_vm()),
  or mm->locked_vm (IOPT_PAGES_ACCOUNT_MM), or nothing with CAP_IPC_LOCK (ACCOUNT_NONE);
  every charge also adds to mm->pinned_vm.
"""
from __future__ import annotations

import errno
import os

from model import fault_inject
from model.limits import CAP_IPC_LOCK, PAGE_SIZE, SIZE_MAX, U64_MAX
from model.memory import Vmas, file_key
from model.objects import IommufdError, NotModelled
from model.task import Accounts, Task
from model.uaccess import UserFault, UserMemory

IOPT_PAGES_ACCOUNT_NONE = 0
IOPT_PAGES_ACCOUNT_USER = 1
IOPT_PAGES_ACCOUNT_MM = 2

IOPT_ADDRESS_USER = 0
IOPT_ADDRESS_FILE = 1
IOPT_ADDRESS_DMABUF = 2


class IoptPages:
    """struct iopt_pages."""

    __slots__ = ("refs", "npages", "npinned", "last_npinned", "type", "uptr", "file", "filp", "start",
                 "writable", "account_mode", "source_pid", "source_uid", "accounts", "domain_spans", "access_users",
                 "pfns", "keys")

    def __init__(self, npages: int, writable: bool, task: Task, account_mode: int, accounts: Accounts):
        self.refs = 1  # kref_init()
        self.npages = npages
        self.npinned = 0
        self.last_npinned = 0
        self.type = IOPT_ADDRESS_USER
        self.uptr = 0
        self.file = None  # (st_dev, st_ino) of the file
        self.filp = None  # the reference the pages hold on it (FileRef)
        self.start = 0
        self.writable = writable
        self.account_mode = account_mode
        self.source_pid = task.pid  # source_task / source_mm
        self.source_uid = task.uid  # source_user
        self.accounts = accounts  # the user_struct and mm counters it is charged to
        # domains_itree: (first index, last index) of the areas filled into domains
        self.domain_spans: list[tuple[int, int]] = []
        # access_itree: (first index, last index) of in-kernel accesses -> users of that exact range
        self.access_users: dict[tuple[int, int], int] = {}
        self.pfns: dict[int, int] = {}  # index -> the frame pinned for it
        self.keys: dict[int, tuple] = {}  # index -> the physical page (model/memory.py) pinned

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

    # -- pinning: domains (domains_itree) and in-kernel accesses (access_itree) ----------------

    def _key(self, vmas, index: int) -> tuple[tuple, int]:
        """The physical page behind `index` (model/memory.py) and its frames per block."""
        if self.type == IOPT_ADDRESS_FILE:
            return file_key(self.file, self.start // PAGE_SIZE + index), 1
        return vmas.backing(self.source_pid, self.uptr + index * PAGE_SIZE)

    def _pin(self, mm, first_index: int, last_index: int, reader: bool = False) -> list[int]:
        """pfn_reader for a new holder of [first, last]: pages already pinned (by a domain or an
        access) keep their frame; the rest are pinned from the source mm (EFAULT unmapped,
        EFAULT for FOLL_WRITE on a read-only mapping) and charged (ENOMEM over the limit).
        On failure nothing stays pinned or charged. Returns the frame of each index.
        `reader`: the domain path's pfn_reader, whose fault points are modelled (one round)."""
        fresh = [i for i in range(first_index, last_index + 1) if i not in self.pfns]
        if fresh and reader and self.type == IOPT_ADDRESS_USER:
            # pfn_reader_user_pin() (pages.c:900): the upages buffer, then the selftest's point
            temp_kmalloc("pfn_reader_user_pin: upages")
            if fault_inject.should_fail("pfn_reader_user_pin: iommufd_should_fail"):  # pages.c:924
                raise IommufdError(errno.EFAULT)
        if fresh:
            vmas = Vmas(self.source_pid)
            if mm is None:  # an in-kernel access pins from pages->source_mm
                mm = UserMemory(self.source_pid)
            if self.type == IOPT_ADDRESS_USER:
                for i in fresh:
                    va = self.uptr + i * PAGE_SIZE
                    err = vmas.check_pin(va, self.writable)
                    if err:
                        raise IommufdError(err)
                    try:
                        mm.read(va, 1)  # the page must really be there (a file hole past EOF is not)
                    except UserFault:
                        raise IommufdError(errno.EFAULT) from None
            elif self.type == IOPT_ADDRESS_FILE:
                # memfd_pin_folios() (mm/gup.c:3463): a batch reaching past EOF is EINVAL
                if self.start + (fresh[-1] + 1) * PAGE_SIZE - 1 >= self.filp.size():
                    raise IommufdError(errno.EINVAL)
            keys = [self._key(vmas, i) for i in fresh]
            if reader and fault_inject.should_fail("pfn_reader_user_update_pinned"):  # pages.c:1072
                raise IommufdError(errno.ENOMEM)
            old = self.npinned
            self.npinned = old + len(fresh)
            try:
                self.update_pinned(len(fresh), True)  # pfn_reader_user_update_pinned()
            except IommufdError:
                self.npinned = old
                raise
            memory = self.accounts.memory
            for i, (key, block) in zip(fresh, keys):
                self.keys[i] = key
                self.pfns[i] = memory.pin(key, block)
        return [self.pfns[i] for i in range(first_index, last_index + 1)]

    def _unpin_unheld(self, first_index: int, last_index: int) -> None:
        """Unpin what no domain span or access span holds any more (iopt_pages_unpin...)."""
        held = self.domain_spans + list(self.access_users)
        gone = [i for i in range(first_index, last_index + 1) if not any(s <= i <= l for s, l in held)]
        memory = self.accounts.memory
        for i in gone:
            del self.pfns[i]
            memory.unpin(self.keys.pop(i))
        if gone:
            self.npinned -= len(gone)
            self.update_pinned(len(gone), False)

    def fill(self, mm, first_index: int, last_index: int) -> list[int]:
        """The pinning half of iopt_area_fill_domains(): [first, last] joins the domains_itree.
        pfn_reader_first() sets up its batch first (batch_init(), pages.c:290)."""
        temp_kmalloc("__batch_init")
        pfns = self._pin(mm, first_index, last_index, reader=True)
        self.domain_spans.append((first_index, last_index))
        return pfns

    def unfill(self, first_index: int, last_index: int) -> None:
        """iopt_area_unfill_domains(): unpin what no other area or access still holds."""
        self.domain_spans.remove((first_index, last_index))
        self._unpin_unheld(first_index, last_index)

    def add_access(self, mm, first_index: int, last_index: int) -> list[int]:
        """iopt_area_add_access() for the pages: an access of exactly [first, last] already there
        gains a user; otherwise the range is pinned (iopt_pages_fill_xarray()) and recorded."""
        key = (first_index, last_index)
        if key in self.access_users:
            self.access_users[key] += 1
            return [self.pfns[i] for i in range(first_index, last_index + 1)]
        pfns = self._pin(mm, first_index, last_index)
        self.access_users[key] = 1
        return pfns

    def remove_access(self, first_index: int, last_index: int) -> None:
        """iopt_area_remove_access(): the last user of the exact range unpins it."""
        key = (first_index, last_index)
        self.access_users[key] -= 1
        if not self.access_users[key]:
            del self.access_users[key]
            self._unpin_unheld(first_index, last_index)

    def held_indexes(self) -> set[int]:
        """Every index some domain span or access span holds (what must be pinned)."""
        out: set[int] = set()
        for s, l in self.domain_spans + list(self.access_users):
            out.update(range(s, l + 1))
        return out

    def rw(self, start_byte: int, length: int, write: bool, payload: bytes = b"") -> bytes:
        """iopt_pages_rw_access() for user pages: copy to or from the source mm at
        uptr + start_byte (every path of the kernel's ends in EFAULT where memory is missing).
        EPERM for a write to pages mapped without WRITEABLE."""
        if write and not self.writable:
            raise IommufdError(errno.EPERM)
        if self.type != IOPT_ADDRESS_USER:
            raise NotModelled("IOMMU_TEST_OP_ACCESS_RW of file-backed pages")
        mm = UserMemory(self.source_pid)
        try:
            if write:
                mm.write(self.uptr + start_byte, payload)
                return b""
            return mm.read(self.uptr + start_byte, length)
        except UserFault:
            raise IommufdError(errno.EFAULT) from None


def temp_kmalloc(site: str) -> None:
    """temp_kmalloc() without a backup buffer (pages.c:80): the selftest's point (NULL: ENOMEM),
    then kmalloc(__GFP_NORETRY), whose failure is absorbed by a retry of one page (a fault
    point that cannot fire in the same run: the counter is spent)."""
    if fault_inject.should_fail(f"{site}: temp_kmalloc iommufd_should_fail"):
        raise IommufdError(errno.ENOMEM)
    if fault_inject.should_fail(f"{site}: temp_kmalloc kmalloc __GFP_NORETRY"):
        fault_inject.kmalloc(f"{site}: temp_kmalloc kmalloc PAGE_SIZE")


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
    fault_inject.kmalloc("iopt_alloc_pages: kzalloc")  # pages.c:1375
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


class FileRef:
    """get_file() of a caller's descriptor: an open file description of the same file, held
    while the pages live (closed when they are freed), so its size can be read at pin time."""

    def __init__(self, pid: int, fd: int, key: tuple[int, int]):
        self.key = key
        self.fd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC) if pid != os.getpid() \
            else os.dup(fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)


def iopt_alloc_file_pages(ictx, task: Task, file: FileRef, start_byte: int, start: int, length: int,
                          writable: bool) -> IoptPages:
    """iopt_alloc_file_pages(): no check of the file here; pin_memfd_pages() runs at fill time."""
    pages = iopt_alloc_pages(ictx, task, start_byte, length, writable)
    pages.file = file.key
    pages.filp = file
    pages.start = start - start_byte
    pages.type = IOPT_ADDRESS_FILE
    return pages
