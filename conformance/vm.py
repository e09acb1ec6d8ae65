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

from codegen.debian import PACKAGES, DependencyError, cache_dir, ensure_packages

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
# A DMA the IOMMU blocked: intel-iommu's dmar_fault_do_one() ("DMAR: [DMA Write NO_PASID] Request
# device [00:04.0] fault addr ...", then the page-table walk) and amd_iommu's iommu_print_event()
# ("... AMD-Vi: Event logged [IO_PAGE_FAULT ..."). A kernel report like the others, unless the test
# that ran said it expects one (kmsg.KernelLog.expecting_iommu_faults(): markers in the log).
IOMMU_FAULT = re.compile(r"^(DMAR: \[(DMA (Read|Write)|INTR-REMAP)|.*AMD-Vi: Event logged \[)")
EXPECT_BEGIN = "iommufd-conformance: IOMMU faults expected from here: "
EXPECT_END = "iommufd-conformance: IOMMU faults no longer expected"
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_REPORT_END = re.compile(r"---\[ end (trace|Kernel panic)")


def parse_findings(console: str, context: int = 10, max_lines: int = 80, *, faults: list[str] | None = None,
                   expecting: bool = False) -> list[str]:
    """Kernel reports (WARN, BUG, oops, KASAN, panic, hung task, IOMMU faults ...) in a kernel log.

    Each finding is the report's first line plus what follows, up to the `---[ end trace`
    marker (at most `max_lines`), or `context` lines when the report has no end marker.
    Lines inside a report (its own "Call Trace:") do not start another finding. An IOMMU fault
    logged between EXPECT_BEGIN and EXPECT_END (or with `expecting`) is no finding: it goes to
    `faults` when given.
    """
    lines = [_TIMESTAMP.sub("", ln.rstrip("\r")) for ln in console.splitlines()]
    findings, i = [], 0
    while i < len(lines):
        if EXPECT_BEGIN in lines[i] or EXPECT_END in lines[i]:
            expecting = EXPECT_BEGIN in lines[i]
            i += 1
            continue
        fault = bool(IOMMU_FAULT.match(lines[i]))
        if not fault and not _REPORT_START.match(lines[i]):
            i += 1
            continue
        if fault:
            # the fault line and the page-table walk after it (dmar_fault_dump_ptes()), no further
            limit = min(len(lines), i + 1 + context)
            stop = next((j for j in range(i + 1, limit)
                         if not lines[j].startswith("DMAR: ") or IOMMU_FAULT.match(lines[j])), limit)
            text = "\n".join(lines[i:stop])
            if not expecting:
                findings.append(text)
            elif faults is not None:
                faults.append(text)
            i = stop
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


@dataclass(frozen=True)
class Profile:
    """A machine the VM target boots (`--target vm:NAME`): chipset, IOMMU, devices behind it.

    iommu_options are what the profile wants of the emulated unit; each is kept only where this
    QEMU has the property (`-device TYPE,help`): QEMU's version decides what the unit offers, and
    `probe --target vm:NAME` reports what the guest's driver then found.
    """
    name: str
    doc: str
    machine: tuple[str, ...] = ()
    iommu: str | None = None
    iommu_options: tuple[tuple[str, str], ...] = ()
    cmdline: tuple[str, ...] = ()
    edu: int = 0  # QEMU edu devices (hw/misc/edu.c: a DMA engine), bound to vfio-pci in the guest
    silent_faults: str | None = None  # why the guest sees no report of a DMA its IOMMU blocks
    # the machine as the model plays it (`--target model:NAME`): a profile `probe --target
    # vm:NAME --save-profile model/profiles/FILE.json` captured from this machine
    model_profile: str | None = None


SILENT_FAULTS_ENV = "IOMMUFD_SILENT_FAULTS"  # the profile's silent_faults, for the tests in the guest


EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("mock", "i440fx, no IOMMU: the selftest's mock IOMMU (CONFIG_IOMMUFD_TEST) is the only one"),
    # intel-iommu: interrupt remapping (iommufd_device_bind() wants isolated MSI), scalable mode
    # (PASID tables; QEMU 7.2's unit translates second-stage only), 48-bit addresses, snooping.
    Profile("vtd", "q35 with QEMU's intel-iommu (VT-d) and two edu devices bound to vfio-pci",
            machine=("-M", "q35"), iommu="intel-iommu",
            iommu_options=(("intremap", "on"), ("x-scalable-mode", "on"), ("x-pasid-mode", "on"),
                           ("aw-bits", "48"), ("snoop-control", "on")),
            cmdline=("intel_iommu=on,sm_on",), edu=2, model_profile="qemu-vtd"),
    # amd-iommu: the guest's driver brings interrupt remapping up on it (measured with QEMU 7.2:
    # "AMD-Vi: Interrupt remapping enabled", IR- irq chips; the captured profile says so), so MSI
    # is isolated; the unsafe-interrupts switch from before that was measured stays on the command
    # line (the profile records it in `params`).
    Profile("amd", "q35 with QEMU's amd-iommu (AMD-Vi) and two edu devices bound to vfio-pci",
            machine=("-M", "q35"), iommu="amd-iommu",
            cmdline=("iommufd.allow_unsafe_interrupts=1",), edu=2,
            # measured with QEMU 7.2: the DMA is blocked, but no IO_PAGE_FAULT event reaches the log
            silent_faults="QEMU's amd-iommu logs no IO_PAGE_FAULT event the guest reports for a blocked DMA",
            model_profile="qemu-amd"),
)}
DEFAULT_PROFILE = "mock"


def profile_named(name: str | None) -> Profile:
    try:
        return PROFILES[name or DEFAULT_PROFILE]
    except KeyError:
        raise ValueError(f"unknown VM profile {name!r}; choose one of {', '.join(PROFILES)}") from None


_DEVICE_PROPERTIES: dict[str, frozenset[str]] = {}


def device_properties(qemu: str, device: str) -> frozenset[str]:
    """The properties this QEMU's `-device DEVICE` takes (asked once per process)."""
    if device not in _DEVICE_PROPERTIES:
        try:
            out = subprocess.run([qemu, "-device", f"{device},help"], capture_output=True, text=True).stdout
        except OSError:  # no QEMU: nothing to offer (run_in_vm installs it before it asks)
            return frozenset()
        _DEVICE_PROPERTIES[device] = frozenset(m[1] for m in re.finditer(r"^\s+([\w-]+)=", out, re.M))
    return _DEVICE_PROPERTIES[device]


def iommu_device_arg(profile: Profile, qemu: str = QEMU) -> str | None:
    """`-device` value of the profile's IOMMU with the options this QEMU has."""
    if profile.iommu is None:
        return None
    have = device_properties(qemu, profile.iommu)
    return ",".join([profile.iommu] + [f"{k}={v}" for k, v in profile.iommu_options if k in have])


# The guest binds every edu to vfio-pci (driver_override, as the kernel's VFIO selftests' setup
# script does) and passes their addresses on as IOMMUFD_VFIO_DEVICES.
_BIND_EDU = f"""devs=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = {EDU_VENDOR:#06x} ] && [ "$(cat $d/device)" = {EDU_DEVICE:#06x} ] || continue
  b=${{d##*/}}
  echo vfio-pci >$d/driver_override
  [ -e $d/driver ] && echo $b >$d/driver/unbind
  echo $b >/sys/bus/pci/drivers_probe
  [ -e $d/vfio-dev ] || echo "vm: $b did not bind to vfio-pci" >&2
  devs="$devs${{devs:+,}}$b"
done"""


def _job_script(argv: list[str], env: dict[str, str], cwd: str, hugepages: int, profile: Profile | None = None) -> str:
    q = shlex.quote
    lines = ["# written by conformance/vm.py; run by guest-init.sh"]
    if profile is not None and profile.edu:
        lines.append(_BIND_EDU)
        env = dict(env, IOMMUFD_VFIO_DEVICES="$devs")
    if hugepages:
        lines += [
            f"echo {hugepages} >/proc/sys/vm/nr_hugepages",
            f'n=$(cat /proc/sys/vm/nr_hugepages); [ "$n" -ge {hugepages} ] || '
            f'echo "vm: only $n of {hugepages} huge pages could be reserved" >&2',
        ]
    lines += [
        f"cd {q(cwd)} || exit 125",
        "exec env -i " + " ".join(f'{k}="$devs"' if v == "$devs" else q(f"{k}={v}") for k, v in env.items())
        + " " + " ".join(map(q, argv)),
    ]
    return "\n".join(lines) + "\n"


def qemu_command(kernel: Path, scratch: Path, *, memory: str, cpus: int, profile: Profile | None = None,
                 qemu: str = QEMU, cmdline: tuple[str, ...] = (), devices: tuple[str, ...] = ()) -> list[str]:
    """The QEMU command line of a run (host root read-only, scratch writable, serial console), on
    the profile's machine: its IOMMU comes before every PCI device, its edu devices last, and
    `devices` (more QEMU arguments, e.g. the executor's virtio-serial port) after those."""
    profile = profile or PROFILES[DEFAULT_PROFILE]
    iommu = iommu_device_arg(profile, qemu)
    cmdline = " ".join([
        *profile.cmdline, *cmdline,
        "console=ttyS0",
        "root=/dev/root rootfstype=9p rootflags=trans=virtio,version=9p2000.L,cache=loose,msize=262144 ro",
        "panic=-1",  # a panic resets the guest, and -no-reboot turns that into QEMU's exit
        "init=/bin/sh",
        "--", str(GUEST_INIT), str(scratch),
    ])
    return [
        qemu, "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", memory, *profile.machine,
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-append", cmdline,
        *(["-device", iommu] if iommu else []),
        # multidevs=remap: / spans several host filesystems; keeps guest inode numbers unique.
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root",
        "-fsdev", f"local,id=scratch,path={scratch},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch",
        *[a for _ in range(profile.edu) for a in ("-device", "edu")],
        *devices,
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
    profile: str | Profile | None = None,
    cmdline: tuple[str, ...] = (),
    devices: tuple[str, ...] = (),
) -> VmResult:
    """Boot `kernel`, run `argv` as root in the guest, return its status and output.

    env is added to a small default environment (the host's PATH and venv variables,
    HOME=TMPDIR=/run/tmp, a tmpfs, PYTHONDONTWRITEBYTECODE=1: the clone is read-only in
    the guest, and the host's /tmp stays visible, read-only, since a clone may live there). cwd
    defaults to the host's current directory. scratch (default: a fresh temporary
    directory, removed afterwards) is writable in the guest under the same path and is
    exported as IOMMUFD_VM_SCRATCH. on_output/on_console receive the command's output and
    the console text as they arrive. profile names the machine (PROFILES; default mock): with
    devices, the guest binds them to vfio-pci first and the command finds their addresses in
    IOMMUFD_VFIO_DEVICES. cmdline adds kernel parameters, devices QEMU arguments. Raises VmBootError, VmCrash or VmTimeout (each with the partial
    result, and the whole console kept in a file the message names) when the command does not
    run to completion.
    """
    prof = profile if isinstance(profile, Profile) else profile_named(profile)
    if not argv:
        raise ValueError("run_in_vm needs a command")
    kernel = Path(kernel).resolve()
    if not kernel.is_file():
        raise FileNotFoundError(f"no kernel image at {kernel}")
    qemu = _ensure_qemu()
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
        if prof.silent_faults:
            guest_env[SILENT_FAULTS_ENV] = prof.silent_faults
        guest_env.update(env or {})
        (ctl / "job.sh").write_text(_job_script(argv, guest_env, cwd or os.getcwd(), hugepages, prof))
        try:
            return _boot(qemu_command(kernel, scratch_dir, memory=memory, cpus=cpus, profile=prof, qemu=qemu,
                                      cmdline=cmdline, devices=devices), ctl,
                         timeout, Path(tmp) / "qemu.stderr", on_output, on_console)
        except VmError as e:
            kept = keep_console(e.result.console, prof.name)
            e.args = (f"{e.args[0]}\n(the whole console: {kept})",)
            raise


def keep_console(console: str, profile: str) -> Path | None:
    """A failed guest's whole console, kept under the cache (the newest 20) for a later look."""
    d = cache_dir() / "vm-consoles"
    try:
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{profile}.log"
        path.write_text(console)
        for old in sorted(d.glob("*.log"))[:-20]:
            old.unlink(missing_ok=True)
        return path
    except OSError:
        return None


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
