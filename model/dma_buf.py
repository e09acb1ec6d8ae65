"""dma-bufs (drivers/dma-buf/dma-buf.c): what an exporter hands out and an importer attaches to.

The model's only exporter is the mock's (IOMMU_TEST_OP_DMABUF_GET, model/selftest/dmabuf.py);
its only importer is iopt_map_dmabuf() (model/pages.py). A dma-buf's file is a model/anon_inode.py
file ("dmabuf"): the caller holds one end as a real descriptor, and dma_buf_get() finds the
dma-buf from the caller's descriptor by the (st_dev, st_ino) of that end.

References: the kernel's struct file counts descriptors and dma_buf_get() references alike; the
model counts the in-kernel ones (`refs`) and sees the descriptors go as a hangup of its end.
The dma-buf is released (dma_buf_file_release() + dma_buf_release(): __dma_buf_list_del(),
ops->release) when both are gone, checked lazily on the next export, get or put.
A dma-buf of another exporter of the machine (a real "/dmabuf:" file) is ForeignDmaBuf.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading

from model import fault_inject
from model.anon_inode import AnonFile
from model.objects import IommufdError

O_NONBLOCK = os.O_NONBLOCK
O_CLOEXEC = os.O_CLOEXEC

_LOCK = threading.Lock()
# db_list (dma-buf.c __dma_buf_list_add()): every live dma-buf, by the (st_dev, st_ino) of the
# caller's end of its file; the strong references that keep them while only descriptors hold them
_DMA_BUF_LIST: dict[tuple[int, int], "DmaBuf"] = {}


class DmaBufOps:
    """struct dma_buf_ops: the exporter's callbacks the model's importer reaches (attach,
    detach, release; no pin/unpin: dma_buf_pin() is then 0)."""

    def attach(self, dmabuf: "DmaBuf", attach: "DmaBufAttachment") -> int:
        return 0

    def detach(self, dmabuf: "DmaBuf", attach: "DmaBufAttachment") -> None:
        pass

    def release(self, dmabuf: "DmaBuf") -> None:
        pass


class DmaBufAttachment:
    """struct dma_buf_attachment: importer_ops.invalidate_mappings(attach) is how the exporter
    tells the importer (dma_buf_invalidate_mappings())."""

    __slots__ = ("dmabuf", "importer_ops", "importer_priv")

    def __init__(self, dmabuf: "DmaBuf", importer_ops, importer_priv):
        self.dmabuf = dmabuf
        self.importer_ops = importer_ops
        self.importer_priv = importer_priv


class DmaBuf(AnonFile):
    """struct dma_buf with its file (dma_buf_getfile(): "dmabuf", i_size = size)."""

    kind = "dmabuf"

    def __init__(self, ops: DmaBufOps, priv, size: int, flags: int):
        fault_inject.kmalloc("dma_buf_getfile: alloc_anon_inode")  # dma-buf.c:630
        super().__init__()  # alloc_file_pseudo()
        try:
            fault_inject.kmalloc("dma_buf_export: kzalloc dmabuf")  # dma-buf.c:739
        except BaseException:
            self.discard()  # err_file: fput(file)
            raise
        self.ops = ops
        self.priv = priv
        self.size = size
        self.f_flags = flags & (os.O_ACCMODE | O_NONBLOCK)  # dma_buf_getfile()
        self.attachments: list[DmaBufAttachment] = []
        self.refs = 0  # dma_buf_get() references not yet put
        self.key: tuple[int, int] | None = None

    def install(self, task, cloexec: bool = True) -> int:
        """dma_buf_fd() -> get_unused_fd_flags(flags) + fd_install(); the end's (st_dev,
        st_ino) enter db_list, where dma_buf_get() finds it."""
        if self.f_flags & O_NONBLOCK:
            self._peer.setblocking(False)
        st = os.fstat(self._peer.fileno())
        self.key = (st.st_dev, st.st_ino)
        with _LOCK:
            _DMA_BUF_LIST[self.key] = self
        try:
            return super().install(task, cloexec)
        except BaseException:
            with _LOCK:
                _DMA_BUF_LIST.pop(self.key, None)
            raise

    def released_now(self) -> bool:
        """The last reference gone: dma_buf_file_release() + dma_buf_release()."""
        if self.refs or self.released or self._peer is not None or not self.hung_up():
            return False
        with _LOCK:
            _DMA_BUF_LIST.pop(self.key, None)
        self.ops.release(self)
        self._close()
        return True


class ForeignDmaBuf:
    """A dma-buf another exporter of the machine made: its ops are none the model knows."""

    ops = None

    def __init__(self, size: int):
        self.size = size
        self.refs = 0


def _reap() -> None:
    with _LOCK:
        live = list(_DMA_BUF_LIST.values())
    for db in live:
        db.released_now()


def dma_buf_export(ops: DmaBufOps, priv, size: int, flags: int) -> DmaBuf:
    """dma_buf_export() (dma-buf.c:708): the file (dma_buf_getfile()), then the dma_buf."""
    _reap()
    return DmaBuf(ops, priv, size, flags)


def dma_buf_fd(dmabuf: DmaBuf, task, flags: int) -> int:
    """dma_buf_fd() (dma-buf.c:788): the caller's new descriptor (O_CLOEXEC from flags)."""
    return dmabuf.install(task, cloexec=bool(flags & O_CLOEXEC))


def _stat_fd(pid: int, fd: int):
    """fget(): (stat, F_GETFL flags, /proc link) of the caller's descriptor; EBADF when closed."""
    if fd < 0:
        raise IommufdError(errno.EBADF)
    try:
        if pid == os.getpid():
            st = os.fstat(fd)
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            link = os.readlink(f"/proc/self/fd/{fd}")
        else:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                fl = int(next(ln for ln in f if ln.startswith("flags:")).split()[1], 8)
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except (OSError, OverflowError, StopIteration):
        raise IommufdError(errno.EBADF) from None
    return st, fl, link


def dma_buf_get(task, fd: int):
    """dma_buf_get() (dma-buf.c:834): EBADF when fget() fails (closed, O_PATH), EINVAL for a
    file that is not a dma-buf (is_dma_buf_file()); a reference the caller puts."""
    st, fl, link = _stat_fd(task.pid, fd)
    if fl & getattr(os, "O_PATH", 0o10000000):  # fget() skips FMODE_PATH files
        raise IommufdError(errno.EBADF)
    _reap()
    if stat.S_ISSOCK(st.st_mode):
        with _LOCK:
            db = _DMA_BUF_LIST.get((st.st_dev, st.st_ino))
            if db is not None and not db.released:
                db.refs += 1
                return db
    if link.startswith(("/dmabuf:", "anon_inode:dmabuf")):  # a real dma-buf of the machine
        return ForeignDmaBuf(st.st_size)
    raise IommufdError(errno.EINVAL)


def dma_buf_put(dmabuf) -> None:
    """dma_buf_put() (dma-buf.c:867): fput() of the file."""
    with _LOCK:
        dmabuf.refs -= 1
    if isinstance(dmabuf, DmaBuf):
        dmabuf.released_now()


def dma_buf_dynamic_attach(dmabuf: DmaBuf, importer_ops, importer_priv) -> DmaBufAttachment:
    """dma_buf_dynamic_attach() (dma-buf.c:1032): kzalloc, ops->attach, then on the list
    (list_add(): the newest first)."""
    fault_inject.kmalloc("dma_buf_dynamic_attach: kzalloc_obj")  # dma-buf.c:1042
    attach = DmaBufAttachment(dmabuf, importer_ops, importer_priv)
    rc = dmabuf.ops.attach(dmabuf, attach)
    if rc:
        raise IommufdError(-rc)
    dmabuf.attachments.insert(0, attach)
    return attach


def dma_buf_detach(dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
    """dma_buf_detach() (dma-buf.c:1097): off the list, ops->detach."""
    dmabuf.attachments.remove(attach)
    dmabuf.ops.detach(dmabuf, attach)


def dma_buf_pin(attach: DmaBufAttachment) -> int:
    """dma_buf_pin() (dma-buf.c:1130): ops->pin if the exporter has one (the mock has none)."""
    pin = getattr(attach.dmabuf.ops, "pin", None)
    return pin(attach) if pin is not None else 0


def dma_buf_unpin(attach: DmaBufAttachment) -> None:
    unpin = getattr(attach.dmabuf.ops, "unpin", None)
    if unpin is not None:
        unpin(attach)


def dma_buf_invalidate_mappings(dmabuf: DmaBuf) -> None:
    """dma_buf_invalidate_mappings() (dma-buf.c:1399): every attachment's importer with an
    invalidate_mappings op is told, whatever the exporter's reason."""
    for attach in list(dmabuf.attachments):
        fn = getattr(attach.importer_ops, "invalidate_mappings", None)
        if fn is not None:
            fn(attach)
