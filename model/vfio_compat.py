"""VFIO type1 compatibility on /dev/iommu (drivers/iommu/iommufd/vfio_compat.c).

Modelled as the project's test kernel is configured (CONFIG_VFIO_NOIOMMU=n): the compat IOAS's
page sizes follow the domains attached to it (iommufd_get_pagesizes() ANDs each domain's
pgsize_bitmap into PAGE_SIZE and larger), and VFIO_DMA_CC_IOMMU is 1 only while every paging
HWPT on it enforces cache coherency (the mock's never do).
"""
from __future__ import annotations

import ctypes
import errno

from model.domain import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from model.io_pagetable import iopt_disable_large_pages
from model.ioas import iopt_map_user_pages
from model.limits import PAGE_SIZE, U32_MAX, ULONG_MAX
from model.objects import IommufdError
from model.uapi import B


def get_compat_ioas(ictx):
    """get_compat_ioas(): the IOAS IOMMU_VFIO_IOAS set, or ENODEV."""
    obj = ictx.vfio_ioas
    if obj is None or ictx.objects.objects.get(obj.id) is not obj:
        raise IommufdError(errno.ENODEV)
    return obj


def iommufd_vfio_ioas(ucmd) -> int:
    """iommufd_vfio_ioas(): GET / SET / CLEAR the compatibility IOAS."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    if cmd.op == B.IOMMU_VFIO_IOAS_GET:
        cmd.ioas_id = get_compat_ioas(ictx).id
        ucmd.respond()
        return 0
    if cmd.op == B.IOMMU_VFIO_IOAS_SET:
        ictx.vfio_ioas = ictx.objects.get(cmd.ioas_id, "IOAS")
        return 0
    if cmd.op == B.IOMMU_VFIO_IOAS_CLEAR:
        ictx.vfio_ioas = None
        return 0
    raise IommufdError(errno.EOPNOTSUPP)


def iommufd_vfio_check_extension(ictx, type: int) -> int:
    if type in (B.VFIO_TYPE1_IOMMU, B.VFIO_TYPE1v2_IOMMU, B.VFIO_UNMAP_ALL):
        return 1  # !ictx->no_iommu_mode: only a no-iommu VFIO device sets it
    if type == B.VFIO_DMA_CC_IOMMU:
        # iommufd_vfio_cc_iommu() (vfio_compat.c:256): ENODEV without a compat IOAS; 0 when any
        # paging HWPT on it does not enforce coherency (the mock driver never does: it lacks
        # IOMMU_CAP_ENFORCE_CACHE_COHERENCY), else 1. Found by explore on the VM.
        ioas = get_compat_ioas(ictx)
        return int(all(hwpt.enforce_cache_coherency for hwpt in ioas.hwpt_list))
    return 0  # NOIOMMU (CONFIG_VFIO_NOIOMMU=n), nesting, UPDATE_VADDR, unknown


def iommufd_vfio_set_iommu(ictx, type: int) -> int:
    if type not in (B.VFIO_TYPE1_IOMMU, B.VFIO_TYPE1v2_IOMMU):
        raise IommufdError(errno.EINVAL)
    ioas = get_compat_ioas(ictx)
    if type == B.VFIO_TYPE1_IOMMU:
        iopt_disable_large_pages(ioas.iopt)  # type1 may unmap in the middle: no large IOPTEs
    return 0


def iommufd_get_pagesizes(iopt) -> int:
    """vfio_compat.c iommufd_get_pagesizes(): the page sizes every domain of the IOAS maps."""
    pgsize_bitmap = ULONG_MAX
    for domain in iopt.domains:
        pgsize_bitmap &= domain.pgsize_bitmap
    if pgsize_bitmap & (PAGE_SIZE - 1):  # see vfio_update_pgsize_bitmap()
        pgsize_bitmap = (pgsize_bitmap & ~(PAGE_SIZE - 1) & ULONG_MAX) | PAGE_SIZE
    return max(pgsize_bitmap, iopt.iova_alignment)


def iommufd_vfio_iommu_get_info(ucmd) -> int:
    """iommufd_vfio_iommu_get_info(): flags, page sizes and the DMA_AVAIL and IOVA_RANGE
    capability chain, written only as far as argsz reaches; argsz answers the full size."""
    ictx, mem, arg = ucmd.ictx, ucmd.mem, ucmd.ubuffer
    info_t = B.vfio_iommu_type1_info
    minsz = info_t.iova_pgsizes.offset + 8
    info = info_t.from_buffer_copy(mem.read(arg, minsz).ljust(ctypes.sizeof(info_t), b"\0"))
    if info.argsz < minsz:
        raise IommufdError(errno.EINVAL)
    minsz = min(info.argsz, ctypes.sizeof(info_t))
    iopt = get_compat_ioas(ictx).iopt
    info.flags = B.VFIO_IOMMU_INFO_PGSIZES
    info.iova_pgsizes = iommufd_get_pagesizes(iopt)
    info.cap_offset = 0
    argsz = info.argsz

    def fill_dma_avail(cur, avail):
        cap = B.vfio_iommu_type1_info_dma_avail()
        cap.header.id = B.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        cap.header.version = 1
        cap.avail = U32_MAX
        if avail >= ctypes.sizeof(cap):
            mem.write(cur, bytes(cap))
        return ctypes.sizeof(cap)

    def fill_iova(cur, avail):
        cap_t = B.vfio_iommu_type1_info_cap_iova_range
        cap = cap_t()
        cap.header.id = B.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
        cap.header.version = 1
        rsize = ctypes.sizeof(B.vfio_iova_range)
        base = ctypes.sizeof(cap_t)
        n = 0
        for start, last in iopt.allowed_holes(0, ULONG_MAX):
            if avail >= base + rsize * (n + 1):
                mem.write(cur + base + rsize * n, start.to_bytes(8, "little") + last.to_bytes(8, "little"))
            n += 1
        cap.nr_iovas = n
        if avail >= base + rsize * n:
            mem.write(cur, bytes(cap))
        return base + rsize * n

    total = ctypes.sizeof(info_t)
    last_cap = None
    for fill in (fill_dma_avail, fill_iova):
        if argsz > total:
            size = fill(arg + total, argsz - total)
        else:
            size = fill(None, 0)
        size = (size + 7) & ~7
        if last_cap is not None and argsz >= total:
            mem.write(last_cap + B.vfio_info_cap_header.next.offset, total.to_bytes(4, "little"))
        last_cap = arg + total
        total += size
    if argsz >= total:
        info.cap_offset = ctypes.sizeof(info_t)
    info.argsz = total
    info.flags |= B.VFIO_IOMMU_INFO_CAPS
    mem.write(arg, bytes(info)[:minsz])
    return 0


def _copy_minsz(ucmd, struct_t, last_field: str):
    """copy_from_user of offsetofend(struct, last_field) bytes into a zeroed struct."""
    minsz = getattr(struct_t, last_field).offset + getattr(struct_t, last_field).size
    data = ucmd.mem.read(ucmd.ubuffer, minsz).ljust(ctypes.sizeof(struct_t), b"\0")
    return struct_t.from_buffer_copy(data), minsz


def iommufd_vfio_map_dma(ucmd) -> int:
    """iommufd_vfio_map_dma(): argsz and flags (EINVAL), then a fixed-IOVA iopt_map_user_pages()
    with IOMMU_CACHE | the flags' READ/WRITE (no check that one of them is set)."""
    m, minsz = _copy_minsz(ucmd, B.vfio_iommu_type1_dma_map, "size")
    if m.argsz < minsz or m.flags & ~(B.VFIO_DMA_MAP_FLAG_READ | B.VFIO_DMA_MAP_FLAG_WRITE):
        raise IommufdError(errno.EINVAL)
    prot = IOMMU_CACHE
    if m.flags & B.VFIO_DMA_MAP_FLAG_READ:
        prot |= IOMMU_READ
    if m.flags & B.VFIO_DMA_MAP_FLAG_WRITE:
        prot |= IOMMU_WRITE
    iopt = get_compat_ioas(ucmd.ictx).iopt
    iopt_map_user_pages(ucmd, iopt, m.iova, m.vaddr, m.size, prot, False)
    return 0


def iommufd_vfio_unmap_dma(ucmd) -> int:
    """iommufd_vfio_unmap_dma(): UNMAP_FLAG_ALL needs iova = size = 0; with large pages disabled
    (type1) the range is cut out of its areas first (iopt_cut_iova). `size` answers the bytes
    unmapped; the reply is written even when the unmap failed."""
    u, minsz = _copy_minsz(ucmd, B.vfio_iommu_type1_dma_unmap, "size")
    if u.argsz < minsz or u.flags & ~B.VFIO_DMA_UNMAP_FLAG_ALL:
        raise IommufdError(errno.EINVAL)
    iopt = get_compat_ioas(ucmd.ictx).iopt
    failure = None
    if u.flags & B.VFIO_DMA_UNMAP_FLAG_ALL:
        if u.iova or u.size:
            raise IommufdError(errno.EINVAL)
        unmapped, rc = iopt.unmap_all()
    else:
        if iopt.disable_large_pages:
            last = (u.iova + u.size - 1) & ULONG_MAX
            iopt.cut_iova([last, (u.iova - 1) & ULONG_MAX] if u.iova else [last])
        try:
            unmapped, rc = iopt.unmap_iova(u.iova, u.size)  # nothing there is success, size 0
        except IommufdError as e:
            unmapped, rc, failure = 0, 0, e  # raised below: model/outcomes.py records where it was raised
    u.size = unmapped
    ucmd.mem.write(ucmd.ubuffer, bytes(u)[:minsz])
    if failure is not None:
        raise failure
    if rc:
        raise IommufdError(rc)
    return 0


def iommufd_vfio_ioctl(ucmd, cmd: int) -> int:
    """iommufd_vfio_ioctl(): numbers it does not know are -ENOIOCTLCMD, ENOTTY to userspace.
    `ucmd.ubuffer` is the raw argument (an address or, for SET_IOMMU / CHECK_EXTENSION, a value)."""
    ictx, arg = ucmd.ictx, ucmd.ubuffer
    if cmd == B.VFIO_GET_API_VERSION:
        return B.VFIO_API_VERSION
    if cmd == B.VFIO_SET_IOMMU:
        return iommufd_vfio_set_iommu(ictx, arg)
    if cmd == B.VFIO_CHECK_EXTENSION:
        return iommufd_vfio_check_extension(ictx, arg)
    if cmd == B.VFIO_IOMMU_GET_INFO:
        return iommufd_vfio_iommu_get_info(ucmd)
    if cmd == B.VFIO_IOMMU_MAP_DMA:
        return iommufd_vfio_map_dma(ucmd)
    if cmd == B.VFIO_IOMMU_UNMAP_DMA:
        return iommufd_vfio_unmap_dma(ucmd)
    raise IommufdError(errno.ENOTTY)  # VFIO_IOMMU_DIRTY_PAGES included


def iommufd_vfio_compat_ioas_get_id(ictx) -> int:
    """iommufd_vfio_compat_ioas_get_id() (vfio_compat.c:36): the compat IOAS's ID, ENODEV
    without one (VFIO's group path attaches a device to it: vfio_iommufd_compat_attach_ioas())."""
    return get_compat_ioas(ictx).id


def iommufd_vfio_compat_ioas_create(ictx) -> None:
    """iommufd_vfio_compat_ioas_create() (vfio_compat.c:80): VFIO_GROUP_SET_CONTAINER with an
    iommufd makes the compat IOAS unless one is set (the new IOAS is aborted then); it is a
    finalized object as if userspace made it (IOMMU_VFIO_IOAS_GET finds it, IOMMU_DESTROY may
    destroy it). EINVAL in no-iommu mode (never set here: CONFIG_VFIO_NOIOMMU=n)."""
    from model.ioas import IommufdIoas

    table = ictx.objects
    ioas = table.alloc(IommufdIoas())
    if getattr(ictx, "no_iommu_mode", False):
        table.abort(ioas)
        raise IommufdError(errno.EINVAL)
    try:
        get_compat_ioas(ictx)
    except IommufdError:
        ictx.vfio_ioas = ioas
        table.finalize(ioas)
        return
    table.abort(ioas)
