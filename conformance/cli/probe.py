"""`probe --target T [--json]`: what a target supports."""
from __future__ import annotations

import json
import sys


def _cmd_probe(args) -> int:
    from conformance.cli import target as parse

    target = parse(args.target)
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


def register(sub) -> None:
    p = sub.add_parser("probe", help="list what a target supports (ioctls, MAP_FILE, mock devices, dirty "
                                     "tracking, hardware info, vIOMMU types, mmap, the uapi it speaks)")
    p.add_argument("--target", default="model", help="model (default), kernel, vm[=KERNEL][:PROFILE] (profiles: mock, vtd, amd)")
    p.add_argument("--vfio-device", action="append", default=[], metavar="BDF",
                   help="a PCI device bound to vfio-pci to report the IOMMU unit of (kernel target; the VM's "
                        "profiles bring their own)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_probe)
