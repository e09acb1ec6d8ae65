"""What explore's Recorder (conformance/repro.py) adds to a model call: `iommufd-conformance
bench explore`.

IOMMU_IOAS_IOVA_RANGES on a fresh IOAS, called on the model directly and through the Recorder
that explore wraps around the model's file (it snapshots the struct and the buffers it points
to, and names the rule from the stack). The figure is the ratio, measured in the same run,
best of three each.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time

from model import open_iommufd
from model.uapi import B


class _Machine:
    """Stands for the explore machine whose rules the Recorder looks for on the stack."""


def per_call(n: int, recorded: bool) -> float:
    from conformance.repro import Recorder

    with open_iommufd() as model:
        rec = Recorder(_Machine(), 0, 0, -1, 0)
        fd = rec.wrap(model) if recorded else model
        a = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
        fd.ioctl(B.IOMMU_IOAS_ALLOC, a)
        ranges = (B.iommu_iova_range * 4)()
        r = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=a.out_ioas_id,
                                     num_iovas=4, allowed_iovas=rec.buffer(ranges, "ranges"))
        t = time.perf_counter()
        for _ in range(n):
            r.num_iovas = 4
            fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, r)
        seconds = (time.perf_counter() - t) / n
        assert not recorded or len(rec.calls) == n + 1
        return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="calls per measurement (default 5000)")
    args = ap.parse_args(argv)
    direct = min(per_call(args.n, False) for _ in range(3))
    recorded = min(per_call(args.n, True) for _ in range(3))
    print(f"IOMMU_IOAS_IOVA_RANGES, {args.n} calls, best of 3:")
    print(f"  the model's file                    {direct * 1e6:8.1f} us/call   1.00x (baseline)")
    print(f"  through explore's Recorder          {recorded * 1e6:8.1f} us/call   {recorded / direct:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
