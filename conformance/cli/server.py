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
    make_server = None
    if args.profile:
        from conformance.served_vfio import VfioServer

        profile = _enter_machine(args.profile)
        make_server = lambda path, log: VfioServer(path, log, profile)  # noqa: E731
    try:
        return exec_program(argv, **({"make_server": make_server} if make_server else {}))
    except FileNotFoundError as e:
        raise UsageError(f"{argv[0]}: {os.strerror(e.errno)}") from None
    except subprocess.CalledProcessError as e:
        raise UsageError(f"building the preload library failed (gcc exit {e.returncode})") from None


def _enter_machine(spec: str) -> str:
    """--profile: the model profile's name or file (vtd, amd: the VM's machines as captured;
    FILE.json), this process moved into a private mount namespace with its sysfs tree
    (conformance/sysfs_tree.py) before any thread starts."""
    from conformance import sysfs_tree
    from conformance.cli import UsageError
    from conformance.targets import ModelTarget
    from conformance.vm import PROFILES
    from model.profile import ProfileError, load

    if not spec.endswith(".json") and (spec not in PROFILES or not PROFILES[spec].model_profile):
        known = ", ".join(n for n, p in PROFILES.items() if p.model_profile)
        raise UsageError(f"exec --profile {spec}: choose one of {known} or a profile file (FILE.json)")
    name = ModelTarget(profile=spec).model_profile()
    try:
        prof = load(name)
    except ProfileError as e:
        raise UsageError(f"exec --profile {spec}: {e}") from None
    try:
        sysfs_tree.enter(prof)
    except OSError as e:
        raise UsageError(f"exec --profile {spec}: cannot show the model's sysfs to the program: {e.strerror or e} "
                         "(a private mount namespace needs CAP_SYS_ADMIN)") from None
    return name


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the model as a server for C programs (LD_PRELOAD library)")
    p.add_argument("--socket", default=os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
                                                    f"iommufd-conformance-{os.getuid()}.sock"))
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("exec", help="run PROGRAM with its /dev/iommu served by the model: exec -- PROGRAM [ARGS]")
    p.add_argument("--profile", metavar="PROFILE",
                   help="play a machine (vtd, amd, or a profile FILE.json): its VFIO devices (/dev/vfio/...), "
                        "their sysfs (in a private mount namespace: needs CAP_SYS_ADMIN) and intel-iommu's "
                        "debugfs page-table dumps")
    p.set_defaults(func=_cmd_exec, takes_extra=True)

