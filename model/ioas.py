"""IOAS ioctl handlers (drivers/iommu/iommufd/ioas.c)."""
from __future__ import annotations

import errno

from model.io_pagetable import IoPagetable
from model.objects import IommufdError, IommufdObject

ULONG_MAX = (1 << 64) - 1


def iommufd_ioas_alloc_ioctl(ucmd) -> int:
    """iommufd_ioas_alloc_ioctl(): flags must be 0; the ID is answered before finalize."""
    cmd = ucmd.cmd
    if cmd.flags:
        raise IommufdError(errno.EOPNOTSUPP)
    table = ucmd.ictx.objects
    cmd.out_ioas_id = table.alloc_id()
    ucmd.respond()  # EFAULT here aborts the object: nothing is inserted
    table.insert(IommufdObject("IOAS", data=IoPagetable()))
    return 0


def iommufd_ioas_iova_ranges(ucmd) -> int:
    """iommufd_ioas_iova_ranges(): the holes of the reserved tree, EMSGSIZE if they do not fit."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    iopt = ucmd.ictx.objects.get(cmd.ioas_id, "IOAS").data
    max_iovas = cmd.num_iovas
    cmd.num_iovas = 0
    cmd.out_iova_alignment = iopt.iova_alignment
    for start, last in iopt.allowed_holes(0, ULONG_MAX):
        if cmd.num_iovas < max_iovas:
            elm = start.to_bytes(8, "little") + last.to_bytes(8, "little")
            ucmd.ictx.mem.write(cmd.allowed_iovas + 16 * cmd.num_iovas, elm)
        cmd.num_iovas += 1
    ucmd.respond()
    if cmd.num_iovas > max_iovas:
        raise IommufdError(errno.EMSGSIZE)
    return 0


HANDLERS = {
    "IOMMU_IOAS_ALLOC": iommufd_ioas_alloc_ioctl,
    "IOMMU_IOAS_IOVA_RANGES": iommufd_ioas_iova_ranges,
}
