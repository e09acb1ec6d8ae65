"""The model as a server for other processes (conformance/server.py) and the LD_PRELOAD library
(conformance/preload/iommufd_preload.c): a C program's ioctls reach the model with its own
memory, bad input never stops the server, and connections are separate contexts."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from pathlib import Path

import pytest

from conformance.server import FILE_IOMMU, KIND_INSTALL, OP_INSTALLED, OP_OPEN, REP, REQ, Server, build_preload
from model.uapi import SERIES, B

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the preload library")


@pytest.fixture
def server(tmp_path):
    s = Server(str(tmp_path / "sock"), log=open(os.devnull, "w"))
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.close()


def _client(server, kind=FILE_IOMMU, tid=0) -> socket.socket:
    """A raw connection, opened as the preload library does (OP_OPEN of /dev/iommu, or of the
    fail-nth file of thread `tid`)."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.connect(server.path)
    c.send(REQ.pack(OP_OPEN, 0, kind, tid))
    assert REP.unpack(c.recv(64)) == (0, 0, 0)
    return c


def _ioctl(c, request, arg) -> tuple[int, int]:
    c.send(REQ.pack(1, 0, request, arg))
    rc, err, _ = REP.unpack(c.recv(64))
    return rc, err


def compile_c(tmp_path, name) -> Path:
    """conformance/tool_tests/c/NAME.c built with gcc against the project's uapi headers (as
    <linux/iommufd.h> and "iommufd_test.h"), not the machine's."""
    prog = tmp_path / name
    headers = ROOT / "headers" / f"linux_{SERIES.replace('.', '_')}"
    (tmp_path / "include" / "linux").mkdir(parents=True, exist_ok=True)
    shutil.copy(headers / "iommufd.h", tmp_path / "include" / "linux" / "iommufd.h")
    subprocess.run(["gcc", "-O2", "-Wall", "-I", str(tmp_path / "include"), "-I", str(headers), "-o", str(prog),
                    str(ROOT / "conformance" / "tool_tests" / "c" / f"{name}.c")], check=True)
    return prog


def lines_of(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines())


def _exec_c(tmp_path, name) -> dict[str, str]:
    """Build conformance/tool_tests/c/NAME.c and run it under `exec`: its output lines as
    {first word: the rest}."""
    prog = compile_c(tmp_path, name)
    out = subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--", str(prog)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return lines_of(out.stdout)


def test_c_program_through_the_preload_library(tmp_path):
    """An unmodified C program (only <linux/iommufd.h>-style calls): IOAS_ALLOC, MAP of its own
    memory, a bad pointer (EFAULT, as copy_from_user gives), UNMAP."""
    lines = _exec_c(tmp_path, "ioas_basic")
    assert lines["ioas"] == "1"
    assert lines["map"] == "0 iova_page_aligned 1"
    assert lines["bad"] == f"pointer -1 {os.strerror(errno.EFAULT)}"
    assert lines["unmap"] == "0 length 0x10000"


def test_dup_and_fork_share_the_file(tmp_path):
    """dup(), fcntl(F_DUPFD_CLOEXEC) and a fork()ed child reach the same context, as one open
    file does on Linux; closing one descriptor leaves the others working."""
    lines = _exec_c(tmp_path, "dup_fork")
    assert lines["ids"] == "1 2 3"
    assert lines["after"] == "close 4"
    assert lines["child"] == "0"  # the child's IOAS was ID 5, allocated from its own memory
    assert lines["parent"] == "after child 6"


def test_files_the_model_hands_out_and_mmap(tmp_path):
    """Descriptors the model hands out reach the program as its own (the access's number works
    in ACCESS_RW, close-on-exec as get_unused_fd_flags(O_CLOEXEC); closed, it is EBADFD); a
    page request is read from the fault queue's descriptor and answered; the vIOMMU region maps
    shared with the word the mock wrote, a private mapping is EINVAL, and the mapping keeps the
    vIOMMU busy until munmap(); a vEVENTQ's read() follows iommufd_veventq_fops_read() (EINVAL
    for a count under a header or one that fits no record, ESPIPE at a position, 0 when empty,
    whole records only); the fault queue's descriptor keeps the context (and its pins)
    after /dev/iommu's is closed, and closing it releases them before the next call looks.
    The same program on the kernel: conformance/runner_tests/test_preload_vs_kernel.py."""
    lines = _exec_c(tmp_path, "handed_files")
    assert lines["access_fd"] == "1 cloexec"
    assert lines["access_rw"] == "0 through the access"
    assert lines["closed_access"] == f"-1 {os.strerror(errno.EBADFD)}"
    assert lines["fault"] == "40 pasid 1 addr 0xdeadbeaf grpid 2"
    assert lines["response"] == "8"
    assert lines["response_again"] == f"-1 {os.strerror(errno.EINVAL)}"  # the cookie is answered
    assert lines["response_short"] == f"-1 {os.strerror(errno.ESPIPE)}"
    assert lines["fault_short"] == f"-1 {os.strerror(errno.ESPIPE)}"
    assert lines["fault_empty"] == "0"
    assert lines["mmap"] == "1 word 0xbadbeef"
    assert lines["private"] == os.strerror(errno.EINVAL)
    assert lines["destroy_mapped"] == f"-1 {os.strerror(errno.EBUSY)}"
    assert lines["destroy_unmapped"] == "0"
    # the vEVENTQ's reads through the server: the kernel's rules, not a socket's
    assert lines["vevent_empty"] == "0"
    assert lines["vevent_zero"] == f"-1 {os.strerror(errno.EINVAL)}"
    assert lines["vevent_header_only"] == f"-1 {os.strerror(errno.EINVAL)}"
    assert lines["vevent_pread"] == f"-1 {os.strerror(errno.ESPIPE)}"
    assert lines["vevent_one"] == "12 seq 0 virt_id 0x99"
    assert lines["vevent_rest"] == "12 seq 1"
    assert lines["refs_fault_open"] == f"-1 {os.strerror(errno.EIO)}"  # selftest.c:1270
    assert lines["refs_after_close"] == "0"


def test_garbage_and_faults_do_not_stop_the_server(server):
    c = _client(server)
    c.send(b"\x01\x02")  # not a request
    assert REP.unpack(c.recv(64))[:2] == (-1, errno.EINVAL)
    c.send(REQ.pack(7, 0, 0, 0))  # an unknown op
    assert REP.unpack(c.recv(64))[:2] == (-1, errno.EINVAL)
    assert _ioctl(c, B.IOMMU_IOAS_ALLOC, 8) == (-1, errno.EFAULT)  # unmapped in this process
    assert _ioctl(c, 0x1234, 0) == (-1, errno.ENOTTY)
    cmd = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    assert _ioctl(c, B.IOMMU_IOAS_ALLOC, ctypes.addressof(cmd)) == (0, 0)
    assert cmd.out_ioas_id == 1
    c.close()


def test_connections_are_separate_contexts_and_die_with_their_client(server):
    a, b = _client(server), _client(server)
    for c in (a, b):  # each its own file: IDs from 1
        cmd = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        assert _ioctl(c, B.IOMMU_IOAS_ALLOC, ctypes.addressof(cmd)) == (0, 0)
        assert cmd.out_ioas_id == 1
    a.close()  # a client gone: its context is released, the other one is untouched
    destroy = B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=1)
    assert _ioctl(b, B.IOMMU_DESTROY, ctypes.addressof(destroy)) == (0, 0)
    assert _ioctl(b, B.IOMMU_DESTROY, ctypes.addressof(destroy)) == (-1, errno.ENOENT)
    b.close()


def test_preload_library_builds_once(tmp_path):
    assert build_preload() == build_preload()


def test_vm_pin_in_proc_status_shows_the_models_pins(tmp_path):
    """VmPin (mm->pinned_vm) read with fopen() counts what the model pinned for the program:
    4 pages while mapped into an IOAS with a mock domain, nothing after the unmap."""
    lines = _exec_c(tmp_path, "vm_pin")
    assert lines["pinned_kb"] == str(4 * os.sysconf("SC_PAGESIZE") // 1024)
    assert lines["after_unmap_kb"] == "0"


def test_fail_nth_through_the_preload_library(tmp_path):
    """/proc/self/task/<tid>/fail-nth reaches the model's counter: kstrtouint's parsing (the
    whole count answered; only the first 34 bytes read), "%u\\n" reads, and the Nth fault
    point failing: open() of /dev/iommu meets three (the counter reads 0 after one fired),
    IOAS_ALLOC fails at its kzalloc; with the counter off the next IOAS gets ID 1 (the failed
    one took none). The same program on the kernel: runner_tests/test_preload_vs_kernel.py."""
    lines = _exec_c(tmp_path, "fail_nth")
    assert lines["write"] == "2 -"
    assert lines["read"] == "2 3"
    assert lines["garbage"] == f"-1 {os.strerror(errno.EINVAL)}"
    assert lines["long"] == f"-1 {os.strerror(errno.EINVAL)}"
    assert lines["open_fails"] == f"-1 {os.strerror(errno.ENOMEM)}"
    assert lines["after_open"] == "2 0"
    assert lines["open_third"] == f"-1 {os.strerror(errno.ENOMEM)}"  # iommufd_fops_open()'s kzalloc
    assert lines["alloc_fails"] == f"-1 {os.strerror(errno.ENOMEM)}"
    assert lines["alloc"] == "0 id 1"


@pytest.fixture
def server_process(tmp_path):
    """The server in a process of its own (`serve`), so that this test process is a client of
    another process, as a C program is."""
    path = str(tmp_path / "sock")
    log = open(tmp_path / "serve.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "conformance.cli", "serve", "--socket", path], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield SimpleNamespace(path=path, process=p, log=log)
    p.terminate()
    p.wait(10)


def _fault_alloc_until_install(c):
    cmd = B.iommu_fault_alloc(size=ctypes.sizeof(B.iommu_fault_alloc))
    c.send(REQ.pack(1, 0, B.IOMMU_FAULT_QUEUE_ALLOC, ctypes.addressof(cmd)))
    rep, anc, _, _ = c.recvmsg(64, socket.CMSG_SPACE(4))
    assert REP.unpack(rep)[2] == KIND_INSTALL  # the descriptor, waiting for its number
    return cmd, int.from_bytes(anc[0][2][:4], "little")


def test_a_client_that_dies_in_the_middle_of_a_call_takes_nothing_down(server_process):
    """The server hands a descriptor over mid-call and waits for the client's answer: a client
    that closes instead gets the call undone (EIO, not a model failure), and the server goes
    on serving others with their own contexts."""
    c = _client(server_process)
    _, fd = _fault_alloc_until_install(c)
    os.close(fd)
    c.close()  # dies instead of answering
    d = _client(server_process)
    alloc = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    assert _ioctl(d, B.IOMMU_IOAS_ALLOC, ctypes.addressof(alloc)) == (0, 0)
    assert alloc.out_ioas_id == 1
    d.close()
    assert server_process.process.poll() is None
    server_process.log.seek(0)
    assert "failed in the model" not in server_process.log.read()


def test_a_client_that_hangs_holds_only_its_own_context(server_process):
    """A client that does not answer the descriptor it was handed blocks its own call only:
    another connection's calls go through meanwhile, and the late answer completes the call."""
    c = _client(server_process)
    cmd, fd = _fault_alloc_until_install(c)
    d = _client(server_process)
    alloc = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    assert _ioctl(d, B.IOMMU_IOAS_ALLOC, ctypes.addressof(alloc)) == (0, 0)
    d.close()
    c.send(REQ.pack(OP_INSTALLED, 0, 0, fd))  # answers at last: the call completes
    assert REP.unpack(c.recv(64)) == (0, 0, 0)
    assert cmd.out_fault_fd == fd and cmd.out_fault_id == 1
    os.close(fd)
    c.close()
