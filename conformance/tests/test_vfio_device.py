"""A real PCI device through VFIO's device cdev and iommufd, on whatever IOMMU the target has:
bind, attach / replace / detach, GET_HW_INFO, the IOVA ranges the unit narrows, HWPT_ALLOC on a
real driver, the VFIO type1 compat path, and DMA that must (and must not) reach memory.

The devices come from --vfio-device, the VM profile (vm:vtd, vm:amd: QEMU's edu devices
behind intel-iommu or amd-iommu) or the machine the model plays (model:vtd, model:amd: the same
machines as captured, model/profiles/); nothing here needs CONFIG_IOMMUFD_TEST, so the same tests
run on a distribution kernel on a real machine. What sysfs says (group, IDs, reserved regions,
the unit's registers) is asked of the device object, which answers from the model's machine there. The DMA tests drive QEMU's edu DMA engine
(conformance/vfio_device.Edu) and skip on another device. Expected errnos cite the kernel
function they come from (Linux 7.2).
"""
from __future__ import annotations

import ctypes
import errno
import os

import pytest

from conformance.tests.helpers import B, PAGE, R, Buf, destroy, err, hw_info, hwpt_alloc, ioas_alloc, iova_ranges, \
    map_, map_file, require, sz, unmap
from conformance.vfio_device import Edu

require("VFIO_DEVICE_BIND_IOMMUFD", "vfio_device_bind_iommufd")

MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)  # x86's interrupt address range (IOMMU_RESV_MSI)
IOVA = 0x100000  # below edu's 28-bit dma_mask


def _bound(iommufd, dev) -> int:
    return dev.bind(iommufd.fileno())


def _edu(dev) -> Edu:
    """The bound device's edu (its regions answer only once it is bound)."""
    if dev.pci_id() != (Edu.VENDOR, Edu.DEVICE):
        pytest.skip(f"{dev.bdf} is {dev.pci_id()[0]:04x}:{dev.pci_id()[1]:04x}, not QEMU's edu: the DMA tests "
                    "drive edu's DMA engine")
    edu = Edu(dev)
    assert edu.alive(), f"{dev.bdf}: edu's ID and liveness registers do not answer through the BAR0 mapping"
    return edu


# VFIO_DEVICE_BIND_IOMMUFD: vfio_df_ioctl_bind_iommufd() (device_cdev.c)

def test_bind_answers_a_device_id_once(iommufd, open_iommufd, vfio_device):
    # before the bind every other ioctl is refused (vfio_device_fops_unl_ioctl(): !access_granted)
    info = B.vfio_region_info(argsz=sz(B.vfio_region_info), index=0)
    assert err(vfio_device.ioctl, B.VFIO_DEVICE_GET_REGION_INFO, info) == errno.EINVAL
    dev_id = _bound(iommufd, vfio_device)
    assert dev_id != 0
    # the ID names a device object: GET_HW_INFO takes it, DESTROY does not (it is not user-destroyable)
    hw_info(iommufd, dev_id, 64)
    assert err(destroy, iommufd, dev_id) == errno.EBUSY
    # one device cannot be bound twice, to this context or another
    assert err(_bound, iommufd, vfio_device) == errno.EINVAL
    other = open_iommufd()
    cmd = B.vfio_device_bind_iommufd(argsz=sz(B.vfio_device_bind_iommufd), iommufd=other.fileno())
    assert err(vfio_device.ioctl, B.VFIO_DEVICE_BIND_IOMMUFD, cmd) == errno.EINVAL
    vfio_device.region(B.VFIO_PCI_CONFIG_REGION_INDEX)  # and now the device answers


def test_bind_refuses_bad_arguments_and_stays_unbound(iommufd, vfio_device):
    def bind(fd, flags=0, argsz=sz(B.vfio_device_bind_iommufd)):
        cmd = B.vfio_device_bind_iommufd(argsz=argsz, flags=flags, iommufd=fd)
        vfio_device.ioctl(B.VFIO_DEVICE_BIND_IOMMUFD, cmd)
        return cmd.out_devid

    memfd = os.memfd_create("not-iommufd")
    closed = os.dup(memfd)
    os.close(closed)  # a number nothing has open
    try:
        assert err(bind, -1) == errno.EINVAL  # bind.iommufd < 0
        assert err(bind, iommufd.fileno(), flags=0x80) == errno.EINVAL  # bind.flags & ~VALID_FLAGS
        assert err(bind, iommufd.fileno(), argsz=8) == errno.EINVAL  # argsz < offsetofend(out_devid)
        assert err(bind, closed) == errno.EBADF  # iommufd_ctx_from_fd(): fget() fails
        assert err(bind, memfd) == errno.EBADFD  # iommufd_ctx_from_fd(): not an iommufd
    finally:
        os.close(memfd)
    assert bind(iommufd.fileno()) != 0  # none of them bound it


def test_closing_the_device_unbinds_it(iommufd, vfio_device):
    dev_id = _bound(iommufd, vfio_device)
    ioas = ioas_alloc(iommufd)
    vfio_device.attach(ioas)
    assert err(destroy, iommufd, ioas) == errno.EBUSY  # the attached device holds it
    vfio_device.close()
    # vfio_df_unbind_iommufd() on close: detached and unbound, the IOAS is free and the ID gone
    destroy(iommufd, ioas)
    assert err(hw_info, iommufd, dev_id, 64) == errno.ENOENT
    with vfio_device.reopen() as dev:  # and the device binds again
        assert _bound(iommufd, dev) != 0


def test_closing_the_iommufd_first(open_iommufd, vfio_device):
    fd = open_iommufd()
    _bound(fd, vfio_device)
    vfio_device.attach(ioas_alloc(fd))
    fd.close()  # the bound device keeps the context (iommufd_ctx_from_fd() took a file reference)
    vfio_device.region(0)  # the device still answers; its close releases both (fixture)


# GET_HW_INFO for a real unit: iommufd_get_hw_info() calls the driver's hw_info()

def test_get_hw_info_describes_the_unit(iommufd, vfio_device):
    dev_id = _bound(iommufd, vfio_device)
    cmd, data = hw_info(iommufd, dev_id, 64)
    kinds = {getattr(B, f"IOMMU_HW_INFO_TYPE_{k}") for k in ("NONE", "INTEL_VTD", "ARM_SMMUV3", "AMD")
             if hasattr(B, f"IOMMU_HW_INFO_TYPE_{k}")}  # the types this uapi version has
    assert cmd.out_data_type in kinds
    if cmd.out_data_type == B.IOMMU_HW_INFO_TYPE_INTEL_VTD:
        # intel_iommu_hw_info(): the unit's own CAP and ECAP registers, as sysfs shows them
        assert cmd.data_len == sz(B.iommu_hw_info_vtd)
        vtd = B.iommu_hw_info_vtd.from_buffer_copy(data)
        regs = {(u["cap"], u["ecap"]) for u in vfio_device.unit_registers() if "ecap" in u}
        assert (vtd.cap_reg, vtd.ecap_reg) in regs, f"cap {vtd.cap_reg:#x} ecap {vtd.ecap_reg:#x} not in {regs}"
    elif cmd.out_data_type == getattr(B, "IOMMU_HW_INFO_TYPE_AMD", None):
        assert cmd.data_len == sz(B.iommu_hw_info_amd)
        assert B.iommu_hw_info_amd.from_buffer_copy(data).efr != 0
    # the rest of the buffer is cleared (clear_user() past data_len)
    assert data[cmd.data_len:] == bytes(len(data) - cmd.data_len)


# VFIO_DEVICE_ATTACH_IOMMUFD_PT / DETACH and the IOVA ranges the unit narrows

def test_attach_to_an_ioas_narrows_its_ranges_to_the_unit(iommufd, vfio_device):
    ioas = ioas_alloc(iommufd)
    before, _ = iova_ranges(iommufd, ioas)
    assert before == [(0, 2**64 - 1)]
    _bound(iommufd, vfio_device)
    hwpt = vfio_device.attach(ioas)
    assert hwpt not in (0, ioas)  # the automatic HWPT's ID is written back
    ranges, align = iova_ranges(iommufd, ioas)
    assert align == PAGE
    # iopt_table_enforce_dev_resv_regions(): every reserved region of the group but
    # direct-relaxable ones is taken out; the aperture ends at a power of two
    resv = [(s, e) for s, e, kind in vfio_device.reserved_regions() if kind != "direct-relaxable"]
    assert any(s <= MSI_WINDOW[0] and MSI_WINDOW[1] <= e for s, e in resv), resv
    end = ranges[-1][1]
    # (QEMU 7.2's amd-iommu and intel-iommu stop below 2^64; QEMU 10's amd-iommu spans all 64 bits)
    assert (end + 1) % 2**64 & end == 0 and end >= 2**32, hex(end)
    want, at = [], 0
    for s, e in sorted(resv):
        if s > end:
            break
        if s > at:
            want.append((at, s - 1))
        at = max(at, e + 1)
    if at <= end:
        want.append((at, end))
    assert ranges == want
    # detach: the automatic HWPT goes with the attachment, the IOAS is whole again
    vfio_device.detach()
    assert err(destroy, iommufd, hwpt) == errno.ENOENT
    assert iova_ranges(iommufd, ioas)[0] == [(0, 2**64 - 1)]


def test_an_attached_ioas_and_its_hwpt_are_busy(iommufd, vfio_device):
    _bound(iommufd, vfio_device)
    ioas = ioas_alloc(iommufd)
    hwpt = vfio_device.attach(ioas)
    assert err(destroy, iommufd, ioas) == errno.EBUSY
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
    vfio_device.detach()
    destroy(iommufd, ioas)


def test_attach_refuses_bad_arguments(iommufd, vfio_device):
    _bound(iommufd, vfio_device)
    ioas = ioas_alloc(iommufd)
    cmd = B.vfio_device_attach_iommufd_pt(argsz=sz(B.vfio_device_attach_iommufd_pt), flags=0x80, pt_id=ioas)
    assert err(vfio_device.ioctl, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd) == errno.EINVAL  # unknown flag
    cmd = B.vfio_device_attach_iommufd_pt(argsz=8, pt_id=ioas)
    assert err(vfio_device.ioctl, B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd) == errno.EINVAL  # argsz < minsz
    assert err(vfio_device.attach, 0xFFFF) == errno.ENOENT  # no such object
    other = ioas_alloc(iommufd)  # a destroyed IOAS's ID
    destroy(iommufd, other)
    assert err(vfio_device.attach, other) == errno.ENOENT
    assert vfio_device.attach(ioas) != 0  # nothing above attached it


def test_hwpt_alloc_replace_and_detach(iommufd, vfio_device):
    dev_id = _bound(iommufd, vfio_device)
    ioas = ioas_alloc(iommufd)
    hwpt1 = hwpt_alloc(iommufd, dev_id, ioas)
    hwpt2 = hwpt_alloc(iommufd, dev_id, ioas)
    assert len({hwpt1, hwpt2, ioas, dev_id}) == 4
    assert vfio_device.attach(hwpt1) == hwpt1
    # a second attach replaces (vfio_iommufd_physical_attach_ioas(): iommufd_device_replace())
    assert vfio_device.attach(hwpt2) == hwpt2
    destroy(iommufd, hwpt1)  # no longer in use
    assert err(destroy, iommufd, hwpt2) == errno.EBUSY
    auto = vfio_device.attach(ioas)  # replace with the automatic domain
    assert auto not in (hwpt2, ioas)
    destroy(iommufd, hwpt2)
    vfio_device.detach()
    destroy(iommufd, ioas)


def test_hwpt_alloc_flags_follow_the_unit(iommufd, vfio_device):
    """NEST_PARENT and DIRTY_TRACKING succeed where the unit has the feature and are refused with
    EOPNOTSUPP where it does not (the driver's domain_alloc_paging_flags())."""
    dev_id = _bound(iommufd, vfio_device)
    ioas = ioas_alloc(iommufd)
    cmd, data = hw_info(iommufd, dev_id, 64)
    dirty = bool(cmd.out_capabilities & B.IOMMU_HW_CAP_DIRTY_TRACKING)
    e = err(hwpt_alloc, iommufd, dev_id, ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    assert e == (0 if dirty else errno.EOPNOTSUPP)
    if cmd.out_data_type == B.IOMMU_HW_INFO_TYPE_INTEL_VTD:
        # intel_iommu_domain_alloc_paging_flags(): a nest parent needs ECAP.NEST (bit 26)
        nest = bool(B.iommu_hw_info_vtd.from_buffer_copy(data).ecap_reg >> 26 & 1)
        assert err(hwpt_alloc, iommufd, dev_id, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT) == \
            (0 if nest else errno.EOPNOTSUPP)
    assert err(hwpt_alloc, iommufd, dev_id, ioas, 1 << 31) == errno.EOPNOTSUPP  # an unknown flag
    assert hwpt_alloc(iommufd, dev_id, ioas) != 0


def test_what_the_driver_does_not_offer_is_eopnotsupp(iommufd, vfio_device):
    """Dirty tracking on a HWPT allocated without it (no domain->dirty_ops: iopt_set_dirty_tracking(),
    iopt_read_and_clear_dirty_data()), and a vIOMMU of a type the unit's driver does not implement
    (iommufd_viommu_alloc_ioctl(): no viommu_init, or a size of 0 for that type)."""
    dev_id = _bound(iommufd, vfio_device)
    ioas = ioas_alloc(iommufd)
    hwpt = hwpt_alloc(iommufd, dev_id, ioas)
    dirty = B.iommu_hwpt_set_dirty_tracking(size=sz(B.iommu_hwpt_set_dirty_tracking), hwpt_id=hwpt,
                                            flags=B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    assert err(iommufd.ioctl, B.IOMMU_HWPT_SET_DIRTY_TRACKING, dirty) == errno.EOPNOTSUPP
    bitmap = (ctypes.c_uint64 * 1)()
    get = B.iommu_hwpt_get_dirty_bitmap(size=sz(B.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt, iova=0,
                                        length=64 * PAGE, page_size=PAGE, data=ctypes.addressof(bitmap))
    assert err(iommufd.ioctl, B.IOMMU_HWPT_GET_DIRTY_BITMAP, get) == errno.EOPNOTSUPP
    cmd, _ = hw_info(iommufd, dev_id, 64)
    if cmd.out_data_type == getattr(B, "IOMMU_HW_INFO_TYPE_ARM_SMMUV3", None) or not hasattr(B, "iommu_viommu_alloc"):
        return  # an SMMUv3 implements the SMMUV3 vIOMMU type; 6.12's uapi has no vIOMMU
    v = B.iommu_viommu_alloc(size=sz(B.iommu_viommu_alloc), type=B.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, dev_id=dev_id,
                             hwpt_id=hwpt)
    assert err(iommufd.ioctl, B.IOMMU_VIOMMU_ALLOC, v) == errno.EOPNOTSUPP


def test_pasid_attach_without_a_pasid_capable_device(iommufd, vfio_device):
    require("VFIO_DEVICE_ATTACH_PASID")
    dev_id = _bound(iommufd, vfio_device)
    cmd, _ = hw_info(iommufd, dev_id, 64)
    if cmd.out_max_pasid_log2:
        pytest.skip(f"{vfio_device.bdf} has PASIDs (max_pasid_log2 {cmd.out_max_pasid_log2}): this test is about one "
                    "without")
    ioas = ioas_alloc(iommufd)
    # iommufd_hwpt_pasid_compat() / iommu_attach_device_pasid(): the automatic domain is not
    # PASID-compatible, the device has no PASIDs
    assert err(vfio_device.attach, ioas, 1) in (errno.EINVAL, errno.EOPNOTSUPP)
    assert vfio_device.attach(ioas) != 0  # the RID attach is untouched


# DMA through the IOMMU: QEMU's edu DMA engine

def _reported(faults: list[str] | None, iova: int) -> None:
    """The IOMMU's report of the DMA it blocked names the address (intel-iommu: "fault addr",
    amd_iommu: "address="); None: this machine cannot be expected to report (blocked_dma)."""
    if faults is not None:
        assert any(f"{iova:x}" in f for f in faults), f"no IOMMU fault report for {iova:#x}: {faults}"


def _fill(buf, seed: int) -> bytes:
    data = bytes((seed * 7 + i * 13) & 0xFF for i in range(buf.len))
    buf.m[:buf.len] = data
    return data


def test_dma_reaches_the_mapped_pages(iommufd, vfio_device):
    _bound(iommufd, vfio_device)
    edu = _edu(vfio_device)
    ioas = ioas_alloc(iommufd)
    vfio_device.attach(ioas)
    buf = Buf(2)
    data = _fill(buf, 1)
    buf.m[PAGE:2 * PAGE] = bytes(PAGE)
    map_(iommufd, ioas, buf.addr, buf.len, iova=IOVA)
    n = 3000
    edu.read_iova(IOVA + 100, n)  # the first page's bytes into the device
    edu.write_iova(IOVA + PAGE, n)  # and back out to the second page
    assert buf.m[PAGE:PAGE + n] == data[100:100 + n]
    assert buf.m[PAGE + n:2 * PAGE] == bytes(PAGE - n)  # not a byte more


def test_dma_after_unmap_does_not_reach_the_old_pages(iommufd, vfio_device, blocked_dma):
    _bound(iommufd, vfio_device)
    edu = _edu(vfio_device)
    ioas = ioas_alloc(iommufd)
    vfio_device.attach(ioas)
    src, dst = Buf(1), Buf(1)
    data = _fill(src, 2)
    dst.m[:PAGE] = b"\x5a" * PAGE
    map_(iommufd, ioas, src.addr, PAGE, iova=IOVA)
    map_(iommufd, ioas, dst.addr, PAGE, iova=IOVA + 16 * PAGE)
    edu.read_iova(IOVA, 256)
    assert unmap(iommufd, ioas, IOVA + 16 * PAGE, PAGE) == PAGE
    faults = blocked_dma(edu.write_iova, IOVA + 16 * PAGE, 256)
    assert dst.m[:PAGE] == b"\x5a" * PAGE
    assert data[:256] != b"\x5a" * 256
    _reported(faults, IOVA + 16 * PAGE)


def test_a_read_only_mapping_is_not_written(iommufd, vfio_device, blocked_dma):
    _bound(iommufd, vfio_device)
    edu = _edu(vfio_device)
    ioas = ioas_alloc(iommufd)
    vfio_device.attach(ioas)
    src, ro, out = Buf(1), Buf(1), Buf(1)
    _fill(src, 3)
    ro.m[:PAGE] = b"\xa5" * PAGE
    map_(iommufd, ioas, src.addr, PAGE, iova=IOVA)
    map_(iommufd, ioas, ro.addr, PAGE, iova=IOVA + PAGE, flags=R)
    map_(iommufd, ioas, out.addr, PAGE, iova=IOVA + 2 * PAGE)
    edu.read_iova(IOVA, 512)
    # The write comes first: QEMU's VT-d reports a permission fault only when it walks the table,
    # not when the IOVA hits its IOTLB (after a read) with too few rights; it blocks both.
    faults = blocked_dma(edu.write_iova, IOVA + PAGE, 512)
    assert ro.m[:PAGE] == b"\xa5" * PAGE
    _reported(faults, IOVA + PAGE)
    edu.read_iova(IOVA + PAGE, 64, buf_off=1024)  # reading it is allowed
    edu.write_iova(IOVA + 2 * PAGE, 64, buf_off=1024)
    assert out.m[:64] == b"\xa5" * 64


def test_two_devices_in_two_ioases_do_not_see_each_other(iommufd, vfio_device, vfio_device2, blocked_dma):
    assert vfio_device.iommu_group() != vfio_device2.iommu_group()
    _bound(iommufd, vfio_device)
    _bound(iommufd, vfio_device2)
    a, b = _edu(vfio_device), _edu(vfio_device2)
    ioas_a, ioas_b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    vfio_device.attach(ioas_a)
    vfio_device2.attach(ioas_b)
    buf_a, buf_b, src = Buf(1), Buf(1), Buf(1)
    buf_a.m[:PAGE] = b"\x11" * PAGE
    buf_b.m[:PAGE] = b"\x22" * PAGE
    data = _fill(src, 4)
    map_(iommufd, ioas_a, buf_a.addr, PAGE, iova=IOVA)  # the same IOVA in both
    map_(iommufd, ioas_b, buf_b.addr, PAGE, iova=IOVA)
    map_(iommufd, ioas_b, src.addr, PAGE, iova=IOVA + PAGE)  # only B sees src
    b.read_iova(IOVA + PAGE, 1000)
    b.write_iova(IOVA, 1000)
    assert buf_b.m[:1000] == data[:1000] and buf_a.m[:PAGE] == b"\x11" * PAGE
    # A reaching for B's page finds nothing there
    faults = blocked_dma(a.read_iova, IOVA + PAGE, 1000)
    a.write_iova(IOVA, 1000)
    assert buf_a.m[:1000] != data[:1000]
    _reported(faults, IOVA + PAGE)


def test_map_file_pages_carry_dma(iommufd, vfio_device):
    require("iommu_ioas_map_file")
    _bound(iommufd, vfio_device)
    edu = _edu(vfio_device)
    ioas = ioas_alloc(iommufd)
    vfio_device.attach(ioas)
    mfd = os.memfd_create("dma")
    try:
        os.ftruncate(mfd, 2 * PAGE)
        data = bytes((i * 31 + 5) & 0xFF for i in range(PAGE))
        os.pwrite(mfd, data, 0)
        map_file(iommufd, ioas, mfd, 0, 2 * PAGE, iova=IOVA)
        edu.read_iova(IOVA + 8, 2048)
        edu.write_iova(IOVA + PAGE, 2048)
        assert os.pread(mfd, 2048, PAGE) == data[8:8 + 2048]
    finally:
        os.close(mfd)


def test_dma_follows_a_replace(iommufd, vfio_device):
    """Replacing the attached HWPT switches the device's translation at once."""
    dev_id = _bound(iommufd, vfio_device)
    edu = _edu(vfio_device)
    ioas1, ioas2 = ioas_alloc(iommufd), ioas_alloc(iommufd)
    one, two = Buf(1), Buf(1)
    one.m[:PAGE] = b"\x01" * PAGE
    two.m[:PAGE] = b"\x02" * PAGE
    map_(iommufd, ioas1, one.addr, PAGE, iova=IOVA)
    map_(iommufd, ioas2, two.addr, PAGE, iova=IOVA)
    vfio_device.attach(hwpt_alloc(iommufd, dev_id, ioas1))
    edu.read_iova(IOVA, 16)
    vfio_device.attach(hwpt_alloc(iommufd, dev_id, ioas2))
    edu.read_iova(IOVA, 16, buf_off=16)
    vfio_device.attach(ioas1)
    edu.write_iova(IOVA + 100, 32)
    assert one.m[100:132] == b"\x01" * 16 + b"\x02" * 16


# The VFIO type1 compat path (vfio_compat.c) with a real device behind the compat IOAS

def test_type1_compat_with_a_device(iommufd, vfio_device):
    _bound(iommufd, vfio_device)
    edu = _edu(vfio_device)
    # a VMM on the cdev path names the compat IOAS itself (a group's container would create it)
    compat = ioas_alloc(iommufd)
    iommufd.ioctl(B.IOMMU_VFIO_IOAS, B.iommu_vfio_ioas(size=sz(B.iommu_vfio_ioas), op=B.IOMMU_VFIO_IOAS_SET,
                                                       ioas_id=compat))
    iommufd.ioctl(B.VFIO_SET_IOMMU, B.VFIO_TYPE1v2_IOMMU)
    info = B.vfio_iommu_type1_info(argsz=sz(B.vfio_iommu_type1_info))
    iommufd.ioctl(B.VFIO_IOMMU_GET_INFO, info)
    assert info.iova_pgsizes == (-PAGE) & 0xFFFFFFFFFFFFFFFF  # no domain yet: every size from PAGE_SIZE up
    vfio_device.attach(compat)
    # iommufd_get_pagesizes(): now the unit's page sizes (the domain's pgsize_bitmap)
    info = B.vfio_iommu_type1_info(argsz=sz(B.vfio_iommu_type1_info))
    iommufd.ioctl(B.VFIO_IOMMU_GET_INFO, info)
    assert info.iova_pgsizes & PAGE and info.iova_pgsizes != (-PAGE) & 0xFFFFFFFFFFFFFFFF, hex(info.iova_pgsizes)
    assert info.iova_pgsizes & (PAGE - 1) == 0
    buf = Buf(1)
    data = _fill(buf, 5)
    dma = B.vfio_iommu_type1_dma_map(argsz=sz(B.vfio_iommu_type1_dma_map),
                                     flags=B.VFIO_DMA_MAP_FLAG_READ | B.VFIO_DMA_MAP_FLAG_WRITE,
                                     vaddr=buf.addr, iova=IOVA, size=PAGE)
    iommufd.ioctl(B.VFIO_IOMMU_MAP_DMA, dma)
    edu.read_iova(IOVA, 200)
    edu.write_iova(IOVA + 1000, 200)
    assert buf.m[1000:1200] == data[:200]
    unmap_cmd = B.vfio_iommu_type1_dma_unmap(argsz=sz(B.vfio_iommu_type1_dma_unmap), iova=IOVA, size=PAGE)
    iommufd.ioctl(B.VFIO_IOMMU_UNMAP_DMA, unmap_cmd)
    assert unmap_cmd.size == PAGE
