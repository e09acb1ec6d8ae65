"""The /dev/iommu file: open, ioctl dispatch, close (drivers/iommu/iommufd/main.c).

Dispatch is iommufd_fops_ioctl(): the IOCTL table comes from the generated bindings
(one row per IOCTL_OP: struct, size, min_size), the handlers from HANDLERS below,
each named after the kernel function it models.
"""
from __future__ import annotations

import ctypes
import errno
import os

import generated

from model import eventq, hw_pagetable, ioas, option, vfio_compat, viommu
from model.objects import IommufdError, NotModelled, ObjectTable
from model.uaccess import UserFault, UserMemory

B = generated.load("7.2")
IOMMUFD_CMD_BASE = B.IOMMUFD_CMD_BASE

# iommufd_ioctl_ops[]: _IOC_NR - IOMMUFD_CMD_BASE -> row; rows carry the facts of main.c.
# IOMMU_TEST_CMD (IOMMUFD_CMD_BASE + 32) is in it, as in the CONFIG_IOMMUFD_TEST test kernel;
# the slots between hold nothing, like the array's unset entries (ENOTTY).
_TABLE = {row.nr - IOMMUFD_CMD_BASE: row for row in B.IOCTLS if row.struct}
_TABLE_LEN = max(_TABLE) + 1


IOCTL_BUFSZ = 1024  # CPython's fcntl.ioctl bounce buffer


class Ucmd:
    """struct iommufd_ucmd: the context, the user buffer and the kernel's copy of the cmd."""

    def __init__(self, ictx: "IommufdCtx", ubuffer: int, user_size: int, row, cmd):
        self.ictx = ictx
        self.ubuffer = ubuffer
        self.user_size = user_size
        self.row = row
        self.cmd = cmd

    def respond(self, cmd_len: int | None = None) -> None:
        """iommufd_ucmd_respond(): copy min(user_size, cmd_len) bytes back, or EFAULT."""
        n = ctypes.sizeof(self.cmd) if cmd_len is None else cmd_len
        self.ictx.mem.write(self.ubuffer, bytes(self.cmd)[: min(self.user_size, n)])


class IommufdCtx:
    """struct iommufd_ctx."""

    def __init__(self, pid: int | None = None):
        self.mem = UserMemory(pid)
        self.objects = ObjectTable()
        self.account_mode = option.ACCOUNT_USER  # iommufd_fops_open(): per-user unless /dev/vfio/vfio
        self.vfio_ioas = None  # IOMMU_VFIO_IOAS SET


def iommufd_destroy(ucmd: Ucmd) -> int:
    """iommufd_destroy() -> iommufd_object_remove(): ENOENT unknown ID, EBUSY while used.
    Destroying the compatibility IOAS clears it (main.c: ictx->vfio_ioas = NULL)."""
    ictx = ucmd.ictx
    obj = ictx.objects.remove(ucmd.cmd.id)
    if ictx.vfio_ioas is obj:
        ictx.vfio_ioas = None
    _object_destroy(obj)
    return 0


def _object_destroy(obj) -> None:
    """iommufd_object_ops[type].destroy: an IOAS unmaps everything (iommufd_ioas_destroy)."""
    if obj.type == "IOAS":
        obj.data.destroy()


# ioctl name -> handler. Each object family's module keeps its own HANDLERS dict
# (one file per family, like drivers/iommu/iommufd/*.c); main.c's own are here.
HANDLERS = {
    "IOMMU_DESTROY": iommufd_destroy,
    **ioas.HANDLERS,
    **option.HANDLERS,
    **vfio_compat.HANDLERS,
    **hw_pagetable.HANDLERS,  # no devices yet: what the kernel answers without them
    **viommu.HANDLERS,
    **eventq.HANDLERS,
}


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

    def __init__(self, pid: int | None = None):
        self.ictx: IommufdCtx | None = IommufdCtx(pid)

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True) -> int:
        if self.ictx is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if isinstance(arg, bytes):  # fcntl copies an immutable buffer and returns the copy
            buf = bytearray(arg)
            self.ioctl(request, buf)
            return bytes(buf)
        addr, keep = _user_address(arg)
        bounce = None
        if keep is not None and ctypes.sizeof(keep) <= IOCTL_BUFSZ:
            # fcntl.ioctl (Modules/fcntlmodule.c) copies a mutable buffer of up to
            # IOCTL_BUFSZ bytes into its own, passes that, and copies it back afterwards:
            # the kernel sees that copy, so writes aimed at the caller's buffer are lost.
            n = ctypes.sizeof(keep)
            bounce = ctypes.create_string_buffer(IOCTL_BUFSZ + 1)
            ctypes.memmove(bounce, addr, n)
            addr = ctypes.addressof(bounce)
        try:
            rc = self._fops_ioctl(request & 0xFFFFFFFF, addr)
        except IommufdError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        except UserFault:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT)) from None
        finally:
            if bounce is not None:
                ctypes.memmove(ctypes.addressof(keep), bounce, ctypes.sizeof(keep))
        return rc

    def _fops_ioctl(self, cmd: int, arg: int) -> int:
        """iommufd_fops_ioctl()."""
        ictx = self.ictx
        nr = cmd & 0xFF
        if nr < IOMMUFD_CMD_BASE or nr - IOMMUFD_CMD_BASE >= _TABLE_LEN:
            return self._vfio_ioctl(cmd, arg)
        user_size = int.from_bytes(ictx.mem.read(arg, 4), "little")  # get_user() -> EFAULT
        row = _TABLE.get(nr - IOMMUFD_CMD_BASE)
        if row is None or row.number != cmd:
            raise IommufdError(errno.ENOTTY)  # -ENOIOCTLCMD reaches userspace as ENOTTY
        # The generic checks are the generated validators': size below min_size is EINVAL,
        # then copy_struct_from_user() (include/linux/uaccess.h) reads the tail past the
        # kernel's struct first (EFAULT, or E2BIG when nonzero), then the struct itself.
        mem = ictx.mem
        tail = mem.read(arg + row.size, user_size - row.size) if user_size > row.size else b""
        err = B.validators.check_size(row, user_size, bytes(row.size) + tail)
        if err:
            raise IommufdError(err)
        data = mem.read(arg, min(row.size, user_size)).ljust(row.size, b"\0")
        cmd_struct = B.bindings.STRUCTS[row.struct].from_buffer_copy(data)
        handler = HANDLERS.get(row.name)
        if handler is None:
            raise NotModelled(row.name)
        return handler(Ucmd(ictx, arg, user_size, row, cmd_struct))

    def _vfio_ioctl(self, cmd: int, arg: int) -> int:
        """iommufd_vfio_ioctl() (vfio_compat.c): the VFIO type1 ioctls /dev/iommu answers."""
        return vfio_compat.iommufd_vfio_ioctl(self.ictx, cmd, arg)

    def close(self) -> None:
        """iommufd_fops_release(): every object goes with the file (and its pins)."""
        if self.ictx is not None:
            for obj in list(self.ictx.objects.objects.values()):
                _object_destroy(obj)
        self.ictx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_iommufd(pid: int | None = None) -> IommufdFile:
    """open("/dev/iommu"): a new, independent context. `pid`: whose memory user pointers address."""
    return IommufdFile(pid)
