"""The VFIO device file (drivers/vfio/vfio_main.c): struct vfio_device and its open files
(struct vfio_device_file), vfio_df_open() / vfio_df_close(), and vfio_device_fops: ioctl, read,
write, mmap, release. The cdev's own calls are device_cdev.py's; the PCI driver's pci_core.py's.

For Python callers, `VfioFile` is an open /dev/vfio/devices/vfioN (model.vfio.open_device()):
- ioctl(request, arg=0, mutate_flag=True): fcntl.ioctl's contract (model/file.py fcntl_ioctl());
  OSError with the kernel's errno;
- pread(n, offset) -> bytes, pwrite(data, offset) -> int: read(2)/write(2) at a region's offset
  (VFIO_PCI_INDEX_TO_OFFSET(index) + offset in it);
- mmap_bar(index, length=None, offset=0) -> BarMapping: mmap(2) of a BAR region, MAP_SHARED;
- fileno(): a descriptor that stands for the file (an empty memfd, like the model's iommufd's);
- close(): the descriptor goes; the file is released (vfio_device_fops_release(): unbound from
  its iommufd, device closed) once no BarMapping holds it, as a VMA holds its file.

BarMapping stands for the VMA: Python in the same process cannot trap a load or store on a real
mapping, so the mapping is an object whose read(offset, size) / write(offset, size, value) are
the CPU's loads and stores (1, 2, 4 or 8 bytes). Each one takes the page fault the kernel would
(vfio_pci_mmap_huge_fault(): SigBus while memory decoding is off or the device is closed) and
then reaches the function's registers (model/hw). munmap() ends it; a read or write after that,
or outside the mapping, is a ValueError (the process would take SIGSEGV).
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
import weakref
from dataclasses import dataclass

from model import vfs
from model.file import caller_task, close_box, fcntl_ioctl
from model.objects import IommufdError, NotModelled
from model.uaccess import BouncedMemory, UserFault, copy_from_user, copy_to_user
from model.uapi import B
from model.vfio import device_cdev
from model.vfio.pci_core import VfioPciCoreDevice
from model.vfio.vfio import VfioDevice, VfioDeviceFile, info_cap_shift

MAX_RW_COUNT = 0x7FFFF000  # INT_MAX & PAGE_MASK (include/linux/fs.h)
PAGE_SIZE = 4096

_DEVICES: dict[int, tuple[object, VfioDevice]] = {}
_DEVICES_LOCK = threading.Lock()


def vfio_device_of(platform, dev) -> VfioDevice:
    """The vfio_device vfio-pci registered for `dev` (vfio_pci_probe(), vfio_pci.c:176): one
    per device of the machine, kept for the machine's life."""
    with _DEVICES_LOCK:
        held = _DEVICES.get(id(dev))
        if held is not None and held[0] is dev:
            return held[1]
        vdev = VfioPciCoreDevice(platform, dev)
        _DEVICES[id(dev)] = (dev, vdev)
        return vdev


# -- vfio_device_fops -----------------------------------------------------------------------------

def vfio_get_region_info(device, mem, arg: int) -> int:
    """vfio_get_region_info() (vfio_main.c:1300): the driver fills the info; with capabilities
    CAPS is set and the chain goes after the struct when argsz has room for it, else argsz says
    how much is needed (cap_offset 0). minsz bytes are written back: the caller's cap_offset
    stays as it passed it when there is no chain."""
    minsz = B.vfio_region_info.offset.offset + 8
    info = B.vfio_region_info.from_buffer_copy(copy_from_user(mem, arg, minsz))
    if info.argsz < minsz:
        raise IommufdError(errno.EINVAL)
    caps = bytearray()
    device.get_region_info_caps(info, caps)
    if caps:
        info.flags |= B.VFIO_REGION_INFO_FLAG_CAPS
        if info.argsz < ctypes.sizeof(info) + len(caps):
            info.argsz = ctypes.sizeof(info) + len(caps)
            info.cap_offset = 0
        else:
            info_cap_shift(caps, ctypes.sizeof(info))
            copy_to_user(mem, arg + ctypes.sizeof(info), bytes(caps))
            info.cap_offset = ctypes.sizeof(info)
    copy_to_user(mem, arg, bytes(info)[:minsz])
    return 0


def vfio_ioctl_device_feature(device, mem, arg: int) -> int:
    """vfio_ioctl_device_feature() (vfio_main.c:1239): the header's checks; migration and DMA
    logging need ops vfio-pci does not have (ENOTTY), PRECOPY_INFOv2 a PRE_COPY device (EINVAL);
    the rest is the driver's."""
    minsz = 8
    data = copy_from_user(mem, arg, minsz)
    argsz, flags = int.from_bytes(data[0:4], "little"), int.from_bytes(data[4:8], "little")
    if argsz < minsz:
        raise IommufdError(errno.EINVAL)
    if flags & ~(B.VFIO_DEVICE_FEATURE_MASK | B.VFIO_DEVICE_FEATURE_SET | B.VFIO_DEVICE_FEATURE_GET
                 | B.VFIO_DEVICE_FEATURE_PROBE):
        raise IommufdError(errno.EINVAL)
    if not flags & B.VFIO_DEVICE_FEATURE_PROBE and flags & B.VFIO_DEVICE_FEATURE_SET and \
            flags & B.VFIO_DEVICE_FEATURE_GET:
        raise IommufdError(errno.EINVAL)
    feature = flags & B.VFIO_DEVICE_FEATURE_MASK
    if feature in (B.VFIO_DEVICE_FEATURE_MIGRATION, B.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                   B.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE):
        raise IommufdError(errno.ENOTTY)  # !device->mig_ops
    if feature in (B.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, B.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
                   B.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT):
        raise IommufdError(errno.ENOTTY)  # !device->log_ops
    if feature == B.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2:
        raise IommufdError(errno.EINVAL)  # no VFIO_MIGRATION_PRE_COPY
    return device.device_feature(flags, arg + minsz, argsz - minsz)


def vfio_device_fops_unl_ioctl(df: VfioDeviceFile, task, cmd: int, arg: int) -> int:
    """vfio_device_fops_unl_ioctl() (vfio_main.c:1345): BIND_IOMMUFD first; every other ioctl
    EINVAL until a bind granted access; the cdev's attach/detach, DEVICE_FEATURE and
    GET_REGION_INFO here, the rest the driver's (vfio_pci_core_ioctl(): ENOTTY unknown)."""
    device = df.device
    if cmd == B.VFIO_DEVICE_BIND_IOMMUFD:
        return device_cdev.vfio_df_ioctl_bind_iommufd(df, task, arg)
    if not df.access_granted:
        raise IommufdError(errno.EINVAL)
    if df.group is None:
        if cmd == B.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            return device_cdev.vfio_df_ioctl_attach_pt(df, task, arg)
        if cmd == B.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            return device_cdev.vfio_df_ioctl_detach_pt(df, task, arg)
    with device.dev_set_lock:
        if cmd == B.VFIO_DEVICE_FEATURE:
            return vfio_ioctl_device_feature(device, task.mm, arg)
        if cmd == B.VFIO_DEVICE_GET_REGION_INFO:
            return vfio_get_region_info(device, task.mm, arg)
        return device.ioctl(task, cmd, arg)


def vfio_device_fops_rw(df: VfioDeviceFile, mem, buf: int, count: int, pos: int, iswrite: bool) -> int:
    """vfio_device_fops_read() / _write() (vfio_main.c:1398-1429): EINVAL before a bind."""
    if not df.access_granted:
        raise IommufdError(errno.EINVAL)
    with df.device.dev_set_lock:
        return df.device.rw(mem, buf, count, pos, iswrite)


@dataclass
class Vma:
    """The vm_area_struct a mmap(2) of the device file makes (what vfio_pci_core_mmap() reads)."""

    start: int
    end: int
    pgoff: int
    shared: bool
    bar: int = -1
    bar_offset: int = 0


def vfio_device_fops_mmap(df: VfioDeviceFile, vma: Vma) -> None:
    """vfio_device_fops_mmap() (vfio_main.c:1431): EINVAL before a bind."""
    if not df.access_granted:
        raise IommufdError(errno.EINVAL)
    with df.device.dev_set_lock:
        df.device.mmap(vma)


def vfio_device_fops_release(df: VfioDeviceFile) -> None:
    """vfio_device_fops_release() (vfio_main.c:648): unbound from its iommufd (the cdev's
    vfio_df_unbind_iommufd()), the registration put."""
    device_cdev.vfio_df_unbind_iommufd(df)


# -- the Python file ------------------------------------------------------------------------------

class VfioFile:
    """An open VFIO device cdev for Python callers (see the module docstring). `pid`: whose
    memory and descriptor table ioctl arguments address (None: the calling process)."""

    def __init__(self, device: VfioDevice, pid: int | None = None):
        self._owner = os.getpid()
        self._pid = pid
        self.df = device_cdev.vfio_device_fops_cdev_open(device)
        self.f_flags = vfs.FileFlags()
        self._fd_box = [os.memfd_create("vfio-device", os.MFD_CLOEXEC)]
        weakref.finalize(self, close_box, self._fd_box)
        self._maps: set[BarMapping] = set()
        self._closed = False
        self._released = False
        self._lock = threading.Lock()

    @property
    def device(self) -> VfioDevice:
        return self.df.device

    def fileno(self) -> int:
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._fd_box[0]

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True):
        return fcntl_ioctl(self._call, request, arg, mutate_flag)

    def _call(self, cmd: int, addr: int, bounce) -> int:
        self._check_open()
        try:
            task = caller_task(self._owner, self._pid, addr, bounce, "a model VFIO device file")
            rc = vfs.do_vfs_ioctl(self.f_flags, task, cmd, addr)
            if rc is not None:
                return rc
            return vfio_device_fops_unl_ioctl(self.df, task, cmd, addr)
        except IommufdError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        except UserFault:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT)) from None

    def _rw(self, buf, n: int, offset: int, iswrite: bool) -> int:
        """vfs_read() / vfs_write() of this process's buffer: EINVAL for a negative position
        (rw_verify_area()), at most MAX_RW_COUNT bytes, then the driver."""
        self._check_open()
        if os.getpid() != self._owner:
            raise NotModelled("a model VFIO device file inherited across fork()")
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        n = min(n, MAX_RW_COUNT)
        addr = ctypes.addressof(buf)
        mem = BouncedMemory(os.getpid(), addr, max(n, 1))
        try:
            return vfio_device_fops_rw(self.df, mem, addr, n, offset, iswrite)
        except IommufdError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None

    def pread(self, n: int, offset: int) -> bytes:
        """pread(2): up to n bytes at offset (a region's VFIO_PCI_INDEX_TO_OFFSET(index) + off)."""
        buf = ctypes.create_string_buffer(max(n, 1))
        done = self._rw(buf, n, offset, False)
        return buf.raw[:done]

    def pwrite(self, data: bytes, offset: int) -> int:
        """pwrite(2): the bytes written."""
        data = bytes(data)
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        return self._rw(buf, len(data), offset, True)

    def mmap_bar(self, index: int, length: int | None = None, offset: int = 0) -> "BarMapping":
        """mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, VFIO_PCI_INDEX_TO_OFFSET(index)
        + offset): do_mmap()'s checks (EINVAL for length 0 or an offset that is not whole pages),
        then vfio_pci_core_mmap(). `length` defaults to the BAR's size."""
        self._check_open()
        if length is None:
            length = self.device.pdev.resource_len(index) if 0 <= index < 6 else 0
        if length <= 0 or offset % PAGE_SIZE or index < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        pgoff = ((index << 40) + offset) >> 12
        size = -(-length // PAGE_SIZE) * PAGE_SIZE
        vma = Vma(0, size, pgoff, True)
        try:
            vfio_device_fops_mmap(self.df, vma)
        except IommufdError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        m = BarMapping(self, vma.bar, vma.bar_offset, length)
        with self._lock:
            self._maps.add(m)
        return m

    def _unmapped(self, m: "BarMapping") -> None:
        with self._lock:
            self._maps.discard(m)
            last = self._closed and not self._maps
        if last:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        vfio_device_fops_release(self.df)

    def close(self) -> None:
        """close(2): the descriptor goes; the file is released once no mapping holds it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held = bool(self._maps)
        close_box(self._fd_box)
        if os.getpid() == self._owner and not held:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BarMapping:
    """A VMA of a BAR (see the module docstring): read/write are the CPU's loads and stores."""

    def __init__(self, file: VfioFile, bar: int, bar_offset: int, length: int):
        self.file = file
        self.bar = bar
        self.bar_offset = bar_offset  # where in the BAR the mapping starts (vm_pgoff's page)
        self.size = length
        self.closed = False

    def _access(self, offset: int, size: int) -> None:
        if self.closed:
            raise ValueError("the BAR mapping is unmapped (the access would be SIGSEGV)")
        if size not in (1, 2, 4, 8):
            raise ValueError(f"a load or store of {size} bytes (1, 2, 4 or 8)")
        if offset < 0 or offset + size > self.size:
            raise ValueError(f"offset {offset:#x} + {size} is outside the {self.size:#x}-byte mapping (SIGSEGV)")
        self.file.device.mmap_fault(self.bar)

    def read(self, offset: int, size: int) -> int:
        """A load of `size` bytes at `offset` in the mapping."""
        dev = self.file.device
        with dev.dev_set_lock:
            self._access(offset, size)
            return dev.hw.mmio_read(self.bar, self.bar_offset + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A store of `size` bytes of `value` at `offset`."""
        dev = self.file.device
        with dev.dev_set_lock:
            self._access(offset, size)
            dev.hw.mmio_write(self.bar, self.bar_offset + offset, size, value & ((1 << (8 * size)) - 1))

    def munmap(self) -> None:
        if not self.closed:
            self.closed = True
            self.file._unmapped(self)

    close = munmap
