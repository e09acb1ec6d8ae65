"""The model's errors: a handler's errno, and what is not modelled. A module of its own so
that the lowest layers (fault injection, the xarray) raise them without importing the rest."""
from __future__ import annotations

import errno


class IommufdError(Exception):
    """A handler's -errno; the dispatcher turns it into OSError."""

    def __init__(self, err: int):
        super().__init__(err)
        self.errno = err


class NotModelled(OSError):
    """An ioctl (or a case of one) the model does not implement yet: ENOSYS with its name,
    never a made-up answer. The conformance suite skips such a case on the model."""

    def __init__(self, name: str):
        super().__init__(errno.ENOSYS, f"model: {name} is not modelled yet")
        self.ioctl = name
