"""copy_from_user / copy_to_user for the model: user memory of a process, by pid.

process_vm_readv / process_vm_writev (mm/process_vm_access.c) read and write another
(or our own) process's memory and fail with EFAULT on an unmapped address instead of
faulting, which is what the kernel's uaccess helpers give an ioctl.
"""
from __future__ import annotations

import ctypes
import errno
import os


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_ARGS = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.argtypes = _ARGS
_libc.process_vm_writev.argtypes = _ARGS
_U64 = (1 << 64) - 1


class UserFault(OSError):
    def __init__(self):
        super().__init__(errno.EFAULT, os.strerror(errno.EFAULT))


class UserMemory:
    """The address space of process `pid` (default: this one)."""

    def __init__(self, pid: int | None = None):
        self._pid = pid

    @property
    def pid(self) -> int:
        """The fixed pid, or the caller's: uaccess goes to current->mm, and after fork()
        the child calling ioctl() on an inherited fd is current."""
        return os.getpid() if self._pid is None else self._pid

    def _xfer(self, fn, addr: int, buf, n: int) -> None:
        if n == 0:
            return
        if addr < 0 or addr + n - 1 > _U64 or addr == 0:
            raise UserFault()
        local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), n)
        remote = _Iovec(addr, n)
        done = fn(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if done != n:  # a partial copy is a fault too (copy_from_user returns the rest)
            if done < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
                # Not a bad pointer: this kernel or sandbox refuses the syscall itself.
                raise RuntimeError(
                    f"process_vm_readv/writev on pid {self.pid}: {os.strerror(ctypes.get_errno())}; "
                    "the model needs them (CONFIG_CROSS_MEMORY_ATTACH, ptrace access to the pid)"
                )
            raise UserFault()

    def read(self, addr: int, n: int) -> bytes:
        """copy_from_user: n bytes at addr, or EFAULT."""
        buf = ctypes.create_string_buffer(n)
        self._xfer(_libc.process_vm_readv, addr, buf, n)
        return buf.raw

    def write(self, addr: int, data: bytes) -> None:
        """copy_to_user: data at addr, or EFAULT."""
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        self._xfer(_libc.process_vm_writev, addr, buf, len(data))
