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
  every charge also adds to mm->pinned_vm;
- an in-kernel access copies through the pages (iopt_pages_rw_access(): the source mm's
  memory, one page pinned, or a pfn_reader over what domains and accesses hold with the rest
  pinned for the copy: IoptPages.rw_access()); a file's bytes through the file the pages hold,
  and pinned pages whose mm is gone through the files their frames keep (model/memory.py).
"""
from __future__ import annotations

import errno
import os

from model import fault_inject
from model.dma_buf import (
    ForeignDmaBuf, dma_buf_detach, dma_buf_dynamic_attach, dma_buf_pin, dma_buf_put, dma_buf_unpin,
)
from model.limits import CAP_IPC_LOCK, PAGE_SIZE, SIZE_MAX, U64_MAX
from model.memory import BackingFile, Vmas, check_pin_range, file_key
from model.objects import IommufdError, NotModelled
from model.task import Accounts, Task
from model.uaccess import UserFault, UserMemory, mm_alive

IOPT_PAGES_ACCOUNT_NONE = 0
IOPT_PAGES_ACCOUNT_USER = 1
IOPT_PAGES_ACCOUNT_MM = 2

IOPT_ADDRESS_USER = 0
IOPT_ADDRESS_FILE = 1
IOPT_ADDRESS_DMABUF = 2

# enum iommufd_access_rw_flags (include/linux/iommufd.h:79)
IOMMUFD_ACCESS_RW_WRITE = 1 << 0
IOMMUFD_ACCESS_RW_KTHREAD = 1 << 1
IOMMUFD_ACCESS_RW_SLOW_PATH = 1 << 2  # __IOMMUFD_ACCESS_RW_SLOW_PATH, CONFIG_IOMMUFD_TEST only


class IoptPages:
    """struct iopt_pages."""

    __slots__ = ("refs", "npages", "npinned", "last_npinned", "type", "uptr", "file", "filp", "start",
                 "writable", "account_mode", "source_pid", "source_uid", "accounts", "domain_spans", "access_users",
                 "pfns", "keys", "dmabuf")

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
        self.dmabuf: DmabufPages | None = None  # pages->dmabuf (IOPT_ADDRESS_DMABUF)

    @property
    def revoked(self) -> bool:
        """iopt_dmabuf_revoked() (io_pagetable.h:258): a dma-buf whose phys.len is 0."""
        return self.dmabuf is not None and self.dmabuf.phys_len == 0

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
        if fresh and reader and self.type in (IOPT_ADDRESS_USER, IOPT_ADDRESS_FILE):
            self._user_pin_buffer()  # then the selftest's point
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
                self._check_memfd_pin(fresh[-1])
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
                where = (self.source_pid, self.uptr + i * PAGE_SIZE) if self.type == IOPT_ADDRESS_USER else None
                self.pfns[i] = memory.pin(key, block, self._backing(vmas, i) if key[0] == "file" else None, where)
        return [self.pfns[i] for i in range(first_index, last_index + 1)]

    def _user_pin_buffer(self) -> None:
        """pfn_reader_user_pin()'s buffer (pages.c:900): upages, or a file's ufolios (:902)."""
        temp_kmalloc("pfn_reader_user_pin: ufolios" if self.type == IOPT_ADDRESS_FILE
                     else "pfn_reader_user_pin: upages")

    def _check_memfd_pin(self, last_index: int) -> None:
        """memfd_pin_folios() (mm/gup.c:3442) of the pages up to last_index: EINVAL for a file
        that is neither shmem nor hugetlbfs (gup.c:3460: a regular file on a disk filesystem
        maps, IOMMU_IOAS_MAP_FILE checks nothing, but never pins) and for a range reaching
        past EOF (gup.c:3463)."""
        if not self.filp.shmem or self.start + (last_index + 1) * PAGE_SIZE - 1 >= self.filp.size():
            raise IommufdError(errno.EINVAL)

    def _backing(self, vmas, index: int):
        """How the frame of a file's page opens the file it keeps (model/memory.py): the pages'
        own file for MAP_FILE, /proc/PID/map_files for a shared mapping of the source mm."""
        if self.type == IOPT_ADDRESS_FILE:
            return lambda: BackingFile(os.dup(self.filp.fd))
        va = self.uptr + index * PAGE_SIZE
        return lambda: vmas.open_backing(self.source_pid, va)

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

    def fill(self, mm, first_index: int, last_index: int) -> list[int] | None:
        """The pinning half of iopt_area_fill_domains(): [first, last] joins the domains_itree.
        pfn_reader_first() sets up its batch first (batch_init(), pages.c:290).
        A dma-buf pins and charges nothing (pfn_reader_fill_dmabuf(), pages.c:1097); revoked,
        no pfn_reader runs at all and there is nothing to map (None, pages.c:1926)."""
        if self.type == IOPT_ADDRESS_DMABUF and self.revoked:
            pfns = None
        else:
            temp_kmalloc("__batch_init")
            pfns = self.dmabuf_pfns(first_index, last_index) if self.type == IOPT_ADDRESS_DMABUF \
                else self._pin(mm, first_index, last_index, reader=True)
        self.domain_spans.append((first_index, last_index))
        return pfns

    def unfill(self, first_index: int, last_index: int) -> None:
        """iopt_area_unfill_domains(): unpin what no other area or access still holds (a
        dma-buf holds no pins: __iopt_area_unfill_domain() only unmaps, pages.c:1752)."""
        self.domain_spans.remove((first_index, last_index))
        if self.type != IOPT_ADDRESS_DMABUF:
            self._unpin_unheld(first_index, last_index)

    def domain_pfns(self, first_index: int, last_index: int) -> list[int] | None:
        """The frames of [first, last] while some domain holds them (batch_from_domain()), for
        another domain: None for a revoked dma-buf (iopt_area_fill_domain() returns 0 at once,
        pages.c:1858)."""
        if self.type == IOPT_ADDRESS_DMABUF:
            return None if self.revoked else self.dmabuf_pfns(first_index, last_index)
        return [self.pfns[i] for i in range(first_index, last_index + 1)]

    def dmabuf_pfns(self, first_index: int, last_index: int) -> list[int]:
        """pfn_reader_fill_dmabuf() (pages.c:1097): PHYS_PFN(phys.paddr + dmabuf.start +
        index * PAGE_SIZE), contiguous (BATCH_MMIO)."""
        base = (self.dmabuf.phys_paddr + self.start) // PAGE_SIZE
        return list(range(base + first_index, base + last_index + 1))

    def add_access(self, mm, first_index: int, last_index: int) -> list[int]:
        """iopt_area_add_access() for the pages: an access of exactly [first, last] already there
        gains a user; otherwise the range is pinned (iopt_pages_fill_xarray()) and recorded."""
        if self.type == IOPT_ADDRESS_DMABUF:  # iopt_area_add_access() (pages.c:2454)
            raise IommufdError(errno.EINVAL)
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

    # -- iopt_pages_rw_access(): IOMMU_TEST_OP_ACCESS_RW ---------------------------------------

    def rw_access(self, start_byte: int, length: int, flags: int, payload: bytes = b"",
                  current_pid: int = 0) -> bytes:
        """iopt_pages_rw_access() (pages.c:2350): copy to (IOMMUFD_ACCESS_RW_WRITE, `payload`)
        or from the pages at start_byte; returns the bytes read. `current_pid` is the caller's
        mm (current->mm). EPERM for a write to pages mapped without WRITEABLE, EINVAL for a
        dma-buf. File pages always take the slow path. User pages: a caller in another mm
        (or __IOMMUFD_ACCESS_RW_SLOW_PATH) without IOMMUFD_ACCESS_RW_KTHREAD goes through
        iopt_pages_rw_page() for one page, iopt_pages_rw_slow() for more; otherwise
        copy_to/from_user() at uptr + start_byte (kthread_use_mm() first for another mm, the
        slow path when it is gone). IOMMU_TEST_OP_ACCESS_RW cannot pass KTHREAD (EOPNOTSUPP in
        iommufd_test_access_rw()): it is here for in-kernel callers."""
        start_index = start_byte // PAGE_SIZE
        last_index = (start_byte + length - 1) // PAGE_SIZE
        offset = start_byte % PAGE_SIZE
        change_mm = current_pid != self.source_pid or bool(flags & IOMMUFD_ACCESS_RW_SLOW_PATH)
        if flags & IOMMUFD_ACCESS_RW_WRITE and not self.writable:
            raise IommufdError(errno.EPERM)
        if self.type == IOPT_ADDRESS_DMABUF:  # iopt_is_dmabuf()
            raise IommufdError(errno.EINVAL)
        if self.type != IOPT_ADDRESS_USER:
            return self.rw_slow(start_index, last_index, offset, length, flags, payload)
        if not flags & IOMMUFD_ACCESS_RW_KTHREAD and change_mm:
            if start_index == last_index:
                return self.rw_page(start_index, offset, length, flags, payload)
            return self.rw_slow(start_index, last_index, offset, length, flags, payload)
        if change_mm and not mm_alive(self.source_pid):  # mmget_not_zero() (pages.c:2388)
            return self.rw_slow(start_index, last_index, offset, length, flags, payload)
        return _copy_user(UserMemory(self.source_pid), self.uptr + start_byte, length, flags, payload)

    def rw_page(self, index: int, offset: int, length: int, flags: int, payload: bytes) -> bytes:
        """iopt_pages_rw_page() (pages.c:2299): the slow path once the source mm is gone
        (mmget_not_zero()), the selftest's fault point (EINVAL), then pin_user_pages_remote()
        of the one page (FOLL_WRITE for a write) and copy_data_page(): process_vm_readv/writev
        pin the page the same way (EFAULT unmapped, PROT_NONE, or a write to a read-only
        mapping). Whether the mm is there is asked first only where a fault point could tell
        (fault_inject.active()); otherwise a failed copy asks."""
        watched = fault_inject.active()
        if watched and not mm_alive(self.source_pid):
            return self.rw_slow(index, index, offset, length, flags, payload)
        if fault_inject.should_fail("iopt_pages_rw_page: iommufd_should_fail"):  # pages.c:2314
            raise IommufdError(errno.EINVAL)
        try:
            return _copy_user(UserMemory(self.source_pid), self.uptr + index * PAGE_SIZE + offset, length, flags,
                              payload)
        except IommufdError:
            if not watched and not mm_alive(self.source_pid):
                return self.rw_slow(index, index, offset, length, flags, payload)
            raise

    def rw_slow(self, start_index: int, last_index: int, offset: int, length: int, flags: int,
                payload: bytes) -> bytes:
        """iopt_pages_rw_slow() (pages.c:2258): a pfn_reader over [start, last], as a domain
        would see the pages. pfn_reader_init() sets up its batch (batch_init(), a fault point);
        pfn_reader_fill_span() takes a page a domain or an access holds from there
        (batch_from_domain(), batch_from_xarray()) and pins a hole from the source
        (pfn_reader_user_pin(), pages.c:876: its buffer at the first hole, EFAULT for an mm
        that is gone (mmget_not_zero()), the selftest's fault point, then get_user_pages()
        with FOLL_WRITE when the pages are writable, even for a read: EFAULT; or a file's
        memfd_pin_folios(): EINVAL); batch_rw() copies and pfn_reader_unpin() drops the holes'
        pins again (npinned goes up and back, nothing is charged). The model's batch is the
        whole range, so a hole that fails to pin fails the call before any byte is copied; the
        kernel's batch holds TEMP_MEMORY_LIMIT / 12 runs of frames (IOMMU_TEST_OP_SET_TEMP_
        MEMORY_LIMIT shrinks it), and a write longer than that copies its first batches before
        a later hole fails: not modelled.

        The bytes: a file's through the file (the page cache pages memfd_pin_folios() pins);
        user pages through the source mm where it maps them, and through the pinned frames'
        files once it does not (gone, or unmapped since: model/memory.py, frame_file()). A
        frame of private anonymous memory the mm no longer maps cannot be read or written by
        the model (PhysicalMemory.frame_file() says why): NotModelled. (An mm that maps other
        memory at the pinned VA since is read there: the model does not compare the frames.)"""
        temp_kmalloc("__batch_init")  # pfn_reader_first() -> batch_init() (pages.c:344)
        pfns = self.pfns
        holes: list[list[int]] = []
        for i in range(start_index, last_index + 1):
            if i not in pfns:  # neither domains_itree nor access_itree holds it
                if holes and holes[-1][1] == i - 1:
                    holes[-1][1] = i
                else:
                    holes.append([i, i])
        is_file = self.type == IOPT_ADDRESS_FILE
        for n, (first, last) in enumerate(holes):  # pfn_reader_user_pin() per hole
            if n == 0:
                self._user_pin_buffer()
                # mmget_not_zero() (pages.c:914): where no fault point can tell, the pin check
                # below finds a process that is gone just as well (it has no VMA)
                if not is_file and fault_inject.active() and not mm_alive(self.source_pid):
                    raise IommufdError(errno.EFAULT)
            if fault_inject.should_fail("pfn_reader_user_pin: iommufd_should_fail"):  # pages.c:924
                raise IommufdError(errno.EFAULT)
            if is_file:
                self._check_memfd_pin(last)
                continue
            err = check_pin_range(self.source_pid, self.uptr + first * PAGE_SIZE, self.uptr + (last + 1) * PAGE_SIZE,
                                  self.writable)
            if err:
                raise IommufdError(err)
        if is_file:  # batch_rw() -> copy_data_page() of the file's pages
            pos = self.start + start_index * PAGE_SIZE + offset
            if flags & IOMMUFD_ACCESS_RW_WRITE:
                self.filp.write(pos, payload)
                return b""
            return self.filp.read(pos, length)
        try:
            return _copy_user(UserMemory(self.source_pid), self.uptr + start_index * PAGE_SIZE + offset, length,
                              flags, payload)
        except IommufdError:
            if holes:
                raise
        # every page is held (by a domain or an access), and the mm is gone or no longer maps
        # them where it did: the pinned frames themselves
        return self._rw_frames(start_index, last_index, offset, length, flags, payload)

    def _rw_frames(self, start_index: int, last_index: int, offset: int, length: int, flags: int,
                   payload: bytes) -> bytes:
        """batch_rw() over pinned frames whose mm is gone, through the files they keep open."""
        memory = self.accounts.memory
        out, done = [], 0
        for i in range(start_index, last_index + 1):
            lo = offset if i == start_index else 0
            n = min(PAGE_SIZE - lo, length - done)
            where = memory.frame_file(self.keys[i])
            if where is None:
                raise NotModelled("IOMMU_TEST_OP_ACCESS_RW of pinned private anonymous memory of a process that "
                                  "has exited")
            f, base = where
            if flags & IOMMUFD_ACCESS_RW_WRITE:
                f.write(base + lo, payload[done:done + n])
            else:
                out.append(f.read(base + lo, n))
            done += n
        return b"".join(out)


def _copy_user(mm: UserMemory, addr: int, length: int, flags: int, payload: bytes) -> bytes:
    """copy_to_user() / copy_from_user() of the source mm: EFAULT where memory is missing."""
    try:
        if flags & IOMMUFD_ACCESS_RW_WRITE:
            mm.write(addr, payload)
            return b""
        return mm.read(addr, length)
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


class FileRef(BackingFile):
    """get_file() of a caller's descriptor: an open file description of the same file, held
    while the pages live (closed when they are freed), so its size and kind can be read at pin
    time and IOMMU_TEST_OP_ACCESS_RW can copy its bytes (model/memory.py: BackingFile)."""

    def __init__(self, pid: int, fd: int, key: tuple[int, int]):
        self.key = key
        super().__init__(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC) if pid != os.getpid()
                         else os.dup(fd))

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            self.close()


def iopt_alloc_file_pages(ictx, task: Task, file: FileRef, start_byte: int, start: int, length: int,
                          writable: bool) -> IoptPages:
    """iopt_alloc_file_pages(): no check of the file here; pin_memfd_pages() runs at fill time."""
    pages = iopt_alloc_pages(ictx, task, start_byte, length, writable)
    pages.file = file.key
    pages.filp = file
    pages.start = start - start_byte
    pages.type = IOPT_ADDRESS_FILE
    return pages


# -- dma-bufs (IOPT_ADDRESS_DMABUF) --------------------------------------------------------------


class DmabufPages:
    """pages->dmabuf: the attachment, the exporter's phys_vec (len 0 once revoked), the start
    offset in the buffer, and the tracker: every (area, domain) the pages are mapped into
    (struct iopt_pages_dmabuf_track), which a revoke unmaps."""

    __slots__ = ("attach", "phys_paddr", "phys_len", "tracker")

    def __init__(self):
        self.attach = None
        self.phys_paddr = 0
        self.phys_len = 0
        self.tracker: list[tuple] = []


class _RevokeOps:
    """iopt_dmabuf_attach_revoke_ops (pages.c:1453)."""

    allow_peer2peer = True

    @staticmethod
    def invalidate_mappings(attach) -> None:
        iopt_revoke_notify(attach)


IOPT_DMABUF_ATTACH_REVOKE_OPS = _RevokeOps()


def iopt_revoke_notify(attach) -> None:
    """iopt_revoke_notify() (pages.c:1434): unless revoked already, every tracked (area,
    domain) is unmapped (iopt_area_unmap_domain_range() of the whole area) and phys.len becomes
    0: for good, whatever the exporter says later (a new MAP_FILE makes new pages)."""
    pages = attach.importer_priv
    if pages.revoked:
        return
    for area, domain in pages.dmabuf.tracker:
        domain.unmap(area.start, area.last - area.start + 1)
    pages.dmabuf.phys_len = 0


def iopt_map_dmabuf(pages: IoptPages, dmabuf, iommufd_map) -> None:
    """iopt_map_dmabuf() (pages.c:1484): attach (importer: the revoke ops), dma_buf_pin(),
    then the exporter's phys_vec through sym_vfio_pci_dma_buf_iommufd_map() (pages.c:1463):
    the mock's iommufd_test_dma_buf_iommufd_map() (`iommufd_map`, model/hooks.py: ENODEV while
    revoked), else vfio-pci's (a dma-buf of neither is EOPNOTSUPP). Undone on failure."""
    if isinstance(dmabuf, ForeignDmaBuf):  # its exporter's attach / pin are not the model's
        raise NotModelled("IOMMU_IOAS_MAP_FILE of a dma-buf of another exporter")
    attach = dma_buf_dynamic_attach(dmabuf, IOPT_DMABUF_ATTACH_REVOKE_OPS, pages)
    rc = dma_buf_pin(attach)
    if not rc:
        # the mock's answer unless it is EOPNOTSUPP; vfio-pci's would be next (another exporter's
        # dma-buf: EOPNOTSUPP too, as without CONFIG_VFIO_PCI_DMABUF)
        rc, (paddr, length) = iommufd_map(attach)
        if not rc:
            pages.dmabuf.phys_paddr, pages.dmabuf.phys_len = paddr, length
            pages.dmabuf.attach = attach  # iopt_release_pages() detaches and puts it
            return
        dma_buf_unpin(attach)
    dma_buf_detach(dmabuf, attach)
    raise IommufdError(-rc)


MAX_NPFNS = (1 << 32) - 1  # type_max(u32): struct pfn_batch npfns (pages.c:284)


def iopt_alloc_dmabuf_pages(ictx, task: Task, dmabuf, start_byte: int, start: int, length: int,
                            writable: bool, iommufd_map) -> IoptPages:
    """iopt_alloc_dmabuf_pages() (pages.c:1527): EINVAL past the buffer's end (size <= start +
    length - 1), then iopt_alloc_pages(); no accounting (ACCOUNT_NONE), then iopt_map_dmabuf().
    On failure the pages are put (the caller puts the dma-buf)."""
    if dmabuf.size <= start + length - 1 or length // PAGE_SIZE >= MAX_NPFNS:
        raise IommufdError(errno.EINVAL)
    pages = iopt_alloc_pages(ictx, task, start_byte, length, writable)
    pages.account_mode = IOPT_PAGES_ACCOUNT_NONE
    pages.type = IOPT_ADDRESS_DMABUF
    pages.start = start - start_byte  # pages->dmabuf.start
    pages.dmabuf = DmabufPages()
    try:
        iopt_map_dmabuf(pages, dmabuf, iommufd_map)
    except BaseException:
        iopt_put_pages(pages)
        raise
    return pages


def iopt_dmabuf_track_domain(pages: IoptPages, area, domain) -> None:
    """iopt_dmabuf_track_domain() (pages.c:1571): kzalloc, on the tracker."""
    fault_inject.kmalloc("iopt_dmabuf_track_domain: kzalloc_obj")  # pages.c:1584
    pages.dmabuf.tracker.append((area, domain))


def iopt_dmabuf_untrack_domain(pages: IoptPages, area, domain) -> None:
    """iopt_dmabuf_untrack_domain() (pages.c:1594)."""
    tracker = pages.dmabuf.tracker
    for i, (a, d) in enumerate(tracker):
        if a is area and d is domain:
            del tracker[i]
            return


def iopt_dmabuf_track_all_domains(area, pages: IoptPages, domains) -> None:
    """iopt_dmabuf_track_all_domains() (pages.c:1613): one track per domain, all undone on a
    failure."""
    try:
        for domain in domains:
            iopt_dmabuf_track_domain(pages, area, domain)
    except BaseException:
        iopt_dmabuf_untrack_all_domains(area, pages)
        raise


def iopt_dmabuf_untrack_all_domains(area, pages: IoptPages) -> None:
    """iopt_dmabuf_untrack_all_domains() (pages.c:1636)."""
    pages.dmabuf.tracker = [(a, d) for a, d in pages.dmabuf.tracker if a is not area]


def iopt_put_pages(pages: IoptPages) -> None:
    """iopt_put_pages(): kref_put(); the last one runs iopt_release_pages() (pages.c:1651),
    which for a dma-buf unpins, detaches and puts it."""
    pages.refs -= 1
    if pages.refs or pages.dmabuf is None or pages.dmabuf.attach is None:
        return
    attach, pages.dmabuf.attach = pages.dmabuf.attach, None
    dma_buf_unpin(attach)
    dma_buf_detach(attach.dmabuf, attach)
    dma_buf_put(attach.dmabuf)
