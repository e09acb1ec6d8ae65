"""An open /dev/iommu for Python callers: `fd.ioctl(request, arg)` like fcntl.ioctl(fd, request,
arg, True). This is the Python client's contract; the core (model/main.py) takes a task and an
address, as a server for other processes will call it.

- arg is an int (a user address, passed as it is) or a writable buffer (bytearray, ctypes
  structure); immutable bytes are copied and the copy returned, as fcntl does.
- Like fcntl.ioctl (Modules/fcntlmodule.c), a mutable buffer of up to IOCTL_BUFSZ bytes is
  copied into a bounce buffer, the kernel sees that copy, and it is copied back afterwards:
  writes aimed at the caller's buffer itself are lost on return.
- The caller is this process, as it is when ioctl() is called (after fork() the child is).
- Failure raises OSError with the kernel's errno.
"""
from __future__ import annotations

import ctypes
import errno
import os

from model.main import IommufdCtx
from model.objects import IommufdError
from model.task import Accounts, Task
from model.uaccess import BouncedMemory, UserFault

IOCTL_BUFSZ = 1024  # CPython's fcntl.ioctl bounce buffer


def _user_address(arg) -> tuple[int, object]:
    """The user pointer an ioctl argument stands for, and a keep-alive reference."""
    if isinstance(arg, int):
        return arg, None
    if isinstance(arg, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        return ctypes.addressof(arg), arg
    if isinstance(arg, (bytearray, memoryview)):
        view = (ctypes.c_char * len(arg)).from_buffer(arg)
        return ctypes.addressof(view), view
    raise TypeError(f"ioctl argument must be an int or a writable buffer, not {type(arg).__name__}")


class IommufdFile:
    """An open /dev/iommu: ioctl() like fcntl.ioctl(fd, request, arg, True)."""

    def __init__(self, pid: int | None = None, accounts: Accounts | None = None):
        self._pid = pid  # whose memory user pointers address; None: the calling process
        self.ictx: IommufdCtx | None = IommufdCtx(accounts)

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True) -> int:
        ictx = self.ictx
        if ictx is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if isinstance(arg, bytes):  # fcntl copies an immutable buffer and returns the copy
            buf = bytearray(arg)
            self.ioctl(request, buf)
            return bytes(buf)
        addr, keep = _user_address(arg)
        pid = os.getpid() if self._pid is None else self._pid
        n = ctypes.sizeof(keep) if keep is not None else 0
        bounced = keep is not None and n <= IOCTL_BUFSZ and pid == os.getpid()
        if bounced:
            bounce = ctypes.create_string_buffer(IOCTL_BUFSZ + 1)  # per call: threads share the file
            ctypes.memmove(bounce, addr, n)
            addr = ctypes.addressof(bounce)
            task = Task(pid, mm=BouncedMemory(pid, addr, IOCTL_BUFSZ + 1))
        else:
            task = Task(pid)
        try:
            return ictx.ioctl(task, request & 0xFFFFFFFF, addr)
        except IommufdError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        except UserFault:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT)) from None
        finally:
            if bounced:
                ctypes.memmove(ctypes.addressof(keep), bounce, n)

    def close(self) -> None:
        """iommufd_fops_release()."""
        if self.ictx is not None:
            self.ictx.release()
        self.ictx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_iommufd(pid: int | None = None, accounts: Accounts | None = None) -> IommufdFile:
    """open("/dev/iommu"): a new, independent context. `pid`: whose memory user pointers address
    (default: the calling process); `accounts`: the user/mm counters (default: the machine's)."""
    return IommufdFile(pid, accounts)
