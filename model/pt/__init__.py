"""IO page tables (drivers/iommu/generic_pt): the numba walker (walk.py) with formats (fmt/), the
validating layer that makes a table a model.domain.DomainOps (table.py), and the plain-Python
reference every table is checked against (reference.py).

Numba's compiled code is cached outside the clone: $NUMBA_CACHE_DIR if set, else
$IOMMUFD_CONFORMANCE_CACHE (or ~/.cache/iommufd-conformance)/numba/<numba version>/<sources>.
Numba keys each entry by the source file of the function and its stamp only, not by the files
of the functions it inlines: a walker cached before a change to model/pt/fmt/ would keep the old
formats. <sources> is a digest of every module here, so any change compiles afresh.
"""
from __future__ import annotations

import hashlib
import os
import sys
from importlib.metadata import version
from pathlib import Path


def _numba_cache_dir() -> str:
    root = os.environ.get("IOMMUFD_CONFORMANCE_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iommufd-conformance"
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for src in sorted(here.rglob("*.py")):
        digest.update(str(src.relative_to(here)).encode() + b"\0" + src.read_bytes())
    return str(Path(root) / "numba" / version("numba") / digest.hexdigest()[:16])


if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    if "numba" in sys.modules:  # imported before us: make it read the variable again
        from numba.core import config as _config

        _config.reload_config()
