"""The iommufd core (drivers/iommu/iommufd/main.c): the context, the IOCTL_OP table, the
object-ops table, iommufd_fops_ioctl() and IOMMU_DESTROY / IOMMU_OPTION.

The core is called with the caller (a model.task.Task, whose mm is where user pointers point)
and the address of the command in that mm: IommufdCtx.ioctl(task, cmd, arg). The Python
client's fcntl.ioctl contract is model/file.py's, not this file's.

Like main.c, the tables are checked when this module is imported (BUILD_BUG_ON): every IOCTL_OP
name must be a row of the generated IOCTL table with a struct, once; every object-ops type must
be one of enum iommufd_object_type. Struct and min_size come from the generated row.
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
from dataclasses import dataclass
from typing import Callable

from model import device, eventq, fault_inject, hw_pagetable, ioas, outcomes, vfio_compat, viommu
from model.anon_inode import AnonFiles
from model.driver import MmapTree
from model.limits import PAGE_SHIFT
from model.mm import VmOps
from model.hooks import iommufd_selftest_destroy, iommufd_test
from model.objects import OBJECT_TYPES, IommufdError, NotModelled, ObjectOps, ObjectTable
from model.pages import IOPT_PAGES_ACCOUNT_USER
from model.task import SYSTEM_ACCOUNTS, Accounts, Task
from model.uaccess import check_zeroed_user
from model.uapi import B

IOMMUFD_CMD_BASE = B.IOMMUFD_CMD_BASE


class IoctlTableError(Exception):
    """The IOCTL_OP or object-ops table does not match the generated bindings."""


@dataclass(frozen=True)
class IoctlOp:
    """IOCTL_OP(ioctl, handler): the rest of main.c's row comes from the generated IOCTL table."""

    name: str
    handler: Callable


class Ucmd:
    """struct iommufd_ucmd: the context, the caller, the user buffer and the kernel's copy of the cmd."""

    __slots__ = ("ictx", "task", "mem", "ubuffer", "user_size", "row", "cmd")

    def __init__(self, ictx: "IommufdCtx", task: Task, ubuffer: int, user_size: int = 0, row=None, cmd=None):
        self.ictx = ictx
        self.task = task
        self.mem = task.mm  # copy_from_user / copy_to_user go to current->mm
        self.ubuffer = ubuffer
        self.user_size = user_size
        self.row = row
        self.cmd = cmd

    def respond(self, cmd_len: int | None = None) -> None:
        """iommufd_ucmd_respond(): copy min(user_size, cmd_len) bytes back, or EFAULT."""
        n = ctypes.sizeof(self.cmd) if cmd_len is None else cmd_len
        self.mem.write(self.ubuffer, bytes(self.cmd)[: min(self.user_size, n)])


def iommufd_destroy(ucmd: Ucmd) -> int:
    """iommufd_destroy() -> iommufd_object_remove(): ENOENT unknown ID, EBUSY while used.
    Destroying the compatibility IOAS clears it (ictx->vfio_ioas = NULL)."""
    ictx = ucmd.ictx
    obj = ictx.objects.remove(ucmd.cmd.id)
    if ictx.vfio_ioas is obj:
        ictx.vfio_ioas = None
    ictx.objects.destroy(obj)
    return 0


def iommufd_option(ucmd: Ucmd) -> int:
    """iommufd_option(): __reserved first, then by option_id; only val64 is written back."""
    cmd = ucmd.cmd
    if cmd.__reserved:
        raise IommufdError(errno.EOPNOTSUPP)
    if cmd.option_id == B.IOMMU_OPTION_RLIMIT_MODE:
        ioas.iommufd_option_rlimit_mode(ucmd)
    elif cmd.option_id == B.IOMMU_OPTION_HUGE_PAGES:
        ioas.iommufd_ioas_option(ucmd)
    else:
        raise IommufdError(errno.EOPNOTSUPP)
    ucmd.mem.write(ucmd.ubuffer + B.iommu_option.val64.offset, cmd.val64.to_bytes(8, "little"))
    return 0


# iommufd_ioctl_ops[], in main.c's order.
IOCTL_OPS = (
    IoctlOp("IOMMU_DESTROY", iommufd_destroy),
    IoctlOp("IOMMU_FAULT_QUEUE_ALLOC", eventq.iommufd_fault_alloc),
    IoctlOp("IOMMU_GET_HW_INFO", device.iommufd_get_hw_info),
    IoctlOp("IOMMU_HW_QUEUE_ALLOC", viommu.iommufd_hw_queue_alloc_ioctl),
    IoctlOp("IOMMU_HWPT_ALLOC", hw_pagetable.iommufd_hwpt_alloc),
    IoctlOp("IOMMU_HWPT_GET_DIRTY_BITMAP", hw_pagetable.iommufd_hwpt_get_dirty_bitmap),
    IoctlOp("IOMMU_HWPT_INVALIDATE", hw_pagetable.iommufd_hwpt_invalidate),
    IoctlOp("IOMMU_HWPT_SET_DIRTY_TRACKING", hw_pagetable.iommufd_hwpt_set_dirty_tracking),
    IoctlOp("IOMMU_IOAS_ALLOC", ioas.iommufd_ioas_alloc_ioctl),
    IoctlOp("IOMMU_IOAS_ALLOW_IOVAS", ioas.iommufd_ioas_allow_iovas),
    IoctlOp("IOMMU_IOAS_CHANGE_PROCESS", ioas.iommufd_ioas_change_process),
    IoctlOp("IOMMU_IOAS_COPY", ioas.iommufd_ioas_copy),
    IoctlOp("IOMMU_IOAS_IOVA_RANGES", ioas.iommufd_ioas_iova_ranges),
    IoctlOp("IOMMU_IOAS_MAP", ioas.iommufd_ioas_map),
    IoctlOp("IOMMU_IOAS_MAP_FILE", ioas.iommufd_ioas_map_file),
    IoctlOp("IOMMU_IOAS_UNMAP", ioas.iommufd_ioas_unmap),
    IoctlOp("IOMMU_OPTION", iommufd_option),
    IoctlOp("IOMMU_VDEVICE_ALLOC", viommu.iommufd_vdevice_alloc_ioctl),
    IoctlOp("IOMMU_VEVENTQ_ALLOC", eventq.iommufd_veventq_alloc),
    IoctlOp("IOMMU_VFIO_IOAS", vfio_compat.iommufd_vfio_ioas),
    IoctlOp("IOMMU_VIOMMU_ALLOC", viommu.iommufd_viommu_alloc_ioctl),
    *((IoctlOp("IOMMU_TEST_CMD", iommufd_test),) if iommufd_test is not None else ()),
)

# iommufd_object_ops[]: the object types the model can create.
OBJECT_OPS = {
    "ACCESS": ObjectOps(destroy=device.iommufd_access_destroy_object),
    "DEVICE": ObjectOps(destroy=device.iommufd_device_destroy),
    "FAULT": ObjectOps(destroy=eventq.iommufd_fault_destroy),
    "HWPT_PAGING": ObjectOps(destroy=hw_pagetable.iommufd_hwpt_paging_destroy),
    "HWPT_NESTED": ObjectOps(destroy=hw_pagetable.iommufd_hwpt_nested_destroy),
    "HW_QUEUE": ObjectOps(destroy=viommu.iommufd_hw_queue_destroy),
    "IOAS": ObjectOps(destroy=ioas.iommufd_ioas_destroy),
    "VDEVICE": ObjectOps(destroy=viommu.iommufd_vdevice_destroy, abort=viommu.iommufd_vdevice_abort),
    "VEVENTQ": ObjectOps(destroy=eventq.iommufd_veventq_destroy, abort=eventq.iommufd_veventq_abort),
    "VIOMMU": ObjectOps(destroy=viommu.iommufd_viommu_destroy),
    **({"SELFTEST": ObjectOps(destroy=iommufd_selftest_destroy)} if iommufd_selftest_destroy else {}),
}


def build_ioctl_table(ops, rows) -> tuple[list, list[str]]:
    """The dispatch array: index _IOC_NR - IOMMUFD_CMD_BASE -> (row, handler) or None, and the
    iommufd rows with no op. IoctlTableError for a name with no row (or no struct) or a name twice."""
    by_name = {r.name: r for r in rows if r.struct}
    seen: set[str] = set()
    slots: dict[int, tuple] = {}
    for op in ops:
        if op.name in seen:
            raise IoctlTableError(f"IOCTL_OP({op.name}) appears twice")
        seen.add(op.name)
        row = by_name.get(op.name)
        if row is None:
            raise IoctlTableError(f"IOCTL_OP({op.name}): no ioctl of that name with a struct in the "
                                  f"generated IOCTL table of {B.VERSION}")
        slots[row.nr - IOMMUFD_CMD_BASE] = (row, op.handler)
    table = [slots.get(i) for i in range(max(slots) + 1)] if slots else []
    unhandled = sorted(n for n, r in by_name.items() if n not in seen and r.nr >= IOMMUFD_CMD_BASE)
    return table, unhandled


def check_object_ops(ops: dict) -> None:
    for t in ops:
        if t not in OBJECT_TYPES:
            raise IoctlTableError(f"object-ops table: {t!r} is not an enum iommufd_object_type")


IOCTL_TABLE, UNHANDLED = build_ioctl_table(IOCTL_OPS, B.IOCTLS)
check_object_ops(OBJECT_OPS)
_TABLE_LEN = len(IOCTL_TABLE)


def iommufd_fops_mmap(ictx, vma) -> int:
    """iommufd_fops_mmap() (main.c:584), on a model/mm.py Vma: 0 or -errno as the kernel.

    A length that is not whole pages EINVAL (do_mmap() has rounded it already), a mapping that
    is not VM_SHARED EINVAL, VM_EXEC EPERM; vm_pgoff must be the exact start page of a
    registered region (an offset inside one, or none there, ENXIO) and the length its length
    (ENXIO); then the owner gains a user (the VMA's: vma open/close), and the region's
    physical pages are I/O remapped over the whole VMA with vm_pgoff reset to 0."""
    from model import mm

    length = vma.end - vma.start
    if length % mm.PAGE_SIZE:
        return -errno.EINVAL
    if not vma.flags & mm.VM_SHARED:
        return -errno.EINVAL
    if vma.flags & mm.VM_EXEC:
        return -errno.EPERM
    immap = ictx.mt_mmap.load(vma.pgoff << mm.PAGE_SHIFT)
    if immap is None:
        return -errno.ENXIO
    if vma.pgoff != immap.vm_pgoff or length != immap.length:
        return -errno.ENXIO
    immap.owner.refs += 1  # refcount_inc_not_zero(&immap->owner->users)
    vma.pgoff = 0
    vma.private_data = immap
    vma.vm_ops = IOMMUFD_VMA_OPS
    vma.page_prot = mm.pgprot_noncached(vma.page_prot)
    rc = mm.io_remap_pfn_range(vma, vma.start, immap.mmio_addr >> mm.PAGE_SHIFT, length, vma.page_prot)
    if rc:
        immap.owner.refs -= 1
    return rc


def iommufd_mmap_region(ictx, pid: int, start: int, size: int, offset: int, vm_flags: int) -> list:
    """mmap_region() of /dev/iommu over a range [start, start + size) the caller has reserved:
    the VMA, iommufd_fops_mmap() (IommufdError with its errno), and what its remap put in the
    page tables as (address, length, memfd, offset in it) pieces: each is a page a model driver
    allocated (model/memory.py KernelPages), which the caller maps MAP_SHARED|MAP_FIXED at its
    address to see the memory the driver sees. The VMA is counted for `pid` (a caller that then
    fails to map the pieces is recounted from /proc/PID/maps by mmap_catch_up())."""
    from model import mm
    from model.memory import kernel_pages_of

    vma = mm.Vma(mm.Mm(), start, start + size, offset >> mm.PAGE_SHIFT, vm_flags, mm.vm_get_page_prot(vm_flags))
    rc = iommufd_fops_mmap(ictx, vma)
    if rc:
        raise IommufdError(-rc)
    pieces = []
    for addr, pfn, n, _ in vma.remaps:
        kp, index = kernel_pages_of(ictx.accounts.memory, pfn)
        pieces.append((addr, n, kp.fd, index * mm.PAGE_SIZE))
    immap = vma.private_data
    immap.mapped[pid] = immap.mapped.get(pid, 0) + 1
    return pieces


def _vma_open(vma) -> None:
    vma.private_data.owner.refs += 1


def _vma_close(vma) -> None:
    vma.private_data.owner.refs -= 1


IOMMUFD_VMA_OPS = VmOps(open=_vma_open, close=_vma_close)  # iommufd_vma_ops: a VMA holds a user of the owner


def mmap_catch_up(ictx) -> None:
    """vma open/close as they happened in the callers' address spaces since the last call: each
    region's VMAs are counted in /proc/PID/maps (a split or a partial munmap changes the count
    as the kernel's open/close hooks would), and the owner's users follow."""
    from model.memory import Vmas, kernel_pages_of

    memory = ictx.accounts.memory
    for immap in ictx.mt_mmap.regions():
        if not immap.mapped:
            continue
        found = kernel_pages_of(memory, immap.mmio_addr >> PAGE_SHIFT)
        for pid, old in list(immap.mapped.items()):
            n = 0
            if found is not None:
                kp = found[0]
                dev, ino = kp.file
                # (the model's own view of the pages, in this process, is not a caller's VMA)
                n = sum(1 for v in Vmas(pid).vmas if v.ino == ino and v.dev == dev
                        and not (pid == os.getpid() and v.start == kp.va))
            immap.owner.refs += n - old
            if n:
                immap.mapped[pid] = n
            else:
                del immap.mapped[pid]


def iommufd_fops_open(task: Task, accounts: Accounts | None = None) -> "IommufdCtx":
    """open("/dev/iommu") as `task`: the system call's own fault points first (measured on
    7.2: two before the driver's, getname()'s names_cache buffer and path_openat()'s
    alloc_empty_file()), then iommufd_fops_open() (main.c:319): the context's kzalloc."""
    with fault_inject.current(task.tid):
        fault_inject.kmalloc("do_sys_openat2: getname")
        fault_inject.kmalloc("path_openat: alloc_empty_file")
        fault_inject.kmalloc("iommufd_fops_open: kzalloc")
    return IommufdCtx(accounts)


class IommufdCtx:
    """struct iommufd_ctx: one open /dev/iommu."""

    def __init__(self, accounts: Accounts | None = None):
        self.objects = ObjectTable(OBJECT_OPS)
        self.accounts = SYSTEM_ACCOUNTS if accounts is None else accounts
        self.account_mode = IOPT_PAGES_ACCOUNT_USER  # iommufd_fops_open(): per user unless /dev/vfio/vfio
        self.vfio_ioas = None  # IOMMU_VFIO_IOAS SET
        # One lock per context: an ioctl runs whole, as the kernel's locks make it atomic on the
        # objects it touches. The caller (model/file.py, a server) holds it around ioctl().
        self.lock = threading.Lock()
        self.released = False
        self.files = AnonFiles()  # access / fault / vEVENTQ files handed out (model/anon_inode.py)
        self.mt_mmap = MmapTree()  # regions drivers registered for mmap (model/driver.py)
        self.warnings: list[str] = []  # "function: WARN_ON(condition)" for each WARN the kernel would log

    def warn(self, func: str, cond: str) -> None:
        self.warnings.append(f"{func}: WARN_ON({cond})")

    def ioctl(self, task: Task, cmd: int, arg: int) -> int:
        """iommufd_fops_ioctl(): the command at user address `arg` of `task` (as `current`:
        its fail-nth counter applies to the allocations on the way)."""
        with fault_inject.current(task.tid):
            try:
                rc = self._ioctl(task, cmd, arg)
            except (IommufdError, OSError) as e:  # OSError: NotModelled, ENOSYS
                outcomes.record(cmd, e.errno or 0, e)
                e.recorded = True  # the file's wrapper (model/file.py) records only what is not
                raise
            outcomes.record(cmd, 0)
            return rc

    def _ioctl(self, task: Task, cmd: int, arg: int) -> int:
        if self.files.files or self.mt_mmap.mapped:
            self.catch_up()
        nr = cmd & 0xFF
        if nr < IOMMUFD_CMD_BASE or nr - IOMMUFD_CMD_BASE >= _TABLE_LEN:
            return vfio_compat.iommufd_vfio_ioctl(Ucmd(self, task, arg), cmd)
        mem = task.mm
        slot = IOCTL_TABLE[nr - IOMMUFD_CMD_BASE]
        # One read for get_user(size) and, most of the time, the whole struct after it.
        head = mem.read_partial(arg, slot[0].size if slot else 4)
        if len(head) < 4:
            raise IommufdError(errno.EFAULT)  # get_user()
        user_size = int.from_bytes(head[:4], "little")
        if slot is None or slot[0].number != cmd:
            raise IommufdError(errno.ENOTTY)  # -ENOIOCTLCMD reaches userspace as ENOTTY
        row, handler = slot
        if user_size < row.min_size:
            raise IommufdError(errno.EINVAL)
        # copy_struct_from_user() (include/linux/uaccess.h): the tail past the kernel's struct
        # first (EFAULT, or E2BIG when nonzero), then the struct itself.
        if user_size > row.size:
            check_zeroed_user(mem, arg + row.size, user_size - row.size)
        n = min(row.size, user_size)
        if len(head) < n:
            raise IommufdError(errno.EFAULT)
        cmd_struct = B.bindings.STRUCTS[row.struct].from_buffer_copy(head[:n].ljust(row.size, b"\0"))
        if handler is None:
            raise NotModelled(row.name)
        return handler(Ucmd(self, task, arg, user_size, row, cmd_struct))

    def catch_up(self) -> None:
        """What happened on the files this context handed out since its last ioctl: releases of
        closed ones (f_op->release), responses written to fault queues."""
        self.files.reap()
        for f in self.files.files:
            if f.kind == "iommufd-pgfault":
                f.fault.take_responses()
        if self.mt_mmap.mapped:
            mmap_catch_up(self)

    def check_invariants(self) -> None:
        """AssertionError unless the context is consistent: objects and IDs, each IOAS's table,
        and every object's users equal to what holds it (the reference graph)."""
        self.objects.check_invariants()
        for obj in self.objects.of_type("IOAS"):
            obj.iopt.check_invariants()
        if self.vfio_ioas is not None:  # iommufd_destroy() clears it with its IOAS
            assert self.objects.objects.get(self.vfio_ioas.id) is self.vfio_ioas, "stale vfio_ioas"
        expected = {id(o): 0 for o in self.objects.objects.values()}

        def hold(o):
            assert id(o) in expected, f"a reference to {o.type} {o.id}, which is not in the table"
            expected[id(o)] += 1

        for o in self.objects.objects.values():
            if o.type == "HWPT_PAGING":
                hold(o.ioas)
                assert o.in_list == (o in o.ioas.hwpt_list), f"HWPT {o.id} and the IOAS's hwpt_list"
                assert o.domain in o.ioas.iopt.domains, f"HWPT {o.id}: its domain is not filled"
            elif o.type == "HWPT_NESTED":
                hold(o.viommu if o.viommu is not None else o.parent)
            elif o.type == "ACCESS":
                hold(o)  # the driver
                if o.ioas is not None:
                    hold(o.ioas)
            elif o.type == "DEVICE":
                hold(o)  # the driver
                for attach in o.igroup.pasid_attach.values():
                    if o.id in attach.device_array:
                        hold(o)
                        hold(attach.hwpt)
            elif o.type in ("FAULT", "VEVENTQ") and o.filep is not None:
                hold(o)
            elif o.type == "VIOMMU":
                hold(o.hwpt)
            elif o.type == "VDEVICE":
                hold(o.viommu)
                hold(o.idev)
                assert o.idev.vdev is o and o.viommu.vdevs.get(o.virt_id) is o, f"vDEVICE {o.id} not linked"
            elif o.type == "HW_QUEUE":
                hold(o.viommu)
                if getattr(o, "prev", None) is not None:  # iommufd_hw_queue_depend()
                    hold(o.prev)
            if o.type == "ACCESS" and o.internal:
                assert any(q.access is o for q in self.objects.of_type("HW_QUEUE")), f"internal ACCESS {o.id} without its queue"
            if o.type == "VEVENTQ":
                hold(o.viommu)
            if o.type in ("HWPT_PAGING", "HWPT_NESTED") and o.fault is not None:
                hold(o.fault)
        for immap in self.mt_mmap.regions():  # each VMA holds a user of the region's owner
            for _ in range(sum(immap.mapped.values())):
                hold(immap.owner)
        for o in self.objects.objects.values():
            assert o.refs == expected[id(o)], f"{o.type} {o.id}: {o.refs} users beyond its own, {expected[id(o)]} holders"
        for obj in self.objects.of_type("IOAS"):
            assert len(obj.iopt.domains) == len(obj.hwpt_list), f"IOAS {obj.id}: domains and hwpt_list differ"

    def release(self) -> None:
        """iommufd_fops_release(): every object goes with the file (and its pins), in rounds:
        each round destroys the objects nobody else uses, in ID order. The files this context
        handed out are released first (the kernel's would hold the context open until they
        close: the model does not keep it, see the README)."""
        self.released = True
        for f in list(self.files.files):
            if not f.released:
                f.release()
        self.files.release_all()
        objects = self.objects
        while objects.objects:
            destroyed = 0
            for id_ in sorted(objects.objects):
                obj = objects.objects.get(id_)
                if obj is None or obj.refs:
                    continue
                objects.destroy(objects.remove(id_))
                destroyed += 1
            if not destroyed:  # a users refcount bug: what is left is dropped
                self.warn("iommufd_fops_release", "!destroyed")
                break
        objects.objects.clear()
