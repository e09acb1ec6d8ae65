"""pytest plugin: choose the target (`--iommufd-target` or $IOMMUFD_CONFORMANCE_TARGET).

model (default) and kernel run in this process; vm[=BZIMAGE] re-runs the same pytest
command inside a QEMU guest booted from the project's test kernel, with target kernel,
and fails the run on any kernel WARNING/BUG/oops the guest logged.
"""
from __future__ import annotations

import os

import pytest

from conformance.targets import ENV, open_target, parse_target

OPTION = "--iommufd-target"


def pytest_addoption(parser):
    group = parser.getgroup("iommufd-conformance")
    group.addoption(
        OPTION, default=os.environ.get(ENV, "model"), metavar="TARGET",
        help=f"what the conformance tests talk to: model (default), kernel, vm[=BZIMAGE] (env {ENV})",
    )


def _target(config) -> tuple[str, str | None]:
    try:
        return parse_target(config.getoption(OPTION))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_cmdline_main(config):
    name, kernel = _target(config)
    if name != "vm":
        return None
    from conformance.run import pytest_in_vm

    return pytest_in_vm(_without_target(config.invocation_params.args), kernel)


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
    name, _ = _target(config)
    if name == "kernel" and not os.path.exists("/dev/iommu"):
        raise pytest.UsageError("--iommufd-target kernel: this machine has no /dev/iommu (try --iommufd-target vm)")


def pytest_report_header(config):
    return f"iommufd target: {config.getoption(OPTION)}"


class _Fd:
    """The target's file, with the model's 'not modelled yet' turned into a skip."""

    def __init__(self, target: str):
        self.target = target
        self._f = open_target(target)

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
    return _target(request.config)[0]


@pytest.fixture
def open_iommufd(iommufd_target):
    """A factory of fresh /dev/iommu files on the selected target, closed after the test."""
    files = []

    def _open():
        f = _Fd(iommufd_target)
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
    """The generated bindings of the kernel under test (the default: newest)."""
    import generated

    return generated.load()


