"""A valid command per ioctl, for the generated cases that change one field of a command that
would otherwise succeed (conformance/tests/test_generated_cases.py).

Each base builds, on a fresh file, objects the command needs and returns the command's bytes and
the objects it names. Only what a target can do without devices is here: the device-facing
ioctls need the mock IOMMU and their cases skip until it is modelled. `unread` lists user
pointers the handler does not dereference for that command, with the kernel's reason.
"""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, field

from conformance.tests.helpers import PAGE, RW, ioas_alloc, map_
from model.uapi import T as B


@dataclass
class Base:
    cmd: bytearray
    unread: dict[str, str] = field(default_factory=dict)
    keep: list = field(default_factory=list)  # buffers the command points into


def _bytes(cmd) -> bytearray:
    return bytearray(bytes(cmd))


def _buffer(npages: int = 4):
    m = mmap.mmap(-1, npages * PAGE)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def destroy(fd):
    return Base(_bytes(B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=ioas_alloc(fd))))


def ioas_alloc_(fd):
    return Base(_bytes(B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))))


def iova_ranges(fd):
    out = (B.iommu_iova_range * 4)()
    return Base(_bytes(B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=ioas_alloc(fd),
                                                num_iovas=4, allowed_iovas=ctypes.addressof(out))), keep=[out])


def allow_iovas(fd):
    r = (B.iommu_iova_range * 1)(B.iommu_iova_range(PAGE, 16 * PAGE - 1))
    return Base(_bytes(B.iommu_ioas_allow_iovas(size=ctypes.sizeof(B.iommu_ioas_allow_iovas), ioas_id=ioas_alloc(fd),
                                                num_iovas=1, allowed_iovas=ctypes.addressof(r))), keep=[r])


def ioas_map(fd):
    m, va = _buffer()
    return Base(_bytes(B.iommu_ioas_map(size=ctypes.sizeof(B.iommu_ioas_map), flags=RW, ioas_id=ioas_alloc(fd),
                                        user_va=va, length=PAGE)),
                unread={"user_va": "iopt_alloc_user_pages() does not read the VA; pages are pinned only "
                                   "when a domain is filled (no device here)"}, keep=[m])


def ioas_map_file(fd):
    import os

    mfd = os.memfd_create("iommufd-base")
    os.ftruncate(mfd, PAGE)
    return Base(_bytes(B.iommu_ioas_map_file(size=ctypes.sizeof(B.iommu_ioas_map_file), flags=RW,
                                             ioas_id=ioas_alloc(fd), fd=mfd, length=PAGE)), keep=[mfd])


def ioas_copy(fd):
    m, va = _buffer()
    src = ioas_alloc(fd)
    iova = map_(fd, src, va, PAGE)
    return Base(_bytes(B.iommu_ioas_copy(size=ctypes.sizeof(B.iommu_ioas_copy), flags=RW, dst_ioas_id=ioas_alloc(fd),
                                         src_ioas_id=src, length=PAGE, src_iova=iova)), keep=[m])


def ioas_unmap(fd):
    m, va = _buffer()
    ioas = ioas_alloc(fd)
    iova = map_(fd, ioas, va, PAGE)
    return Base(_bytes(B.iommu_ioas_unmap(size=ctypes.sizeof(B.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                          length=PAGE)), keep=[m])


def option(fd):
    return Base(_bytes(B.iommu_option(size=ctypes.sizeof(B.iommu_option), option_id=B.IOMMU_OPTION_HUGE_PAGES,
                                      op=B.IOMMU_OPTION_OP_GET, object_id=ioas_alloc(fd))))


def vfio_ioas(fd):
    return Base(_bytes(B.iommu_vfio_ioas(size=ctypes.sizeof(B.iommu_vfio_ioas), op=B.IOMMU_VFIO_IOAS_SET,
                                         ioas_id=ioas_alloc(fd))))


def change_process(fd):
    return Base(_bytes(B.iommu_ioas_change_process(size=ctypes.sizeof(B.iommu_ioas_change_process))))


BASES = {
    "IOMMU_DESTROY": destroy,
    "IOMMU_IOAS_ALLOC": ioas_alloc_,
    "IOMMU_IOAS_IOVA_RANGES": iova_ranges,
    "IOMMU_IOAS_ALLOW_IOVAS": allow_iovas,
    "IOMMU_IOAS_MAP": ioas_map,
    "IOMMU_IOAS_MAP_FILE": ioas_map_file,
    "IOMMU_IOAS_COPY": ioas_copy,
    "IOMMU_IOAS_UNMAP": ioas_unmap,
    "IOMMU_OPTION": option,
    "IOMMU_VFIO_IOAS": vfio_ioas,
    "IOMMU_IOAS_CHANGE_PROCESS": change_process,
}
