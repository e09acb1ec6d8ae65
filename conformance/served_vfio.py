"""VFIO through the model server (conformance/server.py): VfioServer plays a machine
(`iommufd-conformance exec --profile vtd`); the preload library connects a program's
/dev/vfio/devices/vfioN (a device's cdev), /dev/vfio/N (a group) and the device files a group
hands out here, and its open() of intel-iommu's debugfs page-table dumps.

Each open is one connection, served by a thread until the client closes it (or dies), with the
model's files (model/vfio/): a device file takes ioctls (VFIO's, at a user address of the
caller, read and written in its memory as the kernel's copy_from_user / copy_to_user would),
pread()/pwrite()/read()/write() at region offsets (OP_FILE_READ / OP_FILE_WRITE), and mmap() of
its regions (OP_MMAP: the pages the driver remapped, handed over as pieces the client maps); a
group file takes VFIO_GROUP_GET_STATUS, SET_CONTAINER, UNSET_CONTAINER and GET_DEVICE_FD
(model/vfio/group.py), whose device file goes to the client over the connection (SCM_RIGHTS)
and is served from the server's end of a socket pair. A descriptor number an argument carries
(BIND_IOMMUFD's iommufd, SET_CONTAINER's container, SET_IRQS's eventfds) is the client's: the
model looks it up in the caller's table (/proc/PID/fd), where a served /dev/iommu is the
client's socket end, registered by its inode (server.register_client_file()).

Calls on the VFIO files of one server run one at a time (Server.machine_lock): the model's
machine is one object, as the kernel's device and group locks would serialize them.
"""
from __future__ import annotations

import errno
import re
import socket
import struct
import sys
import threading
import traceback

from conformance.server import (FILE_VFIO_CDEV, KIND_DONE, MMAP_REQ, OP_FILE_READ, OP_FILE_WRITE, OP_IOCTL, OP_MMAP,
                                REP, REQ, ClientFiles, ClientGone, Server, _recv, send_pieces)
from model.objects import IommufdError, NotModelled
from model.uaccess import UserFault

# What plays /dev/vfio/vfio: iommufd's VFIO compatibility, as CONFIG_IOMMUFD_VFIO_CONTAINER
# builds it, not VFIO's own type1 container (drivers/vfio/container.c + vfio_iommu_type1.c),
# which the test kernel has (conformance/kernel/iommufd.config): the differences are the
# selftest excuses that name it (conformance/selftests.py VFIO_MODEL_EXCUSES).
VFIO_CONTAINER = "iommufd"

_DEBUGFS = re.compile(r"^/sys/kernel/debug/iommu/intel/([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])"
                      r"(?:/([0-9a-fA-F]+))?/domain_translation_struct$")


def _paging_table(domain):
    """The page table debugfs walks for a domain (the PASID entry's pointer, debugfs.c:420-432):
    a paging domain's own, a nested domain's parent's (PGTT nested: val[0] is the second stage);
    None for a blocking or identity domain (not present, or pass-through: nothing printed)."""
    from model.pt.table import IoPageTable

    if domain is None:
        return None
    if domain.type == "NESTED":
        domain = getattr(domain, "s2_domain", None)
        if domain is None:
            return None
    ops = getattr(domain, "ops", None)
    return ops if isinstance(ops, IoPageTable) else None


class VfioServer(Server):
    """The model server playing the machine of a profile (model/platform.py): its VFIO nodes
    and intel-iommu's debugfs dumps besides /dev/iommu. Every device is bound to vfio-pci in its
    group from the start (the guest's setup), built before the program starts."""

    plays_machine = True

    def __init__(self, path: str, log=sys.stderr, profile: str = "qemu-vtd"):
        from model.platform import machine
        from model.vfio.group import vfio_groups

        super().__init__(path, log)
        self.profile = profile
        self.machine = machine(profile)
        vfio_groups(self.machine)
        self.machine_lock = threading.Lock()  # VFIO's device and group files: one call at a time

    def open_vfio_node(self, conn: socket.socket, kind: int, arg: int, pid: int, tid: int) -> None:
        open_node(self, conn, kind, arg, pid, tid)

    def debugfs_text(self, path: str) -> str:
        return debugfs_text(self, path)


def debugfs_text(server, path: str) -> str:
    """The text of one of intel-iommu's domain_translation_struct files of the played machine,
    rendered from the table of the domain the device (or its PASID) is attached to now
    (model/debugfs.py). IommufdError(ENOENT) for a file the kernel would not have created: a unit
    that is not intel-iommu, a device the machine has not, a PASID with nothing attached
    (intel_iommu_debugfs_create_dev_pasid() runs when one is)."""
    from model.debugfs import intel_domain_translation_struct

    m = _DEBUGFS.match(path)
    machine = server.machine
    if m is None or machine is None or machine.profile.unit.driver != "intel-iommu":
        raise IommufdError(errno.ENOENT)
    bdf = m[1].lower()
    with server.machine_lock:
        dev = machine.devices.get(bdf)
        if dev is None:
            raise IommufdError(errno.ENOENT)
        pasid = 0
        if m[2] is not None:
            pasid = int(m[2], 16)
            domain = getattr(dev.priv, "dev_pasids", {}).get(pasid)  # info->dev_pasids
            if domain is None:
                raise IommufdError(errno.ENOENT)
        else:
            domain = dev.domain
        table = _paging_table(domain)
        unit = machine.unit
        scalable = bool(getattr(unit, "sm_supported", True))
        return intel_domain_translation_struct(bdf, table, pasid=pasid, scalable=scalable)


def open_node(server, conn: socket.socket, kind: int, arg: int, pid: int, tid: int) -> None:
    """open() of /dev/vfio/devices/vfio<arg> (kind FILE_VFIO_CDEV) or /dev/vfio/<arg>
    (FILE_VFIO_GROUP) by `pid`: answered on `conn` (ENOENT for a node the machine has not),
    then the file is served on it until the client closes it. Files the client closed before
    are released first (Server.settle()), as the kernel's release runs within close()."""
    from model.vfio import device_cdev
    from model.vfio.group import vfio_group_fops_open, vfio_group_of
    from model.vfio.vfio_main import vfio_device_fops_release, vfio_device_of

    server.settle(conn)
    machine = server.machine
    try:
        with server.machine_lock:
            if kind == FILE_VFIO_CDEV:
                bdfs = [d.bdf for d in machine.profile.devices]  # vfioN: registration order
                if not 0 <= arg < len(bdfs):
                    raise IommufdError(errno.ENOENT)
                # vfio_device_fops_cdev_open() (device_cdev.c:23)
                f = device_cdev.vfio_device_fops_cdev_open(vfio_device_of(machine, machine.devices[bdfs[arg]]))
            else:
                group = vfio_group_of(machine, arg)
                if group is None:
                    raise IommufdError(errno.ENOENT)
                f = vfio_group_fops_open(group)
    except IommufdError as e:
        conn.send(REP.pack(-1, e.errno, KIND_DONE))
        return
    conn.send(REP.pack(0, 0, KIND_DONE))
    if kind == FILE_VFIO_CDEV:
        serve_device(server, conn, f, pid, vfio_device_fops_release)
    else:
        serve_group(server, conn, f, pid)


def _serve(server, conn: socket.socket, opener: int, handle, release) -> None:
    """A VFIO file's requests on `conn` until the client hangs up, then its release; the
    connection is one of the server's open files meanwhile (Server.settle() waits for it)."""
    released = threading.Event()
    with server.open_lock:
        server.open[conn] = (None, released)
    files = ClientFiles(conn)
    try:
        while True:
            try:
                msg, pid = _recv(conn)
            except OSError:
                break
            if not msg:
                break
            server.settle(conn)
            rc, err, pieces = _call(server, pid or opener, msg, files, handle)
            if pieces:
                send_pieces(conn, pieces)
            conn.send(REP.pack(rc, err, KIND_DONE))
    except OSError:
        pass
    finally:
        try:
            with server.machine_lock:
                release()
        except Exception:
            print(f"iommufd-conformance serve: releasing a VFIO file failed in the model:\n{traceback.format_exc()}",
                  file=server.log)
        with server.open_lock:
            server.open.pop(conn, None)
        released.set()
        conn.close()


def _call(server, pid: int, msg: bytes, files, handle) -> tuple[int, int, list]:
    """(rc, errno, pieces) of one request, the model's failures answered as the iommufd
    connections answer them (server.Server.handle())."""
    try:
        with server.machine_lock:
            rc, pieces = handle(pid, msg, files)
        return rc, 0, pieces
    except IommufdError as e:
        return -1, e.errno, []
    except UserFault:
        return -1, errno.EFAULT, []
    except ClientGone:
        return -1, errno.EIO, []
    except NotModelled as e:
        print(f"iommufd-conformance serve: pid {pid}: {e.strerror}", file=server.log)
        return -1, errno.ENOSYS, []
    except Exception:
        op = struct.unpack_from("<I", msg)[0] if len(msg) >= 4 else 0
        print(f"iommufd-conformance serve: pid {pid}: VFIO request {op} failed in the model:\n"
              f"{traceback.format_exc()}", file=server.log)
        return -1, errno.EIO, []


MAX_RW_COUNT = 0x7FFFF000  # INT_MAX & PAGE_MASK (include/linux/fs.h): rw_verify_area()'s clamp


def serve_device(server, conn: socket.socket, df, opener: int, release) -> None:
    """A VFIO device file (the cdev's, or one a group handed out): vfio_device_fops' ioctl,
    read/write at a position, and mmap; `release(df)` when the client's last descriptor goes."""
    import os

    from model import mm, vfs
    from model.task import Task
    from model.vfio.vfio_main import Vma, vfio_device_fops_mmap, vfio_device_fops_rw, vfio_device_fops_unl_ioctl

    flags = vfs.FileFlags()

    def handle(pid: int, msg: bytes, files):
        op = struct.unpack_from("<I", msg)[0] if len(msg) >= 4 else 0
        if op == OP_IOCTL and len(msg) == REQ.size:
            _, tid, cmd, arg = REQ.unpack(msg)
            task = Task(pid, files=files, tid=tid or pid)
            cmd &= 0xFFFFFFFF
            rc = vfs.do_vfs_ioctl(flags, task, cmd, arg)
            if rc is None:
                rc = vfio_device_fops_unl_ioctl(df, task, cmd, arg)
            return rc, []
        if op in (OP_FILE_READ, OP_FILE_WRITE) and len(msg) == MMAP_REQ.size:
            _, tid, buf, count, pos, _, _ = MMAP_REQ.unpack(msg)
            task = Task(pid, files=files, tid=tid or pid)
            return vfio_device_fops_rw(df, task.mm, buf, min(count, MAX_RW_COUNT), pos, op == OP_FILE_WRITE), []
        if op == OP_MMAP and len(msg) == MMAP_REQ.size:
            # do_mmap()'s checks, then vfio_device_fops_mmap() -> vfio_pci_core_mmap(). The VMA is
            # VM_IO | VM_PFNMAP, its pages are inserted at fault time from the BAR: the model
            # cannot make the CPU's loads and stores reach its device model, so the client keeps
            # its PROT_NONE reservation there (an access is SIGSEGV, not the register), which
            # get_user_pages() refuses (EFAULT) as it refuses a VM_PFNMAP range.
            _, tid, start, length, offset, prot, mflags = MMAP_REQ.unpack(msg)
            noexec = bool(os.statvfs("/dev").f_flag & os.ST_NOEXEC)
            vm_flags = mm.do_mmap_checks(length, prot, mflags, offset, mm.FMODE_READ | mm.FMODE_WRITE,
                                         noexec=noexec)
            if vm_flags < 0:
                raise IommufdError(-vm_flags)
            if not start:
                raise IommufdError(errno.ENOMEM)
            size = mm.PAGE_ALIGN(length)
            vma = Vma(start, start + size, offset >> mm.PAGE_SHIFT, bool(vm_flags & mm.VM_SHARED))
            vfio_device_fops_mmap(df, vma)
            return start, []
        raise IommufdError(errno.EINVAL)

    _serve(server, conn, opener, handle, lambda: release(df))


def serve_group(server, conn: socket.socket, gfile, opener: int) -> None:
    """A VFIO group file: its ioctls (model/vfio/group.py); GET_DEVICE_FD's device file goes
    to the client as the one end of a new socket pair whose other end is served here."""
    from model import vfs
    from model.task import Task
    from model.vfio.group import vfio_group_device_release

    flags = vfs.FileFlags()

    def fd_add(task, df) -> int:
        """FD_ADD(O_CLOEXEC, file): the device file's descriptor in the caller's table."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            fd = task.files.install(theirs.fileno(), cloexec=True, kind="vfio-device")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        threading.Thread(target=serve_device, args=(server, ours, df, task.pid, vfio_group_device_release),
                         daemon=True).start()
        return fd

    def handle(pid: int, msg: bytes, files):
        if len(msg) != REQ.size or REQ.unpack(msg)[0] != OP_IOCTL:
            raise IommufdError(errno.EINVAL)
        _, tid, cmd, arg = REQ.unpack(msg)
        task = Task(pid, files=files, tid=tid or pid)
        cmd &= 0xFFFFFFFF
        rc = vfs.do_vfs_ioctl(flags, task, cmd, arg)
        if rc is None:
            rc = gfile.ioctl(task, cmd, arg, lambda df: fd_add(task, df))
        return rc, []

    _serve(server, conn, opener, handle, gfile.put)
