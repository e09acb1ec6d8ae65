"""`bench ioas|pagetable|dma|server|explore`: benchmarks with same-run baselines."""
from __future__ import annotations

import json
import subprocess
import sys


def _cmd_pagetable(args) -> int:
    from conformance.bench import pagetable

    try:
        result = pagetable.run(args.pages_lg2, args.python_pages_lg2)
    except (OSError, subprocess.CalledProcessError) as e:  # no gcc, a failed child
        print(f"bench pagetable: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else pagetable.render(result))
    return 0


def _cmd_dma(args) -> int:
    from conformance.bench import dma

    try:
        result = dma.run(args.buffer_mb, args.size, args.transfers)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:  # no gcc, a blocked DMA
        print(f"bench dma: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else dma.render(result))
    return 0


def _cmd_ioas(args) -> int:
    from conformance.bench import ioas

    return ioas.main(args.rest)


def _cmd_server(args) -> int:
    from conformance.bench import server

    return server.main(args.rest)


def _cmd_explore(args) -> int:
    from conformance.bench import explore

    return explore.main(args.rest)


def register(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks, as ratios against baselines measured in the same run")
    bs = b.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    p = bs.add_parser("pagetable", help="the numba IO page table against C -O2 and the Python reference")
    p.add_argument("--json", action="store_true", help="one JSON object for tools")
    p.add_argument("--pages-lg2", type=int, default=20, help="log2 of the pages mapped (default 20)")
    p.add_argument("--python-pages-lg2", type=int, default=16, help="the same for the Python reference (default 16)")
    p.set_defaults(func=_cmd_pagetable)
    d = bs.add_parser("dma", help="an edu device's DMA through the model's VT-d translation (4 KiB and 2 MiB "
                                  "IOPTEs) against C -O2 doing the same walk and copy")
    d.add_argument("--json", action="store_true", help="one JSON object for tools")
    d.add_argument("--buffer-mb", type=int, default=8, help="the memory mapped and cycled over (default 8)")
    d.add_argument("--size", type=int, default=4096, help="bytes per transfer (default 4096, edu's buffer)")
    d.add_argument("--transfers", type=int, default=2000, help="transfers per direction and round (default 2000)")
    d.set_defaults(func=_cmd_dma)
    i = bs.add_parser("ioas", help="ioctls per second of the model's IOAS ioctls (python3 -m conformance.bench.ioas)")
    i.add_argument("rest", nargs="*", help="its own options after --")
    i.set_defaults(func=_cmd_ioas)
    sv = bs.add_parser("server", help="an ioctl's round trip through the preload library and server against "
                                      "a direct call of the model")
    sv.add_argument("rest", nargs="*", help="its own options after --")
    sv.set_defaults(func=_cmd_server)
    ex = bs.add_parser("explore", help="a model call through explore's recorder against a direct one")
    ex.add_argument("rest", nargs="*", help="its own options after --")
    ex.set_defaults(func=_cmd_explore)
