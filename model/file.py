"""An open /dev/iommu for Python callers: `fd.ioctl(request, arg)` like fcntl.ioctl(fd, request,
arg, mutate_flag). This is the Python client's contract; the core (model/main.py) takes a task
and an address, as a server for other processes will call it.

Arguments, as CPython's fcntl.ioctl (Modules/fcntlmodule.c) takes them:
- a writable buffer (bytearray, array.array, mmap, numpy array, ctypes object, memoryview):
  with mutate_flag, one of up to IOCTL_BUFSZ bytes is copied into a bounce buffer, the kernel
  sees that copy, and it is copied back afterwards (writes aimed at the caller's buffer itself
  are lost); a longer one is passed in place; the result is the ioctl's return value. Without
  mutate_flag the copy's bytes are returned and the buffer is left alone.
- a read-only buffer (bytes, a read-only memoryview) or str: copied (at most IOCTL_BUFSZ
  bytes, else ValueError), the copy's bytes returned;
- an int: the argument as it is (a user address; fcntl would take a C int, the model the whole
  64-bit value, as the ioctl system call does).
The caller is this process when ioctl() is called. Failure raises OSError with the kernel's errno.

Like a file, one IommufdFile may be used from several threads: each ioctl runs whole under the
context's lock (as the kernel's locks make it atomic on the objects it touches); close() waits
for the ioctl in flight, and an ioctl after it answers EBADF. After fork() a real file is shared
by parent and child; the model's state lives in the parent's memory, so the child's use of an
inherited model file answers ENOSYS ("not modelled") instead of diverging silently.

A descriptor: `fileno()` is a real one that stands for the file (an empty memfd made at open and
closed at close), so calls that take an iommufd by number (VFIO_DEVICE_BIND_IOMMUFD,
model/vfio) find the context as iommufd_ctx_from_fd() does: fget() of the number in the
caller's table (/proc/PID/fd for another process), then the file's inode looked up among the
open model contexts (EBADFD for any other file). A driver that took the file keeps the context
(iommufd_ctx_put() drops it): close() then releases it only with the last reference. What the
model cannot see is a dup() of the descriptor: the context goes with close() of this object
(and its driver references), whatever copies of the number are left.

`fcntl_ioctl()` is the argument contract above, shared with the other model files that take
ioctls (model/vfio's device file).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import weakref

from model import libc, vfs
from model.libc import Mapping
from model.main import IommufdCtx, iommufd_fops_open
from model import outcomes
from model.objects import IommufdError, NotModelled
from model.task import Accounts, Task
from model.uaccess import BouncedMemory, UserFault

IOCTL_BUFSZ = 1024  # CPython's fcntl.ioctl bounce buffer
MAP_FIXED = 0x10  # <sys/mman.h> (Python's mmap module does not export it)
MAP_NORESERVE = 0x4000


class IommufdFile:
    """An open /dev/iommu: ioctl() like fcntl.ioctl(fd, request, arg, mutate_flag)."""

    def __init__(self, pid: int | None = None, accounts: Accounts | None = None):
        self._pid = pid  # whose memory user pointers address; None: the calling process
        self._owner = os.getpid()  # the process whose memory holds this file's state
        try:
            self.ictx: IommufdCtx | None = iommufd_fops_open(_current_task(os.getpid()), accounts)
        except IommufdError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        self.f_flags = vfs.FileFlags()
        self._fd_box = [_register(self.ictx)]
        # a file dropped without close() gives its descriptor back when collected (the context
        # is not released: only close() releases it)
        weakref.finalize(self, _file_dropped, self._fd_box, self.ictx)

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True):
        return fcntl_ioctl(self._call, request, arg, mutate_flag)

    def fileno(self) -> int:
        """The descriptor that stands for this file (EBADF once closed, as a closed file's
        number would be)."""
        if self._fd_box[0] < 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._fd_box[0]

    def _call(self, cmd: int, addr: int, bounce) -> int:
        """sys_ioctl(): the file, do_vfs_ioctl(), then the driver under the context's lock."""
        ictx = self.ictx
        if ictx is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        try:
            if os.getpid() != self._owner:
                raise NotModelled("a model /dev/iommu inherited across fork() (its state is not shared "
                                  "with the parent)")
            task = caller_task(self._owner, self._pid, addr, bounce, "a model /dev/iommu")
            rc = vfs.do_vfs_ioctl(self.f_flags, task, cmd, addr)
            if rc is not None:
                outcomes.record(cmd, 0)
                return rc
            with ictx.lock:
                if ictx.released:  # closed while this call waited: the fd is gone
                    raise IommufdError(errno.EBADF)
                return ictx.ioctl(task, cmd, addr)
        except IommufdError as e:
            if not getattr(e, "recorded", False):  # the file's and the VFS's own answers
                outcomes.record(cmd, e.errno, e)
            raise OSError(e.errno, os.strerror(e.errno)) from None
        except NotModelled as e:
            if not getattr(e, "recorded", False):
                outcomes.record(cmd, e.errno, e)
            raise
        except UserFault:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT)) from None

    def mmap(self, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE, flags: int = mmap.MAP_SHARED,
             offset: int = 0) -> Mapping:
        """mmap(2) of the file, as the system call does it (model/mm.py): do_mmap()'s checks and
        flags, a VMA (a real reservation in this process), the driver's hook iommufd_fops_mmap()
        (model/main.py), and the PFNs it remapped made real: each is a page a model driver
        allocated (model/memory.py KernelPages), mapped shared at its place in the VMA, so the
        caller and the model's driver see the same memory. OSError with the kernel's errno."""
        from model import mm
        from model.main import iommufd_mmap_region, mmap_catch_up

        ictx = self.ictx
        if ictx is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if os.getpid() != self._owner or (self._pid is not None and self._pid != self._owner):
            raise NotModelled("mmap() of a model file inherited by another process (the server maps for it)")
        noexec = bool(os.statvfs("/dev").f_flag & os.ST_NOEXEC)  # where /dev/iommu lives
        vm_flags = mm.do_mmap_checks(length, prot, flags, offset, mm.FMODE_READ | mm.FMODE_WRITE, noexec=noexec)
        if vm_flags < 0:
            raise OSError(-vm_flags, os.strerror(-vm_flags))
        size = mm.PAGE_ALIGN(length)
        # the VMA's place: an anonymous reservation that is already the Mapping (a mmap.mmap),
        # with the caller's prot so that its access mode (read-only or not) is the mapping's
        m = Mapping(-1, length, mmap.MAP_PRIVATE | MAP_NORESERVE, prot)
        start = m.addr
        try:
            with ictx.lock:
                if ictx.released:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                try:
                    pieces = iommufd_mmap_region(ictx, os.getpid(), start, size, offset, vm_flags)
                except IommufdError as e:
                    outcomes.record(outcomes.MMAP, e.errno, e)
                    raise OSError(e.errno, os.strerror(e.errno)) from None
                outcomes.record(outcomes.MMAP, 0)
                for addr, n, fd, off in pieces:  # the PTEs, made real
                    if libc.libc.mmap(addr, n, prot, mmap.MAP_SHARED | MAP_FIXED, fd, off) != addr:
                        err = libc.errno_error()
                        m.close()
                        mmap_catch_up(ictx)  # the VMA goes before anyone saw it (vma close)
                        raise err
        except BaseException:
            m.close()
            raise
        return m

    def close(self) -> None:
        """close(): iommufd_fops_release() once the ioctl in flight (if any) is done. In a forked
        child the parent's state is left alone."""
        ictx, self.ictx = self.ictx, None
        close_box(self._fd_box)
        if ictx is not None and os.getpid() == self._owner:
            iommufd_ctx_put(ictx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def close_box(box: list) -> None:
    """Close the descriptor in a one-item list once (a file's close() and its finalizer share it)."""
    fd, box[0] = box[0], -1
    if fd >= 0:
        os.close(fd)


def fcntl_ioctl(call, request: int, arg, mutate_flag: bool = True):
    """fcntl.ioctl(fd, request, arg, mutate_flag)'s handling of `arg` (Modules/fcntlmodule.c, the
    module docstring above): `call(cmd, addr, bounce)` makes the system call with the command,
    the user address of the argument, and the bounce buffer it lives in (None: the caller's own
    memory, or an int argument)."""
    if isinstance(arg, int):
        return call(request & 0xFFFFFFFF, arg, None)
    try:
        view = memoryview(arg)
    except TypeError:
        if not isinstance(arg, str):
            raise TypeError("ioctl argument must be an int or a buffer, "
                            f"not {type(arg).__name__}") from None
        view = memoryview(arg.encode())
    with view:
        n = view.nbytes
        if view.readonly or not mutate_flag:
            if n > IOCTL_BUFSZ:
                raise ValueError("ioctl string arg too long")
            bounce = ctypes.create_string_buffer(view.tobytes(), IOCTL_BUFSZ + 1)
            call(request & 0xFFFFFFFF, ctypes.addressof(bounce), bounce)
            return bounce.raw[:n]
        user = (ctypes.c_char * n).from_buffer(view)  # TypeError if not C-contiguous, as fcntl
        try:
            if n > IOCTL_BUFSZ:  # passed in place
                return call(request & 0xFFFFFFFF, ctypes.addressof(user), None)
            bounce = ctypes.create_string_buffer(IOCTL_BUFSZ + 1)  # per call: threads share the file
            ctypes.memmove(bounce, user, n)
            try:
                return call(request & 0xFFFFFFFF, ctypes.addressof(bounce), bounce)
            finally:
                ctypes.memmove(user, bounce, n)
        finally:
            del user  # give the buffer export back before the view is released


def caller_task(owner: int, pid: int | None, addr: int, bounce, what: str) -> Task:
    """`current` for a call on a model file whose state lives in process `owner` and whose user
    pointers address process `pid` (None: the caller): NotModelled in a forked child; the bounce
    buffer of fcntl_ioctl() is read in place when it is this process's."""
    me = os.getpid()
    if me != owner:
        raise NotModelled(f"{what} inherited across fork() (its state is not shared with the parent)")
    if pid is None:
        pid = me
    mm = BouncedMemory(pid, addr, IOCTL_BUFSZ + 1) if bounce is not None and pid == owner else None
    return _current_task(pid, mm)


# -- the descriptors that stand for open contexts ------------------------------------------------

class _OpenFile:
    """The struct file of an open /dev/iommu: its context, the descriptor standing for it, and
    its references (the descriptor's, and each get_file() a driver took)."""

    __slots__ = ("ictx", "inode", "refs")

    def __init__(self, ictx: IommufdCtx, inode: tuple[int, int]):
        self.ictx, self.inode, self.refs = ictx, inode, 1


_FILES: dict[tuple[int, int], _OpenFile] = {}  # (st_dev, st_ino) of the standing descriptor
_BY_CTX: dict[int, _OpenFile] = {}  # id(ictx) -> its file
_FILES_LOCK = threading.Lock()


def _register(ictx: IommufdCtx) -> int:
    """A descriptor for a new context: an empty memfd (its own inode, which names the file)."""
    fd = os.memfd_create("iommufd", os.MFD_CLOEXEC)
    st = os.fstat(fd)
    f = _OpenFile(ictx, (st.st_dev, st.st_ino))
    with _FILES_LOCK:
        _FILES[f.inode] = f
        _BY_CTX[id(ictx)] = f
    return fd


def _forget(f: _OpenFile) -> None:
    for inode in [k for k, v in _FILES.items() if v is f]:
        del _FILES[inode]
    del _BY_CTX[id(f.ictx)]


def _file_dropped(box: list, ictx: IommufdCtx) -> None:
    """The finalizer of a file collected without close(): its descriptor and its reference go."""
    if box[0] < 0:
        return
    close_box(box)
    with _FILES_LOCK:
        f = _BY_CTX.get(id(ictx))
        if f is not None and f.ictx is ictx:
            f.refs -= 1
            if not f.refs:
                _forget(f)


def iommufd_file_register(ictx: IommufdCtx, inode: tuple[int, int]) -> None:
    """The open file of a context that no IommufdFile stands for (a server's context, whose
    client's descriptor is its end of a connection): the file named by `inode` holds the
    context with one reference (the client's descriptor), which iommufd_ctx_put() gives back;
    iommufd_ctx_from_fd() of the client's number then finds it."""
    f = _OpenFile(ictx, inode)
    with _FILES_LOCK:
        _FILES[inode] = f
        _BY_CTX[id(ictx)] = f


def iommufd_ctx_from_fd(pid: int, fd: int) -> IommufdCtx:
    """iommufd_ctx_from_fd() (drivers/iommu/iommufd/main.c:680): fget() (EBADF), EBADFD for a file
    that is not an iommufd (f_op != &iommufd_fops), else the context with a reference taken (the
    file's, which iommufd_ctx_put() gives back)."""
    inode = vfs.fget_inode(pid, fd)
    with _FILES_LOCK:
        f = _FILES.get(inode)
        if f is None or f.refs == 0:
            raise IommufdError(errno.EBADFD)
        f.refs += 1
        return f.ictx


def iommufd_ctx_put(ictx: IommufdCtx) -> None:
    """iommufd_ctx_put() (main.c:701) -> fput(): the context is released with the file's last
    reference (iommufd_fops_release()), under its lock (after the ioctl in flight, if any)."""
    with _FILES_LOCK:
        f = _BY_CTX.get(id(ictx))
        if f is not None:
            f.refs -= 1
            if f.refs:
                return
            _forget(f)
    with ictx.lock:
        if not ictx.released:
            ictx.release()


def _current_task(pid: int, mm=None) -> Task:
    """`current` for a call from this process: its thread is the calling thread (whose
    fail-nth counter model/fault_inject.py keeps)."""
    return Task(pid, mm=mm, tid=threading.get_native_id())


def open_iommufd(pid: int | None = None, accounts: Accounts | None = None) -> IommufdFile:
    """open("/dev/iommu"): a new, independent context. `pid`: whose memory user pointers address
    (default: the calling process); `accounts`: the user/mm counters (default: the machine's)."""
    return IommufdFile(pid, accounts)
