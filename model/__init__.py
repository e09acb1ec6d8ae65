"""An executable model of /dev/iommu: `open_iommufd()` gives a drop-in fd.

`fd.ioctl(request, arg)` behaves like `fcntl.ioctl(real_fd, request, arg, True)`:
arg is a mutable buffer (bytearray, ctypes structure) or an int, output fields are
written back, failure raises OSError with the kernel's errno. The version it implements is
model.uapi.SERIES.
"""
from model.file import IommufdFile, open_iommufd

__all__ = ["IommufdFile", "open_iommufd"]
