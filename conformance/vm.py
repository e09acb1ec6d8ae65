"""Run one command as root in a throwaway QEMU guest on the test kernel.

The guest's root is the host's / over virtio-9p, read-only, so host binaries, the venv and
the clone are usable as they are; a writable scratch directory is shared back under the
same path. conformance/kernel/guest-init.sh is PID 1: it mounts the pseudo filesystems,
runs the job the host wrote into the scratch directory, leaves output and exit status there,
and resets the machine (QEMU runs with -no-reboot, so it exits).

QEMU is started directly: virtme-ng is neither in Debian bookworm nor on the reachable
PyPI mirror, and the whole boot protocol is the ~40-line init script.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from codegen.debian import PACKAGES, DependencyError, ensure_packages

GUEST_INIT = Path(__file__).resolve().parent / "kernel" / "guest-init.sh"
QEMU = "qemu-system-x86_64"

# Host variables the guest command inherits (the rest of the host env is not meaningful
# in the guest, e.g. DISPLAY, SSH_*, XDG_RUNTIME_DIR).
_INHERITED_ENV = ("PATH", "VIRTUAL_ENV", "PYENV_ROOT", "PYENV_VERSION", "LANG", "LC_ALL", "TERM")


class VmError(RuntimeError):
    """The guest did not run the command to completion; `result` holds what was captured."""

    def __init__(self, message: str, result: VmResult):
        super().__init__(message)
        self.result = result


class VmBootError(VmError):
    """QEMU exited before the guest's init started (bad kernel, QEMU error)."""


class VmCrash(VmError):
    """The guest went down while the command ran (panic, oops in init, reset)."""


class VmTimeout(VmError):
    """The run exceeded its timeout; QEMU was killed."""


@dataclass
class VmResult:
    returncode: int | None  # None when the command did not finish
    stdout: str  # the command's stdout and stderr, interleaved
    console: str  # the guest's serial console: kernel log and init's messages
    findings: list[str] = field(default_factory=list)  # kernel WARNING/BUG/oops reports
    duration: float = 0.0  # seconds, QEMU start to exit
    qemu_stderr: str = ""


# A kernel report starts with one of these lines (after the printk timestamp).
_REPORT_START = re.compile(
    r"^(WARNING: |BUG: |kernel BUG at |Oops: |general protection fault|Kernel panic - |"
    r"UBSAN: |KASAN: |KFENCE: |INFO: task .* blocked for more than |INFO: rcu_\w+ (self-)?detected stall|"
    r"Call Trace:|watchdog: BUG: |list_(add|del) corruption|refcount_t: )"
)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_REPORT_END = re.compile(r"---\[ end (trace|Kernel panic)")


def parse_findings(console: str, context: int = 10, max_lines: int = 80) -> list[str]:
    """Kernel reports (WARN, BUG, oops, KASAN, panic, hung task ...) in a kernel log.

    Each finding is the report's first line plus what follows, up to the `---[ end trace`
    marker (at most `max_lines`), or `context` lines when the report has no end marker.
    Lines inside a report (its own "Call Trace:") do not start another finding.
    """
    lines = [_TIMESTAMP.sub("", ln.rstrip("\r")) for ln in console.splitlines()]
    findings, i = [], 0
    while i < len(lines):
        if not _REPORT_START.match(lines[i]):
            i += 1
            continue
        end = next((j for j in range(i + 1, min(len(lines), i + max_lines)) if _REPORT_END.search(lines[j])), None)
        stop = end + 1 if end is not None else min(len(lines), i + 1 + context)
        findings.append("\n".join(lines[i:stop]))
        i = stop
    return findings


def _die_with_parent() -> None:
    # Runs in the child before exec: QEMU gets SIGKILL if this Python process dies
    # without reaching its cleanup (SIGKILL, OOM), so no guest outlives its caller.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _ensure_qemu() -> str:
    if shutil.which(QEMU) is None:
        ensure_packages(PACKAGES["vm"], why="to boot the test kernel")
    path = shutil.which(QEMU)
    if path is None:
        raise DependencyError(f"{QEMU} not found after installing qemu-system-x86")
    return path


def _job_script(argv: list[str], env: dict[str, str], cwd: str, hugepages: int) -> str:
    q = shlex.quote
    lines = ["# written by conformance/vm.py; run by guest-init.sh"]
    if hugepages:
        lines += [
            f"echo {hugepages} >/proc/sys/vm/nr_hugepages",
            f'n=$(cat /proc/sys/vm/nr_hugepages); [ "$n" -ge {hugepages} ] || '
            f'echo "vm: only $n of {hugepages} huge pages could be reserved" >&2',
        ]
    lines += [
        f"cd {q(cwd)} || exit 125",
        "exec env -i " + " ".join(q(f"{k}={v}") for k, v in env.items()) + " " + " ".join(map(q, argv)),
    ]
    return "\n".join(lines) + "\n"


def qemu_command(kernel: Path, scratch: Path, *, memory: str, cpus: int) -> list[str]:
    """The QEMU command line of a run (host root read-only, scratch writable, serial console)."""
    cmdline = " ".join([
        "console=ttyS0",
        "root=/dev/root rootfstype=9p rootflags=trans=virtio,version=9p2000.L,cache=loose,msize=262144 ro",
        "panic=-1",  # a panic resets the guest, and -no-reboot turns that into QEMU's exit
        "init=/bin/sh",
        "--", str(GUEST_INIT), str(scratch),
    ])
    return [
        QEMU, "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", memory,
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-append", cmdline,
        # multidevs=remap: / spans several host filesystems; keeps guest inode numbers unique.
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root",
        "-fsdev", f"local,id=scratch,path={scratch},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch",
    ]


# The guest's writable temporary directory (guest-init.sh mounts a tmpfs on /run). The
# host's /tmp is not shadowed: a clone or a scratch directory may live there.
GUEST_TMP = "/run/tmp"


def run_in_vm(
    kernel: Path,
    argv: list[str],
    *,
    timeout: float = 600,
    memory: str = "2G",
    cpus: int = 2,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    hugepages: int = 0,
    scratch: Path | None = None,
    on_output: Callable[[str], None] | None = None,
    on_console: Callable[[str], None] | None = None,
) -> VmResult:
    """Boot `kernel`, run `argv` as root in the guest, return its status and output.

    env is added to a small default environment (the host's PATH and venv variables,
    HOME=TMPDIR=/run/tmp, a tmpfs, PYTHONDONTWRITEBYTECODE=1: the clone is read-only in
    the guest, and the host's /tmp stays visible, read-only, since a clone may live there). cwd
    defaults to the host's current directory. scratch (default: a fresh temporary
    directory, removed afterwards) is writable in the guest under the same path and is
    exported as IOMMUFD_VM_SCRATCH. on_output/on_console receive the command's output and
    the console text as they arrive. Raises VmBootError, VmCrash or VmTimeout (each with
    the partial result) when the command does not run to completion.
    """
    if not argv:
        raise ValueError("run_in_vm needs a command")
    kernel = Path(kernel).resolve()
    if not kernel.is_file():
        raise FileNotFoundError(f"no kernel image at {kernel}")
    _ensure_qemu()
    with tempfile.TemporaryDirectory(prefix="iommufd-vm-") as tmp:
        scratch_dir = Path(scratch).resolve() if scratch is not None else Path(tmp)
        if re.search(r"\s", str(scratch_dir)):
            raise ValueError(f"the scratch path goes on the kernel command line and may not contain spaces: {scratch_dir}")
        ctl = scratch_dir / ".vm"
        shutil.rmtree(ctl, ignore_errors=True)
        ctl.mkdir(parents=True)
        guest_env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        # The project's own settings (IOMMUFD_*) follow the command, but not the target choice:
        # inside the guest the target is this kernel.
        guest_env.update({k: v for k, v in os.environ.items()
                          if k.startswith("IOMMUFD_") and k != "IOMMUFD_CONFORMANCE_TARGET"})
        guest_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        guest_env.update(HOME=GUEST_TMP, TMPDIR=GUEST_TMP, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
                         IOMMUFD_VM_SCRATCH=str(scratch_dir))
        guest_env.update(env or {})
        (ctl / "job.sh").write_text(_job_script(argv, guest_env, cwd or os.getcwd(), hugepages))
        return _boot(qemu_command(kernel, scratch_dir, memory=memory, cpus=cpus), ctl,
                     timeout, Path(tmp) / "qemu.stderr", on_output, on_console)


def _boot(cmd, ctl: Path, timeout: float, stderr_path: Path, on_output, on_console) -> VmResult:
    console = bytearray()

    def read_console(pipe) -> None:
        while chunk := pipe.read1(65536):
            console.extend(chunk)
            if on_console:
                on_console(chunk.decode(errors="replace"))

    output_path, out_pos = ctl / "output", 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks may split a character

    def pump_output(final: bool = False) -> None:
        nonlocal out_pos
        if on_output is None or not output_path.exists():
            return
        with open(output_path, "rb") as f:
            f.seek(out_pos)
            data = f.read()
        out_pos += len(data)
        if text := decoder.decode(data, final=final):
            on_output(text)

    start = time.monotonic()
    timed_out = False
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True, preexec_fn=_die_with_parent)
        reader = threading.Thread(target=read_console, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pump_output()
                if time.monotonic() - start > timeout:
                    timed_out = True
                    break
        finally:
            # Timeout, exception or Ctrl-C: kill QEMU's whole process group and reap it.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()
    pump_output(final=True)
    duration = time.monotonic() - start
    text = console.decode(errors="replace").replace("\r\n", "\n")
    status = ctl / "status"
    result = VmResult(
        returncode=int(status.read_text()) if status.exists() else None,
        stdout=(ctl / "output").read_text(errors="replace") if (ctl / "output").exists() else "",
        console=text,
        findings=parse_findings(text),
        duration=duration,
        qemu_stderr=stderr_path.read_text(errors="replace"),
    )
    started = (ctl / "started").exists()
    tail = _tail(text)
    if timed_out:
        where = "while the command ran" if started else "before the guest's init started"
        raise VmTimeout(f"timed out after {timeout:g} s {where}; QEMU killed. Console tail:\n{tail}", result)
    if not started:
        raise VmBootError(
            f"QEMU exited ({proc.returncode}) before the guest's init started."
            f"{' QEMU: ' + result.qemu_stderr.strip() if result.qemu_stderr.strip() else ''}\nConsole tail:\n{tail}",
            result)
    if result.returncode is None:
        raise VmCrash(f"the guest went down before the command finished. Console tail:\n{tail}", result)
    return result


def _tail(text: str, n: int = 30) -> str:
    return "\n".join(text.splitlines()[-n:]) or "(empty console)"
