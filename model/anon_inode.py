"""Files the model hands out (anon_inode_getfile() + fd_install()): out_access_fd,
out_fault_fd, out_veventq_fd, and the mock exporter's dma-bufs (model/dma_buf.py).

Each is one end of a Unix socket pair: the caller gets the other end as a real file descriptor
of its process, so it can read, write, dup, pass it (SCM_RIGHTS) or close it, and the model
keeps its own end. The kernel's f_op->release runs when the last reference to the file goes;
the model sees that as a hangup on its end, and runs the file's release at the start of the next
ioctl on the context that made it (AnonFiles.reap()), before anything else can observe the
object, as the kernel's release has run by the time close() returns.

A file is found from a descriptor number of the caller (fget()) by the inode of the socket.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import weakref

from model import fault_inject, libc
from model.objects import IommufdError, NotModelled

_BY_INO: "weakref.WeakValueDictionary[int, AnonFile]" = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


class AnonFile:
    """struct file of an anonymous inode: `kind` names its fops; release() is f_op->release."""

    kind = "anon"

    def __init__(self):
        # anon_inode_getfile() -> alloc_file_pseudo(): the dentry, then the struct file
        fault_inject.kmalloc("anon_inode_getfile: d_alloc_pseudo")
        fault_inject.kmalloc("anon_inode_getfile: alloc_empty_file")
        self.sock, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.ino = os.fstat(self._peer.fileno()).st_ino
        self.released = False
        with _LOCK:
            _BY_INO[self.ino] = self

    def release(self) -> None:
        """f_op->release: the subclass's, then the model's end closes."""

    def install(self, task, cloexec: bool = True) -> int:
        """fd_install() into the caller's table: the descriptor number (O_CLOEXEC, as
        get_unused_fd_flags(O_CLOEXEC), unless `cloexec` is False). Another process's table is
        reached through task.files (the server passes the end over its socket, SCM_RIGHTS)."""
        if task.pid == os.getpid():
            fd = self._peer.detach()
            os.set_inheritable(fd, not cloexec)
        elif task.files is not None:
            fd = task.files.install(self._peer.fileno(), cloexec=cloexec, kind=self.kind)
            self._peer.close()
        else:
            raise NotModelled("handing a file descriptor to another process without a server")
        self._peer = None
        self.installed = (task.pid, fd)
        return fd

    def uninstall(self, task, fd: int) -> None:
        """The descriptor taken back after all (the answer could not be written: the kernel
        would put_unused_fd() instead of installing it)."""
        if task.pid == os.getpid():
            os.close(fd)
        else:
            task.files.close(fd)

    def caller_end(self) -> int | None:
        """A new descriptor of this process for the caller's end (the one handed out, or any
        other referring to it; pidfd_getfd() when the caller is another process), to be closed
        by the caller of this, or None when none is left."""
        pid, fd = getattr(self, "installed", (os.getpid(), None))
        own = pid == os.getpid()
        candidates = [fd] if fd is not None else []
        try:
            candidates += [int(n) for n in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
        for n in candidates:
            try:
                if os.stat(f"/proc/{pid}/fd/{n}").st_ino != self.ino:
                    continue
            except OSError:
                continue
            local = os.dup(n) if own else libc.pidfd_getfd(pid, n)
            if local is not None:
                return local
        return None

    def discard(self) -> None:
        """put_unused_fd() + fput() before the file was installed: nothing reaches the caller."""
        if self._peer is not None:
            self._peer.close()
            self._peer = None
        self._close()

    def hung_up(self) -> bool:
        p = select.poll()
        p.register(self.sock, select.POLLHUP)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))

    def _close(self) -> None:
        self.released = True
        self.sock.close()
        with _LOCK:
            _BY_INO.pop(self.ino, None)


def fget_any(task, fd: int, err: int = errno.EBADF) -> AnonFile:
    """fget() of the caller's descriptor: `err` when it is closed or not a file the model
    handed out (or one already released)."""
    try:
        st = os.fstat(fd) if task.pid == os.getpid() else os.stat(f"/proc/{task.pid}/fd/{fd}")
    except (OSError, OverflowError, ValueError):
        raise IommufdError(err) from None
    with _LOCK:
        f = _BY_INO.get(st.st_ino)
    if f is None or f.released:
        raise IommufdError(err)
    return f


def fget(task, fd: int, kind: str, err: int = errno.EBADFD) -> AnonFile:
    """fget() of the caller's descriptor and a check of its f_op: `err` when the descriptor is
    closed or is not a file of this kind."""
    f = fget_any(task, fd, err)
    if f.kind != kind:
        raise IommufdError(err)
    return f


class AnonFiles:
    """The files one context has handed out."""

    def __init__(self):
        self.files: list[AnonFile] = []

    def add(self, f: AnonFile) -> None:
        self.files.append(f)

    def reap(self) -> None:
        """Run the release of every file whose last descriptor was closed."""
        if not self.files:
            return
        for f in list(self.files):
            if not f.released and f.hung_up():
                self.files.remove(f)
                f.release()
                f._close()

    def release_all(self) -> None:
        for f in self.files:
            if not f.released:
                f._close()
        self.files.clear()
