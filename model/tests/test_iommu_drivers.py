"""The real IOMMU drivers (model/intel_iommu.py, model/amd_iommu.py) on the machines the
profiles captured (model/platform.py): what the model answers for the first device must be what
the 7.2.13 kernel answered there (profile.observed), and the decisions the drivers take from
single register bits must be the kernel's (expected values from drivers/iommu/, not the model).

A device is bound directly (model.device.iommufd_device_bind(), as VFIO's cdev bind calls it);
everything after goes through the model's file: fd.ioctl(B.IOMMU_..., struct).
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno

import pytest

from model import open_iommufd
from model.device import iommufd_device_attach, iommufd_device_bind, iommufd_device_detach, iommufd_device_unbind
from model.objects import IommufdError
from model.platform import Platform, machine
from model.profile import IommuUnit, load, names
from model.uapi import B, set_fields

FLAGS = ("NONE", "NEST_PARENT", "DIRTY_TRACKING", "PASID")
MAX = (1 << 64) - 1


def _s(name: str, **fields):
    cls = getattr(B, name)
    return set_fields(cls(size=ctypes.sizeof(cls)), **fields)


def _errname(e: int) -> str:
    return "EOPNOTSUPP" if e == errno.EOPNOTSUPP else errno.errorcode[e]


def _ioctl_errno(fd, request, arg) -> int:
    try:
        fd.ioctl(request, arg)
    except OSError as e:
        return e.errno
    return 0


def _with(profile, **registers):
    """The profile with some unit registers changed (or added: ivinfo, intremap)."""
    unit = IommuUnit(profile.unit.driver, {**profile.unit.registers, **registers})
    return dataclasses.replace(profile, unit=unit)


def _with_params(profile, **params):
    return dataclasses.replace(profile, params={**profile.params, **params})


class Bound:
    """A fresh machine of `profile`, a model file, and its first device bound there."""

    def __init__(self, profile, bdf: str | None = None):
        self.profile = profile
        self.platform = Platform(profile)
        self.dev = self.platform.devices[bdf or profile.observed["device"]]
        self.fd = open_iommufd()
        self.ictx = self.fd.ictx
        self.idev = iommufd_device_bind(self.ictx, self.dev)
        self.attached = False

    def close(self) -> None:
        if self.attached:
            iommufd_device_detach(self.idev, 0)
        iommufd_device_unbind(self.idev)
        self.fd.close()
        assert self.ictx.warnings == []

    def ioas(self) -> int:
        ioas = _s("iommu_ioas_alloc")
        self.fd.ioctl(B.IOMMU_IOAS_ALLOC, ioas)
        return ioas.out_ioas_id

    def hw_info(self, **fields):
        data = (ctypes.c_uint8 * 64)()
        hw = _s("iommu_hw_info", dev_id=self.idev.id, data_len=64, data_uptr=ctypes.addressof(data), **fields)
        self.fd.ioctl(B.IOMMU_GET_HW_INFO, hw)
        return hw, bytes(data)[:hw.data_len]

    def hwpt_alloc(self, pt_id: int, flags: int = 0, **fields) -> tuple[int, int]:
        """(errno, HWPT ID) of IOMMU_HWPT_ALLOC."""
        h = _s("iommu_hwpt_alloc", dev_id=self.idev.id, pt_id=pt_id, flags=flags, **fields)
        return _ioctl_errno(self.fd, B.IOMMU_HWPT_ALLOC, h), h.out_hwpt_id

    def alloc_results(self) -> dict[str, str]:
        ioas = self.ioas()
        out = {}
        for flag in FLAGS:
            e, hwpt_id = self.hwpt_alloc(ioas, getattr(B, f"IOMMU_HWPT_ALLOC_{flag}", 0))
            out[flag] = "ok" if not e else _errname(e)
            if not e:
                self.fd.ioctl(B.IOMMU_DESTROY, _s("iommu_destroy", id=hwpt_id))
        return out

    def attach(self, pt_id: int) -> int:
        got = iommufd_device_attach(self.idev, 0, pt_id)
        self.attached = True
        return got

    def iova_ranges(self, ioas: int) -> tuple[list[tuple[int, int]], int]:
        ranges = (B.iommu_iova_range * 16)()
        r = _s("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=16, allowed_iovas=ctypes.addressof(ranges))
        self.fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        return [(ranges[i].start, ranges[i].last) for i in range(r.num_iovas)], r.out_iova_alignment

    def attached_geometry(self) -> tuple[list[tuple[int, int]], int, int]:
        """IOVA ranges and alignment of an IOAS with the device attached, and the page sizes
        VFIO_IOMMU_GET_INFO answers for it as the compat IOAS (the domain's pgsize_bitmap)."""
        ioas = self.ioas()
        self.fd.ioctl(B.IOMMU_VFIO_IOAS, _s("iommu_vfio_ioas", op=B.IOMMU_VFIO_IOAS_SET, ioas_id=ioas))
        assert self.attach(ioas) != ioas  # an automatic HWPT
        ranges, alignment = self.iova_ranges(ioas)
        info = B.vfio_iommu_type1_info(argsz=ctypes.sizeof(B.vfio_iommu_type1_info))
        self.fd.ioctl(B.VFIO_IOMMU_GET_INFO, info)
        return ranges, alignment, info.iova_pgsizes


@pytest.fixture
def bound():
    made = []

    def make(profile, bdf=None):
        b = Bound(profile, bdf)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# -- the captured machines --------------------------------------------------------------------------

@pytest.mark.parametrize("name", names())
def test_get_hw_info_is_what_the_kernel_answered(name, bound):
    profile = load(name)
    obs = profile.observed["hw_info"]
    hw, data = bound(profile).hw_info()
    assert (hw.out_data_type, data.hex(), hex(hw.out_capabilities), hw.out_max_pasid_log2) == \
        (obs["type"], obs["data"], obs["capabilities"], obs["max_pasid_log2"])


@pytest.mark.parametrize("name", names())
def test_hwpt_alloc_per_flag_is_what_the_kernel_answered(name, bound):
    profile = load(name)
    assert bound(profile).alloc_results() == profile.observed["hwpt_alloc"]


@pytest.mark.parametrize("name", names())
def test_an_attached_ioas_has_the_kernels_ranges_alignment_and_page_sizes(name, bound):
    profile = load(name)
    obs = profile.observed
    b = bound(profile)
    ranges, alignment, pgsizes = b.attached_geometry()
    assert [(hex(s), hex(e)) for s, e in ranges] == [tuple(r) for r in obs["iova_ranges_attached"]]
    assert hex(alignment) == obs["iova_alignment"]
    assert hex(pgsizes) == obs["iova_pgsizes"]
    hwpt = b.idev.igroup.pasid_attach[0].hwpt
    assert b.dev.domain is hwpt.domain and hex(hwpt.domain.pgsize_bitmap) == obs["iova_pgsizes"]


@pytest.mark.parametrize("name", names())
def test_the_drivers_reserved_regions_are_the_groups(name):
    """intel_iommu_get_resv_regions() / amd_iommu_get_resv_regions() from the unit's bits give
    what sysfs showed as each device's group's reserved_regions."""
    for dev in Platform(load(name)).devices.values():
        assert sorted(dev.resv_regions()) == sorted(dev.info.reserved_regions)


def test_machine_is_one_platform_per_profile():
    m = machine("qemu-vtd")
    assert machine("qemu-vtd") is m and machine(load("qemu-vtd").path) is m
    assert machine("qemu-amd") is not m
    assert m.faults == [] and set(m.devices) == {d.bdf for d in m.profile.devices}
    groups = {id(d.group) for d in m.devices.values()}
    assert len(groups) == len({d.info.iommu_group for d in m.devices.values()})
    assert all(d.is_pci and d.ops is m.ops and d.iommu_dev is m.unit for d in m.devices.values())


# -- the iommu core around a real device ------------------------------------------------------------

def test_bind_owns_the_group_and_unbind_gives_it_back():
    """iommu_device_claim_dma_owner(): the group goes to the blocking domain and belongs to the
    context; another context binding it is EPERM (iommu.c:3466-3469); the last release puts it
    back on its default domain (__iommu_release_dma_ownership(), iommu.c:3490)."""
    profile = load("qemu-vtd")
    b = Bound(profile)
    dev = b.dev
    assert dev.domain is dev.group.blocking_domain and dev.group.owner is b.ictx
    other = open_iommufd()
    with pytest.raises(IommufdError) as e:
        iommufd_device_bind(other.ictx, dev)
    assert e.value.errno == errno.EPERM
    other.close()
    b.close()
    assert dev.domain is dev.group.default_domain and dev.group.owner is None and not dev.group.owner_cnt


def test_detach_blocks_the_device():
    b = Bound(load("qemu-amd"))
    b.attached_geometry()
    iommufd_device_detach(b.idev, 0)
    b.attached = False
    assert b.dev.domain.type == "BLOCKED"
    b.close()


def test_a_pasid_attach_skips_a_device_without_pasids(bound):
    """iommu_attach_device_pasid() skips the PASID checks and set_dev_pasid for devices with
    max_pasids 0 (iommu.c:3660-3671, 3563): the edu device has no PASID capability."""
    b = bound(load("qemu-vtd"))
    assert b.dev.max_pasids == 0
    ioas = b.ioas()
    e, hwpt = b.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_PASID)
    assert not e
    iommufd_device_attach(b.idev, 5, hwpt)
    iommufd_device_detach(b.idev, 5)


def test_amd_paging_domains_have_no_set_dev_pasid(bound):
    """On the captured unit a HWPT cannot be PASID-compatible (no PASID support), so a PASID
    attach is iommufd_hwpt_pasid_compat()'s EINVAL (device.c:460); with PASID support the v2
    domain the PASID flag gets still has no set_dev_pasid (amdv2_ops, iommu.c:2741):
    iommu_attach_device_pasid() is EOPNOTSUPP (iommu.c:3640)."""
    b = bound(load("qemu-amd"))
    ioas = b.ioas()
    e, hwpt = b.hwpt_alloc(ioas, 0)
    assert not e
    with pytest.raises(IommufdError) as err:
        iommufd_device_attach(b.idev, 5, hwpt)
    assert err.value.errno == errno.EINVAL
    b2 = bound(_with(AMD, features=EFR | 1 << 48 | 1 << 50), bdf="0000:00:05.0")
    ioas = b2.ioas()
    e, hwpt = b2.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_PASID)
    assert not e
    with pytest.raises(IommufdError) as err:
        iommufd_device_attach(b2.idev, 5, hwpt)
    assert err.value.errno == errno.EOPNOTSUPP


# -- intel-iommu: single bits of CAP and ECAP (drivers/iommu/intel/iommu.h:157-218) ----------------

VTD = load("qemu-vtd")
ECAP, CAP = VTD.unit.registers["ecap"], VTD.unit.registers["cap"]


def test_vtd_nesting_accepts_nest_parent_and_a_vtd_s1_nested_domain(bound):
    """ecap NEST (bit 26): nested_supported() (iommu.h:537): the second stage accepts
    NEST_PARENT (iommu.c:2940-2943), and intel_iommu_domain_alloc_nested() (nested.c:196) makes
    an IOMMU_HWPT_DATA_VTD_S1 domain over it; DIRTY_TRACKING still needs SSADS."""
    b = bound(_with(VTD, ecap=ECAP | 1 << 26))
    assert b.alloc_results() == {"NONE": "ok", "NEST_PARENT": "ok", "DIRTY_TRACKING": "EOPNOTSUPP", "PASID": "ok"}
    ioas = b.ioas()
    e, parent = b.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert not e
    s1 = B.iommu_hwpt_vtd_s1(addr_width=48)
    e, nested = b.hwpt_alloc(parent, 0, data_type=B.IOMMU_HWPT_DATA_VTD_S1, data_len=ctypes.sizeof(s1),
                             data_uptr=ctypes.addressof(s1))
    assert not e and b.ictx.objects.get(nested).type == "HWPT_NESTED"
    e, _ = b.hwpt_alloc(parent, 0, data_type=B.IOMMU_HWPT_DATA_ARM_SMMUV3, data_len=ctypes.sizeof(s1),
                        data_uptr=ctypes.addressof(s1))
    assert e == errno.EOPNOTSUPP  # nested.c:211: not VTD_S1 data
    b.attach(nested)  # intel_nested_attach_dev(): the parent is compatible
    assert b.dev.domain.type == "NESTED"


def test_vtd_nest_parent_is_read_only_refusing():
    """A NEST_PARENT domain forbids read-only maps (PT_FEAT_VTDSS_FORCE_WRITEABLE, iommu.c:2958-2964,
    ERRATA_772415_SPR17)."""
    from model.domain import IOMMU_READ

    p = Platform(_with(VTD, ecap=ECAP | 1 << 26))
    dev = next(iter(p.devices.values()))
    domain = p.ops.domain_alloc_paging_flags(dev, B.IOMMU_HWPT_ALLOC_NEST_PARENT, None)
    with pytest.raises(IommufdError) as e:
        domain.map(0, 0, 4096, IOMMU_READ)
    assert e.value.errno == errno.EINVAL


def test_vtd_nested_invalidation_checks_each_entry(bound):
    """intel_nested_cache_invalidate_user() (nested.c:91): unaligned addr EINVAL, unknown flags
    EOPNOTSUPP, entry_num the entries done."""
    b = bound(_with(VTD, ecap=ECAP | 1 << 26))
    ioas = b.ioas()
    _, parent = b.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    s1 = B.iommu_hwpt_vtd_s1(addr_width=48)
    _, nested = b.hwpt_alloc(parent, 0, data_type=B.IOMMU_HWPT_DATA_VTD_S1, data_len=ctypes.sizeof(s1),
                             data_uptr=ctypes.addressof(s1))
    inv = (B.iommu_hwpt_vtd_s1_invalidate * 3)()
    inv[0].addr, inv[0].npages = 0x1000, 1
    inv[1].addr, inv[1].npages = 0x1001, 1
    cmd = _s("iommu_hwpt_invalidate", hwpt_id=nested, data_uptr=ctypes.addressof(inv),
             data_type=B.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, entry_len=ctypes.sizeof(inv[0]), entry_num=3)
    assert _ioctl_errno(b.fd, B.IOMMU_HWPT_INVALIDATE, cmd) == errno.EINVAL and cmd.entry_num == 1
    inv[1].addr, inv[1].flags = 0x2000, 2
    cmd.entry_num = 3
    assert _ioctl_errno(b.fd, B.IOMMU_HWPT_INVALIDATE, cmd) == errno.EOPNOTSUPP and cmd.entry_num == 1


def test_vtd_without_nesting_a_nested_alloc_needs_a_nest_parent(bound):
    """iommufd_hwpt_nested_alloc(): a parent that is not NEST_PARENT is EINVAL (hw_pagetable.c)."""
    b = bound(VTD)
    ioas = b.ioas()
    _, parent = b.hwpt_alloc(ioas, 0)
    s1 = B.iommu_hwpt_vtd_s1(addr_width=48)
    e, _ = b.hwpt_alloc(parent, 0, data_type=B.IOMMU_HWPT_DATA_VTD_S1, data_len=ctypes.sizeof(s1),
                        data_uptr=ctypes.addressof(s1))
    assert e == errno.EINVAL


@pytest.mark.parametrize("bits, accepted", [((45, 48), True), ((45,), False), ((48,), False)])
def test_vtd_dirty_tracking_needs_slads_and_smpwc(bits, accepted, bound):
    """ssads_supported() (iommu.h:534): scalable mode, ECAP SLADS (45) and SMPWC (48); it is
    IOMMU_CAP_DIRTY_TRACKING (iommu.c:3244), reported as IOMMU_HW_CAP_DIRTY_TRACKING."""
    ecap = ECAP
    for bit in bits:
        ecap |= 1 << bit
    b = bound(_with(VTD, ecap=ecap))
    assert b.alloc_results()["DIRTY_TRACKING"] == ("ok" if accepted else "EOPNOTSUPP")
    hw, _ = b.hw_info()
    assert hw.out_capabilities == (B.IOMMU_HW_CAP_DIRTY_TRACKING if accepted else 0) | \
        B.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    if accepted:
        ioas = b.ioas()
        _, hwpt = b.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        cmd = _s("iommu_hwpt_set_dirty_tracking", hwpt_id=hwpt, flags=B.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        assert _ioctl_errno(b.fd, B.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd) == 0


def test_vtd_legacy_mode_has_no_pasids_and_no_nesting(bound):
    """Without ECAP SMTS (bit 43) sm_supported() is false: no PASID support (the unit's
    max_pasids 0, dmar.c:1140), no nesting; the second stage still takes the PASID flag
    ("Legacy mode always supports second stage", iommu.c:2946)."""
    b = bound(_with(VTD, ecap=(ECAP & ~(1 << 43)) | 1 << 26))
    assert b.platform.unit.max_pasids == 0
    assert b.alloc_results() == {"NONE": "ok", "NEST_PARENT": "EOPNOTSUPP", "DIRTY_TRACKING": "EOPNOTSUPP",
                                 "PASID": "ok"}


def test_vtd_first_stage_is_preferred_when_the_unit_has_one(bound):
    """ECAP FLTS (bit 47) in scalable mode: intel_iommu_domain_alloc_first_stage() (iommu.c:2845):
    4-level x86-64, 48-bit address width sign-extended, so the aperture is the lower half
    [0, 2^47 - 1]; without CAP FL1GP (bit 56) no 1 GiB pages: 4K | 2M."""
    b = bound(_with(VTD, ecap=ECAP | 1 << 47))
    ranges, _, pgsizes = b.attached_geometry()
    assert ranges[-1][1] == (1 << 47) - 1 and pgsizes == 0x201000
    assert b.dev.domain.stage == "first"


def test_vtd_superpages_follow_cap_sllps(bound):
    """CAP SLLPS (bits 34-37): without 2M and 1G the second stage maps 4 KiB pages only
    (iommu.c:2982-2989)."""
    b = bound(_with(VTD, cap=CAP & ~(0xF << 34)))
    _, _, pgsizes = b.attached_geometry()
    assert pgsizes == 0x1000


def test_vtd_a_39_bit_unit_has_a_39_bit_aperture(bound):
    """CAP MGAW 39 (field 38) with SAGAW 3-level: compute_vasz_lg2_ss() (iommu.c:2896) gives
    39 bits, three levels."""
    cap = (CAP & ~(0x3F << 16)) | (38 << 16)
    b = bound(_with(VTD, cap=cap))
    ranges, _, _ = b.attached_geometry()
    assert ranges[-1] == (0xFEF00000, (1 << 39) - 1)


@pytest.mark.parametrize("sc", [True, False])
def test_vtd_snoop_control_is_enforced_cache_coherency(sc, bound):
    """ECAP SC (bit 7) is IOMMU_CAP_ENFORCE_CACHE_COHERENCY (iommu.c:3242): the paging HWPT then
    enforces coherency (iommufd_hwpt_paging_enforce_cc(), hw_pagetable.c:72) and VFIO's
    VFIO_DMA_CC_IOMMU answers 1 (vfio_compat.c:256)."""
    b = bound(_with(VTD, ecap=ECAP if sc else ECAP & ~(1 << 7)))
    b.attached_geometry()
    assert b.fd.ioctl(B.VFIO_CHECK_EXTENSION, B.VFIO_DMA_CC_IOMMU) == int(sc)
    hwpt = b.idev.igroup.pasid_attach[0].hwpt
    assert hwpt.enforce_cache_coherency == sc


@pytest.mark.parametrize("ir, allow, rc", [(True, "N", 0), (False, "N", errno.EPERM), (False, "Y", 0)])
def test_vtd_bind_needs_interrupt_remapping_or_the_unsafe_switch(ir, allow, rc):
    """ECAP IR (bit 3) gives the interrupt-remapping MSI domain (irq_remapping.c:525
    IRQ_DOMAIN_FLAG_ISOLATED_MSI); without it iommufd_device_bind() is EPERM unless
    iommufd.allow_unsafe_interrupts (device.c:236-247)."""
    profile = _with_params(_with(VTD, ecap=ECAP if ir else ECAP & ~(1 << 3)),
                           **{"iommufd.allow_unsafe_interrupts": allow})
    dev = next(iter(Platform(profile).devices.values()))
    fd = open_iommufd()
    try:
        idev = iommufd_device_bind(fd.ictx, dev)
    except IommufdError as e:
        assert e.errno == rc
    else:
        assert rc == 0
        iommufd_device_unbind(idev)
    fd.close()


def test_vtd_hw_info_refuses_another_type(bound):
    """intel_iommu_hw_info() (iommu.c:3696): EOPNOTSUPP unless DEFAULT or INTEL_VTD."""
    b = bound(VTD)
    data = (ctypes.c_uint8 * 64)()
    hw = _s("iommu_hw_info", dev_id=b.idev.id, data_len=64, data_uptr=ctypes.addressof(data),
            flags=B.IOMMU_HW_INFO_FLAG_INPUT_TYPE, in_data_type=B.IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
    assert _ioctl_errno(b.fd, B.IOMMU_GET_HW_INFO, hw) == errno.EOPNOTSUPP
    hw.in_data_type = B.IOMMU_HW_INFO_TYPE_INTEL_VTD
    assert _ioctl_errno(b.fd, B.IOMMU_GET_HW_INFO, hw) == 0 and hw.out_data_type == B.IOMMU_HW_INFO_TYPE_INTEL_VTD


def test_vtd_a_fault_hwpt_needs_pri(bound):
    """A HWPT with a fault object has an iopf handler: intel_iommu_attach_device() ->
    iopf_for_domain_replace() -> intel_iommu_enable_iopf() is ENODEV without PRI enabled
    (iommu.c:3479); the device stays blocked."""
    b = bound(VTD)
    fault = _s("iommu_fault_alloc")
    b.fd.ioctl(B.IOMMU_FAULT_QUEUE_ALLOC, fault)
    ioas = b.ioas()
    e, hwpt = b.hwpt_alloc(ioas, B.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault.out_fault_id)
    assert not e
    with pytest.raises(IommufdError) as err:
        iommufd_device_attach(b.idev, 0, hwpt)
    assert err.value.errno == errno.ENODEV and b.dev.domain.type == "BLOCKED"


# -- amd_iommu: EFR, EFR2 and the IVRS (drivers/iommu/amd/amd_iommu_types.h:88-118) ----------------

AMD = load("qemu-amd")
EFR = AMD.unit.registers["features"]
EFRSUP = 1 | 40 << 8  # IVinfo with EFRSup: the IVHD's EFR is known at early init


def test_amd_hw_info_without_the_op_is_none_whatever_the_type(bound):
    """amd_iommu_ops.hw_info is NULL without CONFIG_AMD_IOMMU_IOMMUFD (iommufd.h:16): GET_HW_INFO
    answers IOMMU_HW_INFO_TYPE_NONE and no data for any requested type (device.c:1587-1590)."""
    b = bound(AMD)
    hw, data = b.hw_info(flags=B.IOMMU_HW_INFO_FLAG_INPUT_TYPE, in_data_type=B.IOMMU_HW_INFO_TYPE_AMD)
    assert (hw.out_data_type, data, hw.data_len) == (B.IOMMU_HW_INFO_TYPE_NONE, b"", 0)


def test_amd_viommu_alloc_is_eopnotsupp(bound):
    """get_viommu_size/viommu_init are NULL without CONFIG_AMD_IOMMU_IOMMUFD (viommu.c)."""
    b = bound(AMD)
    ioas = b.ioas()
    _, hwpt = b.hwpt_alloc(ioas, 0)
    cmd = _s("iommu_viommu_alloc", dev_id=b.idev.id, hwpt_id=hwpt, type=B.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
    assert _ioctl_errno(b.fd, B.IOMMU_VIOMMU_ALLOC, cmd) == errno.EOPNOTSUPP


def test_amd_ht_range_ignore_drops_the_hypertransport_hole(bound):
    """EFR2 HTRangeIgnore (bit 11): amd_iommu_get_resv_regions() adds no HT range (iommu.c:3107)."""
    b = bound(_with(AMD, features2=1 << 11))
    ranges, _, _ = b.attached_geometry()
    assert ranges == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]


def test_amd_hd_support_is_the_ivhds_efr():
    """amd_iommu_hd_support() reads iommu->features (iommu.c:2571-2576), which only an IVHD with
    IVinfo EFRSup fills (early_iommu_features_init(), init.c:308): QEMU 7.2's IVRS has none, so
    EFR HDSup alone leaves dirty tracking off."""
    hd = EFR | 1 << 52
    results = []
    for profile in (_with(AMD, features=hd), _with(AMD, features=hd, ivinfo=EFRSUP)):
        b = Bound(profile)
        results.append((b.alloc_results()["DIRTY_TRACKING"], b.hw_info()[0].out_capabilities))
        b.close()
    assert results == [("EOPNOTSUPP", B.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED),
                       ("ok", B.IOMMU_HW_CAP_DIRTY_TRACKING | B.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED)]


def test_amd_an_ivhd_efr_sizes_the_table_from_hats(bound):
    """With EFRSup the early EFR is QEMU's (HATS 2): amd_iommu_hpt_vasize = min(64 (IVinfo VAsize
    0), (2 + 4 - 1) * 9 + 21) = 64 (init.c:3251-3278): the aperture is all 64 bits and the page
    sizes all of AMD_IOMMU_PGSIZES (GENMASK(51, 12) ^ 512G)."""
    b = bound(_with(AMD, ivinfo=EFRSUP))
    ranges, _, pgsizes = b.attached_geometry()
    assert ranges[-1] == (0x10000000000, MAX)
    assert pgsizes == ((1 << 52) - (1 << 12)) ^ (1 << 39)


def test_amd_nest_parent_needs_gt_giosup_and_gcr3trpmode(bound):
    """is_nest_parent_supported() (iommu.c:2809): EFR GT (4), GIOSup (48), EFR2 GCR3TRPMode (3)."""
    b = bound(_with(AMD, features=EFR | 1 << 48, features2=1 << 3))
    assert b.alloc_results()["NEST_PARENT"] == "ok"
    b2 = bound(_with(AMD, features=EFR | 1 << 48), bdf="0000:00:05.0")
    assert b2.alloc_results()["NEST_PARENT"] == "EOPNOTSUPP"


def test_amd_pasid_takes_the_v2_table(bound):
    """amd_iommu_pasid_supported() (init.c:3943): GT, GIOSup (48), PPR (1), EPHSup (50): the
    PASID flag gets a v2 (x86-64) domain, 4 levels not sign-extended: [0, 2^47 - 1], 4K|2M|1G
    (iommu.c:2760-2800)."""
    b = bound(_with(AMD, features=EFR | 1 << 48 | 1 << 50))
    assert b.alloc_results()["PASID"] == "ok"
    ioas = b.ioas()
    _, hwpt = b.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_PASID)
    domain = b.ictx.objects.get(hwpt).domain
    assert (domain.aperture_end, domain.pgsize_bitmap) == ((1 << 47) - 1, 0x40201000)


@pytest.mark.parametrize("intremap, allow, rc", [(False, "N", errno.EPERM), (False, "Y", 0), (True, "N", 0)])
def test_amd_bind_needs_interrupt_remapping_or_the_unsafe_switch(intremap, allow, rc):
    """No IOAPIC in the IVHD: check_ioapic_information() fails, no remapping (init.c:3307), the
    device's MSIs are not isolated and bind is EPERM unless iommufd.allow_unsafe_interrupts
    (the captured machine sets it)."""
    profile = _with_params(_with(AMD, intremap=intremap), **{"iommufd.allow_unsafe_interrupts": allow})
    dev = next(iter(Platform(profile).devices.values()))
    fd = open_iommufd()
    try:
        idev = iommufd_device_bind(fd.ictx, dev)
    except IommufdError as e:
        assert e.errno == rc
    else:
        assert rc == 0
        iommufd_device_unbind(idev)
    fd.close()


def test_amd_without_host_translation_a_device_has_no_iommu():
    """EFR HATS 3 known early (EFRSup) disables host translation (init.c:3279-3283); without
    the v2 table either amd_iommu_pgtable is PD_MODE_NONE and amd_iommu_probe_device() is ENODEV
    (iommu.c:2490): bind finds no IOMMU capability (EINVAL, device_iommu_capable())."""
    p = Platform(_with(AMD, features=EFR | 3 << 10, ivinfo=EFRSUP))
    dev = next(iter(p.devices.values()))
    assert dev.ops is None and dev.group is None and not p.groups
    fd = open_iommufd()
    with pytest.raises(IommufdError) as e:
        iommufd_device_bind(fd.ictx, dev)
    assert e.value.errno == errno.EINVAL
    fd.close()


# -- a PASID-capable PCIe function (config space built here: the profiles' edu devices have none) --

def _pasid_function(profile, width: int = 20, features: int = 0x6):
    """The profile with its observed device turned into a PCIe function with a PASID extended
    capability (pci_regs.h: PCI_CAP_ID_EXP 0x10 at 0x40, PCI_EXT_CAP_ID_PASID 0x1B at 0x100;
    PCI_PASID_CAP: EXEC 0x2, PRIV 0x4, width bits 8-12)."""
    bdf = profile.observed["device"]
    info = profile.device(bdf)
    cfg = bytearray(info.config.ljust(4096, b"\0"))
    cfg[0x06] |= 0x10  # PCI_STATUS_CAP_LIST
    cfg[0x34] = 0x40
    cfg[0x40:0x44] = bytes([0x10, 0x00, 0x02, 0x00])  # PCIe capability, last in the list
    cfg[0x100:0x104] = (0x1B | 1 << 16).to_bytes(4, "little")  # PASID, version 1, no next
    cfg[0x104:0x106] = (features | width << 8).to_bytes(2, "little")
    devices = tuple(dataclasses.replace(d, config=bytes(cfg)) if d.bdf == bdf else d for d in profile.devices)
    return dataclasses.replace(profile, devices=devices)


def test_vtd_pasids_are_the_smaller_of_the_function_and_the_unit(bound):
    """dev_iommu_get_max_pasids() (iommu.c:438): min(pci_max_pasids() = 1 << 20, the unit's
    2 << ECAP PSS (dmar.c:1141): 2 for QEMU's PSS 0); intel_iommu_probe_finalize() enabled PASID
    with the function's EXEC and PRIV (iommu.c:3362), so GET_HW_INFO reports both
    (device.c:1645-1650)."""
    b = bound(_pasid_function(VTD))
    hw, _ = b.hw_info()
    assert (hw.out_max_pasid_log2, hw.out_capabilities) == (1, 0x8 | 0x2 | 0x4)
    b2 = bound(_pasid_function(_with(VTD, ecap=ECAP | 19 << 35)))
    hw, _ = b2.hw_info()
    assert hw.out_max_pasid_log2 == 20


def test_amd_pasids_without_pasid_support_warn(bound):
    """On QEMU's unit (GT, PASMAX 0: max_pasids (1 << 1) - 1 = 1, init.c:2179) the function has 1
    PASID (ilog2 0) but the driver enables PASID only for a v2 domain (pdev_enable_cap_pasid()):
    the control is clear and iommufd_get_hw_info() WARNs (device.c:1642), no EXEC/PRIV."""
    b = bound(_pasid_function(AMD))
    assert b.dev.max_pasids == 1
    hw, _ = b.hw_info()
    assert (hw.out_max_pasid_log2, hw.out_capabilities) == (0, 0x8)
    assert b.ictx.warnings == ["iommufd_get_hw_info: WARN_ON(ctrl < 0 || !(ctrl & PCI_PASID_CTRL_ENABLE))"]
    b.ictx.warnings.clear()


def test_vtd_pasid_attach_is_bounded_by_max_pasids(bound):
    """iommu_attach_device_pasid(): pasid >= max_pasids is EINVAL (iommu.c:3666-3670); below it
    intel_iommu_set_dev_pasid() (iommu.c:3633) attaches; detaching goes back to blocking."""
    b = bound(_pasid_function(VTD))
    ioas = b.ioas()
    _, hwpt = b.hwpt_alloc(ioas, B.IOMMU_HWPT_ALLOC_PASID)
    with pytest.raises(IommufdError) as e:
        iommufd_device_attach(b.idev, 2, hwpt)
    assert e.value.errno == errno.EINVAL
    iommufd_device_attach(b.idev, 1, hwpt)
    domain = b.ictx.objects.get(hwpt).domain
    assert b.dev.priv.dev_pasids == {1: domain} and b.dev.group.pasid_array == {1: domain}
    iommufd_device_detach(b.idev, 1)
    assert b.dev.priv.dev_pasids == {} and b.dev.group.pasid_array == {}
