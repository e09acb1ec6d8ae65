"""The kernel's side of `explore --target vm`: a small C executor in the guest (executor.c), fed
over a virtio-serial port, while hypothesis, the explore machine and the model stay on the host.

The host sends each kernel step as a described request (the ioctl number, the struct's bytes,
the small buffers its pointers name) and reads the answer (errno, the struct and buffers
afterwards, the pages of user memory that changed, new kernel log lines). Requests are
pipelined: explore sends the kernel's step first and answers the model's while the guest runs
it, and a batch (an invariant's queries) costs one round trip.

- Guest: boots the VM on the executor and connects to its port (one per worker).
- Channel: the protocol (executor.c's struct req / struct rep), and a record of the requests
  for OP_REPLAY, the executor alone running the same steps (`bench explore --target vm`).
- ExecutorFile: the guest's /dev/iommu with KernelFile's interface (ioctl, mmap, close), plus
  submit() for pipelining and read_fd()/close_fd() for the descriptors the kernel handed out.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from model.uapi import B

SOURCE = Path(__file__).with_name("executor.c")
PORT = "iommufd.executor"
(OP_HELLO, OP_OPEN, OP_IOCTL, OP_MMAP, OP_MUNMAP, OP_READ, OP_CLOSE, OP_RESET, OP_REPLAY, OP_QUIT,
 OP_PAGEMAP, OP_OPEN_DEVICE, OP_PREAD, OP_PWRITE) = range(1, 15)
REQ = struct.Struct("<IHHiIQQiiII")  # len, op, nbufs, fd, arg_len, request, value, prot, flags, nmem, check
REP = struct.Struct("<IiqIHHIIQ")  # len, err, rc, arg_len, nbufs, npages, kmsg_len, word, value
BUFDESC = struct.Struct("<II")  # offset of the pointer in the arg, length
MEMW = struct.Struct("<IIII")  # region, offset, length, pad
PAGE_ID = struct.Struct("<II")  # region, page index
HELLO = struct.Struct("<IIQQ")  # memfd length, a closed descriptor's number, capabilities, RLIMIT_MEMLOCK
PAGE = 4096


def _pad(n: int) -> int:
    return (n + 7) & ~7


def build() -> Path:
    """The executor, built with gcc into the cache (keyed by its source's hash)."""
    from conformance.server import build_c

    return build_c(SOURCE, "executor", "")


class ExecutorGone(RuntimeError):
    """The guest or its executor stopped answering."""


@dataclass
class Reply:
    rc: int
    err: int
    arg: bytes
    bufs: list[bytes]
    pages: dict[tuple[int, int], bytes]
    kmsg: list[str]
    word: int
    value: int


@dataclass
class Region:
    """A stretch of the host's user memory the guest mirrors: MEM (0) or the memfd's pages (1)."""
    address: int
    length: int
    guest: bytearray = field(init=False)  # what the guest's copy holds, from the pages it sent back

    def __post_init__(self):
        self.guest = bytearray(self.length)

    def host(self) -> bytes:
        return ctypes.string_at(self.address, self.length)


class Channel:
    """Requests to the executor and its replies, in order; a request may be answered later."""

    WINDOW = 32  # requests in flight at most

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=1 << 20)
        self.sent = self.received = 0
        self.replies: dict[int, Reply] = {}
        self.kmsg: list[str] = []
        self.regions: list[Region] = []
        self.record: list[bytes] | None = None  # requests kept for OP_REPLAY
        self._buf_lengths: dict[int, tuple[int, ...]] = {}  # ticket -> lengths of the buffers it sent

    def close(self) -> None:
        self.rfile.close()  # the socket's descriptor stays open while its file object does
        self.sock.close()

    def submit(self, op: int, *, fd: int = -1, request: int = 0, value: int = 0, arg: bytes = b"",
               bufs=(), mem=(), prot: int = 0, flags: int = 0, check: bool = True) -> int:
        """Send one request; its ticket for reply(). bufs: (offset of the pointer in arg, the
        bytes it points to); mem: (region, offset, bytes) to write into the guest's user memory;
        check: the executor compares user memory afterwards and sends the pages that changed."""
        parts = [arg, b"\0" * (_pad(len(arg)) - len(arg))]
        for off, data in bufs:
            parts += [BUFDESC.pack(off, len(data)), data, b"\0" * (_pad(len(data)) - len(data))]
        for region, off, data in mem:
            parts += [MEMW.pack(region, off, len(data), 0), data, b"\0" * (_pad(len(data)) - len(data))]
        body = b"".join(parts)
        while self.sent - self.received >= self.WINDOW:  # the guest blocks on a full channel: take replies
            self._take_reply()
        msg = REQ.pack(REQ.size + len(body), op, len(bufs), fd, len(arg), request & (2**64 - 1), value & (2**64 - 1),
                       prot, flags, len(mem), int(check)) + body
        try:
            self.sock.sendall(msg)
        except OSError as e:
            raise ExecutorGone(f"the guest's executor went away: {e}") from None
        if self.record is not None and op not in (OP_HELLO, OP_REPLAY, OP_QUIT):
            self.record.append(msg)
        self.sent += 1
        self._buf_lengths[self.sent] = tuple(len(d) for _, d in bufs)
        return self.sent

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ExecutorGone("the guest's executor went away (its channel closed)")
        return data

    def reply(self, ticket: int) -> Reply:
        """The reply to request `ticket` (earlier ones are read and kept)."""
        while ticket not in self.replies:
            self._take_reply()
        return self.replies.pop(ticket)

    def _take_reply(self) -> None:
        """Read the next reply; the guest's pages it carries update the regions' guest copies."""
        length, err, rc, arg_len, nbufs, npages, kmsg_len, word, value = REP.unpack(self._read(REP.size))
        body = memoryview(self._read(length - REP.size))
        r = Reply(rc, err, bytes(body[:arg_len]), [], {}, [], word, value)
        pos = _pad(arg_len)
        self.received += 1
        for n in self._buf_lengths.pop(self.received, ())[:nbufs]:
            r.bufs.append(bytes(body[pos:pos + n]))
            pos += _pad(n)
        for _ in range(npages):
            region, index = PAGE_ID.unpack_from(body, pos)
            page = bytes(body[pos + PAGE_ID.size:pos + PAGE_ID.size + PAGE])
            r.pages[region, index] = page
            self.regions[region].guest[index * PAGE:(index + 1) * PAGE] = page
            pos += PAGE_ID.size + PAGE
        if kmsg_len:
            r.kmsg = bytes(body[pos:pos + kmsg_len]).decode(errors="replace").splitlines()
            self.kmsg += r.kmsg
        self.replies[self.received] = r

    def call(self, op: int, **kw) -> Reply:
        return self.reply(self.submit(op, **kw))

    def hello(self, regions: list[Region], memfd: int, closed_fd: int) -> None:
        """Map the guest's MEM at MEM's address, its memfd at the memfd's number, both filled as
        the host's are now; the executor keeps only the capabilities and memory lock limit this
        process has (the model answers as this process)."""
        import resource

        from model import libc

        self.regions = regions
        mem = [(i, off, r.host()[off:off + PAGE]) for i, r in enumerate(regions)
               for off in range(0, r.length, PAGE) if any(r.host()[off:off + PAGE])]
        for i, off, data in mem:
            regions[i].guest[off:off + PAGE] = data
        caps = libc.effective_caps(os.getpid())
        memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] & (2**64 - 1)
        r = self.call(OP_HELLO, fd=memfd, request=regions[0].length, value=regions[0].address, mem=mem,
                      arg=HELLO.pack(regions[1].length, closed_fd, caps, memlock))
        if r.err:
            raise ExecutorGone(f"the executor could not set up the guest's user memory: {os.strerror(r.err)}")

    def _differing_pages(self):
        """(region index, offset, our page, the guest's page) where the two differ."""
        for i, r in enumerate(self.regions):
            host = r.host()
            if host == r.guest:
                continue
            for off in range(0, r.length, PAGE):
                if host[off:off + PAGE] != r.guest[off:off + PAGE]:
                    yield i, off, host[off:off + PAGE], bytes(r.guest[off:off + PAGE])

    def sync(self) -> list[tuple[int, int, bytes]]:
        """The pages where our user memory and the guest's differ, as writes for a request's
        `mem` (the guest's copies updated as if sent): an example starts from equal memory."""
        out = list(self._differing_pages())
        for i, off, ours, _ in out:
            self.regions[i].guest[off:off + PAGE] = ours
        return [(i, off, ours) for i, off, ours, _ in out]

    def memory_differences(self) -> list[str]:
        """Where the host's user memory (what the model wrote) and the guest's (what the kernel
        wrote) differ: each page's first differing byte, both sides' 8 bytes from there."""
        out = []
        for i, off, a, b in self._differing_pages():
            at = next(j for j in range(PAGE) if a[j] != b[j])
            out.append(f"{('MEM', 'memfd')[i]} + {off + at:#x}: model {a[at:at + 8].hex()} "
                       f"!= kernel {b[at:at + 8].hex()}")
        return out

    def guest_pfns(self, pid: int, vas: list[int]) -> list[int] | None:
        """model/memory.py's PFN_SOURCE: the guest's frames of the pages at `vas` (the same user
        addresses there), or None when any is not shown."""
        r = self.call(OP_PAGEMAP, arg=b"".join(va.to_bytes(8, "little") for va in vas))
        pfns = [int.from_bytes(r.arg[i:i + 8], "little") for i in range(0, len(r.arg), 8)]
        return None if r.err or not all(pfns) else pfns

    def replay(self, requests: list[bytes], directory: Path) -> tuple[int, float]:
        """The recorded requests run in the guest with no host in the loop: (requests, seconds).
        The file goes through the guest's scratch directory (`directory`)."""
        path = Path(directory) / f"replay-{os.getpid()}.bin"
        path.write_bytes(b"".join(requests))
        try:
            r = self.call(OP_REPLAY, arg=str(path).encode())
        finally:
            path.unlink(missing_ok=True)
        if r.err:
            raise ExecutorGone(f"the replay failed: {os.strerror(r.err)}")
        return r.value, r.rc / 1e9


class RemoteMapping:
    """An mmap() the executor made: its first word, read there."""

    def __init__(self, channel: Channel, handle: int, word: int):
        self.ch, self.handle, self.word = channel, handle, word

    def u32(self, offset: int) -> int:
        if offset != 0:
            raise ValueError("the executor reads a mapping's first word only")
        return self.word

    def munmap(self) -> None:
        if self.handle is not None:
            self.ch.call(OP_MUNMAP, value=self.handle)
            self.handle = None


def _raise(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))  # EAGAIN comes out as BlockingIOError, as os.read's


class ExecutorFile:
    """The guest's /dev/iommu for one explore example, with KernelFile's interface.

    `buffers` maps an address to the ctypes object there (the Recorder's registry of argument
    buffers): a struct word holding one is described to the executor with the object's bytes,
    and the bytes the kernel left there are written back into the object."""

    def __init__(self, channel: Channel, buffers: dict):
        self.ch, self.buffers = channel, buffers
        r = channel.call(OP_OPEN, mem=channel.sync())
        _raise(r.err)
        self.fd = r.rc  # the guest's descriptor
        self.open = True

    def fileno(self) -> int:
        """The guest's descriptor number, for a call that takes it (VFIO_DEVICE_BIND_IOMMUFD)."""
        return self.fd

    def submit(self, request: int, arg=0):
        """Send the call and return a function that waits for its answer: it writes the struct
        and the buffers back as the kernel left them and answers as ioctl() does (the return
        value, or OSError with the kernel's errno)."""
        objs = []
        if isinstance(arg, int):
            ticket = self.ch.submit(OP_IOCTL, fd=self.fd, request=request, value=arg, check=self._user_pointer(arg))
        else:
            raw = bytes(arg)
            bufs = []
            for off in range(0, len(raw) - 7, 8):
                value = int.from_bytes(raw[off:off + 8], "little")
                if value in self.buffers:
                    obj = self.buffers[value][0]
                    bufs.append((off, bytes(obj)))
                    objs.append(obj)
            # the kernel writes user memory through a pointer it is given, or (the mock's access
            # ops, IOMMU_TEST_CMD) through pages an IOAS maps: only then is it compared
            check = request == B.IOMMU_TEST_CMD or any(
                self._user_pointer(int.from_bytes(raw[off:off + 8], "little")) for off in range(0, len(raw) - 7, 8))
            ticket = self.ch.submit(OP_IOCTL, fd=self.fd, request=request, arg=raw, bufs=bufs, check=check)

        def answer():
            r = self.ch.reply(ticket)
            if not isinstance(arg, int):
                if isinstance(arg, bytearray):
                    arg[:] = r.arg
                else:
                    ctypes.memmove(ctypes.addressof(arg), r.arg, len(r.arg))
                for obj, data in zip(objs, r.bufs):
                    ctypes.memmove(ctypes.addressof(obj), data, len(data))
            _raise(r.err)
            return r.rc

        return answer

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True):
        return self.submit(request, arg)()

    def _user_pointer(self, value: int) -> bool:
        """Whether `value` points into the user memory the guest mirrors (its guard page too)."""
        return any(r.address <= value < r.address + r.length + PAGE for r in self.ch.regions)

    def mmap(self, length: int, prot: int, flags: int, offset: int = 0) -> RemoteMapping:
        r = self.ch.call(OP_MMAP, fd=self.fd, request=length, value=offset, prot=prot, flags=flags)
        _raise(r.err)
        return RemoteMapping(self.ch, r.rc, r.word)

    def read_fd(self, fd: int, count: int) -> bytes:
        """A non-blocking read() of a descriptor the kernel handed out."""
        r = self.ch.call(OP_READ, fd=fd, request=count)
        _raise(r.err)
        return r.arg

    def close_fd(self, fd: int) -> None:
        _raise(self.ch.call(OP_CLOSE, fd=fd).err)

    def close(self) -> None:
        """Close the file and every descriptor and mapping the example's steps made."""
        if self.open:
            self.open = False
            self.ch.call(OP_RESET)

    def new_reports(self) -> list[str]:
        """Kernel reports logged since the last call (conformance/vm.py parse_findings())."""
        from conformance.vm import parse_findings

        lines, self.ch.kmsg = self.ch.kmsg, []
        return parse_findings("\n".join(lines)) if lines else []


class ExecutorDevice(ExecutorFile):
    """A VFIO device cdev in the guest (the device at PCI address `bdf`, bound to vfio-pci), with
    ModelVfioDevice's file calls: ioctl, pread and pwrite at region offsets. Closed with the
    example (OP_RESET closes every descriptor the steps made)."""

    def __init__(self, channel: Channel, buffers: dict, bdf: str):
        self.ch, self.buffers, self.bdf = channel, buffers, bdf
        r = channel.call(OP_OPEN_DEVICE, arg=bdf.encode())
        _raise(r.err)
        self.fd = r.rc
        self.open = True

    def pread(self, n: int, offset: int) -> bytes:
        r = self.ch.call(OP_PREAD, fd=self.fd, request=n, value=offset)
        _raise(r.err)
        return r.arg

    def pwrite(self, data: bytes, offset: int) -> int:
        r = self.ch.call(OP_PWRITE, fd=self.fd, value=offset, arg=bytes(data), check=True)
        _raise(r.err)
        return r.rc

    def close(self) -> None:
        if self.open:
            self.open = False
            _raise(self.ch.call(OP_CLOSE, fd=self.fd).err)


class Guest:
    """The test kernel's VM running the executor, its port connected: `with Guest(kernel,
    profile) as channel:`. Leaving it stops the executor and waits for the guest to go down;
    `result` is then the VM run (its console's findings are kernel reports)."""

    BOOT_TIMEOUT = 600  # seconds to the executor's first message (TCG boots on a loaded machine)

    def __init__(self, kernel: str | None = None, profile: str | None = None, timeout: float = 3600):
        self.kernel, self.profile, self.timeout = kernel, profile, timeout
        self.result = self.error = None
        self.sock = self.thread = None

    def _run(self, image: Path, argv: list[str], devices: tuple[str, ...], env) -> None:
        from conformance import vm

        try:
            self.result = vm.run_in_vm(image, argv, timeout=self.timeout, profile=self.profile, devices=devices,
                                       env=env)
        except vm.VmError as e:
            self.error, self.result = e, e.result
        except Exception as e:  # noqa: BLE001 - reported by __enter__ or __exit__
            self.error = e

    def __enter__(self) -> Channel:
        from codegen.debian import DependencyError, FetchError
        from conformance.kbuild import KernelBuildError
        from conformance.run import kernel_for

        try:
            image, series = kernel_for(self.kernel)
            exe = build()
        except (OSError, ValueError, KernelBuildError, DependencyError, FetchError,
                subprocess.CalledProcessError) as e:
            raise ExecutorGone(f"no guest to run the executor in: {e}") from None
        self._dir = tempfile.TemporaryDirectory(prefix="iommufd-executor-")
        path = f"{self._dir.name}/port"
        devices = ("-device", "virtio-serial-pci,id=iommufd-exec",
                   "-chardev", f"socket,id=iommufd-exec,path={path},server=on,wait=off",
                   "-device", f"virtserialport,bus=iommufd-exec.0,chardev=iommufd-exec,name={PORT}")
        env = {"IOMMUFD_TARGET_SERIES": series} if series else None
        self.thread = threading.Thread(target=self._run, args=(image, [str(exe), PORT], devices, env), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.BOOT_TIMEOUT
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._check(deadline)
                time.sleep(0.05)
        self.sock.settimeout(1)
        ready = b""
        while len(ready) < REP.size:
            try:
                chunk = self.sock.recv(REP.size - len(ready))
            except socket.timeout:
                self._check(deadline)
                continue
            if not chunk:
                self._check(0)
            ready += chunk
        self.sock.settimeout(None)
        return Channel(self.sock)

    def _check(self, deadline: float) -> None:
        if not self.thread.is_alive() or time.monotonic() > deadline:
            self.thread.join(timeout=5)
            if self.error is not None:
                why = str(self.error)
            elif self.result is not None:
                why = (f"the guest exited ({self.result.returncode}) before its executor answered:\n"
                       + "\n".join(self.result.stdout.splitlines()[-20:]))
            else:
                why = f"no answer from the guest's executor within {self.BOOT_TIMEOUT} s"
            self.__exit__(None, None, None)
            raise ExecutorGone(why)

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(REQ.pack(REQ.size, OP_QUIT, 0, -1, 0, 0, 0, 0, 0, 0, 0))
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self.thread is not None:
            self.thread.join(timeout=120)
        self._dir.cleanup()
