"""CLI: `headers fetch`, `generate [--check]`, `diff OLD NEW`."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _err(msg: str) -> int:
    print(f"iommufd-conformance: {msg}", file=sys.stderr)
    return 2


def cmd_fetch(args) -> int:
    from codegen import debian, fetch

    series = list(fetch.HEADER_FILES) if args.version == "all" else [args.version]
    tree = Path(args.kernel_tree) if args.kernel_tree else None
    if tree is not None and len(series) != 1:
        return _err("--kernel-tree needs --version (which series the tree is)")
    try:
        for s in series:
            out = fetch.fetch(s, ROOT / "headers", tree)
            print(f"{out.relative_to(ROOT)}: {json.loads((out / 'MANIFEST.json').read_text())['kernel_version']}")
    except (debian.FetchError, ValueError) as e:
        return _err(str(e))
    return 0


def cmd_generate(args) -> int:
    from codegen import emit
    from codegen.ir import HeaderError

    t0 = time.perf_counter()
    try:
        rendered = emit.render_all(ROOT)
    except HeaderError as e:
        return _err(str(e))
    if args.check:
        problems = emit.check(rendered, ROOT)
        if problems:
            print("generated/ is stale: it is not what headers/ and codegen/templates give.", file=sys.stderr)
            for p in problems:
                print(p, file=sys.stderr)
            print("Run `iommufd-conformance generate` and commit the result.", file=sys.stderr)
            return 1
        print(f"generated/ is up to date ({len(rendered)} files, {time.perf_counter() - t0:.2f} s)")
        return 0
    changed = emit.write(rendered, ROOT)
    for p in changed:
        print(f"wrote {p}")
    print(f"{len(rendered)} files, {len(changed)} changed, {time.perf_counter() - t0:.2f} s")
    return 0


def _module(spec: str):
    from codegen.inputs import load

    return load(spec, ROOT)


def cmd_diff(args) -> int:
    from codegen import abidiff
    from codegen.ir import HeaderError

    try:
        old, new = _module(args.old), _module(args.new)
    except (HeaderError, FileNotFoundError) as e:
        return _err(str(e))
    changes = abidiff.diff(old, new)
    if args.json:
        print(json.dumps(abidiff.as_json(old, new, changes), indent=2))
    else:
        print(abidiff.render_table(old, new, changes))
    breaks = abidiff.stable_breaks(changes) if not args.strict else [c for c in changes if c.severity == abidiff.BREAK]
    return 1 if breaks else 0


def register(sub) -> None:
    h = sub.add_parser("headers", help="manage the input headers")
    hs = h.add_subparsers(dest="headers_command", required=True, metavar="ACTION")
    f = hs.add_parser("fetch", help="copy the uapi headers from Debian's linux-source packages or a kernel tree")
    f.add_argument("--version", default="all", help="kernel series: 7.2, 6.12 or all (default)")
    f.add_argument("--kernel-tree", metavar="DIR", help="take the files from this kernel source tree")
    f.set_defaults(func=cmd_fetch)

    g = sub.add_parser("generate", help="regenerate generated/ from headers/")
    g.add_argument("--check", action="store_true", help="change nothing; exit 1 if generated/ is stale")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("diff", help="ABI diff between two header versions (exit 1 on a break)")
    d.add_argument("old", help="old: a version (6.12), a headers directory, a kernel tree or a header file")
    d.add_argument("new", help="new: the same kinds (7.2, a patched iommufd.h ...)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--strict", action="store_true",
                   help="also fail on breaks outside the stable uapi (iommufd_test.h, mm_types.h)")
    d.set_defaults(func=cmd_diff)
