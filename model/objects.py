"""Objects of an iommufd context and their IDs (drivers/iommu/iommufd/main.c, iommufd_private.h).

IDs come from an xarray initialised XA_FLAGS_ALLOC1 and allocated with xa_alloc() in
xa_limit_31b: the lowest free index from 1, so a destroyed object's ID is the next one handed
out. iommufd_object_alloc() reserves the ID (XA_ZERO_ENTRY: lookups do not see it yet),
iommufd_object_finalize() publishes the object, iommufd_object_abort() gives the ID back.
What destroying an object of each type does is main.py's object-ops table.
"""
from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass
from typing import Callable

from model import fault_inject
from model.errors import IommufdError, NotModelled  # noqa: F401 (re-exported: the model's errors)
from model.xarray import XaNodes

XA_LIMIT_31B = (1 << 31) - 1

# enum iommufd_object_type (iommufd_private.h), without NONE and ANY
OBJECT_TYPES = ("DEVICE", "HWPT_PAGING", "HWPT_NESTED", "IOAS", "ACCESS", "FAULT", "VIOMMU", "VDEVICE",
                "VEVENTQ", "HW_QUEUE", "SELFTEST")


class IommufdObject:
    """struct iommufd_object: the common part; each family subclasses it with its own state."""

    type = ""  # enum iommufd_object_type, set by the subclass

    def __init__(self):
        self.id = 0
        self.users = 1  # refcount_t users: 1 while the object is alive in the table
        self.refs = 0  # objects holding a reference on this one (obj->refs beyond its own)


@dataclass(frozen=True)
class ObjectOps:
    """struct iommufd_object_ops: what destroying (or aborting the creation of) an object does."""

    destroy: Callable[[IommufdObject], None]
    abort: Callable[[IommufdObject], None] | None = None


class ObjectTable:
    """The xarray of objects of one context; `ops` is the object-ops table by type."""

    def __init__(self, ops: dict[str, ObjectOps]):
        self.ops = ops
        self.objects: dict[int, IommufdObject] = {}  # finalized objects, by ID
        self._reserved: set[int] = set()  # IDs of allocated, not yet finalized objects
        self._free_below: list[int] = []  # freed IDs below `_next`, sorted
        self._next = 1
        self.tombstones: set[int] = set()  # IDs left XA_ZERO_ENTRY by a tombstone removal
        self.xa = XaNodes("xa_alloc(&ictx->objects)")  # its nodes, for fault injection

    def alloc(self, obj: IommufdObject) -> IommufdObject:
        """_iommufd_object_alloc() (main.c:34): kzalloc() of the object, then xa_alloc() of
        the lowest free ID (its xarray nodes; EBUSY when the range is full); ENOMEM from
        either under fault injection leaves no ID taken."""
        fault_inject.kmalloc("_iommufd_object_alloc: kzalloc")
        if self._free_below:
            id = self._free_below[0]
        elif self._next > XA_LIMIT_31B:
            raise IommufdError(errno.EBUSY)
        else:
            id = self._next
        self.xa.store(id)
        if self._free_below:
            self._free_below.pop(0)
        else:
            self._next += 1
        obj.id = id
        self._reserved.add(obj.id)
        return obj

    def finalize(self, obj: IommufdObject) -> None:
        """iommufd_object_finalize(): the object becomes visible to lookups."""
        self._reserved.remove(obj.id)
        self.objects[obj.id] = obj

    def abort(self, obj: IommufdObject) -> None:
        """iommufd_object_abort(): the reserved ID is free again."""
        self._reserved.remove(obj.id)
        self._release_id(obj.id)

    def abort_and_destroy(self, obj: IommufdObject) -> None:
        """iommufd_object_abort_and_destroy(): ops->abort, or ops->destroy, then abort."""
        ops = self.ops[obj.type]
        (ops.abort or ops.destroy)(obj)
        self.abort(obj)

    def destroy(self, obj: IommufdObject) -> None:
        """iommufd_object_ops[type].destroy (after iommufd_object_remove)."""
        self.ops[obj.type].destroy(obj)

    def get(self, id: int, type: str | None = None) -> IommufdObject:
        """iommufd_get_object() (main.c:165): ENOENT for an unknown ID or the wrong type, and
        under fault injection (the selftest kernel's iommufd_should_fail(), main.c:171)."""
        if fault_inject.should_fail("iommufd_get_object"):
            raise IommufdError(errno.ENOENT)
        obj = self.objects.get(id)
        if obj is None or (type is not None and obj.type != type):
            raise IommufdError(errno.ENOENT)
        return obj

    def remove(self, id: int, tombstone: bool = False) -> IommufdObject:
        """iommufd_object_remove(): ENOENT unknown (a tombstone too: xa_is_zero()), EBUSY while
        another object holds it. With REMOVE_OBJ_TOMBSTONE the ID stays taken (XA_ZERO_ENTRY):
        no lookup finds it and xa_alloc() never hands it out again in this context."""
        obj = self.objects.get(id)
        if obj is None:
            raise IommufdError(errno.ENOENT)
        if obj.refs:
            raise IommufdError(errno.EBUSY)
        del self.objects[id]
        if tombstone:
            self.tombstones.add(id)
        else:
            self._release_id(id)
        return obj

    def _release_id(self, id: int) -> None:
        self.xa.erase(id)
        if id == self._next - 1:
            self._next -= 1
            while self._free_below and self._free_below[-1] == self._next - 1:
                self._next = self._free_below.pop()
        else:
            bisect.insort(self._free_below, id)

    def check_invariants(self) -> None:
        """AssertionError unless the IDs are consistent: every object under its own ID, freed IDs
        sorted, below the next one and unused, nothing left reserved between calls."""
        for id, obj in self.objects.items():
            assert obj.id == id and 1 <= id < self._next and obj.refs >= 0, f"object {id}"
        assert self._free_below == sorted(set(self._free_below)), "free IDs out of order"
        assert not set(self._free_below) & set(self.objects), "a free ID is in use"
        assert not self.tombstones & (set(self.objects) | set(self._free_below)), "a tombstone in use or free"
        assert all(i < self._next for i in self._free_below), "a free ID at or past the next one"
        assert not self._reserved, f"IDs reserved outside a call: {self._reserved}"

    def of_type(self, type: str) -> list[IommufdObject]:
        """Finalized objects of one type, in ID order."""
        return [o for _, o in sorted(self.objects.items()) if o.type == type]
