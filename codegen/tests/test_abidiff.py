"""The ABI diff on small synthetic header pairs, and on the shipped 6.12 -> 7.2 example."""
import json


from codegen import abidiff
from codegen.parse import parse_version

BASE = """\
#include <linux/types.h>
#include <linux/ioctl.h>
#define IOMMUFD_TYPE (';')
/**
 * struct iommu_thing - a thing
 * @size: sizeof(struct iommu_thing)
 * @flags: Must be 0
 * @value: a value
 */
struct iommu_thing {
	__u32 size;
	__u32 flags;
	__aligned_u64 value;
};
#define IOMMU_THING _IO(IOMMUFD_TYPE, 0x80)
"""


def _module(tmp_path, name, text):
    d = tmp_path / "headers" / name
    d.mkdir(parents=True)
    (d / "iommufd.h").write_text(text)
    (d / "MANIFEST.json").write_text(json.dumps({"kernel_version": name}))
    return parse_version(d, tmp_path)


def _changes(tmp_path, new_text):
    old = _module(tmp_path, "linux_1_0", BASE)
    new = _module(tmp_path, "linux_1_1", new_text)
    return {(c.severity, c.kind, c.what, c.name) for c in abidiff.diff(old, new)}


def test_growing_at_the_end_is_compatible(tmp_path):
    ch = _changes(tmp_path, BASE.replace("__aligned_u64 value;", "__aligned_u64 value;\n\t__u32 more;\n\t__u32 __reserved;"))
    assert ("compatible", "field", "added", "iommu_thing.more") in ch
    assert ("compatible", "struct", "grew", "iommu_thing") in ch
    assert not any(c[0] == "break" for c in ch)


def test_moved_resized_removed_fields_are_breaks(tmp_path):
    ch = _changes(tmp_path, BASE.replace("\t__u32 flags;\n", "\t__u16 flags;\n\t__u32 extra;\n"))
    assert ("break", "field", "moved", "iommu_thing.value") in ch
    assert ("break", "field", "resized", "iommu_thing.flags") in ch
    ch = _changes(tmp_path / "b", BASE.replace("\t__u32 flags;\n", ""))
    assert ("break", "field", "removed", "iommu_thing.flags") in ch


def test_renumbered_ioctl_and_removed_define_are_breaks(tmp_path):
    ch = _changes(tmp_path, BASE.replace("0x80)", "0x81)"))
    assert ("break", "ioctl", "renumbered", "IOMMU_THING") in ch
    assert ("break", "define", "changed", "IOMMU_THING") in ch


def test_shipped_example(root):
    old = parse_version(root / "headers" / "linux_6_12", root)
    new = parse_version(root / "headers" / "linux_7_2", root)
    changes = abidiff.diff(old, new)
    # vfio.h between 6.12 and 7.2: VFIO_TYPE1_NESTING_IOMMU was removed (it never worked; gone in
    # 6.13), and the VFIO-AP IRQ count grew with VFIO_AP_CFG_CHG_IRQ_INDEX. iommufd.h has no break.
    assert {(c.kind, c.what, c.name, c.header) for c in abidiff.stable_breaks(changes)} == {
        ("define", "removed", "VFIO_TYPE1_NESTING_IOMMU", "vfio.h"),
        ("enumerator", "changed", "VFIO_AP_NUM_IRQS", "vfio.h")}
    names = {(c.kind, c.what, c.name) for c in changes}
    assert ("ioctl", "added", "IOMMU_IOAS_MAP_FILE") in names
    assert ("field", "added", "iommu_hw_info.in_data_type") in names
    # Headers only one side has (mm_types.h for 7.2) are not compared.
    assert {c.header for c in changes} == {"iommufd.h", "iommufd_test.h", "vfio.h"}
    # The selftest uapi is not stable: 7.2 dropped a mock flag. Reported, not fatal.
    assert any(c.severity == "break" and c.header == "iommufd_test.h" for c in changes)
    back = abidiff.diff(new, old)
    assert ("ioctl", "removed", "IOMMU_IOAS_MAP_FILE") in {(c.kind, c.what, c.name) for c in abidiff.stable_breaks(back)}
    table = abidiff.render_table(old, new, changes)
    assert "2 breaking the stable uapi" in table
    assert json.loads(json.dumps(abidiff.as_json(old, new, changes)))["breaking_stable_uapi"] == 2


RESERVED = BASE.replace("""\
 * @flags: Must be 0
 * @value: a value
 */
struct iommu_thing {
	__u32 size;
	__u32 flags;
	__aligned_u64 value;
};""", """\
 * @flags: Must be 0
 * @__reserved: Must be 0
 * @value: a value
 */
struct iommu_thing {
	__u32 size;
	__u32 flags;
	__u32 __reserved[3];
	__aligned_u64 value;
};""")


def test_a_reserved_field_given_a_name_is_compatible(tmp_path):
    new = RESERVED.replace("\t__u32 __reserved[3];", "\t__u32 pasid;\n\t__u32 __reserved[2];")
    old = _module(tmp_path, "linux_1_0", RESERVED)
    changes = abidiff.diff(old, _module(tmp_path, "linux_1_1", new))
    assert [(c.severity, c.what, c.name) for c in changes] == [
        (abidiff.COMPATIBLE, "reserved->used", "iommu_thing.__reserved")]
    assert "pasid, __reserved" in changes[0].detail
    assert abidiff.stable_breaks(changes) == []


def test_a_field_that_sticks_out_of_the_reserved_span_is_still_a_break(tmp_path):
    new = RESERVED.replace("\t__u32 __reserved[3];", "\t__u32 pasid;\n\t__aligned_u64 wide;")
    old = _module(tmp_path, "linux_1_0", RESERVED)
    changes = abidiff.diff(old, _module(tmp_path, "linux_1_1", new))
    assert abidiff.stable_breaks(changes)  # `wide` moves `value`, and does not fit the span


def test_vfio_h_is_stable_uapi(tmp_path):
    vfio = "#include <linux/types.h>\nstruct vfio_thing {\n\t__u32 argsz;\n\t__u32 flags;\n};\n"
    mods = []
    for name, text in (("linux_1_0", vfio), ("linux_1_1", vfio.replace("__u32 flags", "__u64 flags"))):
        d = tmp_path / "headers" / name
        d.mkdir(parents=True)
        (d / "iommufd.h").write_text(BASE)
        (d / "vfio.h").write_text(text)
        (d / "MANIFEST.json").write_text(json.dumps({"kernel_version": name}))
        mods.append(parse_version(d, tmp_path))
    breaks = {(c.header, c.what, c.name) for c in abidiff.stable_breaks(abidiff.diff(*mods))}
    assert breaks == {("vfio.h", "resized", "vfio_thing.flags"), ("vfio.h", "moved", "vfio_thing.flags")}
