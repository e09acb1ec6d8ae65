"""What a VMM backend does with a vIOMMU's MMIO region, on any target (model or kernel).

Like QEMU's iommufd_backend_viommu_mmap() (backends/iommufd.c): map the region a vIOMMU
handed out (out_mmap_offset / out_mmap_length of its driver data) shared and read-write, and
say on failure which size, offset and vIOMMU it was; the caller unmaps it.
"""
from __future__ import annotations

import mmap
import os

from model.libc import Mapping


class BackendError(Exception):
    """A backend call failed: the message names what was asked; `errno` is the kernel's."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


def viommu_mmap(fd, viommu_id: int, size: int, offset: int) -> Mapping:
    """mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset) for vIOMMU
    `viommu_id`; BackendError naming size, offset and the vIOMMU if the kernel refuses."""
    if not viommu_id:
        raise ValueError("viommu_id must be a vIOMMU object ID (QEMU asserts it is non-zero)")
    try:
        return fd.mmap(size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, offset)
    except OSError as e:
        raise BackendError(f"failed to mmap (size={size:#x} offset={offset:#x}) for viommu "
                           f"(id={viommu_id}): {os.strerror(e.errno)}", e.errno) from None


def viommu_munmap(mapping: Mapping) -> None:
    """munmap() of a region viommu_mmap() mapped."""
    mapping.munmap()
