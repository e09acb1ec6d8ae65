"""vIOMMU event queues: IOMMU_VEVENTQ_ALLOC and its file (drivers/iommu/iommufd/eventq.c), fed
by the mock device through IOMMU_TEST_OP_TRIGGER_VEVENT (iommufd_test_trigger_vevent(),
selftest.c:1783 -> iommufd_viommu_report_event(), driver.c:133).

iommufd_veventq_alloc() (eventq.c:504) checks flags, __reserved and type, then the depth
(1..1 << 19), then the vIOMMU, and allows one queue per type per vIOMMU (EEXIST); it never asks
the driver about the type. It returns an O_CLOEXEC anonymous-inode fd
("[iommufd-viommu-event]") whose open file holds a user of the queue, which holds the vIOMMU.
Events are a struct iommufd_vevent_header (flags, sequence) and the type's data (for the selftest
type, struct iommu_viommu_event_selftest: the vDEVICE's virt_id as a u32). The sequence counts
every report from 0; once depth events are unread, a report becomes the queue's single
lost-events header (IOMMU_VEVENTQ_FLAG_LOST_EVENTS, no data) at the tail with the newest
sequence (iommufd_vevent_handler(), iommufd_private.h:651), which the next report that fits
replaces. iommufd_veventq_fops_read() (eventq.c:311) never blocks: an empty queue reads 0
bytes; a read hands out whole records in order, and is EINVAL if shorter than a header or than
the first record. The mock device reports only when attached to a nested HWPT of a vIOMMU on
which it has a vDEVICE with a nonzero virt_id (selftest.c:1797; the virt_id is taken at
attach, mock_domain_nop_attach(), selftest.c:214).
On the model the checks only a real anonymous-inode file can pass skip, saying so.
"""
import errno
import fcntl
import os
import select
from types import SimpleNamespace

import pytest

from model.uapi import T as B
from conformance.tests.helpers import (  # noqa: I001
    require,
    U64, VEVENT_HDR, VEVENT_SELFTEST, destroy, err, hwpt_alloc, hwpt_selftest, kernel_file_semantics,
    mock_domain_replace, nest_parent, parse_vevents, read_nohang, read_vevents, trigger_vevent, vdevice_alloc,
    veventq_alloc, viommu_alloc,
)

# the 7.2 vEVENTQ with its selftest type and trigger (6.12 has no vEVENTQ)
require("IOMMU_VEVENTQ_ALLOC", "IOMMU_HW_QUEUE_ALLOC", "IOMMU_TEST_OP_TRIGGER_VEVENT", "iommufd_vevent_header",
        "MOCK_PAGE_SIZE")

LOST = B.IOMMU_VEVENTQ_FLAG_LOST_EVENTS
HDR = VEVENT_HDR
EV = VEVENT_SELFTEST  # a header and a struct iommu_viommu_event_selftest
MAX_DEPTH = 1 << 19  # VEVENTQ_MAX_DEPTH, eventq.c:502


def _attached(fd, virt_id=0x99, depth=8):
    """A mock device with a vDEVICE (`virt_id`) on a selftest vIOMMU, attached to a nested HWPT
    of that vIOMMU, and a selftest vEVENTQ of `depth` on it (qfd: its descriptor)."""
    ioas, stdev, _, idev, parent = nest_parent(fd)
    viommu = viommu_alloc(fd, idev, parent)
    vdev = vdevice_alloc(fd, viommu, idev, virt_id)
    nested = hwpt_alloc(fd, idev, viommu, data_type=B.IOMMU_HWPT_DATA_SELFTEST, data=hwpt_selftest())
    assert mock_domain_replace(fd, stdev, nested) == nested
    qid, qfd = veventq_alloc(fd, viommu, depth)
    return SimpleNamespace(ioas=ioas, stdev=stdev, idev=idev, parent=parent, viommu=viommu, vdev=vdev,
                           nested=nested, qid=qid, qfd=qfd)


def empty(qfd) -> bool:
    """Nothing to read: iommufd_eventq_fops_poll() (eventq.c:378) reports EPOLLIN only while the
    deliver list is not empty."""
    return not select.select([qfd], [], [], 0)[0]


def writable(qfd) -> bool:
    return bool(select.select([], [qfd], [], 0)[1])


def ev(seq, virt_id=0x99):
    return (0, seq, virt_id)


def lost(seq):
    return (LOST, seq, None)


@pytest.fixture
def attached(iommufd):
    s = _attached(iommufd)
    yield s
    os.close(s.qfd)


# IOMMU_VEVENTQ_ALLOC

def test_veventq_alloc(iommufd):
    ioas, stdev, _, idev, parent = nest_parent(iommufd)
    viommu = viommu_alloc(iommufd, idev, parent)
    # eventq.c:512: flags, __reserved, the DEFAULT type; :515 the depth; all before the vIOMMU
    assert err(veventq_alloc, iommufd, 99, flags=1) == errno.EOPNOTSUPP
    assert err(veventq_alloc, iommufd, 99, reserved=1) == errno.EOPNOTSUPP
    assert err(veventq_alloc, iommufd, 99, type=B.IOMMU_VEVENTQ_TYPE_DEFAULT) == errno.EOPNOTSUPP
    assert err(veventq_alloc, iommufd, 99, depth=0) == errno.EINVAL
    assert err(veventq_alloc, iommufd, 99, depth=MAX_DEPTH + 1) == errno.EINVAL
    for wrong in (0, 99, ioas, stdev, idev, parent):
        assert err(veventq_alloc, iommufd, wrong) == errno.ENOENT
    qid, qfd = veventq_alloc(iommufd, viommu, depth=MAX_DEPTH)
    try:
        assert qid == 7
        assert fcntl.fcntl(qfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        # one per type per vIOMMU (:524), before an ID is taken
        assert err(veventq_alloc, iommufd, viommu, depth=1) == errno.EEXIST
        # the open file holds the queue, the queue holds the vIOMMU
        assert err(destroy, iommufd, qid) == errno.EBUSY
        assert err(destroy, iommufd, viommu) == errno.EBUSY
        # the core never asks the driver about the type: any other one is another queue
        others = [veventq_alloc(iommufd, viommu, type=t) for t in (B.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 0x12345)]
        assert [q for q, _ in others] == [8, 9]
        for q, f in others:
            os.close(f)
            destroy(iommufd, q)
    finally:
        os.close(qfd)
    # its release gave the user back
    destroy(iommufd, qid)
    destroy(iommufd, viommu)
    assert viommu_alloc(iommufd, idev, parent) == 6


def test_veventq_file_semantics(iommufd, iommufd_target):
    """iommufd_veventq_fops_read() (eventq.c:311), INIT_EVENTQ_FOPS(read, NULL) (:498): a read
    shorter than a header, or than the first record, is EINVAL; an empty queue reads 0 at once;
    there is no write (EINVAL) and no position (ESPIPE); poll never says writable (EPOLLOUT is
    the fault queue's only)."""
    kernel_file_semantics(iommufd_target)
    s = _attached(iommufd)
    qfd = s.qfd
    try:
        assert os.readlink(f"/proc/self/fd/{qfd}") == "anon_inode:[iommufd-viommu-event]"
        assert empty(qfd) and not writable(qfd)
        for n in (0, 1, HDR - 1):
            assert err(read_nohang, qfd, n) == errno.EINVAL
        assert read_nohang(qfd, HDR) == b""
        assert read_nohang(qfd, 4096) == b""
        assert err(os.write, qfd, bytes(EV)) == errno.EINVAL
        assert err(os.pread, qfd, EV, 0) == errno.ESPIPE
        assert err(os.lseek, qfd, 0, os.SEEK_SET) == errno.ESPIPE
        trigger_vevent(iommufd, s.idev, 2)
        assert not empty(qfd) and not writable(qfd)
        # the first record must fit whole
        for n in (0, HDR - 1, HDR, EV - 1):
            assert err(read_nohang, qfd, n) == errno.EINVAL
        # then as many whole records as fit: a partial second one stays queued
        assert parse_vevents(read_nohang(qfd, 2 * EV - 1)) == [ev(0)]
        assert parse_vevents(read_nohang(qfd, 2 * EV - 1)) == [ev(1)]
        assert empty(qfd)
        assert read_nohang(qfd, EV) == b""
    finally:
        os.close(qfd)


# IOMMU_TEST_OP_TRIGGER_VEVENT and read()

def test_trigger_vevent_and_read(iommufd, attached):
    s = attached
    assert empty(s.qfd)
    trigger_vevent(iommufd, s.idev)
    assert not empty(s.qfd)
    # a header (flags 0, sequence from 0) and the vDEVICE's virt_id
    assert read_vevents(s.qfd) == [ev(0)]
    assert empty(s.qfd)  # handed out once
    trigger_vevent(iommufd, s.idev, 3)
    assert read_vevents(s.qfd, 3 * EV) == [ev(1), ev(2), ev(3)]
    assert empty(s.qfd)


def test_read_takes_the_oldest_whole_records(iommufd, attached):
    s = attached
    trigger_vevent(iommufd, s.idev, 5)
    assert read_vevents(s.qfd, 2 * EV) == [ev(0), ev(1)]
    assert read_vevents(s.qfd, EV) == [ev(2)]
    assert read_vevents(s.qfd, 10 * EV) == [ev(3), ev(4)]
    assert empty(s.qfd)


def test_trigger_vevent_errors(iommufd):
    ioas, stdev, _, idev, parent = nest_parent(iommufd)
    viommu = viommu_alloc(iommufd, idev, parent)
    nested = hwpt_alloc(iommufd, idev, viommu, data_type=B.IOMMU_HWPT_DATA_SELFTEST, data=hwpt_selftest())
    # the device is not on a vIOMMU (mdev->viommu is NULL): ENOENT
    assert err(trigger_vevent, iommufd, idev) == errno.ENOENT
    vdev = vdevice_alloc(iommufd, viommu, idev, 0x99)
    assert err(trigger_vevent, iommufd, idev) == errno.ENOENT  # a vDEVICE, but not attached
    mock_domain_replace(iommufd, stdev, nested)
    # no vEVENTQ of the selftest type: iommufd_viommu_report_event() (driver.c:146)
    assert err(trigger_vevent, iommufd, idev) == errno.EOPNOTSUPP
    other, ofd = veventq_alloc(iommufd, viommu, type=B.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3)
    try:
        assert err(trigger_vevent, iommufd, idev) == errno.EOPNOTSUPP  # another type is no help
        qid, qfd = veventq_alloc(iommufd, viommu)
        try:
            for wrong in (0, 99, ioas, stdev, parent, viommu, vdev, nested, qid):
                assert err(trigger_vevent, iommufd, wrong) == errno.ENOENT
            trigger_vevent(iommufd, idev)
            # only the selftest type's queue gets it
            assert empty(ofd)
            assert read_vevents(qfd) == [ev(0)]
        finally:
            os.close(qfd)
    finally:
        os.close(ofd)


@pytest.mark.parametrize("virt_id, reported", [(0, None), (1, 1), (1 << 32, 0), ((1 << 32) | 0x99, 0x99),
                                               (U64, 0xFFFFFFFF)])
def test_vevent_virt_id_is_a_u32(iommufd, virt_id, reported):
    """iommufd_test_trigger_vevent() (selftest.c:1797): no event for virt_id 0 (ENOENT), else the
    low 32 bits of it (struct iommu_viommu_event_selftest has a u32), even when they are 0."""
    s = _attached(iommufd, virt_id=virt_id)
    try:
        if reported is None:
            assert err(trigger_vevent, iommufd, s.idev) == errno.ENOENT
            assert empty(s.qfd)
        else:
            trigger_vevent(iommufd, s.idev)
            assert read_vevents(s.qfd) == [ev(0, reported)]
    finally:
        os.close(s.qfd)


def test_vevent_virt_id_is_taken_at_attach(iommufd, attached):
    """mock_domain_nop_attach() (selftest.c:214) records the vIOMMU and virt_id when the device
    attaches to a nested HWPT of another vIOMMU than before; nothing updates them later."""
    s = attached
    # nothing holds a vDEVICE, not even an attachment through its vIOMMU
    destroy(iommufd, s.vdev)
    trigger_vevent(iommufd, s.idev)
    assert read_vevents(s.qfd) == [ev(0, 0x99)]
    vdevice_alloc(iommufd, s.viommu, s.idev, 0x55)
    assert mock_domain_replace(iommufd, s.stdev, s.nested) == s.nested
    trigger_vevent(iommufd, s.idev)
    assert read_vevents(s.qfd) == [ev(1, 0x99)]
    # detached from the vIOMMU: nothing to report; attached again: the new virt_id
    mock_domain_replace(iommufd, s.stdev, s.ioas)
    assert err(trigger_vevent, iommufd, s.idev) == errno.ENOENT
    mock_domain_replace(iommufd, s.stdev, s.nested)
    trigger_vevent(iommufd, s.idev)
    assert read_vevents(s.qfd) == [ev(2, 0x55)]


# depth and lost events

def test_overflow_ends_in_a_lost_events_header(iommufd):
    s = _attached(iommufd, depth=2)
    try:
        trigger_vevent(iommufd, s.idev, 3)
        # the third report found the queue full: a header with LOST_EVENTS and its sequence
        assert read_vevents(s.qfd) == [ev(0), ev(1), lost(2)]
        assert empty(s.qfd)
        # room again, and the sequence goes on
        trigger_vevent(iommufd, s.idev)
        assert read_vevents(s.qfd) == [ev(3)]
    finally:
        os.close(s.qfd)


def test_depth_counts_unread_events(iommufd):
    s = _attached(iommufd, depth=2)
    try:
        trigger_vevent(iommufd, s.idev, 2)
        assert read_vevents(s.qfd, EV) == [ev(0)]
        # one read: one free slot
        trigger_vevent(iommufd, s.idev)
        assert read_vevents(s.qfd) == [ev(1), ev(2)]
        trigger_vevent(iommufd, s.idev, 2)
        assert read_vevents(s.qfd) == [ev(3), ev(4)]
    finally:
        os.close(s.qfd)


def test_the_lost_events_header_moves_and_goes(iommufd, iommufd_target):
    """There is one lost-events header per queue (struct iommufd_veventq): each report that does
    not fit moves it to the tail with its own sequence; a report that fits takes its place when it
    is last, leaving only the gap in the sequence (iommufd_vevent_handler())."""
    kernel_file_semantics(iommufd_target)  # in process a socket read of a count short of a record splits it
    s = _attached(iommufd, depth=2)
    try:
        trigger_vevent(iommufd, s.idev, 4)
        assert read_vevents(s.qfd, 2 * EV) == [ev(0), ev(1)]
        # a lost-events header alone fits a header-sized read
        assert read_vevents(s.qfd, HDR) == [lost(3)]
        trigger_vevent(iommufd, s.idev, 3)  # 4, 5, lost 6
        assert read_vevents(s.qfd, EV) == [ev(4)]
        trigger_vevent(iommufd, s.idev)  # 7 fits: the header goes
        assert read_vevents(s.qfd) == [ev(5), ev(7)]
        # a lost-events header needs room for itself after the records before it
        trigger_vevent(iommufd, s.idev, 3)  # 8, 9, lost 10
        assert read_vevents(s.qfd, 2 * EV + HDR - 1) == [ev(8), ev(9)]
        assert read_vevents(s.qfd, HDR) == [lost(10)]
        trigger_vevent(iommufd, s.idev, 3)  # 11, 12, lost 13
        assert read_vevents(s.qfd, 2 * EV + HDR) == [ev(11), ev(12), lost(13)]
    finally:
        os.close(s.qfd)


# lifetimes

def test_events_reach_a_queue_whose_file_is_closed(iommufd):
    s = _attached(iommufd, depth=2)
    os.close(s.qfd)
    # iommufd_eventq_fops_release() only drops its user: the queue lives and takes reports
    trigger_vevent(iommufd, s.idev, 3)
    # destroying it drops what was pending (iommufd_veventq_abort())
    destroy(iommufd, s.qid)
    assert err(trigger_vevent, iommufd, s.idev) == errno.EOPNOTSUPP
    # a new queue starts empty, at sequence 0
    qid, qfd = veventq_alloc(iommufd, s.viommu, 2)
    try:
        assert qid == s.qid
        assert empty(qfd)
        trigger_vevent(iommufd, s.idev)
        assert read_vevents(qfd) == [ev(0)]
    finally:
        os.close(qfd)


def test_the_veventq_file_outlives_the_iommufd(open_iommufd, iommufd_target):
    """iommufd_eventq_init() (eventq.c:431): the file holds the context (iommufd_ctx_get()), so
    closing /dev/iommu destroys nothing while it is open; its events stay readable."""
    kernel_file_semantics(iommufd_target)
    fd = open_iommufd()
    s = _attached(fd)
    try:
        trigger_vevent(fd, s.idev, 2)
        fd.close()
        assert read_vevents(s.qfd) == [ev(0), ev(1)]
        assert empty(s.qfd)
    finally:
        os.close(s.qfd)
