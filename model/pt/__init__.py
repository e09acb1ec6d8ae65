"""IO page tables (drivers/iommu/generic_pt): the numba walker (walk.py) with formats (fmt/), the
validating layer that makes a table a model.domain.DomainOps (table.py), and the plain-Python
reference every table is checked against (reference.py).

Numba's compiled code is cached outside the clone: $NUMBA_CACHE_DIR if set, else
$IOMMUFD_CONFORMANCE_CACHE (or ~/.cache/iommufd-conformance)/numba/<numba version>. Numba itself
keys each entry by the source file and its stamp, so a changed kernel recompiles.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path


def _numba_cache_dir() -> str:
    root = os.environ.get("IOMMUFD_CONFORMANCE_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iommufd-conformance"
    return str(Path(root) / "numba" / version("numba"))


if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    if "numba" in sys.modules:  # imported before us: make it read the variable again
        from numba.core import config as _config

        _config.reload_config()
