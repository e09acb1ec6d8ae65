"""The IR: small frozen dataclasses that remember where each declaration came from.

Everything codegen emits is derived from these; nothing here knows ioctl semantics
beyond what the headers and the IOCTL_OP facts state.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Coord:
    file: str
    line: int
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f":{self.column}" if self.column else "")


class HeaderError(Exception):
    """A problem in an input file, rendered `file:line:col: message` like a compiler."""

    def __init__(self, coord: Coord | str | None, message: str):
        self.coord = coord
        self.message = message
        super().__init__(f"{coord}: {message}" if coord else message)


@dataclass(frozen=True)
class CType:
    """A resolved C type. kind: int, bool, enum, pointer, record, array."""

    kind: str
    spelling: str
    size: int
    align: int
    signed: bool = False
    element: CType | None = None  # arrays
    length: int | None = None  # arrays; 0 = flexible array member
    record: str | None = None  # record kind: key into Module.records
    enum: str | None = None  # enum kind: key into Module.enums


@dataclass(frozen=True)
class Field:
    name: str | None  # None: anonymous struct/union member
    type: CType
    offset: int
    coord: Coord
    bit_offset: int | None = None  # bitfields: bit offset from `offset`
    bit_width: int | None = None
    doc: str = ""
    # Mined from names and kernel-doc (codegen.kerneldoc): reserved, output, input,
    # user_pointer, object_id, flags, size.
    roles: frozenset[str] = frozenset()
    flags_enum: str | None = None  # "Combination of enum X"
    value_enum: str | None = None  # "One of enum X"
    object_types: tuple[str, ...] = ()  # object_id fields: which object types

    @property
    def end(self) -> int:
        return self.offset + self.type.size


@dataclass(frozen=True)
class Record:
    kind: str  # struct | union
    name: str  # tag, or a synthetic name (parent_member) for an anonymous type
    fields: tuple[Field, ...]
    size: int
    align: int
    coord: Coord
    anonymous: bool = False  # declared without a tag inside another record
    doc: str = ""

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def flat_fields(self, base: int = 0, records: dict | None = None, prefix: str = ""):
        """(dotted name, absolute offset, Field) of every named leaf, through anonymous members."""
        for f in self.fields:
            off = base + f.offset
            if f.type.kind == "record" and records is not None:
                sub = records[f.type.record]
                p = prefix if f.name is None else f"{prefix}{f.name}."
                yield from sub.flat_fields(off, records, p)
            elif f.name is not None:
                yield prefix + f.name, off, f


@dataclass(frozen=True)
class Enumerator:
    name: str
    value: int
    coord: Coord
    doc: str = ""


@dataclass(frozen=True)
class Enum:
    name: str  # tag, or a synthetic name from its first enumerator for anonymous enums
    enumerators: tuple[Enumerator, ...]
    size: int
    signed: bool
    coord: Coord
    anonymous: bool = False
    doc: str = ""
    is_flags: bool = False  # named by a "Combination of enum" field, or all values single bits


@dataclass(frozen=True)
class Constant:
    name: str
    value: int | str  # str for a string #define
    expr: str
    coord: Coord


@dataclass(frozen=True)
class Ioctl:
    name: str
    number: int  # the request number
    nr: int  # _IOC_NR
    struct: str | None  # argument struct (from the IOCTL_OP facts)
    min_size: int | None  # offsetofend(struct, min_size_field)
    min_size_field: str | None
    handler: str | None
    source: str | None  # citation of the fact
    coord: Coord
    # Fields a handler checks out of the generic order (handler_facts.json):
    # (field, "unchecked" | "after_lookup", citation).
    field_checks: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class HeaderFile:
    name: str
    sha256: str


@dataclass(frozen=True)
class Module:
    """Everything parsed from one kernel version's headers."""

    version: str  # "7.2"
    kernel_version: str  # "7.2.13"
    headers: tuple[HeaderFile, ...]
    records: dict[str, Record] = field(default_factory=dict, hash=False)
    enums: dict[str, Enum] = field(default_factory=dict, hash=False)
    constants: dict[str, Constant] = field(default_factory=dict, hash=False)
    ioctls: dict[str, Ioctl] = field(default_factory=dict, hash=False)
    # Which header each top-level record/enum came from (iommufd.h, iommufd_test.h, mm_types.h).
    origin: dict[str, str] = field(default_factory=dict, hash=False)
