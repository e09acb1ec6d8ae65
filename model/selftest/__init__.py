"""What CONFIG_IOMMUFD_TEST adds to iommufd (drivers/iommu/iommufd/selftest.c, uapi in
iommufd_test.h): IOMMU_TEST_CMD, the mock IOMMU (mock.py), selftest access objects
(access.py), and the hooks the rest of iommufd calls.

The rest of the model reaches this package only through model/hooks.py, as iommufd reaches
selftest.c only through iommufd_private.h; with CONFIG_IOMMUFD_TEST off it is never imported.
"""
from __future__ import annotations

import errno

from model import device as _device
from model.device import IOMMU_NO_PASID, iommufd_get_device
from model.limits import PAGE_SIZE, U64_MAX
from model.memory import Vmas
from model.objects import IommufdError, IommufdObject, NotModelled
from model.selftest import access as _access
from model.selftest import dmabuf as _dmabuf
from model.selftest.dmabuf import iommufd_test_dma_buf_iommufd_map  # noqa: F401 (model/hooks.py takes it from here)
from model.selftest.mock import MOCK_DIRTY_TRACK, mock_dev_create
from model.selftest.syz import iommufd_test_syz_conv_iova_id  # noqa: F401 (model/hooks.py takes it from here)
from model.uapi import B

# selftest.c: the limit _batch_init() works with, settable by SET_TEMP_MEMORY_LIMIT
iommufd_test_memory_limit = 65536


class SelftestObj(IommufdObject):
    """struct selftest_obj of TYPE_IDEV: a mock device bound to the context."""

    type = "SELFTEST"

    def __init__(self):
        super().__init__()
        self.idev = None
        self.mock_dev = None


def iommufd_selftest_destroy(sobj: SelftestObj) -> None:
    """iommufd_selftest_destroy(): detach the RID, unbind, and the mock device goes."""
    _device.iommufd_device_detach(sobj.idev, IOMMU_NO_PASID)
    _device.iommufd_device_unbind(sobj.idev)


def iommufd_test_mock_domain(ucmd, cmd) -> int:
    """iommufd_test_mock_domain(): a SELFTEST object (ID first), the mock device (EINVAL bad
    dev_flags), bind (the DEVICE ID next), attach to cmd.id (an IOAS: an automatic HWPT; a
    HWPT), answer, finalize. Any failure undoes every step, IDs included."""
    objects = ucmd.ictx.objects
    sobj = objects.alloc(SelftestObj())
    idev = None
    try:
        dev_flags = cmd.mock_domain_flags.dev_flags if cmd.op == B.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS else 0
        sobj.mock_dev = mock_dev_create(dev_flags)
        idev = _device.iommufd_device_bind(ucmd.ictx, sobj.mock_dev)
        sobj.idev = idev
        pt_id = _device.iommufd_device_attach(idev, IOMMU_NO_PASID, cmd.id)
        try:
            cmd.mock_domain.out_hwpt_id = pt_id
            cmd.mock_domain.out_stdev_id = sobj.id
            cmd.mock_domain.out_idev_id = idev.id
            ucmd.respond()
        except BaseException:
            _device.iommufd_device_detach(idev, IOMMU_NO_PASID)
            raise
    except BaseException:
        if idev is not None:
            _device.iommufd_device_unbind(idev)
        objects.abort(sobj)
        raise
    objects.finalize(sobj)
    return 0


def iommufd_test_get_selftest_obj(ictx, id: int) -> SelftestObj:
    """iommufd_test_get_selftest_obj(): a SELFTEST object (ENOENT otherwise)."""
    return ictx.objects.get(id, "SELFTEST")


def iommufd_test_mock_domain_replace(ucmd, cmd) -> int:
    sobj = iommufd_test_get_selftest_obj(ucmd.ictx, cmd.id)
    cmd.mock_domain_replace.pt_id = _device.iommufd_device_replace(sobj.idev, IOMMU_NO_PASID,
                                                                   cmd.mock_domain_replace.pt_id)
    ucmd.respond()
    return 0


def iommufd_test_add_reserved(ucmd, cmd) -> int:
    """iommufd_test_add_reserved(): EINVAL length 0, EOVERFLOW, the IOAS (ENOENT), then
    iopt_reserve_iova() (EADDRINUSE over an area or an allowed range)."""
    start, length = cmd.add_reserved.start, cmd.add_reserved.length
    if not length:
        raise IommufdError(errno.EINVAL)
    if start + length - 1 > U64_MAX:
        raise IommufdError(errno.EOVERFLOW)
    ioas = ucmd.ictx.objects.get(cmd.id, "IOAS")
    ioas.iopt.reserve_iova(start, start + length - 1, None)
    return 0


def get_md_pagetable(ucmd, id: int):
    """get_md_pagetable(): a HWPT_PAGING (ENOENT) whose domain is a mock paging domain (EINVAL)."""
    from model.selftest.mock import MOCK_OPS

    hwpt = ucmd.ictx.objects.get(id, "HWPT_PAGING")
    if hwpt.domain.type != "UNMANAGED" or hwpt.domain.owner is not MOCK_OPS:
        raise IommufdError(errno.EINVAL)
    return hwpt


def _user_range(uptr: int, length: int, align: int) -> None:
    if uptr % align or length % align or uptr + length > U64_MAX:
        raise IommufdError(errno.EINVAL)


def iommufd_test_md_check_pa(ucmd, cmd) -> int:
    """iommufd_test_md_check_pa(): each mock page of [iova, iova + length) translates to the
    frame of the user page at uptr (plus its offset): EINVAL when not, or misaligned to the
    domain's smallest page; EFAULT for an unmapped uptr (get_user_pages_fast())."""
    hwpt = get_md_pagetable(ucmd, cmd.id)
    domain = hwpt.domain
    page_size = domain.pgsize_bitmap & -domain.pgsize_bitmap
    iova, length, uptr = cmd.check_map.iova, cmd.check_map.length, cmd.check_map.uptr
    if iova % page_size or length % page_size or uptr % page_size or uptr + length > U64_MAX:
        raise IommufdError(errno.EINVAL)
    memory = ucmd.ictx.accounts.memory
    vmas = Vmas(ucmd.task.pid)
    while length:
        err, _, _, pfn = memory.user_page(vmas, ucmd.task.pid, uptr)
        if err:
            raise IommufdError(err)
        if domain.iova_to_phys(iova) != pfn * PAGE_SIZE + uptr % PAGE_SIZE or pfn < 0:
            raise IommufdError(errno.EINVAL)
        iova += page_size
        uptr += page_size
        length -= page_size
    return 0


def iommufd_test_md_check_refs(ucmd, cmd) -> int:
    """iommufd_test_md_check_refs(): every page of [uptr, uptr + length) is pinned exactly
    `refs` times (EIO otherwise; compound pages are not checked); EINVAL misaligned, EFAULT
    unmapped."""
    uptr, length, refs = cmd.check_refs.uptr, cmd.check_refs.length, cmd.check_refs.refs
    _user_range(uptr, length, PAGE_SIZE)
    memory = ucmd.ictx.accounts.memory
    vmas = Vmas(ucmd.task.pid)
    while length:
        err, vma, key, _ = memory.user_page(vmas, ucmd.task.pid, uptr)
        if err:
            raise IommufdError(err)
        if not vma.hugetlb and memory.pin_count(key) != refs:
            raise IommufdError(errno.EIO)
        uptr += PAGE_SIZE
        length -= PAGE_SIZE
    return 0


def iommufd_test_md_check_iotlb(ucmd, cmd) -> int:
    """iommufd_test_md_check_iotlb(): a mock nested HWPT (ENOENT; EINVAL another kind) whose
    IOTLB entry `id` holds `iotlb` (EINVAL otherwise, or id > MAX)."""
    from model.selftest.mock import NESTED_DOPS

    hwpt = ucmd.ictx.objects.get(cmd.id, "HWPT_NESTED")
    if hwpt.domain.type != "NESTED" or hwpt.domain.dops is not NESTED_DOPS:
        raise IommufdError(errno.EINVAL)
    i = cmd.check_iotlb.id
    if i > B.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX or hwpt.domain.iotlb[i] != cmd.check_iotlb.iotlb:
        raise IommufdError(errno.EINVAL)
    return 0


def iommufd_test_dev_check_cache(ucmd, cmd) -> int:
    """iommufd_test_dev_check_cache(): the DEVICE (ENOENT), its cache entry equal (EINVAL)."""
    idev = iommufd_get_device(ucmd, cmd.id)
    i = cmd.check_dev_cache.id
    if i > B.MOCK_DEV_CACHE_ID_MAX or idev.dev.cache[i] != cmd.check_dev_cache.cache:
        raise IommufdError(errno.EINVAL)
    return 0


def iommufd_test_dirty(ucmd, cmd) -> int:
    """iommufd_test_dirty(): EINVAL page_size / length 0, misaligned, or no uptr; EOVERFLOW for
    more than 128M bits; a mock HWPT (ENOENT, EINVAL) with dirty tracking on (EINVAL); the
    bitmap read (EFAULT); each set bit marks the IOPTE under its IOVA dirty (the device wrote
    it). out_nr_dirty answers the bits set."""
    d = cmd.dirty
    page_size, iova, length, uptr = d.page_size, d.iova, d.length, d.uptr
    if not page_size or not length or iova % page_size or length % page_size or not uptr:
        raise IommufdError(errno.EINVAL)
    nbits = length // page_size
    if nbits > (1 << 24) * 8:
        raise IommufdError(errno.EOVERFLOW)
    hwpt = get_md_pagetable(ucmd, cmd.id)
    domain = hwpt.domain
    if not domain.mock_flags & MOCK_DIRTY_TRACK:
        raise IommufdError(errno.EINVAL)
    from model.uaccess import UserFault

    try:
        bitmap = ucmd.mem.read(uptr, (nbits + 7) // 8)
    except UserFault:
        raise IommufdError(errno.EFAULT) from None
    count = 0
    bits = int.from_bytes(bitmap, "little")
    while bits:
        low = bits & -bits
        i = low.bit_length() - 1
        if i >= nbits:
            break
        domain.ops.set_dirty(iova + i * page_size)
        count += 1
        bits ^= low
    d.out_nr_dirty = count
    ucmd.respond()
    return 0


def iommufd_test_trigger_iopf(ucmd, cmd) -> int:
    """iommufd_test_trigger_iopf() (selftest.c:1750): the DEVICE (ENOENT), a mock device
    (EINVAL: a VFIO device of the machine the model plays is not), then iommu_report_device_fault(): a page
    request (PASID_VALID unless the PASID is IOMMU_NO_PASID) delivered to the fault object of
    the domain find_fault_handler() picks, else dropped."""
    from model.selftest.mock import MockDev

    idev = iommufd_get_device(ucmd, cmd.trigger_iopf.dev_id)
    if not isinstance(idev.dev, MockDev):  # iommufd_selftest_is_mock_dev() (selftest.c:1760)
        raise IommufdError(errno.EINVAL)
    t = cmd.trigger_iopf
    hwpt = _find_fault_handler(idev, t.pasid)
    if hwpt is not None:
        hwpt.fault.report(idev, t.pasid, t.grpid, t.perm, t.addr)
    return 0


def _find_fault_handler(idev, pasid: int):
    """find_fault_handler() (io-pgfault.c:118): the domain attached at the PASID; when there is
    none and the driver keeps a user PASID table (mock_ops.user_pasid_table), the NESTED
    domain attached at the RID; None unless the domain has an iopf handler (a fault object)."""
    from model.device import IOMMU_NO_PASID
    from model.hw_pagetable import HwptNested

    attached = idev.igroup.pasid_attach
    attach = attached.get(pasid)
    if attach is None and pasid != IOMMU_NO_PASID and idev.dev.ops.user_pasid_table:
        attach = attached.get(IOMMU_NO_PASID)
        if attach is not None and not isinstance(attach.hwpt, HwptNested):
            attach = None
    hwpt = attach.hwpt if attach is not None else None
    return hwpt if hwpt is not None and hwpt.fault is not None else None


def iommufd_test_trigger_vevent(ucmd, cmd) -> int:
    """iommufd_test_trigger_vevent() (selftest.c:1783): the DEVICE (ENOENT); ENOENT unless the
    mock device is attached to a nested domain of a vIOMMU with a nonzero virt_id (both read at
    attach time); then a struct iommu_viommu_event_selftest {virt_id} reported to the vIOMMU's
    selftest event queue (EOPNOTSUPP without one)."""
    from model.driver import iommufd_viommu_report_event

    from model.selftest.mock import MockDev

    idev = iommufd_get_device(ucmd, cmd.trigger_vevent.dev_id)
    mdev = idev.dev
    if not isinstance(mdev, MockDev):
        # selftest.c:1794 reads any device as a struct mock_dev: unlike TRIGGER_IOPF (1760) it
        # has no iommufd_selftest_is_mock_dev() check, so a VFIO device's ID reads past a
        # struct pci_dev: no answer to model (a bug of the test driver)
        raise NotModelled("IOMMU_TEST_OP_TRIGGER_VEVENT of a device that is not the mock's")
    if mdev.viommu is None or not mdev.vdev_id:
        raise IommufdError(errno.ENOENT)
    event = B.iommu_viommu_event_selftest(virt_id=mdev.vdev_id)
    iommufd_viommu_report_event(mdev.viommu, B.IOMMU_VEVENTQ_TYPE_SELFTEST, bytes(event))
    return 0


def iommufd_test_pasid_attach(ucmd, cmd) -> int:
    sobj = iommufd_test_get_selftest_obj(ucmd.ictx, cmd.id)
    pa = cmd.pasid_attach
    pa.pt_id = _device.iommufd_device_attach(sobj.idev, pa.pasid, pa.pt_id)
    try:
        ucmd.respond()
    except BaseException:
        _device.iommufd_device_detach(sobj.idev, pa.pasid)
        raise
    return 0


def iommufd_test_pasid_replace(ucmd, cmd) -> int:
    sobj = iommufd_test_get_selftest_obj(ucmd.ictx, cmd.id)
    pa = cmd.pasid_attach
    pa.pt_id = _device.iommufd_device_replace(sobj.idev, pa.pasid, pa.pt_id)
    ucmd.respond()
    return 0


def iommufd_test_pasid_detach(ucmd, cmd) -> int:
    sobj = iommufd_test_get_selftest_obj(ucmd.ictx, cmd.id)
    _device.iommufd_device_detach(sobj.idev, cmd.pasid_detach.pasid)
    return 0


def iommufd_test_pasid_check_hwpt(ucmd, cmd) -> int:
    """iommufd_test_pasid_check_hwpt(): hwpt_id 0 asks that the PASID is detached; otherwise a
    HWPT (ENOENT; EINVAL another type) that must be the one attached (EINVAL)."""
    sobj = iommufd_test_get_selftest_obj(ucmd.ictx, cmd.id)
    pasid, hwpt_id = cmd.pasid_check.pasid, cmd.pasid_check.hwpt_id
    attach = sobj.idev.igroup.pasid_attach.get(pasid)
    attached = attach.hwpt.domain if attach is not None else None
    if not hwpt_id:
        if attached is not None:
            raise IommufdError(errno.EINVAL)
        return 0
    hwpt = ucmd.ictx.objects.get(hwpt_id)
    if hwpt.type not in ("HWPT_NESTED", "HWPT_PAGING"):
        raise IommufdError(errno.EINVAL)
    if attached is not hwpt.domain:
        raise IommufdError(errno.EINVAL)
    return 0


def iommufd_test_set_temp_memory_limit(ucmd, cmd) -> int:
    """SET_TEMP_MEMORY_LIMIT: EINVAL below sizeof(unsigned long) + sizeof(u32). The model's
    batches have no size, so the limit changes nothing else."""
    global iommufd_test_memory_limit
    if cmd.memory_limit.limit < 12:
        raise IommufdError(errno.EINVAL)
    iommufd_test_memory_limit = cmd.memory_limit.limit
    return 0


# iommufd_test()'s switch, by op
TEST_OPS = {
    B.IOMMU_TEST_OP_ADD_RESERVED: iommufd_test_add_reserved,
    B.IOMMU_TEST_OP_MOCK_DOMAIN: iommufd_test_mock_domain,
    B.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: iommufd_test_mock_domain,
    B.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: iommufd_test_mock_domain_replace,
    B.IOMMU_TEST_OP_MD_CHECK_MAP: iommufd_test_md_check_pa,
    B.IOMMU_TEST_OP_MD_CHECK_REFS: iommufd_test_md_check_refs,
    B.IOMMU_TEST_OP_MD_CHECK_IOTLB: iommufd_test_md_check_iotlb,
    B.IOMMU_TEST_OP_DEV_CHECK_CACHE: iommufd_test_dev_check_cache,
    B.IOMMU_TEST_OP_CREATE_ACCESS: _access.iommufd_test_create_access,
    B.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: _access.iommufd_test_access_replace_ioas,
    B.IOMMU_TEST_OP_ACCESS_PAGES: _access.iommufd_test_access_pages,
    B.IOMMU_TEST_OP_ACCESS_RW: _access.iommufd_test_access_rw,
    B.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: _access.iommufd_test_access_item_destroy,
    B.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: iommufd_test_set_temp_memory_limit,
    B.IOMMU_TEST_OP_DIRTY: iommufd_test_dirty,
    B.IOMMU_TEST_OP_TRIGGER_IOPF: iommufd_test_trigger_iopf,
    B.IOMMU_TEST_OP_TRIGGER_VEVENT: iommufd_test_trigger_vevent,
    B.IOMMU_TEST_OP_PASID_ATTACH: iommufd_test_pasid_attach,
    B.IOMMU_TEST_OP_PASID_REPLACE: iommufd_test_pasid_replace,
    B.IOMMU_TEST_OP_PASID_DETACH: iommufd_test_pasid_detach,
    B.IOMMU_TEST_OP_PASID_CHECK_HWPT: iommufd_test_pasid_check_hwpt,
    B.IOMMU_TEST_OP_DMABUF_GET: _dmabuf.iommufd_test_dmabuf_get,
    B.IOMMU_TEST_OP_DMABUF_REVOKE: _dmabuf.iommufd_test_dmabuf_revoke,
}


def iommufd_test(ucmd) -> int:
    """iommufd_test(): IOMMU_TEST_CMD by op; an unknown op is EOPNOTSUPP."""
    cmd = ucmd.cmd
    op = TEST_OPS.get(cmd.op)
    if op is None:
        raise IommufdError(errno.EOPNOTSUPP)
    return op(ucmd, cmd)
