"""A valid command per ioctl, for the generated cases that change one field of a command that
would otherwise succeed (conformance/tests/test_generated_cases.py).

Each base builds, on a fresh file, objects the command needs and returns the command's bytes and
the objects it names. HWPT_ALLOC and GET_HW_INFO use a VFIO device where the target has one
(IOMMUFD_VFIO_DEVICES: a VM profile's, or --vfio-device), so they run on a production kernel,
and a mock device (IOMMU_TEST_OP_MOCK_DOMAIN, CONFIG_IOMMUFD_TEST) where it has only that; dirty
tracking, nesting and the vIOMMU family need what only the mock offers here (a selftest vIOMMU). `unread` lists user
pointers the handler does not dereference for that command, with the kernel's reason.
"""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, field

from conformance.tests.helpers import PAGE, RW, ioas_alloc, map_, run_test_cmd
from model.uapi import T as B


@dataclass
class Base:
    cmd: bytearray
    unread: dict[str, str] = field(default_factory=dict)
    keep: list = field(default_factory=list)  # buffers the command points into
    # (case kind, field) -> (errno name, the kernel's reason) where the handler answers other
    # than the generic expectation
    answers: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def _bytes(cmd) -> bytearray:
    return bytearray(bytes(cmd))


def _buffer(npages: int = 4):
    m = mmap.mmap(-1, npages * PAGE)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def destroy(fd):
    return Base(_bytes(B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=ioas_alloc(fd))))


def ioas_alloc_(fd):
    return Base(_bytes(B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))))


def iova_ranges(fd):
    out = (B.iommu_iova_range * 4)()
    return Base(_bytes(B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=ioas_alloc(fd),
                                                num_iovas=4, allowed_iovas=ctypes.addressof(out))), keep=[out])


def allow_iovas(fd):
    r = (B.iommu_iova_range * 1)(B.iommu_iova_range(PAGE, 16 * PAGE - 1))
    return Base(_bytes(B.iommu_ioas_allow_iovas(size=ctypes.sizeof(B.iommu_ioas_allow_iovas), ioas_id=ioas_alloc(fd),
                                                num_iovas=1, allowed_iovas=ctypes.addressof(r))), keep=[r])


def ioas_map(fd):
    m, va = _buffer()
    return Base(_bytes(B.iommu_ioas_map(size=ctypes.sizeof(B.iommu_ioas_map), flags=RW, ioas_id=ioas_alloc(fd),
                                        user_va=va, length=PAGE)),
                unread={"user_va": "iopt_alloc_user_pages() does not read the VA; pages are pinned only "
                                   "when a domain is filled (no device here)"}, keep=[m])


def ioas_map_file(fd):
    import os

    mfd = os.memfd_create("iommufd-base")
    os.ftruncate(mfd, PAGE)
    return Base(_bytes(B.iommu_ioas_map_file(size=ctypes.sizeof(B.iommu_ioas_map_file), flags=RW,
                                             ioas_id=ioas_alloc(fd), fd=mfd, length=PAGE)), keep=[mfd])


def ioas_copy(fd):
    m, va = _buffer()
    src = ioas_alloc(fd)
    iova = map_(fd, src, va, PAGE)
    return Base(_bytes(B.iommu_ioas_copy(size=ctypes.sizeof(B.iommu_ioas_copy), flags=RW, dst_ioas_id=ioas_alloc(fd),
                                         src_ioas_id=src, length=PAGE, src_iova=iova)), keep=[m])


def ioas_unmap(fd):
    m, va = _buffer()
    ioas = ioas_alloc(fd)
    iova = map_(fd, ioas, va, PAGE)
    return Base(_bytes(B.iommu_ioas_unmap(size=ctypes.sizeof(B.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                          length=PAGE)), keep=[m])


def option(fd):
    return Base(_bytes(B.iommu_option(size=ctypes.sizeof(B.iommu_option), option_id=B.IOMMU_OPTION_HUGE_PAGES,
                                      op=B.IOMMU_OPTION_OP_GET, object_id=ioas_alloc(fd))))


def vfio_ioas(fd):
    return Base(_bytes(B.iommu_vfio_ioas(size=ctypes.sizeof(B.iommu_vfio_ioas), op=B.IOMMU_VFIO_IOAS_SET,
                                         ioas_id=ioas_alloc(fd))))


def change_process(fd):
    return Base(_bytes(B.iommu_ioas_change_process(size=ctypes.sizeof(B.iommu_ioas_change_process))))


def _mock_device(fd, flags: int = 0):
    """(ioas, stdev_id, hwpt_id, idev_id): a mock device attached to a fresh IOAS."""
    ioas = ioas_alloc(fd)
    if flags:
        cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas, **{"mock_domain_flags.dev_flags": flags})
    else:
        cmd = run_test_cmd(fd, B.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)
    return ioas, cmd.mock_domain.out_stdev_id, cmd.mock_domain.out_hwpt_id, cmd.mock_domain.out_idev_id


OPEN_DEVICES: list = []  # VFIO devices a base opened: close_devices() after the case (one open at a time)
UNDO: list = []  # what a base set up that closing the file must not be left to (see _pasid_device())


def close_devices() -> None:
    while UNDO:
        UNDO.pop()()
    while OPEN_DEVICES:
        OPEN_DEVICES.pop().close()


def _device(fd) -> tuple[int, int]:
    """(ioas, dev_id): the target's first VFIO device bound to `fd`, or a mock device attached to a
    fresh IOAS where the target has no VFIO device."""
    from conformance import vfio_device

    target = getattr(fd, "target", None)
    bdfs = []
    if hasattr(B, "vfio_device_bind_iommufd"):
        if target == "kernel":
            bdfs = vfio_device.devices_from_env()
        elif target == "model" and vfio_device.PLAYED_PROFILE:
            from model.profile import load

            bdfs = [d.bdf for d in load(vfio_device.PLAYED_PROFILE).devices]
    if not bdfs:
        ioas, _, _, idev = _mock_device(fd)
        return ioas, idev
    dev = vfio_device.open_device(bdfs[0])
    OPEN_DEVICES.append(dev)
    return ioas_alloc(fd), dev.bind(fd.fileno())


def _hwpt_alloc(fd, idev, pt_id, flags=0) -> int:
    cmd = B.iommu_hwpt_alloc(size=ctypes.sizeof(B.iommu_hwpt_alloc), flags=flags, dev_id=idev, pt_id=pt_id)
    fd.ioctl(B.IOMMU_HWPT_ALLOC, cmd)
    return cmd.out_hwpt_id


def hwpt_alloc(fd):
    ioas, idev = _device(fd)
    return Base(_bytes(B.iommu_hwpt_alloc(size=ctypes.sizeof(B.iommu_hwpt_alloc), dev_id=idev, pt_id=ioas)),
                unread={"fault_id": "read only with IOMMU_HWPT_FAULT_ID_VALID (iommufd_hwpt_alloc())",
                        "data_uptr": "read only by the driver, and only with a data_len"},
                answers={("id_missing", "pt_id"): ("EINVAL", "iommufd_hwpt_alloc(): any pt_id lookup failure "
                                                             "is EINVAL, not the lookup's ENOENT"),
                         ("id_wrong_type", "pt_id"): ("EINVAL", "iommufd_hwpt_alloc(): pt_id is looked up as any "
                                                                "type; one not IOAS, HWPT_PAGING or vIOMMU is EINVAL")})


def get_hw_info(fd):
    _, idev = _device(fd)
    out = (ctypes.c_uint8 * 64)()
    return Base(_bytes(B.iommu_hw_info(size=ctypes.sizeof(B.iommu_hw_info), dev_id=idev, data_len=64,
                                       data_uptr=ctypes.addressof(out))), keep=[out])


def hwpt_set_dirty_tracking(fd):
    ioas, _, _, idev = _mock_device(fd)
    hwpt = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    return Base(_bytes(B.iommu_hwpt_set_dirty_tracking(size=ctypes.sizeof(B.iommu_hwpt_set_dirty_tracking),
                                                       flags=B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE, hwpt_id=hwpt)))


def hwpt_get_dirty_bitmap(fd):
    ioas, _, _, idev = _mock_device(fd)
    hwpt = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    m, va = _buffer()
    iova = map_(fd, ioas, va, 4 * PAGE, iova=1 << 24)
    bitmap = (ctypes.c_uint64 * 1)()
    return Base(_bytes(B.iommu_hwpt_get_dirty_bitmap(size=ctypes.sizeof(B.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt,
                                                     iova=iova, length=4 * PAGE, page_size=PAGE,
                                                     data=ctypes.addressof(bitmap))),
                keep=[m, bitmap])


def hwpt_invalidate(fd):
    if not hasattr(B, "IOMMU_HWPT_ALLOC_PASID"):
        import pytest

        pytest.skip(f"the IOMMU_HWPT_INVALIDATE base follows 7.2; Linux {B.KERNEL_VERSION} answers otherwise "
                    "(not analysed yet)")
    ioas, _, _, idev = _mock_device(fd)
    parent = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    data = (ctypes.c_uint32 * 2)(0xBADBEEF, 0)  # struct iommu_hwpt_selftest: iotlb, pagetable_type
    cmd = B.iommu_hwpt_alloc(size=ctypes.sizeof(B.iommu_hwpt_alloc), dev_id=idev, pt_id=parent,
                             data_type=0xDEAD, data_len=8, data_uptr=ctypes.addressof(data))
    fd.ioctl(B.IOMMU_HWPT_ALLOC, cmd)
    inv = (ctypes.c_uint32 * 2)(0, 1)  # struct iommu_hwpt_invalidate_selftest: flags, iotlb_id
    return Base(_bytes(B.iommu_hwpt_invalidate(size=ctypes.sizeof(B.iommu_hwpt_invalidate), hwpt_id=cmd.out_hwpt_id,
                                               data_uptr=ctypes.addressof(inv), data_type=0xDEADBEEF,
                                               entry_len=8, entry_num=1)), keep=[data, inv],
                answers={("id_wrong_type", "hwpt_id"): ("EINVAL", "iommufd_hwpt_invalidate(): hwpt_id is looked up "
                                                                  "as any type; neither nested HWPT nor vIOMMU is EINVAL")})


def fault_queue_alloc(fd):
    return Base(_bytes(B.iommu_fault_alloc(size=ctypes.sizeof(B.iommu_fault_alloc))))


def _needs_selftest_viommu() -> None:
    if not hasattr(B, "IOMMU_HW_QUEUE_TYPE_SELFTEST"):
        import pytest

        pytest.skip(f"the vIOMMU bases use 7.2's selftest vIOMMU; Linux {B.KERNEL_VERSION}'s mock has no "
                    "vIOMMU type in its uapi")


def _viommu_of_device(fd):
    """(ioas, stdev, idev, viommu_id): a selftest vIOMMU over a NEST_PARENT HWPT of a mock
    device's IOAS."""
    _needs_selftest_viommu()
    ioas, stdev, _, idev = _mock_device(fd)
    parent = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    cmd = B.iommu_viommu_alloc(size=ctypes.sizeof(B.iommu_viommu_alloc), type=B.IOMMU_VIOMMU_TYPE_SELFTEST,
                               dev_id=idev, hwpt_id=parent)
    fd.ioctl(B.IOMMU_VIOMMU_ALLOC, cmd)
    return ioas, stdev, idev, cmd.out_viommu_id


def _viommu(fd):
    """(ioas, idev, viommu_id): _viommu_of_device() without the selftest object."""
    ioas, _, idev, viommu = _viommu_of_device(fd)
    return ioas, idev, viommu


def viommu_alloc(fd):
    _needs_selftest_viommu()
    ioas, _, _, idev = _mock_device(fd)
    parent = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    data = B.iommu_viommu_selftest(in_data=0x5A5A)
    return Base(_bytes(B.iommu_viommu_alloc(size=ctypes.sizeof(B.iommu_viommu_alloc),
                                            type=B.IOMMU_VIOMMU_TYPE_SELFTEST, dev_id=idev, hwpt_id=parent,
                                            data_len=ctypes.sizeof(data), data_uptr=ctypes.addressof(data))),
                keep=[data])


def vdevice_alloc(fd):
    _, idev, viommu = _viommu(fd)
    return Base(_bytes(B.iommu_vdevice_alloc(size=ctypes.sizeof(B.iommu_vdevice_alloc), viommu_id=viommu,
                                             dev_id=idev, virt_id=0x42)))


def veventq_alloc(fd):
    _, _, viommu = _viommu(fd)
    return Base(_bytes(B.iommu_veventq_alloc(size=ctypes.sizeof(B.iommu_veventq_alloc), viommu_id=viommu,
                                             type=B.IOMMU_VEVENTQ_TYPE_SELFTEST, veventq_depth=4)))


def hw_queue_alloc(fd):
    ioas, _, viommu = _viommu(fd)
    m, va = _buffer()
    iova = map_(fd, ioas, va, 4 * PAGE, iova=1 << 24)
    return Base(_bytes(B.iommu_hw_queue_alloc(size=ctypes.sizeof(B.iommu_hw_queue_alloc), viommu_id=viommu,
                                              type=B.IOMMU_HW_QUEUE_TYPE_SELFTEST, index=0,
                                              nesting_parent_iova=iova, length=PAGE)), keep=[m])


# -- IOMMU_TEST_CMD: its fields are a union chosen by op, so it has one valid command per union
# member the generated cases name (the member's name, or "" for the header fields id and size).

def _test_cmd(op: int, id: int, **fields) -> bytearray:
    from model.uapi import set_fields

    return _bytes(set_fields(B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=op, id=id), **fields))


_NOT_AN_OBJECT = "an index into the mock's array, not an object ID: past its end is EINVAL"


def cmd_mock_domain(fd):
    return Base(_test_cmd(B.IOMMU_TEST_OP_MOCK_DOMAIN, ioas_alloc(fd)))


def cmd_mock_domain_replace(fd):
    _, stdev, _, _ = _mock_device(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, **{"mock_domain_replace.pt_id": ioas_alloc(fd)}))


def _access(fd, npages: int = 4):
    """(ioas, access fd, buffer, va, iova): an access on an IOAS with `npages` of a buffer mapped."""
    from conformance.tests.helpers import create_access

    m, va = _buffer(npages)
    ioas = ioas_alloc(fd)
    iova = map_(fd, ioas, va, npages * PAGE)
    return ioas, create_access(fd, ioas, B.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES), m, va, iova


def cmd_destroy_access_pages(fd):
    from conformance.tests.helpers import access_pages

    _, access, m, _, iova = _access(fd)
    item = access_pages(fd, access, iova, PAGE)
    return Base(_test_cmd(B.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, access,
                          **{"destroy_access_pages.access_pages_id": item}), keep=[m])


def cmd_access_replace_ioas(fd):
    _, access, m, _, _ = _access(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, access, **{"access_replace_ioas.ioas_id": ioas_alloc(fd)}),
                keep=[m])


def cmd_access_pages(fd):
    _, access, m, va, iova = _access(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_ACCESS_PAGES, access, **{"access_pages.iova": iova,
                                                                  "access_pages.length": PAGE,
                                                                  "access_pages.uptr": va}), keep=[m])


def cmd_access_rw(fd):
    _, access, m, va, iova = _access(fd)
    out, out_va = _buffer(1)
    return Base(_test_cmd(B.IOMMU_TEST_OP_ACCESS_RW, access, **{"access_rw.iova": iova, "access_rw.length": 64,
                                                               "access_rw.uptr": out_va}), keep=[m, out])


def _mapped_mock_domain(fd):
    """(hwpt, buffer, va, iova): a mock domain with 4 pages of a buffer mapped through its IOAS."""
    ioas, _, hwpt, _ = _mock_device(fd)
    m, va = _buffer()
    return hwpt, m, va, map_(fd, ioas, va, 4 * PAGE)


def cmd_check_map(fd):
    hwpt, m, va, iova = _mapped_mock_domain(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, **{"check_map.iova": iova, "check_map.length": PAGE,
                                                                "check_map.uptr": va}), keep=[m])


def cmd_check_refs(fd):
    _, m, va, _ = _mapped_mock_domain(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_MD_CHECK_REFS, 0, **{"check_refs.uptr": va, "check_refs.length": PAGE,
                                                              "check_refs.refs": 1}), keep=[m])


def cmd_dirty(fd):
    ioas, _, _, idev = _mock_device(fd)
    hwpt = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    fd.ioctl(B.IOMMU_HWPT_SET_DIRTY_TRACKING, B.iommu_hwpt_set_dirty_tracking(
        size=ctypes.sizeof(B.iommu_hwpt_set_dirty_tracking), flags=B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE, hwpt_id=hwpt))
    m, va = _buffer()
    iova = map_(fd, ioas, va, 4 * PAGE, iova=1 << 24)
    bitmap = (ctypes.c_uint64 * 1)(0b1)
    return Base(_test_cmd(B.IOMMU_TEST_OP_DIRTY, hwpt, **{"dirty.iova": iova, "dirty.length": 4 * PAGE,
                                                         "dirty.page_size": PAGE,
                                                         "dirty.uptr": ctypes.addressof(bitmap)}), keep=[m, bitmap])


def _nested(fd):
    """(idev, nested hwpt): a selftest nested HWPT (all IOTLB entries 0xBADBEEF) over a NEST_PARENT."""
    ioas, _, _, idev = _mock_device(fd)
    parent = _hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    data = B.iommu_hwpt_selftest(iotlb=0xBADBEEF)  # 7.2 adds pagetable_type: the version's own size
    cmd = B.iommu_hwpt_alloc(size=ctypes.sizeof(B.iommu_hwpt_alloc), dev_id=idev, pt_id=parent,
                             data_type=B.IOMMU_HWPT_DATA_SELFTEST, data_len=ctypes.sizeof(data),
                             data_uptr=ctypes.addressof(data))
    fd.ioctl(B.IOMMU_HWPT_ALLOC, cmd)
    return idev, cmd.out_hwpt_id


def cmd_check_iotlb(fd):
    _, nested = _nested(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_MD_CHECK_IOTLB, nested, **{"check_iotlb.id": 0,
                                                                    "check_iotlb.iotlb": 0xBADBEEF}),
                answers={("id_missing", "check_iotlb.id"): ("EINVAL", "iommufd_test_md_check_iotlb(): " + _NOT_AN_OBJECT)})


def cmd_check_dev_cache(fd):
    _, _, _, idev = _mock_device(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_DEV_CHECK_CACHE, idev, **{"check_dev_cache.id": 0,
                                                                   "check_dev_cache.cache": B.IOMMU_TEST_DEV_CACHE_DEFAULT}),
                answers={("id_missing", "check_dev_cache.id"): ("EINVAL", "iommufd_test_dev_check_cache(): "
                                                                          + _NOT_AN_OBJECT)})


def cmd_trigger_iopf(fd):
    _, _, _, idev = _mock_device(fd)
    return Base(_test_cmd(B.IOMMU_TEST_OP_TRIGGER_IOPF, 0, **{"trigger_iopf.dev_id": idev, "trigger_iopf.addr": PAGE}))


def cmd_trigger_vevent(fd):
    """A vDEVICE's device attached to a nested HWPT of its vIOMMU, with a SELFTEST vEVENTQ: the
    mock reports an event only then (mock_domain_nop_attach() records the vIOMMU and virt_id)."""
    _, stdev, idev, viommu = _viommu_of_device(fd)
    fd.ioctl(B.IOMMU_VDEVICE_ALLOC, B.iommu_vdevice_alloc(size=ctypes.sizeof(B.iommu_vdevice_alloc),
                                                          viommu_id=viommu, dev_id=idev, virt_id=0x42))
    data = B.iommu_hwpt_selftest(iotlb=0xBADBEEF)
    nested = B.iommu_hwpt_alloc(size=ctypes.sizeof(B.iommu_hwpt_alloc), dev_id=idev, pt_id=viommu,
                                data_type=B.IOMMU_HWPT_DATA_SELFTEST, data_len=ctypes.sizeof(data),
                                data_uptr=ctypes.addressof(data))
    fd.ioctl(B.IOMMU_HWPT_ALLOC, nested)
    fd.ioctl(B.IOMMU_TEST_CMD, _test_cmd(B.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev,
                                         **{"mock_domain_replace.pt_id": nested.out_hwpt_id}))
    q = B.iommu_veventq_alloc(size=ctypes.sizeof(B.iommu_veventq_alloc), viommu_id=viommu,
                              type=B.IOMMU_VEVENTQ_TYPE_SELFTEST, veventq_depth=4)
    fd.ioctl(B.IOMMU_VEVENTQ_ALLOC, q)
    return Base(_test_cmd(B.IOMMU_TEST_OP_TRIGGER_VEVENT, 0, **{"trigger_vevent.dev_id": idev}), keep=[q])


PASID = 100  # not 1024: the mock fails every second set of PASID 1024 (mock_domain_set_dev_pasid_nop())


def _pasid_device(fd):
    """(stdev, hwpt, hwpt2): a PASID-capable mock device whose RID is attached to a PASID-compatible
    HWPT (a PASID attach is EINVAL otherwise: iommufd_hwpt_pasid_compat()), and two such HWPTs."""
    ioas, stdev, _, idev = _mock_device(fd, B.MOCK_FLAGS_DEVICE_PASID)
    hwpt, hwpt2 = (_hwpt_alloc(fd, idev, ioas, B.IOMMU_HWPT_ALLOC_PASID) for _ in range(2))
    fd.ioctl(B.IOMMU_TEST_CMD, _test_cmd(B.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev,
                                         **{"mock_domain_replace.pt_id": hwpt}))
    # The mock's destroy detaches only the RID (selftest.c iommufd_selftest_destroy()): a PASID
    # left attached at close makes the kernel WARN and leak the device, so detach it first.
    UNDO.append(lambda: fd.ioctl(B.IOMMU_TEST_CMD, _test_cmd(B.IOMMU_TEST_OP_PASID_DETACH, stdev,
                                                             **{"pasid_detach.pasid": PASID})))
    return stdev, hwpt, hwpt2


def _pasid_cmd(op: int, member: str, stdev: int, pt_field: str, pt: int) -> bytearray:
    return _test_cmd(op, stdev, **{f"{member}.pasid": PASID, f"{member}.{pt_field}": pt})


def cmd_pasid_attach(fd):
    stdev, hwpt, _ = _pasid_device(fd)
    return Base(_pasid_cmd(B.IOMMU_TEST_OP_PASID_ATTACH, "pasid_attach", stdev, "pt_id", hwpt))


def _pasid_attached(fd):
    stdev, hwpt, hwpt2 = _pasid_device(fd)
    fd.ioctl(B.IOMMU_TEST_CMD, _pasid_cmd(B.IOMMU_TEST_OP_PASID_ATTACH, "pasid_attach", stdev, "pt_id", hwpt))
    return stdev, hwpt, hwpt2


def cmd_pasid_replace(fd):
    stdev, _, hwpt2 = _pasid_attached(fd)
    return Base(_pasid_cmd(B.IOMMU_TEST_OP_PASID_REPLACE, "pasid_replace", stdev, "pt_id", hwpt2))


def cmd_pasid_check(fd):
    stdev, hwpt, _ = _pasid_attached(fd)
    return Base(_pasid_cmd(B.IOMMU_TEST_OP_PASID_CHECK_HWPT, "pasid_check", stdev, "hwpt_id", hwpt),
                answers={("id_wrong_type", "pasid_check.hwpt_id"): (
                    "EINVAL", "iommufd_test_pasid_check_hwpt(): iommufd_get_hwpt() looks the ID up as any type "
                              "and answers EINVAL for one that is not a HWPT")})


# union member -> its valid command; "" serves the header's own fields (id, size)
TEST_CMD_BASES = {
    "": cmd_mock_domain,
    "mock_domain_replace": cmd_mock_domain_replace,
    "destroy_access_pages": cmd_destroy_access_pages,
    "access_replace_ioas": cmd_access_replace_ioas,
    "access_pages": cmd_access_pages,
    "access_rw": cmd_access_rw,
    "check_map": cmd_check_map,
    "check_refs": cmd_check_refs,
    "dirty": cmd_dirty,
    "check_iotlb": cmd_check_iotlb,
    "check_dev_cache": cmd_check_dev_cache,
    "trigger_iopf": cmd_trigger_iopf,
    "trigger_vevent": cmd_trigger_vevent,
    "pasid_attach": cmd_pasid_attach,
    "pasid_replace": cmd_pasid_replace,
    "pasid_check": cmd_pasid_check,
}


def iommu_test_cmd(fd, field: str):
    """The valid IOMMU_TEST_CMD for a generated case on `field` (`member.name` or a header field)."""
    return TEST_CMD_BASES[field.split(".")[0] if "." in field else ""](fd)


BASES = {
    "IOMMU_DESTROY": destroy,
    "IOMMU_IOAS_ALLOC": ioas_alloc_,
    "IOMMU_IOAS_IOVA_RANGES": iova_ranges,
    "IOMMU_IOAS_ALLOW_IOVAS": allow_iovas,
    "IOMMU_IOAS_MAP": ioas_map,
    "IOMMU_IOAS_MAP_FILE": ioas_map_file,
    "IOMMU_IOAS_COPY": ioas_copy,
    "IOMMU_IOAS_UNMAP": ioas_unmap,
    "IOMMU_OPTION": option,
    "IOMMU_VFIO_IOAS": vfio_ioas,
    "IOMMU_IOAS_CHANGE_PROCESS": change_process,
    "IOMMU_HWPT_ALLOC": hwpt_alloc,
    "IOMMU_GET_HW_INFO": get_hw_info,
    "IOMMU_HWPT_SET_DIRTY_TRACKING": hwpt_set_dirty_tracking,
    "IOMMU_HWPT_GET_DIRTY_BITMAP": hwpt_get_dirty_bitmap,
    "IOMMU_HWPT_INVALIDATE": hwpt_invalidate,
    "IOMMU_FAULT_QUEUE_ALLOC": fault_queue_alloc,
    "IOMMU_VIOMMU_ALLOC": viommu_alloc,
    "IOMMU_VDEVICE_ALLOC": vdevice_alloc,
    "IOMMU_VEVENTQ_ALLOC": veventq_alloc,
    "IOMMU_HW_QUEUE_ALLOC": hw_queue_alloc,
}
