"""`iommufd-conformance probe --target T`: what a target supports, found by asking it.

- each ioctl of the generated table: known (a size of 0 is EINVAL, below every min_size) or
  unknown (ENOTTY);
- IOAS_MAP_FILE of a memfd;
- IOMMUFD_TEST (IOMMU_TEST_CMD answers), and through a mock device, when there is one: the
  hardware-info type and capabilities (dirty tracking), HWPT allocation with dirty tracking,
  the selftest vIOMMU type and its mmap region;
- the uapi version it speaks: the newest generated version whose every iommufd ioctl it knows;
- each VFIO device it has (--vfio-device, or a VM profile's): its group and driver, and for the
  first one, bound and attached, the IOMMU unit as iommufd reports it: GET_HW_INFO (type,
  cap/ecap or EFR registers, capabilities, PASID width), which HWPT_ALLOC flags the driver takes,
  and the IOVA ranges an attached IOAS has.

The suite asks the same (probe(), cached) to skip what a target lacks, saying so, instead of
failing on it.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import asdict, dataclass, field

from model.limits import PAGE_SIZE
from model.uapi import T as B, every_version, set_fields


@dataclass
class Probe:
    target: str
    kernel: str
    ioctls: dict[str, bool] = field(default_factory=dict)  # name -> known
    map_file_memfd: str = "unknown"
    iommufd_test: str = "unknown"
    hw_info: str = "unknown"
    dirty_tracking: str = "unknown"
    viommu_types: str = "unknown"
    mmap: str = "unknown"
    uapi: str = "unknown"
    vfio_devices: list[dict] = field(default_factory=list)
    unit: dict = field(default_factory=dict)  # the first VFIO device's IOMMU, as iommufd reports it

    def lacks(self, name: str) -> bool:
        return self.ioctls.get(name) is False

    @property
    def no_mock_device(self) -> str | None:
        """Why IOMMU_TEST_CMD exists but adds no mock device, or None."""
        return self.iommufd_test if self.iommufd_test.startswith("no mock device") else None

    def as_dict(self) -> dict:
        return asdict(self)


def _errno(fd, request, arg) -> int:
    try:
        fd.ioctl(request, arg)
    except OSError as e:
        if getattr(e, "ioctl", None):  # the model: not modelled
            return -1
        return e.errno
    return 0


def _struct(name: str, **fields):
    cls = getattr(B, name)
    return set_fields(cls(size=ctypes.sizeof(cls)), **fields)


def probe(target, vfio_devices: list[str] | None = None) -> Probe:
    """Ask `target` (a conformance.targets.Target) what it supports; `vfio_devices` are PCI
    addresses bound to vfio-pci (default: IOMMUFD_VFIO_DEVICES, which a VM profile sets)."""
    fd = target.open()
    try:
        p = Probe(target.name, target.describe())
        for row in B.IOCTLS:
            if not row.struct or row.nr < B.IOMMUFD_CMD_BASE:
                continue
            buf = bytearray(max(row.size, 8))  # size 0: below every min_size
            p.ioctls[row.name] = _errno(fd, row.number, buf) != errno.ENOTTY
        known = {n for n, k in p.ioctls.items() if k}
        for g in reversed(every_version()):
            if all(r.name in known for r in g.IOCTLS if r.struct and r.nr >= g.IOMMUFD_CMD_BASE):
                p.uapi = g.VERSION
                break
        ioas = _struct("iommu_ioas_alloc")
        if _errno(fd, B.IOMMU_IOAS_ALLOC, ioas) == 0:
            if hasattr(B, "iommu_ioas_map_file"):
                memfd = os.memfd_create("iommufd-probe")
                try:
                    os.ftruncate(memfd, PAGE_SIZE)
                    m = _struct("iommu_ioas_map_file", flags=B.IOMMU_IOAS_MAP_READABLE, ioas_id=ioas.out_ioas_id,
                                fd=memfd, length=PAGE_SIZE)
                    e = _errno(fd, B.IOMMU_IOAS_MAP_FILE, m)
                    p.map_file_memfd = "yes" if e == 0 else f"no ({_name(e)})"
                finally:
                    os.close(memfd)
            else:
                p.map_file_memfd = f"not in the Linux {B.KERNEL_VERSION} uapi"
            empty = _struct("iommu_ioas_alloc")  # a mock domain's aperture must hold every area
            if _errno(fd, B.IOMMU_IOAS_ALLOC, empty) == 0:
                _device_features(fd, p, empty.out_ioas_id)
        if target.name == "kernel":
            from conformance.vfio_device import devices_from_env

            _vfio_unit(fd, p, vfio_devices if vfio_devices is not None else devices_from_env())
        return p
    finally:
        fd.close()


def _vfio_unit(fd, p: Probe, bdfs: list[str]) -> None:
    from conformance import vfio_device as vd

    for bdf in bdfs:
        d = vd.SYSFS_PCI / bdf
        try:
            vendor, device = vd.pci_id(bdf)
            p.vfio_devices.append({
                "bdf": bdf, "id": f"{vendor:04x}:{device:04x}", "iommu_group": vd.iommu_group(bdf),
                "driver": (d / "driver").resolve().name if (d / "driver").exists() else None,
                "iommu": (d / "iommu").resolve().name if (d / "iommu").exists() else None,
            })
        except OSError as e:
            p.vfio_devices.append({"bdf": bdf, "error": str(e)})
    if not bdfs or not hasattr(B, "vfio_device_bind_iommufd"):
        return
    u = p.unit
    try:
        dev = vd.VfioDevice(bdfs[0])
    except (OSError, LookupError) as e:
        u["error"] = f"{bdfs[0]}: {e}"
        return
    with dev:
        try:
            dev_id = dev.bind(fd.fd)
        except OSError as e:
            u["error"] = f"VFIO_DEVICE_BIND_IOMMUFD: {_name(e.errno)}"
            return
        data = (ctypes.c_uint8 * 64)()
        hw = _struct("iommu_hw_info", dev_id=dev_id, data_len=64, data_uptr=ctypes.addressof(data))
        if e := _errno(fd, B.IOMMU_GET_HW_INFO, hw):
            u["hw_info"] = f"no ({_name(e)})"
            return
        kinds = {v: k for k, v in vars(B).items() if k.startswith("IOMMU_HW_INFO_TYPE_") and k != "IOMMU_HW_INFO_TYPE_DEFAULT"}
        u["type"] = kinds.get(hw.out_data_type, hex(hw.out_data_type))
        u["data_len"] = hw.data_len
        if hw.out_data_type == B.IOMMU_HW_INFO_TYPE_INTEL_VTD:
            vtd = B.iommu_hw_info_vtd.from_buffer_copy(bytes(data))
            u.update(flags=hex(vtd.flags), cap_reg=f"{vtd.cap_reg:#018x}", ecap_reg=f"{vtd.ecap_reg:#018x}")
        elif hw.out_data_type == getattr(B, "IOMMU_HW_INFO_TYPE_AMD", None):
            amd = B.iommu_hw_info_amd.from_buffer_copy(bytes(data))
            u.update(efr=f"{amd.efr:#018x}", efr2=f"{amd.efr2:#018x}")
        caps = [k for k, v in vars(B).items() if k.startswith("IOMMU_HW_CAP_") and hw.out_capabilities & v]
        u["capabilities"] = f"{hw.out_capabilities:#x} ({' '.join(caps) or 'none'})"
        u["max_pasid_log2"] = hw.out_max_pasid_log2
        ioas = _struct("iommu_ioas_alloc")
        fd.ioctl(B.IOMMU_IOAS_ALLOC, ioas)
        for flag in ("NEST_PARENT", "DIRTY_TRACKING", "PASID"):
            value = getattr(B, f"IOMMU_HWPT_ALLOC_{flag}", None)
            if value is not None:
                h = _struct("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas.out_ioas_id, flags=value)
                e = _errno(fd, B.IOMMU_HWPT_ALLOC, h)
                u[f"hwpt_alloc_{flag.lower()}"] = "ok" if e == 0 else _name(e)
        try:
            dev.attach(ioas.out_ioas_id)
        except OSError as e:
            u["attach"] = _name(e.errno)
            return
        ranges = (B.iommu_iova_range * 16)()
        r = _struct("iommu_ioas_iova_ranges", ioas_id=ioas.out_ioas_id, num_iovas=16,
                    allowed_iovas=ctypes.addressof(ranges))
        fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        u["iova_ranges_attached"] = [f"[{ranges[i].start:#x}, {ranges[i].last:#x}]" for i in range(r.num_iovas)]


def _name(e: int) -> str:
    from conformance.report import errno_name

    return "not modelled" if e == -1 else errno_name(e)


def _device_features(fd, p: Probe, ioas_id: int) -> None:
    cmd = _struct("iommu_test_cmd", op=B.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas_id)
    e = _errno(fd, B.IOMMU_TEST_CMD, cmd)
    if e:
        why = "no IOMMUFD_TEST" if e == errno.ENOTTY else _name(e)
        # IOMMUFD_TEST present, yet no mock device: 6.12 beside a real IOMMU driver, whose
        # __iommu_probe_device() probes a device without a fwspec with the first fwnode-less
        # IOMMU's ops (drivers/iommu/iommu.c:520-530 in 6.12), the real driver's, not the mock's
        p.iommufd_test = "no" if e == errno.ENOTTY else f"no mock device (IOMMU_TEST_OP_MOCK_DOMAIN: {why})"
        p.hw_info = p.dirty_tracking = p.viommu_types = p.mmap = f"needs a device ({why})"
        return
    p.iommufd_test = "yes"
    dev = cmd.mock_domain.out_idev_id
    data = (ctypes.c_uint8 * 64)()
    hw = _struct("iommu_hw_info", dev_id=dev, data_len=64, data_uptr=ctypes.addressof(data))
    e = _errno(fd, B.IOMMU_GET_HW_INFO, hw)
    if e:
        p.hw_info = f"no ({_name(e)})"
    else:
        p.hw_info = f"type {hw.out_data_type:#x}, capabilities {hw.out_capabilities:#x}"
        dirty = bool(hw.out_capabilities & B.IOMMU_HW_CAP_DIRTY_TRACKING)
        hwpt = _struct("iommu_hwpt_alloc", dev_id=dev, pt_id=ioas_id, flags=B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        e = _errno(fd, B.IOMMU_HWPT_ALLOC, hwpt)
        p.dirty_tracking = ("yes" if dirty and e == 0 else f"no (capability {dirty}, HWPT_ALLOC {_name(e)})")
    if not hasattr(B, "iommu_viommu_selftest"):
        p.viommu_types = p.mmap = f"not in the Linux {B.KERNEL_VERSION} uapi"
        return
    parent = _struct("iommu_hwpt_alloc", dev_id=dev, pt_id=ioas_id, flags=B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    e = _errno(fd, B.IOMMU_HWPT_ALLOC, parent)
    if e:
        p.viommu_types = p.mmap = f"no nesting parent ({_name(e)})"
        return
    vdata = B.iommu_viommu_selftest(in_data=0x1234)
    v = _struct("iommu_viommu_alloc", type=B.IOMMU_VIOMMU_TYPE_SELFTEST, dev_id=dev, hwpt_id=parent.out_hwpt_id,
                data_len=ctypes.sizeof(vdata), data_uptr=ctypes.addressof(vdata))
    e = _errno(fd, B.IOMMU_VIOMMU_ALLOC, v)
    p.viommu_types = "selftest" if e == 0 else f"none ({_name(e)})"
    p.mmap = (f"yes ({vdata.out_mmap_length} bytes at offset {vdata.out_mmap_offset:#x})"
              if e == 0 and vdata.out_mmap_length else "no")


def render(p: Probe) -> str:
    lines = [f"target: {p.target}", f"kernel: {p.kernel}", f"uapi it speaks: {p.uapi}",
             f"IOMMUFD_TEST (mock devices): {p.iommufd_test}", f"IOAS_MAP_FILE of a memfd: {p.map_file_memfd}",
             f"hardware info: {p.hw_info}", f"dirty tracking: {p.dirty_tracking}",
             f"vIOMMU types: {p.viommu_types}", f"mmap: {p.mmap}"]
    lines.append(f"VFIO devices: {len(p.vfio_devices) or 'none'}")
    for d in p.vfio_devices:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in d.items()))
    if p.unit:
        lines.append(f"IOMMU unit of {p.vfio_devices[0]['bdf'] if p.vfio_devices else '?'} (GET_HW_INFO):")
        lines += [f"  {k}: {v}" for k, v in p.unit.items()]
    lines.append("ioctls:")
    for name, known in p.ioctls.items():
        lines.append(f"  {name:<32} {'yes' if known else 'no (ENOTTY)'}")
    return "\n".join(lines)


# -- profiles: the machine's IOMMU unit and PCI devices as data (model/profile.py) ------------------

SYSFS_IOMMU = "/sys/class/iommu"


# The register attributes each driver shows (intel/iommu.c intel_iommu_groups; amd/iommu.c
# amd_iommu_groups): the counters beside them (domains_used, ...) are not hardware.
UNIT_REGISTERS = {"intel-iommu": ("version", "address", "cap", "ecap"), "amd-iommu": ("cap", "features")}


def _unit_registers() -> dict:
    """The first IOMMU unit's registers as its driver shows them in sysfs: (driver, {attr: hex}).
    amd_iommu's `features` is "EFR:EFR2" (amd_iommu_show_features()): two registers."""
    from pathlib import Path

    units = sorted(Path(SYSFS_IOMMU).iterdir()) if Path(SYSFS_IOMMU).is_dir() else []
    for unit in units:
        for driver, attrs in UNIT_REGISTERS.items():
            d = unit / driver
            if d.is_dir():
                regs = {}
                for a in attrs:
                    values = (d / a).read_text().strip().split(":")
                    for suffix, v in zip(("", "2"), values):
                        regs[a + suffix] = hex(int(v, 16))
                if driver == "amd-iommu":
                    regs.update(_amd_firmware())
                return {"driver": driver, "unit": unit.name, "registers": regs}
    raise LookupError(f"no intel-iommu or amd-iommu unit under {SYSFS_IOMMU}: this machine's IOMMU is not "
                      "one the model has a driver for")


# Module parameters that change what iommufd and VFIO answer (the VM's amd profile sets the
# first on the kernel command line: its unit has no interrupt remapping)
MODULE_PARAMS = ("iommufd/allow_unsafe_interrupts", "vfio_iommu_type1/allow_unsafe_interrupts",
                 "vfio/enable_unsafe_noiommu_mode")


def _module_params() -> dict:
    from pathlib import Path

    out = {}
    for name in MODULE_PARAMS:
        f = Path("/sys/module") / name.split("/")[0] / "parameters" / name.split("/")[1]
        if f.is_file():
            out[name.replace("/", ".")] = f.read_text().strip()
    return out


def _amd_firmware() -> dict:
    """What amd_iommu reads from firmware rather than the unit: the IVRS table's IVinfo dword
    (EFRSup, VAsize: init.c early_amd_iommu_init()), and whether interrupt remapping came up
    (check_ioapic_information() found the IOAPIC in the IVHD; the MSI and IOAPIC irq chips are
    then the remapping ones, "IR-" in /proc/interrupts)."""
    from pathlib import Path

    ivrs = Path("/sys/firmware/acpi/tables/IVRS").read_bytes()  # root only
    chips = Path("/proc/interrupts").read_text()
    return {"ivinfo": hex(int.from_bytes(ivrs[36:40], "little")), "intremap": hex(int(" IR-" in chips))}


def _pci_device(bdf: str) -> dict:
    from conformance import vfio_device as vd

    d = vd.SYSFS_PCI / bdf
    vendor, device = vd.pci_id(bdf)
    group = vd.iommu_group(bdf)
    resv = []
    for ln in open(f"/sys/kernel/iommu_groups/{group}/reserved_regions").read().splitlines():
        s, e, kind = ln.split()
        resv.append([hex(int(s, 16)), hex(int(e, 16)), kind])
    resources = [[hex(int(x, 16)) for x in ln.split()] for ln in (d / "resource").read_text().splitlines()]
    return {"bdf": bdf, "vendor": hex(vendor), "device": hex(device), "iommu_group": group,
            "config": (d / "config").read_bytes().hex(), "resources": resources, "reserved_regions": resv}


def _observe_vfio(fd, bdf: str) -> dict:
    """What iommufd and vfio-pci answered for `bdf`: the checks a model of this machine must pass."""
    from conformance import vfio_device as vd

    obs: dict = {"device": bdf}
    with vd.VfioDevice(bdf) as dev:
        dev_id = dev.bind(fd.fd)
        data = (ctypes.c_uint8 * 64)()
        hw = _struct("iommu_hw_info", dev_id=dev_id, data_len=64, data_uptr=ctypes.addressof(data))
        fd.ioctl(B.IOMMU_GET_HW_INFO, hw)
        obs["hw_info"] = {"type": hw.out_data_type, "data": bytes(data)[:hw.data_len].hex(),
                          "capabilities": hex(hw.out_capabilities), "max_pasid_log2": hw.out_max_pasid_log2}
        ioas = _struct("iommu_ioas_alloc")
        fd.ioctl(B.IOMMU_IOAS_ALLOC, ioas)
        allocs = {}
        for flag in ("NONE", "NEST_PARENT", "DIRTY_TRACKING", "PASID"):
            value = getattr(B, f"IOMMU_HWPT_ALLOC_{flag}", 0)
            h = _struct("iommu_hwpt_alloc", dev_id=dev_id, pt_id=ioas.out_ioas_id, flags=value)
            e = _errno(fd, B.IOMMU_HWPT_ALLOC, h)
            allocs[flag] = "ok" if e == 0 else _name(e)
            if e == 0:
                fd.ioctl(B.IOMMU_DESTROY, _struct("iommu_destroy", id=h.out_hwpt_id))
        obs["hwpt_alloc"] = allocs
        fd.ioctl(B.IOMMU_VFIO_IOAS, _struct("iommu_vfio_ioas", op=B.IOMMU_VFIO_IOAS_SET, ioas_id=ioas.out_ioas_id))
        obs["attach_pt_is_ioas"] = dev.attach(ioas.out_ioas_id) != ioas.out_ioas_id
        ranges = (B.iommu_iova_range * 16)()
        r = _struct("iommu_ioas_iova_ranges", ioas_id=ioas.out_ioas_id, num_iovas=16,
                    allowed_iovas=ctypes.addressof(ranges))
        fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        obs["iova_ranges_attached"] = [[hex(ranges[i].start), hex(ranges[i].last)] for i in range(r.num_iovas)]
        obs["iova_alignment"] = hex(r.out_iova_alignment)
        info = B.vfio_iommu_type1_info(argsz=ctypes.sizeof(B.vfio_iommu_type1_info))
        fd.ioctl(B.VFIO_IOMMU_GET_INFO, info)
        obs["iova_pgsizes"] = hex(info.iova_pgsizes)  # the attached domain's pgsize_bitmap
        di = dev.info()
        obs["vfio_device_info"] = {"flags": hex(di.flags), "num_regions": di.num_regions, "num_irqs": di.num_irqs}
        regions = []
        for i in range(di.num_regions):
            buf = bytearray(4096)  # room for the capability chain
            ri = B.vfio_region_info.from_buffer(buf)
            ri.argsz, ri.index = len(buf), i
            e = _errno(dev, B.VFIO_DEVICE_GET_REGION_INFO, buf)
            ri = B.vfio_region_info.from_buffer_copy(buf)
            entry = {"index": i, "errno": _name(e) if e else "ok"}
            if not e:
                entry.update(flags=hex(ri.flags), size=hex(ri.size), offset=hex(ri.offset), argsz=ri.argsz,
                             cap_offset=ri.cap_offset,
                             caps=bytes(buf[ctypes.sizeof(B.vfio_region_info):ri.argsz]).hex() if ri.cap_offset else "")
            regions.append(entry)
        obs["vfio_regions"] = regions
        irqs = []
        for i in range(di.num_irqs):
            ii = B.vfio_irq_info(argsz=ctypes.sizeof(B.vfio_irq_info), index=i)
            e = _errno(dev, B.VFIO_DEVICE_GET_IRQ_INFO, ii)
            irqs.append({"index": i, "errno": _name(e) if e else "ok", "flags": hex(ii.flags), "count": ii.count})
        obs["vfio_irqs"] = irqs
        cfg = B.vfio_region_info(argsz=ctypes.sizeof(B.vfio_region_info), index=B.VFIO_PCI_CONFIG_REGION_INDEX)
        dev.ioctl(B.VFIO_DEVICE_GET_REGION_INFO, cfg)
        # config space as vfio-pci virtualizes it (vfio_pci_config.c): what a VMM reads, unlike sysfs
        obs["vfio_config"] = os.pread(dev.fd, cfg.size, cfg.offset).hex()
    return obs


def capture_profile(fd, name: str, bdfs: list[str]) -> dict:
    """This machine's profile (model/profile.py's format) for the devices `bdfs` (bound to
    vfio-pci): the unit's registers and each device from sysfs, and what iommufd and VFIO
    answered for the first device."""
    import platform
    import time

    from model.profile import FORMAT

    if not bdfs:
        raise LookupError("no VFIO devices to capture (name them with --vfio-device, or use a VM profile with "
                          "devices: vm:vtd, vm:amd)")
    unit = _unit_registers()
    return {
        "format": FORMAT, "name": name,
        "provenance": {"kernel": f"Linux {platform.release()} {platform.version()}",
                       "captured": time.strftime("%Y-%m-%d"),
                       "command": "iommufd-conformance probe --save-profile",
                       "unit": unit["unit"]},
        "unit": {"driver": unit["driver"], "registers": unit["registers"]},
        "params": _module_params(),
        "devices": [_pci_device(b) for b in bdfs],
        "observed": _observe_vfio(fd, bdfs[0]),
    }


def qemu_version(qemu: str | None = None) -> str:
    """The first line of `qemu-system-x86_64 --version`, as a profile's provenance records it."""
    import subprocess

    from conformance import vm

    out = subprocess.run([qemu or vm.QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()
    return out[0] if out else "unknown"


def profile_for_vm(vm_profile: str, log=print, directory=None) -> str:
    """The profile the model plays beside the VM machine `vm_profile` (explore's device rules): the
    one model/profiles/ holds when this host's QEMU is the QEMU it was captured on; else this
    QEMU's machine captured now (`probe --save-profile`, about 8 s), cached by QEMU version. The
    unit QEMU emulates (its cap/ecap, EFR, the edu it offers) follows QEMU's version, so a model
    of another version's machine would differ from this guest by design, not by a bug.
    `directory`: where captures are kept (default: the cache's profiles/)."""
    import hashlib
    import subprocess
    import sys

    from codegen.debian import cache_dir
    from conformance import vm
    from model.profile import load

    prof = vm.profile_named(vm_profile)
    committed = load(prof.model_profile)
    here = qemu_version()
    if committed.provenance.get("qemu") == here:
        return prof.model_profile
    path = (directory or cache_dir() / "profiles") / f"{prof.model_profile}-{hashlib.sha256(here.encode()).hexdigest()[:12]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"{here} is not the QEMU {prof.model_profile} was captured on ({committed.provenance.get('qemu')}): "
            f"capturing this QEMU's {prof.name} machine into {path}")
        subprocess.run([sys.executable, "-m", "conformance.cli", "probe", "--target", f"vm:{prof.name}",
                        "--save-profile", str(path), "--profile-name", prof.model_profile], check=True,
                       stdout=subprocess.DEVNULL)
    return str(path)
