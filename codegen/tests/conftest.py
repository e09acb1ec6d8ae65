from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION_DIRS = sorted(p for p in (ROOT / "headers").glob("linux_*") if p.is_dir())


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def modules():
    from codegen.parse import parse_version

    return {d.name: parse_version(d, ROOT) for d in VERSION_DIRS}
