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
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import itertools
import mmap
import os
import threading

from model.limits import HPAGE_SIZE, PAGE_SIZE

HPAGE_PAGES = HPAGE_SIZE // PAGE_SIZE


class Vma:
    """One line of /proc/PID/maps."""

    __slots__ = ("start", "end", "perms", "offset", "dev", "ino", "path")

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
        block = HPAGE_PAGES if v is not None and v.hugetlb else 1
        if v is not None and (v.shared_file or v.hugetlb) and v.ino:
            return ("file", v.dev, v.ino, (v.offset + va - v.start) // PAGE_SIZE), block
        return ("anon", pid, va // PAGE_SIZE), block


def machine_pfns(pid: int, vas: list[int]) -> list[int] | None:
    """The machine's own frame numbers of the pages at `vas` in process `pid`, from
    /proc/PID/pagemap (bit 63 present, bits 0-54 the PFN; shown only to CAP_SYS_ADMIN), or None
    when any is unknown. Where the kernel's answer depends on physical placement (a HW queue's
    pages must be contiguous), the model asks the machine rather than its own numbering."""
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


class PhysicalMemory:
    """The machine's page frames: one per pinned page (by key), with its pin count."""

    def __init__(self, first_pfn: int = 0x100000):
        self.lock = threading.Lock()
        self._next = first_pfn
        self._blocks: dict[tuple, int] = {}  # huge pages: (key minus page, block index) -> first pfn
        self.pins: dict[tuple, int] = {}  # key -> pin count (page refcount / GUP_PIN_COUNTING_BIAS)
        self.pfn: dict[tuple, int] = {}  # key -> pfn, while pinned
        self.kernel_pages: dict[int, "KernelPages"] = {}  # first pfn -> pages a driver allocated

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

    def pin(self, key: tuple, block: int = 1) -> int:
        """pin_user_pages() of one page: its frame number."""
        with self.lock:
            pfn = self.pfn.get(key)
            if pfn is None:
                pfn = self.pfn[key] = self._block_pfn(key, block)
            self.pins[key] = self.pins.get(key, 0) + 1
            return pfn

    def unpin(self, key: tuple) -> None:
        """unpin_user_page(): the frame is forgotten with its last pin."""
        with self.lock:
            n = self.pins[key] - 1
            if n:
                self.pins[key] = n
            else:
                del self.pins[key]
                del self.pfn[key]

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
