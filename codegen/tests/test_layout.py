"""Proof of layout: gcc against the real headers agrees with the IR, ctypes and numpy, for every version."""
import ctypes
import importlib

import pytest

from codegen.layout_probe import run_probe
from codegen.tests.conftest import VERSION_DIRS


def _ctypes_find(cls, name):
    """(offset, ctypes type) of member `name` of cls, looking through _anonymous_ members."""
    types = dict((f[0], f[1]) for f in cls._fields_)
    if name in types:
        return getattr(cls, name).offset, types[name]
    for anon in getattr(cls, "_anonymous_", ()):
        found = _ctypes_find(types[anon], name)
        if found:
            return getattr(cls, anon).offset + found[0], found[1]
    return None


def _ctypes_walk(cls, path):
    off = 0
    for part in path.split("."):
        o, cls = _ctypes_find(cls, part)
        off += o
    return off, cls


def _numpy_walk(dt, path):
    off = 0
    for part in path.split("."):
        sub, o = dt.fields[part][:2]
        off += o
        dt = sub
    return off, dt


@pytest.fixture(scope="module", params=[d.name for d in VERSION_DIRS])
def probed(request, modules):
    from codegen.tests.conftest import ROOT

    name = request.param
    module = modules[name]
    return module, run_probe(module, ROOT / "headers" / name), importlib.import_module(f"generated.{name}")


def test_records_match_gcc(probed):
    module, c, gen = probed
    checked = 0
    for r in module.records.values():
        if r.anonymous:
            continue
        cls = gen.bindings.STRUCTS[r.name]
        dt = gen.DTYPES[r.name]
        assert c[f"sizeof {r.name}"] == r.size == ctypes.sizeof(cls) == dt.itemsize, r.name
        assert c[f"alignof {r.name}"] == r.align == ctypes.alignment(cls), r.name
        for path, off, f in r.flat_fields(0, module.records):
            if f.bit_width is not None or f.type.length == 0:
                continue
            key = f"{r.name}.{path}"
            assert c[f"offsetof {key}"] == off, key
            assert c[f"sizeof {key}"] == f.type.size, key
            coff, ctype = _ctypes_walk(cls, path)
            assert coff == off and ctypes.sizeof(ctype) == f.type.size, key
            noff, ndt = _numpy_walk(dt, path)
            assert noff == off and ndt.itemsize == f.type.size, key
            checked += 1
    assert checked > 100


def test_enums_and_constants_match_gcc(probed):
    module, c, gen = probed
    for e in module.enums.values():
        for x in e.enumerators:
            assert c[f"enum {x.name}"] == x.value == getattr(gen.bindings, x.name), x.name
    for k in module.constants.values():
        key = f"string {k.name}" if isinstance(k.value, str) else f"define {k.name}"
        assert c[key] == k.value == getattr(gen.bindings, k.name), k.name


def test_ioctl_numbers_match_gcc(probed):
    module, c, gen = probed
    assert module.ioctls
    for io in module.ioctls.values():
        assert c[f"define {io.name}"] == io.number == gen.BY_NAME[io.name].number, io.name
        row = gen.BY_NAME[io.name]
        if row.struct:
            assert row.size == c[f"sizeof {row.struct}"]
            assert row.min_size == c[f"offsetof {row.struct}.{row.min_size_field}"] + c[
                f"sizeof {row.struct}.{row.min_size_field}"]


def test_bitfields_match_gcc_by_bytes(probed):
    """offsetof cannot name a bitfield: gcc and ctypes set it, and the bytes must agree."""
    module, c, gen = probed
    bitfields = [(r, path, f) for r in module.records.values() if not r.anonymous
                 for path, _o, f in r.flat_fields(0, module.records) if f.bit_width]
    if not bitfields:
        pytest.skip(f"Linux {module.version}: no bitfields in the parsed headers")
    for r, path, f in bitfields:
        obj = gen.bindings.STRUCTS[r.name]()
        *parents, last = path.split(".")
        target = obj
        for part in parents:
            target = getattr(target, part)  # ctypes returns a view sharing obj's buffer
        setattr(target, last, 1)
        raw = bytes(obj)
        nonzero = [i for i, b in enumerate(raw) if b]
        assert nonzero == [c[f"bitbyte {r.name}.{path}"]], path
        assert raw[nonzero[0]] == c[f"bitval {r.name}.{path}"], path
