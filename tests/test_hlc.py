from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from protocol._hlc import HLC, HybridClock, vv_dominates, vv_from_wire, vv_hash, vv_join, vv_to_wire


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=40))
def test_ticks_strictly_increase_even_when_wall_clock_goes_back(times: list[float]) -> None:
    clock = HybridClock("a")
    stamps = [clock.tick(t) for t in times]
    assert all(x < y for x, y in itertools.pairwise(stamps))


def test_observe_orders_later_ticks_after_remote_stamp() -> None:
    clock = HybridClock("a")
    remote = HLC(50_000, 7, "b")
    clock.observe(remote, now=10.0)      # our wall clock is behind
    assert clock.tick(10.0) > remote
    assert clock.tick(60.0) == HLC(60_000, 0, "a")


def test_version_vector_helpers() -> None:
    a = {"00" * 16: 3, "11" * 16: 1}
    b = {"11" * 16: 4}
    j = vv_join(a, b)
    assert j == {"00" * 16: 3, "11" * 16: 4}
    assert vv_dominates(j, a) and vv_dominates(j, b) and not vv_dominates(a, b)
    wire = vv_to_wire(j)
    assert all(len(k) == 16 for k in wire)
    assert vv_from_wire(wire) == j
    assert vv_hash(j) == vv_hash(dict(reversed(list(j.items()))))
    assert vv_hash(j) != vv_hash(a)
