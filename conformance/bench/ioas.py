"""Raw-ABI throughput of the model's IOAS ioctls: `iommufd-conformance bench ioas` (or `python3 -m conformance.bench.ioas`).

Everything goes through `fd.ioctl(number, ctypes struct)` exactly as a caller of /dev/iommu
would. The baseline is measured in the same run: building a ctypes struct and an ioctl the model
rejects at once (IOMMU_DESTROY of an unknown ID -> ENOENT), i.e. the fixed cost of the dispatcher.
Scaling: the cost of one MAP+UNMAP pair (automatic IOVA, one page) and one IOVA_RANGES with n
areas already in the IOAS, as a ratio to the baseline; flat ratios mean no O(n) step.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import time

from model import open_iommufd
from model.limits import PAGE_SIZE as PAGE
from model.limits import U64_MAX as U64
from model.uapi import B

RW = B.IOMMU_IOAS_MAP_READABLE | B.IOMMU_IOAS_MAP_WRITEABLE
FIXED = B.IOMMU_IOAS_MAP_FIXED_IOVA
S_MAP = ctypes.sizeof(B.iommu_ioas_map)
S_UNMAP = ctypes.sizeof(B.iommu_ioas_unmap)
S_RANGES = ctypes.sizeof(B.iommu_ioas_iova_ranges)
S_DESTROY = ctypes.sizeof(B.iommu_destroy)


def _rate(fn, n: int) -> float:
    """Seconds per call of fn(i) for i in range(n), best of 3."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="calls per throughput measurement")
    ap.add_argument("--areas", type=int, nargs="*", default=[0, 1000, 10000, 20000])
    args = ap.parse_args(argv)

    fd = open_iommufd()
    cmd = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    fd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    ioas = cmd.out_ioas_id
    buf = mmap.mmap(-1, PAGE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    ranges = (B.iommu_iova_range * 4)()
    rp = ctypes.addressof(ranges)

    def baseline(i):
        c = B.iommu_destroy(size=S_DESTROY, id=0x7FFFFFF0)
        try:
            fd.ioctl(B.IOMMU_DESTROY, c)
        except OSError:
            pass

    def map_unmap(i):
        c = B.iommu_ioas_map(size=S_MAP, flags=RW, ioas_id=ioas, user_va=va, length=PAGE)
        fd.ioctl(B.IOMMU_IOAS_MAP, c)
        u = B.iommu_ioas_unmap(size=S_UNMAP, ioas_id=ioas, iova=c.iova, length=PAGE)
        fd.ioctl(B.IOMMU_IOAS_UNMAP, u)

    def iova_ranges(i):
        c = B.iommu_ioas_iova_ranges(size=S_RANGES, ioas_id=ioas, num_iovas=4, allowed_iovas=rp)
        fd.ioctl(B.IOMMU_IOAS_IOVA_RANGES, c)

    base = _rate(baseline, args.n)
    rows = [("baseline: struct + DESTROY(unknown id)", 1, base)]
    mu = _rate(map_unmap, args.n // 2)
    rows.append(("IOAS_MAP + IOAS_UNMAP, 1 page (2 ioctls)", 2, mu))
    rows.append(("IOAS_IOVA_RANGES", 1, _rate(iova_ranges, args.n)))

    # 10,000 separate areas (a page apart so they do not touch), automatic and fixed IOVA.
    n10 = 10000
    t = time.perf_counter()
    for i in range(n10):
        c = B.iommu_ioas_map(size=S_MAP, flags=RW | FIXED, ioas_id=ioas, user_va=va, length=PAGE,
                             iova=PAGE * (2 * i + 1))
        fd.ioctl(B.IOMMU_IOAS_MAP, c)
    t_map_fixed = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n10):
        u = B.iommu_ioas_unmap(size=S_UNMAP, ioas_id=ioas, iova=PAGE * (2 * i + 1), length=PAGE)
        fd.ioctl(B.IOMMU_IOAS_UNMAP, u)
    t_unmap_each = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n10):
        c = B.iommu_ioas_map(size=S_MAP, flags=RW, ioas_id=ioas, user_va=va, length=PAGE)
        fd.ioctl(B.IOMMU_IOAS_MAP, c)
    t_map_auto = time.perf_counter() - t
    t = time.perf_counter()
    fd.ioctl(B.IOMMU_IOAS_UNMAP, B.iommu_ioas_unmap(size=S_UNMAP, ioas_id=ioas, iova=0, length=U64))
    t_unmap_all = time.perf_counter() - t

    print(f"{'operation':<48}{'us/ioctl':>10}{'ioctls/s':>12}{'x baseline':>12}")
    for name, k, sec in rows:
        per = sec / k
        print(f"{name:<48}{per * 1e6:>10.2f}{1 / per:>12,.0f}{sec / base:>12.2f}")
    print()
    print(f"{'10,000 areas':<48}{'seconds':>10}{'us/area':>12}")
    for name, sec in [("map, FIXED_IOVA, one by one", t_map_fixed), ("unmap one by one", t_unmap_each),
                      ("map, automatic IOVA, one by one", t_map_auto), ("unmap all at once (1 ioctl)", t_unmap_all)]:
        print(f"{name:<48}{sec:>10.3f}{sec / n10 * 1e6:>12.2f}")
    print()

    # Scaling: n areas present (a page apart, from 1 GiB up, so the automatic IOVA of the probe
    # lands below them), then the cost per op relative to the baseline.
    print(f"{'areas present':<16}{'MAP+UNMAP x base':>18}{'IOVA_RANGES x base':>20}{'MAP auto above them x base':>28}")
    for n in args.areas:
        fd.ioctl(B.IOMMU_IOAS_UNMAP, B.iommu_ioas_unmap(size=S_UNMAP, ioas_id=ioas, iova=0, length=U64))
        for i in range(n):
            c = B.iommu_ioas_map(size=S_MAP, flags=RW | FIXED, ioas_id=ioas, user_va=va, length=PAGE,
                                 iova=(1 << 30) + PAGE * 2 * i)
            fd.ioctl(B.IOMMU_IOAS_MAP, c)
        base_n = _rate(baseline, 5000)
        mu_n = _rate(map_unmap, 2500)
        ir_n = _rate(iova_ranges, 5000)

        # a first-fit that has to walk past all n areas: a length no hole between them fits
        def map_unmap_big(i):
            c = B.iommu_ioas_map(size=S_MAP, flags=RW, ioas_id=ioas, user_va=0, length=1 << 30)
            fd.ioctl(B.IOMMU_IOAS_MAP, c)
            u = B.iommu_ioas_unmap(size=S_UNMAP, ioas_id=ioas, iova=c.iova, length=1 << 30)
            fd.ioctl(B.IOMMU_IOAS_UNMAP, u)
        # fill [PAGE, 1 GiB) so the big map must go above the n areas
        c = B.iommu_ioas_map(size=S_MAP, flags=RW | FIXED, ioas_id=ioas, user_va=0, length=(1 << 30) - PAGE,
                             iova=PAGE)
        fd.ioctl(B.IOMMU_IOAS_MAP, c)
        big_n = _rate(map_unmap_big, 1000)
        print(f"{n:<16}{mu_n / base_n:>18.2f}{ir_n / base_n:>20.2f}{big_n / base_n:>28.2f}")
    # IOAS_ALLOW_IOVAS of the same 100,000 disjoint ranges in three orders: the cost of loading
    # them must not depend on the order (iommufd_ioas_load_iovas() checks each against those
    # loaded before).
    import random

    n = 100000
    ranges = [((2 * i + 1) * PAGE, (2 * i + 2) * PAGE - 1) for i in range(n)]
    times = {}
    for name, order in (("ascending", ranges), ("descending", ranges[::-1]),
                        ("shuffled", random.Random(0).sample(ranges, n))):
        arr = (B.iommu_iova_range * n)(*[B.iommu_iova_range(s, l) for s, l in order])
        cmd = B.iommu_ioas_allow_iovas(size=ctypes.sizeof(B.iommu_ioas_allow_iovas), ioas_id=ioas, num_iovas=n,
                                       allowed_iovas=ctypes.addressof(arr))
        t = time.perf_counter()
        fd.ioctl(B.IOMMU_IOAS_ALLOW_IOVAS, cmd)
        times[name] = time.perf_counter() - t
    print()
    print(f"{'IOAS_ALLOW_IOVAS, 100,000 ranges':<48}{'seconds':>10}{'x ascending':>12}")
    for name, sec in times.items():
        print(f"{name:<48}{sec:>10.3f}{sec / times['ascending']:>12.2f}")
    fd.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
