"""Selftest access objects (selftest.c: struct selftest_access): an iommufd_access driven from
userspace through IOMMU_TEST_CMD, owned by a file descriptor (out_access_fd) whose close
destroys the access (iommufd_test_staccess_release()).
"""
from __future__ import annotations

import errno

from model import fault_inject
from model import device as _device
from model.anon_inode import AnonFile, fget
from model.limits import PAGE_SIZE
from model.memory import Vmas
from model.objects import IommufdError
from model.uaccess import UserFault
from model.uapi import B

ULONG_MAX = (1 << 64) - 1


class SelftestAccess(AnonFile):
    """struct selftest_access with its file ("[iommufd_test_staccess]")."""

    kind = "iommufd_test_staccess"

    def __init__(self, pin_ops: bool):
        fault_inject.kmalloc("iommufd_test_alloc_access: kzalloc")  # selftest.c:1431, before the file
        super().__init__()
        self.pin_ops = pin_ops  # selftest_access_ops_pin: MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES
        self.access = None
        self.items: list[list[int]] = []  # [iova, length, id] of each ACCESS_PAGES, in order
        self.next_id = 0

    # iommufd_access_ops ---------------------------------------------------------------
    @property
    def needs_pin_pages(self) -> bool:
        return self.pin_ops

    def unmap(self, iova: int, length: int) -> None:
        """iommufd_test_access_unmap(): unpin every item meeting [iova, iova + length - 1]."""
        last = min(iova + length - 1, ULONG_MAX)
        for item in list(self.items):
            if iova > item[0] + item[1] - 1 or last < item[0]:
                continue
            self.items.remove(item)
            _device.iommufd_access_unpin_pages(self.access, item[0], item[1])

    def release(self) -> None:
        """iommufd_test_staccess_release(): unpin everything, destroy the access."""
        if self.access is not None:
            self.unmap(0, ULONG_MAX)
            _device.iommufd_access_destroy(self.access)
            self.access = None


def iommufd_access_get(task, fd: int) -> SelftestAccess:
    """iommufd_access_get(): EBADFD for a closed descriptor or another kind of file."""
    return fget(task, fd, SelftestAccess.kind, errno.EBADFD)


def iommufd_test_create_access(ucmd, cmd) -> int:
    """iommufd_test_create_access(): EOPNOTSUPP unknown flags; the file, the ACCESS object
    (its ID is taken even though userspace never sees it), attach to the IOAS (ENOENT), answer
    the descriptor, install it. Any failure undoes it all."""
    flags = cmd.create_access.flags
    if flags & ~B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
        raise IommufdError(errno.EOPNOTSUPP)
    staccess = SelftestAccess(bool(flags & B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES))
    ictx = ucmd.ictx
    access = None
    try:
        access = _device.iommufd_access_create(ictx, staccess)
        _device.iommufd_access_attach(access, ictx, cmd.id)
        fd = staccess.install(ucmd.task)
    except BaseException:
        if access is not None:
            _device.iommufd_access_destroy(access)
        staccess.discard()
        raise
    staccess.access = access
    ictx.files.add(staccess)
    cmd.create_access.out_access_fd = fd
    try:
        ucmd.respond()
    except BaseException:
        # the kernel answers before fd_install(); the model has installed already: undo it
        staccess.uninstall(ucmd.task, fd)
        ictx.files.files.remove(staccess)
        staccess.release()
        staccess._close()
        raise
    return 0


def iommufd_test_access_replace_ioas(ucmd, cmd) -> int:
    staccess = iommufd_access_get(ucmd.task, cmd.id)
    _device.iommufd_access_replace(staccess.access, ucmd.ictx, cmd.access_replace_ioas.ioas_id)
    return 0


def _check_pages(ucmd, uptr: int, npages: int, pfns: list[int]) -> None:
    """iommufd_test_check_pages(): each user page at uptr is the page pinned (EBADE), EFAULT
    where uptr is unmapped."""
    vmas = Vmas(ucmd.task.pid)
    memory = ucmd.ictx.accounts.memory
    for k in range(npages):
        err, _, _, pfn = memory.user_page(vmas, ucmd.task.pid, uptr + k * PAGE_SIZE)
        if err:
            raise IommufdError(err)
        if pfn != pfns[k]:
            raise IommufdError(errno.EBADE)


def iommufd_test_access_pages(ucmd, cmd) -> int:
    """iommufd_test_access_pages(): ENOMEM over 16 MiB, EOPNOTSUPP unknown flags, the access fd
    (EBADFD), an access made with NEEDS_PIN_PAGES (EOPNOTSUPP), the syz IOVA, then
    iommufd_access_pin_pages(); with a uptr the pages must be the user's (EBADE); the item ID
    is answered (a fault unpins again)."""
    ap = cmd.access_pages
    if ap.length > 16 * 1024 * 1024:
        raise IommufdError(errno.ENOMEM)
    if ap.flags & ~(B.MOCK_FLAGS_ACCESS_WRITE | B.MOCK_FLAGS_ACCESS_SYZ):
        raise IommufdError(errno.EOPNOTSUPP)
    staccess = iommufd_access_get(ucmd.task, cmd.id)
    if not staccess.pin_ops:
        raise IommufdError(errno.EOPNOTSUPP)
    iova, length = ap.iova, ap.length
    if ap.flags & B.MOCK_FLAGS_ACCESS_SYZ:
        iova = _syz_conv_iova(staccess.access, iova)
    npages = (-(-(iova + length) // PAGE_SIZE) * PAGE_SIZE - iova // PAGE_SIZE * PAGE_SIZE) // PAGE_SIZE
    pfns = _device.iommufd_access_pin_pages(staccess.access, iova, length, bool(ap.flags & B.MOCK_FLAGS_ACCESS_WRITE))
    try:
        if ap.uptr:
            _check_pages(ucmd, ap.uptr - (iova - iova // PAGE_SIZE * PAGE_SIZE), npages, pfns)
        item = [iova, length, staccess.next_id]
        staccess.next_id += 1
        staccess.items.append(item)
        ap.out_access_pages_id = item[2]
        try:
            ucmd.respond()
        except BaseException:
            staccess.items.remove(item)
            raise
    except BaseException:
        _device.iommufd_access_unpin_pages(staccess.access, iova, length)
        raise
    return 0


def iommufd_test_access_item_destroy(ucmd, cmd) -> int:
    """iommufd_test_access_item_destroy(): the item with that ID is unpinned (ENOENT none)."""
    staccess = iommufd_access_get(ucmd.task, cmd.id)
    for item in staccess.items:
        if item[2] == cmd.destroy_access_pages.access_pages_id:
            staccess.items.remove(item)
            _device.iommufd_access_unpin_pages(staccess.access, item[0], item[1])
            return 0
    raise IommufdError(errno.ENOENT)


def iommufd_test_access_rw(ucmd, cmd) -> int:
    """iommufd_test_access_rw(): ENOMEM over 16 MiB, EOPNOTSUPP unknown flags, the access fd
    (EBADFD), a write's user buffer first (EFAULT), the syz IOVA, iommufd_access_rw(), then a
    read's copy to the user buffer (EFAULT)."""
    rw = cmd.access_rw
    if rw.length > 16 * 1024 * 1024:
        raise IommufdError(errno.ENOMEM)
    if rw.flags & ~(B.MOCK_ACCESS_RW_WRITE | B.MOCK_ACCESS_RW_SLOW_PATH | B.MOCK_FLAGS_ACCESS_SYZ):
        raise IommufdError(errno.EOPNOTSUPP)
    staccess = iommufd_access_get(ucmd.task, cmd.id)
    write = bool(rw.flags & B.MOCK_ACCESS_RW_WRITE)
    payload = b""
    if write:
        try:
            payload = ucmd.mem.read(rw.uptr, rw.length)
        except UserFault:
            raise IommufdError(errno.EFAULT) from None
    iova = rw.iova
    if rw.flags & B.MOCK_FLAGS_ACCESS_SYZ:
        iova = _syz_conv_iova(staccess.access, iova)
    data = _device.iommufd_access_rw(staccess.access, iova, rw.length, rw.flags, payload, ucmd.task.pid)
    if not write:
        try:
            ucmd.mem.write(rw.uptr, data)
        except UserFault:
            raise IommufdError(errno.EFAULT) from None
    return 0


def _syz_conv_iova(access, iova: int) -> int:
    """iommufd_test_syz_conv_iova(): 0 without an IOAS."""
    from model.selftest.syz import __iommufd_test_syz_conv_iova as conv

    if access.ioas is None:
        return 0
    return conv(access.ioas.iopt, iova)
