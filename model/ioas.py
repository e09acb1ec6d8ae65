"""IOAS objects and their ioctl handlers, IOMMU_OPTION's per-IOAS and rlimit parts
(drivers/iommu/iommufd/ioas.c)."""
from __future__ import annotations

import errno

from model import fault_inject, pages as _pages
from model.domain import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE
from model.dma_buf import dma_buf_get, dma_buf_put
from model.hooks import iommufd_test_dma_buf_iommufd_map, iommufd_test_syz_conv_iova_id
from model.io_pagetable import IoPagetable, _Areas, iopt_disable_large_pages, iopt_enable_large_pages
from model.limits import CAP_SYS_RESOURCE, PAGE_SIZE, U64_MAX, ULONG_MAX
from model import vfs
from model.objects import IommufdError, IommufdObject
from model.uaccess import UserFault
from model.uapi import B

_MAP_FLAGS = B.IOMMU_IOAS_MAP_FIXED_IOVA | B.IOMMU_IOAS_MAP_WRITEABLE | B.IOMMU_IOAS_MAP_READABLE


class IommufdIoas(IommufdObject):
    """struct iommufd_ioas: the io_pagetable, and the HWPTs attached to it (hwpt_list)."""

    type = "IOAS"

    def __init__(self):
        super().__init__()
        self.iopt = IoPagetable()
        self.hwpt_list: list = []  # iommufd_hwpt_paging objects whose domains are in iopt.domains


def iommufd_ioas_destroy(obj: IommufdIoas) -> None:
    """iommufd_ioas_destroy(): iopt_unmap_all() + iopt_destroy_table()."""
    obj.iopt.destroy()


def iommufd_ioas_alloc_ioctl(ucmd) -> int:
    """iommufd_ioas_alloc_ioctl(): flags must be 0; the ID is answered before finalize, and a
    fault writing it aborts the object (nothing is left)."""
    cmd = ucmd.cmd
    if cmd.flags:
        raise IommufdError(errno.EOPNOTSUPP)
    table = ucmd.ictx.objects
    ioas = table.alloc(IommufdIoas())
    cmd.out_ioas_id = ioas.id
    try:
        ucmd.respond()
    except BaseException:
        table.abort_and_destroy(ioas)
        raise
    table.finalize(ioas)
    return 0


def iommufd_ioas_iova_ranges(ucmd) -> int:
    """iommufd_ioas_iova_ranges(): the holes of the reserved tree, EMSGSIZE if they do not fit."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    iopt = _get_iopt(ucmd, cmd.ioas_id)
    max_iovas = cmd.num_iovas
    cmd.num_iovas = 0
    cmd.out_iova_alignment = iopt.iova_alignment
    for start, last in iopt.allowed_holes(0, ULONG_MAX):
        if cmd.num_iovas < max_iovas:
            elm = start.to_bytes(8, "little") + last.to_bytes(8, "little")
            ucmd.mem.write(cmd.allowed_iovas + 16 * cmd.num_iovas, elm)
        cmd.num_iovas += 1
    ucmd.respond()
    if cmd.num_iovas > max_iovas:
        raise IommufdError(errno.EMSGSIZE)
    return 0


def _get_iopt(ucmd, id: int) -> IoPagetable:
    """iommufd_get_ioas(): ENOENT for an unknown ID or another type."""
    return ucmd.ictx.objects.get(id, "IOAS").iopt


def conv_iommu_prot(map_flags: int) -> int:
    """conv_iommu_prot(): IOMMU_CACHE always, plus WRITE/READ from the flags."""
    prot = IOMMU_CACHE
    if map_flags & B.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= IOMMU_WRITE
    if map_flags & B.IOMMU_IOAS_MAP_READABLE:
        prot |= IOMMU_READ
    return prot


def _check_map_flags(flags: int, *sizes: int) -> None:
    """The prologue iommufd_ioas_map(), _map_file() and _copy() share: unknown flags EOPNOTSUPP,
    any value >= ULONG_MAX EOVERFLOW, neither READABLE nor WRITEABLE EINVAL."""
    if flags & ~_MAP_FLAGS:
        raise IommufdError(errno.EOPNOTSUPP)
    if any(v >= ULONG_MAX for v in sizes):
        raise IommufdError(errno.EOVERFLOW)
    if not flags & (B.IOMMU_IOAS_MAP_WRITEABLE | B.IOMMU_IOAS_MAP_READABLE):
        raise IommufdError(errno.EINVAL)


def iommufd_ioas_map(ucmd) -> int:
    """iommufd_ioas_map() -> iopt_map_user_pages() (io_pagetable.c).

    iopt_alloc_user_pages() does not touch the user VA: pages are pinned only when the area is
    filled into a domain (iopt_area_fill_domains()), so without one any user_va maps.
    The reply is written after the area is in: EFAULT there leaves the mapping in place."""
    cmd = ucmd.cmd
    if cmd.flags & ~_MAP_FLAGS or cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    _check_map_flags(cmd.flags, cmd.iova, cmd.length)
    iopt = _get_iopt(ucmd, cmd.ioas_id)
    cmd.iova = iopt_map_user_pages(ucmd, iopt, cmd.iova, cmd.user_va, cmd.length,
                                   conv_iommu_prot(cmd.flags), not cmd.flags & B.IOMMU_IOAS_MAP_FIXED_IOVA)
    ucmd.respond()
    return 0


def iopt_map_user_pages(ucmd, iopt: IoPagetable, iova: int, uptr: int, length: int, prot: int,
                        alloc_iova: bool) -> int:
    """iopt_map_user_pages() (io_pagetable.c): pages for [uptr, uptr + length) of the calling
    task mapped at iova, or at an IOVA iopt_alloc_iova() picks (IOPT_ALLOC_IOVA). Returns the IOVA."""
    pages = _pages.iopt_alloc_user_pages(ucmd.ictx, ucmd.task, uptr, length, bool(prot & IOMMU_WRITE))
    # iopt_map_common(): start_byte = uptr - pages->uptr
    iova = iopt.map_pages(ucmd.mem, [(pages, uptr - pages.uptr, length)], length, iova, prot, alloc_iova)
    pages.refs -= 1  # the list's reference moved into the area
    return iova


def _fget(pid: int, fd: int):
    """fget() (model/vfs.py fget_inode(): EBADF for a closed fd or an O_PATH one). The file is
    the fd of the calling process; the pages keep a reference (get_file())."""
    inode = vfs.fget_inode(pid, fd)
    try:
        return _pages.FileRef(pid, fd, inode)
    except OSError:  # gone meanwhile, or no descriptor left for the reference
        raise IommufdError(errno.EBADF) from None


def iommufd_ioas_map_file(ucmd) -> int:
    """iommufd_ioas_map_file() -> iopt_map_file_pages(): EINVAL length 0, EOVERFLOW start+length,
    then the fd: a dma-buf (dma_buf_get(), io_pagetable.c:499) maps its exporter's buffer
    (iopt_alloc_dmabuf_pages(): EINVAL past its end, ENODEV revoked), any other file through
    fget() (EBADF); the file's pages are read only when pinned into a domain."""
    cmd = ucmd.cmd
    _check_map_flags(cmd.flags, cmd.iova, cmd.length)
    iopt = _get_iopt(ucmd, cmd.ioas_id)
    if not cmd.length:
        raise IommufdError(errno.EINVAL)
    if cmd.start + cmd.length - 1 > U64_MAX:
        raise IommufdError(errno.EOVERFLOW)
    start_byte = cmd.start % PAGE_SIZE
    prot = conv_iommu_prot(cmd.flags)
    try:
        dmabuf = dma_buf_get(ucmd.task, cmd.fd)
    except IommufdError:
        dmabuf = None  # not a dma-buf (or closed: fget() answers)
    if dmabuf is not None:
        try:
            pages = _pages.iopt_alloc_dmabuf_pages(ucmd.ictx, ucmd.task, dmabuf, start_byte, cmd.start, cmd.length,
                                                   bool(prot & IOMMU_WRITE), iommufd_test_dma_buf_iommufd_map)
        except BaseException:
            dma_buf_put(dmabuf)
            raise
    else:
        file = _fget(ucmd.task.pid, cmd.fd)
        pages = _pages.iopt_alloc_file_pages(ucmd.ictx, ucmd.task, file, start_byte, cmd.start, cmd.length,
                                             bool(prot & IOMMU_WRITE))
    try:
        cmd.iova = iopt.map_pages(ucmd.mem, [(pages, start_byte, cmd.length)], cmd.length, cmd.iova, prot,
                                  not cmd.flags & B.IOMMU_IOAS_MAP_FIXED_IOVA)
    finally:
        _pages.iopt_put_pages(pages)  # iopt_map_common(): the list's reference (the area holds its own)
    ucmd.respond()
    return 0


def iommufd_ioas_copy(ucmd) -> int:
    """iommufd_ioas_copy(): iopt_get_pages() on the source (any contiguous run of areas, parts
    of areas included; ENOENT on a gap) before the destination is looked up, then
    iopt_map_pages() into the destination sharing the same iopt_pages (nothing pinned twice).
    WRITEABLE over pages mapped without it is EPERM (iopt_insert_area())."""
    cmd = ucmd.cmd
    cmd.src_iova, cmd.flags = iommufd_test_syz_conv_iova_id(ucmd, cmd.src_ioas_id, cmd.src_iova, cmd.flags)
    _check_map_flags(cmd.flags, cmd.length, cmd.src_iova, cmd.dst_iova)
    src_iopt = _get_iopt(ucmd, cmd.src_ioas_id)
    pages_list = src_iopt.get_pages(cmd.src_iova, cmd.length)
    dst_iopt = _get_iopt(ucmd, cmd.dst_ioas_id)
    cmd.dst_iova = dst_iopt.map_pages(ucmd.mem, pages_list, cmd.length, cmd.dst_iova,
                                      conv_iommu_prot(cmd.flags), not cmd.flags & B.IOMMU_IOAS_MAP_FIXED_IOVA)
    ucmd.respond()
    return 0


def iommufd_ioas_unmap(ucmd) -> int:
    """iommufd_ioas_unmap(): the IOAS first; iova 0 + length U64_MAX unmaps all (0 bytes is
    success); otherwise EOVERFLOW >= ULONG_MAX, iopt_unmap_iova() (EINVAL length 0; ENOENT when
    an area sticks out of the range, after unmapping the whole areas below it) and ENOENT when
    nothing was unmapped. The unmapped length is written back in `length`."""
    cmd = ucmd.cmd
    iopt = _get_iopt(ucmd, cmd.ioas_id)
    if cmd.iova == 0 and cmd.length == U64_MAX:
        unmapped, rc = iopt.unmap_all()
        if rc:
            raise IommufdError(rc)
    else:
        if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
            raise IommufdError(errno.EOVERFLOW)
        unmapped, rc = iopt.unmap_iova(cmd.iova, cmd.length)
        if rc:
            raise IommufdError(rc)
        if not unmapped:
            raise IommufdError(errno.ENOENT)
    cmd.length = unmapped
    ucmd.respond()
    return 0


class _Range:
    __slots__ = ("start", "last")

    def __init__(self, start: int, last: int):
        self.start, self.last = start, last


def iommufd_ioas_load_iovas(mem, ptr: int, num: int) -> list[tuple[int, int]]:
    """iommufd_ioas_load_iovas(): range by range, EFAULT, then EINVAL for start >= last or an
    overlap with a range loaded before (any order is fine). The loaded ranges are kept in the
    allocator's blocked area list, so any order costs O(n log n + n B)."""
    loaded = _Areas()
    chunk = 256
    for base in range(0, num, chunk):
        n = min(chunk, num - base)
        raw = mem.read_partial(ptr + 16 * base, 16 * n)  # a short read: the fault is in this chunk
        for i in range(n):
            if 16 * i + 16 > len(raw):
                raise UserFault()
            start = int.from_bytes(raw[16 * i:16 * i + 8], "little")
            last = int.from_bytes(raw[16 * i + 8:16 * i + 16], "little")
            if start >= last or loaded.first(start, last) is not None:  # interval_tree_iter_first()
                raise IommufdError(errno.EINVAL)
            fault_inject.kmalloc("iommufd_ioas_load_iovas: kzalloc")  # ioas.c:135
            loaded.insert(_Range(start, last))
    return [(r.start, r.last) for r in loaded]


def iommufd_ioas_allow_iovas(ucmd) -> int:
    """iommufd_ioas_allow_iovas(): load the new set, then iopt_set_allow_iova() swaps it in
    whole (EADDRINUSE over a reserved range). num_iovas 0 clears it. Existing areas are not
    checked, and IOMMU_IOAS_IOVA_RANGES does not show allowed ranges (reserved tree only)."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    iopt = _get_iopt(ucmd, cmd.ioas_id)
    ranges = iommufd_ioas_load_iovas(ucmd.mem, cmd.allowed_iovas, cmd.num_iovas)
    iopt.set_allow_iova(ranges)
    return 0


def iommufd_ioas_change_process(ucmd) -> int:
    """iommufd_ioas_change_process(): every area of every IOAS must map a file
    (IOPT_ADDRESS_FILE) or it is EINVAL; then pinned pages are charged to the current
    process/user (charge_current()) and uncharged from the old ones where they differ
    (need_charge_update()). With no areas, or all file areas of this process: 0, nothing moves."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    iopts = [o.iopt for o in ucmd.ictx.objects.of_type("IOAS")]
    for iopt in iopts:
        for area in iopt.areas:
            if area.pages is None:
                raise IommufdError(errno.EBUSY)
            if area.pages.type != _pages.IOPT_ADDRESS_FILE:
                raise IommufdError(errno.EINVAL)
    task = ucmd.task
    pid, uid = task.pid, task.uid
    allp = {id(a.pages): a.pages for iopt in iopts for a in iopt.areas}.values()

    def need(p):
        if p.account_mode == _pages.IOPT_PAGES_ACCOUNT_NONE:
            return False
        if p.account_mode == _pages.IOPT_PAGES_ACCOUNT_MM:
            return p.source_pid != pid
        return p.source_uid != uid or p.source_pid != pid

    moving = [p for p in allp if need(p) and p.npinned]
    charged = []
    try:
        for p in moving:  # charge_current(), undone on failure
            tmp = _pages.IoptPages(p.npages, p.writable, task, p.account_mode, p.accounts)
            tmp.npinned = p.npinned
            tmp.update_pinned(p.npinned, True)
            charged.append(tmp)
    except IommufdError:
        for tmp in charged:
            tmp.update_pinned(tmp.npinned, False)
        raise
    for p in allp:
        if need(p) and p.npinned:
            p.update_pinned(p.npinned, False)
        p.source_pid, p.source_uid = pid, uid  # change_mm()
    return 0


def iommufd_option_rlimit_mode(ucmd) -> None:
    """iommufd_option_rlimit_mode(): EOPNOTSUPP with an object_id; SET needs CAP_SYS_RESOURCE
    (EPERM) and an empty object table (EBUSY); val64 0 = per user, 1 = per mm, else EINVAL."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    if cmd.object_id:
        raise IommufdError(errno.EOPNOTSUPP)
    if cmd.op == B.IOMMU_OPTION_OP_GET:
        cmd.val64 = int(ictx.account_mode == _pages.IOPT_PAGES_ACCOUNT_MM)
        return
    if cmd.op == B.IOMMU_OPTION_OP_SET:
        if not ucmd.task.capable(CAP_SYS_RESOURCE):
            raise IommufdError(errno.EPERM)
        if ictx.objects.objects:
            raise IommufdError(errno.EBUSY)
        if cmd.val64 == 0:
            ictx.account_mode = _pages.IOPT_PAGES_ACCOUNT_USER
        elif cmd.val64 == 1:
            ictx.account_mode = _pages.IOPT_PAGES_ACCOUNT_MM
        else:
            raise IommufdError(errno.EINVAL)
        return
    raise IommufdError(errno.EOPNOTSUPP)


def iommufd_ioas_option(ucmd) -> None:
    """iommufd_ioas_option() + iommufd_ioas_option_huge_pages(): per IOAS."""
    cmd = ucmd.cmd
    iopt = _get_iopt(ucmd, cmd.object_id)
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
