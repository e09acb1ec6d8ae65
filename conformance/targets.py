"""Targets: what a conformance test's `fd.ioctl()` talks to, behind one interface.

model   the executable model (model.open_iommufd), in this process; model:PROFILE plays a
        captured machine (vtd, amd: the VM's machines as model/profiles/ holds them, or a profile
        file a user captured with `probe --save-profile`): its IOMMU driver and its VFIO devices
served  the model as a server (conformance/server.py) in the parent process: the suite runs
        under the preload library (conformance/preload/), so its open("/dev/iommu"), ioctls,
        mmaps and the read()/write()/readlink() of the descriptors the model hands out take
        the path a C program's take, with the kernel's rules for each (the pytest plugin
        re-runs the same command that way)
kernel  this machine's /dev/iommu through fcntl.ioctl
vm      the kernel target inside a QEMU guest booted from the project's test kernel
        (conformance.run / the pytest plugin re-run the suite there, with target kernel);
        vm[=KERNEL][:PROFILE] picks the kernel (a bzImage, a series, `production`) and the
        machine (conformance/vm.py PROFILES: mock, vtd, amd)

A new target (say, a model server for C programs) is one Target subclass in TARGETS.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import ClassVar, Protocol

from model import libc
from model.uapi import B, SERIES

ENV = "IOMMUFD_CONFORMANCE_TARGET"
SERVER_ENV = "IOMMUFD_CONFORMANCE_SERVER"  # the server's socket, for the preload library


class IommuFile(Protocol):
    """An open /dev/iommu as the tests use it (the model's file has this interface)."""

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True): ...

    def mmap(self, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE,
             flags: int = mmap.MAP_SHARED, offset: int = 0): ...

    def close(self) -> None: ...


class Target:
    """A place the suite can run: its name, whether it runs in this process, how to open a
    file on it, and what it says about itself for reports."""

    name: ClassVar[str]
    in_process: ClassVar[bool] = True
    takes_value: ClassVar[bool] = False

    def __init__(self, value: str | None = None, profile: str | None = None):
        self.value = value
        self.profile = profile

    def unavailable(self) -> str | None:
        """Why this target cannot run here, or None."""
        return None

    @classmethod
    def profiles(cls) -> tuple[str, ...]:
        """The machine profiles `NAME:PROFILE` may name."""
        return ()

    def vfio_devices(self) -> list[str]:
        """PCI addresses of the VFIO devices this target brings itself (the VM's come through
        IOMMUFD_VFIO_DEVICES in the guest, a real machine's through --vfio-device)."""
        return []

    def open(self) -> IommuFile:
        raise NotImplementedError(f"target {self.name} is not opened in this process")

    def describe(self) -> str:
        """The kernel (or model) and uapi version, for report headers."""
        return f"uapi {B.VERSION} bindings"


class ModelTarget(Target):
    name = "model"

    @classmethod
    def profiles(cls) -> tuple[str, ...]:
        from conformance.vm import PROFILES

        return tuple(n for n, p in PROFILES.items() if p.model_profile or n == "mock")

    def model_profile(self) -> str | None:
        """The profile file's name or path the model plays, None for the mock alone."""
        if not self.profile or self.profile == "mock":
            return None
        if self.profile.endswith(".json"):
            return self.profile
        from conformance.vm import PROFILES

        return PROFILES[self.profile].model_profile

    def machine(self):
        """The model's machine of this target's profile (model/platform.py), None for the mock."""
        name = self.model_profile()
        if name is None:
            return None
        from model.platform import machine

        return machine(name)

    def unavailable(self) -> str | None:
        from model.uapi import SERIES, TARGET_SERIES

        if TARGET_SERIES != SERIES:
            return f"the model implements Linux {SERIES}, not {TARGET_SERIES} (IOMMUFD_TARGET_SERIES)"
        if (name := self.model_profile()) is not None:
            from model.profile import ProfileError, load

            try:
                load(name)
            except ProfileError as e:
                return str(e)
        return None

    def vfio_devices(self) -> list[str]:
        name = self.model_profile()
        if name is None:
            return []
        from model.profile import load

        return [d.bdf for d in load(name).devices]

    def open(self) -> IommuFile:
        from model import open_iommufd

        return open_iommufd()

    def describe(self) -> str:
        base = f"the model of Linux {SERIES} (uapi {B.KERNEL_VERSION})"
        name = self.model_profile()
        if name is None:
            return base
        from model.profile import load

        prof = load(name)
        where = prof.provenance.get("qemu") or prof.provenance.get("machine", "?")
        return f"{base} playing {prof.name} ({prof.unit.driver}, {len(prof.devices)} device(s); captured on {where})"


class KernelFile:
    """A real /dev/iommu with the model's interface."""

    def __init__(self, path: str = "/dev/iommu"):
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True):
        fd = self.fd
        if fd < 0:  # closed: what ioctl(2) on a closed descriptor answers
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if isinstance(arg, int):
            # fcntl.ioctl takes an int argument as a C int; a user pointer needs all 64 bits.
            return libc.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, mutate_flag)

    def mmap(self, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE,
             flags: int = mmap.MAP_SHARED, offset: int = 0) -> libc.Mapping:
        """mmap(2) of the file (iommufd_fops_mmap): a model.libc.Mapping (a mmap.mmap); OSError
        with the kernel's errno."""
        return libc.mmap(self.fd, length, prot, flags, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KernelTarget(Target):
    name = "kernel"

    def unavailable(self) -> str | None:
        if not os.path.exists("/dev/iommu"):
            return "this machine has no /dev/iommu (try --iommufd-target vm)"
        return None

    def open(self) -> IommuFile:
        return KernelFile()

    def describe(self) -> str:
        from model.uapi import T

        return f"Linux {os.uname().release} (/dev/iommu), uapi {T.VERSION} bindings"


def preloaded() -> bool:
    """Whether this process runs under the preload library with a server to talk to."""
    return bool(os.environ.get(SERVER_ENV)) and "iommufd_preload" in os.environ.get("LD_PRELOAD", "")


class ServedTarget(Target):
    name = "served"

    def unavailable(self) -> str | None:
        if not preloaded():
            return ("this process does not run under the preload library (the pytest plugin re-runs the "
                    "command so; `iommufd-conformance exec` runs a program so)")
        return None

    def open(self) -> IommuFile:
        return KernelFile()  # the preload library connects it to the server

    def describe(self) -> str:
        return f"the model of Linux {SERIES} (uapi {B.KERNEL_VERSION}) as a server, through the preload library"


class VmTarget(Target):
    name = "vm"
    in_process = False
    takes_value = True  # vm=BZIMAGE

    @classmethod
    def profiles(cls) -> tuple[str, ...]:
        from conformance.vm import PROFILES

        return tuple(PROFILES)

    def describe(self) -> str:
        from conformance.vm import profile_named

        p = profile_named(self.profile)
        return f"the test kernel ({self.value or f'Linux {SERIES}, built or cached'}) in QEMU, profile {p.name}: {p.doc}"
        # vm=6.12: Debian's linux-source-6.12, tested with the 6.12 bindings (conformance/run.py)


TARGETS: dict[str, type[Target]] = {t.name: t for t in (ModelTarget, ServedTarget, KernelTarget, VmTarget)}


def parse_target(spec: str) -> Target:
    """"vm=/path/bzImage:vtd" -> VmTarget("/path/bzImage", "vtd"); "model:vtd" -> ModelTarget(None,
    "vtd"); "model:/path/mine.json" plays a captured profile; ValueError for anything unknown."""
    from conformance.vm import PROFILES

    head, colon, profile = spec.rpartition(":")
    if colon and profile.endswith(".json") and head == "model":
        pass  # model:FILE.json
    elif not colon or profile not in PROFILES and ("/" in profile or "=" in profile):  # a path with a colon
        head, profile = spec, ""
    elif profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} in target {spec!r}; choose one of {', '.join(PROFILES)}")
    name, _, value = head.partition("=")
    cls = TARGETS.get(name)
    if cls is None:
        raise ValueError(f"unknown target {spec!r}; choose one of {', '.join(TARGETS)} (vm[=KERNEL][:PROFILE], "
                         "model[:PROFILE])")
    if value and not cls.takes_value:
        raise ValueError(f"target {name} takes no value")
    if profile and not profile.endswith(".json") and profile not in cls.profiles():
        if not cls.profiles():
            raise ValueError(f"target {name} has no machine profiles: vm boots one (vm:{profile}) and the model "
                             f"plays one (model:{profile}); on a kernel target name its VFIO devices with --vfio-device")
        raise ValueError(f"target {name} has no profile {profile!r}; choose one of {', '.join(cls.profiles())}")
    if profile.endswith(".json") and cls is not ModelTarget:
        raise ValueError(f"only the model plays a profile file (model:{profile})")
    return cls(value or None, profile or None)
