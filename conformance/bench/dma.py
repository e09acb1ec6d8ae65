"""`iommufd-conformance bench dma [--json]`: bytes per second a device's DMA moves through the
model's translation, against a C baseline measured in the same run.

The model: the qemu-vtd machine (model/profiles/), its first edu bound to a fresh iommufd and
attached to an IOAS that maps BUFFER_MB of this process's memory at IOVA 2^32, with 4 KiB IOPTEs
(anonymous memory: the model never maps small pages large) or 2 MiB IOPTEs (MAP_HUGETLB memory,
huge pages reserved for the run). Transfers of SIZE bytes (edu's buffer is 4 KiB) go through
the function's bus-master path (model/hw/iommu.py BusMaster.rw(): per page the numba walk of the
vtdss table, the permission check, then the frame's bytes moved in the caller's memory with
process_vm_readv/writev), cycling over the buffer, in both directions; best of ROUNDS.

The baseline: conformance/bench/c/dma_copy.c, C -O2 doing what the unit and the DMA engine do
for the same transfers (a walk of a vtdss table from the top per page, the R/W check, memcpy),
with the same leaf size. Its figures are the ceiling of a translation that is not emulated.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import subprocess
import tempfile
import time
from pathlib import Path

C_SOURCE = Path(__file__).with_name("c") / "dma_copy.c"
PROFILE = "qemu-vtd"
IOVA = 1 << 32
ROUNDS = 3
MAP_HUGETLB = 0x40000


def _c_baseline(leaf_kb: int, buffer_mb: int, size: int, transfers: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "dma_copy"
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(C_SOURCE)], check=True)
        out = subprocess.run([str(exe), str(leaf_kb), str(buffer_mb), str(size), str(transfers * 20)],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _model(leaf_kb: int, buffer_mb: int, size: int, transfers: int) -> dict:
    from model import open_iommufd
    from model.hw import function_of
    from model.platform import machine
    from model.uapi import B
    from model.vfio import open_device

    length = buffer_mb << 20
    flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | (MAP_HUGETLB if leaf_kb == 2048 else 0)
    buf = mmap.mmap(-1, length, flags=flags)  # OSError without huge pages
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    buf[:] = bytes(range(256)) * (length // 256)
    m = machine(PROFILE)
    bdf = m.profile.devices[0].bdf
    fd, dev = open_iommufd(), open_device(bdf, PROFILE)
    try:
        ioas = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        fd.ioctl(B.IOMMU_IOAS_ALLOC, ioas)
        dev.ioctl(B.VFIO_DEVICE_BIND_IOMMUFD, B.vfio_device_bind_iommufd(
            argsz=ctypes.sizeof(B.vfio_device_bind_iommufd), iommufd=fd.fileno()))
        dev.ioctl(B.VFIO_DEVICE_ATTACH_IOMMUFD_PT, B.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(B.vfio_device_attach_iommufd_pt), pt_id=ioas.out_ioas_id))
        fd.ioctl(B.IOMMU_IOAS_MAP, B.iommu_ioas_map(
            size=ctypes.sizeof(B.iommu_ioas_map), ioas_id=ioas.out_ioas_id, user_va=addr, length=length, iova=IOVA,
            flags=B.IOMMU_IOAS_MAP_FIXED_IOVA | B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE))
        pdev = m.devices[bdf]
        leaf = pdev.domain.ops.translate(IOVA)
        fn = function_of(m, pdev)
        cmd = fn.config_read(4, 2)
        fn.config_write(4, 2, cmd | 0x6)  # memory decoding and bus mastering
        slots = length // size
        data = bytes(size)
        faults = len(m.faults)
        best = {"read": float("inf"), "write": float("inf")}
        got = b""
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for i in range(transfers):
                got = fn.dma_read(IOVA + (i % slots) * size, size)
            best["read"] = min(best["read"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(transfers):
                fn.dma_write(IOVA + (i % slots) * size, data)
            best["write"] = min(best["write"], time.perf_counter() - t0)
        if len(m.faults) != faults or len(got) != size:
            raise RuntimeError(f"the model's DMA was blocked: {m.faults[faults:][:2]}")
        if bytes(buf[:size]) != data:
            raise RuntimeError("the model's DMA writes did not land in the buffer")
        return {"read_bytes_per_s": transfers * size / best["read"], "write_bytes_per_s": transfers * size / best["write"],
                "leaf_status": leaf[0]}
    finally:
        dev.close()
        fd.close()
        buf.close()


def run(buffer_mb: int = 8, size: int = 4096, transfers: int = 2000) -> dict:
    from conformance.selftests import host_hugepages

    out = {"profile": PROFILE, "buffer_mb": buffer_mb, "transfer_bytes": size, "transfers": transfers, "leaves": {}}
    for leaf_kb in (4, 2048):
        if leaf_kb == 2048:
            with host_hugepages(buffer_mb // 2 + 1, log=lambda s: None) as have:
                if have < buffer_mb // 2:
                    out["leaves"]["2M"] = {"skipped": f"needs {buffer_mb // 2} huge pages, {have} reserved here"}
                    continue
                model = _model(leaf_kb, buffer_mb, size, transfers)
        else:
            model = _model(leaf_kb, buffer_mb, size, transfers)
        c = _c_baseline(leaf_kb, buffer_mb, size, transfers)
        out["leaves"]["4K" if leaf_kb == 4 else "2M"] = {
            "model": {k: round(v) for k, v in model.items() if k.endswith("_per_s")},
            "c": {k: round(v) for k, v in c.items() if k.endswith("_per_s")},
            "model_over_c": {k: model[k] / c[k] for k in ("read_bytes_per_s", "write_bytes_per_s")},
        }
    return out


def render(r: dict) -> str:
    lines = [f"bench dma: {r['transfers']} transfers of {r['transfer_bytes']} bytes over {r['buffer_mb']} MiB, "
             f"machine {r['profile']} (edu through VT-d second stage); device reads memory / writes memory"]
    for leaf, v in r["leaves"].items():
        if "skipped" in v:
            lines.append(f"  {leaf} IOPTEs: skipped ({v['skipped']})")
            continue
        m, c, q = v["model"], v["c"], v["model_over_c"]
        lines.append(f"  {leaf} IOPTEs: model {m['read_bytes_per_s'] / 1e6:8.1f} / {m['write_bytes_per_s'] / 1e6:8.1f} MB/s"
                     f"   C {c['read_bytes_per_s'] / 1e6:8.1f} / {c['write_bytes_per_s'] / 1e6:8.1f} MB/s"
                     f"   model/C {q['read_bytes_per_s']:.4f} / {q['write_bytes_per_s']:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(run()))
