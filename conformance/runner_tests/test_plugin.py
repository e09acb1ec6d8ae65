"""The plugin re-runs the user's pytest command in the guest without the target option."""
from conformance.plugin import _without_target


def test_target_option_is_removed_in_both_spellings():
    assert _without_target(["-q", "--iommufd-target", "vm", "conformance/tests", "-k", "x"]) == [
        "-q", "conformance/tests", "-k", "x"]
    assert _without_target(["--iommufd-target=vm=/k/bzImage", "-x"]) == ["-x"]
