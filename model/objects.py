"""The object table of an iommufd context (drivers/iommu/iommufd/main.c).

IDs come from an xarray initialised XA_FLAGS_ALLOC1 and allocated with xa_alloc()
in xa_limit_31b (iommufd_object_alloc_ucmd / _iommufd_object_alloc): the lowest free
index from 1, so a destroyed object's ID is the next one handed out.
"""
from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field

XA_LIMIT_31B = (1 << 31) - 1


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


@dataclass(eq=False)
class IommufdObject:
    type: str  # enum iommufd_object_type: IOAS, HWPT_PAGING, DEVICE, ...
    id: int = 0
    users: int = 1  # refcount_t users: 1 while the object is alive in the table
    # Objects that hold a reference on this one (iommufd_ref_to_users, obj->refs).
    refs: int = 0
    data: object = None


@dataclass
class ObjectTable:
    objects: dict[int, IommufdObject] = field(default_factory=dict)
    _free_below: list[int] = field(default_factory=list)  # freed IDs below `_next`, sorted
    _next: int = 1

    def alloc_id(self) -> int:
        """xa_alloc(): the lowest free ID >= 1."""
        if self._free_below:
            return self._free_below[0]
        if self._next > XA_LIMIT_31B:
            raise IommufdError(errno.EBUSY)  # xa_alloc's -EBUSY when the range is full
        return self._next

    def insert(self, obj: IommufdObject) -> IommufdObject:
        obj.id = self.alloc_id()
        if self._free_below and self._free_below[0] == obj.id:
            self._free_below.pop(0)
        else:
            self._next += 1
        self.objects[obj.id] = obj
        return obj

    def get(self, id: int, type: str | None = None) -> IommufdObject:
        """iommufd_get_object(): ENOENT for an unknown ID or the wrong type."""
        obj = self.objects.get(id)
        if obj is None or (type is not None and obj.type != type):
            raise IommufdError(errno.ENOENT)
        return obj

    def remove(self, id: int) -> IommufdObject:
        """iommufd_object_remove(): ENOENT unknown, EBUSY while another object holds it."""
        obj = self.objects.get(id)
        if obj is None:
            raise IommufdError(errno.ENOENT)
        if obj.refs:
            raise IommufdError(errno.EBUSY)
        del self.objects[id]
        if id == self._next - 1:
            self._next -= 1
            while self._free_below and self._free_below[-1] == self._next - 1:
                self._next = self._free_below.pop()
        else:
            bisect.insort(self._free_below, id)
        return obj
