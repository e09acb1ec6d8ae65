"""Physical memory: the page frames behind user memory, and how many pins each one holds.

The model does not rely on real page frame numbers (/proc/PID/pagemap hides them without
CAP_SYS_ADMIN, and an unpinned page may move), so it names a frame by what backs it, as the
kernel's struct page does (machine_pfns() reads the real ones for the one answer that follows
physical placement, a HW queue's contiguity):
- a page of a shared file mapping (memfd, shmem, hugetlbfs): (st_dev, st_ino, page offset), so
  IOMMU_IOAS_MAP of the mapping's VA and IOMMU_IOAS_MAP_FILE of the file pin the same frame;
- any other page (anonymous, private): (mm, page-aligned VA).
A frame gets a number the first time it is pinned and keeps it while any pin holds it
(pin_user_pages() keeps the page in place). Hugetlb mappings get their frames a huge page at a
time, physically contiguous and aligned, so batch_to_domain() maps them with large IOPTEs as
the kernel does; other memory gets one frame at a time (the model cannot see THP, so a run of
small pages is never contiguous on the model: recorded in the README's limits).

What a page of an mm is comes from /proc/PID/maps (read once per call, `Vmas`): unmapped is
EFAULT for get_user_pages(), a mapping without 'w' is EFAULT for a FOLL_WRITE pin.

A pinned page outlives its mm in the kernel (fork_gone in tools/testing/selftests/iommu/
iommufd.c: a child maps, exits, and IOMMU_TEST_OP_ACCESS_RW still copies through the domain's
pages, iopt_pages_rw_slow() reading them with batch_from_domain()). The model copies through
the process's memory while it lives; for after, a frame of a shared file mapping keeps the
file open (`BackingFile`, from /proc/PID/map_files/START-END at its first pin; from the
file's own descriptor for IOMMU_IOAS_MAP_FILE) until its last pin goes, so its bytes stay
readable and writable (`PhysicalMemory.frame_file()`). A frame of private anonymous memory
has nothing to keep: see `PhysicalMemory.frame_file()`.
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import itertools
import mmap
import os
import threading
from typing import Callable

from model.libc import libc as _libc
from model.limits import HPAGE_SIZE, PAGE_SIZE

HPAGE_PAGES = HPAGE_SIZE // PAGE_SIZE


class Vma:
    """One line of /proc/PID/maps."""

    __slots__ = ("start", "end", "perms", "offset", "dev", "ino", "path", "page_size")

    def __init__(self, line: str):
        parts = line.split(None, 5)
        lo, hi = parts[0].split("-")
        self.start, self.end = int(lo, 16), int(hi, 16)
        self.perms = parts[1]
        self.offset = int(parts[2], 16)
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        self.dev = os.makedev(major, minor)
        self.ino = int(parts[4])
        self.path = parts[5].strip() if len(parts) > 5 else ""
        self.page_size = HPAGE_SIZE if self.hugetlb else PAGE_SIZE  # smaps' KernelPageSize (Vmas)

    @property
    def hugetlb(self) -> bool:
        return self.path.startswith("/anon_hugepage") or "hugepages" in self.path

    @property
    def shared_file(self) -> bool:
        return self.perms[3] == "s" and self.ino != 0


class Vmas:
    """The mappings of one mm, sorted: what get_user_pages() would find at a VA."""

    def __init__(self, pid: int):
        try:
            with open(f"/proc/{pid}/maps") as f:
                self.vmas = [Vma(line) for line in f if line.strip()]
        except OSError:
            self.vmas = []
        self.starts = [v.start for v in self.vmas]
        if any(v.hugetlb for v in self.vmas):
            self._huge_page_sizes(pid)

    def _huge_page_sizes(self, pid: int) -> None:
        """A hugetlb mapping's page size (2 MiB or 1 GiB: MAP_HUGE_1GB, a hugetlbfs mount's
        pagesize=) from /proc/PID/smaps' KernelPageSize (vma_kernel_pagesize())."""
        sizes, start = {}, None
        try:
            with open(f"/proc/{pid}/smaps") as f:
                for line in f:
                    if line[:1] in "0123456789abcdef" and "-" in line.split(None, 1)[0]:
                        start = int(line.split("-", 1)[0], 16)
                    elif line.startswith("KernelPageSize:") and start is not None:
                        sizes[start] = int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return
        for v in self.vmas:
            if v.hugetlb and sizes.get(v.start, 0) > PAGE_SIZE:
                v.page_size = sizes[v.start]

    def find(self, va: int) -> Vma | None:
        i = bisect.bisect_right(self.starts, va) - 1
        if i >= 0 and va < self.vmas[i].end:
            return self.vmas[i]
        return None

    def check_pin(self, va: int, write: bool) -> int:
        """get_user_pages() of one page: 0, or EFAULT (unmapped, PROT_NONE, FOLL_WRITE on a
        read-only mapping)."""
        v = self.find(va)
        if v is None or v.perms[0] != "r" or (write and v.perms[1] != "w"):
            return errno.EFAULT
        return 0

    def backing(self, pid: int, va: int) -> tuple[tuple, int]:
        """(the key of the page at va, frames per block): see the module docstring."""
        va &= ~(PAGE_SIZE - 1)
        v = self.find(va)
        block = v.page_size // PAGE_SIZE if v is not None and v.hugetlb else 1
        if v is not None and (v.shared_file or v.hugetlb) and v.ino:
            return ("file", v.dev, v.ino, (v.offset + va - v.start) // PAGE_SIZE), block
        return ("anon", pid, va // PAGE_SIZE), block

    def open_backing(self, pid: int, va: int) -> "BackingFile | None":
        """The file a shared mapping at va maps, opened through /proc/PID/map_files/START-END
        (proc_map_files_get_link(): CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), or None when
        that is refused or the mapping is gone."""
        v = self.find(va)
        if v is None:
            return None
        try:
            return BackingFile(os.open(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return None


# Where the machine's frames come from when not from this machine: a function (pid, vas) ->
# frames or None. `explore --target vm` compares the model with a kernel in a guest, whose own
# frames of the same user addresses decide the kernel's answer (conformance/executor).
PFN_SOURCE = None


def machine_pfns(pid: int, vas: list[int]) -> list[int] | None:
    """The machine's own frame numbers of the pages at `vas` in process `pid`, from
    /proc/PID/pagemap (bit 63 present, bits 0-54 the PFN; shown only to CAP_SYS_ADMIN), or None
    when any is unknown. Where the kernel's answer depends on physical placement (a HW queue's
    pages must be contiguous), the model asks the machine rather than its own numbering."""
    if PFN_SOURCE is not None:
        return PFN_SOURCE(pid, vas)
    try:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        return None
    try:
        out = []
        for va in vas:
            entry = int.from_bytes(os.pread(fd, 8, va // PAGE_SIZE * 8), "little")
            if not entry >> 63:  # not faulted in yet: the kernel's pin would fault it (a read
                _touch(pid, va)  # faults a shmem page in; private memory gets the zero page)
                entry = int.from_bytes(os.pread(fd, 8, va // PAGE_SIZE * 8), "little")
            pfn = entry & ((1 << 55) - 1)
            if not entry >> 63 or not pfn:
                return None
            out.append(pfn)
        return out
    except OSError:
        return None
    finally:
        os.close(fd)


def _touch(pid: int, va: int) -> None:
    from model.uaccess import UserMemory

    try:
        UserMemory(pid).read(va, 1)
    except OSError:
        pass  # unmapped: the lookup answers None


def file_key(file: tuple[int, int], pgoff: int) -> tuple:
    """The key of page `pgoff` of a file (st_dev, st_ino)."""
    return ("file", file[0], file[1], pgoff)


TMPFS_MAGIC = 0x01021994  # include/uapi/linux/magic.h
HUGETLBFS_MAGIC = 0x958458F6


class _Statfs(ctypes.Structure):  # struct statfs (x86_64), as far as f_type
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.POINTER(_Statfs)]


class _ProcmapQuery(ctypes.Structure):
    """struct procmap_query (include/uapi/linux/fs.h:582)."""
    _fields_ = [(n, ctypes.c_uint64) for n in ("size", "query_flags", "query_addr", "vma_start", "vma_end",
                                                "vma_flags", "vma_page_size", "vma_offset", "inode")] + \
               [(n, ctypes.c_uint32) for n in ("dev_major", "dev_minor", "vma_name_size", "build_id_size")] + \
               [("vma_name_addr", ctypes.c_uint64), ("build_id_addr", ctypes.c_uint64)]


# _IOWR(PROCFS_IOCTL_MAGIC, 17, struct procmap_query), Linux 6.11
PROCMAP_QUERY = (3 << 30) | (ctypes.sizeof(_ProcmapQuery) << 16) | (ord("f") << 8) | 17
PROCMAP_QUERY_VMA_READABLE = 0x01
PROCMAP_QUERY_VMA_WRITABLE = 0x02


def check_pin_range(pid: int, lo: int, hi: int, write: bool) -> int:
    """get_user_pages() of the pages in [lo, hi) of mm `pid`: 0, or EFAULT where a page is
    unmapped, not readable, or not writable for FOLL_WRITE (Vmas.check_pin() of each page).
    Asks PROCMAP_QUERY of the VMAs the range meets (about 6 us) instead of reading and parsing
    all of /proc/PID/maps (Vmas: about 250 us for a Python process's 80 mappings); reads the
    maps where the ioctl is missing (before Linux 6.11). A process that is gone (or has no mm)
    has no page."""
    try:
        fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return errno.EFAULT
    try:
        q = _ProcmapQuery(size=ctypes.sizeof(_ProcmapQuery))
        va = lo & ~(PAGE_SIZE - 1)
        while va < hi:
            q.query_flags = PROCMAP_QUERY_VMA_READABLE | (PROCMAP_QUERY_VMA_WRITABLE if write else 0)
            q.query_addr = va
            if _libc.ioctl(fd, PROCMAP_QUERY, ctypes.addressof(q)) < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOTTY, errno.EINVAL):
                    break  # no PROCMAP_QUERY here: the maps, below
                return errno.EFAULT  # ENOENT: no such VMA (ESRCH: no mm)
            va = q.vma_end
        else:
            return 0
    finally:
        os.close(fd)
    vmas = Vmas(pid)
    for va in range(lo & ~(PAGE_SIZE - 1), hi, PAGE_SIZE):
        err = vmas.check_pin(va, write)
        if err:
            return err
    return 0


class BackingFile:
    """An open file whose pages a pin holds (struct file, get_file()): what a frame's bytes are
    read from and written to once no mm maps them. `fd` is read-only; a write reopens the same
    file for writing (through /proc/self/fd, once), as the kernel's memcpy into a pinned page
    needs no write permission on any descriptor."""

    __slots__ = ("fd", "_wfd", "_shmem")

    def __init__(self, fd: int):
        self.fd = fd
        self._wfd = None
        self._shmem = None

    @property
    def shmem(self) -> bool:
        """shmem_file() || is_file_hugepages(): what memfd_pin_folios() (mm/gup.c:3461) accepts."""
        if self._shmem is None:
            st = _Statfs()
            self._shmem = (_libc.fstatfs(self.fd, ctypes.byref(st)) == 0
                           and st.f_type & 0xFFFFFFFF in (TMPFS_MAGIC, HUGETLBFS_MAGIC))
        return self._shmem

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, offset: int, n: int) -> bytes:
        """n bytes at offset. A page truncated out of the file since it was pinned reads as
        zeros here, and write() drops what falls past the end; the kernel still copies to and
        from the orphaned page it holds (a limit of the model: the page has no name left)."""
        data = os.pread(self.fd, n, offset)
        return data + bytes(n - len(data))

    def write(self, offset: int, data: bytes) -> None:
        """data at offset, never past the end of the file (pwrite would grow it; see read()).
        hugetlbfs has no write_iter (EINVAL): through a shared mapping of the huge page then."""
        n = min(len(data), max(0, self.size() - offset))
        if not n:
            return
        if self._wfd is None:
            self._wfd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.pwrite(self._wfd, data[:n], offset)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            blk = os.fstat(self._wfd).st_blksize
            lo = offset // blk * blk
            hi = -(-(offset + n) // blk) * blk
            with mmap.mmap(self._wfd, hi - lo, offset=lo) as m:
                m[offset - lo:offset - lo + n] = data[:n]

    def close(self) -> None:
        for fd in (self.fd, self._wfd):
            if fd is not None:
                os.close(fd)
        self.fd = self._wfd = None


class PhysicalMemory:
    """The machine's page frames: one per pinned page (by key), with its pin count."""

    def __init__(self, first_pfn: int = 0x100000):
        self.lock = threading.Lock()
        self._next = first_pfn
        self._blocks: dict[tuple, int] = {}  # huge pages: (key minus page, block index) -> first pfn
        self.pins: dict[tuple, int] = {}  # key -> pin count (page refcount / GUP_PIN_COUNTING_BIAS)
        self.pfn: dict[tuple, int] = {}  # key -> pfn, while pinned
        self.key_of: dict[int, tuple] = {}  # pfn -> key, while pinned (pfn_to_page())
        # key -> (pid, VA) a pin of a user page found it at: where a device's DMA reaches a
        # shared file's page when the file itself is not held (frame_rw())
        self.where: dict[tuple, tuple[int, int]] = {}
        self.kernel_pages: dict[int, "KernelPages"] = {}  # first pfn -> pages a driver allocated
        # (st_dev, st_ino) -> [the open file, how many of its pages are pinned]: the file a
        # pinned page of it is read through once no mm maps it (frame_file())
        self.files: dict[tuple[int, int], list] = {}
        self.file_pages: set[tuple] = set()  # the pinned pages counted there

    def _block_pfn(self, key: tuple, block: int) -> int:
        if block == 1:  # a small page: a free frame with a free one on each side, so that no
            self._next += 2  # run of small pages (or one beside a huge page) is ever contiguous
            return self._next - 1
        bkey = key[:-1] + (key[-1] // block, block)
        base = self._blocks.get(bkey)
        if base is None:
            base = -(-self._next // block) * block  # aligned, as a huge page is
            self._next = base + block
            self._blocks[bkey] = base
        return base + key[-1] % block

    def pin(self, key: tuple, block: int = 1, backing: Callable[[], BackingFile | None] | None = None,
            where: tuple[int, int] | None = None) -> int:
        """pin_user_pages() of one page: its frame number. A file's page pinned for the first
        time keeps the file open (`backing()` opens it, called only when no pinned page of
        that file has it open already). `where`: the (pid, VA) the page was found at."""
        with self.lock:
            pfn = self.pfn.get(key)
            if where is not None and key not in self.where:
                self.where[key] = where
            if pfn is None:
                pfn = self.pfn[key] = self._block_pfn(key, block)
                self.key_of[pfn] = key
                if backing is not None and key[0] == "file":
                    held = self.files.get(key[1:3])
                    if held is not None:
                        held[1] += 1
                        self.file_pages.add(key)
                    else:
                        f = backing()
                        if f is not None:
                            self.files[key[1:3]] = [f, 1]
                            self.file_pages.add(key)
            self.pins[key] = self.pins.get(key, 0) + 1
            return pfn

    def unpin(self, key: tuple) -> None:
        """unpin_user_page(): the frame is forgotten with its last pin (and the file it holds
        open, with the last pinned page of that file)."""
        with self.lock:
            n = self.pins[key] - 1
            if n:
                self.pins[key] = n
            else:
                del self.pins[key]
                self.key_of.pop(self.pfn.pop(key), None)
                self.where.pop(key, None)
                if key in self.file_pages:
                    self.file_pages.discard(key)
                    held = self.files[key[1:3]]
                    held[1] -= 1
                    if not held[1]:
                        del self.files[key[1:3]]
                        held[0].close()

    def frame_file(self, key: tuple) -> tuple[BackingFile, int] | None:
        """kmap_local_page() of a pinned frame: (the open file, the byte offset) its bytes are at,
        or None. A page of private anonymous memory has none: it has no name outside its mm
        (no vm_file, so no /proc/PID/map_files entry), /proc/PID/mem and process_vm_readv
        need the mm's users (mmget_not_zero()), which exit_mm() drops, and the model holds no
        real reference on the page (pin_user_pages() is kernel-only; the pins userspace can
        take, io_uring buffer registration and vmsplice, are of the caller's own mm). So
        once that process is gone the kernel's still-pinned page is out of the model's reach."""
        if key[0] != "file":
            return None
        with self.lock:
            held = self.files.get(key[1:3])
        return None if held is None else (held[0], key[3] * PAGE_SIZE)

    def frame_rw(self, pfn: int, offset: int, n: int, data: bytes | None = None) -> bytes:
        """A device's DMA into frame `pfn` (memcpy through the direct map): `data` written at
        `offset`, or n bytes read there. The frame's bytes are where its key says: a page of
        private anonymous memory in its process's mm (process_vm_readv/writev at its VA); a
        shared file's page through the file its pin holds open (frame_file()), else through the
        mapping it was pinned from; a driver's page (KernelPages) in the model's own mapping of
        it. NotModelled for a frame nothing pinned (the model has no RAM behind an unpinned
        number), and for a page of a process that is gone (frame_file() says why)."""
        from model.objects import NotModelled
        from model.uaccess import UserFault, UserMemory

        write = data is not None
        n = len(data) if write else n
        kp = kernel_pages_of(self, pfn)
        if kp is not None:
            pages, index = kp
            lo = index * PAGE_SIZE + offset
            if write:
                pages.buf[lo:lo + n] = data
                return b""
            return bytes(pages.buf[lo:lo + n])
        with self.lock:
            key = self.key_of.get(pfn)
            where = self.where.get(key) if key is not None else None
        if key is None:
            raise NotModelled(f"DMA to frame {pfn:#x}, which no pin holds (memory the model has no bytes for)")
        if key[0] == "anon":
            where = (key[1], key[2] * PAGE_SIZE)
        elif key[0] == "file":
            held = self.frame_file(key)
            if held is not None:
                f, base = held
                if write:
                    f.write(base + offset, data)
                    return b""
                return f.read(base + offset, n)
        if where is None:
            raise NotModelled(f"DMA to frame {pfn:#x} ({key[0]} page): the model has no way to its bytes")
        pid, va = where
        try:
            if write:
                UserMemory(pid).write(va + offset, data)
                return b""
            return UserMemory(pid).read(va + offset, n)
        except (UserFault, RuntimeError):
            raise NotModelled(f"DMA to frame {pfn:#x}: its page is no longer mapped where it was pinned "
                              f"(process {pid}, {va:#x}); the kernel's pinned page outlives that") from None

    def lookup(self, key: tuple) -> int:
        """get_user_pages_fast() + put_page(): the frame of a page; a page nobody pins gets a
        number no pinned page has (-1: it cannot be what a domain maps)."""
        with self.lock:
            return self.pfn.get(key, -1)

    def user_page(self, vmas: Vmas, pid: int, va: int) -> tuple[int, Vma | None, tuple | None, int]:
        """get_user_pages_fast() + put_page() of the page holding va in mm `pid`: (0 or EFAULT,
        its mapping, its key, its frame as lookup() gives it)."""
        va &= ~(PAGE_SIZE - 1)
        err = vmas.check_pin(va, False)
        if err:
            return err, None, None, -1
        key, _ = vmas.backing(pid, va)
        return 0, vmas.find(va), key, self.lookup(key)

    def pin_count(self, key: tuple) -> int:
        with self.lock:
            return self.pins.get(key, 0)

    def snapshot(self) -> tuple:
        with self.lock:
            return tuple(sorted(self.pins.items()))


_KERNEL_SERIAL = itertools.count()


class KernelPages:
    """__get_free_pages(GFP_KERNEL | __GFP_ZERO, order): 2**order zeroed, physically contiguous
    frames a driver owns (the mock vIOMMU's MMIO page). They are a memfd the model maps (`buf`,
    the kernel's virtual address) so that io_remap_pfn_range() of their frames into a user's
    mm can be a real shared mapping of the same memory (the loopback the selftest checks)."""

    def __init__(self, memory: PhysicalMemory, order: int, name: str):
        self.memory = memory
        self.npages = 1 << order
        self.size = self.npages * PAGE_SIZE
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        st = os.fstat(self.fd)
        self.file = (st.st_dev, st.st_ino)  # how /proc/PID/maps names a mapping of it
        self.buf = mmap.mmap(self.fd, self.size)
        view = ctypes.c_char.from_buffer(self.buf)
        self.va = ctypes.addressof(view)  # the model's own mapping: not a user's VMA
        del view
        self.key = ("kernel", next(_KERNEL_SERIAL))
        self.pfn = memory.pin(self.key + (0,), self.npages)
        for i in range(1, self.npages):
            memory.pin(self.key + (i,), self.npages)
        memory.kernel_pages[self.pfn] = self

    @property
    def phys(self) -> int:
        """__pa() of the first page."""
        return self.pfn * PAGE_SIZE

    def free(self) -> None:
        """free_pages(): the frames go; a user mapping of them keeps the memfd's pages alive,
        which the kernel's users counting makes unreachable (the owner outlives its mappings)."""
        if self.buf.closed:
            return
        del self.memory.kernel_pages[self.pfn]
        for i in range(self.npages):
            self.memory.unpin(self.key + (i,))
        self.buf.close()
        os.close(self.fd)


def kernel_pages_of(memory: PhysicalMemory, pfn: int) -> tuple[KernelPages, int] | None:
    """The driver pages holding frame `pfn` and its page index in them, or None."""
    for first, kp in memory.kernel_pages.items():
        if first <= pfn < first + kp.npages:
            return kp, pfn - first
    return None
