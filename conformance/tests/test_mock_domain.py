"""The mock device and its domain: IOMMU_TEST_OP_MOCK_DOMAIN / _FLAGS / _REPLACE, MD_CHECK_MAP,
MD_CHECK_REFS, ADD_RESERVED (CONFIG_IOMMUFD_TEST, drivers/iommu/iommufd/selftest.c), and what
attaching a device does to an IOAS (device.c, hw_pagetable.c, io_pagetable.c).

iommufd_test_mock_domain() (selftest.c:1051) allocates the selftest object first, then binds
the mock device (iommufd_device_bind(): the idev object) and attaches it
(iommufd_device_attach(), device.c:995), which for an IOAS creates an automatic HWPT
(iommufd_device_auto_get_domain(), device.c:856). The HWPT's domain is amdv1 with a 2 KiB
granule (MOCK_PAGE_SIZE) and the aperture MOCK_APERTURE_START..MOCK_APERTURE_LAST
(mock_domain_alloc_pgtable(), selftest.c:427); iopt_table_add_domain() (io_pagetable.c:1141)
reserves everything outside the aperture and raises the IOAS's IOVA alignment to the granule.
"""
import ctypes
import errno

import pytest

from model.uapi import T as B
from conformance.tests.helpers import (  # noqa: I001
    require, touched,
    PAGE, U64, add_reserved, allow, check_map, check_refs, destroy, err, hwpt_alloc, ioas_alloc,
    iova_ranges, map_, map_file, mock_device, mock_domain_replace, run_test_cmd, unmap, unmapped_va,
)

# the generic_pt mock IOMMU of 7.2 (2 KiB granule, huge variant); 6.12 had another mock
require("MOCK_PAGE_SIZE", "MOCK_IOMMUPT_HUGE", "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED")

START = B.MOCK_APERTURE_START
LAST = B.MOCK_APERTURE_LAST
MPAGE = B.MOCK_PAGE_SIZE



def test_mock_domain_ids_in_allocation_order(iommufd):
    # selftest object first (iommufd_object_alloc), then iommufd_device_bind() (idev), then
    # the automatic HWPT (iommufd_hwpt_paging_alloc()); the IDs are the lowest free.
    ioas = ioas_alloc(iommufd)
    assert mock_device(iommufd, ioas) == (2, 4, 3)
    # a second device on the same IOAS reuses the automatic HWPT (device.c:878)
    assert mock_device(iommufd, ioas) == (5, 4, 6)
    assert ioas_alloc(iommufd) == 7


def test_mock_domain_of_a_missing_object_is_enoent_and_allocates_nothing(iommufd):
    ioas = ioas_alloc(iommufd)
    for pt in (0, 99):
        assert err(mock_device, iommufd, pt) == errno.ENOENT
    # iommufd_object_abort() gave the selftest object's and the idev's IDs back
    assert ioas_alloc(iommufd) == ioas + 1


def test_mock_domain_of_a_device_id_is_einval(iommufd):
    # iommufd_device_change_pt() (device.c:965): neither an IOAS nor a HWPT
    ioas = ioas_alloc(iommufd)
    _, _, idev = mock_device(iommufd, ioas)
    assert err(mock_device, iommufd, idev) == errno.EINVAL


def test_mock_domain_flags(iommufd):
    ioas = ioas_alloc(iommufd)
    assert mock_device(iommufd, ioas, 0) == (2, 4, 3)
    assert mock_device(iommufd, ioas, B.MOCK_FLAGS_DEVICE_NO_DIRTY)[1] == 4
    assert mock_device(iommufd, ioas, B.MOCK_FLAGS_DEVICE_PASID)[1] == 4


@pytest.mark.parametrize("flags", [1 << 1, 1 << 3, 1 << 31])
def test_mock_domain_unknown_device_flags_is_einval(iommufd, flags):
    # mock_dev_create() (selftest.c:983): dev_flags & ~valid_flags
    ioas = ioas_alloc(iommufd)
    assert err(mock_device, iommufd, ioas, flags) == errno.EINVAL
    assert ioas_alloc(iommufd) == ioas + 1


def test_unknown_op_is_eopnotsupp(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    for op in (0, 1000, 0xFFFFFFFF):
        assert err(run_test_cmd, iommufd, op, ioas) == errno.EOPNOTSUPP


def test_attach_narrows_iova_ranges_to_the_aperture(iommufd):
    ioas = ioas_alloc(iommufd)
    assert iova_ranges(iommufd, ioas) == ([(0, U64)], 1)
    stdev, _, _ = mock_device(iommufd, ioas)
    # iopt_table_add_domain(): reserved [0, aperture_start) and (aperture_end, ULONG_MAX];
    # the alignment is the domain's smallest page (1 << __ffs(pgsize_bitmap))
    assert iova_ranges(iommufd, ioas) == ([(START, LAST)], MPAGE)
    destroy(iommufd, stdev)
    assert iova_ranges(iommufd, ioas) == ([(0, U64)], 1)


def test_map_outside_the_aperture_after_attach_is_einval(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    buf = touched(2)
    # iopt_check_iova(): a reserved IOVA intersects the range
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=START - PAGE) == errno.EINVAL
    assert err(map_, iommufd, ioas, buf.addr, 2 * PAGE, iova=LAST + 1 - PAGE) == errno.EINVAL
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=LAST + 1) == errno.EINVAL
    assert map_(iommufd, ioas, buf.addr, PAGE, iova=LAST + 1 - PAGE) == LAST + 1 - PAGE
    # an automatic IOVA lands inside the aperture
    auto = map_(iommufd, ioas, buf.addr, PAGE)
    assert START <= auto and auto + PAGE - 1 <= LAST


def test_attach_with_an_area_outside_the_aperture_is_eaddrinuse(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=PAGE)
    # iopt_reserve_iova() finds the area: the attach (and the device) is undone
    assert err(mock_device, iommufd, ioas) == errno.EADDRINUSE
    assert iova_ranges(iommufd, ioas) == ([(0, U64)], 1)
    assert ioas_alloc(iommufd) == ioas + 1
    assert unmap(iommufd, ioas, 0, U64) == PAGE


def test_attach_with_an_area_finer_than_the_mock_page_is_eaddrinuse(iommufd):
    # iopt_check_iova_alignment() (io_pagetable.c:1113): existing areas must conform to the
    # new alignment
    ioas = ioas_alloc(iommufd)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, 1024, iova=START)
    assert err(mock_device, iommufd, ioas) == errno.EADDRINUSE
    assert unmap(iommufd, ioas, 0, U64) == 1024
    map_(iommufd, ioas, buf.addr + 1024, MPAGE, iova=START)  # page_offset 1024
    assert err(mock_device, iommufd, ioas) == errno.EADDRINUSE
    assert unmap(iommufd, ioas, 0, U64) == MPAGE
    map_(iommufd, ioas, buf.addr + MPAGE, MPAGE, iova=START + MPAGE)
    mock_device(iommufd, ioas)


def test_mock_page_alignment_rules_after_attach(iommufd):
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = mock_device(iommufd, ioas)
    buf = touched(2)
    # half a CPU page is a whole mock page: iova, length and the offset in the page are
    # multiples of MOCK_PAGE_SIZE
    assert map_(iommufd, ioas, buf.addr + MPAGE, MPAGE, iova=START + MPAGE) == START + MPAGE
    check_map(iommufd, hwpt, START + MPAGE, MPAGE, buf.addr + MPAGE)
    assert err(map_, iommufd, ioas, buf.addr, 1024, iova=START + PAGE) == errno.EINVAL
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=START + PAGE + 1024) == errno.EINVAL
    assert err(map_, iommufd, ioas, buf.addr + 1024, PAGE, iova=START + PAGE) == errno.EINVAL
    assert unmap(iommufd, ioas, 0, U64) == MPAGE


def test_check_map(iommufd):
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = mock_device(iommufd, ioas)
    buf = touched(4)
    map_(iommufd, ioas, buf.addr, 4 * PAGE, iova=START)
    check_map(iommufd, hwpt, START, 4 * PAGE, buf.addr)
    check_map(iommufd, hwpt, START + MPAGE, 3 * PAGE, buf.addr + MPAGE)
    # iommufd_test_md_check_pa() (selftest.c:1187): a translation that differs is EINVAL,
    # and so is an IOVA with no translation
    assert err(check_map, iommufd, hwpt, START, PAGE, buf.addr + PAGE) == errno.EINVAL
    assert err(check_map, iommufd, hwpt, START + 4 * PAGE, PAGE, buf.addr) == errno.EINVAL
    # alignment to the domain's page size
    assert err(check_map, iommufd, hwpt, START + 1, MPAGE, buf.addr) == errno.EINVAL
    assert err(check_map, iommufd, hwpt, START, MPAGE + 1, buf.addr) == errno.EINVAL
    assert err(check_map, iommufd, hwpt, START, MPAGE, buf.addr + 1) == errno.EINVAL
    # the user VA is looked up with get_user_pages_fast()
    assert err(check_map, iommufd, hwpt, START, PAGE, unmapped_va()) == errno.EFAULT
    # after unmap nothing translates
    unmap(iommufd, ioas, START, 4 * PAGE)
    assert err(check_map, iommufd, hwpt, START, PAGE, buf.addr) == errno.EINVAL


def test_check_map_wants_a_mock_paging_hwpt(iommufd):
    # get_md_pagetable(): IOMMUFD_OBJ_HWPT_PAGING, else iommufd_get_object()'s ENOENT
    ioas = ioas_alloc(iommufd)
    stdev, hwpt, idev = mock_device(iommufd, ioas)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START)
    for wrong in (ioas, stdev, idev, 0, 99):
        assert err(check_map, iommufd, wrong, START, PAGE, buf.addr) == errno.ENOENT
    check_map(iommufd, hwpt, START, PAGE, buf.addr)


def test_check_refs_counts_pins(iommufd):
    ioas = ioas_alloc(iommufd)
    buf = touched(4)
    check_refs(iommufd, buf.addr, 4 * PAGE, 0)
    map_(iommufd, ioas, buf.addr, 4 * PAGE, iova=START)
    check_refs(iommufd, buf.addr, 4 * PAGE, 0)  # no domain: nothing pinned
    stdev, _, _ = mock_device(iommufd, ioas)
    check_refs(iommufd, buf.addr, 4 * PAGE, 1)  # filled into the new domain
    # a second domain of the same IOAS reads the pages from the first: still one pin
    mock_device(iommufd, ioas)
    check_refs(iommufd, buf.addr, 4 * PAGE, 1)
    # iommufd_test_md_check_refs(): a different count is EIO
    assert err(check_refs, iommufd, buf.addr, 4 * PAGE, 0) == errno.EIO
    assert err(check_refs, iommufd, buf.addr, 4 * PAGE, 2) == errno.EIO
    unmap(iommufd, ioas, 0, U64)
    check_refs(iommufd, buf.addr, 4 * PAGE, 0)


def test_map_file_past_eof_into_a_domain_is_einval(iommufd):
    """IOMMU_IOAS_MAP_FILE pins the file's pages at once when a domain is attached; a range
    reaching past EOF (even one byte of its last page) is EINVAL from memfd_pin_folios()
    (mm/gup.c:3463) and maps nothing (found by the differential machine)."""
    import os

    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    mfd = os.memfd_create("iommufd-eof")
    try:
        os.ftruncate(mfd, 32 * PAGE)
        assert err(map_file, iommufd, ioas, mfd, PAGE, 2 << 20, iova=START) == errno.EINVAL
        assert err(map_file, iommufd, ioas, mfd, 0, 32 * PAGE + 1, iova=START) == errno.EINVAL
        os.ftruncate(mfd, 32 * PAGE + 100)  # a partial last page is past EOF too
        assert err(map_file, iommufd, ioas, mfd, 0, 33 * PAGE, iova=START) == errno.EINVAL
        # nothing was left behind: the same fixed IOVA maps (EEXIST otherwise)
        assert map_file(iommufd, ioas, mfd, PAGE, 31 * PAGE, iova=START) == START
    finally:
        os.close(mfd)


def test_check_refs_arguments(iommufd):
    ioas = ioas_alloc(iommufd)
    mock_device(iommufd, ioas)
    buf = touched(2)
    assert err(check_refs, iommufd, buf.addr + 1, PAGE, 0) == errno.EINVAL
    assert err(check_refs, iommufd, buf.addr, PAGE + 1, 0) == errno.EINVAL
    assert err(check_refs, iommufd, U64 & ~(PAGE - 1), 2 * PAGE, 0) == errno.EINVAL  # overflow
    assert err(check_refs, iommufd, unmapped_va(), PAGE, 0) == errno.EFAULT
    check_refs(iommufd, buf.addr, 0, 5)  # nothing to check


def test_add_reserved(iommufd):
    ioas = ioas_alloc(iommufd)
    add_reserved(iommufd, ioas, 0x100000, 0x100000)
    assert iova_ranges(iommufd, ioas)[0] == [(0, 0xFFFFF), (0x200000, U64)]
    buf = touched(1)
    assert err(map_, iommufd, ioas, buf.addr, PAGE, iova=0x1FF000) == errno.EINVAL
    assert err(map_, iommufd, ioas, buf.addr, 2 * PAGE, iova=0xFF000) == errno.EINVAL
    # reserved ranges may overlap each other
    add_reserved(iommufd, ioas, 0x180000, 0x100000)
    assert iova_ranges(iommufd, ioas)[0] == [(0, 0xFFFFF), (0x280000, U64)]
    # an attach adds the aperture's reservations on top
    mock_device(iommufd, ioas)
    add_reserved(iommufd, ioas, START, 0x100000)
    assert iova_ranges(iommufd, ioas)[0] == [(START + 0x100000, LAST)]
    auto = map_(iommufd, ioas, buf.addr, PAGE)
    assert auto >= START + 0x100000


def test_add_reserved_errors(iommufd):
    ioas = ioas_alloc(iommufd)
    _, hwpt, _ = mock_device(iommufd, ioas)
    buf = touched(1)
    map_(iommufd, ioas, buf.addr, PAGE, iova=START + 0x10000)
    # iommufd_test_add_reserved() (selftest.c:1163)
    assert err(add_reserved, iommufd, ioas, START, 0) == errno.EINVAL
    assert err(add_reserved, iommufd, ioas, U64 - PAGE + 2, PAGE) == errno.EOVERFLOW
    assert err(add_reserved, iommufd, hwpt, START, PAGE) == errno.ENOENT
    assert err(add_reserved, iommufd, 99, START, PAGE) == errno.ENOENT
    # iopt_reserve_iova(): an area there is EADDRINUSE, and nothing is reserved
    before = iova_ranges(iommufd, ioas)
    assert err(add_reserved, iommufd, ioas, START + 0x10000 + PAGE - 1, PAGE) == errno.EADDRINUSE
    assert iova_ranges(iommufd, ioas) == before


def test_add_reserved_over_allowed_iovas_is_eaddrinuse(iommufd):
    ioas = ioas_alloc(iommufd)
    allow(iommufd, ioas, [(START, START + 0xFFFF)])
    mock_device(iommufd, ioas)
    assert err(add_reserved, iommufd, ioas, START + 0x8000, 1) == errno.EADDRINUSE
    add_reserved(iommufd, ioas, START + 0x10000, 1)


def test_destroy_order(iommufd):
    ioas = ioas_alloc(iommufd)
    stdev, hwpt, idev = mock_device(iommufd, ioas)
    # the attachment holds the HWPT and the idev, the HWPT holds the IOAS
    assert err(destroy, iommufd, ioas) == errno.EBUSY
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
    assert err(destroy, iommufd, idev) == errno.EBUSY
    # iommufd_selftest_destroy(): detach, unbind; the automatic HWPT goes with its last device
    destroy(iommufd, stdev)
    assert err(destroy, iommufd, hwpt) == errno.ENOENT
    assert err(destroy, iommufd, idev) == errno.ENOENT
    destroy(iommufd, ioas)
    assert ioas_alloc(iommufd) == 1


def test_automatic_hwpt_lives_while_a_device_uses_it(iommufd):
    ioas = ioas_alloc(iommufd)
    stdev1, hwpt, _ = mock_device(iommufd, ioas)
    stdev2, hwpt2, _ = mock_device(iommufd, ioas)
    assert hwpt2 == hwpt
    destroy(iommufd, stdev1)
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
    assert iova_ranges(iommufd, ioas) == ([(START, LAST)], MPAGE)
    destroy(iommufd, stdev2)
    assert err(destroy, iommufd, hwpt) == errno.ENOENT
    assert iova_ranges(iommufd, ioas) == ([(0, U64)], 1)


def test_mock_domain_replace_to_another_ioas(iommufd):
    a, b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    stdev, hwpt_a, idev = mock_device(iommufd, a)
    buf = touched(2)
    map_(iommufd, a, buf.addr, PAGE, iova=START)
    map_(iommufd, b, buf.addr + PAGE, PAGE, iova=START)
    hwpt_b = mock_domain_replace(iommufd, stdev, b)
    assert hwpt_b not in (a, b, stdev, idev, hwpt_a)
    check_map(iommufd, hwpt_b, START, PAGE, buf.addr + PAGE)
    # the old automatic HWPT lost its last device and was destroyed; A is free again
    assert err(destroy, iommufd, hwpt_a) == errno.ENOENT
    assert iova_ranges(iommufd, a) == ([(0, U64)], 1)
    assert iova_ranges(iommufd, b) == ([(START, LAST)], MPAGE)
    check_refs(iommufd, buf.addr, PAGE, 0)
    check_refs(iommufd, buf.addr + PAGE, PAGE, 1)
    assert err(destroy, iommufd, b) == errno.EBUSY
    destroy(iommufd, a)


def test_mock_domain_replace_to_a_hwpt(iommufd):
    ioas = ioas_alloc(iommufd)
    stdev, auto, idev = mock_device(iommufd, ioas)
    hwpt = hwpt_alloc(iommufd, idev, ioas)
    assert mock_domain_replace(iommufd, stdev, hwpt) == hwpt
    assert err(destroy, iommufd, auto) == errno.ENOENT
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
    # replacing with the HWPT already attached changes nothing
    assert mock_domain_replace(iommufd, stdev, hwpt) == hwpt
    # back to the IOAS: a new automatic HWPT (a manual one is never picked, device.c:879)
    auto2 = mock_domain_replace(iommufd, stdev, ioas)
    assert auto2 != hwpt
    destroy(iommufd, hwpt)  # the manual HWPT is free once no device uses it


def test_mock_domain_replace_errors(iommufd):
    ioas = ioas_alloc(iommufd)
    stdev, hwpt, idev = mock_device(iommufd, ioas)
    # iommufd_test_get_selftest_obj(): the ID must be the selftest object
    for wrong in (ioas, hwpt, idev, 99):
        assert err(mock_domain_replace, iommufd, wrong, ioas) == errno.ENOENT
    assert err(mock_domain_replace, iommufd, stdev, 99) == errno.ENOENT
    assert err(mock_domain_replace, iommufd, stdev, idev) == errno.EINVAL
    assert mock_domain_replace(iommufd, stdev, ioas) == hwpt


def test_replace_onto_an_ioas_with_an_area_outside_the_aperture_fails_and_keeps_the_old(iommufd):
    a, b = ioas_alloc(iommufd), ioas_alloc(iommufd)
    stdev, hwpt_a, _ = mock_device(iommufd, a)
    buf = touched(1)
    map_(iommufd, b, buf.addr, PAGE, iova=PAGE)
    assert err(mock_domain_replace, iommufd, stdev, b) == errno.EADDRINUSE
    assert iova_ranges(iommufd, b) == ([(0, U64)], 1)
    assert iova_ranges(iommufd, a) == ([(START, LAST)], MPAGE)
    assert err(destroy, iommufd, hwpt_a) == errno.EBUSY


def test_test_cmd_reserved_field_is_not_checked(iommufd):
    # iommufd_test() never reads __reserved
    ioas = ioas_alloc(iommufd)
    cmd = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas,
                           __reserved=0xFFFFFFFF)
    iommufd.ioctl(B.IOMMU_TEST_CMD, cmd)
    assert cmd.mock_domain.out_stdev_id == 2
