"""pycparser AST -> IR: types resolved, layouts computed (LP64, GCC rules), docs and facts joined."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

from pycparser import c_ast, c_parser

from codegen import kerneldoc
from codegen.ir import (
    Constant, Coord, CType, Enum, Enumerator, Field, HeaderError, HeaderFile, Ioctl, Module, Record,
)
from codegen.preprocess import ALIGN_OVERRIDES, CONST_PREFIX, display_path, preprocess, read_header

# LP64 (x86_64, arm64, riscv64) sizes of the C base types: (size, signed).
_BASE = {
    "char": (1, True), "signed char": (1, True), "unsigned char": (1, False),
    "short": (2, True), "short int": (2, True), "signed short": (2, True), "signed short int": (2, True),
    "unsigned short": (2, False), "unsigned short int": (2, False),
    "int": (4, True), "signed": (4, True), "signed int": (4, True), "unsigned": (4, False), "unsigned int": (4, False),
    "long": (8, True), "long int": (8, True), "signed long": (8, True), "signed long int": (8, True),
    "unsigned long": (8, False), "unsigned long int": (8, False),
    "long long": (8, True), "long long int": (8, True), "signed long long": (8, True),
    "signed long long int": (8, True), "unsigned long long": (8, False), "unsigned long long int": (8, False),
    "_Bool": (1, False),
}


def _coord(node) -> Coord:
    c = getattr(node, "coord", None)
    if c is None:
        return Coord("<unknown>", 0)
    return Coord(c.file or "<unknown>", c.line or 0, c.column or None)


def _int_literal(text: str, coord: Coord) -> int:
    t = text.rstrip("uUlL")
    try:
        if t.startswith("'"):
            body = t[1:-1]
            return ord(body.encode().decode("unicode_escape"))
        if t.lower().startswith("0x"):
            return int(t, 16)
        if t.lower().startswith("0b"):
            return int(t, 2)
        if len(t) > 1 and t.startswith("0"):
            return int(t, 8)
        return int(t)
    except ValueError:
        raise HeaderError(coord, f"unsupported constant {text!r}") from None


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class Builder:
    def __init__(self):
        self.typedefs: dict[str, c_ast.Node] = {}
        self.records: dict[str, Record] = {}
        self.record_order: list[str] = []
        self.enums: dict[str, Enum] = {}
        self.values: dict[str, int] = {}  # enumerators and constants, for expressions
        self.types: dict[str, tuple] = {}  # their C types (see _eval)
        self.constants: dict[str, Constant] = {}
        self.docs: dict[str, dict] = {}  # display file -> kerneldoc docs
        self.origin: dict[str, str] = {}

    # -- constant expressions -------------------------------------------------
    # C integer arithmetic on LP64: a value carries its type (bits, signed, rank), and
    # operators apply the integer promotions and usual arithmetic conversions, so
    # `(1 << 31)` is INT_MIN as gcc computes it, not 2**31.
    INT, UINT, LONG, ULONG, LLONG, ULLONG = (32, True, 1), (32, False, 1), (64, True, 2), (64, False, 2), (64, True, 3), (64, False, 3)

    @staticmethod
    def _wrap(v: int, t) -> int:
        bits, signed, _ = t
        v &= (1 << bits) - 1
        return v - (1 << bits) if signed and v >> (bits - 1) else v

    def _literal_type(self, text: str, v: int):
        suffix = text.lower().lstrip("0123456789abcdefx'\\").replace("'", "")
        decimal = not text.lower().startswith("0") or text == "0"
        u, l = "u" in suffix, suffix.count("l")
        order = [self.INT, self.UINT, self.LONG, self.ULONG, self.LLONG, self.ULLONG]
        order = [t for t in order if t[2] >= (1 + min(l, 2)) and (not u or not t[1])]
        if decimal and not u:
            order = [t for t in order if t[1]]
        for t in order:
            if self._wrap(v, t) == v:
                return t
        return self.ULLONG

    def _convert(self, a, b):
        (_, ta), (_, tb) = a, b
        ta = ta if ta[2] >= 1 else self.INT
        tb = tb if tb[2] >= 1 else self.INT
        if ta[1] == tb[1]:
            return ta if ta[2] >= tb[2] else tb
        s_, u_ = (ta, tb) if ta[1] else (tb, ta)
        if u_[2] >= s_[2]:
            return u_
        if s_[0] > u_[0]:
            return s_
        return (s_[0], False, s_[2])

    def eval(self, node) -> int:
        return self._eval(node)[0]

    def _eval(self, node):
        if isinstance(node, c_ast.Constant):
            if node.type in ("string",):
                raise HeaderError(_coord(node), "a string is not an integer constant")
            v = _int_literal(node.value, _coord(node))
            if node.value.startswith("'"):
                return v, self.INT
            return v, self._literal_type(node.value, v)
        if isinstance(node, c_ast.ID):
            if node.name not in self.values:
                raise HeaderError(_coord(node), f"unknown constant '{node.name}'")
            return self.values[node.name], self.types.get(node.name, self.INT)
        if isinstance(node, c_ast.UnaryOp):
            if node.op == "sizeof":
                return self.ctype(node.expr).size, self.ULONG
            v, t = self._eval(node.expr)
            t = t if t[2] >= 1 else self.INT
            ops = {"-": lambda: -v, "+": lambda: v, "~": lambda: ~v, "!": lambda: int(not v)}
            if node.op not in ops:
                raise HeaderError(_coord(node), f"unsupported operator '{node.op}' in a constant")
            if node.op == "!":
                return int(not v), self.INT
            return self._wrap(ops[node.op](), t), t
        if isinstance(node, c_ast.BinaryOp):
            a, b = self._eval(node.left), self._eval(node.right)
            x, y = a[0], b[0]
            if node.op in ("<<", ">>"):
                t = a[1] if a[1][2] >= 1 else self.INT
                v = x << y if node.op == "<<" else x >> y
                return self._wrap(v, t), t
            if node.op in ("&&", "||"):
                return int(bool(x and y) if node.op == "&&" else bool(x or y)), self.INT
            t = self._convert(a, b)
            x, y = self._wrap(x, t), self._wrap(y, t)
            cmp = {"==": x == y, "!=": x != y, "<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}
            if node.op in cmp:
                return int(cmp[node.op]), self.INT
            ops = {
                "+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
                "/": lambda: int(x / y), "%": lambda: x - int(x / y) * y,
                "&": lambda: x & y, "|": lambda: x | y, "^": lambda: x ^ y,
            }
            if node.op not in ops:
                raise HeaderError(_coord(node), f"unsupported operator '{node.op}' in a constant")
            return self._wrap(ops[node.op](), t), t
        if isinstance(node, c_ast.TernaryOp):
            return self._eval(node.iftrue) if self.eval(node.cond) else self._eval(node.iffalse)
        if isinstance(node, c_ast.Cast):
            v, _ = self._eval(node.expr)
            ct = self.ctype(node.to_type)
            t = (ct.size * 8, ct.signed, 1 if ct.size <= 4 else 2)
            return self._wrap(v, t), t
        raise HeaderError(_coord(node), f"unsupported construct {type(node).__name__} in a constant expression")

    # -- types ----------------------------------------------------------------
    def ctype(self, node, hint: str = "") -> CType:
        """Resolve a declarator type node. `hint` names anonymous records (parent_member)."""
        if isinstance(node, c_ast.Typename):
            return self.ctype(node.type, hint)
        if isinstance(node, c_ast.TypeDecl):
            return self.ctype(node.type, hint)
        if isinstance(node, c_ast.PtrDecl):
            inner = node.type
            spelled = self._spell(inner)
            return CType("pointer", spelled + " *", 8, 8)
        if isinstance(node, c_ast.ArrayDecl):
            el = self.ctype(node.type, hint)
            n = 0 if node.dim is None else self.eval(node.dim)
            return CType("array", f"{el.spelling}[{n or ''}]", el.size * n, el.align, element=el, length=n)
        if isinstance(node, c_ast.IdentifierType):
            name = " ".join(node.names)
            if name in self.typedefs:
                t = self.ctype(self.typedefs[name], name)
                align = ALIGN_OVERRIDES.get(name, t.align)
                return CType(t.kind, name, t.size, align, t.signed, t.element, t.length, t.record, t.enum)
            if name in _BASE:
                size, signed = _BASE[name]
                return CType("bool" if name == "_Bool" else "int", name, size, size, signed)
            raise HeaderError(_coord(node), f"unknown type '{name}'")
        if isinstance(node, (c_ast.Struct, c_ast.Union)):
            kind = "struct" if isinstance(node, c_ast.Struct) else "union"
            if node.decls is not None:
                key = self.record(node, hint)
            else:
                key = node.name
                if key not in self.records:
                    raise HeaderError(_coord(node), f"incomplete type '{kind} {node.name}' used by value")
            r = self.records[key]
            spelled = f"{kind} {r.name}"
            return CType("record", spelled, r.size, r.align, record=key)
        if isinstance(node, c_ast.Enum):
            if node.values is not None:
                key = self.enum(node)
            else:
                key = node.name
                if key not in self.enums:
                    raise HeaderError(_coord(node), f"incomplete type 'enum {node.name}'")
            e = self.enums[key]
            return CType("enum", f"enum {e.name}", e.size, e.size, e.signed, enum=key)
        raise HeaderError(_coord(node), f"unsupported declarator {type(node).__name__}")

    def _spell(self, node) -> str:
        if isinstance(node, c_ast.TypeDecl):
            return self._spell(node.type)
        if isinstance(node, c_ast.PtrDecl):
            return self._spell(node.type) + " *"
        if isinstance(node, c_ast.IdentifierType):
            return " ".join(node.names)
        if isinstance(node, (c_ast.Struct, c_ast.Union)):
            return ("struct " if isinstance(node, c_ast.Struct) else "union ") + (node.name or "<anonymous>")
        if isinstance(node, c_ast.Enum):
            return "enum " + (node.name or "<anonymous>")
        if isinstance(node, c_ast.FuncDecl):
            return "function"
        if isinstance(node, c_ast.ArrayDecl):
            return self._spell(node.type) + "[]"
        raise HeaderError(_coord(node), f"unsupported declarator {type(node).__name__}")

    # -- declarations ---------------------------------------------------------
    def record(self, node, hint: str = "") -> str:
        kind = "struct" if isinstance(node, c_ast.Struct) else "union"
        anonymous = node.name is None
        key = node.name or hint or f"anon_{kind}_{_coord(node).line}"
        if not anonymous and key in self.records:
            raise HeaderError(_coord(node), f"redefinition of '{kind} {key}'")
        coord = _coord(node)
        docs = self.docs.get(coord.file, {}).get((kind, node.name)) if node.name else None
        fields = []
        bitpos = 0
        size = 0
        align = 1
        for d in node.decls or []:
            fhint = f"{key}_{d.name}" if d.name else f"{key}_anon{len(fields)}"
            t = self.ctype(d.type, fhint)
            text = docs.members.get(d.name, "") if (docs and d.name) else ""
            roles, flags_enum, value_enum, objects = kerneldoc.roles_of(
                d.name, text, t.kind in ("int", "enum") and t.size == 8
            )
            common = dict(
                coord=_coord(d), doc=text, roles=roles, flags_enum=flags_enum,
                value_enum=value_enum, object_types=objects,
            )
            if d.bitsize is not None:
                width = self.eval(d.bitsize)
                unit = t.size * 8
                if width > unit:
                    raise HeaderError(_coord(d), f"bitfield '{d.name}' wider than its type")
                if kind == "union":
                    bitpos = 0
                if width == 0 or (bitpos % unit) + width > unit:
                    bitpos = _round_up(bitpos, unit)
                off = bitpos // unit * t.size
                if width:
                    fields.append(Field(d.name, t, off, bit_offset=bitpos - off * 8, bit_width=width, **common))
                bitpos += width
                align = max(align, t.align)
                size = max(size, _round_up(bitpos, 8) // 8)
                if kind == "union":
                    bitpos = 0
                continue
            if kind == "union":
                off = 0
            else:
                bitpos = _round_up(bitpos, t.align * 8)
                off = bitpos // 8
                bitpos += t.size * 8
            fields.append(Field(d.name, t, off, **common))
            align = max(align, t.align)
            size = max(size, off + t.size)
        size = _round_up(size, align)
        rec = Record(
            kind, key, tuple(fields), size, align, coord, anonymous,
            (docs.summary if docs else ""),
        )
        self.records[key] = rec
        self.record_order.append(key)
        return key

    def enum(self, node) -> str:
        coord = _coord(node)
        items = node.values.enumerators
        key = node.name or f"anon_{items[0].name}"
        docs = self.docs.get(coord.file, {}).get(("enum", node.name)) if node.name else None
        value = -1
        out = []
        for it in items:
            value = self.eval(it.value) if it.value is not None else value + 1
            self.values[it.name] = value
            out.append(Enumerator(it.name, value, _coord(it), docs.members.get(it.name, "") if docs else ""))
        lo = min(e.value for e in out)
        hi = max(e.value for e in out)
        signed = lo < 0
        size = 4 if (-(2**31) <= lo and hi < (2**31 if signed else 2**32)) else 8
        e = Enum(key, tuple(out), size, signed, coord, node.name is None, docs.summary if docs else "")
        self.enums[key] = e
        return key

    def top(self, ast: c_ast.FileAST, macro_bodies: dict[str, str]):
        for ext in ast.ext:
            coord = _coord(ext)
            if isinstance(ext, c_ast.Typedef):
                self.typedefs[ext.name] = ext.type
                # A typedef of an inline struct defines the struct (vma_flags_t, pgprot_t).
                inner = ext.type.type if isinstance(ext.type, c_ast.TypeDecl) else None
                if isinstance(inner, (c_ast.Struct, c_ast.Union, c_ast.Enum)) and (
                    getattr(inner, "decls", None) is not None or getattr(inner, "values", None) is not None
                ):
                    t = self.ctype(ext.type, ext.name)
                    key = t.record or t.enum
                    self.origin.setdefault(key, coord.file)
                    # Resolve later uses of the typedef to the record just built.
                    self.typedefs[ext.name] = c_ast.TypeDecl(
                        ext.name, [], None,
                        type(inner)(name=key, decls=None) if t.record else c_ast.Enum(key, None),
                    )
                continue
            if not isinstance(ext, c_ast.Decl):
                raise HeaderError(coord, f"unsupported top-level construct {type(ext).__name__}")
            if ext.name and ext.name.startswith(CONST_PREFIX):
                name = ext.name[len(CONST_PREFIX):]
                init = ext.init
                if isinstance(init, c_ast.Constant) and init.type == "string":
                    # A string #define (VFIO_DEVICE_API_PCI_STRING): kept as text.
                    self.constants[name] = Constant(name, init.value[1:-1], macro_bodies.get(name, ""), coord)
                    continue
                try:
                    value, ctype = self._eval(ext.init)
                except HeaderError as e:
                    raise HeaderError(coord, f"#define {name}: {e.message}") from None
                self.values[name] = value
                self.types[name] = ctype
                self.constants[name] = Constant(name, value, macro_bodies.get(name, ""), coord)
                continue
            t = ext.type
            if isinstance(t, (c_ast.Struct, c_ast.Union)):
                if t.decls is None:
                    continue  # forward declaration
                key = self.record(t)
                self.origin[key] = coord.file
            elif isinstance(t, c_ast.Enum):
                if t.values is None:
                    continue
                key = self.enum(t)
                self.origin[key] = coord.file
            elif isinstance(t, c_ast.FuncDecl):
                continue
            else:
                raise HeaderError(coord, f"unsupported declaration of '{ext.name}' (only types and constants)")


def _parser_position(parser) -> Coord | None:
    try:
        toks = parser._tokens  # pycparser 3 internals; a best effort for errors without a line
        tok = toks._buffer[min(toks._index, len(toks._buffer) - 1)]
        return Coord(parser.clex._filename, tok.lineno, tok.column)
    except (AttributeError, IndexError):
        return None


def parse_text(text: str, display: str = "<text>") -> c_ast.FileAST:
    parser = c_parser.CParser()
    try:
        return parser.parse(text, display)
    except c_parser.ParseError as e:
        msg = str(e)
        m = re.match(r"^(.*?:\d+(?::\d+)?): (.*)$", msg)
        if m:
            raise HeaderError(m.group(1), f"cannot parse: {m.group(2)}") from None
        # Some pycparser errors carry no line: take the token the parser stopped at.
        where = _parser_position(parser) or display
        raise HeaderError(where, f"cannot parse: {msg.split(': ', 1)[-1]}") from None
    except Exception as e:  # pycparser asserts on some malformed input
        raise HeaderError(display, f"cannot parse ({type(e).__name__}: {e})") from None


def _inherit_same_as(b: Builder) -> None:
    """Fields documented "same as for iommu_ioas_map" take that struct's field roles."""
    for key, r in list(b.records.items()):
        fields = []
        for f in r.fields:
            m = re.match(r"(?i)same as for (\w+)", f.doc)
            src = b.records.get(m.group(1)) if m else None
            g = src.field(f.name) if src else None
            if g is not None:
                f = replace(f, roles=f.roles | g.roles, flags_enum=f.flags_enum or g.flags_enum,
                            value_enum=f.value_enum or g.value_enum, object_types=f.object_types or g.object_types)
            fields.append(f)
        b.records[key] = replace(r, fields=tuple(fields))


def _json_line(text: str, needle: str) -> int:
    i = text.find(needle)
    return text.count("\n", 0, i) + 1 if i >= 0 else 1


def load_facts(path: Path, root: Path, b: Builder) -> dict[str, Ioctl]:
    """Join ioctl_facts.json to the parsed types; every fact must name a real struct and field."""
    disp = display_path(path, root)
    text = path.read_text(errors="replace")
    facts = load_json(path, root)
    out = {}
    for f in facts["ioctls"]:
        coord = Coord(disp, _json_line(text, f'"ioctl": "{f["ioctl"]}"'))
        name = f["ioctl"]
        if name not in b.constants:
            raise HeaderError(coord, f"fact names ioctl {name}, which the headers do not define")
        rec = b.records.get(f["struct"])
        if rec is None:
            raise HeaderError(coord, f"fact for {name} names struct {f['struct']}, which the headers do not define")
        last = rec.field(f["min_size_last_field"])
        if last is None:
            raise HeaderError(
                coord, f"fact for {name} names field {f['struct']}.{f['min_size_last_field']}, which does not exist"
            )
        number = b.constants[name].value
        out[name] = Ioctl(
            name, number, number & 0xFF, f["struct"], last.end, last.name, f.get("handler"),
            f.get("source"), b.constants[name].coord,
        )
    return out


FIELD_CHECKS = ("unchecked", "after_lookup")


def load_handler_facts(path: Path, root: Path, b: Builder, ioctls: dict[str, Ioctl]) -> dict[str, Ioctl]:
    """Join handler_facts.json: per-field departures from the generic check order."""
    disp = display_path(path, root)
    text = path.read_text()
    out = dict(ioctls)
    for f in json.loads(text)["fields"]:
        coord = Coord(disp, _json_line(text, f'"field": "{f["field"]}"'))
        io = out.get(f["ioctl"])
        if io is None or io.struct is None:
            raise HeaderError(coord, f"fact names ioctl {f['ioctl']}, which has no IOCTL_OP row")
        if b.records[io.struct].field(f["field"]) is None:
            raise HeaderError(coord, f"fact names field {io.struct}.{f['field']}, which does not exist")
        if f["check"] not in FIELD_CHECKS:
            raise HeaderError(coord, f"check must be one of {', '.join(FIELD_CHECKS)}, not {f['check']!r}")
        out[io.name] = replace(io, field_checks=io.field_checks + ((f["field"], f["check"], f["source"]),))
    return out


def load_json(path: Path, root: Path):
    """A JSON file of the header set; HeaderError at its line and column when it does not parse."""
    try:
        return json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise HeaderError(Coord(display_path(path, root), e.lineno, e.colno), f"not valid JSON: {e.msg}") from None


def parse_version(version_dir: Path, root: Path) -> Module:
    """Parse headers/linux_X_Y/ into a Module."""
    version = version_dir.name.removeprefix("linux_").replace("_", ".")
    manifest_path = version_dir / "MANIFEST.json"
    if not manifest_path.exists():
        raise HeaderError(None, f"{display_path(version_dir, root)}: no MANIFEST.json; run `iommufd-conformance headers fetch`")
    manifest = load_json(manifest_path, root)
    headers = [version_dir / n for n in ("iommufd.h", "iommufd_test.h", "vfio.h") if (version_dir / n).exists()]
    if not (version_dir / "iommufd.h").exists() and (not headers or (version_dir / "iommufd_test.h").exists()):
        # iommufd_test.h includes it, and a set needs one header: preprocess() names it as missing.
        # (A lone vfio.h, such as a patched copy given to `diff`, stands on its own.)
        headers.insert(0, version_dir / "iommufd.h")
    mm = version_dir / "mm_types.h"
    mm = mm if mm.exists() else None
    text, macros = preprocess(headers, root, mm)
    b = Builder()
    for h in headers + ([mm] if mm else []):
        b.docs[display_path(h, root)] = kerneldoc.parse(read_header(h, root))
    b.top(parse_text(text), {m.name: m.body for m in macros})
    ioctls = {}
    facts = version_dir / "ioctl_facts.json"
    if facts.exists():
        ioctls = load_facts(facts, root, b)
    hfacts = version_dir / "handler_facts.json"
    if hfacts.exists():
        ioctls = load_handler_facts(hfacts, root, b, ioctls)
    # Every ioctl-number macro is an ioctl, with or without facts (e.g. one the table lacks).
    for m in macros:
        if re.search(r"\b_IO[RW]{0,2}\s*\(", m.body) and m.name not in ioctls and m.name in b.constants:
            c = b.constants[m.name]
            ioctls[m.name] = Ioctl(m.name, c.value, c.value & 0xFF, None, None, None, None, None, c.coord)
    _inherit_same_as(b)
    flag_enums = {f.flags_enum for r in b.records.values() for f in r.fields if f.flags_enum}
    enums = {}
    for k, e in b.enums.items():
        bits = [x.value for x in e.enumerators if x.value]
        single = bits and all(v > 0 and v & (v - 1) == 0 for v in bits)
        is_flags = k in flag_enums or bool(single and re.search(r"flag|capabilit", k))
        enums[k] = Enum(e.name, e.enumerators, e.size, e.signed, e.coord, e.anonymous, e.doc, is_flags)
    files = tuple(
        HeaderFile(h.name, hashlib.sha256(h.read_bytes()).hexdigest())
        for h in headers + ([mm] if mm else []) + [facts, hfacts]
        if h.exists()
    )
    return Module(
        version, manifest.get("kernel_version", version), files,
        records={k: b.records[k] for k in b.record_order}, enums=enums,
        constants=b.constants, ioctls=dict(sorted(ioctls.items(), key=lambda kv: kv[1].nr)), origin=b.origin,
    )
