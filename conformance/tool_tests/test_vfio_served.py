"""VFIO through the model server and the preload library (conformance/served_vfio.py,
model/vfio/group.py): a C program on the model's machine finds its device in the profile's
sysfs, binds and attaches it through the cdev, reads config space, maps a BAR, sees its mapping
in intel-iommu's debugfs dump, and does the same through a group with /dev/vfio/vfio as the
container; the answers are the kernel's (group.c, device_cdev.c)."""
from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import sysfs_tree
from conformance.tool_tests.test_server import ROOT, lines_of
from model.uapi import SERIES

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the preload library")


def _build(tmp_path) -> Path:
    prog = tmp_path / "vfio_served"
    headers = ROOT / "headers" / f"linux_{SERIES.replace('.', '_')}"
    (tmp_path / "include" / "linux").mkdir(parents=True, exist_ok=True)
    for h in ("iommufd.h", "vfio.h"):
        shutil.copy(headers / h, tmp_path / "include" / "linux" / h)
    # the uapi header as the tree has it, before headers_install strips __user
    subprocess.run(["gcc", "-O2", "-Wall", "-D__user=", "-I", str(tmp_path / "include"), "-o", str(prog),
                    str(ROOT / "conformance" / "tool_tests" / "c" / "vfio_served.c")], check=True)
    return prog


def test_a_vfio_program_on_the_models_machine(tmp_path):
    why = sysfs_tree.unavailable()
    if why is not None:
        pytest.skip(why)
    prog = _build(tmp_path)
    out = subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--profile", "vtd", "--", str(prog)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = lines_of(out.stdout)
    assert got["iommu_group"] == "3" and got["driver"] == "vfio-pci" and got["cdev"] == "vfio0"
    assert got["dev_link"] == "/dev/vfio/devices/vfio0"
    assert got["info_before_bind"] == str(errno.EINVAL)  # vfio_main.c:1357: no access before a bind
    assert got["bind"] == "0" and got["attach"] == "0"
    assert got["info"] == "0 9"  # VFIO_PCI_NUM_REGIONS
    assert got["vendor"] == "2 1234"
    assert got["bar_mmap"] == "0" and got["map"] == "0"
    # the dump's line for IOVA 0: PFN, levels 5, 4, 3, 2 and the 4 KiB leaf
    assert got["debugfs_mapped"] == "6"
    assert got["map_bar"] == str(errno.EFAULT)  # pin_user_pages() of a VM_PFNMAP BAR mapping
    assert got["unmap"] == "0" and got["debugfs_unmapped"] == "0"
    assert got["group_while_bound"] == str(errno.EBUSY)  # a device of the group is bound by its cdev
    assert got["container_link"] == "/dev/vfio/vfio" and got["group_link"] == "/dev/vfio/3"
    assert got["api"] == "0"
    assert got["second_group_open"] == str(errno.EBUSY)  # group.c:441: one opened_file
    assert got["status"] == "1"  # VIABLE
    assert got["get_device_no_container"] == str(errno.EINVAL)
    assert got["set_container"] == "0" and got["set_container_again"] == str(errno.EINVAL)
    assert got["status_set"] == "3"  # VIABLE | CONTAINER_SET
    assert got["extension"] == "1" and got["set_iommu"] == "0"
    assert got["other_group_device"] == str(errno.ENODEV)
    assert got["vf_token"] == str(errno.EINVAL)  # not a PF or VF: the token is refused
    assert got["group_device"] == "1 anon_inode:[vfio-device] cloexec 1"
    assert got["group_device_bind"] == str(errno.EINVAL)  # BIND_IOMMUFD is the cdev's only
    assert got["group_device_info"] == "0"
    assert got["group_vendor"] == "2 1234"
    assert got["map_dma"] == "0" and got["group_debugfs_mapped"] == "6"
    assert got["unset_container"] == "0" and got["unset_again"] == str(errno.EINVAL)
    assert got["no_such_group"] == str(errno.ENOENT) and got["no_such_cdev"] == str(errno.ENOENT)
