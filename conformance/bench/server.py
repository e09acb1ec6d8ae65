"""One ioctl's round trip through the preload library and the server against a direct call of
the model in this process: `iommufd-conformance bench server`.

Both make the same call, IOMMU_IOAS_IOVA_RANGES on a fresh IOAS (the model's answer is the
same small amount of work each time): the C program conformance/bench/c/ioctl_loop.c under
`exec` (LD_PRELOAD, a Unix socket, the server's thread, process_vm_readv/writev of the
caller's struct), and this process through model.open_iommufd(). The figure is the ratio of
the two, measured in the same run, best of three each.
"""
from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model import open_iommufd
from model.uapi import SERIES, B

ROOT = Path(__file__).resolve().parents[2]


def in_process(n: int) -> float:
    """Seconds per IOVA_RANGES call on the model in this process."""
    with open_iommufd() as fd:
        a = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        fd.ioctl(B.IOMMU_IOAS_ALLOC, a)
        ranges = (B.iommu_iova_range * 4)()
        r = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=a.out_ioas_id,
                                     num_iovas=4, allowed_iovas=ctypes.addressof(ranges))
        fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        t = time.perf_counter()
        for _ in range(n):
            r.num_iovas = 4
            fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        return (time.perf_counter() - t) / n


def through_server(prog: Path, n: int) -> float:
    """Seconds per call of the C loop under `exec`, as it measured itself."""
    out = subprocess.run([sys.executable, "-m", "conformance.cli", "exec", "--", str(prog), str(n)],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    calls, seconds = out.stdout.split()
    return float(seconds) / int(calls)


def build(tmp: Path) -> Path:
    inc = tmp / "include" / "linux"
    inc.mkdir(parents=True)
    shutil.copy(ROOT / "headers" / f"linux_{SERIES.replace('.', '_')}" / "iommufd.h", inc / "iommufd.h")
    prog = tmp / "ioctl_loop"
    subprocess.run(["gcc", "-O2", "-I", str(tmp / "include"), "-o", str(prog),
                    str(ROOT / "conformance" / "bench" / "c" / "ioctl_loop.c")], check=True)
    return prog


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="calls per measurement (default 5000)")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as d:
            prog = build(Path(d))
            direct = min(in_process(args.n) for _ in range(3))
            served = min(through_server(prog, args.n) for _ in range(3))
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        print(f"bench server: {e}", file=sys.stderr)
        return 1
    print(f"IOMMU_IOAS_IOVA_RANGES, {args.n} calls, best of 3:")
    print(f"  in process (model.open_iommufd)     {direct * 1e6:8.1f} us/call   1.00x (baseline)")
    print(f"  C program via preload + server      {served * 1e6:8.1f} us/call   {served / direct:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
