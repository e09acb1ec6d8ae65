"""The shapes of the generated IOCTL table, declared once (like pycparser's _c_ast.cfg).

emit.py builds each row's field specs with these names, the rows.py template renders them as
named types (generated/rows.py, shared by every version), and ioctls.py.j2 writes each spec
with its field names, so readers write `spec.mask`, never `spec[4]`.

Each entry is (type name, what it describes, ((field, python type, how it is written), ...)):
"int" in decimal, "hex" in hex, "str" and "names" (a tuple of strings) as Python literals.
"""
from __future__ import annotations

SPECS = (
    ("FieldSpec", "A field of the command struct: reserved, user pointer or output.",
     (("name", "str", "str"), ("offset", "int", "int"), ("size", "int", "int"))),
    ("FlagsSpec", "A flags field and the mask of the bits its enum defines.",
     (("name", "str", "str"), ("offset", "int", "int"), ("size", "int", "int"),
      ("enum", "str | None", "str"), ("mask", "int", "hex"))),
    ("IdSpec", "An object ID field and the object types it may name (from its kernel-doc).",
     (("name", "str", "str"), ("offset", "int", "int"), ("size", "int", "int"),
      ("object_types", "tuple[str, ...]", "names"))),
    ("Departure", "A reserved/flags field checked out of the generic order (handler_facts.json).",
     (("name", "str", "str"), ("offset", "int", "int"), ("size", "int", "int"),
      ("check", "str", "str"), ("source", "str", "str"))),
    ("Case", "A generated conformance case (codegen/cases.py): what to do to an ioctl's command and "
             "the errno name it must answer ('as_base': what the unmodified command answers).",
     (("ioctl", "str", "str"), ("kind", "str", "str"), ("field", "str", "str"), ("offset", "int", "int"),
      ("size", "int", "int"), ("value", "int", "hex"), ("expect", "str", "str"), ("needs_base", "bool", "bool"))),
)

# IoctlRow: (field, python type, how it is written, default). Spec lists name their spec type.
ROW = (
    ("name", "str", "str", None),
    ("number", "int", "hex", None),
    ("nr", "int", "hex", None),
    ("struct", "str | None", "str", None),
    ("size", "int", "int", None),
    ("min_size", "int | None", "int", None),
    ("min_size_field", "str | None", "str", None),
    ("handler", "str | None", "str", None),
    ("source", "str | None", "str", None),
    ("reserved", "tuple[FieldSpec, ...]", "FieldSpec", "()"),
    ("flags", "tuple[FlagsSpec, ...]", "FlagsSpec", "()"),
    ("ids", "tuple[IdSpec, ...]", "IdSpec", "()"),
    ("pointers", "tuple[FieldSpec, ...]", "FieldSpec", "()"),
    ("outputs", "tuple[FieldSpec, ...]", "FieldSpec", "()"),
    ("departures", "tuple[Departure, ...]", "Departure", "()"),
)

SPEC_FIELDS = {name: tuple(f[0] for f in fields) for name, _doc, fields in SPECS}
_FORMATS = {name: {f[0]: f[2] for f in fields} for name, _doc, fields in SPECS}


def literal(value, how: str) -> str:
    """`value` as Python source, written the way its shape says."""
    if value is None:
        return "None"
    if how == "hex":
        return hex(value) if value >= 0 else str(value)
    if how == "int":
        return str(int(value))
    if how == "bool":
        return repr(bool(value))
    if how == "str":
        return repr(str(value))
    if how == "names":
        return "(" + "".join(f"{str(v)!r}, " for v in value).rstrip(" ") + ")" if value else "()"
    if how in _FORMATS and value and not isinstance(value[0], (tuple, list)):  # one spec
        return spec_literal(how, value)
    if how in _FORMATS:  # a tuple of specs of that type
        return "(" + "".join(spec_literal(how, s) + ", " for s in value).rstrip(" ") + ")" if value else "()"
    raise ValueError(f"unknown format {how!r}")


def spec_literal(type_name: str, values) -> str:
    """`FlagsSpec(name='flags', offset=4, ...)` for a tuple in the order SPECS declares."""
    names = SPEC_FIELDS[type_name]
    if len(values) != len(names):
        raise ValueError(f"{type_name} has fields {names}, got {values!r}")
    fmt = _FORMATS[type_name]
    return f"{type_name}(" + ", ".join(f"{n}={literal(v, fmt[n])}" for n, v in zip(names, values)) + ")"
