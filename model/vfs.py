"""The ioctls the VFS answers before the driver sees them: do_vfs_ioctl() (fs/ioctl.c).

/dev/iommu is a character device: of do_vfs_ioctl()'s commands, FIOCLEX / FIONCLEX set the
descriptor's close-on-exec flag, FIONBIO the file's O_NONBLOCK, FIOASYNC asks the driver's
fasync (iommufd_fops has none: ENOTTY when the state would change), FIOQSIZE is ENOTTY for
anything but a directory, regular file or link; FIONREAD on a non-regular file goes to the
driver. Everything else goes to the driver (vfs_ioctl()): None here.
"""
from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from model.objects import IommufdError

# include/uapi/asm-generic/ioctls.h (x86_64)
FIONBIO = 0x5421
FIONCLEX = 0x5450
FIOCLEX = 0x5451
FIOASYNC = 0x5452
FIOQSIZE = 0x5460


@dataclass
class FileFlags:
    """What those ioctls change: the descriptor's FD_CLOEXEC, the file's O_NONBLOCK and FASYNC."""

    cloexec: bool = True  # conformance targets open /dev/iommu O_CLOEXEC
    nonblock: bool = False
    fasync: bool = False


def _get_user_int(task, arg: int) -> int:
    """get_user() of an int: EFAULT for an unreadable pointer."""
    data = task.mm.read_partial(arg, 4)
    if len(data) < 4:
        raise IommufdError(errno.EFAULT)
    return int.from_bytes(data, "little", signed=True)


def do_vfs_ioctl(flags: FileFlags, task, cmd: int, arg: int) -> int | None:
    """do_vfs_ioctl(): the answer, or None when the driver (vfs_ioctl()) answers."""
    if cmd == FIOCLEX:
        flags.cloexec = True
        return 0
    if cmd == FIONCLEX:
        flags.cloexec = False
        return 0
    if cmd == FIONBIO:  # ioctl_fionbio()
        flags.nonblock = bool(_get_user_int(task, arg))
        return 0
    if cmd == FIOASYNC:  # ioctl_fioasync(): no ->fasync in iommufd_fops
        on = bool(_get_user_int(task, arg))
        if on != flags.fasync:
            raise IommufdError(errno.ENOTTY)
        return 0
    if cmd == FIOQSIZE:
        raise IommufdError(errno.ENOTTY)
    return None


def fget_inode(pid: int, fd: int) -> tuple[int, int]:
    """fget(fd) in process `pid`'s table: the file's (st_dev, st_ino); IommufdError(EBADF) for a
    number nothing has open, or an O_PATH descriptor (fget() skips FMODE_PATH files)."""
    if fd < 0:
        raise IommufdError(errno.EBADF)
    try:
        if pid == os.getpid():
            st = os.fstat(fd)
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        else:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                fl = int(next(ln for ln in f if ln.startswith("flags:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        raise IommufdError(errno.EBADF) from None
    if fl & getattr(os, "O_PATH", 0o10000000):
        raise IommufdError(errno.EBADF)
    return st.st_dev, st.st_ino
