"""`diff OLD NEW` takes a version, a headers directory, a kernel tree or a single header file, and
answers bad input with file:line, never a traceback."""
import shutil
import subprocess
import sys

import pytest

V72 = "headers/linux_7_2"


def _diff(root, *args):
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "diff", *map(str, args)], capture_output=True,
                       text=True, cwd=root, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_a_kernel_tree_against_its_own_headers_is_no_change(root, tmp_path):
    tree = tmp_path / "linux"
    for rel, name in (("include/uapi/linux", "iommufd.h"), ("include/uapi/linux", "vfio.h"),
                      ("drivers/iommu/iommufd", "iommufd_test.h")):
        (tree / rel).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / V72 / name, tree / rel / name)
    p = _diff(root, "7.2", tree)
    assert p.returncode == 0 and "0 breaking the stable uapi, 0 breaking outside it, 0 compatible" in p.stdout


def test_a_patched_iommufd_h_that_uses_a_reserved_field(root, tmp_path):
    text = (root / V72 / "iommufd.h").read_text()
    old = "\t__u32 __reserved;\n\t__aligned_u64 user_va;"  # struct iommu_ioas_map
    assert text.count(old) == 1
    patched = tmp_path / "iommufd.h"
    patched.write_text(text.replace(old, "\t__u32 pasid;\n\t__aligned_u64 user_va;"))
    p = _diff(root, "7.2", patched)
    assert p.returncode == 0, p.stdout
    assert "reserved->used" in p.stdout and "iommu_ioas_map.__reserved" in p.stdout and "pasid" in p.stdout


@pytest.mark.parametrize("damage,where", [
    (lambda d: (d / "vfio.h").write_bytes((d / "vfio.h").read_bytes() + b"\xff\n"), "vfio.h:1903:1: not UTF-8"),
    (lambda d: (d / "MANIFEST.json").write_text('{\n  "kernel_version": 7.2.13\n}\n'), "MANIFEST.json:2:"),
    (lambda d: (d / "iommufd.h").write_text((d / "iommufd.h").read_text().replace(
        "#define IOMMUFD_TYPE (';')", "#define IOMMUFD_TYPE (';' +)")), "iommufd.h:10:"),
])
def test_bad_input_names_file_and_line(root, tmp_path, damage, where):
    d = tmp_path / "linux_7_2"
    shutil.copytree(root / V72, d)
    damage(d)
    p = _diff(root, "7.2", d)
    assert p.returncode == 2 and where in p.stderr, p.stderr


def test_an_unknown_input_is_a_clear_error(root):
    p = _diff(root, "7.2", "no-such-thing")
    assert p.returncode == 2 and "no headers for 'no-such-thing'" in p.stderr
