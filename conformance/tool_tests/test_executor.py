"""The guest executor's protocol (conformance/executor), on this machine: the executor runs as a
child on one end of a socket pair instead of a virtio-serial port, and its steps are calls on
the memfd it shares by number with this process (this machine has no /dev/iommu; the VM runner
tests drive iommufd through it: runner_tests/test_executor_vm.py)."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import socket
import subprocess

import pytest

from conformance import executor, explore

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the executor")
FIOQSIZE = 0x5460  # the file's size, written where the argument points (fs/ioctl.c)
FIOCLEX = 0x5451  # no argument


@pytest.fixture
def channel():
    os.pwrite(explore.MEMFD, b"memfd says hi", 0)  # the host's memfd content goes to the executor's
    host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([str(executor.build()), "--fd", str(child.fileno())], pass_fds=[child.fileno()])
    child.close()
    assert len(host.recv(executor.REP.size, socket.MSG_WAITALL)) == executor.REP.size  # ready
    ch = executor.Channel(host)
    ch.hello(explore.user_memory(), explore.MEMFD, explore.CLOSED_FD)
    yield ch
    ch.close()
    assert proc.wait(timeout=10) == 0  # the executor leaves quietly when the host goes
    os.pwrite(explore.MEMFD, bytes(13), 0)


def _file(ch, buffers=None):
    """An ExecutorFile on the executor's memfd (same number as ours) instead of /dev/iommu."""
    f = executor.ExecutorFile.__new__(executor.ExecutorFile)
    f.ch, f.buffers, f.open, f.fd = ch, buffers or {}, True, explore.MEMFD
    return f


def test_the_struct_comes_back_as_the_kernel_left_it(channel):
    size = ctypes.c_longlong(-1)
    r = channel.call(executor.OP_IOCTL, fd=explore.MEMFD, request=FIOQSIZE, arg=bytes(size))
    assert (r.err, int.from_bytes(r.arg, "little")) == (0, explore.MEMFD_LEN)


def test_an_int_argument_and_the_kernels_errno(channel):
    assert channel.call(executor.OP_IOCTL, fd=explore.MEMFD, request=FIOCLEX, value=0).err == 0
    assert channel.call(executor.OP_IOCTL, fd=explore.MEMFD, request=0x12345678, value=0).err == errno.ENOTTY
    assert channel.call(executor.OP_IOCTL, fd=explore.CLOSED_FD, request=FIOCLEX).err == errno.EBADF


def test_a_pointed_to_buffer_is_placed_there_and_its_pointer_restored(channel):
    """ExecutorFile describes a registered buffer a struct word points to; the executor patches
    the word to its copy for the call (FIOQSIZE writes into the struct, which here holds that
    word: the kernel overwrote it, so the patched value does not come back) and sends the
    buffer's bytes back."""
    data = (ctypes.c_uint8 * 24)(*range(24))
    struct = (ctypes.c_uint64 * 2)(0, ctypes.addressof(data))
    f = _file(channel, {ctypes.addressof(data): (data, "data")})
    assert f.submit(FIOQSIZE, struct)() == 0
    assert struct[0] == explore.MEMFD_LEN  # written by the kernel
    assert struct[1] == ctypes.addressof(data)  # the host's address again, not the executor's copy
    assert bytes(data) == bytes(range(24))


def test_user_memory_and_the_memfd_start_as_the_hosts(channel):
    assert channel.memory_differences() == []
    r = channel.call(executor.OP_READ, fd=explore.MEMFD, request=13)
    assert (r.err, r.arg) == (0, b"memfd says hi")
    m = _file(channel).mmap(mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED)
    assert m.u32(0) == int.from_bytes(b"memf", "little")
    m.munmap()
    assert channel.call(executor.OP_MUNMAP, value=m.handle or 0).err == errno.EINVAL or m.handle is None


def test_a_write_the_other_side_did_not_make_is_a_difference(channel):
    """What only the model wrote (here: this process into MEM) shows as a difference naming
    the region and offset, both sides' bytes."""
    ctypes.memset(explore.MEM + 5 * mmap.PAGESIZE + 3, 0xAB, 2)
    try:
        got = channel.memory_differences()
        assert got == [f"MEM + {5 * mmap.PAGESIZE + 3:#x}: model abab000000000000 != kernel 0000000000000000"]
    finally:
        ctypes.memset(explore.MEM + 5 * mmap.PAGESIZE + 3, 0, 2)
    assert channel.memory_differences() == []


def test_requests_beyond_the_window_do_not_deadlock_and_answer_in_order(channel):
    size = bytes(8)
    tickets = [channel.submit(executor.OP_IOCTL, fd=explore.MEMFD, request=FIOQSIZE, arg=size)
               for _ in range(executor.Channel.WINDOW * 4)]
    answers = [channel.reply(t) for t in reversed(tickets)]
    assert all(int.from_bytes(a.arg, "little") == explore.MEMFD_LEN for a in answers)


def test_read_and_close_of_a_descriptor_there(channel, tmp_path):
    f = _file(channel)
    assert f.read_fd(explore.MEMFD, 5) == b"memfd"
    with pytest.raises(OSError) as e:
        f.close_fd(explore.CLOSED_FD)
    assert e.value.errno == errno.EBADF


def test_a_replay_runs_the_recorded_requests_and_times_them(channel, tmp_path):
    channel.record = []
    for _ in range(50):
        channel.call(executor.OP_IOCTL, fd=explore.MEMFD, request=FIOQSIZE, arg=bytes(8))
    ran, seconds = channel.replay(channel.record, tmp_path)
    assert ran == 50 and 0 < seconds < 10
    # the executor goes on answering afterwards (its descriptors but the memfd were reset)
    assert channel.call(executor.OP_IOCTL, fd=explore.MEMFD, request=FIOCLEX).err == 0


def test_the_executor_keeps_only_the_hosts_capabilities(channel):
    """A pagemap read answers frames only with CAP_SYS_ADMIN: the executor sees what this
    process sees (model/memory.py machine_pfns() on our own MEM)."""
    from model.memory import machine_pfns

    vas = [explore.MEM, explore.MEM + mmap.PAGESIZE]
    ours = machine_pfns(os.getpid(), vas)
    theirs = channel.guest_pfns(0, vas)
    assert (ours is None) == (theirs is None)


def test_pread_and_pwrite_at_an_offset_and_the_pages_they_change(channel):
    """OP_PREAD / OP_PWRITE (a VFIO device's region reads and writes in the guest) on the shared
    memfd: the bytes land at the offset, and the page a write changed comes back as changed."""
    dev = executor.ExecutorDevice.__new__(executor.ExecutorDevice)
    dev.ch, dev.buffers, dev.open, dev.fd, dev.bdf = channel, {}, True, explore.MEMFD, "memfd"
    assert dev.pwrite(b"region bytes", 3 * 4096 + 5) == 12
    assert dev.pread(12, 3 * 4096 + 5) == b"region bytes"
    assert dev.pread(4, explore.MEMFD_LEN + 8) == b""  # past the end: 0 bytes, as pread(2)
    with pytest.raises(OSError) as e:
        executor.ExecutorDevice.pread(type("D", (), {"ch": channel, "fd": explore.CLOSED_FD})(), 4, 0)
    assert e.value.errno == errno.EBADF
    # the executor's memfd is its own copy (described, not shared): the page the write changed
    # came back, and differs from ours exactly where it wrote
    assert os.pread(explore.MEMFD, 12, 3 * 4096 + 5) != b"region bytes"
    assert channel.memory_differences() == [f"memfd + {3 * 4096 + 5:#x}: model {bytes(8).hex()} "
                                            f"!= kernel {b'region b'.hex()}"]


def test_a_device_that_is_not_there_is_the_errno_of_its_sysfs_lookup(channel):
    for bdf, want in (("0000:7f:1f.7", errno.ENOENT), ("../../x", errno.EINVAL), ("", errno.EINVAL)):
        assert channel.call(executor.OP_OPEN_DEVICE, arg=bdf.encode()).err == want
