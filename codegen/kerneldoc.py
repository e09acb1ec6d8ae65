"""Kernel-doc comments (Documentation/doc-guide/kernel-doc.rst) and what they say of fields.

`/** struct name - summary` blocks give each member's text (`@member: text`, with
continuation lines). From names and texts this module mines the roles the model and
the tests need: reserved fields, output fields, user pointers, object IDs (and of
which object type), and which enum a flags or type field takes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_BLOCK = re.compile(r"/\*\*(.*?)\*/", re.S)
_HEAD = re.compile(r"^\s*(struct|union|enum)\s+(\w+)\s*-\s*(.*)$")


@dataclass
class Doc:
    kind: str
    name: str
    summary: str
    line: int
    members: dict[str, str] = field(default_factory=dict)
    body: str = ""


def parse(text: str) -> dict[tuple[str, str], Doc]:
    """(kind, name) -> Doc for every kernel-doc block that documents a struct/union/enum."""
    docs: dict[tuple[str, str], Doc] = {}
    for m in _BLOCK.finditer(text):
        lines = [re.sub(r"^\s*\* ?", "", ln) for ln in m.group(1).split("\n")]
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            continue
        h = _HEAD.match(lines[0])
        if not h:
            continue
        doc = Doc(h.group(1), h.group(2), h.group(3).strip(), text.count("\n", 0, m.start()) + 1)
        cur = None
        body = []
        for ln in lines[1:]:
            mm = re.match(r"^@([\w.]+)\s*:\s*(.*)$", ln)
            if mm:
                cur = mm.group(1)
                doc.members[cur] = mm.group(2).strip()
            elif cur is not None and ln.strip() and ln[:1] in (" ", "\t"):
                doc.members[cur] += " " + ln.strip()
            elif not ln.strip():
                cur = None
                body.append("")
            else:
                cur = None
                body.append(ln)
        doc.body = "\n".join(body).strip()
        docs[(doc.kind, doc.name)] = doc
    return docs


# Object types as the kernel names them (enum iommufd_object_type in iommufd_private.h),
# with the words the kernel-doc uses for them.
_OBJECT_WORDS = [
    ("HWPT", r"\bHWPT\b|\bHW pagetable\b|hwpt"),
    ("IOAS", r"\bIOAS\b"),
    ("VIOMMU", r"\bvIOMMU\b"),
    ("VDEVICE", r"\bvDEVICE\b|\bvdevice\b"),
    ("FAULT", r"\bFAULT\b|\bfault\b"),
    ("VEVENTQ", r"\bvEVENTQ\b|\bveventq\b"),
    ("HW_QUEUE", r"\bHW queue\b|\bhw_queue\b|\bHW QUEUE\b"),
    ("DEVICE", r"\bdevice\b|\bdev\b"),
]
_NAME_OBJECT = {
    "ioas_id": ("IOAS",), "dst_ioas_id": ("IOAS",), "src_ioas_id": ("IOAS",),
    "out_ioas_id": ("IOAS",), "hwpt_id": ("HWPT",), "out_hwpt_id": ("HWPT",),
    "dev_id": ("DEVICE",), "viommu_id": ("VIOMMU",), "out_viommu_id": ("VIOMMU",),
    "out_vdevice_id": ("VDEVICE",), "fault_id": ("FAULT",), "out_fault_id": ("FAULT",),
    "out_veventq_id": ("VEVENTQ",), "out_hw_queue_id": ("HW_QUEUE",),
}


def roles_of(name: str | None, doc: str, is_u64: bool) -> tuple[frozenset[str], str | None, str | None, tuple[str, ...]]:
    """(roles, flags enum, value enum, object types) of a field, from its name and text."""
    roles = set()
    flags_enum = value_enum = None
    objects: tuple[str, ...] = ()
    if name is None:
        return frozenset(), None, None, ()
    if name == "size" or name == "argsz":
        roles.add("size")
    if name.startswith("__reserved") or re.search(r"\bMust be (set to )?0\b", doc) and name != "flags":
        roles.add("reserved")
    if name.startswith("out_") or re.match(r"(?i)output\b", doc):
        roles.add("output")
    if re.match(r"(?i)input/output\b", doc) or re.search(
        r"\breturn back\b|\bvalue returned\b|\bwas placed at\b|\bwill be updated\b", doc
    ):
        roles.update({"input", "output"})
    m = re.search(r"Combination of enum (\w+)", doc)
    if name == "flags" or m:
        roles.add("flags")
        if m:
            flags_enum = m.group(1)
    m = re.search(r"One of enum (\w+)", doc)
    if m:
        value_enum = m.group(1)
    if is_u64 and (
        name.endswith("_uptr") or name in ("uptr", "user_va")
        or re.search(r"(?i)\b(user(space)?[- ]?(space )?pointer|pointer to)\b", doc)
    ):
        roles.add("user_pointer")
    if name.endswith("_id") and not name.endswith("data_id") and name not in ("option_id", "virt_id"):
        if name in _NAME_OBJECT:
            objects = _NAME_OBJECT[name]
        else:
            objects = tuple(obj for obj, rx in _OBJECT_WORDS if re.search(rx, doc))
        roles.add("object_id")
    elif name in ("id", "object_id"):
        roles.add("object_id")
        objects = ("ANY",)
    return frozenset(roles), flags_enum, value_enum, objects
