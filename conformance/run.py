"""`run`: the conformance suite against a target (model by default, kernel, or vm)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "conformance" / "tests"


PRODUCTION = "production"


def kernel_for(value: str | None):
    """vm's value: a bzImage path, a kernel series (6.12: built or reused, and the tests in the
    guest use that series' bindings), `production` (the model's series without
    CONFIG_IOMMUFD_TEST, `kernel build --no-iommufd-test`; SERIES-production for another series),
    or nothing (the model's series). (image, series or None)."""
    from codegen.debian import SUITE_OF_SERIES
    from conformance import kbuild

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if value and value in SUITE_OF_SERIES:
        return kbuild.build_kernel(series=value, log=log), value
    if value == PRODUCTION:
        return kbuild.build_kernel(log=log, production=True), None
    if value and value.endswith("-" + PRODUCTION) and (series := value.removesuffix("-" + PRODUCTION)) in SUITE_OF_SERIES:
        return kbuild.build_kernel(series=series, log=log, production=True), series
    if value:
        return Path(value), None
    return kbuild.build_kernel(log=log), None


def vm_run(argv: list[str], kernel: str | None, timeout: float, cwd: str, echo=None, profile: str | None = None, **kw):
    """Boot the target's kernel and run argv, streaming its output to `echo` (stdout): (result,
    None), or (None, 3) after saying why the VM run did not happen or did not finish."""
    from codegen.debian import DependencyError, FetchError
    from conformance import kbuild, vm

    try:
        image, series = kernel_for(kernel)
        env = {"IOMMUFD_TARGET_SERIES": series} if series else None
        return vm.run_in_vm(image, argv, timeout=timeout, cwd=cwd, env=env, profile=profile,
                            on_output=lambda s: print(s, end="", flush=True, file=echo or sys.stdout), **kw), None
    except vm.VmError as e:
        print(f"\niommufd-conformance: the VM run failed: {e}", file=sys.stderr)
    except (FileNotFoundError, ValueError, kbuild.KernelBuildError, DependencyError, FetchError) as e:
        print(f"iommufd-conformance: target vm: {e}", file=sys.stderr)
    return None, 3


def _status(res) -> int:
    """The command's exit status, or 1 when the guest kernel logged a WARNING/BUG/oops."""
    if res.findings:
        print("\niommufd-conformance: the guest kernel reported problems during the run:", file=sys.stderr)
        for f in res.findings:
            print(f, file=sys.stderr)
        return 1
    return res.returncode if res.returncode is not None else 3


def pytest_in_vm(pytest_args: list[str], kernel: str | None = None, timeout: float = 1500,
                 profile: str | None = None) -> int:
    """Run `python -m pytest ARGS --iommufd-target kernel` in the test kernel's VM (`kernel`: the
    vm target's value). Returns pytest's exit status, or 1 when the guest kernel logged a
    WARNING/BUG/oops, or 3 when the VM run failed."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="iommufd-vm-run-"))
    try:
        pytest_args, outputs = _outputs_to_scratch(pytest_args, scratch)
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args, "--iommufd-target=kernel"]
        res, failed = vm_run(argv, kernel, timeout, os.getcwd(), hugepages=64, scratch=scratch, profile=profile)
        if failed:
            return failed
        for inside, wanted in outputs:  # reports the guest wrote: where the user asked for them
            if inside.exists() and inside.name.startswith("iommufd-coverage") and wanted.exists():
                from conformance import coverage  # a coverage file merges with what it holds

                coverage.write(wanted, json.loads(inside.read_text()))
            elif inside.exists():
                shutil.copyfile(inside, wanted)
        return _status(res)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_OUTPUT_OPTIONS = ("--iommufd-json", "--iommufd-ktap", "--junit-xml", "--iommufd-coverage")


def _outputs_to_scratch(args: list[str], scratch: Path) -> tuple[list[str], list[tuple[Path, Path]]]:
    """Report files go to the scratch directory the guest can write (the host's / is read-only
    there); returns the rewritten arguments and (guest file, wanted file) pairs to copy back."""
    out, copies, i = [], [], 0
    while i < len(args):
        a = args[i]
        opt, eq, value = a.partition("=")
        if opt in _OUTPUT_OPTIONS:
            if not eq:  # "--opt FILE"
                i += 1
                value = args[i] if i < len(args) else ""
            inside = scratch / f"{opt.lstrip('-')}{Path(value).suffix}"
            copies.append((inside, Path(value).resolve()))
            out.append(f"{opt}={inside}")
        else:
            out.append(a)
        i += 1
    return out, copies


def command_in_vm(cli_args: list[str], kernel: str | None = None, timeout: float = 600,
                  profile: str | None = None) -> int:
    """`iommufd-conformance CLI_ARGS` inside the test kernel's VM; its output streams here."""
    res, failed = vm_run([sys.executable, "-m", "conformance.cli", *cli_args], kernel, timeout, str(ROOT),
                         profile=profile)
    return failed or _status(res)
