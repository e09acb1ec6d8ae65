"""The one choice of kernel version (like rust-vmm's `pub use bindings_v6_6_0::*`).

The model implements the uapi of SERIES, the VM builds Debian's linux-source-SERIES, and the
conformance tests use these bindings: everything else imports B (or SERIES) from here, so a new
headers/linux_X_Y changes nothing until this line does.
"""
import generated

SERIES = "7.2"
B = generated.load(SERIES)


def every_version():
    """The bindings of every generated version, oldest first: for tools that compare versions
    (probe, the kernel matrix), not for choosing one."""
    return [generated.load(v) for v in generated.VERSIONS]
