"""Profile files (model/profile.py): the captured ones load, and a bad one is an error that names
the file and what is wrong."""
from __future__ import annotations

import json

import pytest

from model.profile import ProfileError, load, names


def test_the_captured_profiles_load_with_their_provenance():
    assert {"qemu-vtd", "qemu-amd"} <= set(names())
    for n in names():
        p = load(n)
        assert p.provenance["kernel"].startswith("Linux ") and p.provenance["qemu"].startswith("QEMU")
        assert p.unit.driver in ("intel-iommu", "amd-iommu") and "cap" in p.unit.registers
        for d in p.devices:
            assert len(d.config) in (256, 4096)
            assert int.from_bytes(d.config[:2], "little") == d.vendor  # the config space's own vendor ID
            start, size, _ = d.bar(0)
            assert size and start % size == 0  # a BAR is naturally aligned


def test_a_malformed_file_names_file_line_and_column(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"format": 1,\n "name": }')
    with pytest.raises(ProfileError, match=rf"^{f}:2:10: "):
        load(f)


@pytest.mark.parametrize("change,words", [
    (lambda d: d.pop("unit"), "KeyError: 'unit'"),
    (lambda d: d.update(format=99), "format 99"),
    (lambda d: d["devices"][0].update(config="zz"), "ValueError"),
])
def test_a_profile_missing_what_the_model_reads_is_refused(tmp_path, change, words):
    data = json.loads(load("qemu-vtd").path.read_text())
    change(data)
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=words) as e:
        load(f)
    assert str(e.value).startswith(str(f))


def test_an_unknown_name_lists_the_profiles_there_are():
    with pytest.raises(ProfileError, match="profiles here: .*qemu-vtd"):
        load("nope")
