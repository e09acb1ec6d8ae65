"""explore --target vm's design on the test kernel: the model and hypothesis here, the kernel's
steps made by the guest's executor (conformance/executor). A campaign agrees step by step; a
model bug planted back is found and shrunk on this side; what the kernel writes into the guest's
user memory and what the model writes into ours are compared, so a write only one side makes
is a disagreement."""
from __future__ import annotations

import ctypes
import shutil

import pytest

from conformance import executor, explore
from conformance.runner_tests.test_vm import needs_kernel
from model import viommu
from model.limits import PAGE_SIZE
from model.uapi import B

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the executor")


@pytest.fixture(scope="module")
def guest():
    with executor.Guest() as channel:
        channel.hello(explore.user_memory(), explore.MEMFD, explore.CLOSED_FD)
        yield channel


@needs_kernel
def test_a_campaign_agrees_with_the_kernel_step_by_step(guest):
    out = explore._campaign("vm", 60, 30, 11, None, None, guest, keep=False)
    assert out["failure"] is None
    assert out["steps"] > 500
    sites = out["coverage"]["sites"]
    assert any("hw_queue" in s for s in sites) and any("access" in s for s in sites)


@needs_kernel
def test_a_planted_model_bug_is_found_and_shrunk_here(guest, monkeypatch):
    """The HW queue's contiguity check planted wrong (no run of pages contiguous, not even one
    page): the kernel's success disagrees with the model's EFAULT, and the shrunk example ends
    in the queue's allocation."""
    monkeypatch.setattr(viommu, "_physically_contiguous", lambda access, iova, length, pfns: False)  # explore.PLANTS["hw-queue"]
    out = explore._campaign("vm", 300, 30, 1, None, None, guest, keep=False)
    assert out["failure"] and "iommu_hw_queue_alloc" in out["failure"] and "model 14" in out["failure"]
    assert "hw_queue" in out["reproducers"]["py"].rsplit("# step", 1)[1]


@needs_kernel
def test_a_write_into_user_memory_only_the_kernel_made_is_a_difference(guest):
    """The kernel writes MEM through an access (IOMMU_TEST_OP_ACCESS_RW); the model side is not
    asked, so the pages differ, naming where."""
    k = executor.ExecutorFile(guest, {})
    try:
        a = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        k.ioctl(B.IOMMU_IOAS_ALLOC, a)
        k.ioctl(B.IOMMU_IOAS_MAP, B.iommu_ioas_map(
            size=ctypes.sizeof(B.iommu_ioas_map), ioas_id=a.out_ioas_id, user_va=explore.MEM + 7 * PAGE_SIZE,
            length=PAGE_SIZE, iova=1 << 24,
            flags=B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE | B.IOMMU_IOAS_MAP_FIXED_IOVA))
        c = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_CREATE_ACCESS,
                             id=a.out_ioas_id)
        k.ioctl(B.IOMMU_TEST_CMD, c)
        data = (ctypes.c_uint8 * 4)(1, 2, 3, 4)
        rw = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_ACCESS_RW,
                              id=c.create_access.out_access_fd)
        rw.access_rw.iova, rw.access_rw.length = (1 << 24) + 8, 4
        rw.access_rw.flags, rw.access_rw.uptr = B.MOCK_ACCESS_RW_WRITE, ctypes.addressof(data)
        k.buffers[ctypes.addressof(data)] = (data, "data")
        k.ioctl(B.IOMMU_TEST_CMD, rw)
        assert guest.memory_differences() == [
            f"MEM + {7 * PAGE_SIZE + 8:#x}: model 0000000000000000 != kernel 0102030400000000"]
    finally:
        k.close()
        # the guest's page back as ours is: write it there the way the host's rules would
        region = guest.regions[0]
        off = 7 * PAGE_SIZE
        guest.call(executor.OP_RESET, mem=[(0, off, region.host()[off:off + PAGE_SIZE])])
        region.guest[off:off + PAGE_SIZE] = region.host()[off:off + PAGE_SIZE]
    assert guest.memory_differences() == []


@needs_kernel
def test_the_executor_alone_replays_a_campaign(guest, tmp_path):
    guest.record = []
    out = explore._campaign("vm", 20, 20, 5, None, None, guest, keep=False)
    requests = guest.record
    guest.record = None
    ran, seconds = guest.replay(requests, tmp_path)
    assert out["failure"] is None and ran == len(requests) > out["steps"] and seconds > 0


@pytest.fixture(scope="module")
def vtd_guest():
    with executor.Guest(None, "vtd") as channel:
        channel.hello(explore.user_memory(), explore.MEMFD, explore.CLOSED_FD)
        yield channel


@needs_kernel
def test_device_rules_on_vtd_agree_and_move_bytes_by_dma(vtd_guest):
    """On vm:vtd the model plays the captured machine: a campaign of the device rules (no mock
    objects) agrees step by step, binds, attaches and runs edu DMA on both sides."""
    ran = []
    base = explore.with_rules(explore.ModelVsKernel, explore.MIXES["plain"])

    class Counted(base):
        def teardown(self):
            ran.append((len(self.vfio), self.machine_faults))
            super().teardown()

    out = explore._campaign("vm", 40, 30, 3, None, Counted, vtd_guest, keep=False,
                            devices=explore.device_rules("vtd"))
    assert out["failure"] is None
    assert ran and all(n == 2 for n, _ in ran)  # both devices of the profile, every example
    sites = out["coverage"]["outcomes"]["model:explore"]
    assert sites.get("IOMMU_GET_HW_INFO", {}).get("success")  # a device was bound (only then it answers)


@needs_kernel
def test_a_dma_the_model_gets_wrong_is_a_difference(vtd_guest, monkeypatch):
    """The model's edu planted to write its buffer one byte off: the bytes the DMA left in user
    memory differ from the kernel's, and the step says where."""
    from model.hw import edu

    real = edu.EduDevice.dma_write

    def off_by_one(self, addr, data):
        return real(self, addr + 1, data)

    monkeypatch.setattr(edu.EduDevice, "dma_write", off_by_one)
    M = type("E", (explore.ModelVsKernel,), {"OTHER": "vm", "CHANNEL": vtd_guest, "STEPS": 0,
                                            **explore.device_rules("vtd")})
    rule = lambda name: getattr(explore.ModelVsKernel, name).hypothesis_stateful_rule.function  # noqa: E731
    s = M()
    try:
        ioas = rule("ioas_alloc")(s)
        rule("vfio_bind")(s, 0, "own", 0, None)
        rule("vfio_attach")(s, 0, ioas, None)
        ctypes.memmove(explore.MEM, bytes(range(1, 101)), 100)
        vtd_guest.call(executor.OP_PAGEMAP, arg=b"", mem=vtd_guest.sync())  # the guest's MEM as ours
        rule("map")(s, ioas, True, 1 << 20, 0, 4 * PAGE_SIZE, B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE)
        rule("edu_dma")(s, 0, 1 << 20, (1 << 20) + PAGE_SIZE, 100)
        with pytest.raises(AssertionError, match=r"MEM \+ 0x1000: model 00"):
            s.same_user_memory()
    finally:
        s.teardown()


@needs_kernel
def test_another_qemu_plays_its_own_machine_captured_now(monkeypatch, tmp_path):
    """explore's device rules compare the guest with the model of the same QEMU's machine: a host
    QEMU other than the one model/profiles/ was captured on gets its machine captured (once,
    cached by version), and the model plays that."""
    from conformance import probe
    from model.profile import load

    real = probe.qemu_version()
    assert probe.profile_for_vm("vtd") == "qemu-vtd" or load("qemu-vtd").provenance["qemu"] != real
    monkeypatch.setattr(probe, "qemu_version", lambda qemu=None: real + " (another build)")
    played = probe.profile_for_vm("vtd", log=lambda s: None, directory=tmp_path)
    assert played.startswith(str(tmp_path)) and played.endswith(".json")
    got = load(played)
    assert got.unit.registers == load("qemu-vtd").unit.registers or real != load("qemu-vtd").provenance["qemu"]
    assert got.provenance["vm_profile"] == "vtd" and len(got.devices) == 2
    assert probe.profile_for_vm("vtd", log=lambda s: None, directory=tmp_path) == played  # cached
