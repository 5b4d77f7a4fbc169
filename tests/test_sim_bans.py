"""The simulator obeys ``DropPeer.ban_for`` as the daemon does: the pair stays apart
for the ban and is re-dialled when a finite one ends; an infinite one never ends."""

from __future__ import annotations

import math
from typing import Any

from protocol._events import DropPeer, Output
from protocol._node import NodeMachine
from sim._fleet import Fleet, NodeSpec


class DroppingMachine(NodeMachine):
    """A machine the test can make drop a peer: ``pending`` goes out with its next
    outputs (the next timer at the latest)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending: list[Output] = []

    def take_outputs(self) -> list[Output]:
        out = super().take_outputs() + self.pending
        self.pending = []
        return out


def _fleet() -> Fleet:
    return Fleet([NodeSpec(up=1e6, down=1e6) for _ in range(3)], seed=1, topology="full",
                 machine_factory=DroppingMachine)


def _drop(fleet: Fleet, ban_for: float) -> float:
    """Make node 0 drop node 1 at the next timer; when it did."""
    a, b = fleet.nodes[0], fleet.nodes[1]
    assert b.node_id in a.peers
    a.machine.pending.append(DropPeer(b.node_id, "test", ban_for=ban_for))
    fleet.run(until=fleet.loop.now + 2.0, stop_when=lambda: bool(fleet.drop_log))
    (when, by, peer, _), = fleet.drop_log
    assert (by, peer) == (a.node_id, b.node_id)
    return when


def test_a_finite_ban_keeps_the_pair_apart_then_redials() -> None:
    fleet = _fleet()
    fleet.run(until=3.0)
    a, b = fleet.nodes[0], fleet.nodes[1]
    when = _drop(fleet, 5.0)
    fleet.run(until=when + 4.9)
    assert b.node_id not in a.peers and a.node_id not in b.peers
    assert fleet.nodes[2].node_id in a.peers                 # others are not touched
    fleet.heal()                                             # a re-dial inside the ban fails
    assert b.node_id not in a.peers
    fleet.run(until=when + 5.1)
    assert b.node_id in a.peers and a.node_id in b.peers     # re-dialled when it ended


def test_an_infinite_ban_is_never_lifted() -> None:
    fleet = _fleet()
    fleet.run(until=3.0)
    a, b = fleet.nodes[0], fleet.nodes[1]
    when = _drop(fleet, math.inf)
    fleet.run(until=when + 3600.0)
    fleet.heal()
    assert b.node_id not in a.peers
