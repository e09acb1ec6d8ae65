"""Linux 7.2's mmap_prepare machinery and the pieces of mmap() around a driver's hook.

Modelled (Debian linux-source-7.2, x86-64, the test kernel's config in conformance/kernel/):
- struct vm_area_desc / struct mmap_action (include/linux/mm_types.h:814-906), stored in the
  bindings' ctypes structs; the mmap_action_*() setters (include/linux/mm.h:4296-4424);
- mmap_action_prepare() / mmap_action_complete() / mmap_action_finish() (mm/util.c:1373-1510)
  and the per-action steps in mm/memory.c (remap, I/O remap, simple I/O remap, kernel pages);
- remap_pfn_range(), io_remap_pfn_range(), vm_iomap_memory() for drivers' legacy .mmap hooks;
- the compatibility layer (compat_vma_mmap(), mm/util.c:1180-1282);
- do_mmap()'s checks and vm_flags (mm/mmap.c:336), __mmap_region() (mm/vma.c:2757), do_munmap();
- mremap(2) (do_mremap(), mm/mremap.c:2012): resize in place, expand, move (MREMAP_MAYMOVE,
  MREMAP_FIXED, MREMAP_DONTUNMAP, several VMAs at once), with VM_PFNMAP / VM_DONTEXPAND's rules;
- what a process sees: loads through a mapping (access_vm(), MMIO pages in Mm.iomem), the
  permissions of /proc/PID/maps and the VmFlags of smaps (fs/proc/task_mmu.c);
- /dev/hpet (drivers/char/hpet.c): hpet_open() and hpet_mmap_prepare(), the simple I/O remap's
  user in 7.2, over an HPET block whose register image the caller gives (Hpet).

Arithmetic is C's on a 64-bit kernel: unsigned long, phys_addr_t and pgoff_t wrap modulo 2^64
(_ul()); every integer argument is reduced that way on entry, so no integer raises. Functions
return 0 or a negative errno as the kernel does. WARN_ON_ONCE()/WARN_ON() that fire append
"function: WARN_ON_ONCE(condition)" to Mm.warnings (every time: the once-per-boot suppression is
the log's business); VM_WARN_ON_ONCE() does so only when Mm.debug_vm (CONFIG_DEBUG_VM, off in the
test kernel, where the macro compiles to nothing). Where the kernel would BUG() or read past an
array, the model appends to Mm.bugs and returns an errno so callers unwind: nothing after an
entry in Mm.bugs is the kernel's behaviour (it has oopsed).

Not modelled: merging a new VMA with its neighbours (every mmap gets a new VMA, so
mmap_action_complete() always runs); page tables (a VMA records the PFN ranges and kernel pages
put in it); PAT/L1TF refusals (pfnmap_track(), pfnmap_setup_cachemode(), pfn_modify_allowed()
succeed, the prot is left as given); vma_set_page_prot() in __mmap_complete() (the VMA keeps the
page_prot the descriptor or the map state gave it); page-table allocation failures; KSM, uprobes,
userfaultfd, mlock accounting, map_count limits, memory accounting failures, sealing.
"""
from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass, field

from model.limits import PAGE_SHIFT, PAGE_SIZE, ULONG_MAX
from model.uapi import B


def _ul(x: int) -> int:
    """Conversion to unsigned long / phys_addr_t / pgoff_t (64-bit): modulo 2^64."""
    return x & ULONG_MAX


PAGE_MASK = _ul(~(PAGE_SIZE - 1))
MAX_ERRNO = 4095  # include/linux/err.h


def PAGE_ALIGN(x: int) -> int:
    return _ul(x + PAGE_SIZE - 1) & PAGE_MASK


def offset_in_page(x: int) -> int:
    return x & ~PAGE_MASK


def IS_ERR_VALUE(x: int) -> bool:
    """include/linux/err.h: the top MAX_ERRNO values of unsigned long are errors."""
    return _ul(x) >= _ul(-MAX_ERRNO)


# Configuration of the test kernel (conformance/kernel/iommufd.config on allnoconfig).
CONFIG_DEBUG_VM = False  # not set: VM_WARN_ON_ONCE() is compiled out
TASK_SIZE = (1 << 47) - PAGE_SIZE  # arch/x86/include/asm/page_64_types.h, 4-level paging
MMAP_MIN_ADDR = 4096  # mm/Kconfig DEFAULT_MMAP_MIN_ADDR default
MMAP_BASE = 0x7F0000000000  # where the model's top-down search starts (the kernel randomises it)

# VMA flag bits: include/linux/mm.h:294-355 (enum vma_flag_bits, DECLARE_VMA_BIT); the bindings
# have mm_types.h only. vma_flags_t is one unsigned long on 64-bit, the same bits as vm_flags_t:
# VM_X = 1 << VMA_X_BIT (INIT_VM_FLAG, include/linux/mm.h:398).
VMA_READ_BIT, VMA_WRITE_BIT, VMA_EXEC_BIT, VMA_SHARED_BIT = 0, 1, 2, 3
VMA_MAYREAD_BIT, VMA_MAYWRITE_BIT, VMA_MAYEXEC_BIT, VMA_MAYSHARE_BIT = 4, 5, 6, 7
VMA_GROWSDOWN_BIT, VMA_PFNMAP_BIT, VMA_LOCKED_BIT, VMA_IO_BIT = 8, 10, 13, 14
VMA_DONTEXPAND_BIT, VMA_LOCKONFAULT_BIT, VMA_ACCOUNT_BIT, VMA_NORESERVE_BIT = 18, 19, 20, 21
VMA_HUGETLB_BIT, VMA_SYNC_BIT, VMA_WIPEONFORK_BIT, VMA_DONTDUMP_BIT = 22, 23, 25, 26
VMA_MIXEDMAP_BIT, VMA_NOHUGEPAGE_BIT, VMA_DROPPABLE_BIT = 28, 30, 40  # DROPPABLE: CONFIG_64BIT
VM_NONE = 0
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = (1 << b for b in (VMA_READ_BIT, VMA_WRITE_BIT, VMA_EXEC_BIT, VMA_SHARED_BIT))
VM_MAYREAD, VM_MAYWRITE, VM_MAYEXEC, VM_MAYSHARE = (
    1 << b for b in (VMA_MAYREAD_BIT, VMA_MAYWRITE_BIT, VMA_MAYEXEC_BIT, VMA_MAYSHARE_BIT))
VM_GROWSDOWN, VM_PFNMAP, VM_LOCKED, VM_IO = (
    1 << b for b in (VMA_GROWSDOWN_BIT, VMA_PFNMAP_BIT, VMA_LOCKED_BIT, VMA_IO_BIT))
VM_DONTEXPAND, VM_LOCKONFAULT, VM_ACCOUNT, VM_NORESERVE = (
    1 << b for b in (VMA_DONTEXPAND_BIT, VMA_LOCKONFAULT_BIT, VMA_ACCOUNT_BIT, VMA_NORESERVE_BIT))
VM_HUGETLB, VM_SYNC, VM_WIPEONFORK, VM_DONTDUMP = (
    1 << b for b in (VMA_HUGETLB_BIT, VMA_SYNC_BIT, VMA_WIPEONFORK_BIT, VMA_DONTDUMP_BIT))
VM_MIXEDMAP, VM_NOHUGEPAGE, VM_DROPPABLE = (1 << b for b in (VMA_MIXEDMAP_BIT, VMA_NOHUGEPAGE_BIT, VMA_DROPPABLE_BIT))
VM_GROWSUP = VM_NONE  # x86 has no CONFIG_STACK_GROWSUP
VMA_REMAP_FLAGS = VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP  # include/linux/mm.h:590
VMA_SPECIAL_FLAGS = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP  # include/linux/mm.h:573

# include/uapi/asm-generic/mman-common.h, mman.h, include/uapi/linux/mman.h, x86 asm/mman.h
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0x0, 0x1, 0x2, 0x4
MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE, MAP_DROPPABLE, MAP_TYPE = 0x01, 0x02, 0x03, 0x08, 0x0F
MAP_FIXED, MAP_ANONYMOUS, MAP_32BIT, MAP_ABOVE4G = 0x10, 0x20, 0x40, 0x80
MAP_GROWSDOWN, MAP_DENYWRITE, MAP_EXECUTABLE, MAP_LOCKED = 0x0100, 0x0800, 0x1000, 0x2000
MAP_NORESERVE, MAP_POPULATE, MAP_NONBLOCK, MAP_STACK = 0x4000, 0x8000, 0x010000, 0x020000
MAP_HUGETLB, MAP_SYNC, MAP_FIXED_NOREPLACE, MAP_UNINITIALIZED = 0x040000, 0x080000, 0x100000, 0x4000000
MAP_HUGE_2MB, MAP_HUGE_1GB = 21 << 26, 30 << 26  # include/uapi/asm-generic/hugetlb_encode.h
LEGACY_MAP_MASK = (MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE  # include/linux/mman.h:42
                   | MAP_EXECUTABLE | MAP_UNINITIALIZED | MAP_GROWSDOWN | MAP_LOCKED | MAP_NORESERVE
                   | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB | MAP_32BIT | MAP_ABOVE4G
                   | MAP_HUGE_2MB | MAP_HUGE_1GB)
FMODE_READ, FMODE_WRITE = 1 << 0, 1 << 1  # include/linux/fs.h:108

# x86 pte bits (arch/x86/include/asm/pgtable_types.h) and protection_map (arch/x86/mm/pgprot.c),
# with NX supported and no memory encryption (no SME/TDX, so pgprot_decrypted() is the identity).
_PAGE_PRESENT, _PAGE_RW, _PAGE_USER, _PAGE_PCD, _PAGE_ACCESSED, _PAGE_GLOBAL = 0x1, 0x2, 0x4, 0x10, 0x20, 0x100
_PAGE_NX = 1 << 63
PAGE_NONE = _PAGE_ACCESSED | _PAGE_GLOBAL
PAGE_READONLY = PAGE_COPY = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_READONLY_EXEC = PAGE_COPY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
PAGE_SHARED = PAGE_READONLY | _PAGE_RW
PAGE_SHARED_EXEC = PAGE_READONLY_EXEC | _PAGE_RW
_PROTECTION_MAP = [PAGE_NONE, PAGE_READONLY, PAGE_COPY, PAGE_COPY, PAGE_READONLY_EXEC, PAGE_READONLY_EXEC,
                   PAGE_COPY_EXEC, PAGE_COPY_EXEC, PAGE_NONE, PAGE_READONLY, PAGE_SHARED, PAGE_SHARED,
                   PAGE_READONLY_EXEC, PAGE_READONLY_EXEC, PAGE_SHARED_EXEC, PAGE_SHARED_EXEC]


def vm_get_page_prot(vm_flags: int) -> int:
    """vm_get_page_prot() (arch/x86/mm/pgprot.c:35): protection_map[] by read/write/exec/shared."""
    return _PROTECTION_MAP[vm_flags & (VM_READ | VM_WRITE | VM_EXEC | VM_SHARED)]


def pgprot_decrypted(prot: int) -> int:
    """pgprot_decrypted() (arch/x86/include/asm/pgtable.h:42): cc_mkdec() changes nothing
    without confidential computing (no SME/SEV/TDX), so the prot is unchanged."""
    return prot


def pgprot_noncached(prot: int) -> int:
    """pgprot_noncached() (arch/x86/include/asm/pgtable.h:12): add the UC- cache mode's bits,
    _PAGE_PCD (cachemode2protval(), arch/x86/mm/init.c; PAT index 2 is UC- in Linux's PAT
    layout). It ORs without clearing other cache bits, as the macro does."""
    return prot | _PAGE_PCD


def io_remap_pfn_range_pfn(pfn: int, size: int) -> int:
    """io_remap_pfn_range_pfn() (include/linux/mm.h:4571): x86 has no override, the identity."""
    return pfn


# ---------------------------------------------------------------------------------------------
# The objects: vm_operations_struct, file, mm_struct, vm_area_struct, mmap_action, vm_area_desc


@dataclass(eq=False)
class VmOps:
    """struct vm_operations_struct (include/linux/mm.h:783), the hooks the model calls:
    open(vma), close(vma), may_split(vma, addr) -> int, and
    mapped(start, end, pgoff, file, private_data_box) -> int, where private_data_box is a
    one-element list standing for `void **vm_private_data` (the hook may replace [0])."""

    open: object = None
    close: object = None
    mapped: object = None
    may_split: object = None
    mremap: object = None  # mremap(new_vma) -> int, after mremap() moved the page tables


VMA_DUMMY_VM_OPS = VmOps()  # vma_dummy_vm_ops (mm/init-mm.c:20): no hooks, but not NULL


@dataclass(eq=False)
class FileOperations:
    """The two mmap hooks of struct file_operations: mmap(file, vma) -> int (legacy) and
    mmap_prepare(desc) -> int. Exactly one should be set (can_mmap_file())."""

    mmap: object = None
    mmap_prepare: object = None


@dataclass(eq=False)
class File:
    """struct file, as far as mmap looks at it."""

    f_op: FileOperations
    f_mode: int = FMODE_READ | FMODE_WRITE
    private_data: object = None


class Mm:
    """struct mm_struct: the VMAs (sorted, disjoint) and what the kernel log would show.
    iomem: the machine's MMIO pages a remap may reach, {pfn: bytes of PAGE_SIZE} (physical
    memory is the machine's, not the mm's; the model hands it to each mm), for access_vm()."""

    def __init__(self, debug_vm: bool = CONFIG_DEBUG_VM, task_size: int = TASK_SIZE,
                 mmap_base: int = MMAP_BASE, iomem: dict | None = None):
        self.vmas: list[Vma] = []
        self.iomem: dict = {} if iomem is None else iomem
        self.warnings: list[str] = []  # WARN_ON_ONCE / WARN_ON / (debug_vm) VM_WARN_ON_ONCE
        self.bugs: list[str] = []  # BUG_ON and reads past an array: the kernel would oops
        self.debug_vm = debug_vm
        self.task_size = task_size
        self.mmap_base = mmap_base

    def warn(self, func: str, cond: str, macro: str = "WARN_ON_ONCE") -> None:
        self.warnings.append(f"{func}: {macro}({cond})")

    def vm_warn(self, func: str, cond: str) -> None:
        if self.debug_vm:
            self.warn(func, cond, "VM_WARN_ON_ONCE")

    def bug(self, func: str, cond: str) -> None:
        self.bugs.append(f"{func}: BUG_ON({cond})")

    def find_vma_intersection(self, start: int, end: int) -> Vma | None:
        return next((v for v in self.vmas if v.start < end and start < v.end), None)

    def insert(self, vma: Vma) -> None:
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.start)


@dataclass(eq=False)
class PfnmapTrackCtx:
    """struct pfnmap_track_ctx (include/linux/mm_types.h:806): the PAT reservation of a remap
    covering a whole VMA, shared by the VMA's pieces after a split."""

    pfn: int
    size: int


@dataclass(eq=False)
class Vma:
    """struct vm_area_struct. remaps: the PFN ranges put in it, (addr, pfn, size, prot) with
    size page-aligned; pages: the kernel pages inserted, {page-aligned addr: (page, prot)}."""

    mm: Mm = field(repr=False)
    start: int
    end: int
    pgoff: int = 0
    flags: int = 0
    page_prot: int = 0
    vm_ops: object = VMA_DUMMY_VM_OPS  # vma_init() installs vma_dummy_vm_ops; None = anonymous
    private_data: object = None
    file: object = None
    pfnmap_track_ctx: PfnmapTrackCtx | None = None
    remaps: list = field(default_factory=list)
    pages: dict = field(default_factory=dict)
    rmap_hidden: bool = False  # linked with the i_mmap lock held (hide_from_rmap_until_complete)


def _hook(ops, name):
    return getattr(ops, name, None) if ops is not None else None


def vma_is_anonymous(vma: Vma) -> bool:
    """vma_is_anonymous() (include/linux/mm.h): no vm_ops at all."""
    return vma.vm_ops is None


class MmapAction:
    """struct mmap_action: the bindings' ctypes storage (`raw`, its union members remap,
    simple_ioremap, map_kernel alias as in C) plus `pages`, the Python list the
    map_kernel.pages pointer stands for. Other attributes read and write `raw`."""

    def __init__(self, raw=None):
        object.__setattr__(self, "raw", B.mmap_action() if raw is None else raw)
        object.__setattr__(self, "pages", None)

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __setattr__(self, name, value):
        if name in ("raw", "pages"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)


def _desc_field(name):
    return property(lambda self: getattr(self.raw, name), lambda self, v: setattr(self.raw, name, _ul(v)))


class VmAreaDesc:
    """struct vm_area_desc: the bindings' ctypes struct (`raw`) holds the integers (start, end,
    pgoff, vma_flags, page_prot, action); the pointer members are Python objects kept beside it
    (mm, file, vm_file, vm_ops, private_data; the ctypes pointer fields stay 0)."""

    start = _desc_field("start")
    end = _desc_field("end")
    pgoff = _desc_field("pgoff")

    def __init__(self, mm: Mm | None = None, file=None, *, start=0, end=0, pgoff=0, vm_file=None,
                 vma_flags=0, page_prot=0, vm_ops=None, private_data=None):
        self.raw = B.vm_area_desc()
        self.mm = Mm() if mm is None else mm
        self.file, self.vm_file, self.vm_ops, self.private_data = file, vm_file, vm_ops, private_data
        self.start, self.end, self.pgoff = start, end, pgoff
        self.vma_flags, self.page_prot = vma_flags, page_prot
        self.action = MmapAction(self.raw.action)

    @property
    def vma_flags(self) -> int:
        return getattr(self.raw.vma_flags, "__vma_flags")[0]

    @vma_flags.setter
    def vma_flags(self, v: int) -> None:
        getattr(self.raw.vma_flags, "__vma_flags")[0] = _ul(v)

    @property
    def page_prot(self) -> int:
        return self.raw.page_prot.pgprot

    @page_prot.setter
    def page_prot(self, v: int) -> None:
        self.raw.page_prot.pgprot = _ul(v)


# ---------------------------------------------------------------------------------------------
# include/linux/mm.h helpers


def vma_desc_size(desc: VmAreaDesc) -> int:
    """vma_desc_size() (include/linux/mm.h:4286)."""
    return _ul(desc.end - desc.start)


def vma_desc_pages(desc: VmAreaDesc) -> int:
    """vma_desc_pages() (include/linux/mm.h:4291)."""
    return vma_desc_size(desc) >> PAGE_SHIFT


def vma_pages(vma: Vma) -> int:
    """vma_pages() (include/linux/mm.h:4276)."""
    return _ul(vma.end - vma.start) >> PAGE_SHIFT


def range_is_subset(outer_start: int, outer_end: int, inner_start: int, inner_end: int) -> bool:
    """range_is_subset() (include/linux/mm.h:4452)."""
    return outer_start <= inner_start and inner_end <= outer_end


def range_in_vma_desc(desc: VmAreaDesc | None, start: int, end: int) -> bool:
    """range_in_vma_desc() (include/linux/mm.h:4488)."""
    return desc is not None and range_is_subset(desc.start, desc.end, _ul(start), _ul(end))


def is_cow_mapping(flags: int) -> bool:
    """is_cow_mapping() (include/linux/mm.h:2238): may become writable, yet private."""
    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


def vma_desc_is_cow_mapping(desc: VmAreaDesc) -> bool:
    """vma_desc_is_cow_mapping() (include/linux/mm.h:2243)."""
    return is_cow_mapping(desc.vma_flags)


def mmap_action_remap(desc: VmAreaDesc, start: int, start_pfn: int, size: int) -> None:
    """mmap_action_remap() (include/linux/mm.h:4305): WARNs (but goes on) when
    [start, start + size) leaves the VMA; the end is computed modulo 2^64, so a size that wraps
    round does not WARN. The pgprot is the descriptor's at the time of the call."""
    start, start_pfn, size = _ul(start), _ul(start_pfn), _ul(size)
    if start < desc.start or start >= desc.end:
        desc.mm.warn("mmap_action_remap", "start < desc->start || start >= desc->end")
    if _ul(start + size) > desc.end:
        desc.mm.warn("mmap_action_remap", "start + size > desc->end")
    action = desc.action
    action.type = B.MMAP_REMAP_PFN
    action.remap.start, action.remap.start_pfn, action.remap.size = start, start_pfn, size
    action.remap.pgprot.pgprot = desc.page_prot


def mmap_action_remap_full(desc: VmAreaDesc, start_pfn: int) -> None:
    """mmap_action_remap_full() (include/linux/mm.h:4329)."""
    mmap_action_remap(desc, desc.start, start_pfn, vma_desc_size(desc))


def mmap_action_ioremap(desc: VmAreaDesc, start: int, start_pfn: int, size: int) -> None:
    """mmap_action_ioremap() (include/linux/mm.h:4344)."""
    mmap_action_remap(desc, start, start_pfn, size)
    desc.action.type = B.MMAP_IO_REMAP_PFN


def mmap_action_ioremap_full(desc: VmAreaDesc, start_pfn: int) -> None:
    """mmap_action_ioremap_full() (include/linux/mm.h:4359)."""
    mmap_action_ioremap(desc, desc.start, start_pfn, vma_desc_size(desc))


def mmap_action_simple_ioremap(desc: VmAreaDesc, start_phys_addr: int, size: int) -> None:
    """mmap_action_simple_ioremap() (include/linux/mm.h:4376): no check here, all in
    simple_ioremap_prepare(). The fields alias remap.start / remap.start_pfn in the union."""
    action = desc.action
    action.simple_ioremap.start_phys_addr = _ul(start_phys_addr)
    action.simple_ioremap.size = _ul(size)
    action.type = B.MMAP_SIMPLE_IO_REMAP


def mmap_action_map_kernel_pages(desc: VmAreaDesc, start: int, pages: list | None, nr_pages: int) -> None:
    """mmap_action_map_kernel_pages() (include/linux/mm.h:4396): no check here, no WARN.
    map_kernel.pgoff is recorded but nothing in 7.2 reads it."""
    action = desc.action
    action.type = B.MMAP_MAP_KERNEL_PAGES
    action.map_kernel.start = _ul(start)
    action.pages = pages
    action.map_kernel.pages = 0 if pages is None else id(pages)  # only NULL-ness means anything
    action.map_kernel.nr_pages = _ul(nr_pages)
    action.map_kernel.pgoff = desc.pgoff


def mmap_action_map_kernel_pages_full(desc: VmAreaDesc, pages: list | None) -> None:
    """mmap_action_map_kernel_pages_full() (include/linux/mm.h:4419)."""
    mmap_action_map_kernel_pages(desc, desc.start, pages, vma_desc_pages(desc))


# ---------------------------------------------------------------------------------------------
# mm/memory.c: the per-action prepare and complete steps, remap_pfn_range() and friends


def get_remap_pgoff(is_cow: bool, addr: int, end: int, vm_start: int, vm_end: int,
                    pfn: int) -> tuple[int, int | None]:
    """get_remap_pgoff() (mm/memory.c:3005): (err, the pgoff to write or None). A COW mapping
    must be remapped whole, and its pgoff becomes the pfn (vm_normal_page() matches on it)."""
    if is_cow:
        if addr != vm_start or end != vm_end:
            return -errno.EINVAL, None
        return 0, _ul(pfn)
    return 0, None


def remap_pfn_range_prepare(desc: VmAreaDesc) -> int:
    """remap_pfn_range_prepare() (mm/memory.c:3153): [start, start + size) (modulo 2^64) must
    lie in the descriptor (-EFAULT); the COW rule of get_remap_pgoff(); then VMA_REMAP_FLAGS.
    The start's alignment is not checked here, only at complete (a WARN)."""
    remap = desc.action.remap
    start, pfn = remap.start, remap.start_pfn
    end = _ul(start + remap.size)
    is_cow = vma_desc_is_cow_mapping(desc)
    if not range_in_vma_desc(desc, start, end):
        return -errno.EFAULT
    err, pgoff = get_remap_pgoff(is_cow, start, end, desc.start, desc.end, pfn)
    if err:
        return err
    if pgoff is not None:
        desc.pgoff = pgoff
    desc.vma_flags |= VMA_REMAP_FLAGS
    return 0


def io_remap_pfn_range_prepare(desc: VmAreaDesc) -> int:
    """io_remap_pfn_range_prepare() (mm/internal.h:1863): adjust pfn and prot as
    io_remap_pfn_range() does (identities on x86 without CoCo), prepare as a plain remap and
    turn the action into MMAP_REMAP_PFN, which complete knows."""
    remap = desc.action.remap
    remap.start_pfn = io_remap_pfn_range_pfn(remap.start_pfn, remap.size)
    remap.pgprot.pgprot = pgprot_decrypted(remap.pgprot.pgprot)
    err = remap_pfn_range_prepare(desc)
    if err:
        return err
    desc.action.type = B.MMAP_REMAP_PFN
    return 0


def __simple_ioremap_prep(vm_len: int, vm_pgoff: int, start_phys: int, size: int) -> tuple[int, int | None]:
    """__simple_ioremap_prep() (mm/memory.c:3227): (0, first pfn to map) or (-EINVAL, None).
    The physical range must not wrap; a sub-page start is folded into the size; the mapping
    starts vm_pgoff pages into the range and must fit in what is left."""
    vm_len, vm_pgoff, start_phys, size = _ul(vm_len), _ul(vm_pgoff), _ul(start_phys), _ul(size)
    if _ul(start_phys + size) < start_phys:
        return -errno.EINVAL, None
    size = _ul(size + (start_phys & ~PAGE_MASK))
    pfn = start_phys >> PAGE_SHIFT
    pages = _ul(size + ~PAGE_MASK) >> PAGE_SHIFT
    if _ul(pfn + pages) < pfn:  # both are below 2^52: cannot happen on 64-bit
        return -errno.EINVAL, None
    if vm_pgoff > pages:
        return -errno.EINVAL, None
    pfn = _ul(pfn + vm_pgoff)
    pages -= vm_pgoff
    if (vm_len >> PAGE_SHIFT) > pages:
        return -errno.EINVAL, None
    return 0, pfn


def simple_ioremap_prepare(desc: VmAreaDesc) -> int:
    """simple_ioremap_prepare() (mm/memory.c:3261): check the physical range against the
    descriptor, then delegate: an I/O remap of the whole descriptor from the computed pfn,
    prepared (and so turned into MMAP_REMAP_PFN) by io_remap_pfn_range_prepare()."""
    action = desc.action
    start, size = action.simple_ioremap.start_phys_addr, action.simple_ioremap.size
    err, pfn = __simple_ioremap_prep(vma_desc_size(desc), desc.pgoff, start, size)
    if err:
        return err
    mmap_action_ioremap_full(desc, pfn)
    return io_remap_pfn_range_prepare(desc)


def map_kernel_pages_prepare(desc: VmAreaDesc) -> int:
    """map_kernel_pages_prepare() (mm/memory.c:2519): VMA_MIXEDMAP is set first (even if the
    range check then fails); [start, start + PAGE_SIZE * nr_pages) is computed modulo 2^64 and
    must lie in the descriptor (-EFAULT). The start's alignment is not checked."""
    action = desc.action
    addr = action.map_kernel.start
    if not desc.vma_flags & VM_MIXEDMAP:
        # VM_WARN_ON_ONCE(mmap_read_trylock(desc->mm)): mmap_lock is write-held on every path
        # here, so the trylock fails and that one never fires.
        if desc.vma_flags & VM_PFNMAP:
            desc.mm.vm_warn("map_kernel_pages_prepare", "vma_desc_test(desc, VMA_PFNMAP_BIT)")
        desc.vma_flags |= VM_MIXEDMAP
    end = _ul(addr + _ul(PAGE_SIZE * action.map_kernel.nr_pages))
    if not range_in_vma_desc(desc, addr, end):
        return -errno.EFAULT
    return 0


def _pte_present(vma: Vma, start: int, end: int) -> bool:
    return (any(a < end and start < a + s for a, _, s, _ in vma.remaps)
            or any(start <= a < end for a in vma.pages))


def zap_vma_range(vma: Vma, start: int, size: int) -> None:
    """zap_vma_range(): clear what was put in [start, start + size)."""
    _take_ptes(vma, start, _ul(start + size))


def _take_ptes(vma: Vma, lo: int, hi: int) -> tuple[list, dict]:
    """Remove and return the PFN ranges and pages of vma inside [lo, hi)."""
    kept, taken = [], []
    for addr, pfn, size, prot in vma.remaps:
        end = addr + size
        for a, b, dst in ((addr, min(end, lo), kept), (max(addr, lo), min(end, hi), taken),
                          (max(addr, hi), end, kept)):
            if a < b:
                dst.append((a, _ul(pfn + ((a - addr) >> PAGE_SHIFT)), b - a, prot))
    vma.remaps = kept
    pages = {a: p for a, p in vma.pages.items() if lo <= a < hi}
    vma.pages = {a: p for a, p in vma.pages.items() if not lo <= a < hi}
    return taken, pages


def remap_pfn_range_internal(vma: Vma, addr: int, pfn: int, size: int, prot: int) -> int:
    """remap_pfn_range_internal() (mm/memory.c:3024): addr must be page-aligned (WARN,
    -EINVAL); BUG_ON(addr >= end), i.e. a size that page-aligns to 0 or wraps; remap_pte_range()
    BUGs on a pte already present. The range is not checked against the VMA."""
    end = _ul(addr + PAGE_ALIGN(size))
    if offset_in_page(addr):
        vma.mm.warn("remap_pfn_range_internal", "!PAGE_ALIGNED(addr)")
        return -errno.EINVAL
    if vma.flags & VMA_REMAP_FLAGS != VMA_REMAP_FLAGS:
        vma.mm.vm_warn("remap_pfn_range_internal", "!vma_test_all_mask(vma, VMA_REMAP_FLAGS)")
    if addr >= end:
        vma.mm.bug("remap_pfn_range_internal", "addr >= end")
        return -errno.EINVAL
    if _pte_present(vma, addr, end):
        vma.mm.bug("remap_pte_range", "!pte_none(ptep_get(pte))")
        return -errno.EINVAL
    vma.remaps.append((addr, pfn, end - addr, prot))
    return 0


def remap_pfn_range_notrack(vma: Vma, addr: int, pfn: int, size: int, prot: int) -> int:
    """remap_pfn_range_notrack() (mm/memory.c:3057): a failed remap is zapped at once."""
    err = remap_pfn_range_internal(vma, addr, pfn, size, prot)
    if err:
        zap_vma_range(vma, addr, size)
    return err


def do_remap_pfn_range(vma: Vma, addr: int, pfn: int, size: int, prot: int) -> int:
    """do_remap_pfn_range() = remap_pfn_range_track() (mm/memory.c:3103, x86 has
    __HAVE_PFNMAP_TRACKING): a remap of the whole VMA takes a PAT reservation, and a VMA can
    hold only one (-EINVAL); pfnmap_track()/pfnmap_setup_cachemode() are taken to succeed."""
    addr, pfn, size, prot = _ul(addr), _ul(pfn), _ul(size), _ul(prot)
    size = PAGE_ALIGN(size)
    ctx = None
    if addr == vma.start and _ul(addr + size) == vma.end:
        if vma.pfnmap_track_ctx is not None:
            return -errno.EINVAL
        ctx = PfnmapTrackCtx(pfn, size)
    err = remap_pfn_range_notrack(vma, addr, pfn, size, prot)
    if ctx is not None and not err:
        vma.pfnmap_track_ctx = ctx
    return err


def remap_pfn_range_prepare_vma(vma: Vma, addr: int, pfn: int, size: int) -> int:
    """remap_pfn_range_prepare_vma() (mm/memory.c:3174): the COW rule on the VMA itself."""
    end = _ul(addr + PAGE_ALIGN(size))
    err, pgoff = get_remap_pgoff(is_cow_mapping(vma.flags), addr, end, vma.start, vma.end, pfn)
    if err:
        return err
    if pgoff is not None:
        vma.pgoff = pgoff
    vma.flags |= VMA_REMAP_FLAGS
    return 0


def remap_pfn_range(vma: Vma, addr: int, pfn: int, size: int, prot: int) -> int:
    """remap_pfn_range() (mm/memory.c:3203), for legacy .mmap hooks."""
    addr, pfn, size, prot = _ul(addr), _ul(pfn), _ul(size), _ul(prot)
    err = remap_pfn_range_prepare_vma(vma, addr, pfn, size)
    if err:
        return err
    return do_remap_pfn_range(vma, addr, pfn, size, prot)


def io_remap_pfn_range(vma: Vma, addr: int, orig_pfn: int, size: int, orig_prot: int) -> int:
    """io_remap_pfn_range() (include/linux/mm.h:4578): on x86 without CoCo, remap_pfn_range()."""
    pfn = io_remap_pfn_range_pfn(_ul(orig_pfn), _ul(size))
    return remap_pfn_range(vma, addr, pfn, size, pgprot_decrypted(_ul(orig_prot)))


def vm_iomap_memory(vma: Vma, start: int, length: int) -> int:
    """vm_iomap_memory() (mm/memory.c:3294): __simple_ioremap_prep() on the VMA, then an I/O
    remap of the whole VMA with its page_prot."""
    vm_len = _ul(vma.end - vma.start)
    err, pfn = __simple_ioremap_prep(vm_len, vma.pgoff, start, length)
    if err:
        return err
    return io_remap_pfn_range(vma, vma.start, pfn, vm_len, vma.page_prot)


def remap_pfn_range_complete(vma: Vma, action: MmapAction) -> int:
    """remap_pfn_range_complete() (mm/memory.c:3216): the remap prepared in the descriptor,
    with the pgprot the action recorded (not the VMA's)."""
    remap = action.remap
    return do_remap_pfn_range(vma, remap.start, remap.start_pfn, remap.size, remap.pgprot.pgprot)


def insert_pages(vma: Vma, addr: int, pages: list | None, num: int, prot: int) -> int:
    """insert_pages() (mm/memory.c:2428) with validate_page_before_insert() and
    insert_page_into_pte_locked(): one page per PAGE_SIZE from addr (the pte of the page
    holding addr: alignment is not checked). A page whose `refcount` attribute is 0, or that is
    `anon`, is -EINVAL; a pte already present is -EBUSY; pages inserted before an error stay.
    The VMA's bounds are not checked. Reading pages[] past its end (or a NULL array) is a bug."""
    for i in range(num):
        if pages is None or i >= len(pages):
            vma.mm.bugs.append(f"insert_pages: pages[{i}] read past the array of {0 if pages is None else len(pages)}")
            return -errno.EFAULT
        page = pages[i]
        if getattr(page, "refcount", 1) == 0 or getattr(page, "anon", False):
            return -errno.EINVAL
        pte = _ul(addr + i * PAGE_SIZE) & PAGE_MASK
        if _pte_present(vma, pte, pte + PAGE_SIZE):
            return -errno.EBUSY
        vma.pages[pte] = (page, prot)
    return 0


def map_kernel_pages_complete(vma: Vma, action: MmapAction) -> int:
    """map_kernel_pages_complete() (mm/memory.c:2540): insert the pages with the VMA's
    page_prot; map_kernel.pgoff is not used."""
    mk = action.map_kernel
    return insert_pages(vma, mk.start, action.pages, mk.nr_pages, vma.page_prot)


# ---------------------------------------------------------------------------------------------
# mm/util.c: the action's prepare, complete and finish


def call_vma_mapped(vma: Vma) -> int:
    """call_vma_mapped() (mm/util.c:1373): the vm_ops->mapped hook, which may replace
    vm_private_data; any non-zero return is an error (even a positive one)."""
    mapped = _hook(vma.vm_ops, "mapped")
    if mapped is None:
        return 0
    box = [vma.private_data]
    err = mapped(vma.start, vma.end, vma.pgoff, vma.file, box)
    if err:
        return err
    if box[0] is not vma.private_data:
        vma.private_data = box[0]
    return 0


def maybe_rmap_unlock_action(vma: Vma, action: MmapAction) -> None:
    """maybe_rmap_unlock_action() (mm/internal.h:1888): drop the i_mmap lock taken when the
    VMA was linked hidden from rmap."""
    if not action.hide_from_rmap_until_complete:
        return
    if vma_is_anonymous(vma):
        vma.mm.vm_warn("maybe_rmap_unlock_action", "vma_is_anonymous(vma)")
    vma.rmap_hidden = False
    action.hide_from_rmap_until_complete = False


def mmap_action_finish(vma: Vma, action: MmapAction, err: int, is_compat: bool) -> int:
    """mmap_action_finish() (mm/util.c:1392): on success call vm_ops->mapped; on any error
    (the action's or mapped's) outside the compat layer, unmap the VMA (its vm_ops->close
    runs) and return error_override if set, else the error. In the compat layer the error is
    returned as is and the caller cleans up."""
    if not err:
        err = call_vma_mapped(vma)
    maybe_rmap_unlock_action(vma, action)
    if not err or is_compat:
        return err
    do_munmap(vma.mm, vma.start, vma_pages(vma) << PAGE_SHIFT)
    return action.error_override or err


def check_mmap_action(action: MmapAction, mm: Mm) -> int:
    """check_mmap_action() (mm/util.c:1423): error_override, sign-extended to unsigned long,
    must be 0 or an errno value (-MAX_ERRNO..-1): else WARN and -EINVAL. `mm` receives the
    WARN (the kernel's goes to the log)."""
    override = action.error_override
    if override and not IS_ERR_VALUE(_ul(override)):
        mm.warn("check_mmap_action", "override && !IS_ERR_VALUE(override)")
        return -errno.EINVAL
    return 0


def mmap_action_prepare(desc: VmAreaDesc) -> int:
    """mmap_action_prepare() (mm/util.c:1440): check error_override, then the type's prepare
    step; an unknown type WARNs and is -EINVAL."""
    err = check_mmap_action(desc.action, desc.mm)
    if err:
        return err
    step = {B.MMAP_NOTHING: lambda d: 0,
            B.MMAP_REMAP_PFN: remap_pfn_range_prepare,
            B.MMAP_IO_REMAP_PFN: io_remap_pfn_range_prepare,
            B.MMAP_SIMPLE_IO_REMAP: simple_ioremap_prepare,
            B.MMAP_MAP_KERNEL_PAGES: map_kernel_pages_prepare}.get(desc.action.type)
    if step is None:
        desc.mm.warn("mmap_action_prepare", "1")
        return -errno.EINVAL
    return step(desc)


def mmap_action_complete(vma: Vma, action: MmapAction, is_compat: bool) -> int:
    """mmap_action_complete() (mm/util.c:1478): MMAP_IO_REMAP_PFN and MMAP_SIMPLE_IO_REMAP
    should have become MMAP_REMAP_PFN in prepare (WARN, -EINVAL); the switch has no default,
    so an unknown type completes as 0. Then mmap_action_finish()."""
    err = 0
    if action.type == B.MMAP_REMAP_PFN:
        err = remap_pfn_range_complete(vma, action)
    elif action.type == B.MMAP_MAP_KERNEL_PAGES:
        err = map_kernel_pages_complete(vma, action)
    elif action.type in (B.MMAP_IO_REMAP_PFN, B.MMAP_SIMPLE_IO_REMAP):
        vma.mm.warn("mmap_action_complete", "1")
        err = -errno.EINVAL
    return mmap_action_finish(vma, action, err, is_compat)


# The compatibility layer: a legacy .mmap caller reaching a file with .mmap_prepare


def compat_set_desc_from_vma(desc: VmAreaDesc, file, vma: Vma) -> None:
    """compat_set_desc_from_vma() (mm/util.c:1180): zero the descriptor, fill it from the VMA."""
    ctypes.memset(ctypes.addressof(desc.raw), 0, ctypes.sizeof(desc.raw))
    desc.action.pages = None
    desc.mm, desc.file = vma.mm, file
    desc.start, desc.end, desc.pgoff = vma.start, vma.end, vma.pgoff
    desc.vm_file, desc.vma_flags, desc.page_prot = vma.file, vma.flags, vma.page_prot
    desc.vm_ops, desc.private_data = vma.vm_ops, None
    desc.action.type = B.MMAP_NOTHING


def compat_set_vma_from_desc(vma: Vma, desc: VmAreaDesc) -> None:
    """compat_set_vma_from_desc() (mm/vma.h:303): the mutable and user-defined fields back."""
    vma.pgoff = desc.pgoff
    if desc.vm_file is not vma.file:
        vma.file = desc.vm_file  # vma_set_file()
    vma.flags, vma.page_prot = desc.vma_flags, desc.page_prot
    vma.vm_ops, vma.private_data = desc.vm_ops, desc.private_data


def __compat_vma_mmap(desc: VmAreaDesc, vma: Vma) -> int:
    """__compat_vma_mmap() (mm/util.c:1224): prepare, apply to the VMA, complete (is_compat)."""
    err = mmap_action_prepare(desc)
    if err:
        return err
    compat_set_vma_from_desc(vma, desc)
    return mmap_action_complete(vma, desc.action, True)


def compat_vma_mmap(file, vma: Vma) -> int:
    """compat_vma_mmap() (mm/util.c:1266): run the file's .mmap_prepare on an existing VMA."""
    desc = VmAreaDesc(vma.mm)
    compat_set_desc_from_vma(desc, file, vma)
    err = file.f_op.mmap_prepare(desc)
    if err:
        return err
    desc.action.hide_from_rmap_until_complete = False  # not enforced from .mmap
    return __compat_vma_mmap(desc, vma)


def vfs_mmap(file, vma: Vma) -> int:
    """vfs_mmap() (include/linux/fs.h:2063)."""
    if file.f_op.mmap_prepare is not None:
        return compat_vma_mmap(file, vma)
    return file.f_op.mmap(file, vma)


def mmap_file(file, vma: Vma) -> int:
    """mmap_file() (mm/internal.h:165): after a failed hook no further hook may run."""
    err = vfs_mmap(file, vma)
    if err:
        vma.vm_ops = VMA_DUMMY_VM_OPS
    return err


def can_mmap_file(file, mm: Mm) -> bool:
    """can_mmap_file() (include/linux/fs.h:2044): exactly one of .mmap / .mmap_prepare."""
    has_mmap, has_prepare = file.f_op.mmap is not None, file.f_op.mmap_prepare is not None
    if has_mmap and has_prepare:
        mm.warn("can_mmap_file", "has_mmap && has_mmap_prepare")
        return False
    return has_mmap or has_prepare


# ---------------------------------------------------------------------------------------------
# mm/vma.c: munmap and __mmap_region


def vma_close(vma: Vma) -> None:
    """vma_close() (mm/internal.h:187): close, then no further hook may run."""
    close = _hook(vma.vm_ops, "close")
    if close is not None:
        close(vma)
        vma.vm_ops = VMA_DUMMY_VM_OPS


def __split_vma(vma: Vma, addr: int, new_below: bool) -> int:
    """__split_vma() (mm/vma.c:500): may_split may refuse; the new piece is a copy (sharing
    the PAT reservation) that gets vm_ops->open; the PFN ranges and pages follow their piece."""
    may_split = _hook(vma.vm_ops, "may_split")
    if may_split is not None:
        err = may_split(vma, addr)
        if err:
            return err
    lo, hi = (vma.start, addr) if new_below else (addr, vma.end)
    new = Vma(vma.mm, lo, hi, _ul(vma.pgoff + ((lo - vma.start) >> PAGE_SHIFT)), vma.flags, vma.page_prot,
              vma.vm_ops, vma.private_data, vma.file, vma.pfnmap_track_ctx)
    new.remaps, new.pages = _take_ptes(vma, lo, hi)
    open_ = _hook(new.vm_ops, "open")
    if open_ is not None:
        open_(new)
    if new_below:
        vma.pgoff = _ul(vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT))
        vma.start = addr
    else:
        vma.end = addr
    vma.mm.insert(new)
    return 0


def _munmap_range(mm: Mm, start: int, end: int) -> int:
    """vms_gather_munmap_vmas() + vms_complete_munmap_vmas() (mm/vma.c): split at the edges,
    detach, clear the ptes, close and free every VMA in [start, end)."""
    first = mm.find_vma_intersection(start, end)
    if first is not None and first.start < start:
        err = __split_vma(first, start, True)
        if err:
            return err
    for vma in [v for v in mm.vmas if v.start < end and start < v.end]:
        if vma.end > end:
            err = __split_vma(vma, end, False)
            if err:
                return err
    gone = [v for v in mm.vmas if v.start < end and start < v.end]
    mm.vmas = [v for v in mm.vmas if v not in gone]
    for vma in gone:
        vma.remaps, vma.pages = [], {}
        vma_close(vma)
    return 0


def do_munmap(mm: Mm, start: int, length: int) -> int:
    """do_munmap() / do_vmi_munmap() (mm/mmap.c:1062, mm/vma.c:1630): start page-aligned and [start, start + len)
    inside TASK_SIZE, else -EINVAL; len is page-aligned up and must not be 0."""
    start, length = _ul(start), _ul(length)
    if offset_in_page(start) or start > mm.task_size or length > mm.task_size - start:
        return -errno.EINVAL
    end = _ul(start + PAGE_ALIGN(length))
    if end == start:
        return -errno.EINVAL
    return _munmap_range(mm, start, end)


def set_desc_from_map(desc: VmAreaDesc, start: int, end: int, pgoff: int, file, vma_flags: int,
                      page_prot: int) -> None:
    """set_desc_from_map() (mm/vma.c:2418): the mutable fields' initial state."""
    desc.start, desc.end, desc.pgoff, desc.vm_file = start, end, pgoff, file
    desc.vma_flags, desc.page_prot = vma_flags, page_prot


def mmap_region(mm: Mm, file, addr: int, length: int, vm_flags: int, pgoff: int) -> int:
    """mmap_region() / __mmap_region() (mm/vma.c:2858, 2757): map [addr, addr + length) (the
    caller has page-aligned and checked them) and return addr or -errno.

    With .mmap_prepare: the descriptor (vm_ops = vma_dummy_vm_ops, action MMAP_NOTHING) is
    filled as set_desc_from_map() does, the hook runs, then mmap_action_prepare(); an error in
    either returns it as is (error_override does not apply) and no VMA is made. Then the VMA
    takes the descriptor's fields and mmap_action_complete(vma, action, False) runs; its error
    has unmapped the VMA and is returned (error_override applied). With only .mmap: the VMA is
    made, the hook runs on it, and on error the VMA is dropped without vm_ops->close.
    Anything already mapped in the range is unmapped first (MAP_FIXED); after that point a
    failure leaves a hole, as in the kernel. No merging with neighbours."""
    addr, length, vm_flags, pgoff = _ul(addr), _ul(length), _ul(vm_flags), _ul(pgoff)
    end = _ul(addr + length)
    have_mmap_prepare = file is not None and file.f_op.mmap_prepare is not None
    # mmap_region(): map_deny_write_exec() (no MDWE prctl), arch_validate_flags() (true on x86)
    # and mapping_map_writable() (sealed memfds only) cannot fail for the files modelled here.
    page_prot = vm_get_page_prot(vm_flags)  # MMAP_STATE
    desc = VmAreaDesc(mm, file, vm_ops=VMA_DUMMY_VM_OPS)
    desc.action.type = B.MMAP_NOTHING

    # __mmap_setup(): unmap what is in the way, then accountable_mapping(): private writable.
    err = _munmap_range(mm, addr, end)
    if err:
        return err
    if vm_flags & VM_WRITE and not vm_flags & (VM_NORESERVE | VM_SHARED):
        vm_flags |= VM_ACCOUNT
    set_desc_from_map(desc, addr, end, pgoff, file, vm_flags, page_prot)
    vm_ops, private_data = None, None

    if have_mmap_prepare:  # call_mmap_prepare()
        err = file.f_op.mmap_prepare(desc)
        if err:
            return err
        err = mmap_action_prepare(desc)  # call_action_prepare()
        if err:
            return err
        pgoff, file, vm_flags, page_prot = desc.pgoff, desc.vm_file, desc.vma_flags, desc.page_prot
        vm_ops, private_data = desc.vm_ops, desc.private_data

    # __mmap_new_vma()
    vma = Vma(mm, addr, end, pgoff, vm_flags, page_prot)
    if file is not None:  # __mmap_new_file_vma()
        vma.file = file
        if file.f_op.mmap is not None:
            err = mmap_file(vma.file, vma)
            if err:
                vma.remaps, vma.pages, vma.file = [], {}, None  # unmap_region(); never linked
                return err
            if addr != vma.start:
                mm.warn("__mmap_new_file_vma", "map->addr != vma->vm_start")
            if not vm_flags & VM_MAYWRITE and vma.flags & VM_MAYWRITE:
                mm.vm_warn("__mmap_new_file_vma", "drivers must not add VMA_MAYWRITE")
            file, vm_flags = vma.file, vma.flags
    else:
        vma.vm_ops = None  # vma_set_anonymous(); shared anonymous memory (shmem) not modelled
    vma.rmap_hidden = bool(desc.action.hide_from_rmap_until_complete)  # vma_link_file()
    mm.insert(vma)

    if have_mmap_prepare:  # set_vma_user_defined_fields(): NULL vm_ops makes it anonymous
        vma.vm_ops, vma.private_data = vm_ops, private_data

    # __mmap_complete(): a VMA that cannot be mlocked loses VM_LOCKED (vma_supports_mlock()).
    if vma.flags & VM_LOCKED and vma.flags & (VMA_SPECIAL_FLAGS | VM_DROPPABLE | VM_HUGETLB):
        vma.flags &= ~(VM_LOCKED | VM_LOCKONFAULT)

    if have_mmap_prepare:
        err = mmap_action_complete(vma, desc.action, False)
        if err:
            return err
    return addr


# ---------------------------------------------------------------------------------------------
# mm/mmap.c: do_mmap() and the mmap system call


def calc_vm_prot_bits(prot: int) -> int:
    """calc_vm_prot_bits() (include/linux/mman.h:141); no pkeys in the test kernel."""
    return ((VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0)
            | (VM_EXEC if prot & PROT_EXEC else 0))


def calc_vm_flag_bits(flags: int) -> int:
    """calc_vm_flag_bits() (include/linux/mman.h:153), CONFIG_TRANSPARENT_HUGEPAGE=y."""
    return ((VM_GROWSDOWN if flags & MAP_GROWSDOWN else 0) | (VM_LOCKED if flags & MAP_LOCKED else 0)
            | (VM_SYNC if flags & MAP_SYNC else 0) | (VM_NOHUGEPAGE if flags & MAP_STACK else 0))


def _get_unmapped_area(mm: Mm, addr: int, length: int, flags: int) -> int:
    """The address part of __get_unmapped_area() (mm/mmap.c). MAP_FIXED takes addr as is and
    then checks it; otherwise a free hint (rounded down to a page) is taken, else the highest
    hole below mm.mmap_base, else the lowest above MMAP_MIN_ADDR. The kernel's choice differs
    (randomised base, guard gaps): only whether an address is found is meant to match."""
    task_size = mm.task_size
    if not flags & MAP_FIXED:
        if addr and addr < MMAP_MIN_ADDR:
            addr = PAGE_ALIGN(MMAP_MIN_ADDR)  # round_hint_to_min()
        addr &= PAGE_MASK
        if not (addr and task_size - length >= addr and mm.find_vma_intersection(addr, addr + length) is None):
            holes, prev_end = [], MMAP_MIN_ADDR
            for v in mm.vmas + [Vma(mm, task_size, task_size)]:
                if v.start > prev_end:
                    holes.append((prev_end, v.start))
                prev_end = max(prev_end, v.end)
            below = [min(hi, mm.mmap_base) - length for lo, hi in holes if min(hi, mm.mmap_base) - lo >= length]
            above = [lo for lo, hi in holes if hi - lo >= length]
            if not below and not above:
                return -errno.ENOMEM
            addr = max(below) if below else min(above)
    if addr > task_size - length:
        return -errno.ENOMEM
    if offset_in_page(addr):
        return -errno.EINVAL
    return addr


def _do_mmap(mm: Mm | None, file, addr: int, length: int, prot: int, flags: int, offset: int, f_mode: int,
             noexec: bool, task_size: int, memlock_rlimit: int | None, log: Mm):
    """SYSCALL_DEFINE6(mmap) -> ksys_mmap_pgoff() -> vm_mmap_pgoff() -> do_mmap(), up to the
    mmap_region() call: (-errno,) or (vm_flags, addr, length, pgoff, file). With mm None the
    address is not chosen; WARNs go to log."""
    addr, length, prot, flags, offset = _ul(addr), _ul(length), _ul(prot), _ul(flags), _ul(offset)
    if offset & ~PAGE_MASK:  # arch/x86/kernel/sys_x86_64.c:86
        return (-errno.EINVAL,)
    pgoff = offset >> PAGE_SHIFT
    anonymous = bool(flags & MAP_ANONYMOUS)  # ksys_mmap_pgoff(): the fd is then ignored
    if flags & MAP_HUGETLB:  # not a hugetlbfs file; anonymous hugetlb is not modelled
        return (-errno.EINVAL,)
    # vm_mmap_pgoff(): security_mmap_file() and fsnotify_mmap_perm() are 0 without LSMs/fanotify.
    # do_mmap() (mm/mmap.c:336); current->personality has no READ_IMPLIES_EXEC.
    if not length:
        return (-errno.EINVAL,)
    if flags & MAP_FIXED_NOREPLACE:
        flags |= MAP_FIXED
    length = PAGE_ALIGN(length)
    if not length:
        return (-errno.ENOMEM,)
    if _ul(pgoff + (length >> PAGE_SHIFT)) < pgoff:  # unreachable from mmap(): pgoff < 2^52
        return (-errno.EOVERFLOW,)
    vm_flags = calc_vm_prot_bits(prot) | calc_vm_flag_bits(flags) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    if length > task_size:  # __get_unmapped_area()
        return (-errno.ENOMEM,)
    if mm is not None:
        addr = _get_unmapped_area(mm, addr, length, flags)
        if addr < 0:
            return (addr,)
        if flags & MAP_FIXED_NOREPLACE and mm.find_vma_intersection(addr, addr + length) is not None:
            return (-errno.EEXIST,)
    # can_do_mlock() and mlock_future_ok(); memlock_rlimit None stands for CAP_IPC_LOCK.
    if flags & MAP_LOCKED and memlock_rlimit == 0:
        return (-errno.EPERM,)
    if vm_flags & VM_LOCKED and memlock_rlimit is not None and length >> PAGE_SHIFT > memlock_rlimit >> PAGE_SHIFT:
        return (-errno.EAGAIN,)
    if not anonymous:
        # file_mmap_ok(): a character device's size limit is ULONG_MAX (no FOP_UNSIGNED_OFFSET).
        if pgoff > (ULONG_MAX - length) >> PAGE_SHIFT:
            return (-errno.EOVERFLOW,)
        mtype = flags & MAP_TYPE
        if mtype in (MAP_SHARED, MAP_SHARED_VALIDATE):
            if mtype == MAP_SHARED:
                flags &= LEGACY_MAP_MASK  # unknown flags are ignored (vm_flags already has VM_SYNC)
            if flags & ~LEGACY_MAP_MASK:  # no FOP_MMAP_SYNC: MAP_SYNC is not supported
                return (-errno.EOPNOTSUPP,)
            if prot & PROT_WRITE and not f_mode & FMODE_WRITE:
                return (-errno.EACCES,)
            # IS_SWAPFILE() / IS_APPEND(): not for a character device.
            vm_flags |= VM_SHARED | VM_MAYSHARE
            if not f_mode & FMODE_WRITE:
                vm_flags &= ~(VM_MAYWRITE | VM_SHARED)
        if mtype in (MAP_SHARED, MAP_SHARED_VALIDATE, MAP_PRIVATE):
            if not f_mode & FMODE_READ:
                return (-errno.EACCES,)
            if noexec:  # path_noexec(): the file's mount is noexec
                if vm_flags & VM_EXEC:
                    return (-errno.EPERM,)
                vm_flags &= ~VM_MAYEXEC
            if file is not None and not can_mmap_file(file, log):
                return (-errno.ENODEV,)
            if vm_flags & (VM_GROWSDOWN | VM_GROWSUP):
                return (-errno.EINVAL,)
        else:
            return (-errno.EINVAL,)
        # memfd_check_seals_mmap(): not a memfd.
    else:
        file = None
        mtype = flags & MAP_TYPE
        if mtype == MAP_SHARED:
            if vm_flags & (VM_GROWSDOWN | VM_GROWSUP):
                return (-errno.EINVAL,)
            pgoff = 0
            vm_flags |= VM_SHARED | VM_MAYSHARE
        elif mtype in (MAP_DROPPABLE, MAP_PRIVATE):
            if mtype == MAP_DROPPABLE:
                if flags & (MAP_LOCKED | MAP_HUGETLB) or vm_flags & (VM_GROWSDOWN | VM_GROWSUP):
                    return (-errno.EINVAL,)
                vm_flags |= VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP
            pgoff = addr >> PAGE_SHIFT
        else:
            return (-errno.EINVAL,)
    if flags & MAP_NORESERVE:  # sysctl_overcommit_memory is OVERCOMMIT_GUESS
        vm_flags |= VM_NORESERVE
    return vm_flags, addr, length, pgoff, file


def do_mmap_checks(length: int, prot: int, flags: int, offset: int, f_mode: int, *, file=None,
                   noexec: bool = False, task_size: int = TASK_SIZE, memlock_rlimit: int | None = None,
                   mm: Mm | None = None) -> int:
    """What mmap(2) on a file (a character device) checks before the driver's hook, in the
    kernel's order, and the vm_flags do_mmap() hands to mmap_region(): vm_flags or -errno.

    The mmap syscall's offset must be page-aligned (-EINVAL); MAP_HUGETLB on a file that is not
    hugetlbfs is -EINVAL; do_mmap(): len 0 -EINVAL, len that page-aligns to 0 -ENOMEM, pgoff +
    pages overflowing -EOVERFLOW, len > TASK_SIZE -ENOMEM, MAP_LOCKED limits (-EPERM, -EAGAIN;
    memlock_rlimit in bytes, None for CAP_IPC_LOCK), file_mmap_ok() -EOVERFLOW, then by
    MAP_TYPE: MAP_SHARED ignores unknown flags, MAP_SHARED_VALIDATE refuses them (-EOPNOTSUPP),
    PROT_WRITE on a file not open for writing is -EACCES and such a file's shared mapping loses
    VM_MAYWRITE and VM_SHARED; a file not open for reading is -EACCES; on a noexec mount
    PROT_EXEC is -EPERM and VM_MAYEXEC goes; no mmap hook (if `file` is given) -ENODEV;
    MAP_GROWSDOWN -EINVAL; any other MAP_TYPE -EINVAL. Left out: the address (see do_mmap()),
    READ_IMPLIES_EXEC, mm->def_flags (mlockall), map_count, LSMs, memfd seals, hugetlb files.
    MAP_ANONYMOUS runs the anonymous branch (the fd is ignored). can_mmap_file()'s WARN goes to
    `mm` when given."""
    r = _do_mmap(None, file, 0, length, prot, flags, offset, f_mode, noexec, task_size, memlock_rlimit,
                 Mm() if mm is None else mm)
    return r[0]


def do_mmap(mm: Mm, file, addr: int, length: int, prot: int, flags: int, offset: int, *,
            noexec: bool = False, memlock_rlimit: int | None = None) -> int:
    """mmap(2) of `file` into `mm`: do_mmap_checks() with the address chosen at the kernel's
    point (_get_unmapped_area(), MAP_FIXED_NOREPLACE -EEXIST), then mmap_region(). Returns the
    address or -errno. The populate step (MAP_POPULATE / VM_LOCKED) is not modelled."""
    f_mode = file.f_mode if file is not None else 0
    r = _do_mmap(mm, file, addr, length, prot, flags, offset, f_mode, noexec, mm.task_size, memlock_rlimit, mm)
    if len(r) == 1:
        return r[0]
    vm_flags, addr, length, pgoff, file = r
    return mmap_region(mm, file, addr, length, vm_flags, pgoff)


def vma_lookup(mm: Mm, addr: int) -> Vma | None:
    """vma_lookup() (include/linux/mm.h:3216): the VMA holding addr, or None."""
    return next((v for v in mm.vmas if v.start <= addr < v.end), None)


# ---------------------------------------------------------------------------------------------
# mm/mremap.c: mremap(2), as far as the model's VMAs go

MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4  # include/uapi/linux/mman.h:9-11
# enum mremap_type (mm/mremap.c:36)
MREMAP_INVALID, MREMAP_NO_RESIZE, MREMAP_SHRINK, MREMAP_EXPAND = range(4)


@dataclass(eq=False)
class _VmaRemap:
    """struct vma_remap_struct (mm/mremap.c:50): the user's arguments and the state the steps pass on."""

    addr: int
    old_len: int
    new_len: int
    flags: int
    new_addr: int
    vma: Vma | None = None
    delta: int = 0
    remap_type: int = MREMAP_INVALID


def _vrm_implies_new_addr(vrm: _VmaRemap) -> bool:
    """vrm_implies_new_addr() (mm/mremap.c:931)."""
    return bool(vrm.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP))


def _check_mremap_params(mm: Mm, vrm: _VmaRemap) -> int:
    """check_mremap_params() (mm/mremap.c:1870), in the kernel's order: unknown flags, an
    unaligned addr, new_len 0 or above TASK_SIZE; with a new address (FIXED or DONTUNMAP): past
    TASK_SIZE, unaligned, without MAYMOVE, DONTUNMAP resizing, overlapping the source
    (vrm_overlaps(), :903). All -EINVAL."""
    if vrm.flags & ~(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP):
        return -errno.EINVAL
    if offset_in_page(vrm.addr):
        return -errno.EINVAL
    if not vrm.new_len or vrm.new_len > mm.task_size:
        return -errno.EINVAL
    if not _vrm_implies_new_addr(vrm):
        return 0
    if vrm.new_addr > mm.task_size - vrm.new_len:
        return -errno.EINVAL
    if offset_in_page(vrm.new_addr):
        return -errno.EINVAL
    if not vrm.flags & MREMAP_MAYMOVE:
        return -errno.EINVAL
    if vrm.flags & MREMAP_DONTUNMAP and vrm.old_len != vrm.new_len:
        return -errno.EINVAL
    end_old, end_new = _ul(vrm.addr + vrm.old_len), _ul(vrm.new_addr + vrm.new_len)
    if end_old > vrm.new_addr and end_new > vrm.addr:
        return -errno.EINVAL
    return 0


def _check_prep_vma(mm: Mm, vrm: _VmaRemap) -> int:
    """check_prep_vma() (mm/mremap.c:1769): no VMA at addr -EFAULT; the remap type; for a
    remap that maps anew (expands, or FIXED / DONTUNMAP): duplicating (old_len 0) a private
    mapping -EINVAL (:1808, with a pr_warn_once, not a WARN); DONTUNMAP of a VM_DONTEXPAND or
    VM_PFNMAP VMA -EINVAL (:1814); [addr, addr + old_len) (new_len when shrinking) past the VMA's
    end -EFAULT (:1838); a growing pgoff that wraps -EINVAL (:1851); growing a VM_DONTEXPAND or
    VM_PFNMAP VMA -EFAULT (:1854). Not modelled: mseal (-EPERM), hugetlb alignment, mlock
    limits (-EAGAIN), may_expand_vm() (-ENOMEM), populating a VM_LOCKED expansion."""
    vma = vrm.vma
    if vma is None:
        return -errno.EFAULT
    vrm.delta = abs(vrm.old_len - vrm.new_len)  # vrm_set_delta()
    vrm.remap_type = (MREMAP_NO_RESIZE if vrm.delta == 0 else  # vrm_remap_type()
                      MREMAP_SHRINK if vrm.old_len > vrm.new_len else MREMAP_EXPAND)
    if not _vrm_implies_new_addr(vrm):
        vrm.new_addr = vrm.addr
    if vrm.remap_type != MREMAP_EXPAND and not _vrm_implies_new_addr(vrm):  # !vrm_will_map_new()
        return 0
    old_len, new_len = vrm.old_len, vrm.new_len
    if not old_len and not vma.flags & (VM_SHARED | VM_MAYSHARE):
        return -errno.EINVAL
    if vrm.flags & MREMAP_DONTUNMAP and vma.flags & (VM_DONTEXPAND | VM_PFNMAP):
        return -errno.EINVAL
    if vrm.remap_type == MREMAP_SHRINK:
        old_len = new_len
    if old_len > vma.end - vrm.addr:
        return -errno.EFAULT
    if new_len == old_len:
        return 0
    pgoff = _ul(((vrm.addr - vma.start) >> PAGE_SHIFT) + vma.pgoff)
    if _ul(pgoff + (new_len >> PAGE_SHIFT)) < pgoff:
        return -errno.EINVAL
    if vma.flags & (VM_DONTEXPAND | VM_PFNMAP):
        return -errno.EFAULT
    return 0


def _vrm_set_new_addr(mm: Mm, vrm: _VmaRemap) -> int:
    """vrm_set_new_addr() (mm/mremap.c:946): get_unmapped_area() at new_addr (MAP_FIXED with
    MREMAP_FIXED; a hint with DONTUNMAP alone; anywhere otherwise)."""
    new_addr = vrm.new_addr if _vrm_implies_new_addr(vrm) else 0
    res = _get_unmapped_area(mm, new_addr, vrm.new_len, MAP_FIXED if vrm.flags & MREMAP_FIXED else 0)
    if res < 0:
        return res
    vrm.new_addr = res
    return 0


def _copy_vma_and_data(mm: Mm, vrm: _VmaRemap) -> tuple[int, Vma | None]:
    """copy_vma_and_data() (mm/mremap.c:1285): copy_vma() (mm/vma.c:1864: a new VMA at
    new_addr sharing file, vm_ops, private data and PAT reservation, whose vm_ops->open runs;
    never merged in the model), move_page_tables() (the PFN ranges and pages of [addr, addr +
    old_len) move by new_addr - addr), then vm_ops->mremap(new_vma); if that fails the entries
    move back and the new VMA becomes the one to unmap."""
    vma = vrm.vma
    new_pgoff = _ul(vma.pgoff + ((vrm.addr - vma.start) >> PAGE_SHIFT))
    if vma_is_anonymous(vma) and not vma.remaps and not vma.pages:  # no anon_vma yet
        new_pgoff = vrm.new_addr >> PAGE_SHIFT
    if mm.find_vma_intersection(vrm.new_addr, vrm.new_addr + vrm.new_len) is not None:
        return -errno.ENOMEM, None  # copy_vma(): "should never get here"
    new = Vma(mm, vrm.new_addr, vrm.new_addr + vrm.new_len, new_pgoff, vma.flags, vma.page_prot, vma.vm_ops,
              vma.private_data, vma.file, vma.pfnmap_track_ctx)
    mm.insert(new)
    open_ = _hook(new.vm_ops, "open")
    if open_ is not None:
        open_(new)
    shift = vrm.new_addr - vrm.addr
    remaps, pages = _take_ptes(vma, vrm.addr, vrm.addr + vrm.old_len)
    new.remaps = [(a + shift, pfn, s, prot) for a, pfn, s, prot in remaps]
    new.pages = {a + shift: p for a, p in pages.items()}
    err = 0
    mremap = _hook(vma.vm_ops, "mremap")
    if mremap is not None:
        err = mremap(new)
    if err:
        remaps, pages = _take_ptes(new, new.start, new.end)
        vma.remaps += [(a - shift, pfn, s, prot) for a, pfn, s, prot in remaps]
        vma.pages.update({a - shift: p for a, p in pages.items()})
        vrm.vma, vrm.old_len, vrm.addr = new, vrm.new_len, vrm.new_addr
    return err, new


def _move_vma(mm: Mm, vrm: _VmaRemap) -> int:
    """move_vma() (mm/mremap.c:1383): prep_move_vma() (:1121: vm_ops->may_split at each edge
    that will be cut; a DONTUNMAP of a VM_LOCKED VMA splits first), copy and move the entries,
    then unmap the source range (unmap_source_vma(), :1182, whose failure is ignored) unless
    DONTUNMAP succeeded (dontunmap_complete(), :1350: the old VMA loses VM_LOCKED, and an
    anonymous one moved whole gets pgoff = start >> PAGE_SHIFT). The new address, or -errno.
    Not modelled: map_count headroom, KSM, memory accounting (VM_ACCOUNT)."""
    vma, addr, old_len = vrm.vma, vrm.addr, vrm.old_len
    split_before, split_after = vma.start != addr, vma.end != _ul(addr + old_len)
    may_split = _hook(vma.vm_ops, "may_split")
    if may_split is not None:
        err = may_split(vma, addr) if split_before else 0
        if not err and split_after:
            err = may_split(vma, addr + old_len)
        if err:
            return err
    dontunmap = bool(vrm.flags & MREMAP_DONTUNMAP)
    if dontunmap and vma.flags & VM_LOCKED:  # needs_pre_split()
        err = __split_vma(vma, addr, True) if split_before else 0
        if not err and split_after:
            err = __split_vma(vma_lookup(mm, addr), addr + old_len, False)
        if err:
            return err
        vrm.vma = vma_lookup(mm, addr)
    err, new = _copy_vma_and_data(mm, vrm)
    if err and new is None:
        return err
    if dontunmap and not err:
        old = vrm.vma
        old.flags &= ~(VM_LOCKED | VM_LOCKONFAULT)
        if vrm.addr == old.start and vrm.addr + vrm.old_len == old.end and vma_is_anonymous(old) and old.file is None:
            old.pgoff = old.start >> PAGE_SHIFT
    if not dontunmap or err:
        do_munmap(mm, vrm.addr, vrm.old_len)
    return err if err else vrm.new_addr


def _shrink_vma(mm: Mm, vrm: _VmaRemap, drop_lock: bool) -> int:
    """shrink_vma() (mm/mremap.c:1444): unmap [addr + new_len, addr + old_len); when the lock is
    kept the VMA at addr is looked up again (-EFAULT if gone)."""
    res = do_munmap(mm, _ul(vrm.addr + vrm.new_len), vrm.delta)
    vrm.vma = None
    if res:
        return res
    if not drop_lock:
        vrm.vma = vma_lookup(mm, vrm.addr)
        if vrm.vma is None:
            return -errno.EFAULT
    return 0


def _mremap_to(mm: Mm, vrm: _VmaRemap) -> int:
    """mremap_to() (mm/mremap.c:1481): MREMAP_FIXED unmaps the destination first (and the VMA at
    addr must still be there, -EFAULT); a shrink is done in place; then the move."""
    if vrm.flags & MREMAP_FIXED:
        err = do_munmap(mm, vrm.new_addr, vrm.new_len)
        vrm.vma = None
        if err:
            return err
        vrm.vma = vma_lookup(mm, vrm.addr)
        if vrm.vma is None:
            return -errno.EFAULT
    if vrm.remap_type == MREMAP_SHRINK:
        err = _shrink_vma(mm, vrm, False)
        if err:
            return err
        vrm.old_len = vrm.new_len
    err = _vrm_set_new_addr(mm, vrm)
    if err:
        return err
    return _move_vma(mm, vrm)


def _vma_expandable(mm: Mm, vma: Vma, delta: int) -> bool:
    """vma_expandable() (mm/mremap.c:1533): nothing in [vm_end, vm_end + delta), and the grown
    range is an address get_unmapped_area(MAP_FIXED) accepts."""
    end = _ul(vma.end + delta)
    if end < vma.end:
        return False
    if mm.find_vma_intersection(vma.end, end) is not None:
        return False
    return _get_unmapped_area(mm, vma.start, end - vma.start, MAP_FIXED) >= 0


def _expand_vma(mm: Mm, vrm: _VmaRemap) -> int:
    """expand_vma() (mm/mremap.c:1630): in place when [addr, addr + old_len) ends the VMA and the
    space after it is free (vrm_can_expand_in_place(), :1548; vma_merge_extend() grows the VMA,
    no merge with the next one modelled), else a move with MREMAP_MAYMOVE, else -ENOMEM."""
    vma = vrm.vma
    if vma.end - vrm.addr == vrm.old_len and _vma_expandable(mm, vma, vrm.delta):
        vma.end = _ul(vma.end + vrm.delta)
        return vrm.addr
    if not vrm.flags & MREMAP_MAYMOVE:
        return -errno.ENOMEM
    err = _vrm_set_new_addr(mm, vrm)
    if err:
        return err
    return _move_vma(mm, vrm)


def _mremap_at(mm: Mm, vrm: _VmaRemap) -> int:
    """mremap_at() (mm/mremap.c:1668): same size is a no-op, a shrink unmaps the tail, an
    expansion is expand_vma()."""
    if vrm.remap_type == MREMAP_NO_RESIZE:
        return vrm.addr
    if vrm.remap_type == MREMAP_SHRINK:
        res = _shrink_vma(mm, vrm, True)
        return res if res else vrm.addr
    if vrm.remap_type == MREMAP_EXPAND:
        return _expand_vma(mm, vrm)
    mm.warn("mremap_at", "1")
    return -errno.EINVAL


def _remap_move(mm: Mm, vrm: _VmaRemap) -> int:
    """remap_move() (mm/mremap.c:1923): a pure move (MREMAP_FIXED, old_len == new_len) of every
    VMA in [addr, addr + old_len), keeping the gaps between them; a gap at the start, or no VMA
    at all, is -EFAULT. Every model file may be moved with others (vma_multi_allowed(), :1741:
    no get_unmapped_area hook, no userfaultfd)."""
    start, end = vrm.addr, _ul(vrm.addr + vrm.old_len)
    target, res, seen, last_end, cursor = vrm.new_addr, -errno.EFAULT, False, 0, start
    while True:
        vma = next((v for v in mm.vmas if v.end > cursor and v.start < end), None)
        if vma is None:
            return res
        addr = max(vma.start, start)
        length = min(end, vma.end) - addr
        if not seen and start < vma.start:
            return -errno.EFAULT
        offset = vma.start - last_end if seen else 0
        last_end = cursor = vma.end
        vrm.vma, vrm.addr, vrm.new_addr = vma, addr, _ul(target + offset)
        vrm.old_len = vrm.new_len = length
        res_vma = _check_prep_vma(mm, vrm) or _mremap_to(mm, vrm)
        if res_vma < 0:
            return res_vma
        if not seen:
            res = res_vma
        seen = True
        target = _ul(res_vma + vrm.new_len)


def do_mremap(mm: Mm, addr: int, old_len: int, new_len: int, flags: int, new_addr: int = 0) -> int:
    """mremap(2) (SYSCALL_DEFINE5(mremap), mm/mremap.c:2067 -> do_mremap(), :2012): the new
    address or -errno. Lengths are page-aligned up; check_mremap_params(); a pure move
    (MREMAP_FIXED, same length) is remap_move(); otherwise the VMA holding addr is checked
    (check_prep_vma()) and mremap_to() (FIXED / DONTUNMAP) or mremap_at() runs.

    For a VM_IO | VM_PFNMAP | VM_DONTEXPAND mapping (remap_pfn_range(), a simple I/O remap)
    this gives: a same-size or shrinking mremap works in place; growing is -EFAULT, with or
    without MREMAP_MAYMOVE or MREMAP_FIXED (check_prep_vma(), :1854); a move to a free or
    MREMAP_FIXED address works and carries the PFNs along; MREMAP_DONTUNMAP is -EINVAL (:1814).
    Not modelled: VMA merging, map_count limits, mseal, hugetlb, mlock / memory accounting,
    userfaultfd."""
    addr, old_len, new_len, flags, new_addr = _ul(addr), _ul(old_len), _ul(new_len), _ul(flags), _ul(new_addr)
    vrm = _VmaRemap(addr, PAGE_ALIGN(old_len), PAGE_ALIGN(new_len), flags, new_addr)
    err = _check_mremap_params(mm, vrm)
    if err:
        return err
    if vrm.flags & MREMAP_FIXED and vrm.old_len == vrm.new_len:  # vrm_move_only()
        return _remap_move(mm, vrm)
    vrm.vma = vma_lookup(mm, vrm.addr)
    err = _check_prep_vma(mm, vrm)
    if err:
        return err
    return _mremap_to(mm, vrm) if _vrm_implies_new_addr(vrm) else _mremap_at(mm, vrm)


# ---------------------------------------------------------------------------------------------
# What a process sees of its mappings: /proc/PID/maps, smaps' VmFlags, reads through a mapping


def show_map_perms(vma: Vma) -> str:
    """The permissions column of /proc/PID/maps (show_vma_header_prefix(),
    fs/proc/task_mmu.c:475): r, w, x, then s for VM_MAYSHARE, else p."""
    f = vma.flags
    return ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + ("x" if f & VM_EXEC else "-") + (
        "s" if f & VM_MAYSHARE else "p")


# show_smap_vma_flags() (fs/proc/task_mmu.c:1166): the mnemonics of the flags the model has.
VM_FLAG_MNEMONICS = {VM_READ: "rd", VM_WRITE: "wr", VM_EXEC: "ex", VM_SHARED: "sh", VM_MAYREAD: "mr",
                     VM_MAYWRITE: "mw", VM_MAYEXEC: "me", VM_MAYSHARE: "ms", VM_GROWSDOWN: "gd", VM_PFNMAP: "pf",
                     VM_LOCKED: "lo", VM_IO: "io", VM_DONTEXPAND: "de", VM_LOCKONFAULT: "lf", VM_ACCOUNT: "ac",
                     VM_NORESERVE: "nr", VM_HUGETLB: "ht", VM_SYNC: "sf", VM_WIPEONFORK: "wf", VM_DONTDUMP: "dd",
                     VM_MIXEDMAP: "mm", VM_NOHUGEPAGE: "nh"}


def smaps_vm_flags(vma: Vma) -> set[str]:
    """The VmFlags line of /proc/PID/smaps for the flags the model keeps (no VM_SOFTDIRTY,
    VM_MERGEABLE, pkeys ...: compare only these mnemonics with a kernel's)."""
    return {m for bit, m in VM_FLAG_MNEMONICS.items() if vma.flags & bit}


def access_vm(mm: Mm, addr: int, n: int) -> bytes | int:
    """A load of n bytes at addr by the process, through the page tables: the bytes, or -EFAULT
    where the process would take SIGSEGV (no VMA, no VM_READ, no entry). A PFN range reads the
    machine's MMIO page from mm.iomem; a PFN the model has no page for, or a kernel page
    (content not modelled), is -EIO (not modelled)."""
    addr, out = _ul(addr), bytearray()
    for a in range(addr, addr + n):
        vma = vma_lookup(mm, a)
        if vma is None or not vma.flags & VM_READ:
            return -errno.EFAULT
        hit = next(((pfn, a - ra) for ra, pfn, s, _ in vma.remaps if ra <= a < ra + s), None)
        if hit is None:
            return -errno.EIO if (a & PAGE_MASK) in vma.pages else -errno.EFAULT
        pfn, off = hit
        page = mm.iomem.get(_ul(pfn + (off >> PAGE_SHIFT)))
        if page is None:
            return -errno.EIO
        out.append(page[offset_in_page(off)])
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# drivers/char/hpet.c: /dev/hpet, a user of the simple I/O remap


HPET_OPEN = 0x0001  # drivers/char/hpet.c:100


@dataclass(eq=False)
class Hpet:
    """struct hpets (drivers/char/hpet.c:87) for one HPET block: its physical address
    (hp_hpet_phys), the image of its MMIO registers (the caller's bytes, from the block's start;
    the rest of the page reads 0), one hpet_dev per timer (hd_flags, HPET_OPEN for the ones
    platform code reserved, hpet.c:904), and the build and boot options of hpet_mmap_prepare():
    CONFIG_HPET_MMAP (else -ENOSYS, hpet.c:378) and hpet_mmap_enabled (CONFIG_HPET_MMAP_DEFAULT
    or hpet_mmap= on the command line, hpet.c:343-356)."""

    hp_hpet_phys: int
    registers: bytes
    ntimer: int = 3
    reserved: int = 0  # bit i: timer i reserved by platform code
    config_hpet_mmap: bool = True
    mmap_enabled: bool = True
    hd_flags: list = field(default_factory=list)

    def __post_init__(self):
        if not self.hd_flags:
            self.hd_flags = [HPET_OPEN if self.reserved & (1 << i) else 0 for i in range(self.ntimer)]

    @property
    def iomem(self) -> dict:
        """The page(s) the block's registers occupy, {pfn: bytes}, for Mm(iomem=...)."""
        first = offset_in_page(self.hp_hpet_phys)
        image = bytes(first) + bytes(self.registers)
        image += bytes(-len(image) % PAGE_SIZE)
        base = self.hp_hpet_phys >> PAGE_SHIFT
        return {base + i: image[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i in range(len(image) // PAGE_SIZE)}


@dataclass(eq=False)
class HpetDev:
    """struct hpet_dev (drivers/char/hpet.c:73): the timer an open file holds."""

    hd_hpets: Hpet
    index: int


def hpet_mmap_prepare(desc: VmAreaDesc) -> int:
    """hpet_mmap_prepare() (drivers/char/hpet.c:358-375): -EACCES unless hpet_mmap_enabled;
    -ENOSYS for a block not page-aligned; the page uncached; a simple I/O remap of one page at
    the block's address (so only a one-page mapping at offset 0 can pass
    simple_ioremap_prepare(): more, or a nonzero offset, is -EINVAL there). Without
    CONFIG_HPET_MMAP the hook is -ENOSYS (hpet.c:378)."""
    hpets = desc.file.private_data.hd_hpets
    if not hpets.config_hpet_mmap:
        return -errno.ENOSYS
    if not hpets.mmap_enabled:
        return -errno.EACCES
    addr = _ul(hpets.hp_hpet_phys)
    if addr & (PAGE_SIZE - 1):
        return -errno.ENOSYS
    desc.page_prot = pgprot_noncached(desc.page_prot)
    mmap_action_simple_ioremap(desc, addr, PAGE_SIZE)
    return 0


HPET_FOPS = FileOperations(mmap_prepare=hpet_mmap_prepare)  # hpet_fops (hpet.c:705), the mmap part


def hpet_open(hpets: Hpet, f_mode: int) -> File | int:
    """open("/dev/hpet") -> hpet_open() (drivers/char/hpet.c:224): a file opened for writing is
    -EINVAL (:230); the first timer not HPET_OPEN is taken, none left is -EBUSY (:236-248)."""
    if f_mode & FMODE_WRITE:
        return -errno.EINVAL
    for i, flags in enumerate(hpets.hd_flags):
        if not flags & HPET_OPEN:
            hpets.hd_flags[i] |= HPET_OPEN
            return File(HPET_FOPS, f_mode, HpetDev(hpets, i))
    return -errno.EBUSY


def hpet_release(file: File) -> None:
    """The last close: hpet_release() (drivers/char/hpet.c:396) frees the timer (:424). (The
    kernel's mappings hold the file; the model's caller closes it when they are gone.)"""
    dev = file.private_data
    dev.hd_hpets.hd_flags[dev.index] &= ~HPET_OPEN
