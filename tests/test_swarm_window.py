"""Swarm engine: the upload window (``upload_done``),
laggards-first uploads, answering early ``Interested`` once the manifest is known, and
the simulator's "piece has left the uplink" report (no I/O, seeded)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._config import SwarmConfig
from protocol._events import SendMessage, ServeChunk
from protocol._manifest import ChunkRef
from protocol._swarm import SwarmEngine
from protocol._swarm_messages import CannotHelp, HaveSet, Interested, Request, make_bitfield
from protocol._swarm_uploads import _STALL_FACTOR, _STALL_FLOOR
from protocol._types import TransferPriority
from sim._loop import EventLoop, derive_rng
from sim._network import LinkProfile, Network
from tests.swarm_sim import KEY, lone_engine, make_key, node_id


def refs_of(n: int, size: int = 1000) -> list[ChunkRef]:
    return make_key("w", n, size)[0]


def engine(refs: list[ChunkRef], held: set[bytes], lookup: dict[str, list[ChunkRef]] | None = None,
           **cfg: object) -> SwarmEngine:
    return lone_engine(refs if lookup is None else lookup,
                       SwarmConfig(**cfg), seed=3, held=held)  # type: ignore[arg-type]


def serves(eng: SwarmEngine) -> list[ServeChunk]:
    return [o for o in eng.take_outputs() if isinstance(o, ServeChunk)]


def connect(eng: SwarmEngine, peers: list[str]) -> None:
    for p in peers:
        eng.peer_connected(p, 0.0)
        eng.receive(p, Interested(KEY), 0.0)
    eng.take_outputs()


def two_requesters(refs: list[ChunkRef], **cfg: object) -> tuple[SwarmEngine, str, str]:
    """An engine holding refs[:8] of 12 and fetching the rest, with two peers whose
    have-sets say: ``ahead`` holds 10 chunks, ``behind`` holds 1; its window is on."""
    eng = engine(refs, {r.hash for r in refs[:8]}, None, redirect_window=0.0,
                 upload_window=1, **cfg)
    ahead, behind = node_id(1), node_id(2)
    eng.want(KEY, TransferPriority.NORMAL, 0.0)
    for p in (ahead, behind):
        eng.peer_connected(p, 0.0)
        eng.receive(p, Interested(KEY), 0.0)
    eng.receive(ahead, HaveSet(KEY, 12, make_bitfield([i < 10 for i in range(12)])), 0.0)
    eng.receive(behind, HaveSet(KEY, 12, make_bitfield([i == 11 for i in range(12)])), 0.0)
    eng.take_outputs()
    # refs[0] (held) served to ``ahead`` at 0.1 and reported at 0.2: the window is on
    eng.receive(ahead, Request(KEY, refs[0].hash, 2), 0.1)
    (s0,) = serves(eng)
    eng.upload_done(ahead, s0.chunk_hash, 0.2)
    return eng, ahead, behind


def test_without_reports_every_queued_request_is_handed_out_at_once() -> None:
    refs = refs_of(6)
    eng = engine(refs, {r.hash for r in refs}, redirect_window=0.0)
    a = node_id(1)
    connect(eng, [a])
    for r in refs:
        eng.receive(a, Request(KEY, r.hash, int(TransferPriority.NORMAL)), 0.1)
    assert [s.chunk_hash for s in serves(eng)] == [r.hash for r in refs]


def test_once_the_driver_reports_at_most_window_pieces_are_unreported() -> None:
    refs = refs_of(8)
    eng = engine(refs, {r.hash for r in refs}, redirect_window=0.0, upload_window=2)
    a, b = node_id(1), node_id(2)
    connect(eng, [a, b])
    eng.receive(a, Request(KEY, refs[0].hash, 2), 0.1)
    first = serves(eng)
    assert len(first) == 1
    eng.upload_done(a, refs[0].hash, 0.2)           # the first report turns the window on
    for i, r in enumerate(refs[1:]):
        eng.receive(a if i % 2 else b, Request(KEY, r.hash, 2), 0.3)
    out = serves(eng)
    assert len(out) == 2                              # the rest wait in the engine
    assert eng.statistics().uploads_served == 3
    done = 0
    pending = list(out)
    while pending:
        s = pending.pop(0)
        eng.upload_done(s.peer, s.chunk_hash, 0.4 + done * 0.01)
        done += 1
        more = serves(eng)
        assert len(more) <= 1
        pending.extend(more)
        assert len(pending) <= 2
    assert eng.statistics().uploads_served == len(refs)


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 4), seed=st.integers(0, 2**16),
       steps=st.lists(st.integers(0, 11), min_size=5, max_size=60))
def test_window_holds_and_every_request_is_served_once(window: int, seed: int,
                                                        steps: list[int]) -> None:
    """Random interleavings of requests (from three peers), reports and pauses: after
    the first report no peer ever holds more than ``window`` unreported pieces, at most
    ``window`` unreported pieces are younger than the stall floor (only an older one can
    have left the window as stalled), and once every piece has been reported every
    distinct request has been served once."""
    rng = random.Random(seed)
    refs = refs_of(10)
    eng = engine(refs, {r.hash for r in refs}, redirect_window=0.0, upload_window=window)
    peers = [node_id(i) for i in (1, 2, 3)]
    connect(eng, peers)
    asked: list[tuple[str, bytes]] = []      # distinct requests (a repeat of a queued one merges)
    queued: set[tuple[str, bytes]] = set()
    unreported: list[ServeChunk] = []
    served: list[tuple[str, bytes]] = []
    reported = False
    counted: list[ServeChunk] = []
    now = 0.0
    handed: dict[int, float] = {}             # id(ServeChunk) -> when handed out
    for step in steps:
        now += 0.3 if step >= 10 else 0.01    # a pause: unreported pieces may stall
        if step >= 10:
            eng.on_timer(now)
        elif step < 6 or not unreported:
            peer = rng.choice(peers)
            h = refs[rng.randrange(len(refs))].hash
            if (peer, h) not in queued:
                asked.append((peer, h))
                queued.add((peer, h))
            eng.receive(peer, Request(KEY, h, 2), now)
        else:
            # a connection is FIFO: of two copies of one chunk to one peer, the older
            # is reported first
            pick = unreported[rng.randrange(len(unreported))]
            s = next(u for u in unreported
                     if (u.peer, u.chunk_hash) == (pick.peer, pick.chunk_hash))
            unreported.remove(s)
            eng.upload_done(s.peer, s.chunk_hash, now)
            reported = True
        new = serves(eng)
        unreported.extend(new)
        served.extend((s.peer, s.chunk_hash) for s in new)
        queued.difference_update((s.peer, s.chunk_hash) for s in new)
        handed.update((id(s), now) for s in new)
        if reported:   # pieces handed out before the first report are not counted
            counted.extend(new)
            counted = [s for s in counted if any(s is u for u in unreported)]
            # (the engine's own arithmetic: a piece stalls once since + floor <= now)
            young = [s for s in counted if handed[id(s)] + _STALL_FLOOR > now]
            assert len(young) <= window
            for p in peers:
                assert sum(1 for s in counted if s.peer == p) <= window
    while unreported:
        now += 0.01
        s = unreported.pop(0)
        eng.upload_done(s.peer, s.chunk_hash, now)
        new = serves(eng)
        unreported.extend(new)
        served.extend((s.peer, s.chunk_hash) for s in new)
    assert sorted(served) == sorted(asked)


def test_a_lost_report_closes_the_window_only_until_request_timeout() -> None:
    refs = refs_of(3)
    eng = engine(refs, {r.hash for r in refs}, redirect_window=0.0, upload_window=1,
                 request_timeout=30.0)
    a = node_id(1)
    connect(eng, [a])
    eng.receive(a, Request(KEY, refs[0].hash, 2), 0.0)
    (s0,) = serves(eng)
    eng.upload_done(a, s0.chunk_hash, 0.1)
    eng.receive(a, Request(KEY, refs[1].hash, 2), 0.2)
    eng.receive(a, Request(KEY, refs[2].hash, 2), 0.2)
    assert len(serves(eng)) == 1                     # refs[1]; its report gets lost
    deadline = eng.next_deadline()
    assert deadline is not None and deadline <= 0.2 + 30.0 + 1e-9
    eng.on_timer(15.0)
    assert serves(eng) == []                         # still waiting for the report
    eng.on_timer(30.3)
    assert [s.chunk_hash for s in serves(eng)] == [refs[2].hash]


def windowed(n: int) -> tuple[SwarmEngine, list[ChunkRef], str, str]:
    """A seed of ``n`` chunks with a window of 1 and two peers ``a``, ``b``; refs[0] was
    served to ``a`` at 0.0 and reported sent at 0.1 (the window is on; the pace is 0.1 s
    per 1000-byte piece)."""
    refs = refs_of(n)
    eng = engine(refs, {r.hash for r in refs}, redirect_window=0.0, upload_window=1)
    a, b = node_id(1), node_id(2)
    connect(eng, [a, b])
    eng.receive(a, Request(KEY, refs[0].hash, 2), 0.0)
    (s0,) = serves(eng)
    eng.upload_done(a, s0.chunk_hash, 0.1)
    return eng, refs, a, b


def test_a_peer_leaving_or_a_missing_chunk_frees_its_place_in_the_window() -> None:
    eng, refs, a, b = windowed(4)
    eng.receive(a, Request(KEY, refs[1].hash, 2), 0.2)
    eng.receive(b, Request(KEY, refs[2].hash, 2), 0.2)
    (s1,) = serves(eng)
    assert s1.peer == a
    eng.peer_disconnected(a, 0.3)                    # never reported: gone with the peer
    (s2,) = serves(eng)
    assert (s2.peer, s2.chunk_hash) == (b, refs[2].hash)
    eng.receive(b, Request(KEY, refs[3].hash, 2), 0.4)
    assert serves(eng) == []
    eng.chunk_missing(refs[2].hash, 0.5)             # the driver could not read it
    assert [s.chunk_hash for s in serves(eng)] == [refs[3].hash]


def test_a_piece_stalled_on_its_own_connection_stops_holding_the_window() -> None:
    """One peer's connection stalls (its piece is never reported): once that piece has
    waited ``_STALL_FACTOR`` times the node's usual send time, another peer's request
    goes; the stalled peer gets nothing more until its piece is reported."""
    eng, refs, a, b = windowed(6)                    # pace: 0.1 s per 1000-byte piece
    eng.receive(a, Request(KEY, refs[1].hash, 2), 1.0)
    (s1,) = serves(eng)                              # a's link is then cut: never reported
    eng.receive(a, Request(KEY, refs[2].hash, 2), 1.0)
    eng.receive(b, Request(KEY, refs[3].hash, 2), 1.0)
    assert serves(eng) == []                         # the window is full
    stall_at = 1.0 + _STALL_FACTOR * 0.1
    deadline = eng.next_deadline()
    assert deadline is not None and abs(deadline - stall_at) < 1e-9
    eng.on_timer(stall_at - 0.01)
    assert serves(eng) == []
    eng.on_timer(stall_at)
    assert [(s.peer, s.chunk_hash) for s in serves(eng)] == [(b, refs[3].hash)]
    assert eng.statistics().uploads_stalled == 1
    eng.upload_done(b, refs[3].hash, stall_at + 0.1)
    assert serves(eng) == []                         # a is still at its own limit
    eng.receive(b, Request(KEY, refs[4].hash, 2), 2.0)
    assert [s.peer for s in serves(eng)] == [b]      # b goes on alone
    eng.upload_done(b, refs[4].hash, 2.1)
    eng.upload_done(a, s1.chunk_hash, 3.0)           # a's link is back
    assert [(s.peer, s.chunk_hash) for s in serves(eng)] == [(a, refs[2].hash)]
    # the stalled piece's 2 s timed a's connection, not the uplink: the pace is unchanged,
    # so a second stall is noticed as soon as the first was
    eng.receive(b, Request(KEY, refs[5].hash, 2), 3.0)
    assert serves(eng) == []
    deadline = eng.next_deadline()
    assert deadline is not None and abs(deadline - (3.0 + _STALL_FACTOR * 0.1)) < 0.05


def test_pieces_at_the_links_pace_never_stall() -> None:
    """Every piece reported after the same send time (one FIFO uplink, as in the
    simulator): nothing is ever marked stalled, so the window is exact."""
    refs = refs_of(12)
    eng = engine(refs, {r.hash for r in refs}, redirect_window=0.0, upload_window=1)
    peers = [node_id(i) for i in (1, 2, 3)]
    connect(eng, peers)
    for i, r in enumerate(refs):
        eng.receive(peers[i % 3], Request(KEY, r.hash, 2), 0.0)
        if i == 0:
            (first,) = serves(eng)                    # the window is on from its report
            eng.upload_done(first.peer, first.chunk_hash, 0.08)
    now, sent = 0.08, 1
    while out := serves(eng):
        assert len(out) == 1
        deadline = eng.next_deadline()                # nothing fires before the report
        assert deadline is None or deadline > now + 0.08
        now += 0.08                                   # 1000 bytes at 12.5 kB/s
        eng.upload_done(out[0].peer, out[0].chunk_hash, now)
        sent += 1
    assert sent == len(refs)
    assert eng.statistics().uploads_stalled == 0


def drain(eng: SwarmEngine, now: float) -> list[str]:
    """Report every piece as it is handed out; the peers served, in order."""
    order: list[str] = []
    while out := serves(eng):
        order.extend(s.peer for s in out)
        for s in out:
            now += 0.01
            eng.upload_done(s.peer, s.chunk_hash, now)
    return order


def test_the_requester_known_to_hold_fewest_chunks_is_served_first() -> None:
    refs = refs_of(12)
    eng, ahead, behind = two_requesters(refs)
    eng.receive(ahead, Request(KEY, refs[1].hash, 2), 0.25)
    (s1,) = serves(eng)                               # fills the window of 1
    # both queue requests; the one further behind goes first, every time
    for i in (2, 3, 4):
        eng.receive(ahead, Request(KEY, refs[i].hash, 2), 0.3)
    for i in (5, 6, 7):
        eng.receive(behind, Request(KEY, refs[i].hash, 2), 0.31)
    assert serves(eng) == []
    eng.upload_done(ahead, s1.chunk_hash, 0.4)
    assert drain(eng, 0.4) == [behind] * 3 + [ahead] * 3


def test_round_robin_when_laggards_first_is_off() -> None:
    refs = refs_of(12)
    eng, ahead, behind = two_requesters(refs, laggard_patience=0.0)
    eng.receive(ahead, Request(KEY, refs[1].hash, 2), 0.25)
    (s1,) = serves(eng)
    for i in (2, 3, 4):
        eng.receive(ahead, Request(KEY, refs[i].hash, 2), 0.3)
    for i in (5, 6, 7):
        eng.receive(behind, Request(KEY, refs[i].hash, 2), 0.31)
    eng.upload_done(ahead, s1.chunk_hash, 0.4)
    order = drain(eng, 0.4)
    assert sorted(order) == sorted([ahead] * 3 + [behind] * 3)
    assert order != [behind] * 3 + [ahead] * 3


def test_a_request_waiting_longer_than_laggard_patience_goes_before_laggards() -> None:
    refs = refs_of(12)
    eng, ahead, behind = two_requesters(refs, laggard_patience=2.0)
    eng.receive(behind, Request(KEY, refs[1].hash, 2), 0.3)
    (s1,) = serves(eng)                                # occupies the window
    eng.receive(ahead, Request(KEY, refs[2].hash, 2), 0.4)    # waits from 0.4
    eng.receive(behind, Request(KEY, refs[3].hash, 2), 2.5)
    eng.upload_done(behind, s1.chunk_hash, 2.6)         # ahead's has waited 2.2 s > 2.0
    (s2,) = serves(eng)
    assert (s2.peer, s2.chunk_hash) == (ahead, refs[2].hash)


def test_interested_before_the_manifest_is_answered_as_soon_as_it_is_known() -> None:
    refs = refs_of(5)
    table: dict[str, list[ChunkRef]] = {}
    eng = engine(refs, {refs[0].hash, refs[2].hash}, lookup=table)
    a = node_id(1)
    eng.peer_connected(a, 0.0)
    eng.receive(a, Interested(KEY), 0.0)
    out = [o.message for o in eng.take_outputs() if isinstance(o, SendMessage)]
    assert out == [CannotHelp(KEY)]
    table[KEY] = refs                                  # the manifest arrives by gossip
    eng.want(KEY, TransferPriority.NORMAL, 0.5)
    sent = [o.message for o in eng.take_outputs() if isinstance(o, SendMessage)]
    have_sets = [m for m in sent if isinstance(m, HaveSet)]
    # answered without a's re-asking (it would only re-ask interest_retry later)
    assert have_sets == [HaveSet(KEY, 5, make_bitfield([i in (0, 2) for i in range(5)]))]


def test_network_reports_a_bulk_message_when_it_has_left_the_uplink() -> None:
    loop = EventLoop()
    net = Network(loop, derive_rng(1, "net"), LinkProfile(latency=0.5, bypass_bytes=100),
                  deliver=lambda dst, src, msg: None)
    for n in ("a", "b", "c"):
        net.add_node(n, up=1000.0, down=1000.0)
    sent: list[tuple[float, str, str, object]] = []
    net.on_sent = lambda src, dst, msg: sent.append((loop.now, src, dst, msg))
    net.send("a", "b", "big1", 1000)      # leaves a's uplink at 1.0
    net.send("a", "c", "big2", 500)       # queued behind it: leaves at 1.5
    net.send("a", "b", "small", 50)       # small messages are not reported
    net.send("c", "b", "lost", 1000)
    net.crash("c")                        # a crashed sender reports nothing
    loop.run()
    assert [(round(t, 6), s, d, m) for t, s, d, m in sent] == [
        (1.0, "a", "b", "big1"), (1.5, "a", "c", "big2")]
