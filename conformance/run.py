"""`run`: the conformance suite against a target (model by default, kernel, or vm)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "conformance" / "tests"


def pytest_in_vm(pytest_args: list[str], kernel: str | None = None, timeout: float = 1500) -> int:
    """Run `python -m pytest ARGS --iommufd-target kernel` in the test kernel's VM.

    Returns pytest's exit status, or 1 when the guest kernel logged a WARNING/BUG/oops
    (each shown with the test that was running).
    """
    from codegen.debian import DependencyError, FetchError
    from conformance import kbuild, vm

    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args, "--iommufd-target=kernel"]
    try:
        image = Path(kernel) if kernel else kbuild.build_kernel(log=lambda s: print(s, file=sys.stderr))
        res = vm.run_in_vm(image, argv, timeout=timeout, cwd=os.getcwd(), hugepages=64,
                           on_output=lambda s: print(s, end="", flush=True))
    except vm.VmError as e:
        print(f"\niommufd-conformance: the VM run failed: {e}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError, kbuild.KernelBuildError, DependencyError, FetchError) as e:
        print(f"iommufd-conformance: target vm: {e}", file=sys.stderr)
        return 3
    if res.findings:
        print("\niommufd-conformance: the guest kernel reported problems during the run:", file=sys.stderr)
        for f in res.findings:
            print(f, file=sys.stderr)
        return 1
    return res.returncode if res.returncode is not None else 3
