"""Event queue ioctl handlers (drivers/iommu/iommufd/eventq.c).

IOMMU_VEVENTQ_ALLOC needs a vIOMMU, which needs a device: with none, the kernel's checks run up
to the vIOMMU lookup, which answers ENOENT. IOMMU_FAULT_QUEUE_ALLOC needs no device, but its
object owns an anonymous-inode file installed in the caller's fd table, whose lifetime (and
read/write protocol) the model does not follow yet: past its flags check it is not modelled.
"""
from __future__ import annotations

import errno

from model.device import needs_devices
from model.objects import IommufdError, NotModelled
from model.uapi import B
from model.viommu import iommufd_get_viommu
VEVENTQ_MAX_DEPTH = 1 << 19  # eventq.c:502


def iommufd_veventq_alloc(ucmd) -> int:
    """iommufd_veventq_alloc() (eventq.c:504): flags, __reserved, or type
    IOMMU_VEVENTQ_TYPE_DEFAULT EOPNOTSUPP (:512); veventq_depth 0 or > 1 << 19 EINVAL (:515);
    then the vIOMMU (:518) ENOENT."""
    cmd = ucmd.cmd
    if cmd.flags or cmd.__reserved or cmd.type == B.IOMMU_VEVENTQ_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.veventq_depth or cmd.veventq_depth > VEVENTQ_MAX_DEPTH:
        raise IommufdError(errno.EINVAL)
    viommu = iommufd_get_viommu(ucmd, cmd.viommu_id)
    raise needs_devices("IOMMU_VEVENTQ_ALLOC", viommu)


def iommufd_fault_alloc(ucmd) -> int:
    """iommufd_fault_alloc() (eventq.c): flags EOPNOTSUPP; then a FAULT object with its fd."""
    if ucmd.cmd.flags:
        raise IommufdError(errno.EOPNOTSUPP)
    raise NotModelled("IOMMU_FAULT_QUEUE_ALLOC")
