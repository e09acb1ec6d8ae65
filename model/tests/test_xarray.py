"""model/xarray.py: the nodes an xarray holds and allocates, and fault injection through them."""
from __future__ import annotations

import errno
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import fault_inject
from model.objects import IommufdError
from model.xarray import XaNodes, _top_shift


def _expected_nodes(entries: set[int]) -> set[tuple[int, int]]:
    """Without failures the tree is exactly the paths to its entries under the lowest root
    that holds the largest index (index 0 alone: the head, no node)."""
    if not entries or entries == {0}:
        return set()
    top = _top_shift(max(entries))
    return {(s, i >> (s + 6)) for i in entries for s in range(0, top + 1, 6)}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0, 1, 2, 63, 64, 65, 127, 4095, 4096, 4097, 262144])),
                max_size=40))
def test_nodes_are_the_paths_to_the_entries(ops):
    xa = XaNodes("test")
    allocated: list = []
    before: set = set()
    for store, index in ops:
        trace: list = []
        with fault_inject.current(threading.get_native_id(), trace):
            (xa.store if store else xa.erase)(index)
        assert xa.nodes == _expected_nodes(xa.entries), (ops, xa.nodes)
        assert xa.root == (None if not xa.nodes else max(s for s, _ in xa.nodes))
        # each allocation (one GFP_NOWAIT try, none failing) is a node that was not there
        allocated += [n for n in trace]
        created = xa.nodes - before if store else set()
        assert len(trace) == (len(created) if store else 0), (ops, trace, created)
        before = set(xa.nodes)


def test_allocations_where_the_kernel_makes_them():
    xa = XaNodes("test")
    tid = threading.get_native_id()
    trace: list = []
    with fault_inject.current(tid, trace):
        xa.store(1)  # an empty tree: one leaf node
        xa.store(2)  # same leaf
        xa.store(64)  # a level on top and a second leaf
    assert trace == ["test: xas_alloc GFP_NOWAIT"] * 3
    assert xa.nodes == {(6, 0), (0, 0), (0, 1)}


def test_a_failed_nowait_try_is_retried_and_a_second_failure_is_enomem():
    tid = threading.get_native_id()
    xa = XaNodes("test")
    fault_inject.set_fail_nth(tid, 1)  # the GFP_NOWAIT try fails, xas_nomem() succeeds
    with fault_inject.current(tid):
        xa.store(1)
    assert fault_inject.get_fail_nth(tid) == 0 and xa.entries == {1}
    calls = []

    def failing_both(site):
        calls.append(site)
        return True

    orig = fault_inject.should_fail
    fault_inject.should_fail = failing_both
    try:
        with pytest.raises(IommufdError) as e:
            XaNodes("test").store(1)
    finally:
        fault_inject.should_fail = orig
    assert e.value.errno == errno.ENOMEM and calls == ["test: xas_alloc GFP_NOWAIT", "test: xas_nomem"]


def test_fail_nth_counts_down_per_thread():
    tid = threading.get_native_id()
    fault_inject.set_fail_nth(tid, 3)
    with fault_inject.current(tid):
        assert [fault_inject.should_fail("s") for _ in range(4)] == [False, False, True, False]
    assert fault_inject.get_fail_nth(tid) == 0
    fault_inject.set_fail_nth(tid, 2)
    with fault_inject.current(tid + 1):  # another thread's calls do not count
        assert not fault_inject.should_fail("s")
    assert fault_inject.get_fail_nth(tid) == 2
    assert not fault_inject.should_fail("s")  # no task current: never
    fault_inject.set_fail_nth(tid, 0)


@pytest.mark.parametrize("text,value", [(b"5", 5), (b"5\n", 5), (b"0x1f", 31), (b"017", 15), (b"+3", 3), (b"0", 0),
                                        (b"4294967295", 0xFFFFFFFF), (b"7" + b" " * 40, None)])
def test_fail_nth_write_parses_as_kstrtouint(text, value):
    if value is None:  # only the first 34 bytes are read: "7" and 33 spaces is not a number
        with pytest.raises(IommufdError) as e:
            fault_inject.parse_fail_nth(text)
        assert e.value.errno == errno.EINVAL
    else:
        assert fault_inject.parse_fail_nth(text) == value


@pytest.mark.parametrize("text,err", [(b"", errno.EINVAL), (b"-1", errno.EINVAL), (b" 1", errno.EINVAL),
                                      (b"1_0", errno.EINVAL), (b"0x", errno.EINVAL), (b"08", errno.EINVAL),
                                      (b"1\n\n", errno.EINVAL), (b"4294967296", errno.ERANGE)])
def test_fail_nth_write_errors(text, err):
    with pytest.raises(IommufdError) as e:
        fault_inject.parse_fail_nth(text)
    assert e.value.errno == err
