"""The mock dma-buf exporter (selftest.c: struct iommufd_test_dma_buf, iommufd_test_dmabuf_ops,
IOMMU_TEST_OP_DMABUF_GET / DMABUF_REVOKE, iommufd_test_dma_buf_iommufd_map()).

The buffer is kzalloc(len): physically contiguous, naturally aligned frames (model/memory.py
KernelPages, a memfd the model owns, 2**get_order(len) pages). The dma-buf is model/dma_buf.py's.
"""
from __future__ import annotations

import errno

from model import fault_inject
from model.dma_buf import DmaBufOps, dma_buf_export, dma_buf_fd, dma_buf_get, dma_buf_invalidate_mappings, dma_buf_put
from model.limits import PAGE_SIZE
from model.memory import KernelPages
from model.objects import IommufdError

MAX_PAGES = 512  # iommufd_test_dmabuf_get(): len > PAGE_SIZE * 512 is EINVAL


class IommufdTestDmaBuf:
    """struct iommufd_test_dma_buf."""

    def __init__(self, memory: KernelPages, length: int):
        self.memory = memory
        self.length = length
        self.revoked = False


class IommufdTestDmabufOps(DmaBufOps):
    """iommufd_test_dmabuf_ops (selftest.c:1997): attach 0, detach nothing, release frees."""

    def release(self, dmabuf) -> None:
        """iommufd_test_dma_buf_release() (selftest.c:1989): kfree(priv->memory)."""
        dmabuf.priv.memory.free()


IOMMUFD_TEST_DMABUF_OPS = IommufdTestDmabufOps()


def _get_order(size: int) -> int:
    return max(0, (size - 1).bit_length() - PAGE_SIZE.bit_length() + 1)


def iommufd_test_dmabuf_get(ucmd, cmd) -> int:
    """iommufd_test_dmabuf_get() (selftest.c:2023): EINVAL for a length that is 0 or more than
    512 pages once PAGE_SIZE aligned; the answer is the new descriptor (the ioctl's return)."""
    open_flags, length = cmd.dmabuf_get.open_flags, cmd.dmabuf_get.length
    length = -(-length // PAGE_SIZE) * PAGE_SIZE  # ALIGN(len, PAGE_SIZE)
    if length == 0 or length > PAGE_SIZE * MAX_PAGES:
        raise IommufdError(errno.EINVAL)
    fault_inject.kmalloc("iommufd_test_dmabuf_get: kzalloc_obj priv")  # selftest.c:2036
    fault_inject.kmalloc("iommufd_test_dmabuf_get: kzalloc memory")  # selftest.c:2041
    memory = KernelPages(ucmd.ictx.accounts.memory, _get_order(length), "iommufd-test-dmabuf")
    try:
        dmabuf = dma_buf_export(IOMMUFD_TEST_DMABUF_OPS, IommufdTestDmaBuf(memory, length), length, open_flags)
    except BaseException:
        memory.free()
        raise
    try:
        return dma_buf_fd(dmabuf, ucmd.task, open_flags)
    except BaseException:  # the kernel leaks the dma-buf here; the model lets it go
        dmabuf.discard()
        memory.free()
        raise


def iommufd_test_dmabuf_revoke(ucmd, cmd) -> int:
    """iommufd_test_dmabuf_revoke() (selftest.c:2066): dma_buf_get() (EBADF, EINVAL not a
    dma-buf), EOPNOTSUPP for another exporter's; then priv->revoked = revoked and
    dma_buf_invalidate_mappings(): every importer is told, for revoked = 0 too (iommufd's
    areas then stay revoked: iopt_revoke_notify())."""
    dmabuf = dma_buf_get(ucmd.task, cmd.dmabuf_revoke.dmabuf_fd)
    try:
        if dmabuf.ops is not IOMMUFD_TEST_DMABUF_OPS:
            raise IommufdError(errno.EOPNOTSUPP)
        dmabuf.priv.revoked = bool(cmd.dmabuf_revoke.revoked)
        dma_buf_invalidate_mappings(dmabuf)
    finally:
        dma_buf_put(dmabuf)
    return 0


def iommufd_test_dma_buf_iommufd_map(attach) -> tuple[int, tuple[int, int]]:
    """iommufd_test_dma_buf_iommufd_map() (selftest.c:2005): (-EOPNOTSUPP, _) for another
    exporter's dma-buf, (-ENODEV, _) while revoked, else (0, (paddr, len)) of the buffer."""
    dmabuf = attach.dmabuf
    if dmabuf.ops is not IOMMUFD_TEST_DMABUF_OPS:
        return -errno.EOPNOTSUPP, (0, 0)
    priv = dmabuf.priv
    if priv.revoked:
        return -errno.ENODEV, (0, 0)
    return 0, (priv.memory.phys, priv.length)
