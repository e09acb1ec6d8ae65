"""`iommufd-conformance probe --target T`: what a target supports, found by asking it.

- each ioctl of the generated table: known (a size of 0 is EINVAL, below every min_size) or
  unknown (ENOTTY);
- IOAS_MAP_FILE of a memfd;
- IOMMUFD_TEST (IOMMU_TEST_CMD answers), and through a mock device, when there is one: the
  hardware-info type and capabilities (dirty tracking), HWPT allocation with dirty tracking,
  the selftest vIOMMU type and its mmap region;
- the uapi version it speaks: the newest generated version whose every iommufd ioctl it knows.

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

    def lacks(self, name: str) -> bool:
        return self.ioctls.get(name) is False

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


def probe(target) -> Probe:
    """Ask `target` (a conformance.targets.Target) what it supports."""
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
        return p
    finally:
        fd.close()


def _name(e: int) -> str:
    from conformance.report import errno_name

    return "not modelled" if e == -1 else errno_name(e)


def _device_features(fd, p: Probe, ioas_id: int) -> None:
    cmd = _struct("iommu_test_cmd", op=B.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas_id)
    e = _errno(fd, B.IOMMU_TEST_CMD, cmd)
    if e:
        why = "no IOMMUFD_TEST" if e == errno.ENOTTY else _name(e)
        p.iommufd_test = "no" if e == errno.ENOTTY else f"no ({why})"
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
             f"vIOMMU types: {p.viommu_types}", f"mmap: {p.mmap}", "ioctls:"]
    for name, known in p.ioctls.items():
        lines.append(f"  {name:<32} {'yes' if known else 'no (ENOTTY)'}")
    return "\n".join(lines)
