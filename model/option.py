"""IOMMU_OPTION (drivers/iommu/iommufd/main.c iommufd_option, ioas.c iommufd_option_rlimit_mode
and iommufd_ioas_option)."""
from __future__ import annotations

import errno
import os

import generated

from model.limits import PAGE_SIZE
from model.objects import IommufdError
from model.pages import capable

B = generated.load("7.2")
CAP_SYS_RESOURCE = 24  # include/uapi/linux/capability.h
ACCOUNT_USER, ACCOUNT_MM = "user", "mm"  # IOPT_PAGES_ACCOUNT_USER / _MM (pages.c)


def iopt_calculate_iova_alignment(iopt) -> None:
    """iopt_calculate_iova_alignment(): PAGE_SIZE with large pages disabled, else 1 (no domains
    or accesses yet); growing it fails with EADDRINUSE if an area is not aligned
    (iopt_check_iova_alignment)."""
    new = PAGE_SIZE if iopt.disable_large_pages else 1
    if new > iopt.iova_alignment:
        mask = new - 1
        for a in iopt.areas:
            if a.start & mask or (a.last - a.start + 1) & mask or a.page_offset & mask:
                raise IommufdError(errno.EADDRINUSE)
    iopt.iova_alignment = new


def iopt_disable_large_pages(iopt) -> None:
    """iopt_disable_large_pages(): EINVAL only with domains holding mappings (none without
    devices); the flag is rolled back if the alignment cannot grow."""
    if iopt.disable_large_pages:
        return
    iopt.disable_large_pages = True
    try:
        iopt_calculate_iova_alignment(iopt)
    except IommufdError:
        iopt.disable_large_pages = False
        raise


def iopt_enable_large_pages(iopt) -> None:
    iopt.disable_large_pages = False
    iopt_calculate_iova_alignment(iopt)


def iommufd_option_rlimit_mode(cmd, ictx) -> None:
    """EOPNOTSUPP with an object_id; SET needs CAP_SYS_RESOURCE (EPERM) and an empty
    object table (EBUSY); val64 0 = per user, 1 = per mm, else EINVAL."""
    if cmd.object_id:
        raise IommufdError(errno.EOPNOTSUPP)
    if cmd.op == B.IOMMU_OPTION_OP_GET:
        cmd.val64 = int(ictx.account_mode == ACCOUNT_MM)
        return
    if cmd.op == B.IOMMU_OPTION_OP_SET:
        if not capable(os.getpid(), CAP_SYS_RESOURCE):  # the calling task
            raise IommufdError(errno.EPERM)
        if ictx.objects.objects:
            raise IommufdError(errno.EBUSY)
        if cmd.val64 == 0:
            ictx.account_mode = ACCOUNT_USER
        elif cmd.val64 == 1:
            ictx.account_mode = ACCOUNT_MM
        else:
            raise IommufdError(errno.EINVAL)
        return
    raise IommufdError(errno.EOPNOTSUPP)


def iommufd_ioas_option(ucmd) -> None:
    """iommufd_ioas_option() + iommufd_ioas_option_huge_pages(): per IOAS."""
    cmd = ucmd.cmd
    iopt = ucmd.ictx.objects.get(cmd.object_id, "IOAS").data
    if cmd.op == B.IOMMU_OPTION_OP_GET:
        cmd.val64 = int(not iopt.disable_large_pages)
        return
    if cmd.op == B.IOMMU_OPTION_OP_SET:
        if cmd.val64 == 0:
            iopt_disable_large_pages(iopt)
        elif cmd.val64 == 1:
            iopt_enable_large_pages(iopt)
        else:
            raise IommufdError(errno.EINVAL)
        return
    raise IommufdError(errno.EOPNOTSUPP)


def iommufd_option(ucmd) -> int:
    """iommufd_option(): __reserved first, then by option_id; only val64 is written back."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    if cmd.option_id == B.IOMMU_OPTION_RLIMIT_MODE:
        iommufd_option_rlimit_mode(cmd, ucmd.ictx)
    elif cmd.option_id == B.IOMMU_OPTION_HUGE_PAGES:
        iommufd_ioas_option(ucmd)
    else:
        raise IommufdError(errno.EOPNOTSUPP)
    off = B.iommu_option.val64.offset
    ucmd.ictx.mem.write(ucmd.ubuffer + off, cmd.val64.to_bytes(8, "little"))
    return 0


HANDLERS = {"IOMMU_OPTION": iommufd_option}
