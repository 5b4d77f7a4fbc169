"""The overlay rule (protocol/_overlay.py): a bounded, random, repaired, rotated active set."""

from __future__ import annotations

import math
import random

import pytest

from protocol import (
    ClosePeer,
    DialPeer,
    InvalidValue,
    MalformedMessage,
    OverlayConfig,
    OverlayFull,
    PeerHint,
    SendMessage,
    decode,
    encode,
)
from protocol._overlay import Overlay


def nid(i: int) -> str:
    return f"{i:032x}"


ME = nid(0)


def make(degree: int = 4, slack: int = 1, rotate: float = 0.0, mesh: int = 0,
         **kw: float) -> Overlay:
    """An overlay; the small fleets of these tests are of the degree rule, so the full
    mesh of small fleets (``mesh_up_to``) is off unless ``mesh`` is given."""
    cfg = OverlayConfig(degree=degree, slack=slack, rotate_interval=rotate,  # type: ignore[arg-type]
                        mesh_up_to=mesh, **kw)
    return Overlay(node_id=ME, config=cfg, rng=random.Random(1), now=0.0)


def settle(ov: Overlay) -> float:
    """Run the fill that discoveries called for (it waits SETTLE); the time it ran."""
    t = ov.next_deadline()
    ov.on_timer(t)
    return t


def dials(ov: Overlay) -> list[str]:
    return [o.peer for o in ov.take_outputs() if isinstance(o, DialPeer)]


def test_dials_degree_random_known_peers_and_no_more() -> None:
    ov = make(degree=4)
    for i in range(1, 21):
        ov.peer_known(nid(i), f"10.0.0.{i}:7411", 0.0)
    assert ov.take_outputs() == []      # discoveries settle before a fill draws from them
    assert 0.5 <= settle(ov) <= 1.0
    out = ov.take_outputs()
    assert all(isinstance(o, DialPeer) for o in out)
    assert len(out) == 4 and len({o.peer for o in out}) == 4
    assert all(o.address == f"10.0.0.{int(o.peer, 16)}:7411"
               for o in out if isinstance(o, DialPeer))
    ov.peer_known(nid(30), "10.0.0.30:7411", 1.1)
    settle(ov)
    assert dials(ov) == []              # 4 dials in flight already: none more


def test_session_bound_and_polite_decline_with_hints() -> None:
    ov = make(degree=2, slack=1)
    for i in range(1, 11):
        ov.peer_known(nid(i), f"h{i}:1", 0.0)
    ov.take_outputs()
    for i in range(20, 23):             # three inbound sessions fit: degree 2 + slack 1
        assert ov.accept(nid(i), True, 0.0)
    assert not ov.accept(nid(23), True, 0.0)
    out = ov.take_outputs()
    full = [o for o in out if isinstance(o, SendMessage)]
    assert len(full) == 1 and full[0].peer == nid(23)
    msg = full[0].message
    assert isinstance(msg, OverlayFull) and 0 < len(msg.peers) <= 8
    assert all(h.node != nid(23) and h.address for h in msg.peers)
    assert [o.peer for o in out if isinstance(o, ClosePeer)] == [nid(23)]
    assert decode(encode(msg)) == msg
    assert ov.statistics().active == 3 and ov.statistics().declined == 1


def test_declined_dialer_backs_off_and_tries_the_hints() -> None:
    ov = make(degree=1, slack=0)
    ov.peer_known(nid(1), "h1:1", 0.0)
    settle(ov)
    assert dials(ov) == [nid(1)]
    assert ov.accept(nid(1), False, 1.1)
    ov.receive_full(nid(1), OverlayFull((PeerHint(nid(2), "h2:1"),)), 1.1)
    out = ov.take_outputs()
    assert ClosePeer(nid(1), "the peer's overlay is full") in out
    ov.peer_disconnected(nid(1), 1.1)
    out += ov.take_outputs()
    assert [o.peer for o in out if isinstance(o, DialPeer)] == [nid(2)]   # the hint, at once
    ov.dial_failed(nid(2), 1.2)
    # both peers are now in back-off: nothing is dialled until it ends (no storm)
    assert dials(ov) == []
    wake = ov.next_deadline()
    assert 1.2 < wake < 10
    ov.on_timer(wake)
    assert dials(ov) != []


def test_backoff_grows_with_strikes_up_to_retry_max() -> None:
    ov = make(degree=1, slack=0, retry_base=1.0, retry_max=8.0)
    ov.peer_known(nid(1), "h1:1", 0.0)
    now, waits = settle(ov), []
    for _ in range(8):
        assert dials(ov) == [nid(1)]
        ov.dial_failed(nid(1), now)
        wake = ov.next_deadline()
        waits.append(wake - now)
        now = wake
        ov.on_timer(now)
    assert waits[0] <= 2.0 and max(waits) <= 8.0 and waits[-1] >= 4.0


def test_a_lost_session_is_repaired_at_once() -> None:
    ov = make(degree=2, slack=0)
    for i in range(1, 6):
        ov.peer_known(nid(i), f"h{i}:1", 0.0)
    settle(ov)
    first = dials(ov)
    for p in first:
        ov.accept(p, False, 0.5)
    ov.peer_disconnected(first[0], 1.0)
    again = dials(ov)
    assert len(again) == 1 and again[0] not in first


def test_rotation_replaces_one_peer_and_shrinks_the_slack() -> None:
    ov = make(degree=2, slack=2, rotate=10.0)
    for i in range(1, 5):               # four inbound sessions: two above the degree
        assert ov.accept(nid(i), True, 0.0)
    while len(ov.active) > 2:           # one a rotation until back at the degree
        t = settle(ov)
        closes = [o for o in ov.take_outputs() if isinstance(o, ClosePeer)]
        assert len(closes) == 1 and "above" in closes[0].reason
        assert ov.peer_disconnected(closes[0].peer, t) is True     # closed on purpose
    assert ov.statistics().closed_excess == 2
    for i in range(10, 15):
        ov.peer_known(nid(i), f"h{i}:1", t)
    settle(ov)
    assert ov.take_outputs() == []      # at the degree: nothing to dial
    # at the degree with spare known peers, a rotation swaps one peer for a fresh one
    settle(ov)
    out = ov.take_outputs()
    assert sum(isinstance(o, ClosePeer) for o in out) == 1
    assert next(o.peer for o in out if isinstance(o, DialPeer)) in map(nid, range(10, 15))
    assert ov.statistics().rotations == 1


def test_known_set_is_bounded() -> None:
    ov = make(degree=2, known_max=16)
    for i in range(1, 200):
        ov.peer_known(nid(i), f"h{i}:1", 0.0)
    assert len(ov.known) == 16


def test_degree_zero_is_off() -> None:
    ov = make(degree=0, slack=0)
    for i in range(1, 50):
        ov.peer_known(nid(i), f"h{i}:1", 0.0)
        assert ov.accept(nid(i), True, 0.0)
    assert ov.take_outputs() == [] and ov.next_deadline() == float("inf")


def test_overlay_full_is_validated_on_decode() -> None:
    good = OverlayFull((PeerHint(nid(5), "10.0.0.5:7411"),))
    assert decode(encode(good)) == good
    with pytest.raises(InvalidValue):
        PeerHint("not-a-node-id", "h:1")
    bad = encode(OverlayFull(())).replace(b"\x90", b"\x91\x92\xa1x\xa1y")
    with pytest.raises(MalformedMessage):
        decode(bad)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="degree"):
        OverlayConfig(degree=-1)
    with pytest.raises(ValueError, match="known_max"):
        OverlayConfig(degree=8, known_max=4)


def test_excess_is_trimmed_within_seconds_one_at_a_time_keeping_the_newest() -> None:
    ov = make(degree=2, slack=2, rotate=60.0)
    for i in range(1, 5):               # four inbound sessions: two above the degree
        assert ov.accept(nid(i), True, 0.1 * i)
    assert ov.take_outputs() == []      # not at once: the slack admits first
    closed, t = [], 0.4
    while len(ov.active) > 2:
        t_next = ov.next_deadline()
        assert 2.0 <= t_next - t <= 4.0  # one close 2-4 s after going (or staying) above
        t = t_next
        ov.on_timer(t)
        out = ov.take_outputs()
        closes = [o for o in out if isinstance(o, ClosePeer)]
        assert len(closes) == 1 and "above" in closes[0].reason
        full = [o for o in out if isinstance(o, SendMessage)]
        assert [o.peer for o in full] == [closes[0].peer]     # told so, with hints
        assert ov.peer_disconnected(closes[0].peer, t) is True
        closed.append(closes[0].peer)
    assert t <= 8.0 and len(closed) == 2
    assert nid(4) not in closed         # the newest (perhaps a joiner) is kept
    assert ov.statistics().closed_excess == 2
    assert ov.next_deadline() > 40.0    # at the degree: nothing more until the rotation
    assert all(not isinstance(o, DialPeer) for o in ov.take_outputs())


class _Fleet:
    """Overlays wired together in memory: a dial opens a session at once; OverlayFull
    and ClosePeer are delivered at once."""

    def __init__(self, n: int, degree: int = 8, slack: int = 2, mesh_up_to: int = 16) -> None:
        self.cfg = OverlayConfig(degree=degree, slack=slack, mesh_up_to=mesh_up_to)
        self.nodes: dict[str, Overlay] = {}
        self.sessions: set[frozenset[str]] = set()
        self.dials = 0
        self.now = 0.0
        for i in range(1, n + 1):
            self.join(i)

    def join(self, i: int) -> None:
        me = nid(i)
        ov = Overlay(node_id=me, config=self.cfg, rng=random.Random(i), now=self.now)
        for peer, other in self.nodes.items():
            ov.peer_known(peer, f"h{peer}:1", self.now)
            other.peer_known(me, f"h{me}:1", self.now)
        self.nodes[me] = ov

    def _drain(self) -> None:
        queue = [(me, o) for me, ov in self.nodes.items() for o in ov.take_outputs()]
        while queue:
            me, o = queue.pop(0)
            pair = frozenset((me, o.peer))
            if isinstance(o, DialPeer):
                self.dials += 1
                self.sessions.add(pair)
                self.nodes[o.peer].accept(me, True, self.now)     # a decline closes it
                self.nodes[me].accept(o.peer, False, self.now)
            elif isinstance(o, SendMessage) and isinstance(o.message, OverlayFull):
                if pair in self.sessions:
                    self.nodes[o.peer].receive_full(me, o.message, self.now)
            elif isinstance(o, ClosePeer) and pair in self.sessions:
                self.sessions.discard(pair)
                self.nodes[me].peer_disconnected(o.peer, self.now)
                self.nodes[o.peer].peer_disconnected(me, self.now)
            queue += [(m, x) for m, ov in self.nodes.items() for x in ov.take_outputs()]

    def run_until(self, end: float, step: float = 0.05) -> None:
        while self.now < end:
            self.now = round(self.now + step, 6)
            for ov in self.nodes.values():
                if ov.next_deadline() <= self.now:
                    ov.on_timer(self.now)
            self._drain()

    def degrees(self) -> dict[str, int]:
        return {me: sum(1 for s in self.sessions if me in s) for me in self.nodes}

    def connected(self) -> bool:
        start = next(iter(self.nodes))
        seen, todo = {start}, [start]
        while todo:
            a = todo.pop()
            for s in self.sessions:
                if a in s:
                    (b,) = s - {a}
                    if b not in seen:
                        seen.add(b)
                        todo.append(b)
        return len(seen) == len(self.nodes)


def test_a_fleet_settles_at_the_degree_within_seconds_and_admits_a_joiner() -> None:
    fleet = _Fleet(32)
    fleet.run_until(20.0)
    deg = fleet.degrees()
    # back at the degree within seconds (rotation alone trims one session a minute, and
    # the start-up leaves most nodes at degree + slack); a node that a trim takes below
    # the degree refills, which may take another above it for a few seconds
    assert max(deg.values()) <= 9 and min(deg.values()) >= 7, sorted(deg.values())
    assert sum(deg.values()) / len(deg) <= 8.3, sorted(deg.values())
    assert all(len(ov.active) == deg[me] for me, ov in fleet.nodes.items())
    assert fleet.connected()
    dials = fleet.dials
    fleet.run_until(40.0)
    assert fleet.dials - dials <= 40     # settling, not a redial storm (32 nodes, 20 s)
    fleet.join(33)                       # a late joiner, the other nodes at the degree
    fleet.run_until(70.0)
    deg = fleet.degrees()
    assert deg[nid(33)] >= 7, deg[nid(33)]
    assert max(deg.values()) <= 10 and fleet.connected()
    assert sum(deg.values()) / len(deg) <= 8.3, sorted(deg.values())


def test_a_node_trimmed_by_a_peer_waits_before_refilling_the_slot() -> None:
    ov = make(degree=4, slack=1)
    for i in range(1, 11):
        ov.peer_known(nid(i), f"h{i}:1", 0.0)
    t = settle(ov)
    first = dials(ov)
    for p in first:
        assert ov.accept(p, False, t)
    # a peer that kept the session for seconds closes it (its trim): one slot short
    # of the degree is fine for a while -- refilling at once would take another node
    # above its degree, whose trim would take a third below, and so on
    ov.receive_full(first[0], OverlayFull(()), t + 10.0)
    ov.peer_disconnected(first[0], t + 10.0)
    assert dials(ov) == []
    wake = ov.next_deadline()
    assert t + 20.0 <= wake <= t + 30.0
    # a crash within the hold is repaired at once (the hold spares one slot, no more)
    ov.peer_disconnected(first[1], t + 11.0)
    assert len(dials(ov)) == 1
    ov.on_timer(wake)
    assert len(dials(ov)) == 1          # the hold over, the last slot is refilled


def test_trim_and_rotation_close_the_least_loaded_session() -> None:
    """With a ``load`` (the node's swarm: transfers under way per peer), the excess
    session closed is one carrying the fewest transfers, and so is the one rotated."""
    ov = make(degree=2, slack=2, rotate=60.0)
    loads = {nid(1): 3, nid(2): 0, nid(3): 5, nid(4): 0}
    ov.load = lambda peer, now: loads[peer]
    for i in range(1, 5):
        assert ov.accept(nid(i), True, 0.1 * i)
    closed = []
    while len(ov.active) > 2:
        t = ov.next_deadline()
        ov.on_timer(t)
        (close,) = [o for o in ov.take_outputs() if isinstance(o, ClosePeer)]
        assert ov.peer_disconnected(close.peer, t) is True
        closed.append(close.peer)
        loads[close.peer] = 0
    # nid(2) is the only idle one of the older three; then nid(1) (3) before nid(3) (5)
    assert closed == [nid(2), nid(1)]
    assert sorted(ov.active) == [nid(3), nid(4)]
    ov.peer_known(nid(9), "h9:1", t)
    loads[nid(4)] = 1
    while ov.statistics().rotations == 0:
        ov.on_timer(ov.next_deadline())
    (close,) = [o for o in ov.take_outputs() if isinstance(o, ClosePeer)]
    assert close.peer == nid(4)          # load 1 against nid(3)'s 5


def test_rotation_waits_for_a_quiet_session_at_most_one_interval() -> None:
    """A rotation due while every session carries a transfer is retried every
    ROTATE_RETRY s; a session that goes quiet meanwhile is the one rotated, and after
    one whole ``rotate_interval`` of waiting the least loaded is rotated anyway."""
    from protocol._overlay import ROTATE_RETRY
    ov = make(degree=2, slack=0, rotate=20.0)
    loads = {nid(1): 2, nid(2): 1}
    ov.load = lambda peer, now: loads.get(peer, 0)
    for i in (1, 2):
        assert ov.accept(nid(i), True, 0.0)
    ov.peer_known(nid(5), "h5:1", 0.0)
    ov.on_timer(ov.next_deadline())
    ov.take_outputs()
    due = ov.next_deadline()            # the first rotation, 15-25 s in
    assert 15.0 <= due <= 25.0
    ov.on_timer(due)
    assert not [o for o in ov.take_outputs() if isinstance(o, ClosePeer)]
    assert ov.next_deadline() == pytest.approx(due + ROTATE_RETRY)
    loads[nid(1)] = 0                   # nid(1)'s transfers end: it is rotated
    ov.on_timer(ov.next_deadline())
    (close,) = [o for o in ov.take_outputs() if isinstance(o, ClosePeer)]
    assert close.peer == nid(1) and ov.statistics().rotations == 1
    ov.peer_disconnected(nid(1), ov.next_deadline())
    # busy for good: it waits one interval (20 s / ROTATE_RETRY retries), then rotates
    loads.update({nid(2): 4, nid(5): 2})
    ov.accept(nid(5), False, due + 6.0)
    ov.peer_known(nid(6), "h6:1", due + 6.0)
    first_wait = None
    while ov.statistics().rotations == 1:
        t = ov.next_deadline()
        ov.on_timer(t)
        if first_wait is None and ov.next_deadline() == pytest.approx(t + ROTATE_RETRY):
            first_wait = t
    (close,) = [o for o in ov.take_outputs() if isinstance(o, ClosePeer)]
    assert close.peer == nid(5)         # the less loaded of the two
    assert first_wait is not None and t - first_wait == pytest.approx(20.0)


def test_a_small_fleet_is_a_full_mesh_and_keeps_it() -> None:
    fleet = _Fleet(13)                   # 12 peers each: fewer than mesh_up_to (16)
    fleet.run_until(20.0)
    assert set(fleet.degrees().values()) == {12}
    assert all(len(ov.active) == 12 for ov in fleet.nodes.values())
    sessions = set(fleet.sessions)
    fleet.run_until(200.0)               # three rotation intervals: nothing to rotate to
    assert fleet.sessions == sessions
    assert all(ov.statistics().rotations == 0 and ov.statistics().closed_excess == 0
               for ov in fleet.nodes.values())


def test_the_full_mesh_ends_where_mesh_up_to_says() -> None:
    fleet = _Fleet(16)                   # 15 peers each: a full mesh
    fleet.run_until(20.0)
    assert set(fleet.degrees().values()) == {15}
    fleet = _Fleet(17)                   # 16 peers each: the degree rule
    fleet.run_until(20.0)
    deg = fleet.degrees()
    assert max(deg.values()) <= 9 and min(deg.values()) >= 7, sorted(deg.values())
    fleet = _Fleet(13, mesh_up_to=0)     # off: the degree rule in a small fleet too
    fleet.run_until(20.0)
    deg = fleet.degrees()
    assert max(deg.values()) <= 9 and min(deg.values()) >= 7, sorted(deg.values())


def test_a_mesh_shrinks_to_the_degree_once_the_fleet_outgrows_it() -> None:
    ov = make(degree=4, slack=1, mesh=8)
    for i in range(1, 7):                # 6 known, fewer than 8: dial them all
        ov.peer_known(nid(i), f"h{i}:1", 0.0)
    t = settle(ov)
    assert sorted(dials(ov)) == [nid(i) for i in range(1, 7)]
    for i in range(1, 7):
        assert ov.accept(nid(i), False, t)
    assert len(ov.active) == 6 and ov.next_deadline() == math.inf
    for i in range(7, 13):               # 12 known now: back to degree 4, one close at a time
        ov.peer_known(nid(i), f"h{i}:1", t)
    ov.take_outputs()
    closed = 0
    while len(ov.active) > 4 and t < 30.0:
        t = ov.next_deadline()
        ov.on_timer(t)
        for o in ov.take_outputs():
            if isinstance(o, ClosePeer):
                closed += 1
                ov.peer_disconnected(o.peer, t)
            assert not isinstance(o, DialPeer)
    assert len(ov.active) == 4 and closed == 2 and t < 12.0


def test_mesh_up_to_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="mesh_up_to"):
        OverlayConfig(mesh_up_to=-1)
