"""The C library calls the project makes through ctypes, declared once.

process_vm_readv/writev (copy_from_user / copy_to_user for the model), capget (capable()),
ioctl with a 64-bit argument (a real /dev/iommu), mmap/munmap (user memory with holes).
"""
from __future__ import annotations

import ctypes
import mmap as _mmap
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


class _PyBuffer(ctypes.Structure):  # Py_buffer (Include/pybuffer.h)
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_GetBuffer.restype = ctypes.c_int
_ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
_ReleaseBuffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_ReleaseBuffer.restype = None


class Mapping(_mmap.mmap):
    """A mapping that mmap(2) made in this process: what `fd.mmap()` answers on every target.

    It is a `mmap.mmap` (a subclass), so it behaves as one: the buffer protocol (memoryview(m),
    writable unless the mapping is read-only), m[i] (an int), m[a:b] and slice assignment,
    len(m) (the length asked for), read(n) / write(b) / seek() / tell() at the object's
    position, find(), flush(), close() (munmap; later access raises ValueError, and close()
    with a memoryview still exported raises BufferError), the context manager and `closed`.
    On top: `addr` (the mapping's address), u32(offset) / set_u32(offset, value), and
    munmap() (close()'s other name). A page the caller cannot touch faults, as in C.

    Made by mmap.mmap(fd, ...) itself where the file is a real descriptor (the kernel, and
    through the preload library the server's model; like any mmap.mmap it keeps a duplicate of
    the descriptor until close(), where the kernel's VMA holds the file anyway), or on the
    model in process as an anonymous reservation the model then maps its driver's pages over
    (model/file.py). Where it differs: flush() of a writable mapping is msync(MS_SYNC), EINVAL
    on the kernel (iommufd's file has no fsync) and 0 on the model (its pages are a memfd's)."""

    _on_close = None  # called with the length once close() has unmapped (conformance/repro.py records it)

    @property
    def addr(self) -> int:
        """The mapping's start address (ValueError once closed)."""
        view = _PyBuffer()
        if _GetBuffer(self, ctypes.byref(view), 0) != 0:
            raise ValueError("mmap closed or invalid")
        try:
            return view.buf
        finally:
            _ReleaseBuffer(ctypes.byref(view))

    @property
    def length(self) -> int:
        return len(self)

    def u32(self, offset: int) -> int:
        return int.from_bytes(self[offset:offset + 4], "little")

    def set_u32(self, offset: int, value: int) -> None:
        self[offset:offset + 4] = value.to_bytes(4, "little")

    def close(self) -> None:
        hook, n = (self._on_close, len(self)) if self._on_close is not None and not self.closed else (None, 0)
        super().close()
        if hook is not None:
            self._on_close = None
            hook(n)

    munmap = close

    def __exit__(self, *exc):
        self.close()


MAP_FAILED = ctypes.c_void_p(-1).value


def mmap(fd: int, length: int, prot: int, flags: int, offset: int) -> Mapping:
    """mmap(NULL, length, prot, flags, fd, offset): a Mapping; OSError with the system call's
    errno (ValueError for a negative length or offset, as mmap.mmap says)."""
    return Mapping(fd, length, flags, prot, offset=offset)


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
