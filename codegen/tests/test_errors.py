"""Bad input: clear errors with file:line, never a traceback; nothing is written."""
import json
import shutil
import subprocess
import sys

import pytest

from codegen.ir import HeaderError
from codegen.parse import parse_version


@pytest.fixture
def tree(tmp_path, root):
    """A copy of headers/linux_7_2 under a scratch project root."""
    d = tmp_path / "headers" / "linux_7_2"
    shutil.copytree(root / "headers" / "linux_7_2", d)
    return tmp_path, d


def test_unparseable_header_names_file_line_and_construct(tree):
    root, d = tree
    h = d / "iommufd.h"
    lines = h.read_text().split("\n")
    n = lines.index("struct iommu_destroy {")
    lines[n + 1] = "\t__u32 size __attribute__((packed));"
    h.write_text("\n".join(lines))
    with pytest.raises(HeaderError) as e:
        parse_version(d, root)
    assert str(e.value).startswith(f"headers/linux_7_2/iommufd.h:{n + 2}:")
    assert "__attribute__" in str(e.value)


def test_unknown_type_names_its_line(tree):
    root, d = tree
    h = d / "iommufd.h"
    text = h.read_text().replace("struct iommu_destroy {\n\t__u32 size;", "struct iommu_destroy {\n\t__u31 size;")
    h.write_text(text)
    line = text[: text.index("__u31")].count("\n") + 1
    with pytest.raises(HeaderError) as e:
        parse_version(d, root)
    assert str(e.value).startswith(f"headers/linux_7_2/iommufd.h:{line}:")


def test_missing_header_names_the_fetch_command(tree):
    root, d = tree
    (d / "iommufd.h").unlink()
    with pytest.raises(HeaderError, match=r"iommufd\.h: missing; run `iommufd-conformance headers fetch`"):
        parse_version(d, root)


def test_fact_naming_a_missing_field_fails_with_its_location(tree):
    root, d = tree
    f = d / "ioctl_facts.json"
    facts = json.loads(f.read_text())
    row = next(r for r in facts["ioctls"] if r["ioctl"] == "IOMMU_IOAS_MAP")
    row["min_size_last_field"] = "no_such_field"
    f.write_text(json.dumps(facts, indent=2))
    line = f.read_text()[: f.read_text().index('"ioctl": "IOMMU_IOAS_MAP"')].count("\n") + 1
    with pytest.raises(HeaderError) as e:
        parse_version(d, root)
    assert str(e.value) == (
        f"headers/linux_7_2/ioctl_facts.json:{line}: fact for IOMMU_IOAS_MAP names field "
        "iommu_ioas_map.no_such_field, which does not exist"
    )


def test_mm_slice_with_unknown_type_is_an_error_naming_it(tree):
    root, d = tree
    mm = d / "mm_types.h"
    mm.write_text(mm.read_text().replace("\tint error_override;", "\tatomic_long_t error_override;"))
    with pytest.raises(HeaderError, match=r"mm_types\.h:\d+: cannot slice 'struct mmap_action': it uses 'atomic_long_t'"):
        parse_version(d, root)


def test_cli_reports_without_traceback(tree):
    root, d = tree
    (d / "iommufd.h").write_text("struct broken {\n\tint x\n};\n")
    code = (
        "import sys; from pathlib import Path; import conformance.cli.codegen as c; "
        f"c.ROOT = Path({str(root)!r}); "
        "import argparse; p = argparse.ArgumentParser(); s = p.add_subparsers(); c.register(s); "
        "a = p.parse_args(['generate']); sys.exit(a.func(a))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "headers/linux_7_2/iommufd.h:3:" in p.stderr
    assert not (root / "generated").exists()
