"""IO page faults: IOMMU_FAULT_QUEUE_ALLOC and its file (drivers/iommu/iommufd/eventq.c), a
HWPT that reports to it (IOMMU_HWPT_FAULT_ID_VALID, iommufd_hwpt_alloc(),
hw_pagetable.c:411), and faults raised by the mock device (IOMMU_TEST_OP_TRIGGER_IOPF,
iommufd_test_trigger_iopf() in selftest.c, through iommu_report_device_fault() to
iommufd_fault_iopf_handler(), eventq.c:479).

iommufd_fault_alloc() (eventq.c:441) returns an O_CLOEXEC anonymous-inode fd; the open file
holds a user of the fault object (iommufd_eventq_init(), eventq.c:415), so IOMMU_DESTROY is
EBUSY until it is closed. read() (iommufd_fault_fops_read(), eventq.c:124) hands out whole
fault groups of struct iommu_hwpt_pgfault with a cookie from an XA_FLAGS_ALLOC1 xarray and
never blocks; write() (iommufd_fault_fops_write(), eventq.c:182) takes struct
iommu_hwpt_page_response per cookie. Faults are only triggered on a device attached to a fault
HWPT: on a plain paging domain find_fault_handler() finds no iopf handler and the core answers
the fault itself (seen in the VM, no report); a domain with an iopf handler but no iopf
parameters would WARN (io-pgfault.c:231).
On the model the checks only a real anonymous-inode file can pass skip, saying so.
"""
import ctypes
import errno
import fcntl
import os
import select


from model.uapi import T as B
from conformance.tests.helpers import (
    destroy, err, hwpt_alloc, ioas_alloc, kernel_file_semantics, mock_device, mock_domain_replace, read_nohang, run_test_cmd, sz,
    unmapped_va,
)

# the 7.2 fault queue and its selftest hooks (6.12 answers differently: not analysed yet)
from conformance.tests.helpers import require  # noqa: E402

require("IOMMU_HWPT_ALLOC_PASID", "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED")

FAULT = B.IOMMU_HWPT_FAULT_ID_VALID
PGFAULT = sz(B.iommu_hwpt_pgfault)
RESPONSE = sz(B.iommu_hwpt_page_response)


def fault_alloc(fd, flags=0) -> tuple[int, int]:
    """IOMMU_FAULT_QUEUE_ALLOC: (fault_id, fault_fd)."""
    cmd = B.iommu_fault_alloc(size=sz(B.iommu_fault_alloc), flags=flags)
    fd.ioctl(B.IOMMU_FAULT_QUEUE_ALLOC, cmd)
    return cmd.out_fault_id, cmd.out_fault_fd


def trigger(fd, dev_id, addr, grpid=0, perm=B.IOMMU_PGFAULT_PERM_READ, pasid=0):
    run_test_cmd(fd, B.IOMMU_TEST_OP_TRIGGER_IOPF, 0,
                 **{"trigger_iopf.dev_id": dev_id, "trigger_iopf.pasid": pasid, "trigger_iopf.grpid": grpid,
                    "trigger_iopf.perm": perm, "trigger_iopf.addr": addr})


read = read_nohang  # never blocks on the kernel (iommufd_fault_fops_read())


def empty(qfd) -> bool:
    """Nothing to read: iommufd_eventq_fops_poll() (eventq.c) reports EPOLLIN only while the
    deliver list is not empty."""
    return not select.select([qfd], [], [], 0)[0]


def read_faults(qfd, count) -> list:
    data = read(qfd, count)
    assert len(data) % PGFAULT == 0
    return [B.iommu_hwpt_pgfault.from_buffer_copy(data, i) for i in range(0, len(data), PGFAULT)]


def respond(qfd, *pairs) -> int:
    """write() one struct iommu_hwpt_page_response per (cookie, code); returns what write() says."""
    buf = b"".join(bytes(B.iommu_hwpt_page_response(cookie=c, code=k)) for c, k in pairs)
    return os.write(qfd, buf)


def _fault_setup(fd):
    """A mock device attached to a HWPT reporting to a new fault queue:
    (ioas, stdev, idev, fault_id, fault_fd, hwpt)."""
    ioas = ioas_alloc(fd)
    stdev, _, idev = mock_device(fd, ioas)
    fault_id, qfd = fault_alloc(fd)
    hwpt = hwpt_alloc(fd, idev, ioas, FAULT, fault_id=fault_id)
    assert mock_domain_replace(fd, stdev, hwpt) == hwpt
    return ioas, stdev, idev, fault_id, qfd, hwpt


def test_fault_queue_alloc_returns_a_cloexec_fd(iommufd):
    fault_id, qfd = fault_alloc(iommufd)
    try:
        assert fault_id == 1
        assert fcntl.fcntl(qfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        # the open file holds the object
        assert err(destroy, iommufd, fault_id) == errno.EBUSY
    finally:
        os.close(qfd)
    destroy(iommufd, fault_id)
    assert ioas_alloc(iommufd) == 1


def test_fault_queue_alloc_flags_must_be_zero(iommufd):
    assert err(fault_alloc, iommufd, 1) == errno.EOPNOTSUPP
    fault_id, qfd = fault_alloc(iommufd)
    os.close(qfd)
    assert fault_id == 1


def test_fault_file_semantics(iommufd, iommufd_target):
    """iommufd_fault_fops_read() / _write() (eventq.c:124, :182): whole records at offset 0
    (ESPIPE otherwise), an empty queue reads 0 bytes at once, an unknown cookie or response code
    is EINVAL, and a write that fails part way answers what it completed."""
    kernel_file_semantics(iommufd_target)
    _, _, idev, _, qfd, _ = _fault_setup(iommufd)
    try:
        assert os.readlink(f"/proc/self/fd/{qfd}") == "anon_inode:[iommufd-pgfault]"
        assert empty(qfd)
        assert read(qfd, PGFAULT) == b""
        assert err(read, qfd, PGFAULT - 1) == errno.ESPIPE
        assert err(read, qfd, PGFAULT + 1) == errno.ESPIPE
        assert err(os.pread, qfd, PGFAULT, 0) == errno.ESPIPE
        assert err(os.lseek, qfd, 0, os.SEEK_SET) == errno.ESPIPE
        assert err(os.write, qfd, b"\0" * (RESPONSE - 1)) == errno.ESPIPE
        assert err(respond, qfd, (1, B.IOMMUFD_PAGE_RESP_SUCCESS)) == errno.EINVAL
        trigger(iommufd, idev, 0x1000)
        trigger(iommufd, idev, 0x2000)
        a, b = read_faults(qfd, 2 * PGFAULT)
        assert read(qfd, PGFAULT) == b""  # handed out once
        assert err(respond, qfd, (a.cookie, 2)) == errno.EINVAL  # neither SUCCESS nor INVALID
        # the second response names a cookie already answered: the write stops after the first
        assert respond(qfd, (a.cookie, B.IOMMUFD_PAGE_RESP_SUCCESS), (a.cookie, B.IOMMUFD_PAGE_RESP_SUCCESS)) == RESPONSE
        assert err(respond, qfd, (a.cookie, B.IOMMUFD_PAGE_RESP_SUCCESS)) == errno.EINVAL
        assert respond(qfd, (b.cookie, B.IOMMUFD_PAGE_RESP_INVALID)) == RESPONSE
    finally:
        os.close(qfd)


def _raw_read(qfd, addr, count) -> int:
    """read(2) into `addr` as a C program calls it: the count read, or OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    n = libc.read(qfd, ctypes.c_void_p(addr), ctypes.c_size_t(count))
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def test_a_read_that_cannot_take_the_waiting_group_keeps_it(iommufd, iommufd_target):
    """iommufd_fault_fops_read() (eventq.c:141-177): a count with no room for the first group
    (0 here: a mock group is one fault) is EINVAL (eventq.c:144-149), a buffer copy_to_user()
    cannot write is EFAULT (eventq.c:163-168); either way the group goes back on the deliver
    list (iommufd_fault_deliver_restore()) and the next read hands it out."""
    kernel_file_semantics(iommufd_target)
    _, _, idev, _, qfd, _ = _fault_setup(iommufd)
    try:
        trigger(iommufd, idev, 0x1000)
        buf = ctypes.create_string_buffer(PGFAULT)
        assert err(_raw_read, qfd, ctypes.addressof(buf), 0) == errno.EINVAL
        assert err(_raw_read, qfd, unmapped_va(), PGFAULT) == errno.EFAULT
        (f,) = read_faults(qfd, PGFAULT)
        assert (f.dev_id, f.addr) == (idev, 0x1000)
        assert respond(qfd, (f.cookie, B.IOMMUFD_PAGE_RESP_SUCCESS)) == RESPONSE
    finally:
        os.close(qfd)


def test_a_detached_faults_cookie_is_einval(iommufd, iommufd_target):
    """iommufd_auto_response_faults() (eventq.c:19) takes delivered faults out of the response
    xarray when their attachment goes: a late response finds no cookie."""
    kernel_file_semantics(iommufd_target)
    ioas, stdev, idev, _, qfd, _ = _fault_setup(iommufd)
    try:
        trigger(iommufd, idev, 0x1000)
        (f,) = read_faults(qfd, PGFAULT)
        mock_domain_replace(iommufd, stdev, ioas)
        assert err(respond, qfd, (f.cookie, B.IOMMUFD_PAGE_RESP_SUCCESS)) == errno.EINVAL
    finally:
        os.close(qfd)


def test_hwpt_alloc_with_a_fault_queue(iommufd):
    ioas = ioas_alloc(iommufd)
    _, _, idev = mock_device(iommufd, ioas)
    fault_id, qfd = fault_alloc(iommufd)
    os.close(qfd)
    # iommufd_get_fault(): the ID must be a fault object; the HWPT is undone
    assert err(hwpt_alloc, iommufd, idev, ioas, FAULT, fault_id=99) == errno.ENOENT
    assert err(hwpt_alloc, iommufd, idev, ioas, FAULT, fault_id=ioas) == errno.ENOENT
    hwpt = hwpt_alloc(iommufd, idev, ioas, FAULT, fault_id=fault_id)
    assert hwpt == fault_id + 1
    # without the flag fault_id is not read
    assert hwpt_alloc(iommufd, idev, ioas, fault_id=99) == hwpt + 1
    # the HWPT holds the fault object
    assert err(destroy, iommufd, fault_id) == errno.EBUSY
    destroy(iommufd, hwpt)
    destroy(iommufd, fault_id)


def test_trigger_iopf_and_respond(iommufd):
    _, _, idev, _, qfd, _ = _fault_setup(iommufd)
    try:
        trigger(iommufd, idev, 0x12345000, grpid=7, perm=B.IOMMU_PGFAULT_PERM_WRITE)
        (f,) = read_faults(qfd, 4 * PGFAULT)
        # iommufd_compose_fault_message(): the last page of a group, no PASID
        assert f.flags == B.IOMMU_PGFAULT_FLAGS_LAST_PAGE
        assert (f.dev_id, f.pasid, f.grpid, f.perm) == (idev, 0, 7, B.IOMMU_PGFAULT_PERM_WRITE)
        assert (f.addr, f.length, f.cookie) == (0x12345000, 0, 1)
        assert empty(qfd)  # handed out once
        assert respond(qfd, (f.cookie, B.IOMMUFD_PAGE_RESP_SUCCESS)) == RESPONSE
    finally:
        os.close(qfd)


def test_read_hands_out_whole_groups_in_order(iommufd):
    _, _, idev, _, qfd, _ = _fault_setup(iommufd)
    try:
        for i in range(3):
            trigger(iommufd, idev, 0x1000 * (i + 1), grpid=i)
        # a read takes as many whole groups as fit, oldest first
        first = read_faults(qfd, 2 * PGFAULT)
        assert [(f.grpid, f.cookie) for f in first] == [(0, 1), (1, 2)]
        rest = read_faults(qfd, 2 * PGFAULT)
        assert [(f.grpid, f.cookie, f.addr) for f in rest] == [(2, 3, 0x3000)]
        assert empty(qfd)
        # several responses in one write, in any order
        assert respond(qfd, (2, B.IOMMUFD_PAGE_RESP_INVALID), (1, B.IOMMUFD_PAGE_RESP_SUCCESS)) == 2 * RESPONSE
        assert respond(qfd, (3, B.IOMMUFD_PAGE_RESP_SUCCESS)) == RESPONSE
        # cookies are xa_alloc'ed: the lowest free again
        trigger(iommufd, idev, 0x9000)
        assert [f.cookie for f in read_faults(qfd, PGFAULT)] == [1]
    finally:
        os.close(qfd)


def test_detach_answers_the_pending_faults(iommufd):
    ioas, stdev, idev, fault_id, qfd, hwpt = _fault_setup(iommufd)
    try:
        trigger(iommufd, idev, 0x1000)
        trigger(iommufd, idev, 0x2000)
        read_faults(qfd, PGFAULT)
        assert not empty(qfd)
        # iommufd_hwpt_replace_device() -> iommufd_auto_response_faults(): queued and delivered
        # faults of the old attachment are answered INVALID and dropped
        mock_domain_replace(iommufd, stdev, ioas)
        assert empty(qfd)
        destroy(iommufd, hwpt)
    finally:
        os.close(qfd)
    destroy(iommufd, fault_id)


def test_trigger_iopf_wants_a_device(iommufd):
    ioas, stdev, idev, _, qfd, hwpt = _fault_setup(iommufd)
    try:
        for wrong in (ioas, stdev, hwpt, 99):
            assert err(trigger, iommufd, wrong, 0x1000) == errno.ENOENT
        assert empty(qfd)
    finally:
        os.close(qfd)


def test_closing_the_fault_fd_keeps_the_queue_working_for_the_hwpt(iommufd):
    _, _, idev, fault_id, qfd, hwpt = _fault_setup(iommufd)
    os.close(qfd)
    # the object lives on (the HWPT holds it); faults still land in it, unread
    trigger(iommufd, idev, 0x1000)
    assert err(destroy, iommufd, fault_id) == errno.EBUSY
    assert err(destroy, iommufd, hwpt) == errno.EBUSY
