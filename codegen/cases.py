"""Conformance cases generated from the IOCTL table: one case generator per kind, each a few
lines; the hand-written parametrized test in conformance/tests/test_generated_cases.py runs them.

Kinds, for every iommufd ioctl of a header version:
- size_below_min: user size min_size - 1 -> EINVAL (iommufd_fops_ioctl());
- zero_tail: user size + 8 with a zero tail -> what the exact size answers;
- nonzero_tail: the same with a nonzero last byte -> E2BIG (copy_struct_from_user());
- reserved_nonzero: each reserved field nonzero -> EOPNOTSUPP (not the handler_facts departures);
- unknown_flag: the top bit of each flags field whose enum leaves it undefined -> EOPNOTSUPP;
- id_missing / id_wrong_type: each input object-ID field naming nothing / another type -> ENOENT
  (iommufd_get_object()), on a command that is valid otherwise (needs_base);
- bad_pointer: each user pointer unmapped -> EFAULT, on a valid command (needs_base);
- outputs_in_size: a valid command with the user size at min_size, followed by bytes that are not
  the user's struct: it succeeds and nothing past the user size changes (needs_base).
Expectations are errno names; "as_base" compares with the unmodified command.
"""
from __future__ import annotations

# Never mapped (below vm.mmap_min_addr) and page aligned, so it passes the handlers' alignment
# checks (iommufd_test_md_check_pa(), _check_refs()) and reaches the copy or the pin.
UNMAPPED = 0x1000


def size_below_min(row):
    yield ("size_below_min", "size", 0, 4, row["min_size"] - 1, "EINVAL", False)


def zero_tail(row):
    yield ("zero_tail", "size", 0, 4, row["size"] + 8, "as_base", False)


def nonzero_tail(row):
    yield ("nonzero_tail", "size", row["size"] + 7, 1, 1, "E2BIG", False)


def reserved_nonzero(row):
    for s in row["reserved"]:
        yield ("reserved_nonzero", s[0], s[1], s[2], 1, "EOPNOTSUPP", False)


def unknown_flag(row):
    for name, off, size, _enum, mask in row["flags"]:
        top = 1 << (8 * size - 1)
        if not top & mask:
            yield ("unknown_flag", name, off, size, top, "EOPNOTSUPP", False)


def ids(row):
    outs = {s[0] for s in row["outputs"]}
    for name, off, size, types in row["ids"]:
        if name not in outs:
            yield ("id_missing", name, off, size, 0x7FFFFFF0, "ENOENT", True)
            if types and "ANY" not in types:  # IOMMU_DESTROY.id takes any object: no wrong type
                yield ("id_wrong_type", name, off, size, 0, "ENOENT", True)


def bad_pointer(row):
    for name, off, size in row["pointers"]:
        yield ("bad_pointer", name, off, size, UNMAPPED, "EFAULT", True)


def outputs_in_size(row):
    if row["outputs"]:
        yield ("outputs_in_size", "size", 0, 4, row["min_size"], "0", True)


GENERATORS = (size_below_min, zero_tail, nonzero_tail, reserved_nonzero, unknown_flag, ids, bad_pointer,
              outputs_in_size)


def cases(rows: list[dict], cmd_base: int) -> list[tuple]:
    """Every case of every iommufd ioctl row (emit.ioctl_rows() dicts), in table order."""
    out = []
    for row in rows:
        if not row["struct"] or row["nr"] < cmd_base or row["min_size"] is None:
            continue
        for gen in GENERATORS:
            for kind, field, off, size, value, expect, needs_base in gen(row):
                out.append((row["name"], kind, field, off, size, value, expect, needs_base))
    return out
