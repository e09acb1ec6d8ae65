"""The C library calls the project makes through ctypes, declared once.

process_vm_readv/writev (copy_from_user / copy_to_user for the model), capget (capable()),
ioctl with a 64-bit argument (a real /dev/iommu), mmap/munmap (user memory with holes).
"""
from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_VM_ARGS = [ctypes.c_int, ctypes.POINTER(Iovec), ctypes.c_ulong, ctypes.POINTER(Iovec), ctypes.c_ulong,
            ctypes.c_ulong]
for _fn in (libc.process_vm_readv, libc.process_vm_writev):
    _fn.restype = ctypes.c_ssize_t
    _fn.argtypes = _VM_ARGS
process_vm_readv = libc.process_vm_readv
process_vm_writev = libc.process_vm_writev

libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
libc.ioctl.restype = ctypes.c_int
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def errno_error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def ioctl(fd: int, request: int, arg: int) -> int:
    """ioctl(2) with an unsigned long argument (fcntl.ioctl takes an int as a C int)."""
    rc = libc.ioctl(fd, request, arg)
    if rc < 0:
        raise errno_error()
    return rc


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def effective_caps(pid: int) -> int:
    """The effective capability set of process `pid` as a bit mask (capget(2)); 0 if unknown."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    if libc.capget(hdr, data) != 0:
        return 0
    return data[0].effective | (data[1].effective << 32)


class Mapping:
    """A mapping that mmap(2) made in this process: what `fd.mmap()` answers on every target.
    read/write go through the mapping itself (a page the caller cannot touch faults, as it
    would in C); munmap() removes it (once)."""

    def __init__(self, addr: int, length: int):
        self.addr = addr
        self.length = length

    def _check(self, offset: int, n: int) -> None:
        if self.addr is None:
            raise ValueError("mapping already unmapped")
        if offset < 0 or n < 0 or offset + n > self.length:
            raise ValueError(f"[{offset:#x}, {offset + n:#x}) is outside the mapping of {self.length:#x} bytes")

    def read(self, offset: int, n: int) -> bytes:
        self._check(offset, n)
        return ctypes.string_at(self.addr + offset, n)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        ctypes.memmove(self.addr + offset, data, len(data))

    def u32(self, offset: int) -> int:
        return int.from_bytes(self.read(offset, 4), "little")

    def set_u32(self, offset: int, value: int) -> None:
        self.write(offset, value.to_bytes(4, "little"))

    def munmap(self) -> None:
        if self.addr is not None:
            if libc.munmap(self.addr, self.length) != 0:
                raise errno_error()
            self.addr = None

    close = munmap

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.munmap()


MAP_FAILED = ctypes.c_void_p(-1).value


def mmap(fd: int, length: int, prot: int, flags: int, offset: int, addr: int = 0) -> Mapping:
    """mmap(2) of descriptor `fd`; OSError with the system call's errno."""
    va = libc.mmap(addr or None, length, prot, flags, fd, offset)
    if va is None or va == MAP_FAILED:
        raise errno_error()
    return Mapping(va, length)


_SYS_PIDFD_GETFD = 438  # x86_64; the pidfd_open(2) number Python uses is the same table's 434
libc.syscall.restype = ctypes.c_long


def pidfd_getfd(pid: int, fd: int) -> int | None:
    """pidfd_getfd(2): a descriptor of this process for `fd` of process `pid` (the same open
    file), or None when the process or its descriptor is gone or may not be read."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        n = libc.syscall(ctypes.c_long(_SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
        return n if n >= 0 else None
    finally:
        os.close(pidfd)
