"""PASID attach, replace and detach of a mock device (IOMMU_TEST_OP_PASID_*, selftest.c:1829-1945,
over iommufd_device_attach/replace/detach() with a PASID, device.c): the rules a VMM meets when
it gives a guest process address space its own domain.

- A PASID takes only a HWPT allocated with IOMMU_HWPT_ALLOC_PASID, and only while the device's
  RID is attached to such a HWPT too (iommufd_hwpt_pasid_compat()); a device without PASID
  support takes none.
- The attachment holds the HWPT (IOMMU_DESTROY: EBUSY) until detach; detaching a PASID that is
  not attached is no error.
- PASID_CHECK_HWPT compares the PASID's domain with a HWPT's (0: nothing attached).
Every test detaches what it attached: the mock's destroy detaches only the RID, and a PASID left
attached at close makes the kernel WARN (see model/tests/test_release.py).
"""
import errno

import pytest

from conformance.tests.helpers import destroy, err, hwpt_alloc, ioas_alloc, mock_device, mock_domain_replace, run_test_cmd
from model.uapi import T as B

if not hasattr(B, "IOMMU_TEST_OP_PASID_ATTACH"):
    pytest.skip(f"Linux {B.KERNEL_VERSION}'s selftest has no PASID ops", allow_module_level=True)

PASID = 100
COMPAT = B.IOMMU_HWPT_ALLOC_PASID


def attach(fd, stdev, pt_id, pasid=PASID):
    run_test_cmd(fd, B.IOMMU_TEST_OP_PASID_ATTACH, stdev, **{"pasid_attach.pasid": pasid, "pasid_attach.pt_id": pt_id})


def replace(fd, stdev, pt_id, pasid=PASID):
    run_test_cmd(fd, B.IOMMU_TEST_OP_PASID_REPLACE, stdev,
                 **{"pasid_replace.pasid": pasid, "pasid_replace.pt_id": pt_id})


def detach(fd, stdev, pasid=PASID):
    run_test_cmd(fd, B.IOMMU_TEST_OP_PASID_DETACH, stdev, **{"pasid_detach.pasid": pasid})


def check(fd, stdev, hwpt_id, pasid=PASID):
    run_test_cmd(fd, B.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev, **{"pasid_check.pasid": pasid,
                                                                "pasid_check.hwpt_id": hwpt_id})


@pytest.fixture
def dev(iommufd):
    """(ioas, stdev, idev, rid_hwpt, hwpt, hwpt2): a PASID-capable mock device whose RID is on a
    PASID-compatible HWPT, and two more such HWPTs."""
    ioas = ioas_alloc(iommufd)
    stdev, _, idev = mock_device(iommufd, ioas, B.MOCK_FLAGS_DEVICE_PASID)
    rid, hwpt, hwpt2 = (hwpt_alloc(iommufd, idev, ioas, COMPAT) for _ in range(3))
    mock_domain_replace(iommufd, stdev, rid)
    yield ioas, stdev, idev, rid, hwpt, hwpt2
    detach(iommufd, stdev)


def test_attach_check_replace_detach(iommufd, dev):
    _, stdev, _, _, hwpt, hwpt2 = dev
    detach(iommufd, stdev)  # nothing attached: no error
    check(iommufd, stdev, 0)
    attach(iommufd, stdev, hwpt)
    check(iommufd, stdev, hwpt)
    assert err(check, iommufd, stdev, hwpt2) == errno.EINVAL
    assert err(check, iommufd, stdev, 0) == errno.EINVAL
    check(iommufd, stdev, 0, pasid=PASID + 1)  # other PASIDs stay detached
    replace(iommufd, stdev, hwpt2)
    check(iommufd, stdev, hwpt2)
    detach(iommufd, stdev)
    check(iommufd, stdev, 0)


def test_attach_twice_is_ebusy(iommufd, dev):
    _, stdev, _, _, hwpt, hwpt2 = dev
    attach(iommufd, stdev, hwpt)
    assert err(attach, iommufd, stdev, hwpt2) == errno.EBUSY
    check(iommufd, stdev, hwpt)


def test_a_hwpt_without_alloc_pasid_is_refused(iommufd, dev):
    ioas, stdev, idev, _, hwpt, _ = dev
    plain = hwpt_alloc(iommufd, idev, ioas)
    assert err(attach, iommufd, stdev, plain) == errno.EINVAL
    check(iommufd, stdev, 0)
    attach(iommufd, stdev, hwpt)
    assert err(replace, iommufd, stdev, plain) == errno.EINVAL
    check(iommufd, stdev, hwpt)  # a failed replace changes nothing


def test_the_rid_must_be_on_a_pasid_compatible_hwpt(iommufd, dev):
    ioas, stdev, idev, rid, hwpt, _ = dev
    parent = hwpt_alloc(iommufd, idev, ioas, B.IOMMU_HWPT_ALLOC_NEST_PARENT)
    mock_domain_replace(iommufd, stdev, parent)
    assert err(attach, iommufd, stdev, hwpt) == errno.EINVAL
    mock_domain_replace(iommufd, stdev, rid)
    attach(iommufd, stdev, hwpt)
    check(iommufd, stdev, hwpt)


def test_replace_at_a_pasid_nothing_is_attached_to_is_einval(iommufd, dev):
    """iommufd_device_do_replace() (device.c:788-791): no attachment at the PASID, EINVAL; the
    PASID stays detached."""
    _, stdev, _, _, hwpt, _ = dev
    assert err(replace, iommufd, stdev, hwpt) == errno.EINVAL
    check(iommufd, stdev, 0)


def test_the_rid_keeps_a_pasid_compatible_hwpt_while_a_pasid_is_attached(iommufd, dev):
    """Replacing the RID's HWPT (MOCK_DOMAIN_REPLACE, IOMMU_NO_PASID) goes through
    iommufd_hwpt_replace_device() (device.c:565) -> iommufd_hwpt_pasid_compat(): a HWPT without
    IOMMU_HWPT_ALLOC_PASID is EINVAL while any PASID is attached (device.c:450-456); once the
    PASID is detached it is taken."""
    ioas, stdev, idev, rid, hwpt, _ = dev
    plain = hwpt_alloc(iommufd, idev, ioas)
    attach(iommufd, stdev, hwpt)
    assert err(mock_domain_replace, iommufd, stdev, plain) == errno.EINVAL
    check(iommufd, stdev, hwpt)
    detach(iommufd, stdev)
    assert mock_domain_replace(iommufd, stdev, plain) == plain
    mock_domain_replace(iommufd, stdev, rid)


def test_a_device_without_pasids_takes_none(iommufd):
    ioas = ioas_alloc(iommufd)
    stdev, _, idev = mock_device(iommufd, ioas)
    hwpt = hwpt_alloc(iommufd, idev, ioas, COMPAT)
    mock_domain_replace(iommufd, stdev, hwpt)
    assert err(attach, iommufd, stdev, hwpt) == errno.EINVAL
    check(iommufd, stdev, 0)


def test_the_attachment_holds_the_hwpt(iommufd, dev):
    _, stdev, _, _, hwpt, _ = dev
    attach(iommufd, stdev, hwpt)
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
    detach(iommufd, stdev)
    destroy(iommufd, hwpt)


def test_a_failed_replace_keeps_the_old_domain(iommufd, dev):
    """The mock fails every second non-blocking set of PASID 1024 with ENOMEM
    (mock_domain_set_dev_pasid_nop()), to exercise the core's rollback: the PASID stays on the
    HWPT it had."""
    _, stdev, _, _, hwpt, hwpt2 = dev
    attach(iommufd, stdev, hwpt, pasid=1024)
    try:
        assert err(replace, iommufd, stdev, hwpt2, pasid=1024) == errno.ENOMEM
        check(iommufd, stdev, hwpt, pasid=1024)
        replace(iommufd, stdev, hwpt2, pasid=1024)
        check(iommufd, stdev, hwpt2, pasid=1024)
    finally:
        detach(iommufd, stdev, pasid=1024)
