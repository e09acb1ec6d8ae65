"""The model as a server for other processes (`iommufd-conformance serve`, `exec`), so that C
programs run against it unmodified: conformance/preload/iommufd_preload.c (LD_PRELOAD) connects
their open("/dev/iommu") to this server and carries their iommufd ioctls here.

Each connection is one open file: its own model context (model.main.IommufdCtx), released when
the client closes it or dies. The caller of an ioctl is the process that sent it (its pid as the
kernel attaches it to the message, SO_PASSCRED: a forked child shares the file as on Linux), whose memory the model reads and writes with process_vm_readv / writev, as
the kernel's copy_from_user / copy_to_user would; a pointer the client has not mapped is EFAULT.
A malformed message or a model failure answers the client with an errno (EINVAL, EIO) and never
stops the server or touches another connection's context.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from model.main import IommufdCtx
from model.objects import IommufdError, NotModelled
from model.task import Task
from model.uaccess import UserFault

REQ = struct.Struct("<IIQQ")  # op, zero, request, arg
REP = struct.Struct("<qiI")  # rc, errno, zero
OP_IOCTL = 1
SOURCE = Path(__file__).with_name("preload") / "iommufd_preload.c"


def build_preload() -> Path:
    """The preload library, built with gcc into the cache (keyed by its source's hash)."""
    import hashlib

    from codegen.debian import cache_dir

    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "preload" / f"iommufd_preload-{digest}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"],
                       check=True)
        tmp.rename(out)
    return out


class Server:
    """Accepts connections on a Unix SOCK_SEQPACKET socket at `path`, one thread each."""

    def __init__(self, path: str, log=sys.stderr):
        self.path = path
        self.log = log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # accepted sockets inherit it (unix_sock_inherit_flags()): every message then carries
        # its sender's credentials, also those sent between accept() and the first recvmsg()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.listen(64)
        self.clients = 0

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.clients += 1
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def connection(self, conn: socket.socket) -> None:
        """One open /dev/iommu of the peer process, until it closes (or dies)."""
        opener = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        ictx = IommufdCtx()
        try:
            while True:
                try:
                    msg, anc, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(12))
                except OSError:
                    break
                if not msg:
                    break
                # the sender of this message (the kernel vouches for it: SO_PASSCRED), which
                # after fork() may be a child of the process that opened the file
                pid = next((struct.unpack("3i", data[:12])[0] for level, kind, data in anc
                            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0) or opener
                conn.send(REP.pack(*self.handle(ictx, pid, msg), 0))
        except OSError:
            pass
        finally:
            with ictx.lock:
                ictx.release()
            conn.close()

    def handle(self, ictx: IommufdCtx, pid: int, msg: bytes) -> tuple[int, int]:
        """(rc, errno) for one request."""
        if len(msg) != REQ.size:
            return -1, errno.EINVAL
        op, zero, request, arg = REQ.unpack(msg)
        if op != OP_IOCTL or zero:
            return -1, errno.EINVAL
        try:
            with ictx.lock:
                return ictx.ioctl(Task(pid), request & 0xFFFFFFFF, arg), 0
        except IommufdError as e:
            return -1, e.errno
        except UserFault:
            return -1, errno.EFAULT
        except NotModelled as e:
            print(f"iommufd-conformance serve: pid {pid}: {e.strerror}", file=self.log)
            return -1, errno.ENOSYS
        except Exception:  # a model bug: the client gets EIO, the server goes on
            print(f"iommufd-conformance serve: pid {pid}: request {request:#x} failed in the model:\n"
                  f"{traceback.format_exc()}", file=self.log)
            return -1, errno.EIO


def exec_program(argv: list[str], log=sys.stderr) -> int:
    """Run `argv` with the preload library against a server in this process; its exit code."""
    lib = build_preload()
    with tempfile.TemporaryDirectory(prefix="iommufd-server-") as d:
        server = Server(os.path.join(d, "sock"), log)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = dict(os.environ, IOMMUFD_CONFORMANCE_SERVER=server.path,
                   LD_PRELOAD=" ".join(filter(None, [str(lib), os.environ.get("LD_PRELOAD")])))
        try:
            return subprocess.run(argv, env=env).returncode
        finally:
            server.close()
