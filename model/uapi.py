"""The one choice of kernel version (like rust-vmm's `pub use bindings_v6_6_0::*`).

The model implements the uapi of SERIES (B), the VM builds Debian's linux-source-SERIES, and the
conformance tests use T: SERIES' bindings too, unless the kernel under test is of another series
(a kernel matrix). Everything else imports from here, so a new headers/linux_X_Y changes nothing
until this line does.
"""
import os

import generated

SERIES = "7.2"
B = generated.load(SERIES)

# The bindings the conformance tests use: those of the kernel under test. A run against another
# series' kernel (`--target vm=6.12`) sets IOMMUFD_TARGET_SERIES in the guest; otherwise SERIES.
TARGET_SERIES = os.environ.get("IOMMUFD_TARGET_SERIES") or SERIES
T = generated.load(TARGET_SERIES)


def every_version():
    """The bindings of every generated version, oldest first: for tools that compare versions
    (probe, the kernel matrix), not for choosing one."""
    return [generated.load(v) for v in generated.VERSIONS]


def set_fields(obj, **fields):
    """Set fields of a bindings struct by dotted name (`mock_domain.out_stdev_id=...`); returns it."""
    for name, value in fields.items():
        target = obj
        *path, last = name.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return obj
