"""Helpers for the conformance tests: raw-ABI calls of every ioctl family (IOAS, mock devices and
IOMMU_TEST_CMD ops, HWPTs, vIOMMUs, fault queues and vEVENTQs), and a state snapshot.

The snapshot is what "a failed ioctl changed nothing" compares: on every target
it is read through ioctls (IOVA_RANGES, a COPY probe per range of interest, the IOVA an automatic
map would get), and on the model it adds the model's own table (areas, pins, references).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import signal

import pytest

from conformance.report import Errno
from model.libc import libc
from model.limits import PAGE_SIZE, U64_MAX
from model.uapi import T as B
from model.uapi import set_fields

PAGE = PAGE_SIZE
U64 = U64_MAX
R = B.IOMMU_IOAS_MAP_READABLE
W = B.IOMMU_IOAS_MAP_WRITEABLE
FIXED = B.IOMMU_IOAS_MAP_FIXED_IOVA
RW = R | W


def require(*names: str) -> None:
    """Skip the calling test module when the bindings under test (model.uapi.T) lack one of
    `names`: the module depends on the uapi version, and says which names it needs."""
    missing = [n for n in names if not hasattr(B, n)]
    if missing:
        pytest.skip(f"depends on the uapi version: Linux {B.KERNEL_VERSION} has no {', '.join(missing)}",
                    allow_module_level=True)


def has_cap_sys_resource() -> bool:
    """CAP_SYS_RESOURCE in this process's effective set (IOMMU_OPTION_RLIMIT_MODE SET needs it)."""
    with open("/proc/self/status") as f:
        eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    return bool(eff >> 24 & 1)


needs_cap_sys_resource = pytest.mark.skipif(
    not has_cap_sys_resource(),
    reason="RLIMIT_MODE SET needs CAP_SYS_RESOURCE, which this process lacks (it gets EPERM: "
           "test_rlimit_mode_set_needs_cap_sys_resource covers that)",
)


def sz(cls) -> int:
    return ctypes.sizeof(cls)


def err(fn, *args, **kw) -> int:
    """The errno `fn` fails with (0 when it succeeds), printing as its name in assertions."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return Errno(e.errno)
    return Errno(0)


def ioas_alloc(fd) -> int:
    cmd = B.iommu_ioas_alloc(size=sz(B.iommu_ioas_alloc))
    fd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    return cmd.out_ioas_id


def destroy(fd, id: int) -> None:
    fd.ioctl(B.IOMMU_DESTROY, B.iommu_destroy(size=sz(B.iommu_destroy), id=id))


def map_cmd(ioas, user_va, length, iova=None, flags=RW, reserved=0):
    if iova is not None:
        flags |= FIXED
    return B.iommu_ioas_map(size=sz(B.iommu_ioas_map), flags=flags, ioas_id=ioas, __reserved=reserved,
                            user_va=user_va, length=length, iova=iova or 0)


def map_(fd, ioas, user_va, length, iova=None, flags=RW, reserved=0) -> int:
    """IOMMU_IOAS_MAP; iova=None asks for an automatic IOVA. Returns the IOVA."""
    cmd = map_cmd(ioas, user_va, length, iova, flags, reserved)
    fd.ioctl(B.IOMMU_IOAS_MAP, cmd)
    return cmd.iova


def map_file(fd, ioas, mfd, start, length, iova=None, flags=RW) -> int:
    if iova is not None:
        flags |= FIXED
    cmd = B.iommu_ioas_map_file(size=sz(B.iommu_ioas_map_file), flags=flags, ioas_id=ioas, fd=mfd,
                                start=start, length=length, iova=iova or 0)
    fd.ioctl(B.IOMMU_IOAS_MAP_FILE, cmd)
    return cmd.iova


def unmap(fd, ioas, iova, length) -> int:
    """IOMMU_IOAS_UNMAP; returns the unmapped length the kernel wrote back."""
    cmd = B.iommu_ioas_unmap(size=sz(B.iommu_ioas_unmap), ioas_id=ioas, iova=iova, length=length)
    fd.ioctl(B.IOMMU_IOAS_UNMAP, cmd)
    return cmd.length


def copy(fd, dst, src, src_iova, length, dst_iova=None, flags=RW) -> int:
    if dst_iova is not None:
        flags |= FIXED
    cmd = B.iommu_ioas_copy(size=sz(B.iommu_ioas_copy), flags=flags, dst_ioas_id=dst, src_ioas_id=src,
                            length=length, dst_iova=dst_iova or 0, src_iova=src_iova)
    fd.ioctl(B.IOMMU_IOAS_COPY, cmd)
    return cmd.dst_iova


def iova_ranges(fd, ioas) -> tuple[list[tuple[int, int]], int]:
    """IOMMU_IOAS_IOVA_RANGES: ([(start, last)], out_iova_alignment)."""
    ranges = (B.iommu_iova_range * 16)()
    cmd = B.iommu_ioas_iova_ranges(size=sz(B.iommu_ioas_iova_ranges), ioas_id=ioas, num_iovas=16,
                                   allowed_iovas=ctypes.addressof(ranges))
    fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, cmd)
    return [(ranges[i].start, ranges[i].last) for i in range(cmd.num_iovas)], cmd.out_iova_alignment


def allow(fd, ioas, ranges, num=None, ptr=None) -> None:
    arr = (B.iommu_iova_range * max(1, len(ranges)))(*[B.iommu_iova_range(s, l) for s, l in ranges])
    cmd = B.iommu_ioas_allow_iovas(size=sz(B.iommu_ioas_allow_iovas), ioas_id=ioas,
                                   num_iovas=len(ranges) if num is None else num,
                                   allowed_iovas=ctypes.addressof(arr) if ptr is None else ptr)
    fd.ioctl(B.IOMMU_IOAS_ALLOW_IOVAS, cmd)


class Buf:
    """Anonymous user memory: `n` pages, optionally placed at an `align`ed address."""

    def __init__(self, npages: int, align: int = PAGE):
        self.m = mmap.mmap(-1, npages * PAGE + align)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        self.addr = (base + align - 1) & ~(align - 1)
        self.len = npages * PAGE


def touched(npages: int) -> "Buf":
    """A Buf whose pages are real (written once), not the shared zero page, before anything pins them."""
    buf = Buf(npages)
    for i in range(npages):
        buf.m[i * PAGE] = 1
    return buf


def unmapped_va() -> int:
    """An address with nothing mapped at it (a page mmapped then munmapped)."""
    p = libc.mmap(None, 4 * PAGE, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert libc.munmap(ctypes.c_void_p(p), 4 * PAGE) == 0
    return p


def model_iopt(fd, ioas):
    """The model's IoPagetable behind `ioas`, or None on a real kernel."""
    f = getattr(fd, "_f", fd)
    ictx = getattr(f, "ictx", None)
    if ictx is None:
        return None
    obj = ictx.objects.objects.get(ioas)
    return obj.iopt if obj is not None else None


def snapshot(fd, ioas, probes=(), auto_probe=(0x40000000, PAGE)):
    """What is observable about `ioas`, by ioctls that are undone before returning:
    IOVA_RANGES; for each (iova, length) in `probes` the errno of copying exactly that range
    out (0: areas cover it back to back) and of a FIXED map over it (EEXIST: something is there);
    the IOVA an automatic map of `auto_probe` (user_va, length) gets, or its errno.
    On the model, the model's table is added."""
    state = [iova_ranges(fd, ioas)]
    scratch = ioas_alloc(fd)
    try:
        for iova, length in probes:
            e = err(copy, fd, scratch, ioas, iova, length)
            if e == 0:
                unmap(fd, scratch, 0, U64)
            try:
                map_(fd, ioas, 0x10000000, length, iova=iova)
                unmap(fd, ioas, iova, length)
                e2 = 0
            except OSError as ex:
                e2 = ex.errno
            state.append((iova, length, e, e2))
        try:
            got = map_(fd, ioas, *auto_probe)
            unmap(fd, ioas, got, auto_probe[1])
        except OSError as ex:
            got = -ex.errno
        state.append(got)
    finally:
        destroy(fd, scratch)
    iopt = model_iopt(fd, ioas)
    if iopt is not None:
        state.append(iopt.snapshot())
    return state


def run_test_cmd(fd, op, id, **fields):
    """IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST) op `op` on object `id`, with union fields by dotted name."""
    cmd = set_fields(B.iommu_test_cmd(size=sz(B.iommu_test_cmd), op=op, id=id), **fields)
    fd.ioctl(B.IOMMU_TEST_CMD, cmd)
    return cmd


def add_reserved(fd, ioas, start, length) -> None:
    run_test_cmd(fd, B.IOMMU_TEST_OP_ADD_RESERVED, ioas, **{"add_reserved.start": start, "add_reserved.length": length})


def mock_domain(fd, ioas) -> tuple[int, int]:
    """A mock device attached to `ioas`: (stdev_id, hwpt_id)."""
    cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)
    return cmd.mock_domain.out_stdev_id, cmd.mock_domain.out_hwpt_id


def vm_pin_kb(fd=None) -> int:
    """mm->pinned_vm of this process in KiB: the model's account of it on the model (its pins
    are not the machine's), else VmPin from /proc/self/status."""
    ictx = getattr(getattr(fd, "_f", fd), "ictx", None)
    if ictx is not None:
        return ictx.accounts.mm_pinned_vm.get(os.getpid(), 0) * PAGE // 1024
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPin:"):
                return int(line.split()[1])
    pytest.skip("no VmPin in /proc/self/status")


# The mock IOMMU (IOMMU_TEST_CMD, drivers/iommu/iommufd/selftest.c): test_mock_domain.py,
# test_access.py, test_hwpt.py, test_fault_queue.py, test_pasid.py, test_syz.py.

def mock_device(fd, pt_id, dev_flags=None) -> tuple[int, int, int]:
    """IOMMU_TEST_OP_MOCK_DOMAIN (or _FLAGS with `dev_flags`): a mock device bound and attached
    to `pt_id` (an IOAS or a HWPT). Returns (stdev_id, hwpt_id, idev_id)."""
    if dev_flags is None:
        cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id)
    else:
        cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id,
                           **{"mock_domain_flags.dev_flags": dev_flags})
    return cmd.mock_domain.out_stdev_id, cmd.mock_domain.out_hwpt_id, cmd.mock_domain.out_idev_id


def mock_domain_replace(fd, stdev_id, pt_id) -> int:
    """IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: the device behind `stdev_id` moves to `pt_id`; returns
    the HWPT it is attached to now."""
    cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev_id, **{"mock_domain_replace.pt_id": pt_id})
    return cmd.mock_domain_replace.pt_id


def check_map(fd, hwpt_id, iova, length, uptr) -> None:
    """IOMMU_TEST_OP_MD_CHECK_MAP: every mock page of [iova, iova+length) translates to uptr's."""
    run_test_cmd(fd, B.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt_id,
                 **{"check_map.iova": iova, "check_map.length": length, "check_map.uptr": uptr})


def check_refs(fd, uptr, length, refs) -> None:
    """IOMMU_TEST_OP_MD_CHECK_REFS: every page of [uptr, uptr+length) has `refs` FOLL_PIN pins (EIO if not)."""
    run_test_cmd(fd, B.IOMMU_TEST_OP_MD_CHECK_REFS, 0,
                 **{"check_refs.uptr": uptr, "check_refs.length": length, "check_refs.refs": refs})


def create_access(fd, ioas, flags=0) -> int:
    """IOMMU_TEST_OP_CREATE_ACCESS: an access (an emulated-device driver) on `ioas`; returns its fd."""
    cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_CREATE_ACCESS, ioas, **{"create_access.flags": flags})
    return cmd.create_access.out_access_fd


def access_pages(fd, access_fd, iova, length, uptr=0, flags=0) -> int:
    """IOMMU_TEST_OP_ACCESS_PAGES: pin [iova, iova+length) through the access (uptr, when nonzero,
    is checked against the pages); returns the item id DESTROY_ACCESS_PAGES takes."""
    cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_ACCESS_PAGES, access_fd,
                       **{"access_pages.iova": iova, "access_pages.length": length,
                          "access_pages.uptr": uptr, "access_pages.flags": flags})
    return cmd.access_pages.out_access_pages_id


def destroy_access_pages(fd, access_fd, item) -> None:
    run_test_cmd(fd, B.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, access_fd,
                 **{"destroy_access_pages.access_pages_id": item})


def access_rw(fd, access_fd, iova, uptr, length, flags=0) -> None:
    """IOMMU_TEST_OP_ACCESS_RW: copy [iova, iova+length) to uptr, or with MOCK_ACCESS_RW_WRITE from it."""
    run_test_cmd(fd, B.IOMMU_TEST_OP_ACCESS_RW, access_fd,
                 **{"access_rw.iova": iova, "access_rw.length": length, "access_rw.uptr": uptr,
                    "access_rw.flags": flags})


def access_replace_ioas(fd, access_fd, ioas) -> None:
    run_test_cmd(fd, B.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, access_fd, **{"access_replace_ioas.ioas_id": ioas})


def hw_info(fd, dev_id, data_len=8, data=None, flags=0, in_type=0):
    """IOMMU_GET_HW_INFO into `data` (default: a fresh buffer of data_len bytes): (the command as
    the kernel wrote it back, the buffer's bytes)."""
    if data is None:
        data = (ctypes.c_ubyte * max(data_len, 1))()
    cmd = B.iommu_hw_info(size=sz(B.iommu_hw_info), flags=flags, dev_id=dev_id, data_len=data_len,
                          data_uptr=ctypes.addressof(data))
    if in_type:
        cmd.in_data_type = in_type
    fd.ioctl(B.IOMMU_GET_HW_INFO, cmd)
    return cmd, bytes(data)


def hwpt_alloc(fd, dev_id, pt_id, flags=0, data_type=0, data=None, data_len=None, fault_id=0) -> int:
    """IOMMU_HWPT_ALLOC; `data` is a ctypes object (its address and size are passed unless
    `data_len` says otherwise). Returns out_hwpt_id."""
    cmd = B.iommu_hwpt_alloc(size=sz(B.iommu_hwpt_alloc), flags=flags, dev_id=dev_id, pt_id=pt_id,
                             data_type=data_type, fault_id=fault_id)
    if data is not None:
        cmd.data_uptr = ctypes.addressof(data)
        cmd.data_len = ctypes.sizeof(data) if data_len is None else data_len
    elif data_len is not None:
        cmd.data_len = data_len
    fd.ioctl(B.IOMMU_HWPT_ALLOC, cmd)
    return cmd.out_hwpt_id


def hwpt_selftest(iotlb=None, pagetable_type=0):
    """struct iommu_hwpt_selftest (IOMMU_HWPT_DATA_SELFTEST)."""
    return B.iommu_hwpt_selftest(iotlb=B.IOMMU_TEST_IOTLB_DEFAULT if iotlb is None else iotlb,
                                 pagetable_type=pagetable_type)


def set_dirty_tracking(fd, hwpt_id, enable=True) -> None:
    fd.ioctl(B.IOMMU_HWPT_SET_DIRTY_TRACKING,
             B.iommu_hwpt_set_dirty_tracking(size=sz(B.iommu_hwpt_set_dirty_tracking), hwpt_id=hwpt_id,
                                             flags=B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0))


def get_dirty_bitmap(fd, hwpt_id, iova, length, page_size, data, flags=0) -> None:
    """IOMMU_HWPT_GET_DIRTY_BITMAP into the user bitmap at address `data`."""
    fd.ioctl(B.IOMMU_HWPT_GET_DIRTY_BITMAP,
             B.iommu_hwpt_get_dirty_bitmap(size=sz(B.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt_id, flags=flags,
                                           iova=iova, length=length, page_size=page_size, data=data))


def mock_dirty(fd, hwpt_id, iova, length, page_size, bitmap_addr) -> int:
    """IOMMU_TEST_OP_DIRTY: the mock IOMMU marks dirty the pages whose bits are set in the bitmap
    at `bitmap_addr`; returns out_nr_dirty."""
    cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_DIRTY, hwpt_id,
                       **{"dirty.iova": iova, "dirty.length": length, "dirty.page_size": page_size,
                          "dirty.uptr": bitmap_addr})
    return cmd.dirty.out_nr_dirty


def check_iotlb(fd, hwpt_id, iotlb_id, value) -> None:
    """IOMMU_TEST_OP_MD_CHECK_IOTLB: entry `iotlb_id` of a nested mock HWPT holds `value` (EINVAL if not)."""
    run_test_cmd(fd, B.IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt_id,
                 **{"check_iotlb.id": iotlb_id, "check_iotlb.iotlb": value})


# The vIOMMU family (drivers/iommu/iommufd/viommu.c, eventq.c, driver.c; the selftest vIOMMU of
# selftest.c): test_viommu.py, test_veventq.py, test_viommu_mmap.py.

def viommu_selftest(in_data: int = 0):
    """struct iommu_viommu_selftest (the driver data of IOMMU_VIOMMU_TYPE_SELFTEST)."""
    return B.iommu_viommu_selftest(in_data=in_data)


def viommu_alloc(fd, dev_id, hwpt_id, type=None, data=None, data_len=None, flags=0, reserved=0,
                 data_uptr=None) -> int:
    """IOMMU_VIOMMU_ALLOC (type IOMMU_VIOMMU_TYPE_SELFTEST unless told); `data` is a ctypes object
    (its address and size are passed unless `data_len` / `data_uptr` say otherwise). Returns
    out_viommu_id."""
    cmd = B.iommu_viommu_alloc(size=sz(B.iommu_viommu_alloc), flags=flags, dev_id=dev_id, hwpt_id=hwpt_id,
                               type=B.IOMMU_VIOMMU_TYPE_SELFTEST if type is None else type)
    cmd.__reserved = reserved
    if data is not None:
        cmd.data_uptr = ctypes.addressof(data)
        cmd.data_len = ctypes.sizeof(data)
    if data_len is not None:
        cmd.data_len = data_len
    if data_uptr is not None:
        cmd.data_uptr = data_uptr
    fd.ioctl(B.IOMMU_VIOMMU_ALLOC, cmd)
    return cmd.out_viommu_id


def vdevice_alloc(fd, viommu_id, dev_id, virt_id) -> int:
    """IOMMU_VDEVICE_ALLOC: returns out_vdevice_id."""
    cmd = B.iommu_vdevice_alloc(size=sz(B.iommu_vdevice_alloc), viommu_id=viommu_id, dev_id=dev_id,
                                virt_id=virt_id)
    fd.ioctl(B.IOMMU_VDEVICE_ALLOC, cmd)
    return cmd.out_vdevice_id


def hw_queue_alloc(fd, viommu_id, index, iova, length, type=None, flags=0) -> int:
    """IOMMU_HW_QUEUE_ALLOC (type IOMMU_HW_QUEUE_TYPE_SELFTEST unless told): a queue at
    `iova` of the vIOMMU's nesting parent IOAS. Returns out_hw_queue_id."""
    cmd = B.iommu_hw_queue_alloc(size=sz(B.iommu_hw_queue_alloc), flags=flags, viommu_id=viommu_id,
                                 type=B.IOMMU_HW_QUEUE_TYPE_SELFTEST if type is None else type,
                                 index=index, nesting_parent_iova=iova, length=length)
    fd.ioctl(B.IOMMU_HW_QUEUE_ALLOC, cmd)
    return cmd.out_hw_queue_id


def veventq_alloc(fd, viommu_id, depth=8, type=None, flags=0, reserved=0) -> tuple[int, int]:
    """IOMMU_VEVENTQ_ALLOC (type IOMMU_VEVENTQ_TYPE_SELFTEST unless told): (veventq_id, fd)."""
    cmd = B.iommu_veventq_alloc(size=sz(B.iommu_veventq_alloc), flags=flags, viommu_id=viommu_id,
                                type=B.IOMMU_VEVENTQ_TYPE_SELFTEST if type is None else type,
                                veventq_depth=depth)
    cmd.__reserved = reserved
    fd.ioctl(B.IOMMU_VEVENTQ_ALLOC, cmd)
    return cmd.out_veventq_id, cmd.out_veventq_fd


def trigger_vevent(fd, dev_id, times: int = 1) -> None:
    """IOMMU_TEST_OP_TRIGGER_VEVENT `times` times: the mock device reports a struct
    iommu_viommu_event_selftest (its vDEVICE's virt_id) to its vIOMMU's SELFTEST vEVENTQ."""
    for _ in range(times):
        run_test_cmd(fd, B.IOMMU_TEST_OP_TRIGGER_VEVENT, 0, **{"trigger_vevent.dev_id": dev_id})


def dev_check_cache(fd, dev_id, cache_id, value) -> None:
    """IOMMU_TEST_OP_DEV_CHECK_CACHE: entry `cache_id` of the mock device's cache holds `value` (EINVAL if not)."""
    run_test_cmd(fd, B.IOMMU_TEST_OP_DEV_CHECK_CACHE, dev_id,
                 **{"check_dev_cache.id": cache_id, "check_dev_cache.cache": value})


def hwpt_invalidate(fd, hwpt_id, raw: bytes, entry_type, data_type, entry_len=None, num=None, uptr=None):
    """IOMMU_HWPT_INVALIDATE of the array `raw` (entries of ctypes struct `entry_type`) on a
    nested HWPT or a vIOMMU; any field can be overridden. Returns (errno, the entry_num the kernel
    wrote back)."""
    arr = ctypes.create_string_buffer(raw, max(1, len(raw)))
    cmd = B.iommu_hwpt_invalidate(
        size=sz(B.iommu_hwpt_invalidate), hwpt_id=hwpt_id,
        data_uptr=ctypes.addressof(arr) if uptr is None else uptr, data_type=data_type,
        entry_len=sz(entry_type) if entry_len is None else entry_len,
        entry_num=len(raw) // sz(entry_type) if num is None else num)
    e = err(fd.ioctl, B.IOMMU_HWPT_INVALIDATE, cmd)
    return e, cmd.entry_num


def viommu_invalidate(fd, viommu_id, entries, entry_len=None, data_type=None, num=None, uptr=None,
                      raw: bytes | None = None) -> tuple[int, int]:
    """IOMMU_HWPT_INVALIDATE with hwpt_id a vIOMMU: `entries` are (flags, vdev_id, cache_id) as
    struct iommu_viommu_invalidate_selftest, or `raw` the array's bytes. Returns (errno, the
    entry_num the kernel wrote back)."""
    if raw is None:
        raw = b"".join(bytes(B.iommu_viommu_invalidate_selftest(flags=f, vdev_id=v, cache_id=c))
                       for f, v, c in entries)
    return hwpt_invalidate(fd, viommu_id, raw, B.iommu_viommu_invalidate_selftest,
                           B.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST if data_type is None else data_type,
                           entry_len, len(entries) if num is None else num, uptr)


VEVENT_HDR = sz(B.iommufd_vevent_header) if hasattr(B, "iommufd_vevent_header") else 8
VEVENT_SELFTEST = VEVENT_HDR + (sz(B.iommu_viommu_event_selftest) if hasattr(B, "iommu_viommu_event_selftest") else 4)


def _read_timeout(signum, frame):
    raise AssertionError("read() of an event queue blocked (the kernel's never does)")


def read_nohang(efd, count) -> bytes:
    """os.read() of an event-queue descriptor, failing instead of hanging if the target blocks
    (iommufd_fault_fops_read() and iommufd_veventq_fops_read() never wait: an empty queue
    reads 0 bytes)."""
    old = signal.signal(signal.SIGALRM, _read_timeout)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        return os.read(efd, count)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_vevents(data: bytes) -> list[tuple[int, int, int | None]]:
    """The records of a vEVENTQ read: (flags, sequence, virt_id) per struct iommufd_vevent_header,
    virt_id None for a lost-events header (IOMMU_VEVENTQ_FLAG_LOST_EVENTS: no payload), else the
    struct iommu_viommu_event_selftest after it."""
    out, off = [], 0
    while off < len(data):
        assert len(data) - off >= VEVENT_HDR, f"a partial vEVENT header at byte {off} of {len(data)}"
        hdr = B.iommufd_vevent_header.from_buffer_copy(data, off)
        off += VEVENT_HDR
        if hdr.flags & B.IOMMU_VEVENTQ_FLAG_LOST_EVENTS:
            out.append((hdr.flags, hdr.sequence, None))
            continue
        assert len(data) - off >= VEVENT_SELFTEST - VEVENT_HDR, f"a partial vEVENT payload at byte {off}"
        ev = B.iommu_viommu_event_selftest.from_buffer_copy(data, off)
        off += VEVENT_SELFTEST - VEVENT_HDR
        out.append((hdr.flags, hdr.sequence, ev.virt_id))
    return out


def read_vevents(efd, count=64 * VEVENT_SELFTEST) -> list[tuple[int, int, int | None]]:
    """One read() of the vEVENTQ, parsed (parse_vevents())."""
    return parse_vevents(read_nohang(efd, count))


def kernel_file_semantics(target) -> None:
    """Skip on the model in this process, where the files it hands out are plain socket ends:
    what their read()/write() answer (errnos, empty reads), their names in /proc and the
    descriptors that outlive the iommufd are the kernel's, and the model's through the server
    (`--target served`: this suite run under the preload library, as C programs are)."""
    if target == "model":
        pytest.skip("model in process: the files it hands out are socket ends; their read()/write() errnos, "
                    "empty reads, /proc names and lifetimes are the kernel's and the server's (run with "
                    "--iommufd-target served; README, 'Files the model hands out')")


def file_mmap(fd, length, prot=mmap.PROT_READ | mmap.PROT_WRITE, flags=mmap.MAP_SHARED, offset=0):
    """mmap(2) of the iommufd file (iommufd_fops_mmap()): a model.libc.Mapping (a mmap.mmap), or
    OSError with the errno."""
    return fd.mmap(length, prot, flags, offset)


def nest_parent(fd, dev_flags=None) -> tuple[int, int, int, int, int]:
    """A mock device on a new IOAS and a nesting parent HWPT (IOMMU_HWPT_ALLOC_NEST_PARENT) on
    that IOAS: (ioas, stdev, auto_hwpt, idev, parent); on a fresh file the IDs are 1, 2, 4, 3, 5."""
    ioas = ioas_alloc(fd)
    stdev, auto, idev = mock_device(fd, ioas, dev_flags)
    parent = hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    return ioas, stdev, auto, idev, parent


def noexec(path: str = "/dev/iommu") -> bool:
    """Whether the mount holding `path` is noexec (do_mmap() then refuses PROT_EXEC itself and
    clears VM_MAYEXEC): the longest mount point of /proc/self/mountinfo that contains it."""
    best, opts = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, opts = point, fields[5]
    return "noexec" in opts.split(",")
