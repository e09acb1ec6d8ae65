"""Event queues (drivers/iommu/iommufd/eventq.c): the fault queue (IOMMU_FAULT_QUEUE_ALLOC,
a FAULT object with its file) and vIOMMU event queues (IOMMU_VEVENTQ_ALLOC, a VEVENTQ object
with its file).

The fault queue's file is a model/anon_inode.py file: the caller reads struct
iommu_hwpt_pgfault records from it and writes struct iommu_hwpt_page_response records to it.
The model writes each IOPF group to its end when the fault is reported (the cookie, the lowest
free, is given then, where the kernel gives it at read time: the same numbers while reads keep
up with reports), and reads responses at the start of the next ioctl of the context. A detach
drops the pending groups' cookies and takes their unread records back out of the caller's
socket (through a descriptor of its end, as the vEVENTQ's lost-events header is), as the
kernel drops them from its deliver list. What a socket read in process cannot do is recorded
in the README: the kernel's read and write errnos (ESPIPE for a size not a multiple of the
record, EINVAL for a read too short for a group or a response with an unknown cookie or code);
a caller through the server (conformance/server.py, `--target served`) gets them from
fops_read() / fops_write() below.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import functools
import socket
import struct
import termios

from model.anon_inode import AnonFile
from model.uaccess import UserFault
from model.objects import IommufdError, IommufdObject
from model.uapi import B

VEVENTQ_MAX_DEPTH = 1 << 19  # eventq.c:502
INT_MAX = (1 << 31) - 1
def _deliver(s: socket.socket, task, addr: int, rec: bytes, first: bool) -> bool:
    """A record read through the model (the event queues' fops_read()): copy_to_user() of
    `rec`, the bytes next in the caller's socket end `s`, then taken off it. False when the
    copy faults and records were copied before (the read answers what it has); EFAULT when
    this was the first."""
    try:
        task.mm.write(addr, rec)
    except UserFault:
        if first:
            raise IommufdError(errno.EFAULT) from None
        return False
    s.recv(len(rec), socket.MSG_DONTWAIT)  # delivered: off the queue
    return True



def _drain(fd: int) -> bytes:
    """Everything unread on the caller's end of a socket pair (taken back: the records a caller
    has not read yet), without blocking; the descriptor is closed after."""
    data = b""
    with socket.socket(fileno=fd) as s:
        while True:
            try:
                chunk = s.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            data += chunk
    return data

class FaultFile(AnonFile):
    """The "[iommufd-pgfault]" file: its release drops the FAULT object's user."""

    kind = "iommufd-pgfault"

    def __init__(self, fault: "IommufdFault"):
        super().__init__()
        self.fault = fault

    def release(self) -> None:
        """iommufd_eventq_fops_release()."""
        self.fault.refs -= 1
        self.fault.filep = None


class IommufdFault(IommufdObject):
    """struct iommufd_fault: groups delivered and waiting for a response (by cookie)."""

    type = "FAULT"

    def __init__(self):
        super().__init__()
        self.filep: FaultFile | None = None
        self.response: dict[int, tuple] = {}  # cookie -> (idev, fault record)
        self._partial = b""

    def report(self, idev, pasid: int, grpid: int, perm: int, addr: int) -> None:
        """iommufd_fault_iopf_handler() + the read side: one page request, a group of one."""
        if self.filep is None:
            return
        flags = B.IOMMU_PGFAULT_FLAGS_LAST_PAGE
        if pasid:
            flags |= B.IOMMU_PGFAULT_FLAGS_PASID_VALID
        cookie = 1  # xa_alloc() in XA_FLAGS_ALLOC1: the lowest cookie not waiting for a response
        while cookie in self.response:
            cookie += 1
        rec = B.iommu_hwpt_pgfault(flags=flags, dev_id=idev.id, pasid=pasid, grpid=grpid, perm=perm,
                                   addr=addr, length=0, cookie=cookie)
        self.response[cookie] = (idev, rec)
        try:
            self.filep.sock.send(bytes(rec))
        except OSError:
            pass

    def take_responses(self) -> None:
        """iommufd_fault_fops_write(): responses written since the last call; a known cookie
        with code SUCCESS or INVALID completes its group."""
        if self.filep is None:
            return
        size = ctypes.sizeof(B.iommu_hwpt_page_response)
        try:
            while True:
                chunk = self.filep.sock.recv(65536)
                if not chunk:
                    break
                self._partial += chunk
        except (BlockingIOError, OSError):
            pass
        while len(self._partial) >= size:
            resp = B.iommu_hwpt_page_response.from_buffer_copy(self._partial[:size])
            self._partial = self._partial[size:]
            if resp.code in (B.IOMMUFD_PAGE_RESP_SUCCESS, B.IOMMUFD_PAGE_RESP_INVALID):
                self.response.pop(resp.cookie, None)

    def fops_read(self, task, buf: int, count: int, ppos: int = 0) -> int:
        """iommufd_fault_fops_read() (eventq.c:124), for a caller that reads through the model
        (the server's clients): ESPIPE at a position or for a count that is not whole
        records, EINVAL when the first group does not fit, 0 when none waits, EFAULT when
        nothing could be copied; whole records, taken from the caller's socket end."""
        size = ctypes.sizeof(B.iommu_hwpt_pgfault)
        if ppos or count % size:
            raise IommufdError(errno.ESPIPE)
        fd = self.filep.caller_end() if self.filep is not None else None
        if fd is None:
            return 0
        done = 0
        with socket.socket(fileno=fd) as s:
            while True:
                try:
                    rec = s.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if len(rec) < size:
                    break
                if done >= count or size > count - done:  # a group of one fault
                    if not done:
                        raise IommufdError(errno.EINVAL)
                    break
                if not _deliver(s, task, buf + done, rec, first=not done):
                    break
                done += size
        return done

    def fops_write(self, task, buf: int, count: int, ppos: int = 0) -> int:
        """iommufd_fault_fops_write() (eventq.c:182): ESPIPE at a position or for a count that
        is not whole responses; each response in turn: EFAULT unreadable, EINVAL for a code
        other than SUCCESS / INVALID or a cookie not waiting; the count done, else the error."""
        size = ctypes.sizeof(B.iommu_hwpt_page_response)
        if ppos or count % size:
            raise IommufdError(errno.ESPIPE)
        done, rc = 0, 0
        while count > done:
            try:
                raw = task.mm.read(buf + done, size)
            except UserFault:
                rc = errno.EFAULT
                break
            resp = B.iommu_hwpt_page_response.from_buffer_copy(raw)
            if resp.code not in (B.IOMMUFD_PAGE_RESP_SUCCESS, B.IOMMUFD_PAGE_RESP_INVALID):
                rc = errno.EINVAL
                break
            if self.response.pop(resp.cookie, None) is None:
                rc = errno.EINVAL
                break
            done += size
        if not done and rc:
            raise IommufdError(rc)
        return done

    def auto_response(self, idev) -> None:
        """iommufd_auto_response_faults(): this device's groups are answered INVALID, those
        delivered and those still on the deliver list (records the caller has not read)."""
        cookies = {c for c, (d, _) in self.response.items() if d is idev}
        for cookie in cookies:
            del self.response[cookie]
        if cookies:
            self._take_back(cookies)

    def _take_back(self, cookies: set) -> None:
        """list_del() of undelivered groups: the unread records with these cookies leave the
        caller's socket (read back through a descriptor of its end in this process, the rest
        written again in order; a record the caller has begun to read stays). Nothing when no
        descriptor of the caller's end is at hand (then they stay readable, unanswerable)."""
        fd = self.filep.caller_end() if self.filep is not None else None
        if fd is None:
            return
        size = ctypes.sizeof(B.iommu_hwpt_pgfault)
        data = _drain(fd)
        head = len(data) % size  # the rest of a record read in part
        keep = [data[:head]] + [data[i:i + size] for i in range(head, len(data), size)
                                if B.iommu_hwpt_pgfault.from_buffer_copy(data, i).cookie not in cookies]
        for rec in keep:
            if rec:
                self.filep.sock.send(rec)


def iommufd_fault_destroy(fault: IommufdFault) -> None:
    """iommufd_fault_destroy(): groups still pending are answered INVALID."""
    fault.response.clear()


def iommufd_get_fault(ucmd, id: int) -> IommufdFault:
    """iommufd_get_fault() (iommufd_private.h)."""
    return ucmd.ictx.objects.get(id, "FAULT")


def iommufd_fault_alloc(ucmd) -> int:
    """iommufd_fault_alloc(): flags EOPNOTSUPP; the FAULT object (ID), its file (a user of the
    object while open), the ID and descriptor answered, then the file installed. A fault
    writing the answer undoes all of it."""
    cmd = ucmd.cmd
    if cmd.flags:
        raise IommufdError(errno.EOPNOTSUPP)
    fault = ucmd.ictx.objects.alloc(IommufdFault())
    return _answer_with_file(ucmd, fault, FaultFile, "out_fault_id", "out_fault_fd")


def _answer_with_file(ucmd, obj, file_type, id_field: str, fd_field: str) -> int:
    """The end the allocations of an object with a file share (iommufd_eventq_init() and the
    tail of iommufd_fault_alloc() / iommufd_veventq_alloc()): the file (anon_inode_getfile(),
    a `file_type` of the object), its descriptor (O_CLOEXEC),
    the ID and descriptor answered, then the object finalized with the open file as a user of
    it. A failure to install or to write the answer undoes the file and the object."""
    objects = ucmd.ictx.objects
    try:  # anon_inode_getfile() (ENOMEM: the core aborts the new object, as for any failure)
        filep = file_type(obj)
    except BaseException:
        objects.abort_and_destroy(obj)
        raise
    try:
        fd = filep.install(ucmd.task)
    except BaseException:
        filep.discard()
        objects.abort_and_destroy(obj)
        raise
    setattr(ucmd.cmd, id_field, obj.id)
    setattr(ucmd.cmd, fd_field, fd)
    try:
        ucmd.respond()
    except BaseException:
        filep.uninstall(ucmd.task, fd)
        filep._close()
        objects.abort_and_destroy(obj)
        raise
    obj.filep = filep
    obj.ictx = ucmd.ictx  # iommufd_eventq_init(): eventq->ictx
    obj.refs += 1
    ucmd.ictx.files.add(filep)
    objects.finalize(obj)
    return 0


# -- vIOMMU event queues -----------------------------------------------------------------------------

VEVENT_HEADER = ctypes.sizeof(B.iommufd_vevent_header)


@functools.lru_cache(maxsize=None)
def _truesize(n: int) -> int:
    """What one record of n bytes sent on a Unix stream socket charges the sender until the
    reader consumes it (skb->truesize, read back with SIOCOUTQ)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.send(b"\0" * n)
        return _outq(a)


def _outq(sock) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


class VeventqFile(AnonFile):
    """The "[iommufd-viommu-event]" file: its release drops the VEVENTQ object's user.

    iommufd_eventq_fops_poll() gives EPOLLOUT to the fault queue only, and the vEVENTQ's fops
    have no .write: before the caller's end is handed out, it is made unwritable the way a
    socket can be, its own send buffer filled (SO_SNDBUF at its least, bytes the model's end
    never reads) and then shut for writing. poll() / select() / epoll then never say writable,
    as the kernel's; a write() in process fails (EPIPE, where the kernel answers EINVAL; the
    server's clients get EINVAL)."""

    kind = "iommufd-viommu-event"

    def __init__(self, veventq: "IommufdVeventq"):
        super().__init__()
        self.veventq = veventq
        peer = self._peer
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        peer.setblocking(False)
        try:
            while True:
                peer.send(b"\0")
        except OSError:  # BlockingIOError: the send buffer is full
            pass
        peer.setblocking(True)
        peer.shutdown(socket.SHUT_WR)

    def release(self) -> None:
        """iommufd_eventq_fops_release()."""
        self.veventq.refs -= 1
        self.veventq.filep = None


class IommufdVeventq(IommufdObject):
    """struct iommufd_veventq: the deliver list is what the caller has not read yet.

    A vEVENT is written to the file when it is reported (header, then the driver's data); the
    model learns how much the caller has read from what its end of the socket still has in
    flight (SIOCOUTQ: each record is one skb whose truesize is known), so num_events and the
    queue depth follow the caller's reads exactly. A lost-events header the caller has not read
    is taken back when a newer record replaces it, as the kernel removes it from its list (the
    unread bytes are read back through the caller's end and written again). What a socket
    cannot do (README): the kernel's read() rules for short counts. Records that do not fit
    the socket's buffer wait in `pending` and are written as the caller reads."""

    type = "VEVENTQ"

    def __init__(self, viommu, veventq_type: int, depth: int):
        super().__init__()
        self.viommu = viommu
        self.veventq_type = veventq_type
        self.depth = depth
        self.sequence = 0
        self.filep: VeventqFile | None = None
        self.sent: collections.deque = collections.deque()  # (lost?, truesize, length) unread in the socket
        self.sent_bytes = 0
        self.pending: collections.deque = collections.deque()  # (lost?, record) not written yet
        self.stale_lost_headers = 0  # lost-events headers the kernel would have withdrawn

    def _sync(self) -> None:
        """Drop the records the caller has read; write pending ones that now fit."""
        if self.filep is None:
            return
        outq = _outq(self.filep.sock)
        while self.sent and self.sent_bytes > outq:
            self.sent_bytes -= self.sent.popleft()[1]
        while self.pending:
            lost, rec = self.pending[0]
            if not self._send(lost, rec):
                break
            self.pending.popleft()

    def _send(self, lost: bool, rec: bytes) -> bool:
        try:
            self.filep.sock.send(rec)
        except (BlockingIOError, OSError):
            return False
        t = _truesize(len(rec))
        self.sent.append((lost, t, len(rec)))
        self.sent_bytes += t
        return True

    def _withdraw_lost_header(self) -> bool:
        """list_del(&lost_events_header.node) when the header is already in the caller's
        socket: take the unread bytes back through a descriptor of the caller's end in this
        process and write them again without it. False when no such descriptor is at hand."""
        fd = self.filep.caller_end()
        if fd is None:
            return False
        data = _drain(fd)
        records = list(self.sent)
        self.sent.clear()
        self.sent_bytes = 0
        whole = sum(n for _, _, n in records[1:])
        head = len(data) - whole  # what is left of the first record (a partial read)
        out = []
        if records and head > 0:
            out.append((records[0][0], data[:head]))
        pos = max(head, 0)
        for lost, _, n in records[1:]:
            out.append((lost, data[pos:pos + n]))
            pos += n
        assert out and out[-1][0], "the unread tail is not the lost-events header"
        for lost, rec in out[:-1]:
            self._send(lost, rec)
        return True

    def fops_read(self, task, buf: int, count: int, ppos: int = 0) -> int:
        """iommufd_veventq_fops_read() (eventq.c:311), for a caller that reads through the
        model (the server's clients): ESPIPE at a nonzero position, EINVAL under a header's
        size; whole records while they fit (a lost-events header is its header alone), EINVAL
        when the first one does not fit; 0 on an empty queue; EFAULT when nothing could be
        copied. The bytes are taken from the caller's socket end as it would have read them."""
        if ppos:
            raise IommufdError(errno.ESPIPE)
        if count < VEVENT_HEADER:
            raise IommufdError(errno.EINVAL)
        self._sync()
        fd = self.filep.caller_end() if self.filep is not None else None
        if fd is None:
            return 0
        done = 0
        with socket.socket(fileno=fd) as s:
            while self.sent:
                lost, _, n = self.sent[0]
                if done >= count or VEVENT_HEADER > count - done:
                    break
                if not lost and n > count - done:
                    if not done:
                        raise IommufdError(errno.EINVAL)
                    break
                rec = s.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if not _deliver(s, task, buf + done, rec, first=not done):
                    break
                done += n
                self._sync()  # the record is gone; pending ones may follow it
        return done

    @property
    def num_events(self) -> int:
        """veventq->num_events: normal vEVENTs delivered and not read."""
        return sum(1 for r in self.sent if not r[0]) + sum(1 for r in self.pending if not r[0])

    def _last_is_lost_header(self) -> bool:
        last = self.pending[-1] if self.pending else (self.sent[-1] if self.sent else None)
        return last is not None and last[0]

    def report(self, event_data: bytes) -> None:
        """iommufd_viommu_report_event()'s queueing + iommufd_vevent_handler(): a full queue
        (num_events == depth) gets the lost-events header instead; the header last in the list
        is replaced by the new record; each record takes the next sequence number (mod 2^31)."""
        self._sync()
        lost = self.num_events == self.depth
        if self._last_is_lost_header():  # list_del(&lost_events_header.node)
            if self.pending:
                self.pending.pop()
            elif not self._withdraw_lost_header():
                self.stale_lost_headers += 1  # no descriptor of the caller's end here
        flags = B.IOMMU_VEVENTQ_FLAG_LOST_EVENTS if lost else 0
        rec = bytes(B.iommufd_vevent_header(flags=flags, sequence=self.sequence))
        if not lost:
            rec += event_data
        self.sequence = (self.sequence + 1) & INT_MAX
        self.pending.append((lost, rec))
        self._sync()


def iommufd_veventq_abort(veventq: IommufdVeventq) -> None:
    """iommufd_veventq_abort() (eventq.c:230): the undelivered events go, the vIOMMU loses a
    user and the queue leaves its list."""
    veventq.pending.clear()
    veventq.viommu.refs -= 1
    veventq.viommu.veventqs.remove(veventq)


iommufd_veventq_destroy = iommufd_veventq_abort  # eventq.c:250: abort under the rwsem


def iommufd_veventq_alloc(ucmd) -> int:
    """iommufd_veventq_alloc() (eventq.c:504): flags, __reserved, or type DEFAULT EOPNOTSUPP;
    veventq_depth 0 or > 1 << 19 EINVAL; the vIOMMU (ENOENT); one queue per type per vIOMMU
    (EEXIST); then the object, its file (a user of it while open), the ID and descriptor
    answered, finalize and install. A fault writing the answer undoes all of it."""
    cmd = ucmd.cmd
    if cmd.flags or cmd.__reserved or cmd.type == B.IOMMU_VEVENTQ_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.veventq_depth or cmd.veventq_depth > VEVENTQ_MAX_DEPTH:
        raise IommufdError(errno.EINVAL)
    viommu = ucmd.ictx.objects.get(cmd.viommu_id, "VIOMMU")  # iommufd_get_viommu()
    if viommu.find_veventq(cmd.type) is not None:
        raise IommufdError(errno.EEXIST)
    veventq = ucmd.ictx.objects.alloc(IommufdVeventq(viommu, cmd.type, cmd.veventq_depth))
    viommu.refs += 1
    viommu.veventqs.append(veventq)
    return _answer_with_file(ucmd, veventq, VeventqFile, "out_veventq_id", "out_veventq_fd")
