"""The kernel build's inputs: a fragment per series, patches applied to a copy of the tree."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conformance import kbuild


def test_the_fragment_of_each_series():
    assert kbuild.fragment_for("7.2") == kbuild.FRAGMENT.read_text()  # its cached kernels stay valid
    old = kbuild.fragment_for("6.12")
    assert "CONFIG_IOMMU_PT_AMDV1=y" not in old and "CONFIG_IOMMUFD_TEST=y" in old
    assert kbuild.check_config(old, old) == []


@pytest.mark.skipif(shutil.which("patch") is None, reason="GNU patch is not installed (kernel build installs it)")
def test_patches_apply_to_a_copy_and_a_bad_one_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IOMMUFD_CONFORMANCE_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "linux"
    (tree / "drivers").mkdir(parents=True)
    (tree / "drivers" / "x.c").write_text("int x = 1;\n")
    good = tmp_path / "good.patch"
    good.write_text("--- a/drivers/x.c\n+++ b/drivers/x.c\n@@ -1 +1 @@\n-int x = 1;\n+int x = 2;\n")
    out, info = kbuild._patched_tree(tree, "9.9.9", [good], log=lambda s: None)
    assert (out / "drivers" / "x.c").read_text() == "int x = 2;\n"
    assert (tree / "drivers" / "x.c").read_text() == "int x = 1;\n"  # the hard-linked original is untouched
    assert info[0]["sha256"] == kbuild.sha256(good.read_bytes())
    assert kbuild._patched_tree(tree, "9.9.9", [good], log=lambda s: None)[0] == out  # cached
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/drivers/x.c\n+++ b/drivers/x.c\n@@ -1 +1 @@\n-int y = 1;\n+int y = 2;\n")
    with pytest.raises(kbuild.KernelBuildError, match="bad.patch does not apply to 9.9.9"):
        kbuild._patched_tree(tree, "9.9.9", [bad], log=lambda s: None)


def test_kernel_build_cli_names_a_missing_patch(tmp_path):
    import sys

    p = subprocess.run([sys.executable, "-m", "conformance.cli", "kernel", "build", "--patch",
                        str(tmp_path / "nope.patch")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "no patch file" in p.stderr and "Traceback" not in p.stderr
