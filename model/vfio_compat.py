"""VFIO type1 compatibility on /dev/iommu (drivers/iommu/iommufd/vfio_compat.c)."""
from __future__ import annotations

import errno

from model.objects import IommufdError


def iommufd_vfio_ioctl(ictx, cmd: int, arg: int) -> int:
    """iommufd_vfio_ioctl(): numbers it does not know are -ENOIOCTLCMD, ENOTTY to userspace."""
    raise IommufdError(errno.ENOTTY)
