"""Event queues (drivers/iommu/iommufd/eventq.c): the fault queue (IOMMU_FAULT_QUEUE_ALLOC,
a FAULT object with its file) and IOMMU_VEVENTQ_ALLOC (vIOMMU event queues: the vIOMMU issue).

The fault queue's file is a model/anon_inode.py file: the caller reads struct
iommu_hwpt_pgfault records from it and writes struct iommu_hwpt_page_response records to it.
The model writes each IOPF group to its end when the fault is reported (the cookie, the lowest
free, is given then, where the kernel gives it at read time: the same numbers while reads keep
up with reports), and reads responses at the start of the next ioctl of the context. Records
already written cannot be taken back: a detach drops the pending groups' cookies but not
records the caller has not read yet (the kernel drops those too). What a socket cannot do is recorded
in the README: the kernel's read and write errnos (ESPIPE for a size not a multiple of the
record, EINVAL for a read too short for a group or a response with an unknown cookie or code).
"""
from __future__ import annotations

import errno

import ctypes
import os

from model.anon_inode import AnonFile
from model.objects import IommufdError, IommufdObject, needs_devices
from model.uapi import B
from model.viommu import iommufd_get_viommu
VEVENTQ_MAX_DEPTH = 1 << 19  # eventq.c:502


def iommufd_veventq_alloc(ucmd) -> int:
    """iommufd_veventq_alloc() (eventq.c:504): flags, __reserved, or type
    IOMMU_VEVENTQ_TYPE_DEFAULT EOPNOTSUPP (:512); veventq_depth 0 or > 1 << 19 EINVAL (:515);
    then the vIOMMU (:518) ENOENT."""
    cmd = ucmd.cmd
    if cmd.flags or cmd.__reserved or cmd.type == B.IOMMU_VEVENTQ_TYPE_DEFAULT:
        raise IommufdError(errno.EOPNOTSUPP)
    if not cmd.veventq_depth or cmd.veventq_depth > VEVENTQ_MAX_DEPTH:
        raise IommufdError(errno.EINVAL)
    viommu = iommufd_get_viommu(ucmd, cmd.viommu_id)
    raise needs_devices("IOMMU_VEVENTQ_ALLOC", viommu)


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

    def auto_response(self, idev) -> None:
        """iommufd_auto_response_faults(): this device's groups are answered INVALID."""
        for cookie in [c for c, (d, _) in self.response.items() if d is idev]:
            del self.response[cookie]


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
    objects = ucmd.ictx.objects
    fault = objects.alloc(IommufdFault())
    filep = FaultFile(fault)
    try:
        fd = filep.install(ucmd.task)
    except BaseException:
        filep.discard()
        objects.abort(fault)
        raise
    cmd.out_fault_id = fault.id
    cmd.out_fault_fd = fd
    try:
        ucmd.respond()
    except BaseException:
        os.close(fd)
        filep._close()
        objects.abort(fault)
        raise
    fault.filep = filep
    fault.refs += 1
    ucmd.ictx.files.add(filep)
    objects.finalize(fault)
    return 0
