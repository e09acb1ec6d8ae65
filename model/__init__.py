"""An executable model of /dev/iommu: `open_iommufd()` gives a drop-in fd.

`fd.ioctl(request, arg)` behaves like `fcntl.ioctl(real_fd, request, arg, True)`:
arg is a mutable buffer (bytearray, ctypes structure) or an int, output fields are
written back, failure raises OSError with the kernel's errno. The version it implements is
model.uapi.SERIES.
"""
__all__ = ["IommufdFile", "open_iommufd"]


def __getattr__(name: str):
    # Lazy (PEP 562): `import model.uapi` (the bindings, for the CLI and the kernel build) must not
    # pull in the model itself and numba; the file and its context come with the first use.
    if name in __all__:
        from model import file

        return getattr(file, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
