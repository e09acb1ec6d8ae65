"""Hardware as data: a machine's IOMMU unit and PCI devices as the kernel's drivers read them.

A profile is captured, never typed in: `iommufd-conformance probe --target vm:vtd --save-profile
FILE` reads it from the guest's sysfs and from what iommufd and VFIO answered there (the same
command with --target kernel captures a real machine). model/profiles/NAME.json holds the
captured ones, each with its provenance (machine, QEMU, kernel, date).

What the model decides from (inputs), read as the kernel's drivers read them:
- `unit.registers`: the IOMMU's registers as the driver exposes them in sysfs
  (intel-iommu: /sys/class/iommu/dmarN/intel-iommu/{cap,ecap,version,address}; amd_iommu:
  /sys/class/iommu/ivhdN/amd-iommu/{cap,features});
- `params`: module parameters that change answers (iommufd.allow_unsafe_interrupts: Y/N), from
  /sys/module/*/parameters;
- per PCI device: its config space (the sysfs `config` file as root reads it), its BARs (the
  sysfs `resource` lines), its IOMMU group and the group's reserved regions.

What the kernel answered there (`observed`), kept to check the model's decisions against and
never read by the model's driver code: GET_HW_INFO, HWPT_ALLOC per flag, the IOVA ranges of an
attached IOAS, and VFIO's device, region and IRQ info of the first device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
FORMAT = 1


class ProfileError(ValueError):
    """A profile file that cannot be used: the message names the file and what is wrong."""


@dataclass(frozen=True)
class PciDeviceInfo:
    bdf: str  # domain:bus:device.function
    vendor: int
    device: int
    iommu_group: int
    config: bytes  # the config space (256 bytes, or 4096 for PCIe extended config)
    resources: tuple[tuple[int, int, int], ...]  # sysfs `resource`: (start, end, flags) per line
    reserved_regions: tuple[tuple[int, int, str], ...]  # the group's: (start, last, type)

    def bar(self, index: int) -> tuple[int, int, int]:
        """(start, size, IORESOURCE_* flags) of BAR `index`; size 0 for an unused BAR."""
        start, end, flags = self.resources[index]
        return start, (end - start + 1) if end else 0, flags


@dataclass(frozen=True)
class IommuUnit:
    driver: str  # "intel-iommu" or "amd-iommu", as /sys/class/iommu/*/ names its attribute group
    registers: dict  # sysfs attribute -> value (ints; hex in the file)


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    provenance: dict
    unit: IommuUnit
    params: dict  # "module.parameter" -> its sysfs text ("Y", "N", ...)
    devices: tuple[PciDeviceInfo, ...]
    observed: dict

    def device(self, bdf: str) -> PciDeviceInfo:
        for d in self.devices:
            if d.bdf == bdf:
                return d
        raise KeyError(bdf)


def _int(v) -> int:
    return int(v, 0) if isinstance(v, str) else int(v)


def parse(data: dict, path: Path) -> Profile:
    """A Profile from a profile file's JSON; ProfileError naming the file and the field."""
    where = str(path)
    try:
        if data.get("format") != FORMAT:
            raise ProfileError(f"{where}: format {data.get('format')!r}, this model reads format {FORMAT}")
        unit = data["unit"]
        devices = tuple(
            PciDeviceInfo(
                bdf=d["bdf"], vendor=_int(d["vendor"]), device=_int(d["device"]), iommu_group=_int(d["iommu_group"]),
                config=bytes.fromhex(d["config"]),
                resources=tuple((_int(s), _int(e), _int(f)) for s, e, f in d["resources"]),
                reserved_regions=tuple((_int(s), _int(e), str(t)) for s, e, t in d["reserved_regions"]))
            for d in data["devices"])
        return Profile(name=data["name"], path=path, provenance=dict(data["provenance"]),
                       unit=IommuUnit(unit["driver"], {k: _int(v) for k, v in unit["registers"].items()}),
                       params=dict(data.get("params", {})), devices=devices, observed=dict(data.get("observed", {})))
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"{where}: not a usable profile ({type(e).__name__}: {e})") from None


def load(name_or_path: str | Path) -> Profile:
    """model/profiles/NAME.json, or a profile file by path."""
    p = Path(name_or_path)
    if p.suffix != ".json":
        p = PROFILE_DIR / f"{name_or_path}.json"
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        known = ", ".join(sorted(x.stem for x in PROFILE_DIR.glob("*.json")))
        raise ProfileError(f"{p}: {e.strerror} (profiles here: {known or 'none'})") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"{p}:{e.lineno}:{e.colno}: {e.msg}") from None
    return parse(data, p)


def names() -> list[str]:
    return sorted(x.stem for x in PROFILE_DIR.glob("*.json"))
