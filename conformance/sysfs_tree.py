"""The sysfs and debugfs a VFIO program reads, generated from a model profile, for programs run
against the model (`iommufd-conformance exec --profile vtd`, `kernel selftest --suite vfio
--target model:vtd`).

The kernel's VFIO selftests (tools/testing/selftests/vfio) find their devices through sysfs and
debugfs before they open anything:
- lib/sysfs.c readlink()s /sys/bus/pci/devices/BDF/iommu_group (the group number is the link's
  basename) and .../driver (basename "vfio-pci"), and reads sriov_totalvfs / sriov_numvfs
  (absent on a device without SR-IOV: vfio_pci_sriov_uapi_test skips);
- lib/vfio_pci_device.c opendir()s /sys/bus/pci/devices/BDF/vfio-dev/ for the vfioN entry that
  names the device's cdev /dev/vfio/devices/vfioN;
- vfio_pci_device_test reads .../vendor and .../device;
- vfio_dma_mapping_test reads /sys/kernel/debug/iommu/intel/BDF/domain_translation_struct when
  /sys/kernel/debug/iommu/intel exists (drivers/iommu/intel/debugfs.c:773-781 creates one
  directory per probed device; the file's text is the model's, made at open time by the
  server: model/debugfs.py, reached through the preload library).

This machine's own sysfs names its own devices, so the program runs in a private mount
namespace (unshare(CLONE_NEWNS), every mount made private first so nothing propagates back)
with a tmpfs over /sys/bus/pci/devices, /sys/kernel/iommu_groups (when this machine has that
directory) and /sys/kernel/debug holding the profile's tree. That needs CAP_SYS_ADMIN;
`unavailable()` says, at run time, why it cannot be done here.

What the tree holds, as the kernel writes it (drivers/pci/pci-sysfs.c, drivers/iommu/iommu.c,
drivers/vfio/vfio_main.c), from the profile's captured config space and resources:
- /sys/bus/pci/devices/BDF/: vendor, device, subsystem_vendor, subsystem_device ("0x%04x\\n",
  pci-sysfs.c:40-45 pci_config_attr), class ("0x%06x\\n", :48), revision ("0x%02x\\n"), config
  (the captured bytes), resource ("0x%016llx 0x%016llx 0x%016llx\\n" per resource,
  pci-sysfs.c:171-197 resource_show), iommu_group -> ../../../../kernel/iommu_groups/N,
  driver -> ../../drivers/vfio-pci, vfio-dev/vfioN/ (vfio_main.c: the cdev device's name is
  "vfio%d" of the device index, a child of the PCI device). On Linux BDF is a symlink into
  /sys/devices/pci0000:00/; here it is the directory itself (a relative link's basename is all
  the programs read, and the links resolve to the same places).
- /sys/kernel/iommu_groups/N/: devices/BDF -> the device directory, reserved_regions
  ("0x%016llx 0x%016llx %s\\n", iommu.c iommu_group_show_resv_regions()).
- /sys/kernel/debug/iommu/: intel/BDF/domain_translation_struct for an intel-iommu unit
  (empty here: its text comes from the model when opened), nothing below it for amd-iommu
  (the selftests read only intel's).
"""
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path

from model.profile import PciDeviceInfo, Profile

# Where the tree goes, relative to /sys: each is one tmpfs in the namespace.
MOUNTS = ("bus/pci/devices", "kernel/iommu_groups", "kernel/debug")
DEBUGFS_INTEL = "kernel/debug/iommu/intel"
VFIO_DRIVER = "vfio-pci"

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000


def _u16(cfg: bytes, off: int) -> int:
    return int.from_bytes(cfg[off:off + 2], "little")


def cdev_index(profile: Profile, bdf: str) -> int:
    """N of /dev/vfio/devices/vfioN: vfio_main.c allocates device indexes in registration
    order (ida_alloc in vfio_init_device()), which is the profile's device order (the guest binds
    them to vfio-pci in PCI order)."""
    return [d.bdf for d in profile.devices].index(bdf)


def device_files(dev: PciDeviceInfo) -> dict[str, bytes]:
    """The attribute files of one PCI device as pci-sysfs.c prints them."""
    cfg = dev.config
    klass = cfg[0x09] | cfg[0x0A] << 8 | cfg[0x0B] << 16
    return {
        "vendor": f"0x{dev.vendor:04x}\n".encode(),
        "device": f"0x{dev.device:04x}\n".encode(),
        "subsystem_vendor": f"0x{_u16(cfg, 0x2C):04x}\n".encode(),
        "subsystem_device": f"0x{_u16(cfg, 0x2E):04x}\n".encode(),
        "class": f"0x{klass:06x}\n".encode(),
        "revision": f"0x{cfg[0x08]:02x}\n".encode(),
        "config": bytes(cfg),
        "resource": "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in dev.resources).encode(),
    }


def build(profile: Profile, sysfs: Path) -> list[Path]:
    """Write the profile's tree under `sysfs` (which stands for /sys: its MOUNTS must be
    writable directories, or creatable); the paths written, for tests."""
    written: list[Path] = []

    def write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)

    def link(path: Path, target: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.symlink_to(target)
        written.append(path)

    devices = sysfs / "bus" / "pci" / "devices"
    devices.mkdir(parents=True, exist_ok=True)
    groups: dict[int, list[PciDeviceInfo]] = {}
    for dev in profile.devices:
        d = devices / dev.bdf
        for name, data in device_files(dev).items():
            write(d / name, data)
        link(d / "iommu_group", f"../../../../kernel/iommu_groups/{dev.iommu_group}")
        link(d / "driver", f"../../drivers/{VFIO_DRIVER}")
        vdir = d / "vfio-dev" / f"vfio{cdev_index(profile, dev.bdf)}"
        vdir.mkdir(parents=True, exist_ok=True)
        written.append(vdir)
        groups.setdefault(dev.iommu_group, []).append(dev)
    for n, devs in groups.items():
        g = sysfs / "kernel" / "iommu_groups" / str(n)
        for dev in devs:
            link(g / "devices" / dev.bdf, f"../../../../bus/pci/devices/{dev.bdf}")
        # one group's regions: every device of it captured the same list
        write(g / "reserved_regions",
              "".join(f"0x{s:016x} 0x{e:016x} {t}\n" for s, e, t in devs[0].reserved_regions).encode())
    debug = sysfs / "kernel" / "debug" / "iommu"
    debug.mkdir(parents=True, exist_ok=True)
    if profile.unit.driver == "intel-iommu":
        for dev in profile.devices:
            write(sysfs / DEBUGFS_INTEL / dev.bdf / "domain_translation_struct", b"")
    return written


def _libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    lib.unshare.argtypes = [ctypes.c_int]
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def enter(profile: Profile) -> None:
    """Move this process into a private mount namespace whose /sys shows the profile's tree
    (the module docstring). Call it before this process starts a thread: CLONE_NEWNS implies
    CLONE_FS, which unshare() refuses (EINVAL) while other threads share the fs_struct.
    OSError with what was refused."""
    lib = _libc()
    _check(lib.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(lib.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    sysfs = Path("/sys")
    for rel in MOUNTS:
        where = sysfs / rel
        if not where.is_dir():
            if rel == "kernel/iommu_groups":
                continue  # no IOMMU on this machine: sysfs has no such directory to cover (and
                # none can be made in sysfs); the iommu_group links' basenames are what is read
            raise OSError(errno.ENOENT, f"{where}: not a directory here, nothing to mount the model's tree on")
        _check(lib.mount(b"tmpfs", str(where).encode(), b"tmpfs", 0, b"mode=0755"), f"mount tmpfs on {where}")
    build(profile, sysfs)


def unavailable() -> str | None:
    """Why the tree cannot be mounted here, found at run time by trying it in a child process
    (unshare(CLONE_NEWNS) and a tmpfs mount need CAP_SYS_ADMIN), or None."""
    code = ("import ctypes, os, sys\n"
            "lib = ctypes.CDLL(None, use_errno=True)\n"
            f"if lib.unshare({CLONE_NEWNS}) != 0:\n"
            "    e = ctypes.get_errno(); print(f'unshare(CLONE_NEWNS): {os.strerror(e)}'); sys.exit(1)\n"
            f"if lib.mount(b'none', b'/', None, {MS_REC | MS_PRIVATE}, None) != 0:\n"
            "    e = ctypes.get_errno(); print(f'mount --make-rprivate /: {os.strerror(e)}'); sys.exit(1)\n"
            "if lib.mount(b'tmpfs', b'/sys/bus/pci/devices', b'tmpfs', 0, None) != 0:\n"
            "    e = ctypes.get_errno()\n"
            "    print(f'mount tmpfs on /sys/bus/pci/devices: {os.strerror(e)}'); sys.exit(1)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode == 0:
        return None
    why = (res.stdout.strip() or res.stderr.strip().splitlines()[-1:] or ["failed"])[0]
    return (f"the model's sysfs tree needs a private mount namespace ({why}; CAP_SYS_ADMIN is "
            "needed, as `unshare -m` needs it)")
