"""The VM's machine profiles (conformance/vm.py PROFILES), the target syntax that names them, the
production kernel's fragment, and the IOMMU-fault rules of the kernel-log reader; no guest is
booted here (runner_tests/ boots them)."""
from __future__ import annotations

import pytest

from conformance import kbuild, vm
from conformance.targets import parse_target


@pytest.mark.parametrize("spec,value,profile", [
    ("vm", None, None), ("vm:vtd", None, "vtd"), ("vm=6.12:amd", "6.12", "amd"),
    ("vm=production:vtd", "production", "vtd"), ("vm=/k/a:b/bzImage", "/k/a:b/bzImage", None),
])
def test_target_names_kernel_and_profile(spec, value, profile):
    t = parse_target(spec)
    assert (t.name, t.value, t.profile) == ("vm", value, profile)


@pytest.mark.parametrize("spec,profile,played", [
    ("model", None, None), ("model:mock", "mock", None), ("model:vtd", "vtd", "qemu-vtd"),
    ("model:amd", "amd", "qemu-amd"), ("model:/home/me/mine.json", "/home/me/mine.json", "/home/me/mine.json"),
])
def test_the_model_plays_the_vms_machines_as_captured(spec, profile, played):
    t = parse_target(spec)
    assert (t.name, t.profile, t.model_profile()) == ("model", profile, played)


def test_every_vm_machine_with_devices_has_a_captured_profile_the_model_reads():
    from model.profile import load

    for p in vm.PROFILES.values():
        if p.edu:
            assert p.model_profile, f"vm:{p.name} has devices but no captured profile for model:{p.name}"
            prof = load(p.model_profile)
            assert prof.provenance["vm_profile"] == p.name
            assert len(prof.devices) == p.edu


@pytest.mark.parametrize("spec,words", [
    ("vm:nope", "unknown profile 'nope'"), ("model:nope", "unknown profile 'nope'"),
    ("kernel:amd", "has no machine profiles"), ("served:vtd", "has no machine profiles"),
    ("vm:/x/mine.json", "unknown target"),
])
def test_a_bad_profile_is_a_clear_error(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_target(spec)


def test_a_profile_machine_puts_its_iommu_before_every_pci_device(monkeypatch):
    monkeypatch.setitem(vm._DEVICE_PROPERTIES, "intel-iommu", frozenset({"intremap", "aw-bits", "x-scalable-mode"}))
    cmd = vm.qemu_command("/k", "/s", memory="2G", cpus=2, profile=vm.PROFILES["vtd"])
    devices = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device"]
    # only the options this QEMU has, in the profile's order
    assert devices[0] == "intel-iommu,intremap=on,x-scalable-mode=on,aw-bits=48"
    assert devices[1:3] == ["virtio-9p-pci,fsdev=root,mount_tag=/dev/root", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch"]
    assert devices[3:] == ["edu", "edu"]
    assert cmd[cmd.index("-M") + 1] == "q35"
    assert cmd[cmd.index("-append") + 1].startswith("intel_iommu=on,sm_on ")
    mock = vm.qemu_command("/k", "/s", memory="2G", cpus=2)
    args = [a.split(" -- ")[0] for a in mock]  # not the guest command after "--": the clone's path may say iommu
    assert "-M" not in args and "edu" not in args and not any("iommu" in a for a in args)


def test_the_job_binds_the_profiles_devices_and_passes_them_on():
    job = vm._job_script(["true"], {"A": "b c"}, "/w", 0, vm.PROFILES["amd"])
    assert "echo vfio-pci >$d/driver_override" in job and "0x11e8" in job
    assert job.rstrip().endswith("""exec env -i 'A=b c' IOMMUFD_VFIO_DEVICES="$devs" true""")
    assert "driver_override" not in vm._job_script(["true"], {}, "/w", 0, vm.PROFILES["mock"])


def test_the_production_fragment_differs_in_iommufd_test_alone():
    test, prod = kbuild.fragment_for("7.2"), kbuild.fragment_for("7.2", production=True)
    assert "CONFIG_IOMMUFD_TEST=y" in test and "CONFIG_IOMMUFD_TEST=y" not in prod
    assert "# CONFIG_IOMMUFD_TEST is not set" in prod
    assert [a for a, b in zip(test.splitlines(), prod.splitlines()) if a != b] == ["CONFIG_IOMMUFD_TEST=y"]
    # check_config() holds a production .config to "not set" for it
    built = test.replace("# CONFIG_IOMMUFD_TEST is not set", "")  # a .config that kept the option on
    assert kbuild.check_config(prod, built) == ["CONFIG_IOMMUFD_TEST=n (got: y)"]


LOG = """\
[    3.1] DMAR: DRHD: handling fault status reg 2
[    3.1] DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0x110000 [fault reason 0x05] PTE Write access is not set
[    3.1] DMAR: Dump dmar0 table entries for IOVA 0x110000
[    3.1] DMAR: pte level: 4, pte value: 0x00000000041b3003
[    3.2] vfio-pci 0000:00:05.0: enabling device (0000 -> 0002)
[    3.3] iommufd-conformance: IOMMU faults expected from here: test_x.py::test_y
[    3.4] DMAR: [DMA Read NO_PASID] Request device [00:04.0] fault addr 0x120000 [fault reason 0x06] PTE Read access is not set
[    3.5] vfio-pci 0000:00:04.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x0002 address=0x130000 flags=0x0020]
[    3.6] iommufd-conformance: IOMMU faults no longer expected
[    3.7] iommu ivhd0: AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:00:04.0 domain=0x0002 address=0x140000 flags=0x0020]
"""


def test_iommu_faults_are_reports_unless_expected():
    faults: list[str] = []
    found = vm.parse_findings(LOG, faults=faults)
    assert len(found) == 2, found
    assert "fault addr 0x110000" in found[0] and "pte level: 4" in found[0] and "enabling device" not in found[0]
    assert "address=0x140000" in found[1]
    assert len(faults) == 2 and "0x120000" in faults[0] and "0x130000" in faults[1]


def test_a_production_build_starts_from_the_test_kernels_build(tmp_path):
    sibling, build = tmp_path / "test", tmp_path / "production"
    kbuild._seed_from(sibling, build, log=lambda s: None)  # nothing finished there: nothing copied
    assert not build.exists()
    (sibling / "arch" / "x86" / "boot").mkdir(parents=True)
    (sibling / "arch" / "x86" / "boot" / "bzImage").write_bytes(b"image")
    (sibling / ".config").write_text("CONFIG_IOMMUFD_TEST=y\n")
    (sibling / "vmlinux.o").symlink_to("elsewhere")
    kbuild._seed_from(sibling, build, log=lambda s: None)
    assert (build / ".config").read_text() == "CONFIG_IOMMUFD_TEST=y\n"
    assert (build / "vmlinux.o").is_symlink() and (sibling / "arch" / "x86" / "boot" / "bzImage").exists()
