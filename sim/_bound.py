"""The peer-assisted lower bound of a scenario file's rollout, over the time its links
were up.

Theory of operation
-------------------
A node can finish a rollout no sooner than its interfaces can take in the bytes it
lacks, and the bytes only the origin holds can arrive no sooner than the origin's
interfaces can send them once. In a scenario file each node has one interface per link
class it belongs to (``sim/_network.py``: a member's uplink and downlink on the class,
shared by all its peers there), so at any instant node ``i`` can receive at

    down_i(t) = sum of down_c * payload_c over its classes c that are up at t and join it
                to a peer that is up and on its side of any partition

(``payload_c`` = ``mss / (mss + header_bytes)``, the share of the wire that is
message), and zero while it is down. Its bound is the first ``T`` with ``integral of
down_i from t0 to T >= missing_i``; the origin's is the same with its uplinks and the
bytes no other node held at ``t0``; and every byte any node takes in, some node sent, so
the whole fleet's uplinks must carry the sum of what the nodes lack (Kumar and Ross's
third term). The rollout's bound is the largest of these, so it counts only the periods
in which the links each node needs were up: a link that is down ten minutes in every
fifteen makes the bound three times the bound of that link always up. A node fetches
only once the order reached it, and an order can reach it no sooner than a path of links
that are up joins it to the node where it was issued (:func:`reach_times`, latency taken
as zero), so a node's integral starts there. It ignores latency, loss and the hops data
must take through relays, so it is a lower bound; ``measured / bound`` is how far the
protocol is from it (on one always-up class it is Kumar and Ross's bound).

Everything here is a pure function of a :class:`Timeline` the run records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ClassRate", "Timeline", "reach_times", "transfer_bound", "up_periods"]


@dataclass(frozen=True, slots=True)
class ClassRate:
    """One link class: each member's interface rates (bytes/s) and payload share."""

    up: float
    down: float
    payload: float = 1.0


@dataclass
class Timeline:
    """What changed the fleet's capacity, in time order: link classes up and down, nodes
    down and up, partitions and heals. ``peers[i][c]``: the nodes class ``c`` joins
    node ``i`` to."""

    classes: Mapping[str, ClassRate]
    peers: Sequence[Mapping[str, frozenset[int]]]
    events: list[_Event] = field(default_factory=list)

    def link(self, t: float, name: str, up: bool) -> None:
        self.events.append(_Event(t, "link", name=name, up=up))

    def node(self, t: float, index: int, up: bool) -> None:
        self.events.append(_Event(t, "node", index=index, up=up))

    def split(self, t: float, side: Sequence[int] | None) -> None:
        """``side[i]``: node ``i``'s group (None: healed)."""
        self.events.append(_Event(t, "split", side=None if side is None else tuple(side)))


@dataclass(frozen=True, slots=True)
class _Event:
    t: float
    kind: str                       # "link", "node" or "split"
    name: str = ""
    index: int = -1
    up: bool = True
    side: tuple[int, ...] | None = None


@dataclass
class _State:
    links_down: set[str]
    nodes_down: set[int]
    side: tuple[int, ...] | None


def _rate(tl: Timeline, st: _State, i: int, upload: bool) -> float:
    if i in st.nodes_down:
        return 0.0
    total = 0.0
    for name, peers in tl.peers[i].items():
        if name in st.links_down:
            continue
        if not any(p not in st.nodes_down and (st.side is None or st.side[p] == st.side[i])
                   for p in peers):
            continue
        c = tl.classes[name]
        total += (c.up if upload else c.down) * c.payload
    return total


def _apply(st: _State, e: _Event) -> None:
    if e.kind == "link":
        (st.links_down.discard if e.up else st.links_down.add)(e.name)
    elif e.kind == "node":
        (st.nodes_down.discard if e.up else st.nodes_down.add)(e.index)
    else:
        st.side = e.side


class _Replay:
    """The timeline's state as time moves on from ``t0`` (every event at or before it
    applied)."""

    def __init__(self, tl: Timeline, t0: float) -> None:
        self._events = sorted(tl.events, key=lambda e: e.t)
        self._k = 0
        self.state = _State(set(), set(), None)
        self.to(t0)

    def next_time(self) -> float:
        """When the next event not yet applied happens (``inf``: none is left)."""
        return self._events[self._k].t if self._k < len(self._events) else math.inf

    def to(self, t: float) -> None:
        """Apply every event at or before ``t``."""
        events = self._events
        while self._k < len(events) and events[self._k].t <= t:
            _apply(self.state, events[self._k])
            self._k += 1


def transfer_bound(tl: Timeline, t0: float, nodes: Sequence[int], nbytes: float,
                   upload: bool = False) -> float:
    """Seconds from ``t0`` until the interfaces of ``nodes`` together could have taken
    in (``upload``: sent out) ``nbytes``, counting only the time they were up; ``inf``
    if they never could within the timeline (the last state lasts for ever)."""
    if nbytes <= 0:
        return 0.0
    replay = _Replay(tl, t0)
    st = replay.state
    t, left = t0, float(nbytes)
    while True:
        rate = sum(_rate(tl, st, i, upload) for i in nodes)
        nxt = replay.next_time()
        if rate > 0 and t + left / rate <= nxt:
            return t + left / rate - t0
        if nxt == math.inf:
            return math.inf
        left -= rate * (nxt - t)
        t = nxt
        replay.to(t)


def reach_times(tl: Timeline, t0: float, source: int) -> list[float]:
    """The earliest time from ``t0`` at which something sent from ``source`` at ``t0``
    could be at each node, hopping only over links that are up between nodes that are
    up (no latency); ``inf`` for a node it never reaches within the timeline."""
    n = len(tl.peers)
    replay = _Replay(tl, t0)
    st = replay.state
    at = [math.inf] * n
    if source in st.nodes_down:
        return at
    at[source] = t0
    t = t0
    while True:
        # everything the reached nodes can reach now, hop by hop
        frontier = [i for i in range(n) if at[i] <= t and i not in st.nodes_down]
        while frontier:
            i = frontier.pop()
            for name, peers in tl.peers[i].items():
                if name in st.links_down:
                    continue
                for p in peers:
                    if at[p] == math.inf and p not in st.nodes_down and (
                            st.side is None or st.side[p] == st.side[i]):
                        at[p] = t
                        frontier.append(p)
        t = replay.next_time()
        if t == math.inf or all(a < math.inf for a in at):
            return at
        replay.to(t)


def up_periods(tl: Timeline, end: float) -> dict[str, list[tuple[float, float]]]:
    """Per link class, the ``(start, stop)`` periods in ``[0, end]`` it was up."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name in tl.classes:
        periods: list[tuple[float, float]] = []
        since: float | None = 0.0
        for e in sorted((e for e in tl.events if e.kind == "link" and e.name == name),
                        key=lambda e: e.t):
            if e.t > end:
                break
            if e.up and since is None:
                since = e.t
            elif not e.up and since is not None:
                if e.t > since:
                    periods.append((since, e.t))
                since = None
        if since is not None and end > since:
            periods.append((since, end))
        out[name] = periods
    return out
