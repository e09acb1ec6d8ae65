"""Reproducers: an explore sequence as a program a kernel developer can run.

A Recorder wraps the model's file in an explore machine (conformance/explore.py) and keeps each
call the model answered (ioctl, mmap, munmap, and read and close of a descriptor it handed out)
with its input, its answer, the rule it came from and the user buffers its pointers name. From
that record:

- emit_c(): a standalone C program on <linux/iommufd.h> and libc ("iommufd_test.h" when it uses
  the mock driver, <linux/vfio.h> for the VFIO compatibility calls);
- emit_python(): a Python program on the project's bindings that runs on the model or a real
  /dev/iommu (`python3 repro.py model|kernel`).

Both make the calls in order and check every answer (errno, return value, every output byte,
what the kernel wrote into user buffers, a descriptor's reads, the first word of an mmap)
against the model's. Run on the kernel, the first failing check is where model and kernel part;
the programs print the step, its rule and both answers and exit 1 there (later steps depend on
state the two no longer share).

Pointers into the explorer's buffer are written as `mem + OFFSET`, with `mem` placed at the
explored address modulo 1 GiB (iopt_alloc_iova() keeps the user address's alignment in an
automatic IOVA, io_pagetable.c); pointers to small argument arrays as those arrays; the memfd
as `memfd`. Structs are written field by field, with the union member the op names; a buffer
no field layout explains (a raw command longer than its struct) is written as bytes.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import mmap as mmap_mod
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from model import libc
from model.limits import CAP_IPC_LOCK, CAP_SYS_RESOURCE, PAGE_SIZE
from model.uapi import B

TEMPLATES = Path(__file__).parent / "templates"
ALIGN_SPAN = 1 << 30  # mem is placed at the explored address modulo this


# -- the record ----------------------------------------------------------------------------------

@dataclass
class Buffer:
    """A user buffer an argument points to: its name and type, its bytes before and after."""
    name: str
    ctype: type
    address: int
    before: bytes
    after: bytes = b""


@dataclass
class Call:
    """One call the model answered. kind: ioctl, mmap, munmap, read, close."""
    kind: str
    label: str
    query: bool = False
    request: int = 0
    ctype: type | None = None  # the argument's struct, None for an int argument
    arg: bytes | int = 0
    out: bytes = b""
    rc: int = 0
    err: int = 0
    buffers: list[Buffer] = field(default_factory=list)
    raised: str | None = None  # the model raised this instead of answering
    var: str = ""  # mmap/munmap: the mapping; read/close: the descriptor
    length: int = 0
    prot: int = 0
    flags: int = 0
    offset: int = 0
    word: int | None = None  # mmap: the first u32 of the mapping
    data: bytes = b""  # read: what it answered
    new_fds: dict = field(default_factory=dict)  # ioctl: output field path -> descriptor variable
    fd_ids: dict = field(default_factory=dict)  # an access op's ID, a descriptor: its number -> variable


class Recorder:
    """What the model was asked and answered during one explore example."""

    def __init__(self, machine, mem: int, mem_len: int, memfd: int, memfd_len: int, queries=()):
        self.machine = machine
        self.sources = {getattr(sys.modules.get(c.__module__), "__file__", None) for c in type(machine).__mro__
                        if not c.__module__.startswith(("hypothesis", "builtins"))}
        self.mem, self.mem_len, self.memfd = mem, mem_len, memfd
        self.memfd_len = memfd_len
        # what the model's answers depend on besides the calls: capable() and the memlock limit
        self.caps = libc.effective_caps(os.getpid())
        self.memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
        self.queries = frozenset(queries)  # invariant names: read-only calls, left out unless last
        self.calls: list[Call] = []
        self.buffers: dict[int, tuple[object, str]] = {}  # address -> (ctypes object, name)
        self.fd_vars: dict[int, str] = {}  # descriptor the model handed out -> variable
        self.active = True

    # The rules call these.
    def buffer(self, obj, name: str) -> int:
        """Register a ctypes argument buffer; its address, for the struct's pointer field."""
        addr = ctypes.addressof(obj)
        self.buffers[addr] = (obj, name)
        return addr

    def wrap(self, file):
        return RecordedFile(file, self)

    def read(self, fd: int, answer) -> None:
        """A read() of a descriptor the model handed out: bytes, or an errno."""
        if self.active and fd in self.fd_vars:
            c = self._call("read", var=self.fd_vars[fd])
            if isinstance(answer, int):
                c.err = answer
            else:
                c.data = bytes(answer)

    def close(self, fd: int) -> None:
        if self.active and fd in self.fd_vars:
            self._call("close", var=self.fd_vars.pop(fd))

    def _call(self, kind: str, **kw) -> Call:
        label, query = self._label()
        c = Call(kind, label, query, **kw)
        self.calls.append(c)
        return c

    def _label(self) -> tuple[str, bool]:
        """The rule or invariant this call comes from: the outermost of the innermost run of
        frames in the machine's own files (hypothesis called the rule; what calls hypothesis
        may be in those files too)."""
        label = None
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_filename in self.sources:
                label = f.f_code.co_name
            elif label is not None:
                break
            f = f.f_back
        return label or "?", label in self.queries

    def _referenced(self, raw: bytes) -> list[Buffer]:
        out = []
        for off in range(0, len(raw) - 7, 8):
            value = int.from_bytes(raw[off:off + 8], "little")
            if value in self.buffers:
                obj, name = self.buffers[value]
                out.append(Buffer(name, type(obj), value, bytes(obj)))
        return out

    def ioctl(self, file, request: int, arg, mutate_flag: bool):
        if not self.active:
            return file.ioctl(request, arg, mutate_flag)
        if isinstance(arg, int):
            c = self._call("ioctl", request=request, arg=arg)
        else:
            ctype = type(arg) if isinstance(arg, (ctypes.Structure, ctypes.Union)) else _struct_of(request)
            c = self._call("ioctl", request=request, ctype=ctype, arg=bytes(arg))
            c.buffers = self._referenced(c.arg)
            if request == B.IOMMU_TEST_CMD and int.from_bytes(c.arg[4:8], "little") in _ACCESS_OPS:
                c.fd_ids = dict(self.fd_vars)  # the ID names the access by its descriptor
        try:
            rc = file.ioctl(request, arg, mutate_flag)
            c.rc = rc if isinstance(rc, int) else 0
            return rc
        except OSError as e:
            c.err = e.errno
            raise
        except BaseException as e:
            c.raised = f"{type(e).__name__}: {e}"
            raise
        finally:
            if not isinstance(arg, int):
                c.out = bytes(arg)
                for b in c.buffers:
                    b.after = bytes(self.buffers[b.address][0])
                if not c.err and c.raised is None:
                    self._new_fds(c)

    def _new_fds(self, c: Call) -> None:
        """Descriptors the model answered in output fields (out_*_fd) get a variable."""
        if c.ctype is None or not _has_fd_output(c.ctype):
            return
        choose = _union_chooser([c.arg, c.out], _op_words(c.ctype, c.arg))
        try:
            leaves = list(_scalar_fields(c.ctype, 0, "", choose))
        except _NoLayout:
            return
        for path, off, ct in leaves:
            if path.rsplit(".", 1)[-1].endswith("_fd") and path.rsplit(".", 1)[-1].startswith("out_"):
                size = ctypes.sizeof(ct)
                before = c.arg[off:off + size]
                after = c.out[off:off + size]
                if before != after:
                    fd = ct.from_buffer_copy(after).value
                    var = f"fd_{len(self.calls)}"
                    self.fd_vars[fd] = var
                    c.new_fds[path] = var

    def mmap(self, file, length, prot, flags, offset):
        if not self.active:
            return file.mmap(length, prot, flags, offset)
        c = self._call("mmap", var=f"map_{len(self.calls) + 1}", length=length, prot=prot, flags=flags,
                       offset=offset)
        try:
            m = file.mmap(length, prot, flags, offset)
        except OSError as e:
            c.err = e.errno
            raise
        c.word = m.u32(0)
        m._on_close = lambda length, var=c.var: self._munmap(var, length)
        return m

    def _munmap(self, var: str, length: int) -> None:
        """munmap() of a mapping mmap() recorded (its close() calls this)."""
        if self.active:
            self._call("munmap", var=var, length=length)


_FD_OUTPUTS: dict[type, bool] = {}


# IOMMU_TEST_CMD ops whose `id` is an access's descriptor (selftest.c iommufd_access_get())
_ACCESS_OPS = {B.IOMMU_TEST_OP_ACCESS_RW, B.IOMMU_TEST_OP_ACCESS_PAGES, B.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES,
               B.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS}


def _has_fd_output(ctype) -> bool:
    """Whether any union member of `ctype` has an out_*_fd field (cached per type)."""
    if ctype not in _FD_OUTPUTS:
        leaves = (p.rsplit(".", 1)[-1] for p, _o, _c in _scalar_fields(ctype))
        _FD_OUTPUTS[ctype] = any(n.startswith("out_") and n.endswith("_fd") for n in leaves)
    return _FD_OUTPUTS[ctype]


def _struct_of(request: int):
    row = B.BY_NUMBER.get(request & 0xFFFFFFFF)
    return getattr(B, row.struct) if row is not None and row.struct else None


class RecordedFile:
    """The model's file, each call recorded."""

    def __init__(self, file, rec: Recorder):
        self.file, self.rec = file, rec

    def ioctl(self, request: int, arg=0, mutate_flag: bool = True):
        return self.rec.ioctl(self.file, request, arg, mutate_flag)

    def mmap(self, length, prot=mmap_mod.PROT_READ | mmap_mod.PROT_WRITE, flags=mmap_mod.MAP_SHARED, offset=0):
        return self.rec.mmap(self.file, length, prot, flags, offset)

    def __getattr__(self, name):
        return getattr(self.file, name)


# -- values as C and Python write them -----------------------------------------------------------

@dataclass(frozen=True)
class Value:
    c: str
    py: str


@dataclass(frozen=True)
class Init:
    """One object of a C type, built in both languages: field assignments (path, Value) over a
    zeroed object, or (fields None) its bytes with pointer patches (offset, Value)."""
    c_type: str  # "struct iommu_ioas_map"
    count: int | None  # an array's length
    py_type: str  # "B.iommu_ioas_map" / "(B.iommu_iova_range * 3)"
    size: int
    fields: tuple | None
    raw: bytes
    patches: tuple = ()


def _scalar_fields(ctype, off=0, prefix="", choose=None):
    """(path, offset, scalar ctype) of every leaf; for a union, only the member choose() picks
    (all of them without choose)."""
    if issubclass(ctype, ctypes.Array):
        for i in range(ctype._length_):
            yield from _scalar_fields(ctype._type_, off + i * ctypes.sizeof(ctype._type_), f"{prefix}[{i}]", choose)
        return
    if not issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        yield prefix.lstrip("."), off, ctype
        return
    anon = set(getattr(ctype, "_anonymous_", ()))
    members = [(name, ft) for name, ft, *_ in ctype._fields_]
    if issubclass(ctype, ctypes.Union) and choose is not None:
        members = [choose(ctype, off, members)]
    for name, ft in members:
        sub = prefix if name in anon else f"{prefix}.{name}"
        yield from _scalar_fields(ft, off + getattr(ctype, name).offset, sub, choose)


def _union_chooser(datas: list[bytes], op_words: set[str]):
    """Pick the union member that covers every nonzero byte of the union in each of `datas`,
    preferring the one whose name shares most words with the op's name (MOCK_DOMAIN_FLAGS ->
    mock_domain_flags)."""
    def choose(ctype, off, members):
        size = ctypes.sizeof(ctype)
        nonzero = {i for d in datas for i in range(off, min(off + size, len(d))) if d[i]}
        best = None
        for name, ft in members:
            lo = off + getattr(ctype, name).offset
            covered = set()
            for _p, o, ct in _scalar_fields(ft, lo):
                covered.update(range(o, o + ctypes.sizeof(ct)))
            if not nonzero <= covered:
                continue
            words = set(name.split("_"))
            score = (len(words & op_words), -len(words - op_words))
            if best is None or score > best[0]:
                best = (score, (name, ft))
        if best is None:
            raise _NoLayout
        return best[1]
    return choose


class _NoLayout(Exception):
    pass


def _op_words(ctype, raw: bytes) -> set[str]:
    """The words of the IOMMU_TEST_OP_* name an `op` field holds (the union member's hint)."""
    if ctype is None or not any(f[0] == "op" for f in getattr(ctype, "_fields_", ())):
        return set()
    off = ctype.op.offset
    op = int.from_bytes(raw[off:off + 4], "little")
    for name in dir(B):
        if name.startswith("IOMMU_TEST_OP_") and getattr(B, name) == op:
            return set(name.removeprefix("IOMMU_TEST_OP_").lower().split("_"))
    return set()


class Namer:
    """C and Python expressions for one program's scalar values."""

    def __init__(self, rec: Recorder):
        self.mem, self.mem_len, self.memfd = rec.mem, rec.mem_len, rec.memfd
        self.fd_ids: dict[int, str] = {}  # the step's descriptor IDs (Call.fd_ids)

    def scalar(self, path: str, ct, value: int, buffers: dict[int, str]) -> Value:
        size = ctypes.sizeof(ct)
        leaf = path.rsplit(".", 1)[-1]
        if size == 8 and self.mem <= value < self.mem + self.mem_len:
            off = value - self.mem
            return Value(f"(__u64)(uintptr_t)(mem + {off:#x})", f"MEM + {off:#x}")
        if size == 8 and value in buffers:
            name, is_array = buffers[value]
            return Value(f"(__u64)(uintptr_t){'' if is_array else '&'}{name}", f"ctypes.addressof({name})")
        if leaf == "fd" and value == self.memfd:
            return Value("memfd", "memfd")
        if path == "id" and value in self.fd_ids:
            return Value(self.fd_ids[value], f"fds[{self.fd_ids[value]!r}]")
        return _literal(ct, value)


def _literal(ct, value: int) -> Value:
    signed = ct in (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64, ctypes.c_long, ctypes.c_int)
    if signed and value < 0:
        return Value(str(value), str(value))
    if value < 10:
        return Value(str(value), str(value))
    suffix = "ULL" if value > 0xFFFFFFFF else ""
    return Value(f"{value:#x}{suffix}", f"{value:#x}")


def _values(ctype, raw: bytes, choose) -> dict[str, tuple[int, int, object, int]]:
    """path -> (offset, size, scalar ctype, value) of every leaf of `ctype` laid over `raw`."""
    out = {}
    for path, off, ct in _scalar_fields(ctype, 0, "", choose):
        size = ctypes.sizeof(ct)
        out[path] = (off, size, ct, ct.from_buffer_copy(raw[off:off + size]).value if off + size <= len(raw) else 0)
    return out


def fields_text(obj) -> str:
    """`iommu_ioas_map(size=0x28, flags=0x6, ...)`: a struct's nonzero fields, for messages."""
    raw = bytes(obj)
    try:
        vals = _values(type(obj), raw, _union_chooser([raw], _op_words(type(obj), raw)))
    except _NoLayout:
        return f"{type(obj).__name__}({raw.hex()})"
    return f"{type(obj).__name__}(" + ", ".join(f"{p}={v:#x}" for p, (_o, _n, _c, v) in vals.items() if v) + ")"


def _type_names(ctype) -> tuple[str, int | None, str]:
    if issubclass(ctype, ctypes.Array):
        el = ctype._type_.__name__
        return f"struct {el}", ctype._length_, f"(B.{el} * {ctype._length_})"
    return f"struct {ctype.__name__}", None, f"B.{ctype.__name__}"


def _uapi_type(ctype) -> bool:
    """A struct (or array of structs) the bindings define, so the header declares it."""
    el = ctype._type_ if issubclass(ctype, ctypes.Array) else ctype
    return getattr(B, el.__name__, None) is el


def make_init(ctype, raw: bytes, namer: Namer, buffers: dict[int, str], choose) -> Init:
    """An Init that builds exactly `raw`: fields when they explain every byte, else bytes (also
    for a type of the explorer's own, which no header declares)."""
    c_type, count, py_type = _type_names(ctype)
    size = ctypes.sizeof(ctype)
    if len(raw) == size and _uapi_type(ctype):
        try:
            vals = _values(ctype, raw, choose)
        except _NoLayout:
            vals = None
        if vals is not None:
            rebuilt = bytearray(size)
            fields = []
            for path, (off, n, ct, value) in vals.items():
                if value:
                    rebuilt[off:off + n] = bytes(ct(value))
                    fields.append((path, namer.scalar(path, ct, value, buffers)))
            if bytes(rebuilt) == raw:
                return Init(c_type, count, py_type, size, tuple(fields), raw)
    patches = []
    for off in range(0, len(raw) - 7, 8):
        value = int.from_bytes(raw[off:off + 8], "little")
        v = namer.scalar("", ctypes.c_uint64, value, buffers)
        if v.c != _literal(ctypes.c_uint64, value).c:
            patches.append((off, v))
    return Init(c_type, count, py_type, len(raw), None, raw, tuple(patches))


# -- the program ---------------------------------------------------------------------------------

@dataclass
class Step:
    n: int
    call: Call
    name: str = ""  # the request's macro
    init: Init | None = None
    buffers: list = field(default_factory=list)  # (name, Init before, Init after or None)
    changes: list = field(default_factory=list)  # (path, Value) the answer changed
    want_raw: bytes | None = None  # bytes form: the whole answer
    note: str = ""  # why the kernel's answer to this step may differ from run to run
    fd_fields: list = field(default_factory=list)  # (path, variable)


def _request_name(request: int) -> str:
    row = B.BY_NUMBER.get(request & 0xFFFFFFFF)
    return row.name if row is not None else f"{request:#x}"


def program(rec: Recorder) -> list[Step]:
    """The calls as steps: queries (read-only calls of the invariants) only where they come last."""
    calls = rec.calls
    last_rule = max((i for i, c in enumerate(calls) if not c.query), default=-1)
    keep = [c for i, c in enumerate(calls) if not c.query or i > last_rule]
    namer = Namer(rec)
    steps = []
    for n, c in enumerate(keep, 1):
        s = Step(n, c)
        if c.kind == "ioctl":
            s.name = _request_name(c.request)
            if c.ctype is not None:
                _ioctl_step(s, c, namer)
                s.note = _open_choice(s.name, c)
        steps.append(s)
    return steps


def _open_choice(name: str, c: Call) -> str:
    """Where the kernel's answer is not a function of the calls alone, say so (the program
    prints it with a divergence at that step)."""
    if name == "IOMMU_HW_QUEUE_ALLOC" and c.ctype is not None and len(c.arg) >= ctypes.sizeof(c.ctype):
        cmd = c.ctype.from_buffer_copy(c.arg[:ctypes.sizeof(c.ctype)])
        first = cmd.nesting_parent_iova // PAGE_SIZE
        last = (cmd.nesting_parent_iova + max(cmd.length, 1) - 1) // PAGE_SIZE
        if last > first:
            return ("a queue over several small pages needs them physically adjacent "
                    "(iommufd_hw_queue_alloc_phys()): the answer follows where this run's pages landed; "
                    "the model saw the explored process's frames")
    return ""


def _ioctl_step(s: Step, c: Call, namer: Namer) -> None:
    addrs = {}
    for b in c.buffers:  # one C/Python variable per buffer of the step
        if b.address not in addrs:
            b.name = b.name if b.name not in {n for n, _ in addrs.values()} else f"{b.name}{len(addrs) + 1}"
            addrs[b.address] = b.name, issubclass(b.ctype, ctypes.Array)
    choose = _union_chooser([c.arg, c.out], _op_words(c.ctype, c.arg))
    namer.fd_ids = c.fd_ids
    s.init = make_init(c.ctype, c.arg, namer, addrs, choose)
    namer.fd_ids = {}
    for b in c.buffers:
        bchoose = _union_chooser([b.before, b.after], set())
        before = make_init(b.ctype, b.before, namer, {}, bchoose)
        after = make_init(b.ctype, b.after, namer, {}, bchoose) if b.after != b.before else None
        s.buffers.append((b.name, before, after))
    fd_paths = set(c.new_fds)
    if s.init.fields is not None:
        vin = _values(c.ctype, c.arg, choose)
        vout = _values(c.ctype, c.out, choose)
        for path, (off, n, ct, value) in vout.items():
            if path in fd_paths:
                continue
            if vin[path][3] != value:
                s.changes.append((path, _literal(ct, value)))
        s.fd_fields = sorted(c.new_fds.items())
    elif c.out != c.arg:
        s.want_raw = c.out


def _errno_name(e: int) -> str:
    return errno_mod.errorcode.get(e, str(e))


def _c_bytes(raw: bytes) -> str:
    return ", ".join(f"0x{x:02x}" for x in raw)


def _prot(prot: int) -> str:
    names = [n for n in ("PROT_READ", "PROT_WRITE", "PROT_EXEC") if prot & getattr(mmap_mod, n)]
    return " | ".join(names) or "PROT_NONE"


def _map_flags(flags: int) -> str:
    names = [n for n in ("MAP_SHARED", "MAP_PRIVATE") if flags & getattr(mmap_mod, n)]
    rest = flags & ~(mmap_mod.MAP_SHARED | mmap_mod.MAP_PRIVATE)
    return " | ".join(names + ([f"{rest:#x}"] if rest else [])) or "0"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["errno_name"] = _errno_name
    env.filters["c_bytes"] = _c_bytes
    env.filters["prot"] = _prot
    env.filters["map_flags"] = _map_flags
    env.filters["hex"] = lambda v: f"{v:#x}"
    env.filters["cstr"] = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return env


def _context(rec: Recorder, title: str, failure: str | None) -> dict:
    steps = program(rec)
    uses = {s.name for s in steps}
    return dict(
        steps=steps, title=title, failure=(failure or "").strip(),
        mem_len=rec.mem_len, mem_residue=rec.mem % ALIGN_SPAN, align_span=ALIGN_SPAN,
        memfd_len=rec.memfd_len, caps=rec.caps, memlock=rec.memlock,
        caps_that_matter=(1 << CAP_SYS_RESOURCE) | (1 << CAP_IPC_LOCK), rlim_infinity=resource.RLIM_INFINITY,
        uses_test=any(n.startswith("IOMMU_TEST") for n in uses) or any(
            "selftest" in b[0] or "SELFTEST" in s.name for s in steps for b in s.buffers),
        uses_vfio=any(n.startswith("VFIO_") for n in uses),
        fd_vars=sorted({v for s in steps for _p, v in s.fd_fields}),
        map_vars=sorted({s.call.var for s in steps if s.call.kind == "mmap"}),
        version=B.KERNEL_VERSION)


def emit_c(rec: Recorder, title: str = "", failure: str | None = None) -> str:
    return _env().get_template("repro.c.j2").render(**_context(rec, title, failure))


def emit_python(rec: Recorder, title: str = "", failure: str | None = None) -> str:
    return _env().get_template("repro.py.j2").render(**_context(rec, title, failure))
