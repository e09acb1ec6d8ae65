"""`serve` and `exec`: the model as a server for unmodified C programs (conformance/server.py)."""
from __future__ import annotations

import os
import subprocess


def _cmd_serve(args) -> int:
    from conformance.server import Server, build_preload

    lib = build_preload()
    server = Server(args.socket)
    print(f"serving the model at {args.socket}; run programs with\n"
          f"  IOMMUFD_CONFORMANCE_SERVER={args.socket} LD_PRELOAD={lib} PROGRAM", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def _cmd_exec(args) -> int:
    from conformance.cli import UsageError
    from conformance.server import exec_program

    argv = args.pytest_args if getattr(args, "pytest_args", None) else []
    if not argv:
        raise UsageError("exec needs a program: iommufd-conformance exec -- PROGRAM [ARGS]")
    try:
        return exec_program(argv)
    except FileNotFoundError as e:
        raise UsageError(f"{argv[0]}: {os.strerror(e.errno)}") from None
    except subprocess.CalledProcessError as e:
        raise UsageError(f"building the preload library failed (gcc exit {e.returncode})") from None


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the model as a server for C programs (LD_PRELOAD library)")
    p.add_argument("--socket", default=os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
                                                    f"iommufd-conformance-{os.getuid()}.sock"))
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("exec", help="run PROGRAM with its /dev/iommu served by the model: exec -- PROGRAM [ARGS]")
    p.set_defaults(func=_cmd_exec, takes_extra=True)

