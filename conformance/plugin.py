"""pytest plugin: choose the target (`--iommufd-target` or $IOMMUFD_CONFORMANCE_TARGET).

model (default) and kernel run in this process; vm[=BZIMAGE] re-runs the same pytest
command inside a QEMU guest booted from the project's test kernel, with target kernel,
and fails the run on any kernel WARNING/BUG/oops the guest logged.

The VM runner's own tests (conformance/runner_tests, marked `vm_runner`) boot QEMU: they run
only with --vm-runner-tests (CI passes it), so the default test command never boots a guest.
"""
from __future__ import annotations

import os

import pytest

from conformance.targets import ENV, Target, parse_target

OPTION = "--iommufd-target"
RUNNER_OPTION = "--vm-runner-tests"


def pytest_addoption(parser):
    group = parser.getgroup("iommufd-conformance")
    group.addoption(
        OPTION, default=os.environ.get(ENV, "model"), metavar="TARGET",
        help=f"what the conformance tests talk to: model (default), kernel, vm[=BZIMAGE] (env {ENV})",
    )
    group.addoption(RUNNER_OPTION, action="store_true", default=False,
                    help="also run the VM runner's own tests (they boot QEMU on the cached test kernel)")


def _target(config) -> Target:
    try:
        return parse_target(config.getoption(OPTION))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_cmdline_main(config):
    target = _target(config)
    if target.in_process:
        return None
    from conformance.run import pytest_in_vm

    return pytest_in_vm(_without_target(config.invocation_params.args), target.value)


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
    target = _target(config)
    if target.in_process and (why := target.unavailable()):
        raise pytest.UsageError(f"{OPTION} {target.name}: {why}")


def pytest_collection_modifyitems(config, items):
    if config.getoption(RUNNER_OPTION):
        return
    skip = pytest.mark.skip(reason=f"boots QEMU: the VM runner's own tests run with {RUNNER_OPTION} (CI passes it)")
    for item in items:
        if "vm_runner" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    target = _target(config)
    return f"iommufd target: {config.getoption(OPTION)}: {target.describe()}"


class _Fd:
    """The target's file, with the model's 'not modelled yet' turned into a skip."""

    def __init__(self, target: Target):
        self.target = target.name
        self._f = target.open()

    def ioctl(self, request, arg=0, mutate_flag=True):
        try:
            return self._f.ioctl(request, arg, mutate_flag)
        except OSError as e:
            if getattr(e, "ioctl", None) and self.target == "model":
                pytest.skip(f"model: {e.ioctl} is not modelled yet")
            raise

    def close(self):
        self._f.close()


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
def uapi():
    """The generated bindings the suite uses: model.uapi's, the version the model implements and
    the VM's kernel is built from."""
    from model.uapi import B

    return B


