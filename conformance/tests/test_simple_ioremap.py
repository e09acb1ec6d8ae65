"""Seed 002 against a real kernel: the simple I/O remap (mmap_action_simple_ioremap() ->
simple_ioremap_prepare(), mm/memory.c:3261 -> __simple_ioremap_prep(), :3227) through its user in
7.2, /dev/hpet: hpet_mmap_prepare() (drivers/char/hpet.c:358-375) refuses with -EACCES when HPET
mmap is disabled and -ENOSYS for a block not page-aligned, makes the page uncached and asks for a
simple I/O remap of PAGE_SIZE at the block's physical address; hpet_open() (hpet.c:230) refuses a
file opened for writing with -EINVAL.

The same table runs on every target. On the model: model/mm.py's hpet (mm.Hpet, hpet_open(),
HPET_FOPS) over a device page whose registers are QEMU's capability register, in a model mm
(do_mmap(), do_mremap(), do_munmap(), access_vm(), /proc/PID/maps and smaps' VmFlags as
show_map_perms() / smaps_vm_flags() give them); no /dev/hpet needed. On a kernel target (and in
the VM): the real /dev/hpet through the raw system calls, read with 64-bit loads (the HPET takes
4- and 8-byte accesses), /proc/self/smaps for what the mapping is; a skip that says why when there
is no /dev/hpet or its mmap is disabled. The errnos are the kernel's (7.2.13 in QEMU's pc
machine); where a series differs the case says so (_BY_SERIES).

What the mapping shows: the first 8 bytes are the HPET's General Capabilities and ID register
(on QEMU 0x009896808086a201: revision 1, 3 timers, 64-bit counter, legacy routing, vendor 0x8086,
a 10 ns period); the model's page holds the same value.
"""
from __future__ import annotations

import ctypes
import errno
import os

import pytest

from conformance.report import Errno
from conformance.tests.helpers import noexec
from model import mm as M
from model.limits import PAGE_SIZE as P
from model.uapi import TARGET_SERIES

R, W, X, NONE = M.PROT_READ, M.PROT_WRITE, M.PROT_EXEC, M.PROT_NONE
SHARED, PRIVATE, VALIDATE = M.MAP_SHARED, M.MAP_PRIVATE, M.MAP_SHARED_VALIDATE
MAYMOVE, FIXED, DONTUNMAP = M.MREMAP_MAYMOVE, M.MREMAP_FIXED, M.MREMAP_DONTUNMAP
DEV = "/dev/hpet"

# QEMU's HPET (hw/timer/hpet.c): at 0xfed00000; capability register = period in fs << 32 |
# vendor << 16 | LEG_RT_CAP (bit 15) | COUNT_SIZE_CAP (bit 13) | (timers - 1) << 8 | revision.
QEMU_HPET_PHYS = 0xFED00000
QEMU_HPET_CAP = 10_000_000 << 32 | 0x8086 << 16 | 1 << 15 | 1 << 13 | (3 - 1) << 8 | 0x01
assert QEMU_HPET_CAP == 0x009896808086A201  # what 7.2.13 in the VM reads through the mapping

# The layout the mremap / munmap cases use, relative to a reservation of SLOTS pages: the hpet
# page at 0, anonymous PROT_NONE pages after it (the move destination at DEST), a hole at HOLE.
SLOTS, DEST, HOLE = 6, 3 * P, 5 * P

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_MMAP, _SYS_MUNMAP, _SYS_MREMAP = 9, 11, 25  # x86_64


def _sys(nr, *args) -> int:
    """A raw system call: its result, or -errno (glibc's mremap() reads new_address only with
    MREMAP_FIXED; the raw call passes what the case says)."""
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & M.ULONG_MAX) for a in args))
    return -ctypes.get_errno() if ret == -1 else ret


class ModelSide:
    """model/mm.py: one mm and one HPET (QEMU's address and capability register)."""

    name = "model"

    def __init__(self):
        self.hpet = M.Hpet(QEMU_HPET_PHYS, QEMU_HPET_CAP.to_bytes(8, "little"))
        self.mm = M.Mm(iomem=self.hpet.iomem)
        self.file = None
        self.noexec = False  # the model's /dev is not a noexec mount
        self.phys = QEMU_HPET_PHYS

    def open(self, flags: int) -> int:
        f_mode = {os.O_RDONLY: M.FMODE_READ, os.O_WRONLY: M.FMODE_WRITE,
                  os.O_RDWR: M.FMODE_READ | M.FMODE_WRITE}[flags & os.O_ACCMODE]
        f = M.hpet_open(self.hpet, f_mode)
        if isinstance(f, int):
            return Errno(-f)
        self.file = f
        return Errno(0)

    def close(self) -> None:
        if self.file is not None and not any(v.file is self.file for v in self.mm.vmas):
            M.hpet_release(self.file)  # else the mappings hold it, as the kernel's VMAs do
        self.file = None

    def mmap(self, length, prot, flags, offset=0, addr=0) -> int:
        return M.do_mmap(self.mm, self.file, addr, length, prot, flags, offset, noexec=self.noexec)

    def reserve(self, length) -> int:
        return M.do_mmap(self.mm, None, 0, length, NONE, PRIVATE | M.MAP_ANONYMOUS, 0)

    def mremap(self, addr, old_len, new_len, flags, new_addr=0) -> int:
        return M.do_mremap(self.mm, addr, old_len, new_len, flags, new_addr)

    def munmap(self, addr, length) -> int:
        return M.do_munmap(self.mm, addr, length)

    def read_u64(self, addr) -> int:
        data = M.access_vm(self.mm, addr, 8)
        assert not isinstance(data, int), f"model: load at {addr:#x}: {Errno(-data)!r}"
        return int.from_bytes(data, "little")

    def vma(self, addr):
        """(start, end, perms, offset, VmFlags, is the hpet) of the VMA holding addr, or None."""
        v = M.vma_lookup(self.mm, addr)
        if v is None:
            return None
        return (v.start, v.end, M.show_map_perms(v), v.pgoff << M.PAGE_SHIFT if v.file else 0,
                M.smaps_vm_flags(v), v.file is not None and v.file.f_op is M.HPET_FOPS)


class KernelSide:
    """The running kernel's /dev/hpet, through the raw system calls."""

    name = "kernel"

    def __init__(self):
        self.fd = -1
        self.noexec = noexec(DEV)
        self.phys = _iomem_hpet()

    def open(self, flags: int) -> int:
        try:
            self.fd = os.open(DEV, flags)
        except OSError as e:
            return Errno(e.errno)
        return Errno(0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def mmap(self, length, prot, flags, offset=0, addr=0) -> int:
        return _sys(_SYS_MMAP, addr, length, prot, flags, self.fd, offset)

    def reserve(self, length) -> int:
        return _sys(_SYS_MMAP, 0, length, NONE, PRIVATE | M.MAP_ANONYMOUS, M.ULONG_MAX, 0)

    def mremap(self, addr, old_len, new_len, flags, new_addr=0) -> int:
        return _sys(_SYS_MREMAP, addr, old_len, new_len, flags, new_addr)

    def munmap(self, addr, length) -> int:
        return _sys(_SYS_MUNMAP, addr, length)

    def read_u64(self, addr) -> int:
        return ctypes.c_uint64.from_address(addr).value  # one 8-byte load

    def vma(self, addr):
        with open("/proc/self/smaps") as f:
            head = None
            for line in f:
                fields = line.split()
                if "-" in fields[0] and not fields[0].endswith(":"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    head = (start, end, fields[1], int(fields[2], 16), fields[5:] == [DEV]) if start <= addr < end else None
                elif head and fields[0] == "VmFlags:":
                    start, end, perms, offset, is_hpet = head
                    return start, end, perms, offset, set(fields[1:]) & set(M.VM_FLAG_MNEMONICS.values()), is_hpet
        return None


def _iomem_hpet() -> int | None:
    """The HPET block's physical address from /proc/iomem ("fed00000-fed003ff : HPET 0"), or None
    (not root: /proc/iomem shows zeros)."""
    try:
        with open("/proc/iomem") as f:
            for line in f:
                rng, _, name = line.strip().partition(" : ")
                if name.startswith("HPET"):
                    start = int(rng.split("-")[0], 16)
                    return start or None
    except OSError:
        pass
    return None


@pytest.fixture
def side(iommufd_target):
    """The target's HPET: the model's, or the kernel's /dev/hpet (a skip saying why it is not there)."""
    if iommufd_target == "model":
        s = ModelSide()
    else:
        if not os.path.exists(DEV):
            pytest.skip(f"no {DEV}: the kernel has no CONFIG_HPET, or the machine no HPET (QEMU's pc and q35 have one)")
        s = KernelSide()
    yield s
    s.close()


@pytest.fixture
def hpet(side):
    """The target's HPET opened read-only, its mmap known to work: a skip when the kernel's is disabled."""
    rc = side.open(os.O_RDONLY)
    if rc == errno.EBUSY:
        pytest.skip(f"{DEV}: every timer is open or reserved (hpet_open() -EBUSY, hpet.c:245; e.g. hpet=disable)")
    if rc == errno.EACCES and side.name == "kernel":
        pytest.skip(f"{DEV}: permission denied (run as root)")
    assert rc == 0
    probe = side.mmap(P, R, SHARED)
    if probe == -errno.EACCES:
        pytest.skip(f"{DEV}: HPET mmap is disabled (hpet_mmap=0 on the command line, or no CONFIG_HPET_MMAP_DEFAULT)")
    if probe == -errno.ENOSYS:
        pytest.skip(f"{DEV}: no CONFIG_HPET_MMAP, or the HPET block is not page-aligned (hpet_mmap_prepare() -ENOSYS)")
    assert probe > 0, Errno(-probe)
    assert side.munmap(probe, P) == 0
    return side


def _check_capability(side, cap: int) -> None:
    """The shape of the General Capabilities and ID register (HPET spec 2.3.4): a revision, at
    least 3 timers, a period of at most 100 ns (0x05F5E100 fs); vendor 0x8086 on QEMU."""
    assert cap != 0 and cap != M.ULONG_MAX, hex(cap)
    assert cap & 0xFF != 0, hex(cap)  # REV_ID
    assert (cap >> 8 & 0x1F) + 1 >= 3, hex(cap)  # NUM_TIM_CAP
    assert 0 < cap >> 32 <= 0x05F5E100, hex(cap)  # COUNTER_CLK_PERIOD
    if side.name == "model" or _on_qemu():
        assert cap >> 16 & 0xFFFF == 0x8086, hex(cap)  # VENDOR_ID


def _on_qemu() -> bool:
    """Whether the machine is QEMU's (DMI, else the CPU's hypervisor flag)."""
    for path in ("/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/bios_vendor"):
        try:
            with open(path) as f:
                if any(v in f.read() for v in ("QEMU", "SeaBIOS")):
                    return True
        except OSError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            return " hypervisor" in f.read()
    except OSError:
        return False


def _want(w):
    """A case's expectation: one value, or {series: value} where the series differ."""
    return w.get(TARGET_SERIES, w["7.2"]) if isinstance(w, dict) else w


# ---------------------------------------------------------------------------------------------
# open


@pytest.mark.parametrize("flags, want", [
    (os.O_RDONLY, 0),
    (os.O_RDWR, errno.EINVAL),  # hpet_open(): FMODE_WRITE (hpet.c:230)
    (os.O_WRONLY, errno.EINVAL),
], ids=["O_RDONLY", "O_RDWR", "O_WRONLY"])
def test_open(side, flags, want):
    rc = side.open(flags)
    if rc == errno.EBUSY and want == 0:
        pytest.skip(f"{DEV}: every timer is open or reserved (hpet_open() -EBUSY, hpet.c:245; e.g. hpet=disable)")
    assert rc == want


# ---------------------------------------------------------------------------------------------
# mmap: length, offset, MAP_*, PROT_*


def _expected_vm_flags(prot, flags, noexec):
    """smaps' VmFlags of a successful mapping of an O_RDONLY /dev/hpet: do_mmap()'s (no VM_SHARED
    or VM_MAYWRITE for a shared mapping of a file not open for writing, mm/mmap.c) plus
    VMA_REMAP_FLAGS (io pf de dd: remap_pfn_range_prepare(), mm/memory.c:3153); a private
    writable one is accounted (ac: accountable_mapping(), mm/vma.c); MAP_SYNC gives VM_SYNC (sf)
    before MAP_SHARED drops the flag (mm/mmap.c:402, :445)."""
    want = {"mr", "io", "pf", "de", "dd"} | ({"rd"} if prot & R else set()) | ({"wr"} if prot & W else set()) | (
        {"ex"} if prot & X else set()) | (set() if noexec else {"me"})
    private = flags & M.MAP_TYPE == PRIVATE
    return want | ({"mw"} if private else {"ms"}) | ({"ac"} if private and prot & W else set()) | (
        {"sf"} if flags & M.MAP_SYNC else set())


MMAP_CASES = [
    # id, length, prot, flags, offset, errno
    ("one-page", P, R, SHARED, 0, 0),
    ("two-pages", 2 * P, R, SHARED, 0, errno.EINVAL),  # __simple_ioremap_prep(): 2 pages > 1 (memory.c:3254)
    ("half-page", P // 2, R, SHARED, 0, 0),  # do_mmap() page-aligns the length up
    ("one-byte", 1, R, SHARED, 0, 0),
    ("zero-length", 0, R, SHARED, 0, errno.EINVAL),  # do_mmap(): !len
    ("offset-page", P, R, SHARED, P, errno.EINVAL),  # vm_pgoff 1: no page left
    ("offset-2-pages", P, R, SHARED, 2 * P, errno.EINVAL),  # vm_pgoff 2 > pages 1
    ("half-page-offset-page", P // 2, R, SHARED, P, errno.EINVAL),
    ("offset-odd", P, R, SHARED, 1, errno.EINVAL),  # ksys_mmap_pgoff() on x86: offset & ~PAGE_MASK
    ("offset-page-plus-odd", P, R, SHARED, P + 1, errno.EINVAL),
    ("private", P, R, PRIVATE, 0, 0),
    ("shared-exec", P, R | X, SHARED, 0, 0),
    ("private-exec", P, R | X, PRIVATE, 0, 0),
    ("shared-write", P, W, SHARED, 0, errno.EACCES),  # do_mmap(): PROT_WRITE, no FMODE_WRITE
    ("shared-read-write", P, R | W, SHARED, 0, errno.EACCES),
    ("private-read-write", P, R | W, PRIVATE, 0, 0),  # a COW mapping of the PFN: pgoff = pfn
    ("shared-none", P, NONE, SHARED, 0, 0),
    ("shared-validate", P, R, VALIDATE, 0, 0),
    ("shared-validate-sync", P, R, VALIDATE | M.MAP_SYNC, 0, errno.EOPNOTSUPP),  # no FOP_MMAP_SYNC
    ("shared-sync-ignored", P, R, SHARED | M.MAP_SYNC, 0, 0),  # MAP_SHARED drops unknown flags
    ("growsdown", P, R, PRIVATE | M.MAP_GROWSDOWN, 0, errno.EINVAL),
    ("map-type-0", P, R, 0, 0, errno.EINVAL),
]


@pytest.mark.parametrize("length, prot, flags, offset, want", [c[1:] for c in MMAP_CASES],
                         ids=[c[0] for c in MMAP_CASES])
def test_mmap(hpet, length, prot, flags, offset, want):
    if prot & X and hpet.noexec:
        want = errno.EPERM  # do_mmap(): pathnoexec()
    addr = hpet.mmap(length, prot, flags, offset)
    if want:
        assert Errno(-addr if addr < 0 else 0) == want
        return
    assert addr > 0, Errno(-addr)
    try:
        start, end, perms, pgoff, vm_flags, is_hpet = hpet.vma(addr)
        private = flags & M.MAP_TYPE == PRIVATE
        assert (start, end - start, is_hpet) == (addr, P, True)
        assert perms == "".join(c if prot & b else "-" for c, b in (("r", R), ("w", W), ("x", X))) + (
            "p" if private else "s")
        # a private mapping is a COW mapping: remap_pfn_range_prepare() -> get_remap_pgoff()
        # (memory.c:3005) makes its pgoff the pfn; a shared one keeps the file offset, 0
        if not private:
            assert pgoff == 0
        elif hpet.phys is not None:
            assert pgoff == hpet.phys
        assert vm_flags == _expected_vm_flags(prot, flags, hpet.noexec)
        if prot & R:
            cap = hpet.read_u64(addr)
            _check_capability(hpet, cap)
            assert hpet.read_u64(addr) == cap  # a constant register, through an uncached mapping
    finally:
        assert hpet.munmap(addr, length) == 0
    assert hpet.vma(addr) is None or not hpet.vma(addr)[5]


# ---------------------------------------------------------------------------------------------
# mremap and munmap of a mapping made


@pytest.fixture
def layout(hpet):
    """(side, base, cap): the hpet page at base, anonymous PROT_NONE pages to base + SLOTS pages
    but a hole at base + HOLE; everything in the reservation is unmapped afterwards."""
    base = hpet.reserve(SLOTS * P)
    assert base > 0, Errno(-base)
    try:
        assert hpet.munmap(base + HOLE, P) == 0
        yield hpet, base
    finally:
        hpet.munmap(base, SLOTS * P)


def _hpet_at(side, base) -> list[int]:
    """Where in the reservation (offsets from base) the hpet's VMAs start."""
    out = []
    for off in range(0, SLOTS * P, P):
        v = side.vma(base + off)
        if v is not None and v[5] and v[0] == base + off:
            out.append(off)
    return out


def _map_hpet(side, base, flags):
    addr = side.mmap(P, R, flags | M.MAP_FIXED, 0, base)
    assert addr == base, Errno(-addr) if addr < 0 else hex(addr)
    cap = side.read_u64(base)
    _check_capability(side, cap)
    return cap


OK = "ok"  # the call answers an address (where, in want_at) or 0

MREMAP_CASES = [
    # id, (addr, old_len, new_len, flags, new_addr) relative to base (new_addr None: 0), then the
    # errno or OK and where the hpet page is afterwards
    ("same-size", (0, P, P, 0, None), OK, [0]),
    ("same-size-maymove", (0, P, P, MAYMOVE, None), OK, [0]),  # MREMAP_NO_RESIZE: nothing moves
    ("shrink-to-half-page", (0, P, P // 2, 0, None), OK, [0]),  # page-aligned: the same size
    ("shrink-to-zero", (0, P, 0, 0, None), errno.EINVAL, [0]),  # check_mremap_params(): !new_len
    # a shrink in place is not checked against the VMA (check_prep_vma() returns at
    # mremap.c:1794): shrink_vma() (:1444) unmaps [addr + P, addr + 2P), the neighbour page
    ("shrink-2-pages-to-1", (0, 2 * P, P, 0, None), OK, [0]),
    # the same size without a new address returns before the range is looked at (mremap.c:1794)
    ("same-size-past-the-vma", (0, 2 * P, 2 * P, MAYMOVE, None), OK, [0]),
    ("grow-to-2-pages", (0, P, 2 * P, 0, None), errno.EFAULT, [0]),  # check_prep_vma(): VM_PFNMAP (mremap.c:1854)
    ("grow-maymove", (0, P, 2 * P, MAYMOVE, None), errno.EFAULT, [0]),
    ("grow-fixed", (0, P, 2 * P, MAYMOVE | FIXED, DEST), errno.EFAULT, [0]),
    ("grow-half-page", (0, P // 2, P + P // 2, 0, None), errno.EFAULT, [0]),
    ("move-fixed", (0, P, P, MAYMOVE | FIXED, DEST), OK, [DEST]),
    ("move-fixed-half-page", (0, P // 2, P // 2, MAYMOVE | FIXED, DEST), OK, [DEST]),
    ("move-fixed-into-hole", (0, P, P, MAYMOVE | FIXED, HOLE), OK, [HOLE]),
    ("move-fixed-with-neighbour", (0, 2 * P, 2 * P, MAYMOVE | FIXED, DEST), {"7.2": OK, "6.12": errno.EFAULT},
     {"7.2": [DEST], "6.12": [0]}),  # 7.2: remap_move() (mremap.c:1923) moves both VMAs; 6.12:
    # vma_to_resize() (6.12 mremap.c:909) refuses a range past the VMA's end
    ("fixed-without-maymove", (0, P, P, FIXED, DEST), errno.EINVAL, [0]),
    ("fixed-onto-itself", (0, P, P, MAYMOVE | FIXED, 0), errno.EINVAL, [0]),  # vrm_overlaps()
    ("fixed-overlapping", (0, 2 * P, 2 * P, MAYMOVE | FIXED, P), errno.EINVAL, [0]),
    ("fixed-unaligned", (0, P, P, MAYMOVE | FIXED, DEST + 1), errno.EINVAL, [0]),
    ("dontunmap", (0, P, P, MAYMOVE | DONTUNMAP, None), errno.EINVAL, [0]),  # VM_PFNMAP (mremap.c:1814)
    ("dontunmap-fixed", (0, P, P, MAYMOVE | DONTUNMAP | FIXED, DEST), errno.EINVAL, [0]),
    ("duplicate", (0, 0, P, MAYMOVE, None), errno.EFAULT, [0]),  # old_len 0 of a VM_MAYSHARE VMA
    ("unaligned-addr", (1, P, P, MAYMOVE | FIXED, DEST), errno.EINVAL, [0]),
    ("unknown-flag", (0, P, P, 8, None), errno.EINVAL, [0]),
    ("no-vma-grow", (HOLE, P, 2 * P, 0, None), errno.EFAULT, [0]),  # check_prep_vma(): !vma
    ("no-vma-move", (HOLE, P, P, MAYMOVE | FIXED, DEST), errno.EFAULT, [0]),  # remap_move(): no VMA
]


@pytest.mark.parametrize("flags", [SHARED, PRIVATE], ids=["shared", "private"])
@pytest.mark.parametrize("call, want, want_at", [c[1:] for c in MREMAP_CASES], ids=[c[0] for c in MREMAP_CASES])
def test_mremap(layout, flags, call, want, want_at):
    side, base = layout
    cap = _map_hpet(side, base, flags)
    rel, old_len, new_len, mflags, new_rel = call
    want, want_at = _want(want), _want(want_at)
    if call[0:3] == (0, 0, P) and flags == PRIVATE:
        want = errno.EINVAL  # duplicating a private mapping (mremap.c:1808)
    new_addr = 0 if new_rel is None else base + new_rel
    res = side.mremap(base + rel, old_len, new_len, mflags, new_addr)
    if want == OK:
        assert res >= 0, Errno(-res)
        assert res - base == want_at[0]
    else:
        assert Errno(-res if res < 0 else 0) == want
    assert _hpet_at(side, base) == want_at
    if call == (0, 2 * P, P, 0, None):
        assert side.vma(base + P) is None  # the neighbour went with the shrink
    at = base + want_at[0]
    start, end, perms, pgoff, vm_flags, _ = side.vma(at)
    assert (end - start, perms) == (P, "r--" + ("p" if flags == PRIVATE else "s"))
    assert {"io", "pf", "de", "dd"} <= vm_flags
    assert side.read_u64(at) == cap  # the PFN moved with the VMA


MUNMAP_CASES = [
    # id, (start, length) relative to base, errno, whether the hpet page is still mapped
    ("whole-page", (0, P), 0, False),
    ("one-byte", (0, 1), 0, False),  # the length is page-aligned up: the whole page
    ("half-page", (0, P // 2), 0, False),
    ("page-and-neighbour", (0, 2 * P), 0, False),
    ("past-it", (P, P), 0, True),
    ("hole-only", (HOLE, P), 0, True),  # nothing mapped there: still 0
    ("inside-unaligned", (P // 2, P // 2), errno.EINVAL, True),  # do_vmi_munmap(): offset_in_page(start)
    ("zero-length", (0, 0), errno.EINVAL, True),
]


@pytest.mark.parametrize("flags", [SHARED, PRIVATE], ids=["shared", "private"])
@pytest.mark.parametrize("call, want, stays", [c[1:] for c in MUNMAP_CASES], ids=[c[0] for c in MUNMAP_CASES])
def test_munmap(layout, flags, call, want, stays):
    side, base = layout
    cap = _map_hpet(side, base, flags)
    rel, length = call
    assert Errno(-side.munmap(base + rel, length)) == want
    assert _hpet_at(side, base) == ([0] if stays else [])
    if stays:
        assert side.read_u64(base) == cap


def test_mremap_then_munmap(layout):
    """A moved mapping is an ordinary mapping of the page: it shrinks in place (to the same page),
    refuses to grow, moves again, and munmap() removes it."""
    side, base = layout
    cap = _map_hpet(side, base, SHARED)
    assert side.mremap(base, P, P, MAYMOVE | FIXED, base + DEST) == base + DEST
    assert side.mremap(base + DEST, P, P // 2, 0) == base + DEST
    assert side.mremap(base + DEST, P, 2 * P, MAYMOVE) == -errno.EFAULT
    assert side.mremap(base + DEST, P, P, MAYMOVE | FIXED, base + P) == base + P
    assert _hpet_at(side, base) == [P]
    assert side.read_u64(base + P) == cap
    assert side.munmap(base + P, 1) == 0
    assert _hpet_at(side, base) == []
