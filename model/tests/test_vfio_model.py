"""The model's VFIO devices (model/vfio) on the captured machines (model/profiles), QEMU's edu
behind them (model/hw/edu.py) and its DMA through the attached domain (model/hw/iommu.py):

- what vfio-pci answers about the first device equals what the real kernel answered when the
  profile was captured (`observed`: device, region and IRQ info, the virtual config space);
- the cdev's rules: nothing before a bind, one bind per device, the iommufd by descriptor;
- edu's registers and DMA: bytes reach the caller's real buffer through IOMMU_IOAS_MAP and
  IOMMU_IOAS_MAP_FILE pages, blocked requests move nothing and are reported as the kernel
  reports them, dma_mask clamps, bus mastering gates, QEMU 7.2's range check stops the machine;
- interrupts through eventfds (MSI, INTx with DisINTx masking);
- walk.translate() against the reference's translate() (hypothesis), every format.

test_the_same_under_numba_disable_jit runs the file again with NUMBA_DISABLE_JIT=1.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from model import open_iommufd
from model.domain import IOMMU_READ, IOMMU_WRITE
from model.hw.edu import HwError
from model.platform import Platform, machine
from model.profile import load
from model.pt import walk
from model.tests.test_pagetable import VARIANTS, _reference
from model.uapi import B
from model.vfio import open_device
from model.vfio.pci_core import SigBus
from model.vfio.vfio_main import VfioFile, vfio_device_of

PAGE = 4096
PROFILES = ["qemu-vtd", "qemu-amd"]
CONFIG = 7 << 40  # VFIO_PCI_INDEX_TO_OFFSET(VFIO_PCI_CONFIG_REGION_INDEX)
IOVA = 0x100000
EXAMPLES = int(os.environ.get("IOMMUFD_PT_EXAMPLES", 150))
R, W = B.IOMMU_IOAS_MAP_READABLE, B.IOMMU_IOAS_MAP_WRITEABLE


def sz(cls) -> int:
    return ctypes.sizeof(cls)


def errno_of(fn, *args, **kw) -> int:
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def first_bdf(profile: str) -> str:
    return load(profile).observed["device"]


def bind(dev, iommufd, flags: int = 0, argsz: int | None = None) -> int:
    cmd = B.vfio_device_bind_iommufd(argsz=argsz or sz(B.vfio_device_bind_iommufd), flags=flags, iommufd=iommufd)
    dev.ioctl(B.VFIO_DEVICE_BIND_IOMMUFD, cmd)
    return cmd.out_devid


def attach(dev, pt_id: int, pasid: int | None = None) -> int:
    cmd = B.vfio_device_attach_iommufd_pt(argsz=sz(B.vfio_device_attach_iommufd_pt), pt_id=pt_id,
                                          flags=0 if pasid is None else B.VFIO_DEVICE_ATTACH_PASID, pasid=pasid or 0)
    dev.ioctl(B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
    return cmd.pt_id


def detach(dev) -> None:
    dev.ioctl(B.VFIO_DEVICE_DETACH_IOMMUFD_PT, B.vfio_device_detach_iommufd_pt(argsz=sz(B.vfio_device_detach_iommufd_pt)))


def ioas_alloc(fd) -> int:
    cmd = B.iommu_ioas_alloc(size=sz(B.iommu_ioas_alloc))
    fd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    return cmd.out_ioas_id


def map_(fd, ioas, va, length, iova, flags=R | W) -> None:
    fd.ioctl(B.IOMMU_IOAS_MAP, B.iommu_ioas_map(size=sz(B.iommu_ioas_map), flags=flags | B.IOMMU_IOAS_MAP_FIXED_IOVA,
                                               ioas_id=ioas, user_va=va, length=length, iova=iova))


def unmap(fd, ioas, iova, length) -> None:
    fd.ioctl(B.IOMMU_IOAS_UNMAP, B.iommu_ioas_unmap(size=sz(B.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                                   length=length))


def hw_info(fd, dev_id):
    cmd = B.iommu_hw_info(size=sz(B.iommu_hw_info), dev_id=dev_id)
    fd.ioctl(B.IOMMU_GET_HW_INFO, cmd)
    return cmd


class Buf:
    """n pages of a shared anonymous mapping (Python's mmap.mmap(-1, ...))."""

    def __init__(self, npages: int):
        self.m = mmap.mmap(-1, npages * PAGE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.m))


class Edu:
    """edu through its BAR0 mapping, as a driver drives it."""

    def __init__(self, dev):
        self.dev = dev
        self.bar = dev.mmap_bar(0)

    def master(self, on: bool = True) -> None:
        cmd = int.from_bytes(self.dev.pread(2, CONFIG + 4), "little")
        cmd = (cmd | 0x6) if on else (cmd & ~0x4)
        assert self.dev.pwrite(cmd.to_bytes(2, "little"), CONFIG + 4) == 2

    def dma(self, src: int, dst: int, n: int, to_pci: bool, irq: bool = False) -> None:
        for reg, v in ((0x80, src), (0x88, dst), (0x90, n)):
            self.bar.write(reg, 8, v)
        self.bar.write(0x98, 4, 1 | (2 if to_pci else 0) | (4 if irq else 0))
        assert not self.bar.read(0x98, 4) & 1  # done when the command was written

    def read_iova(self, iova: int, n: int, buf_off: int = 0) -> None:
        self.dma(iova, 0x40000 + buf_off, n, False)

    def write_iova(self, iova: int, n: int, buf_off: int = 0) -> None:
        self.dma(0x40000 + buf_off, iova, n, True)

    def close(self) -> None:
        self.bar.munmap()


@pytest.fixture(params=PROFILES)
def profile(request):
    return request.param


@pytest.fixture
def setup(profile):
    """(machine, its first device's file bound to a fresh iommufd, the iommufd, the device ID,
    an edu on it with bus mastering on); everything closed after."""
    m = machine(profile)
    fd = open_iommufd()
    dev = open_device(first_bdf(profile), profile)
    dev_id = bind(dev, fd.fileno())
    edu = Edu(dev)
    edu.master()
    yield m, dev, fd, dev_id, edu
    edu.close()
    dev.close()
    fd.close()


# -- what the kernel answered ------------------------------------------------------------------------

def test_device_region_and_irq_info_are_the_kernels(profile):
    obs = load(profile).observed
    with open_iommufd() as fd, open_device(obs["device"], profile) as dev:
        bind(dev, fd.fileno())
        info = B.vfio_device_info(argsz=sz(B.vfio_device_info))
        dev.ioctl(B.VFIO_DEVICE_GET_INFO, info)
        want = obs["vfio_device_info"]
        assert (info.flags, info.num_regions, info.num_irqs) == (int(want["flags"], 16), want["num_regions"],
                                                                 want["num_irqs"])
        for r in obs["vfio_regions"]:
            cmd = B.vfio_region_info(argsz=r.get("argsz", sz(B.vfio_region_info)), index=r["index"])
            e = errno_of(dev.ioctl, B.VFIO_DEVICE_GET_REGION_INFO, cmd)
            if r["errno"] != "ok":
                assert errno.errorcode[e] == r["errno"], r
                continue
            assert e == 0
            assert (cmd.flags, cmd.size, cmd.offset) == (int(r["flags"], 16), int(r["size"], 16),
                                                         int(r["offset"], 16)), r
            assert (cmd.argsz, cmd.cap_offset) == (r["argsz"], r["cap_offset"]), r
        for q in obs["vfio_irqs"]:
            cmd = B.vfio_irq_info(argsz=sz(B.vfio_irq_info), index=q["index"])
            e = errno_of(dev.ioctl, B.VFIO_DEVICE_GET_IRQ_INFO, cmd)
            if q["errno"] != "ok":
                assert errno.errorcode[e] == q["errno"], q
                continue
            assert (e, cmd.flags, cmd.count) == (0, int(q["flags"], 16), q["count"]), q
        assert dev.pread(256, CONFIG).hex() == obs["vfio_config"]


def test_the_virtual_config_space_sizes_bars_and_keeps_intx_disable(setup):
    m, dev, *_ = setup
    hw = dev.device.hw
    bar0 = int.from_bytes(dev.pread(4, CONFIG + 0x10), "little")
    assert dev.pwrite(b"\xff\xff\xff\xff", CONFIG + 0x10) == 4  # BAR sizing (vfio_bar_fixup())
    assert int.from_bytes(dev.pread(4, CONFIG + 0x10), "little") == 0xFFF00000  # 1 MiB, 32-bit memory
    dev.pwrite(bar0.to_bytes(4, "little"), CONFIG + 0x10)
    assert int.from_bytes(dev.pread(4, CONFIG + 0x10), "little") == bar0
    assert hw.config_read(0x10, 4) == bar0  # the function's own BAR never moved
    # DisINTx is virtual: the user's bit reads back, the hardware's follows vfio's masking
    cmd = int.from_bytes(dev.pread(2, CONFIG + 4), "little")
    dev.pwrite((cmd | 0x400).to_bytes(2, "little"), CONFIG + 4)
    assert int.from_bytes(dev.pread(2, CONFIG + 4), "little") & 0x400
    dev.pwrite(cmd.to_bytes(2, "little"), CONFIG + 4)
    assert not int.from_bytes(dev.pread(2, CONFIG + 4), "little") & 0x400
    # read-only fields stay: vendor ID, the capability list pointer
    dev.pwrite(b"\x00\x00", CONFIG)
    assert dev.pread(2, CONFIG) == b"\x34\x12"
    # past config space: EFAULT (vfio_pci_config_rw_single())
    assert errno_of(dev.pread, 4, CONFIG + 0x100) == errno.EFAULT
    assert dev.pread(0, CONFIG) == b""


def test_memory_decoding_off_faults_the_bar(setup):
    _, dev, _, _, edu = setup
    cmd = int.from_bytes(dev.pread(2, CONFIG + 4), "little")
    dev.pwrite((cmd & ~0x2).to_bytes(2, "little"), CONFIG + 4)
    with pytest.raises(SigBus):
        edu.bar.read(0, 4)
    assert errno_of(dev.pread, 4, 0) == errno.EIO  # vfio_pci_core_ioread32(): !memory enabled
    dev.pwrite(cmd.to_bytes(2, "little"), CONFIG + 4)
    assert edu.bar.read(0, 4) == 0x010000ED
    assert int.from_bytes(dev.pread(4, 0), "little") == 0x010000ED  # the same register through read(2)
    with pytest.raises(ValueError):
        edu.bar.read(1 << 20, 4)  # past the mapping


# -- the cdev's rules ------------------------------------------------------------------------------

def test_nothing_before_a_bind_and_one_bind_per_device(profile):
    bdf = first_bdf(profile)
    fd, other = open_iommufd(), open_iommufd()
    dev = open_device(bdf, profile)
    try:
        info = B.vfio_region_info(argsz=sz(B.vfio_region_info), index=0)
        assert errno_of(dev.ioctl, B.VFIO_DEVICE_GET_REGION_INFO, info) == errno.EINVAL
        assert errno_of(dev.ioctl, B.VFIO_DEVICE_RESET) == errno.EINVAL
        assert errno_of(dev.pread, 4, CONFIG) == errno.EINVAL
        assert errno_of(dev.mmap_bar, 0) == errno.EINVAL
        memfd = os.memfd_create("not-iommufd")
        closed = os.dup(memfd)
        os.close(closed)
        try:
            assert errno_of(bind, dev, -1) == errno.EINVAL
            assert errno_of(bind, dev, fd.fileno(), flags=0x80) == errno.EINVAL
            assert errno_of(bind, dev, fd.fileno(), argsz=8) == errno.EINVAL
            assert errno_of(bind, dev, closed) == errno.EBADF
            assert errno_of(bind, dev, memfd) == errno.EBADFD
            # a token for a function that is no SR-IOV PF or VF: read, then refused
            assert errno_of(bind, dev, fd.fileno(), flags=B.VFIO_DEVICE_BIND_FLAG_TOKEN) == errno.EFAULT
        finally:
            os.close(memfd)
        dev_id = bind(dev, fd.fileno())
        assert dev_id and hw_info(fd, dev_id).dev_id == dev_id
        assert errno_of(bind, dev, fd.fileno()) == errno.EINVAL  # this file again
        assert errno_of(bind, dev, other.fileno()) == errno.EINVAL
        with open_device(bdf, profile) as second:  # another file opens, but cannot bind it
            assert errno_of(bind, second, other.fileno()) == errno.EINVAL
        destroy = B.iommu_destroy(size=sz(B.iommu_destroy), id=dev_id)
        assert errno_of(fd.ioctl, B.IOMMU_DESTROY, destroy) == errno.EBUSY
    finally:
        dev.close()
    # closing the device unbinds it: its ID is gone and the device binds again
    assert errno_of(hw_info, fd, dev_id) == errno.ENOENT
    with open_device(bdf, profile) as dev:
        assert bind(dev, other.fileno())
    fd.close()
    other.close()


def test_closing_the_iommufd_first_keeps_the_context(profile):
    bdf = first_bdf(profile)
    fd = open_iommufd()
    dev = open_device(bdf, profile)
    bind(dev, fd.fileno())
    ioas = ioas_alloc(fd)
    hwpt = attach(dev, ioas)
    ictx = fd.ictx
    fd.close()  # the bound device keeps it (iommufd_ctx_from_fd() took a file reference)
    assert not ictx.released
    assert errno_of(fd.ioctl, B.IOMMU_DESTROY, B.iommu_destroy(size=sz(B.iommu_destroy), id=ioas)) == errno.EBADF
    assert attach(dev, ioas) == hwpt
    info = B.vfio_region_info(argsz=sz(B.vfio_region_info), index=0)
    dev.ioctl(B.VFIO_DEVICE_GET_REGION_INFO, info)
    bar = dev.mmap_bar(0)
    dev.close()
    assert not ictx.released  # the mapping holds the device file, which holds the context
    assert bar.read(0, 4) == 0x010000ED
    bar.munmap()
    # released: unbound, the group back on its default domain (DMA ownership given back)
    assert ictx.released and machine(profile).devices[bdf].domain.type == "DMA_FQ"


def test_attach_detach_and_their_errors(setup):
    m, dev, fd, dev_id, _ = setup
    ioas = ioas_alloc(fd)
    cmd = B.vfio_device_attach_iommufd_pt(argsz=sz(B.vfio_device_attach_iommufd_pt), flags=0x80, pt_id=ioas)
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd) == errno.EINVAL
    cmd = B.vfio_device_attach_iommufd_pt(argsz=8, pt_id=ioas)
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd) == errno.EINVAL
    cmd = B.vfio_device_attach_iommufd_pt(argsz=12, pt_id=ioas, flags=B.VFIO_DEVICE_ATTACH_PASID, pasid=1)
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd) == errno.EINVAL  # argsz short of pasid
    assert errno_of(attach, dev, 0xFFFF) == errno.ENOENT
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, 16) == errno.EFAULT
    dom = m.devices[dev.device.dev.bdf]
    assert dom.domain.type == "BLOCKED"
    hwpt = attach(dev, ioas)
    assert hwpt not in (0, ioas) and dom.domain.type == "UNMANAGED"
    assert attach(dev, ioas) == hwpt  # a replace with the same automatic domain
    # a device without PASIDs (max_pasid_log2 0): the core refuses a PASID attach
    assert hw_info(fd, dev_id).out_max_pasid_log2 == 0
    assert errno_of(attach, dev, ioas, pasid=1) in (errno.EINVAL, errno.EOPNOTSUPP)
    detach(dev)
    assert dom.domain.type == "BLOCKED"
    detach(dev)  # nothing attached: no error
    cmd = B.vfio_device_detach_iommufd_pt(argsz=sz(B.vfio_device_detach_iommufd_pt), flags=0x4)
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_DETACH_IOMMUFD_PT, cmd) == errno.EINVAL


def test_other_device_ioctls(setup):
    _, dev, *_ = setup
    info = B.vfio_region_info(argsz=31, index=0)
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_GET_REGION_INFO, info) == errno.EINVAL
    info = bytearray(B.vfio_device_info(argsz=16, cap_offset=0x77, pad=0x88))
    dev.ioctl(B.VFIO_DEVICE_GET_INFO, info)
    got = B.vfio_device_info.from_buffer_copy(info)
    assert (got.num_regions, got.cap_offset, got.pad) == (9, 0x77, 0x88)  # minsz bytes written back
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_RESET) == errno.EINVAL  # no reset method (reset_works)
    assert errno_of(dev.ioctl, 0x3B99, 0) == errno.ENOTTY
    feat = bytearray(B.vfio_device_feature(argsz=8, flags=B.VFIO_DEVICE_FEATURE_GET | B.VFIO_DEVICE_FEATURE_MIGRATION))
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_FEATURE, feat) == errno.ENOTTY
    feat = bytearray(B.vfio_device_feature(argsz=8, flags=B.VFIO_DEVICE_FEATURE_GET | B.VFIO_DEVICE_FEATURE_SET | 1))
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_FEATURE, feat) == errno.EINVAL
    feat = bytearray(B.vfio_device_feature(argsz=8, flags=B.VFIO_DEVICE_FEATURE_PROBE | B.VFIO_DEVICE_FEATURE_SET
                                           | B.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY))
    assert dev.ioctl(B.VFIO_DEVICE_FEATURE, feat) == 0
    feat = bytearray(B.vfio_device_feature(argsz=8, flags=B.VFIO_DEVICE_FEATURE_GET | B.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN))
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_FEATURE, feat) == errno.ENOTTY
    # SET_IRQS as vfio_set_irqs_validate_and_prepare() checks it
    hdr = B.vfio_irq_set(argsz=sz(B.vfio_irq_set), flags=B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_TRIGGER,
                         index=B.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=1)
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_SET_IRQS, hdr) == errno.EINVAL  # no MSI-X vectors
    hdr.index, hdr.flags = B.VFIO_PCI_MSI_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_EVENTFD | B.VFIO_IRQ_SET_ACTION_TRIGGER
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_SET_IRQS, hdr) == errno.EINVAL  # argsz has no room for the fd
    hdr.flags = B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_MASK
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_SET_IRQS, hdr) == errno.ENOTTY  # MSI has no mask action
    hdr.flags = B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_TRIGGER
    assert errno_of(dev.ioctl, B.VFIO_DEVICE_SET_IRQS, hdr) == errno.EINVAL  # MSI is not enabled


# -- edu ----------------------------------------------------------------------------------------------

def test_edu_registers(setup):
    *_, edu = setup
    bar = edu.bar
    assert bar.read(0x00, 4) == 0x010000ED
    bar.write(0x04, 4, 0x12345678)
    assert bar.read(0x04, 4) == 0xEDCBA987
    bar.write(0x08, 4, 5)
    assert bar.read(0x20, 4) & 1 == 0 and bar.read(0x08, 4) == 120
    bar.write(0x08, 4, 40)  # 40! has 38 factors of 2: 0 in 32 bits
    assert bar.read(0x08, 4) == 0
    bar.write(0x60, 4, 0x30)
    assert bar.read(0x24, 4) == 0x30
    bar.write(0x64, 4, 0x10)
    assert bar.read(0x24, 4) == 0x20
    bar.write(0x64, 4, 0x20)
    # access sizes: below 0x80 only 4 bytes mean something, 1-2 bytes never reach the device
    assert bar.read(0x00, 8) == (1 << 64) - 1
    assert bar.read(0x00, 2) == 0 and bar.read(0x00, 1) == 0
    bar.write(0x04, 2, 0)
    assert bar.read(0x04, 4) == 0xEDCBA987
    # a 4-byte write sets the whole 64-bit DMA register; 0x84 is no register
    bar.write(0x80, 8, 0x1122334455667788)
    bar.write(0x80, 4, 0xAABBCCDD)
    bar.write(0x84, 4, 0x99)
    assert bar.read(0x80, 8) == 0xAABBCCDD and bar.read(0x84, 4) == (1 << 32) - 1


def test_a_deferred_dma_runs_100ms_after_its_command(setup):
    """With the virtual clock the model's caller advances: the command arms the timer, the
    registers ignore writes while the transfer runs, the timer completes it."""
    _, dev, *_, edu = setup
    hw = dev.device.hw
    hw.deferred_dma = True
    try:
        hw.dma_buf[:8] = b"\x01" * 8
        for reg, v in ((0x80, 0x40000), (0x88, 0x40000 + 8), (0x90, 8)):
            edu.bar.write(reg, 4, v)
        edu.bar.write(0x98, 4, 1)  # FROM_PCI: bus address 0x40000 (blocked) into the buffer at 8
        assert edu.bar.read(0x98, 4) & 1
        edu.bar.write(0x90, 4, 16)  # ignored while running (dma_rw())
        hw.advance(99)
        assert edu.bar.read(0x98, 4) & 1 and edu.bar.read(0x90, 4) == 8
        hw.advance(1)
        assert not edu.bar.read(0x98, 4) & 1
    finally:
        hw.deferred_dma = False
    # the factorial's completion interrupt (status bit 7)
    edu.bar.write(0x20, 4, 0x80)
    edu.bar.write(0x08, 4, 3)
    assert edu.bar.read(0x24, 4) & 0x1 and edu.bar.read(0x08, 4) == 6
    edu.bar.write(0x64, 4, 0x1)
    edu.bar.write(0x20, 4, 0)


def test_dma_reaches_the_callers_pages_both_ways(setup):
    m, dev, fd, _, edu = setup
    ioas = ioas_alloc(fd)
    attach(dev, ioas)
    buf = Buf(2)
    data = bytes((i * 7 + 3) & 0xFF for i in range(2 * PAGE))
    buf.m[:PAGE] = data[:PAGE]
    map_(fd, ioas, buf.addr, 2 * PAGE, IOVA)
    before = len(m.faults)
    edu.read_iova(IOVA + 100, 3000)
    assert bytes(edu.dev.device.hw.dma_buf[:3000]) == data[100:3100]
    edu.write_iova(IOVA + PAGE, 3000)
    assert buf.m[PAGE:PAGE + 3000] == data[100:3100]
    assert buf.m[PAGE + 3000:2 * PAGE] == bytes(PAGE - 3000)  # not a byte more
    # across a page boundary, each page translated on its own
    edu.write_iova(IOVA + PAGE - 16, 32, buf_off=0)
    assert buf.m[PAGE - 16:PAGE + 16] == data[100:132]
    assert len(m.faults) == before


def test_map_file_pages_carry_dma(setup):
    _, dev, fd, _, edu = setup
    ioas = ioas_alloc(fd)
    attach(dev, ioas)
    mfd = os.memfd_create("dma")
    try:
        os.ftruncate(mfd, 2 * PAGE)
        data = bytes((i * 31 + 5) & 0xFF for i in range(PAGE))
        os.pwrite(mfd, data, 0)
        fd.ioctl(B.IOMMU_IOAS_MAP_FILE, B.iommu_ioas_map_file(
            size=sz(B.iommu_ioas_map_file), flags=R | W | B.IOMMU_IOAS_MAP_FIXED_IOVA, ioas_id=ioas, fd=mfd,
            start=0, length=2 * PAGE, iova=IOVA))
        edu.read_iova(IOVA + 8, 2048)
        edu.write_iova(IOVA + PAGE, 2048)
        assert os.pread(mfd, 2048, PAGE) == data[8:8 + 2048]
    finally:
        os.close(mfd)


def _vtd_line(write: bool, bdf: str, addr: int, reason: int, text: str) -> str:
    # QEMU's scalable-mode unit records a table walk's fault with PASID 0 (RID_PASID), a request
    # stopped at the PASID entry (0x58) with none: what 7.2.13 printed there
    pasid = "NO_PASID" if reason == 0x58 else "PASID 0x0"
    return (f"DMAR: [{'DMA Write' if write else 'DMA Read'} {pasid}] Request device [{bdf}] fault addr {addr:#x} "
            f"[fault reason {reason:#04x}] {text}")


def test_dma_after_unmap_is_blocked_and_reported(setup, profile):
    m, dev, fd, _, edu = setup
    bdf = dev.device.dev.bdf
    ioas = ioas_alloc(fd)
    attach(dev, ioas)
    src, dst = Buf(1), Buf(1)
    data = bytes((i * 5 + 1) & 0xFF for i in range(PAGE))
    src.m[:] = data
    dst.m[:] = b"\x5a" * PAGE
    map_(fd, ioas, src.addr, PAGE, IOVA)
    map_(fd, ioas, dst.addr, PAGE, IOVA + 16 * PAGE)
    edu.read_iova(IOVA, 256)
    unmap(fd, ioas, IOVA + 16 * PAGE, PAGE)
    before = len(m.faults)
    edu.write_iova(IOVA + 16 * PAGE + 8, 256)
    assert dst.m[:] == b"\x5a" * PAGE
    faults = m.faults[before:]
    if profile == "qemu-vtd":  # the fault record holds the page (dma_frcd_page_addr())
        assert faults == [_vtd_line(True, bdf, IOVA + 16 * PAGE, 0x05, "PTE Write access is not set")]
    else:
        assert faults == [f"vfio-pci {bdf}: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x{_domid(faults[0])} "
                          f"address={IOVA + 16 * PAGE + 8:#x} flags=0x0020]"]
    # a read of a hole: zeros into the device (QEMU's unassigned read), reported as a read
    edu.bar.write(0x04, 4, 0)
    hw = dev.device.hw
    hw.dma_buf[:64] = b"\x77" * 64
    before = len(m.faults)
    edu.read_iova(IOVA + 16 * PAGE, 64)
    assert bytes(hw.dma_buf[:64]) == bytes(64)
    assert f"{IOVA + 16 * PAGE:x}" in m.faults[before]
    if profile == "qemu-vtd":
        assert m.faults[before:] == [_vtd_line(False, bdf, IOVA + 16 * PAGE, 0x06, "PTE Read access is not set")]


def _domid(line: str) -> str:
    return line.split("domain=0x")[1][:4]


def test_a_read_only_mapping_is_not_written(setup, profile):
    m, dev, fd, _, edu = setup
    ioas = ioas_alloc(fd)
    attach(dev, ioas)
    src, ro, out = Buf(1), Buf(1), Buf(1)
    src.m[:] = bytes(range(256)) * 16
    ro.m[:] = b"\xa5" * PAGE
    map_(fd, ioas, src.addr, PAGE, IOVA)
    map_(fd, ioas, ro.addr, PAGE, IOVA + PAGE, flags=R)
    map_(fd, ioas, out.addr, PAGE, IOVA + 2 * PAGE)
    edu.read_iova(IOVA, 512)
    before = len(m.faults)
    edu.write_iova(IOVA + PAGE, 512)
    assert ro.m[:] == b"\xa5" * PAGE
    faults = m.faults[before:]
    assert len(faults) == 1 and f"{IOVA + PAGE:x}" in faults[0]
    if profile == "qemu-amd":
        assert faults[0].endswith("flags=0x0030]")  # a write (RW) to a present page (PR)
    edu.read_iova(IOVA + PAGE, 64, buf_off=1024)  # reading it is allowed
    edu.write_iova(IOVA + 2 * PAGE, 64, buf_off=1024)
    assert out.m[:64] == b"\xa5" * 64
    # QEMU's IOTLB now holds the read-only page: a write there is dropped without a report
    before = len(m.faults)
    edu.write_iova(IOVA + PAGE, 64)
    assert ro.m[:] == b"\xa5" * PAGE and m.faults[before:] == []


def test_one_fault_record_per_transfer_on_vtd(setup, profile):
    """QEMU's VT-d has cap NFR 0: one fault record; the second fault of a transfer overflows."""
    m, dev, fd, _, edu = setup
    attach(dev, ioas_alloc(fd))
    before = len(m.faults)
    edu.write_iova(IOVA + PAGE - 64, 128)  # two unmapped pages
    assert len(m.faults) - before == (1 if profile == "qemu-vtd" else 2)


def test_a_blocked_device_dma_is_reported_as_the_blocking_domain(setup, profile):
    m, dev, _, _, edu = setup
    bdf = dev.device.dev.bdf
    before = len(m.faults)
    edu.write_iova(IOVA, 16)
    if profile == "qemu-vtd":  # scalable mode: the RID_PASID entry is torn down (QEMU 7.2: 0x58)
        assert m.faults[before:] == [_vtd_line(True, bdf, IOVA, 0x58, "SM: Error attempting to access PASID Table Entry")]
    else:
        assert m.faults[before:] == ["AMD-Vi: Event logged [Device not attached to domain properly]",
                                     f"AMD-Vi:   device={bdf} domain=0x0000"]


def test_dma_mask_clamps_and_bus_mastering_gates(setup):
    m, dev, fd, _, edu = setup
    ioas = ioas_alloc(fd)
    attach(dev, ioas)
    buf = Buf(1)
    buf.m[:] = b"\x11" * PAGE
    map_(fd, ioas, buf.addr, PAGE, IOVA)
    hw = dev.device.hw
    hw.dma_buf[:32] = b"\x22" * 32
    edu.write_iova((1 << 28) | IOVA, 32)  # masked to 28 bits: IOVA
    assert buf.m[:32] == b"\x22" * 32
    assert hw.log[-1] == f"EDU: clamping DMA {(1 << 28) | IOVA:#018x} to {IOVA:#018x}!"
    # without bus mastering nothing leaves the device: no write, zeros read, no fault
    edu.master(False)
    before = len(m.faults)
    hw.dma_buf[:32] = b"\x33" * 32
    edu.write_iova(IOVA, 32)
    assert buf.m[:32] == b"\x22" * 32
    edu.read_iova(IOVA, 32)
    assert bytes(hw.dma_buf[:32]) == bytes(32) and m.faults[before:] == []
    edu.master(True)


def test_edu_range_check_stops_the_machine(profile):
    """QEMU 7.2's edu_check_range(): a transfer ending exactly at the buffer's end aborts the VM
    (on a machine of its own: the process's machines must stay alive)."""
    plat = Platform(load(profile))
    dev = plat.devices[first_bdf(profile)]
    with open_iommufd() as fd:
        f = VfioFile(vfio_device_of(plat, dev))
        bind(f, fd.fileno())
        edu = Edu(f)
        edu.master()
        edu.read_iova(IOVA, 4095)  # one short of the end: fine (and blocked, reported)
        with pytest.raises(HwError, match="out of bounds"):
            edu.read_iova(IOVA, 4096)
        with pytest.raises(HwError):
            edu.bar.read(0, 4)  # the machine is gone
        edu.close()
        f.close()


# -- interrupts ---------------------------------------------------------------------------------------

def _set_irqs(dev, index: int, flags: int, fds: list[int] | None = None, count: int | None = None) -> None:
    fds = fds or []
    n = len(fds) if count is None else count
    hdr = B.vfio_irq_set(argsz=sz(B.vfio_irq_set) + 4 * len(fds), flags=flags, index=index, start=0, count=n)
    arg = bytearray(bytes(hdr) + b"".join(f.to_bytes(4, "little", signed=True) for f in fds))
    dev.ioctl(B.VFIO_DEVICE_SET_IRQS, arg)


def _pending(efd: int) -> int:
    try:
        return os.eventfd_read(efd)
    except BlockingIOError:
        return 0


def test_msi_through_an_eventfd(setup):
    _, dev, *_, edu = setup
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        notfd = os.memfd_create("x")
        assert errno_of(_set_irqs, dev, B.VFIO_PCI_MSI_IRQ_INDEX,
                        B.VFIO_IRQ_SET_DATA_EVENTFD | B.VFIO_IRQ_SET_ACTION_TRIGGER, [notfd]) == errno.EINVAL
        os.close(notfd)
        _set_irqs(dev, B.VFIO_PCI_MSI_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_EVENTFD | B.VFIO_IRQ_SET_ACTION_TRIGGER, [efd])
        flags = int.from_bytes(dev.pread(2, CONFIG + 0x42), "little")
        assert flags & 0x1 == 0  # the user's view: MSI enable is vfio's, not the virtual register's
        assert dev.device.hw.msi_enabled()
        edu.bar.write(0x60, 4, 0x1)  # raise: MSI
        assert _pending(efd) == 1
        _set_irqs(dev, B.VFIO_PCI_MSI_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_TRIGGER, count=1)
        assert _pending(efd) == 1  # loopback: DATA_NONE signals the vector
        _set_irqs(dev, B.VFIO_PCI_MSI_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_TRIGGER, count=0)
        assert not dev.device.hw.msi_enabled()
        edu.bar.write(0x64, 4, 0x1)
    finally:
        os.close(efd)


def test_intx_masks_itself_until_unmasked(setup):
    _, dev, *_, edu = setup
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    hw = dev.device.hw
    try:
        _set_irqs(dev, B.VFIO_PCI_INTX_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_EVENTFD | B.VFIO_IRQ_SET_ACTION_TRIGGER, [efd])
        edu.bar.write(0x60, 4, 0x100)
        assert _pending(efd) == 1 and hw.intx_disabled  # automasked (DisINTx in the function)
        # unmasked while still pending: masked again and signalled again
        _set_irqs(dev, B.VFIO_PCI_INTX_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_UNMASK, count=1)
        assert _pending(efd) == 1 and hw.intx_disabled
        edu.bar.write(0x64, 4, 0x100)  # acknowledged in the device
        _set_irqs(dev, B.VFIO_PCI_INTX_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_UNMASK, count=1)
        assert _pending(efd) == 0 and not hw.intx_disabled
        edu.bar.write(0x60, 4, 0x1)
        assert _pending(efd) == 1
        edu.bar.write(0x64, 4, 0x1)
        _set_irqs(dev, B.VFIO_PCI_INTX_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_NONE | B.VFIO_IRQ_SET_ACTION_TRIGGER, count=0)
    finally:
        os.close(efd)


def test_a_dma_completion_interrupt(setup):
    _, dev, fd, _, edu = setup
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        _set_irqs(dev, B.VFIO_PCI_MSI_IRQ_INDEX, B.VFIO_IRQ_SET_DATA_EVENTFD | B.VFIO_IRQ_SET_ACTION_TRIGGER, [efd])
        attach(dev, ioas_alloc(fd))
        edu.dma(0x40000, IOVA, 8, True, irq=True)  # blocked, but it completes and interrupts
        assert _pending(efd) == 1 and edu.bar.read(0x24, 4) & 0x100
        edu.bar.write(0x64, 4, 0x100)
    finally:
        os.close(efd)


# -- the walk a DMA makes: numba against the reference -----------------------------------------------

@pytest.mark.parametrize("name,make,unit", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_translate_agrees_with_the_reference(name, make, unit):
    base = (1 << 30) - (1 << 22)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, (1 << 23) // unit), st.integers(1, 600),
                              st.sampled_from([IOMMU_READ, IOMMU_WRITE, IOMMU_READ | IOMMU_WRITE]),
                              st.booleans()), max_size=12),
           st.lists(st.integers(-1, (1 << 24) // unit), min_size=1, max_size=40))
    def run(maps, probes):
        t = make()
        ref = _reference(t)
        for k, n, prot, same in maps:
            iova = base + k * unit
            pa = iova + (1 << 32) if same else (1 << 33) + k * unit
            assert t.map_range(iova, pa, n * unit, prot) == ref.map_range(iova, pa, n * unit, prot)
        vas = [base + p * unit + (p % 3) * 8 if p >= 0 else (1 << 62) for p in probes]
        got = t.translate_many(np.array(vas, dtype=np.int64))
        assert [tuple(int(x) for x in row) for row in got] == [ref.translate(v) for v in vas]
        assert t.translate(-1)[0] == walk.T_RANGE

    run()


def test_the_same_under_numba_disable_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", IOMMUFD_PT_EXAMPLES="10")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", __file__,
                        "-k", "not disable_jit"], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_the_mock_only_test_ops_refuse_a_vfio_device(setup):
    """IOMMU_TEST_OP_TRIGGER_IOPF of a VFIO device's ID is EINVAL (iommufd_selftest_is_mock_dev(),
    selftest.c:1760; found by explore on vm:vtd, where the model answered 0); TRIGGER_VEVENT has
    no such check in the test driver (selftest.c:1794 reads any device as a mock_dev), so the
    model says not modelled rather than make an answer up."""
    from model.errors import NotModelled

    _, _, fd, dev_id, _ = setup
    cmd = B.iommu_test_cmd(size=sz(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_TRIGGER_IOPF)
    cmd.trigger_iopf.dev_id = dev_id
    with pytest.raises(OSError) as e:
        fd.ioctl(B.IOMMU_TEST_CMD, cmd)
    assert e.value.errno == errno.EINVAL
    cmd = B.iommu_test_cmd(size=sz(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_TRIGGER_VEVENT)
    cmd.trigger_vevent.dev_id = dev_id
    with pytest.raises(NotModelled):
        fd.ioctl(B.IOMMU_TEST_CMD, cmd)
