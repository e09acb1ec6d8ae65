"""Targets: what a conformance test's `fd.ioctl()` talks to.

model   the executable model (model.open_iommufd), in this process
kernel  this machine's /dev/iommu through fcntl.ioctl
vm      the kernel target inside a QEMU guest booted from the project's test kernel
        (conformance.run / the pytest plugin re-run the suite there)
"""
from __future__ import annotations

import ctypes
import fcntl
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]

TARGETS = ("model", "kernel", "vm")
ENV = "IOMMUFD_CONFORMANCE_TARGET"


class KernelFile:
    """A real /dev/iommu with the model's interface."""

    def __init__(self, path: str = "/dev/iommu"):
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True):
        if isinstance(arg, int):
            # fcntl.ioctl takes an int argument as a C int; a user pointer needs all 64 bits.
            rc = _libc.ioctl(self.fd, request, arg)
            if rc < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return rc
        return fcntl.ioctl(self.fd, request, arg, mutate_flag)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_target(spec: str) -> tuple[str, str | None]:
    """"vm=/path/bzImage" -> ("vm", "/path/bzImage")."""
    name, _, value = spec.partition("=")
    if name not in TARGETS:
        raise ValueError(f"unknown target {spec!r}; choose one of {', '.join(TARGETS)} (vm=BZIMAGE)")
    if value and name != "vm":
        raise ValueError(f"target {name} takes no value")
    return name, value or None


def open_target(name: str):
    if name == "model":
        from model import open_iommufd

        return open_iommufd()
    if name == "kernel":
        return KernelFile()
    raise ValueError(f"target {name} is not opened in this process")
