"""ABI diff between two header versions: what was added, what grew, what broke.

The iommufd extensibility rule (the "General ioctl format" DOC in iommufd.h) allows a
struct to grow at its end; a field that moves, changes size or type, or disappears,
a changed ioctl number, enum or #define value, is an ABI break.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from codegen.ir import Module

BREAK = "break"
COMPATIBLE = "compatible"
# The stable uapi: include/uapi/linux/. iommufd_test.h (selftest uapi) and mm_types.h
# (kernel-internal) are not.
STABLE_HEADERS = frozenset({"iommufd.h", "vfio.h"})


@dataclass(frozen=True)
class Change:
    severity: str  # break | compatible
    kind: str  # ioctl, struct, field, enum, enumerator, define
    what: str  # added, removed, grew, moved, resized, retyped, renumbered, changed
    name: str
    detail: str = ""
    header: str = ""  # iommufd.h (stable uapi), iommufd_test.h (selftest uapi), mm_types.h (kernel-internal)

    @property
    def stable(self) -> bool:
        return self.header in STABLE_HEADERS


def _fields(module: Module, name: str):
    rec = module.records[name]
    return {path: (off, f) for path, off, f in rec.flat_fields(0, module.records)}


def _type_name(f) -> str:
    return f.type.spelling


def _reserved_now_used(fa: dict, fb: dict) -> list[tuple[str, list[str]]]:
    """Reserved fields of the old struct whose bytes the new struct gives to other fields
    exactly (no new field sticks out of the reserved span): the way the uapi grows inside a
    struct. [(old reserved path, [new paths inside its span])]."""
    out = []
    leaves_b = {q: (o, g) for q, (o, g) in fb.items() if g.type.kind != "record"}
    for p, (o, f) in fa.items():
        if f.type.kind == "record" or not (p.rsplit(".", 1)[-1].startswith("__reserved") or "reserved" in f.roles):
            continue
        end = o + f.type.size
        if p in fb and fb[p][0] == o and fb[p][1].type.size == f.type.size:
            continue  # unchanged
        inside = [q for q, (ob, g) in leaves_b.items() if o <= ob and ob + g.type.size <= end]
        straddle = [q for q, (ob, g) in leaves_b.items() if ob < end and ob + g.type.size > o and q not in inside]
        if inside and not straddle and inside != [p]:
            out.append((p, sorted(inside, key=lambda q: leaves_b[q][0])))
    return out


def _headers(m: Module) -> dict[tuple[str, str], str]:
    """(kind, name) -> header file name, for every item the diff can name."""
    h = {}
    base = lambda p: p.rsplit("/", 1)[-1]  # noqa: E731
    for k, io in m.ioctls.items():
        h[("ioctl", k)] = base(io.coord.file)
    for k, r in m.records.items():
        h[("struct", k)] = base(m.origin.get(k, r.coord.file))
    for k, e in m.enums.items():
        h[("enum", k)] = base(e.coord.file)
        for x in e.enumerators:
            h[("enumerator", x.name)] = base(x.coord.file)
    for k, c in m.constants.items():
        h[("define", k)] = base(c.coord.file)
    return h


def diff(old: Module, new: Module) -> list[Change]:
    raw = _diff(old, new)
    ha, hb = _headers(old), _headers(new)
    # Only headers both versions have are compared: a file fetched for one version only
    # (vfio.h, mm_types.h for 7.2) would otherwise read as all "added" or all "removed".
    common = {f.name for f in old.headers} & {f.name for f in new.headers}
    out = []
    for c in raw:
        kind = "struct" if c.kind == "field" else c.kind
        key = (kind, c.name.split(".")[0])
        header = hb.get(key) or ha.get(key, "")
        if not header.endswith(".h"):
            continue  # codegen's own stub types (pgprot_t) are no one's ABI
        if header not in common:
            continue
        out.append(Change(c.severity, c.kind, c.what, c.name, c.detail, header))
    return out


def _diff(old: Module, new: Module) -> list[Change]:
    out: list[Change] = []

    def added_removed(kind, a, b):
        for n in sorted(set(b) - set(a)):
            out.append(Change(COMPATIBLE, kind, "added", n))
        for n in sorted(set(a) - set(b)):
            out.append(Change(BREAK, kind, "removed", n))

    added_removed("ioctl", old.ioctls, new.ioctls)
    for n in sorted(set(old.ioctls) & set(new.ioctls)):
        a, b = old.ioctls[n], new.ioctls[n]
        if a.number != b.number:
            out.append(Change(BREAK, "ioctl", "renumbered", n, f"{a.number:#x} -> {b.number:#x}"))
        if a.min_size != b.min_size and a.min_size is not None and b.min_size is not None:
            out.append(Change(BREAK if (b.min_size or 0) > (a.min_size or 0) else COMPATIBLE, "ioctl",
                              "min_size", n, f"{a.min_size} -> {b.min_size}"))
    named = lambda m: {k: r for k, r in m.records.items() if not r.anonymous}  # noqa: E731
    added_removed("struct", named(old), named(new))
    for n in sorted(set(named(old)) & set(named(new))):
        ra, rb = old.records[n], new.records[n]
        fa, fb = _fields(old, n), _fields(new, n)
        used = _reserved_now_used(fa, fb)
        for p, inside in used:
            out.append(Change(COMPATIBLE, "field", "reserved->used", f"{n}.{p}",
                              f"offset {fa[p][0]}, {fa[p][1].type.size} bytes -> {', '.join(inside)}"))
            # the new fields in the span (a shrunk reserved array among them) are accounted for
            fa = {k: v for k, v in fa.items() if k != p and k not in inside}
            fb = {k: v for k, v in fb.items() if k not in inside}
        for path in sorted(set(fa) - set(fb)):
            out.append(Change(BREAK, "field", "removed", f"{n}.{path}", f"was at offset {fa[path][0]}"))
        for path in sorted(set(fb) - set(fa), key=lambda p: fb[p][0]):
            off, f = fb[path]
            where = "at the end" if off >= ra.size else "inside the old size"
            out.append(Change(COMPATIBLE, "field", "added", f"{n}.{path}",
                              f"offset {off}, {f.type.size} bytes ({_type_name(f)}), {where}"))
        for path in sorted(set(fa) & set(fb), key=lambda p: fa[p][0]):
            (oa, a), (ob, b) = fa[path], fb[path]
            if oa != ob:
                out.append(Change(BREAK, "field", "moved", f"{n}.{path}", f"offset {oa} -> {ob}"))
            if a.type.size != b.type.size:
                out.append(Change(BREAK, "field", "resized", f"{n}.{path}", f"{a.type.size} -> {b.type.size} bytes"))
            elif (a.type.kind, a.type.signed) != (b.type.kind, b.type.signed) and {a.type.kind, b.type.kind} != {"int", "enum"}:
                out.append(Change(BREAK, "field", "retyped", f"{n}.{path}", f"{_type_name(a)} -> {_type_name(b)}"))
        if rb.size > ra.size:
            out.append(Change(COMPATIBLE, "struct", "grew", n, f"{ra.size} -> {rb.size} bytes"))
        elif rb.size < ra.size:
            out.append(Change(BREAK, "struct", "shrank", n, f"{ra.size} -> {rb.size} bytes"))
    ne = lambda m: {k: e for k, e in m.enums.items() if not e.anonymous}  # noqa: E731
    added_removed("enum", ne(old), ne(new))
    va = {x.name: x.value for e in old.enums.values() for x in e.enumerators}
    vb = {x.name: x.value for e in new.enums.values() for x in e.enumerators}
    added_removed("enumerator", va, vb)
    for n in sorted(set(va) & set(vb)):
        if va[n] != vb[n]:
            out.append(Change(BREAK, "enumerator", "changed", n, f"{va[n]:#x} -> {vb[n]:#x}"))
    ca = {k: c.value for k, c in old.constants.items()}
    cb = {k: c.value for k, c in new.constants.items()}
    added_removed("define", ca, cb)
    for n in sorted(set(ca) & set(cb)):
        if ca[n] != cb[n]:
            out.append(Change(BREAK, "define", "changed", n, f"{ca[n]:#x} -> {cb[n]:#x}"))
    return out


def stable_breaks(changes: list[Change]) -> list[Change]:
    """Breaks of the stable uapi (iommufd.h, vfio.h): the ones that fail `diff`."""
    return [c for c in changes if c.severity == BREAK and c.stable]


def render_table(old: Module, new: Module, changes: list[Change]) -> str:
    lines = [f"ABI diff Linux {old.kernel_version} -> {new.kernel_version}"]
    w = max([len(c.name) for c in changes] + [4])
    groups = (
        ("ABI breaks in the stable uapi (iommufd.h, vfio.h)", lambda c: c.severity == BREAK and c.stable),
        ("breaks outside the stable uapi (selftest uapi, kernel-internal)", lambda c: c.severity == BREAK and not c.stable),
        ("compatible changes", lambda c: c.severity == COMPATIBLE),
    )
    for title, pick in groups:
        rows = [c for c in changes if pick(c)]
        lines.append(f"\n{title} ({len(rows)}):")
        for c in rows:
            lines.append(f"  {c.header:<15} {c.kind:<10} {c.what:<11} {c.name:<{w}}  {c.detail}".rstrip())
    nb = len(stable_breaks(changes))
    other = sum(c.severity == BREAK for c in changes) - nb
    lines.append(f"\n{nb} breaking the stable uapi, {other} breaking outside it, "
                 f"{sum(c.severity == COMPATIBLE for c in changes)} compatible")
    return "\n".join(lines)


def as_json(old: Module, new: Module, changes: list[Change]) -> dict:
    return {
        "old": old.kernel_version,
        "new": new.kernel_version,
        "breaking_stable_uapi": len(stable_breaks(changes)),
        "breaking": sum(c.severity == BREAK for c in changes),
        "changes": [{**asdict(c), "stable": c.stable} for c in changes],
    }
