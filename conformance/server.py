"""The model as a server for other processes (`iommufd-conformance serve`, `exec`), so that C
programs run against it unmodified: conformance/preload/iommufd_preload.c (LD_PRELOAD) connects
their open("/dev/iommu") to this server and carries their iommufd ioctls and mmaps here, and
their fail-nth files, the reads and writes of the event queues the model hands out, and the
VmPin/VmLck of /proc/PID/status (README, "C programs against the model").

Each /dev/iommu connection is one open file: its own model context (model.main.IommufdCtx),
released when the client closes it or dies (and the files it handed out are closed). The caller
of a call is the process that sent it (its pid as the kernel attaches it to the message,
SO_PASSCRED: a forked child shares the file as on Linux), whose memory the model reads and
writes with process_vm_readv / writev where the kernel's copy_from_user / copy_to_user would; a
pointer the client has not mapped is EFAULT. A malformed message or a model failure answers the
client with an errno (EINVAL, EIO) and never stops the server or touches another connection.
"""
from __future__ import annotations

import array
import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from model import fault_inject, outcomes
from model.main import IommufdCtx, iommufd_fops_open
from model.objects import IommufdError, NotModelled
from model.task import Task
from model.uaccess import UserFault

# Client -> server. REQ: op, tid (the calling thread), request, arg. MMAP_REQ: op, tid, start
# (the range the client reserved, 0 if it could not), length, offset, prot, flags.
# A connection starts with OP_OPEN (request = what was opened: FILE_IOMMU, or FILE_FAIL_NTH of
# thread `arg`); a fail-nth file then takes OP_READ (rc = the counter) and OP_WRITE (REQ + the
# bytes written; rc = their count).
REQ = struct.Struct("<IIQQ")
MMAP_REQ = struct.Struct("<IIQQQii")
OP_IOCTL, OP_MMAP, OP_INSTALLED, OP_OPEN, OP_READ, OP_WRITE = 1, 2, 3, 4, 5, 6  # OP_INSTALLED: arg = fd or -errno
OP_FILE_READ, OP_FILE_WRITE = 7, 8  # MMAP_REQ's layout: buffer, count, position, the file's descriptor (prot)
OP_MM_COUNTERS = 9  # REQ, arg = a pid: rc = the model's mm->pinned_vm | mm->locked_vm << 32 (pages)
# OP_DEBUGFS (FILE_MODEL): REQ + a debugfs path; the answer carries a memfd of the file's text
# (SCM_RIGHTS) or an errno: the model's intel-iommu page-table dump (model/debugfs.py)
OP_DEBUGFS = 10
FILE_IOMMU, FILE_FAIL_NTH, FILE_MODEL = 0, 1, 2  # FILE_MODEL: reads of the model's files
# FILE_OUTCOMES: the server answers the raise sites the model recorded since the last such
# request (model/outcomes.py), as JSON {site: count} in one message, and closes: the pytest
# plugin of a served run asks around each test (take_outcomes())
FILE_OUTCOMES = 3
# VFIO, served when the server plays a machine (conformance/served_vfio.py VfioServer,
# `exec --profile`): the cdev /dev/vfio/devices/vfioN (arg N), the group /dev/vfio/N (arg N),
# and /dev/vfio/vfio, which is iommufd's compat container (a FILE_IOMMU whose context accounts
# pins to the mm, as iommufd_fops_open() does for vfio_misc_dev, main.c:327-331). FILE_IOMMU and
# FILE_VFIO_CONTAINER carry the client's own socket's inode in arg: a descriptor number the
# client passes as an argument (VFIO_DEVICE_BIND_IOMMUFD) is found by that inode.
FILE_VFIO_CDEV, FILE_VFIO_GROUP, FILE_VFIO_CONTAINER = 4, 5, 6
# INSTALL's errno field says what the file is, for the reads the client carries here
INSTALL_PLAIN, INSTALL_VEVENTQ, INSTALL_FAULT, INSTALL_ACCESS, INSTALL_VFIO_DEVICE = 0, 1, 2, 3, 4
# Server -> client: rc, errno, kind. DONE ends a call; during one the server may send INSTALL
# (one descriptor in SCM_RIGHTS, rc = 1 for O_CLOEXEC; the client answers OP_INSTALLED), CLOSE
# (rc = a descriptor it installed during this call; no answer) or PIECES (rc pieces of PIECE
# after the header, their memfds in SCM_RIGHTS: the client maps each MAP_SHARED|MAP_FIXED).
REP = struct.Struct("<qiI")
PIECE = struct.Struct("<QQQI4x")  # address, length, offset in the memfd, index of the memfd
KIND_DONE, KIND_INSTALL, KIND_CLOSE, KIND_PIECES = 0, 1, 2, 3
MAX_PIECES = 64  # one message: a region of the model's drivers is a few pages
SOURCE = Path(__file__).with_name("preload") / "iommufd_preload.c"


def build_preload() -> Path:
    """The preload library, built with gcc into the cache (keyed by its source's hash)."""
    return build_c(SOURCE, "preload", ".so", ["-shared", "-fPIC"], ["-ldl"])


def build_c(source: Path, kind: str, suffix: str, flags: list[str] = (), libs: list[str] = ()) -> Path:
    """A C program of the project's, built with gcc -O2 into the cache's `kind`/ directory, keyed
    by its source's hash (a rebuild only when the source changes)."""
    import hashlib

    from codegen.debian import cache_dir

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache_dir() / kind / f"{source.stem}-{digest}{suffix}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", *flags, "-o", str(tmp), str(source), *libs], check=True)
        tmp.rename(out)
    return out


class Server:
    """Accepts connections on a Unix SOCK_SEQPACKET socket at `path`, one thread each."""

    plays_machine = False  # a VfioServer (conformance/served_vfio.py) has VFIO's nodes

    def __init__(self, path: str, log=sys.stderr):
        self.path = path
        self.log = log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # accepted sockets inherit it (unix_sock_inherit_flags()): every message then carries
        # its sender's credentials, also those sent between accept() and the first recvmsg()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.listen(64)
        # connection -> (its context, an event set once the context is released)
        self.open: dict[socket.socket, tuple[IommufdCtx, threading.Event]] = {}
        self.closing = False
        self.open_lock = threading.Lock()

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def connection(self, conn: socket.socket) -> None:
        """One open file of the peer process, until it closes (or dies): /dev/iommu, a
        thread's fail-nth file, or the channel of the model files' reads and writes."""
        opener = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        try:
            msg, pid = _recv(conn)
            op, tid, kind, arg = REQ.unpack(msg) if len(msg) == REQ.size else (0, 0, -1, 0)
            vfio_kinds = (FILE_VFIO_CDEV, FILE_VFIO_GROUP, FILE_VFIO_CONTAINER)
            if op != OP_OPEN or kind not in (FILE_IOMMU, FILE_FAIL_NTH, FILE_MODEL, FILE_OUTCOMES, *vfio_kinds):
                conn.send(REP.pack(-1, errno.EINVAL, KIND_DONE))
            elif kind in vfio_kinds and not self.plays_machine:
                conn.send(REP.pack(-1, errno.ENOENT, KIND_DONE))  # no such node: no machine played
            elif kind in (FILE_VFIO_CDEV, FILE_VFIO_GROUP):
                self.open_vfio_node(conn, kind, arg, pid or opener, tid)
            elif kind == FILE_OUTCOMES:
                sites: dict[str, int] = {}
                for (_, _, site), n in outcomes.take().items():
                    if site:
                        sites[site] = sites.get(site, 0) + n
                conn.send(json.dumps(sites).encode())
            elif kind == FILE_FAIL_NTH:
                conn.send(REP.pack(0, 0, KIND_DONE))
                self.fail_nth_file(conn, arg)
            elif kind == FILE_MODEL:
                conn.send(REP.pack(0, 0, KIND_DONE))
                self.model_files(conn, opener)
            else:
                try:
                    ictx = iommufd_fops_open(Task(pid or opener, tid=tid or pid or opener))
                except IommufdError as e:
                    conn.send(REP.pack(-1, e.errno, KIND_DONE))
                else:
                    if kind == FILE_VFIO_CONTAINER:
                        from model.pages import IOPT_PAGES_ACCOUNT_MM

                        ictx.account_mode = IOPT_PAGES_ACCOUNT_MM
                    if arg:  # (an older client sends none: its number then names nothing)
                        # a socket closed before may have left its inode to this one: its
                        # context goes first, as the kernel released it within close()
                        self.settle(conn)
                        register_client_file(ictx, (os.fstat(conn.fileno()).st_dev, arg))
                    conn.send(REP.pack(0, 0, KIND_DONE))
                    self.iommu_file(conn, ictx, opener)
        except OSError:
            pass
        finally:
            conn.close()

    def fail_nth_file(self, conn: socket.socket, tid: int) -> None:
        """/proc/<pid>/task/<tid>/fail-nth: proc_fail_nth_read() / proc_fail_nth_write() on the
        model's counter of that thread (model/fault_inject.py)."""
        try:
            while True:
                msg, _ = _recv(conn, 4096)
                if not msg:
                    return
                op = struct.unpack_from("<I", msg)[0] if len(msg) >= REQ.size else 0
                if op == OP_READ and len(msg) == REQ.size:
                    conn.send(REP.pack(fault_inject.get_fail_nth(tid), 0, KIND_DONE))
                elif op == OP_WRITE:
                    data, count = msg[REQ.size:], REQ.unpack(msg[:REQ.size])[3]
                    try:
                        fault_inject.set_fail_nth(tid, fault_inject.parse_fail_nth(data))
                        conn.send(REP.pack(count, 0, KIND_DONE))  # the whole write
                    except IommufdError as e:
                        conn.send(REP.pack(-1, e.errno, KIND_DONE))
                else:
                    conn.send(REP.pack(-1, errno.EINVAL, KIND_DONE))
        except OSError:
            return

    def model_files(self, conn: socket.socket, opener: int) -> None:
        """read() and write() of the vEVENTQ and fault queue descriptors the model handed out,
        with the kernel's rules (fops_read() / fops_write() of IommufdVeventq, IommufdFault),
        for the process that sends each request."""
        from model.anon_inode import fget_any

        try:
            while True:
                msg, pid = _recv(conn, 4096)
                if not msg:
                    return
                if len(msg) > REQ.size and REQ.unpack(msg[:REQ.size])[0] == OP_DEBUGFS:
                    self.debugfs_file(conn, msg[REQ.size:].decode(errors="replace"))
                    continue
                if len(msg) == REQ.size and REQ.unpack(msg)[0] == OP_MM_COUNTERS:
                    conn.send(REP.pack(mm_counters(REQ.unpack(msg)[3]), 0, KIND_DONE))
                    continue
                op = struct.unpack_from("<I", msg)[0] if len(msg) == MMAP_REQ.size else 0
                if op not in (OP_FILE_READ, OP_FILE_WRITE):
                    conn.send(REP.pack(-1, errno.EINVAL, KIND_DONE))
                    continue
                _, tid, buf, count, pos, fd, _ = MMAP_REQ.unpack(msg)
                task = Task(pid or opener, tid=tid)
                name = outcomes.READ if op == OP_FILE_READ else outcomes.WRITE
                try:
                    f = fget_any(task, fd, errno.EBADF)
                    queue = getattr(f, "veventq", None) or getattr(f, "fault", None)
                    if queue is None:
                        raise IommufdError(errno.EBADF)
                    ops = queue.fops_read if op == OP_FILE_READ else getattr(queue, "fops_write", None)
                    if ops is None:
                        raise IommufdError(errno.EINVAL)  # no .write in the vEVENTQ's fops
                    with queue.ictx.lock:
                        rc, err = ops(task, buf, count, pos), 0
                    outcomes.record(name, 0)
                except IommufdError as e:
                    rc, err = -1, e.errno
                    outcomes.record(name, e.errno, e)
                except Exception:
                    print(f"iommufd-conformance serve: pid {pid}: a read failed in the model:\n"
                          f"{traceback.format_exc()}", file=self.log)
                    rc, err = -1, errno.EIO
                conn.send(REP.pack(rc, err, KIND_DONE))
        except OSError:
            return

    def debugfs_file(self, conn: socket.socket, path: str) -> None:
        """open() of /sys/kernel/debug/iommu/intel/BDF[/PASID]/domain_translation_struct: the
        model's text now (seq_file's single_open() shows what the table holds at open), in a
        memfd; ENOENT for a device the machine has not (no such debugfs directory)."""
        try:
            text = self.debugfs_text(path)
        except IommufdError as e:
            conn.send(REP.pack(-1, e.errno, KIND_DONE))
            return
        except Exception:
            print(f"iommufd-conformance serve: {path}: the model failed to render it:\n{traceback.format_exc()}",
                  file=self.log)
            conn.send(REP.pack(-1, errno.EIO, KIND_DONE))
            return
        fd = os.memfd_create("domain_translation_struct", os.MFD_CLOEXEC)
        try:
            os.write(fd, text.encode())
            os.lseek(fd, 0, os.SEEK_SET)
            conn.sendmsg([REP.pack(0, 0, KIND_DONE)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        finally:
            os.close(fd)

    def open_vfio_node(self, conn: socket.socket, kind: int, arg: int, pid: int, tid: int) -> None:
        """A VFIO node's open (FILE_VFIO_CDEV, FILE_VFIO_GROUP): a VfioServer's."""
        conn.send(REP.pack(-1, errno.ENOENT, KIND_DONE))

    def debugfs_text(self, path: str) -> str:
        """The text of a debugfs file the model has (a VfioServer's page-table dumps)."""
        raise IommufdError(errno.ENOENT)

    def iommu_file(self, conn: socket.socket, ictx: IommufdCtx, opener: int) -> None:
        """One open /dev/iommu: its requests until the last descriptor of it closes."""
        files = ClientFiles(conn)
        released = threading.Event()
        with self.open_lock:
            self.open[conn] = (ictx, released)
        try:
            while True:
                try:
                    msg, pid = _recv(conn)
                except OSError:
                    break
                if not msg:
                    break
                self.settle(conn)
                # the sender of this message (the kernel vouches for it: SO_PASSCRED), which
                # after fork() may be a child of the process that opened the file
                rc, err, pieces = self.handle(ictx, pid or opener, msg, files)
                if pieces:
                    send_pieces(conn, pieces)
                conn.send(REP.pack(rc, err, KIND_DONE))
        except OSError:
            pass
        finally:
            self.wait_for_files(ictx)
            # fput() of the client's file: released with its last reference (a VFIO device or
            # group that took the context holds one: model/file.py iommufd_ctx_put())
            release_client_file(ictx)
            with self.open_lock:
                del self.open[conn]
            released.set()

    def wait_for_files(self, ictx: IommufdCtx) -> None:
        """The access, fault and vEVENTQ files hold the context (iommufd_ctx_get()): it is
        released when the last of them is closed too, not with /dev/iommu's descriptor."""
        while not self.closing:
            with ictx.lock:
                ictx.files.reap()
                socks = [f.sock for f in ictx.files.files if not f.released]
            if not socks:
                return
            p = select.poll()
            for sk in socks:
                p.register(sk, select.POLLHUP)
            p.poll(1000)

    def settle(self, conn: socket.socket) -> None:
        """The kernel runs a file's release before close() returns to the caller (the last
        fput()): before a request is served, every other connection whose client has closed
        it (and every file that holds its context) is released, so that no caller sees a
        context that is already closed."""
        with self.open_lock:
            others = [(c, ictx, ev) for c, (ictx, ev) in self.open.items() if c is not conn]
        for c, ictx, ev in others:
            try:
                hung_up = any(e & (select.POLLHUP | select.POLLRDHUP) for _, e in _poll(c))
            except (OSError, ValueError):
                hung_up = True
            if hung_up and (ictx is None or all(f.released or f.hung_up() for f in list(ictx.files.files))):
                ev.wait(10)

    def handle(self, ictx: IommufdCtx, pid: int, msg: bytes, files: "ClientFiles") -> tuple[int, int, list]:
        """(rc, errno, pieces to map) for one request."""
        op = struct.unpack_from("<I", msg)[0] if len(msg) >= 4 else 0
        if op == OP_IOCTL and len(msg) == REQ.size:
            _, tid, request, arg = REQ.unpack(msg)
            task = Task(pid, files=files, tid=tid or pid)
            call = lambda: (ictx.ioctl(task, request & 0xFFFFFFFF, arg), [])  # noqa: E731
        elif op == OP_MMAP and len(msg) == MMAP_REQ.size:
            _, tid, start, length, offset, prot, flags = MMAP_REQ.unpack(msg)
            call = lambda: _mmap(ictx, pid, start, length, offset, prot, flags)  # noqa: E731
        else:
            return -1, errno.EINVAL, []
        try:
            with ictx.lock:
                if ictx.released:
                    return -1, errno.EBADF, []
                rc, pieces = call()
                return rc, 0, pieces
        except IommufdError as e:
            if op == OP_MMAP:  # an ioctl's answer is recorded by the model (IommufdCtx.ioctl())
                outcomes.record(outcomes.MMAP, e.errno, e)
            return -1, e.errno, []
        except UserFault:
            return -1, errno.EFAULT, []
        except ClientGone:  # the call was undone; the client is gone or confused
            return -1, errno.EIO, []
        except NotModelled as e:
            print(f"iommufd-conformance serve: pid {pid}: {e.strerror}", file=self.log)
            return -1, errno.ENOSYS, []
        except Exception:  # a model bug: the client gets EIO, the server goes on
            print(f"iommufd-conformance serve: pid {pid}: {msg[:REQ.size].hex()} failed in the model:\n"
                  f"{traceback.format_exc()}", file=self.log)
            return -1, errno.EIO, []


def register_client_file(ictx: IommufdCtx, inode: tuple[int, int]) -> None:
    """The client's /dev/iommu (its socket end, by inode) as the open file of `ictx` in the
    model's table of files (model/file.py), so that iommufd_ctx_from_fd() of the client's
    descriptor number finds it, as it finds an IommufdFile's standing descriptor."""
    from model import file as mfile

    f = mfile._OpenFile(ictx, inode)
    with mfile._FILES_LOCK:
        old = mfile._FILES.get(inode)
        if old is not None:
            # a closed client socket's file a driver still holds (a bound VFIO device): its
            # inode number is free again and now names this one; the old file keeps its
            # references under a name no descriptor has
            old.inode = ("closed", id(old))
            mfile._FILES[old.inode] = old
        mfile._FILES[inode] = f
        mfile._BY_CTX[id(ictx)] = f


def release_client_file(ictx: IommufdCtx) -> None:
    """The client's last descriptor of its /dev/iommu is gone: the file's reference goes
    (iommufd_ctx_put()); the context is released now unless a driver still holds it."""
    from model import file as mfile

    with mfile._FILES_LOCK:
        registered = id(ictx) in mfile._BY_CTX
    if registered:
        mfile.iommufd_ctx_put(ictx)
    else:
        with ictx.lock:
            ictx.release()


def mm_counters(pid: int) -> int:
    """The model's mm->pinned_vm and mm->locked_vm of process `pid`, in pages (what the kernel
    shows as VmPin and VmLck in /proc/PID/status), packed for OP_MM_COUNTERS."""
    from model.task import SYSTEM_ACCOUNTS

    with SYSTEM_ACCOUNTS.lock:
        pinned = SYSTEM_ACCOUNTS.mm_pinned_vm.get(pid, 0)
        locked = SYSTEM_ACCOUNTS.mm_locked_vm.get(pid, 0)
    return (pinned & 0xFFFFFFFF) | (locked & 0x7FFFFFFF) << 32


def send_pieces(conn: socket.socket, pieces: list) -> None:
    """KIND_PIECES: (address, length, memfd, offset) pieces for the client to map shared and
    fixed, their memfds in SCM_RIGHTS."""
    fds = sorted({fd for _, _, fd, _ in pieces})
    body = b"".join(PIECE.pack(a, n, off, fds.index(fd)) for a, n, fd, off in pieces)
    conn.sendmsg([REP.pack(len(pieces), 0, KIND_PIECES) + body],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _poll(conn: socket.socket) -> list:
    p = select.poll()
    p.register(conn, select.POLLHUP | select.POLLRDHUP)
    return p.poll(0)


def _recv(conn: socket.socket, size: int = 64) -> tuple[bytes, int]:
    """One message and its sender's pid (0 when it came without credentials)."""
    msg, anc, _, _ = conn.recvmsg(size, socket.CMSG_SPACE(12))
    pid = next((struct.unpack("3i", data[:12])[0] for level, kind, data in anc
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
    return msg, pid


def _mmap(ictx: IommufdCtx, pid: int, start: int, length: int, offset: int, prot: int, flags: int):
    """mmap(2) of the served file into `pid` over the range it reserved: do_mmap()'s checks
    (model/mm.py), then the driver's mmap (model/main.py iommufd_mmap_region())."""
    from model import mm
    from model.main import iommufd_mmap_region

    noexec = bool(os.statvfs("/dev").f_flag & os.ST_NOEXEC)  # where /dev/iommu lives
    vm_flags = mm.do_mmap_checks(length, prot, flags, offset, mm.FMODE_READ | mm.FMODE_WRITE, noexec=noexec)
    if vm_flags < 0:
        raise IommufdError(-vm_flags)
    if not start:
        raise IommufdError(errno.ENOMEM)  # the client found no room for it
    pieces = iommufd_mmap_region(ictx, pid, start, mm.PAGE_ALIGN(length), offset, vm_flags)
    if len(pieces) > MAX_PIECES:
        raise NotModelled(f"an mmap of {len(pieces)} separate pieces through the server")
    return start, pieces


class ClientGone(OSError):
    """The client closed the connection, or answered nonsense, in the middle of a call."""


class ClientFiles:
    """The client's descriptor table as fd_install() reaches it (model/task.py Task.files): the
    file goes over the connection (SCM_RIGHTS) in the middle of the call and the client answers
    the number it got, before the model writes the answer into the caller's struct."""

    def __init__(self, conn: socket.socket):
        self.conn = conn

    def install(self, fd: int, cloexec: bool, kind: str = "") -> int:
        what = {"iommufd-viommu-event": INSTALL_VEVENTQ, "iommufd-pgfault": INSTALL_FAULT,
                "iommufd_test_staccess": INSTALL_ACCESS, "vfio-device": INSTALL_VFIO_DEVICE}.get(kind, INSTALL_PLAIN)
        self.conn.sendmsg([REP.pack(int(cloexec), what, KIND_INSTALL)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        try:
            msg, _ = _recv(self.conn)
        except OSError:
            msg = b""
        if len(msg) != REQ.size or REQ.unpack(msg)[0] != OP_INSTALLED:
            raise ClientGone(errno.EPROTO, "the client did not answer the descriptor it was given")
        n = struct.unpack("<q", struct.pack("<Q", REQ.unpack(msg)[3]))[0]
        if n < 0:
            raise IommufdError(-n)  # e.g. EMFILE: get_unused_fd_flags() failed
        return n

    def close(self, fd: int) -> None:
        self.conn.send(REP.pack(fd, 0, KIND_CLOSE))


def take_outcomes(path: str) -> dict[str, int]:
    """The raise sites the server's model recorded since the last call (FILE_OUTCOMES):
    site -> count."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        s.send(REQ.pack(OP_OPEN, 0, FILE_OUTCOMES, 0))
        return json.loads(s.recv(1 << 22) or b"{}")


def exec_program(argv: list[str], log=sys.stderr, make_server=Server) -> int:
    """Run `argv` with the preload library against a server in this process; its exit code.
    `make_server(path, log)`: the server (a VfioServer plays a machine's VFIO devices: the
    preload library then takes /dev/vfio/ to it)."""
    lib = build_preload()
    with tempfile.TemporaryDirectory(prefix="iommufd-server-") as d:
        server = make_server(os.path.join(d, "sock"), log)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = dict(os.environ, IOMMUFD_CONFORMANCE_SERVER=server.path,
                   LD_PRELOAD=" ".join(filter(None, [str(lib), os.environ.get("LD_PRELOAD")])))
        if server.plays_machine:
            env["IOMMUFD_CONFORMANCE_VFIO"] = "1"
        try:
            return subprocess.run(argv, env=env).returncode
        finally:
            server.close()
