"""Model and kernel, step by step: the machine of conformance/explore.py in the suite.

Runs where a real /dev/iommu exists (target kernel, e.g. inside the VM); every step compares the
errno and every output field, and checks the model's invariants. A failure is shrunk, printed as
a replayable program, and kept in the example database so it replays on the next run.
"""
import os

import pytest
from hypothesis import settings

from model.uapi import SERIES, TARGET_SERIES

if TARGET_SERIES != SERIES:
    pytest.skip(f"the model implements Linux {SERIES}; the kernel under test is {TARGET_SERIES}",
                allow_module_level=True)

from conformance.explore import ModelVsKernel, database  # noqa: E402



def _kernel_lacks_iommufd_test() -> bool:
    """A production kernel (no CONFIG_IOMMUFD_TEST) answers IOMMU_TEST_CMD with ENOTTY."""
    import errno

    from conformance.targets import KernelFile
    from model.uapi import T

    f = KernelFile()
    try:
        f.ioctl(T.IOMMU_TEST_CMD, bytearray(8))
    except OSError as e:
        return e.errno == errno.ENOTTY
    finally:
        f.close()
    return False


pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/iommu"),
                       reason="differential: needs a real /dev/iommu to compare the model with "
                              "(run with --iommufd-target vm)"),
    pytest.mark.skipif(os.path.exists("/dev/iommu") and _kernel_lacks_iommufd_test(),
                       reason="differential: the model is the test kernel, with CONFIG_IOMMUFD_TEST's mock IOMMU "
                              "(the explorer's devices); this kernel is built without it"),
]

ModelVsKernel.TestCase.settings = settings(max_examples=int(os.environ.get("IOMMUFD_DIFFERENTIAL_EXAMPLES", 80)),
                                           stateful_step_count=30, deadline=None, database=database("kernel"))
test_model_vs_kernel = ModelVsKernel.TestCase
