"""`probe --target T [--json]`: what a target supports."""
from __future__ import annotations

import json
import sys


def _cmd_probe(args) -> int:
    from conformance.cli import target as parse

    target = parse(args.target)
    if args.save_profile:
        return _save_profile(args, target)
    if not target.in_process:  # vm: the same command inside the guest, against its /dev/iommu
        from conformance.run import command_in_vm

        return command_in_vm(["probe", "--target", "kernel", *(["--json"] if args.json else [])], target.value,
                             profile=target.profile)
    if why := target.unavailable():
        print(f"iommufd-conformance: target {target.name}: {why}", file=sys.stderr)
        return 2
    from conformance.probe import probe, render

    p = probe(target, args.vfio_device or None)
    print(json.dumps(p.as_dict(), indent=2) if args.json else render(p))
    return 0


def _save_profile(args, target) -> int:
    """--save-profile FILE: the machine's IOMMU unit and VFIO devices as a profile file
    (model/profile.py). On vm[:PROFILE] the guest captures it into the scratch directory and the
    host adds the machine it booted (QEMU's version and the IOMMU's -device line)."""
    from pathlib import Path

    out = Path(args.save_profile)
    name = args.profile_name or out.stem
    if not target.in_process:
        import shutil
        import tempfile

        from conformance import vm
        from conformance.run import ROOT, _status, vm_run

        scratch = Path(tempfile.mkdtemp(prefix="iommufd-profile-"))
        try:
            inside = scratch / "profile.json"
            res, failed = vm_run([sys.executable, "-m", "conformance.cli", "probe", "--target", "kernel",
                                  "--save-profile", str(inside), "--profile-name", name], target.value, 600,
                                 str(ROOT), profile=target.profile, scratch=scratch)
            status = failed or _status(res)
            if status:
                return status
            data = json.loads(inside.read_text())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        from conformance.probe import qemu_version

        prof = vm.profile_named(target.profile)
        data["provenance"].update(machine=" ".join([*prof.machine, "-device", vm.iommu_device_arg(prof) or "none",
                                                    *["-device edu"] * prof.edu]),
                                  qemu=qemu_version(), vm_profile=prof.name)
    else:
        if target.name != "kernel":
            print("iommufd-conformance: --save-profile reads a machine: use --target kernel or vm:PROFILE",
                  file=sys.stderr)
            return 2
        if why := target.unavailable():
            print(f"iommufd-conformance: target {target.name}: {why}", file=sys.stderr)
            return 2
        from conformance.probe import capture_profile
        from conformance.vfio_device import devices_from_env

        fd = target.open()
        try:
            data = capture_profile(fd, name, args.vfio_device or devices_from_env())
        except (LookupError, OSError) as e:
            print(f"iommufd-conformance: cannot capture a profile: {e}", file=sys.stderr)
            return 1
        finally:
            fd.close()
        data["provenance"]["machine"] = _dmi()
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"profile {name}: {data['unit']['driver']}, {len(data['devices'])} device(s) -> {out}")
    return 0


def _dmi() -> str:
    """The machine as firmware names it (/sys/class/dmi/id), for a profile's provenance."""
    from pathlib import Path

    d = Path("/sys/class/dmi/id")
    parts = []
    for f in ("sys_vendor", "product_name"):
        try:
            parts.append((d / f).read_text().strip())
        except OSError:
            pass
    return " ".join(parts) or "unknown"


def register(sub) -> None:
    p = sub.add_parser("probe", help="list what a target supports (ioctls, MAP_FILE, mock devices, dirty "
                                     "tracking, hardware info, vIOMMU types, mmap, the uapi it speaks)")
    p.add_argument("--target", default="model", help="model (default), kernel, vm[=KERNEL][:PROFILE] (profiles: mock, vtd, amd)")
    p.add_argument("--vfio-device", action="append", default=[], metavar="BDF",
                   help="a PCI device bound to vfio-pci to report the IOMMU unit of (kernel target; the VM's "
                        "profiles bring their own)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save-profile", metavar="FILE",
                   help="capture this machine's IOMMU unit and VFIO devices as a profile file for the model "
                        "(kernel or vm:PROFILE; the model's own are in model/profiles/)")
    p.add_argument("--profile-name", metavar="NAME", help="the saved profile's name (default: FILE's stem)")
    p.set_defaults(func=_cmd_probe)
