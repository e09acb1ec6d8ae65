"""pytest plugin: choose the target (`--iommufd-target` or $IOMMUFD_CONFORMANCE_TARGET).

model (default) and kernel run in this process; served re-runs the same pytest command under
the preload library against a model server in this process (conformance/server.py
exec_program()), so the suite's descriptors follow a C program's path; vm[=BZIMAGE] re-runs
it inside a QEMU guest booted from the project's test kernel, with target kernel, and fails the
run on any kernel WARNING/BUG/oops the guest logged.

The VM runner's own tests (conformance/runner_tests, marked `vm_runner`) boot QEMU: they run
only with --vm-runner-tests (CI passes it), so the default test command never boots a guest.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
from pathlib import Path

import pytest

from conformance.targets import ENV, Target, parse_target

OPTION = "--iommufd-target"
RUNNER_OPTION = "--vm-runner-tests"

_RESULTS: list = []  # report.CaseResult per test, in run order
_CURRENT = None  # the running test's CaseResult: the fixtures' files record their ioctls there


def pytest_addoption(parser):
    group = parser.getgroup("iommufd-conformance")
    group.addoption(
        OPTION, default=os.environ.get(ENV, "model"), metavar="TARGET",
        help=f"what the conformance tests talk to: model (default), served, kernel, vm[=BZIMAGE] (env {ENV})",
    )
    group.addoption(RUNNER_OPTION, action="store_true", default=False,
                    help="also run the VM runner's own tests (they boot QEMU on the cached test kernel)")
    group.addoption("--vfio-device", action="append", default=[], metavar="BDF",
                    help="a PCI device bound to vfio-pci for the device tests (repeatable, e.g. 0000:00:04.0); "
                         "in the VM the profile's devices are used (IOMMUFD_VFIO_DEVICES)")
    group.addoption("--iommufd-report", action="store_true", default=False,
                    help="end with the matrix per ioctl and the coverage measured from what ran (outcomes per "
                         "ioctl; on the model, its raise sites reached)")
    group.addoption("--iommufd-coverage", metavar="FILE",
                    help="write the coverage as JSON, merged into FILE when it exists (conformance/coverage.py)")
    group.addoption("--iommufd-ktap", metavar="FILE", help="write the results as KTAP")
    group.addoption("--iommufd-json", metavar="FILE", help="write the results, matrix and coverage as JSON")


def _target(config) -> Target:
    try:
        return parse_target(config.getoption(OPTION))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_cmdline_main(config):
    target = _target(config)
    if target.name == "served" and target.unavailable():
        import sys

        from conformance.server import exec_program

        return exec_program([sys.executable, "-m", "pytest", *config.invocation_params.args])
    if target.in_process:
        return None
    from conformance.run import pytest_in_vm

    return pytest_in_vm(_without_target(config.invocation_params.args), target.value, profile=target.profile)


def _without_target(args) -> list[str]:
    """The pytest arguments less the target option, `--iommufd-target=X` or `--iommufd-target X`."""
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == OPTION:
            skip = True
        elif not a.startswith(OPTION + "="):
            cleaned.append(a)
    return cleaned


def pytest_configure(config):
    config.addinivalue_line("markers", "vm_runner: boots QEMU (runs with --vm-runner-tests)")
    from conformance import vfio_device

    if devices := config.getoption("--vfio-device"):  # where the suite's helpers look for them
        os.environ[vfio_device.DEVICES_ENV] = ",".join(devices)
    vfio_device.ON_IOCTL = _record_device_ioctl
    target = _target(config)
    if target.name == "model":
        vfio_device.PLAYED_PROFILE = target.model_profile()
    if target.in_process and (why := target.unavailable()):
        raise pytest.UsageError(f"{OPTION} {target.name}: {why}")


def pytest_collection_modifyitems(config, items):
    if config.getoption(RUNNER_OPTION):
        return
    skip = pytest.mark.skip(reason=f"boots QEMU: the VM runner's own tests run with {RUNNER_OPTION} (CI passes it)")
    for item in items:
        if "vm_runner" in item.keywords:
            item.add_marker(skip)


def _header(config) -> list[str]:
    from model.uapi import T

    target = _target(config)
    return [f"target: {config.getoption(OPTION)}", f"kernel: {target.describe()}",
            f"uapi: Linux {T.KERNEL_VERSION} bindings (generated/{T.__name__.rsplit('.', 1)[-1]})"]


def pytest_report_header(config):
    return ["iommufd " + h for h in _header(config)]


@pytest.fixture(scope="session", autouse=True)
def _iommufd_junit_properties(request, record_testsuite_property):
    """--junit-xml: the suite records what ran where (target, kernel, uapi)."""
    if request.config.getoption("--junit-xml", None):
        for h in _header(request.config):
            key, _, value = h.partition(": ")
            record_testsuite_property(f"iommufd_{key}", value)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _CURRENT
    from conformance.report import CaseResult, family_of

    from model import outcomes

    _CURRENT = CaseResult(item.nodeid, family_of(item.nodeid), location=f"{item.location[0]}:{item.location[1] + 1}")
    server = _served_sites(item.config)  # served: the model answers in the parent's server
    outcomes.take()  # what ran between tests belongs to none
    yield
    sites: dict[str, int] = {}
    for (_, _, site), n in outcomes.take().items():
        if site:
            sites[site] = sites.get(site, 0) + n
    if server is not None:
        for site, n in server().items():
            sites[site] = sites.get(site, 0) + n
    _CURRENT.sites = sites
    _RESULTS.append(_CURRENT)
    _CURRENT = None


def _served_sites(config):
    """Under the served target, a function answering the raise sites the server's model recorded
    since the last call (what ran between tests is taken now and dropped); else None."""
    from conformance.targets import SERVER_ENV, preloaded

    if _target(config).name != "served" or not preloaded():
        return None
    from conformance.server import take_outcomes

    def take() -> dict[str, int]:
        try:
            return take_outcomes(os.environ[SERVER_ENV])
        except (OSError, ValueError):  # an older server, or none: no sites
            return {}

    take()
    return take


def pytest_runtest_logreport(report):
    r = _CURRENT
    if r is None or r.nodeid != report.nodeid:
        return
    if report.skipped and report.when in ("setup", "call"):
        r.outcome = "skipped"
        r.reason = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
    elif report.failed:
        r.outcome = "failed"
        r.reason = str(report.longreprtext).strip().splitlines()[-1] if report.longreprtext else report.when


def pytest_assertrepr_compare(op, left, right):
    """Errnos by name: `assert err(...) == errno.ENOENT` fails as EINVAL(22) == ENOENT(2)."""
    from conformance.report import Errno

    if op == "==" and isinstance(left, int) and isinstance(right, int) and (
            isinstance(left, Errno) or isinstance(right, Errno)):
        return [f"{Errno(left)!r} == {Errno(right)!r}"]
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--iommufd-report") or not _RESULTS:
        return
    from conformance import coverage, report

    tr = terminalreporter
    tr.section("iommufd conformance")
    for h in _header(config):
        tr.write_line(h)
    tr.write_line("")
    tr.write_line(report.render_matrix({config.getoption(OPTION): report.matrix(_RESULTS)}))
    tr.write_line("")
    path = config.getoption("--iommufd-coverage")
    if path and Path(path).exists():  # written at session finish, merged with what it held
        doc = json.loads(Path(path).read_text())
    else:
        doc = coverage.from_results(config.getoption(OPTION), _RESULTS)
    tr.write_line(coverage.render(doc))


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not _RESULTS or not _target(config).in_process:
        return
    from conformance import coverage, report

    doc = coverage.from_results(config.getoption(OPTION), _RESULTS)
    if path := config.getoption("--iommufd-ktap"):
        Path(path).write_text(report.ktap(_RESULTS, _header(config)))
    if path := config.getoption("--iommufd-json"):
        hdr = dict(h.split(": ", 1) for h in _header(config))
        Path(path).write_text(report.as_json(_RESULTS, hdr, doc))
    if path := config.getoption("--iommufd-coverage"):
        coverage.write(path, doc)  # merged into what the file holds


_PROBES: dict = {}


def _probe(target: Target):
    """What a kernel target supports, asked once per run (conformance/probe.py)."""
    if target.name not in _PROBES:
        from conformance.probe import probe

        _PROBES[target.name] = probe(target)
    return _PROBES[target.name]


def _record_device_ioctl(request: int, errno_: int) -> None:
    """A VFIO device's ioctl, counted in the running test's matrix row like the iommufd file's."""
    if _CURRENT is not None:
        from conformance.vfio_device import device_ioctl_name

        _CURRENT.calls.append((device_ioctl_name(request), errno_))


def _test_op(arg) -> int | None:
    """The op of an IOMMU_TEST_CMD argument (struct iommu_test_cmd: size, op, ...)."""
    try:
        return int.from_bytes(bytes(memoryview(arg).cast("B")[4:8]), "little")
    except (TypeError, ValueError):
        return None


def _mock_device_ops() -> set[int]:
    from model.uapi import T

    return {getattr(T, n) for n in ("IOMMU_TEST_OP_MOCK_DOMAIN", "IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS") if hasattr(T, n)}


class _Fd:
    """The target's file: the model's 'not modelled yet', and an ioctl a kernel target does not
    have (the probe found ENOTTY), are skips that say so, not failures."""

    def __init__(self, target: Target):
        self.target = target.name
        probe = _probe(target) if target.name == "kernel" else None
        self._lacks = probe.lacks if probe else (lambda name: False)
        self._no_mock = probe.no_mock_device if probe else None
        self._f = target.open()

    def ioctl(self, request, arg=0, mutate_flag=True):
        from conformance.report import ioctl_name

        name = ioctl_name(request)
        if self._lacks(name):
            raise pytest.skip.Exception(f"target lacks {name} (ENOTTY; see `iommufd-conformance probe`)",
                                        _use_item_location=True)
        if self._no_mock and name == "IOMMU_TEST_CMD" and _test_op(arg) in _mock_device_ops():
            raise pytest.skip.Exception(f"target has {self._no_mock} (see `iommufd-conformance probe`)",
                                        _use_item_location=True)
        try:
            rc = self._f.ioctl(request, arg, mutate_flag)
        except OSError as e:
            if getattr(e, "ioctl", None) and self.target == "model":
                # the skip names the test, not this line
                raise pytest.skip.Exception(f"model: {e.ioctl} is not modelled yet", _use_item_location=True) from None
            if e.errno == errno.ENOSYS and self.target == "served":  # the server's NotModelled
                raise pytest.skip.Exception(f"model (served): {name} is not modelled yet (the server's log says "
                                            "what)", _use_item_location=True) from None
            if _CURRENT is not None:
                _CURRENT.calls.append((name, e.errno))
            raise
        if _CURRENT is not None:
            _CURRENT.calls.append((name, 0))
        return rc

    def mmap(self, length, prot=mmap.PROT_READ | mmap.PROT_WRITE, flags=mmap.MAP_SHARED, offset=0):
        """mmap(2) of the target's file (a model.libc.Mapping, a mmap.mmap); the model's 'not modelled'
        is a skip."""
        try:
            return self._f.mmap(length, prot, flags, offset)
        except OSError as e:
            if getattr(e, "ioctl", None) and self.target == "model":
                raise pytest.skip.Exception(f"model: {e.ioctl} is not modelled yet", _use_item_location=True) from None
            raise

    def fileno(self) -> int:
        """The open file's descriptor, for calls that take an iommufd (VFIO_DEVICE_BIND_IOMMUFD):
        the model's file holds one that stands for it (model/file.py)."""
        fd = self._f.fileno() if hasattr(self._f, "fileno") else getattr(self._f, "fd", None)
        if not isinstance(fd, int):
            raise pytest.skip.Exception(f"target {self.target}: its file has no descriptor to pass to another "
                                        "device's ioctl", _use_item_location=True)
        return fd

    def close(self):
        self._f.close()


_KMSG: dict = {}


def _kernel_log(config):
    """On a kernel target (a real /dev/iommu, and in the VM): the /dev/kmsg watcher
    (conformance/kmsg.py; it reports nothing where /dev/kmsg cannot be read)."""
    if _target(config).name != "kernel":
        return None
    if "log" not in _KMSG:
        from conformance.kmsg import KernelLog

        _KMSG["log"] = KernelLog()
    return _KMSG["log"]


def _reports_message(reports: list[str]) -> str:
    return "kernel report while this test ran:\n" + "\n".join(reports)


@pytest.fixture(autouse=True)
def _kernel_reports(request):
    """A kernel report (WARNING, BUG, oops, KASAN, a call trace ...) logged while a test ran
    fails that test: what its set-up and call logged fails the call (pytest_runtest_call),
    what its teardown logged is an error of the teardown."""
    log = _kernel_log(request.config)
    if log is None:
        yield
        return
    log.new_reports()  # what came before belongs to no test
    yield
    reports = log.new_reports()
    if reports:
        pytest.fail(_reports_message(reports), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    log = _KMSG.get("log")
    if log is not None and _target(item.config).name == "kernel":
        reports = log.new_reports()
        if reports:
            outcome.force_exception(pytest.fail.Exception(_reports_message(reports), pytrace=False))


@pytest.fixture
def iommufd_target(request) -> str:
    return _target(request.config).name


@pytest.fixture
def open_iommufd(request):
    """A factory of fresh /dev/iommu files on the selected target, closed after the test."""
    files = []
    target = _target(request.config)

    def _open():
        f = _Fd(target)
        files.append(f)
        return f

    yield _open
    for f in files:
        f.close()


@pytest.fixture
def iommufd(open_iommufd):
    """A fresh /dev/iommu on the selected target."""
    return open_iommufd()


@pytest.fixture(scope="session")
def vfio_devices(request) -> list[str]:
    """PCI addresses of the target's VFIO devices (bound to vfio-pci): --vfio-device, or the VM
    profile's (IOMMUFD_VFIO_DEVICES), or the devices of the machine the model plays (model:vtd).
    The model alone (the mock) has none."""
    from conformance.vfio_device import devices_from_env

    target = _target(request.config)
    if target.name == "model":
        return target.vfio_devices()
    if target.name != "kernel":
        return []
    return request.config.getoption("--vfio-device") or devices_from_env()


def no_vfio_device_reason(request, wanted: int = 1) -> str | None:
    """Why a test that needs `wanted` VFIO devices cannot run here, or None."""
    from conformance.vfio_device import DEVICES_ENV

    have = request.getfixturevalue("vfio_devices")
    if len(have) >= wanted:
        return None
    if _target(request.config).name == "model":
        return ("the model alone has no VFIO devices (only the selftest's mock IOMMU device): --iommufd-target "
                "model:vtd plays a machine with two")
    return (f"needs {wanted} VFIO device(s), the target has {len(have)}: name devices bound to vfio-pci with "
            f"--vfio-device BDF, or run on --target vm:vtd ({DEVICES_ENV} in the guest)")


@pytest.fixture
def vfio_device(request):
    """The target's first VFIO device, opened (conformance/vfio_device.VfioDevice) and closed after
    the test; a skip that says why when the target has none."""
    if why := no_vfio_device_reason(request):
        pytest.skip(why)
    from conformance.vfio_device import open_device

    with open_device(request.getfixturevalue("vfio_devices")[0]) as dev:
        yield dev


@pytest.fixture
def vfio_device2(request, vfio_device):
    """A second VFIO device, in its own IOMMU group (the vtd and amd profiles give two)."""
    if why := no_vfio_device_reason(request, 2):
        pytest.skip(why)
    from conformance.vfio_device import open_device

    with open_device(request.getfixturevalue("vfio_devices")[1]) as dev:
        yield dev


@pytest.fixture
def blocked_dma(request):
    """Run a DMA the IOMMU must block: `blocked_dma(fn, *args)` calls fn and answers the IOMMU fault
    reports logged meanwhile, which do not fail the test (any other kernel report still does), or
    None where none can be expected: the kernel log cannot be read, or the machine is known not
    to report (a VM profile's silent_faults, e.g. QEMU's amd-iommu)."""
    from conformance.vm import SILENT_FAULTS_ENV

    target = _target(request.config)
    if target.name == "model" and (machine := target.machine()) is not None:
        def on_model(fn, *args, **kw):  # the model's IOMMU logs its faults on its machine
            before = len(machine.faults)
            fn(*args, **kw)
            return machine.faults[before:]

        return on_model
    log = _kernel_log(request.config)
    silent = os.environ.get(SILENT_FAULTS_ENV)

    def run(fn, *args, **kw):
        if log is None or log.fd < 0:
            fn(*args, **kw)
            return None
        with log.expecting_iommu_faults(request.node.nodeid):
            fn(*args, **kw)
            faults = log.iommu_faults(timeout=0.5 if silent else 3.0)
        return None if silent and not faults else faults

    return run


@pytest.fixture(scope="session")
def uapi():
    """The generated bindings the suite uses: model.uapi.T, the series of the kernel under test."""
    from model.uapi import T

    return T


