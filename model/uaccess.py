"""copy_from_user / copy_to_user for the model: the memory of the calling task, by pid.

process_vm_readv / process_vm_writev (mm/process_vm_access.c) read and write another
(or our own) process's memory and fail with EFAULT on an unmapped address instead of
faulting, which is what the kernel's uaccess helpers give an ioctl. A partial copy is a
fault too (copy_from_user returns the bytes left); `read_partial` tells how far it got.
"""
from __future__ import annotations

import ctypes
import errno
import os

from model.libc import Iovec, process_vm_readv, process_vm_writev
from model.limits import U64_MAX
from model.objects import IommufdError


class UserFault(OSError):
    def __init__(self):
        super().__init__(errno.EFAULT, os.strerror(errno.EFAULT))


def _xfer(fn, pid: int, addr: int, buf, n: int) -> int:
    """Bytes moved (may be short); UserFault for an address range outside the user space."""
    if n == 0:
        return 0
    if addr <= 0 or addr + n - 1 > U64_MAX:
        raise UserFault()
    local = Iovec(ctypes.cast(buf, ctypes.c_void_p), n)
    remote = Iovec(addr, n)
    done = fn(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):
            # Not a bad pointer: this kernel or sandbox refuses the syscall itself.
            raise RuntimeError(
                f"process_vm_readv/writev on pid {pid}: {os.strerror(err)}; the model needs them "
                "(CONFIG_CROSS_MEMORY_ATTACH, ptrace access to the pid)")
        return 0
    return done


def mm_alive(pid: int) -> bool:
    """mmget_not_zero() of process `pid`'s mm: false once the process has exited (exit_mm()
    drops mm_users before the task is a zombie). A one-byte process_vm_readv of address 0
    answers ESRCH for a task that is gone or has no mm (process_vm_rw_core() looks the task
    and its mm up before any page), EFAULT for a live one."""
    if process_vm_readv(pid, _PROBE_LOCAL, 1, _PROBE_REMOTE, 1, 0) >= 0:
        return True
    return ctypes.get_errno() != errno.ESRCH


_PROBE_BUF = ctypes.create_string_buffer(1)  # what address 0 holds, where it is mapped: unused
_PROBE_LOCAL = ctypes.byref(Iovec(ctypes.cast(_PROBE_BUF, ctypes.c_void_p), 1))
_PROBE_REMOTE = ctypes.byref(Iovec(0, 1))


class UserMemory:
    """The address space of process `pid` (an mm)."""

    __slots__ = ("pid",)

    def __init__(self, pid: int):
        self.pid = pid

    def read_partial(self, addr: int, n: int) -> bytes:
        """Up to n bytes at addr: as many as are readable from its start."""
        buf = ctypes.create_string_buffer(n)
        done = _xfer(process_vm_readv, self.pid, addr, buf, n)
        return buf.raw[:done]

    def read(self, addr: int, n: int) -> bytes:
        """copy_from_user: n bytes at addr, or EFAULT."""
        data = self.read_partial(addr, n)
        if len(data) != n:
            raise UserFault()
        return data

    def write(self, addr: int, data: bytes) -> None:
        """copy_to_user: data at addr, or EFAULT."""
        n = len(data)
        buf = ctypes.create_string_buffer(bytes(data), n)
        if _xfer(process_vm_writev, self.pid, addr, buf, n) != n:
            raise UserFault()


class BouncedMemory(UserMemory):
    """The Python client's memory: the fcntl.ioctl bounce buffer lives in this process and is
    known to be mapped, so it is copied directly; every other address goes through
    process_vm_readv/writev like any user pointer."""

    __slots__ = ("lo", "hi")

    def __init__(self, pid: int, lo: int, n: int):
        super().__init__(pid)
        self.lo, self.hi = lo, lo + n

    def read_partial(self, addr: int, n: int) -> bytes:
        if self.lo <= addr and addr + n <= self.hi:
            return ctypes.string_at(addr, n)
        return super().read_partial(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        if self.lo <= addr and addr + len(data) <= self.hi:
            ctypes.memmove(addr, data, len(data))
            return
        super().write(addr, data)


_ZERO_CHUNK = 1 << 16


def check_zeroed_user(mem, addr: int, size: int) -> None:
    """check_zeroed_user() (lib/usercopy.c) for copy_struct_from_user(): the tail in bounded
    pieces, page by page: E2BIG at the first nonzero byte, EFAULT where a read stops short."""
    end = addr + size
    while addr < end:
        n = min(end - addr, _ZERO_CHUNK - (addr % _ZERO_CHUNK))
        got = mem.read_partial(addr, n)
        if got.count(0) != len(got):
            raise IommufdError(errno.E2BIG)
        if len(got) < n:
            raise IommufdError(errno.EFAULT)
        addr += n


def copy_struct_from_user(mem, cls, uptr: int, usize: int):
    """copy_struct_from_user() (include/linux/uaccess.h): `cls` (a ctypes struct) from usize
    bytes at uptr: a longer user struct must have a zero tail (E2BIG, EFAULT), a shorter one is
    zero-extended; a fault is EFAULT."""
    ksize = ctypes.sizeof(cls)
    if usize > ksize:
        check_zeroed_user(mem, uptr + ksize, usize - ksize)
    n = min(ksize, usize)
    try:
        data = mem.read(uptr, n) if n else b""
    except UserFault:
        raise IommufdError(errno.EFAULT) from None
    return cls.from_buffer_copy(data.ljust(ksize, b"\0"))


def copy_from_user(mem, uptr: int, n: int) -> bytes:
    """copy_from_user(): n bytes at uptr, or EFAULT."""
    try:
        return mem.read(uptr, n) if n else b""
    except UserFault:
        raise IommufdError(errno.EFAULT) from None


def copy_to_user(mem, uptr: int, data: bytes) -> None:
    """copy_to_user(): data at uptr, or EFAULT."""
    try:
        mem.write(uptr, data)
    except UserFault:
        raise IommufdError(errno.EFAULT) from None


_CLEAR_CHUNK = 1 << 16


def clear_user(mem, addr: int, n: int) -> None:
    """clear_user(): n zero bytes at addr, in bounded pieces (a length of gigabytes costs what
    the caller's mapping allows, not a buffer that size); EFAULT where the writes stop."""
    zeros = bytes(min(n, _CLEAR_CHUNK))
    end = addr + n
    while addr < end:
        k = min(end - addr, _CLEAR_CHUNK - addr % _CLEAR_CHUNK)
        copy_to_user(mem, addr, zeros[:k])
        addr += k
