"""What a VFIO program on the model finds before it opens anything: the sysfs tree made from a
profile (conformance/sysfs_tree.py), intel-iommu's debugfs page-table dump rendered from the
model's table (model/debugfs.py), and the `kernel selftest --suite vfio --target model:PROFILE`
command line and report (conformance/cli/kernel.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conformance import selftests, sysfs_tree
from model.debugfs import intel_domain_translation_struct, walk_lines
from model.profile import load
from model.pt.table import intel_paging_domain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vtd():
    return load("qemu-vtd")


def test_sysfs_tree_has_what_libvfio_reads(tmp_path, vtd):
    sysfs_tree.build(vtd, tmp_path)
    for i, dev in enumerate(vtd.devices):
        d = tmp_path / "bus" / "pci" / "devices" / dev.bdf
        # lib/sysfs.c: the basename of the iommu_group and driver links
        assert os.path.basename(os.readlink(d / "iommu_group")) == str(dev.iommu_group)
        assert os.path.basename(os.readlink(d / "driver")) == "vfio-pci"
        # the links resolve where the kernel's do (from /sys/bus/pci/devices/BDF)
        assert os.path.normpath(d / os.readlink(d / "iommu_group")) == \
            str(tmp_path / "kernel" / "iommu_groups" / str(dev.iommu_group))
        # lib/vfio_pci_device.c: the vfioN entry names the cdev, in registration order
        assert [e.name for e in (d / "vfio-dev").iterdir()] == [f"vfio{i}"]
        # vfio_pci_device_test reads vendor and device with strtoul(.., 0)
        assert int((d / "vendor").read_text(), 0) == dev.vendor == 0x1234
        assert int((d / "device").read_text(), 0) == dev.device == 0x11E8
        assert (d / "class").read_text() == "0x00ff00\n"
        assert (d / "config").read_bytes() == dev.config
        assert len((d / "resource").read_text().splitlines()) == len(dev.resources)
        assert (d / "resource").read_text().splitlines()[0] == \
            "0x%016x 0x%016x 0x%016x" % dev.resources[0]
        # no SR-IOV capability: no sriov_* attributes (vfio_pci_sriov_uapi_test skips)
        assert not (d / "sriov_totalvfs").exists()
        g = tmp_path / "kernel" / "iommu_groups" / str(dev.iommu_group)
        assert os.readlink(g / "devices" / dev.bdf) == f"../../../../bus/pci/devices/{dev.bdf}"
        assert (g / "reserved_regions").read_text().splitlines()[0] == "0x%016x 0x%016x %s" % dev.reserved_regions[0]
        # intel-iommu's per-device debugfs directory (debugfs.c:773-781)
        assert (tmp_path / "kernel/debug/iommu/intel" / dev.bdf / "domain_translation_struct").is_file()


def test_sysfs_tree_of_an_amd_machine_has_no_intel_debugfs(tmp_path):
    sysfs_tree.build(load("qemu-amd"), tmp_path)
    assert (tmp_path / "kernel/debug/iommu").is_dir()
    assert not (tmp_path / "kernel/debug/iommu/intel").exists()  # vfio_dma_mapping_test: -EOPNOTSUPP


def _table():
    """The table intel-iommu makes for QEMU 7.2's VT-d unit as the vtd profile captured it."""
    vtd = load("qemu-vtd")
    rc, t, stage = intel_paging_domain(vtd.unit.registers["cap"], vtd.unit.registers["ecap"])
    assert (rc, stage) == (0, "second")
    return t


def _parse(text: str, iova: int) -> dict | None:
    """intel_iommu_mapping_get() of vfio_dma_mapping_test.c: the line of iova's page frame, its
    fields by strtok(" \\t|\\n") and sscanf("0x%lx")."""
    for line in text.splitlines():
        tokens = [t for t in re.split(r"[ \t|\n]+", line) if t]
        vals = []
        for t in tokens:
            m = re.match(r"0x([0-9a-fA-F]+)", t)
            vals.append(int(m[1], 16) if m else None)
        if vals and vals[0] == iova // 4096:
            fields = (vals[1:] + [0] * 5)[:5]
            return dict(zip(("pgd", "p4d", "pud", "pmd", "pte"), fields))
    return None


def test_debugfs_dump_matches_the_kernels_format_and_sizes():
    t = _table()
    assert t.map_range(0, 0x141286000, 4096, 3) == (0, 4096)
    assert t.map_range(1 << 30, 0x200000000, 1 << 21, 3) == (0, 1 << 21)
    assert t.map_range(1 << 31, 0x40000000, 1 << 30, 3) == (0, 1 << 30)
    text = intel_domain_translation_struct("0000:00:03.0", t)
    lines = text.splitlines()
    assert lines[0] == "Device 0000:00:03.0 with pasid 0 @0x0"
    assert lines[1].split("\t") == ["IOVA_PFN".ljust(17), "PML5E".ljust(18), "PML4E".ljust(18), "PDPE".ljust(18),
                                    "PDE".ljust(18), "PTE"]
    assert len(lines) == 5
    # dump_page_info(): 13 hex digits of the PFN, ' |\t', then levels 5, 4, 3 always
    assert re.fullmatch(r"0x0000000000000 \|\t0x0{16}\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}",
                        lines[2])
    # the three sizes as vfio_dma_mapping_test checks them
    small, huge2m, huge1g = _parse(text, 0), _parse(text, 1 << 30), _parse(text, 1 << 31)
    assert small["pgd"] == 0 and small["pte"] & ~0xFFF == 0x141286000 and small["pte"] & 3 == 3
    assert huge2m["pte"] == 0 and huge2m["pmd"] == 0x200000000 | 0x83
    assert huge1g["pte"] == huge1g["pmd"] == 0 and huge1g["pud"] == 0x40000000 | 0x83
    assert _parse(text, 4096) is None  # not mapped: "IOVA not found"
    # unmapped again: the device still has its domain, the line is gone
    assert t.unmap_range(0, 4096) == 4096
    assert _parse(intel_domain_translation_struct("0000:00:03.0", t), 0) is None
    assert len(walk_lines(t)) == 2


def test_debugfs_dump_of_a_device_without_a_paging_domain_is_empty():
    # the blocking domain clears the PASID entry: domain_translation_struct_show() prints nothing
    assert intel_domain_translation_struct("0000:00:03.0", None) == ""
    legacy = intel_domain_translation_struct("0000:00:04.0", _table(), scalable=False, pgd=0x1000)
    assert legacy.splitlines()[0] == "Device 0000:00:04.0 @0x1000"


def test_sysfs_namespace_is_checked_at_run_time():
    why = sysfs_tree.unavailable()
    assert why is None or "CAP_SYS_ADMIN" in why
    if why is None:
        # a private namespace: the tree is visible to the program, this machine's sysfs is not touched
        before = sorted(os.listdir("/sys/bus/pci/devices"))
        code = ("import os; from conformance import sysfs_tree; from model.profile import load; "
                "sysfs_tree.enter(load('qemu-vtd')); "
                "print(sorted(os.listdir('/sys/bus/pci/devices'))); "
                "print(os.readlink('/sys/bus/pci/devices/0000:00:03.0/iommu_group'))")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["['0000:00:03.0', '0000:00:04.0']", "../../../../kernel/iommu_groups/3"]
        assert sorted(os.listdir("/sys/bus/pci/devices")) == before


# -- the command line ----------------------------------------------------------------------------

def _targets(suite, *targets):
    from conformance.cli.kernel import _selftest_targets
    return _selftest_targets(SimpleNamespace(suite=suite, target=list(targets)))


def test_vfio_selftest_targets():
    from conformance.cli import UsageError
    assert _targets("vfio", "model:vtd", "vm:vtd") == [("model", "vtd"), ("vm", "vtd")]
    assert _targets("vfio", "model:amd") == [("model", "amd")]
    for bad in ("model", "model:mock", "vm:mock", "model:nope"):
        with pytest.raises(UsageError):
            _targets("vfio", bad)
    assert _targets("iommu", "model") == [("model", None)]
    with pytest.raises(UsageError):
        _targets("iommu", "model:vtd")


def _r(name, passed=(), failed=(), skipped=(), status=0, totals="", reasons=None, seconds=1.0):
    r = selftests.SelftestResult(name, list(passed), list(failed), list(skipped))
    r.exit_status, r.totals_line, r.seconds = status, totals, seconds
    r.skip_reasons = dict(reasons or {})
    return r


def test_vfio_model_report(capsys):
    from conformance.cli.kernel import _report_vfio_model

    served = selftests.VfioHost(64, 2, "iommufd")
    type1 = selftests.VfioHost(64, 2, "type1")
    no1g = selftests.VfioHost(64, 0, "iommufd")
    mmio = "vfio_dma_mapping_mmio_test.vfio_type1_iommu.map_full_bar"
    vm = [_r("vfio_dma_mapping_mmio_test", passed=[mmio, "a.iommufd.b"]),
          _r("vfio_dma_mapping_test", passed=["x.iommufd_anonymous_hugetlb_1gb.y"]),
          _r("vfio_pci_sriov_uapi_test", status=4, totals="skipped as a whole: SR-IOV may not be supported")]
    model = [_r("vfio_dma_mapping_mmio_test", passed=["a.iommufd.b"], failed=[mmio], status=1),
             _r("vfio_dma_mapping_test", skipped=["x.iommufd_anonymous_hugetlb_1gb.y"],
                reasons={"x.iommufd_anonymous_hugetlb_1gb.y": "mmap() failed"}),
             _r("vfio_pci_sriov_uapi_test", status=4, totals="skipped as a whole: SR-IOV may not be supported")]
    # the type1 excuse holds while the served container is iommufd's, the 1 GiB one without 1 GiB pages
    assert _report_vfio_model(model, no1g, None, 1.0, "vtd", vm) is False
    out = capsys.readouterr().out
    assert f"FAIL {mmio} (passes on the kernel): excuse 1: VFIO's type1 container" in out
    assert "per iommu mode (pass, fail, skip): vfio_type1_iommu 0/1/0" in out
    assert _report_vfio_model(model, served, None, 1.0, "vtd", vm) is True  # 1 GiB pages were there
    assert _report_vfio_model(model, type1, None, 1.0, "vtd", vm) is True
    assert "NO KNOWN REASON" in capsys.readouterr().out
    # a case the kernel passed that the model never ran
    assert _report_vfio_model(model[:1], no1g, None, 1.0, "vtd", [_r("vfio_dma_mapping_mmio_test",
                                                                    passed=[mmio, "a.iommufd.c"])]) is True
    assert "MISSING a.iommufd.c" in capsys.readouterr().out
    for e in selftests.VFIO_MODEL_EXCUSES:  # none holds on a host that grants everything
        assert not e.holds(type1), e.pattern


def test_vfio_selftest_command_on_the_model(monkeypatch, capsys, tmp_path):
    """`kernel selftest --suite vfio --target vm:vtd --target model:vtd`: the VM's results are
    what the model's are compared with; a host that cannot mount the tree skips the model with
    the reason it found."""
    from conformance import kbuild
    from conformance.cli import main

    mmio = "vfio_dma_mapping_mmio_test.vfio_type1v2_iommu.map_full_bar"
    vm_run = [_r("vfio_dma_mapping_mmio_test", passed=[mmio, "a.iommufd.b"])]
    model_run = [_r("vfio_dma_mapping_mmio_test", passed=["a.iommufd.b"], failed=[mmio], status=1)]
    calls = []
    monkeypatch.setattr(kbuild, "build_kernel", lambda *a, **k: tmp_path / "bzImage")
    monkeypatch.setattr(selftests, "run_vfio_selftests",
                        lambda kernel, profile, *a, **k: calls.append(("vm", profile)) or (vm_run, [], ""))
    monkeypatch.setattr(selftests, "run_vfio_selftests_model",
                        lambda kernel, profile, *a, **k: calls.append(("model", profile)) or
                        (model_run, selftests.VfioHost(64, 2, "iommufd"), "", 1.0))
    monkeypatch.setattr(selftests, "vfio_model_unavailable", lambda: None)
    assert main(["kernel", "selftest", "--suite", "vfio", "--target", "vm:vtd", "--target", "model:vtd"]) == 0
    assert calls == [("vm", "vtd"), ("model", "vtd")]
    out = capsys.readouterr().out
    assert f"FAIL {mmio} (passes on the kernel): excuse 1" in out
    # the same failure with a type1 container: nothing excuses it
    monkeypatch.setattr(selftests, "run_vfio_selftests_model",
                        lambda *a, **k: (model_run, selftests.VfioHost(64, 2, "type1"), "", 1.0))
    assert main(["kernel", "selftest", "--suite", "vfio", "--target", "model:vtd"]) == 1
    monkeypatch.setattr(selftests, "vfio_model_unavailable", lambda: "no CAP_SYS_ADMIN here")
    assert main(["kernel", "selftest", "--suite", "vfio", "--target", "model:amd"]) == 0
    assert "model:amd: SKIPPED, the VFIO selftests cannot run on the model here: no CAP_SYS_ADMIN here" in \
        capsys.readouterr().out
    assert main(["kernel", "selftest", "--suite", "vfio", "--target", "model"]) == 2  # which machine?
