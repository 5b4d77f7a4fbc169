"""Have announcements coalesced per peer (``protocol/_swarm_haves.py``): the batch
message, and the engine sending each peer one message per ``have_interval``."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from protocol._codec import PROTOCOL_VERSION, decode, encode
from protocol._config import SwarmConfig
from protocol._errors import MalformedMessage
from protocol._events import SendMessage
from protocol._gossip import GossipSummary, wire_size
from protocol._swarm import SwarmEngine
from protocol._swarm_messages import (
    MAX_HAVES,
    Have,
    Haves,
    Interested,
    NotInterested,
    Request,
    Requests,
)
from tests.swarm_sim import KEY, lone_engine, make_key, node_id


def _announcements(eng: SwarmEngine) -> list[tuple[str, Have | Haves]]:
    return [(o.peer, o.message) for o in eng.take_outputs()
            if isinstance(o, SendMessage) and isinstance(o.message, Have | Haves)]


def _raw(type_id: int, fields: list[object]) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, type_id, fields], use_bin_type=True)


def test_haves_round_trips_and_decodes_strictly() -> None:
    msg = Haves(KEY, (0, 3, 4, 70_000))
    assert decode(encode(msg)) == msg
    assert decode(encode(Haves(KEY, tuple(range(MAX_HAVES))))).indices[-1] == MAX_HAVES - 1
    for bad in ((), (3, 1), (1, 1), (-1, 2), tuple(range(MAX_HAVES + 1))):
        with pytest.raises(ValueError):
            Haves(KEY, bad)
        with pytest.raises(MalformedMessage):
            decode(_raw(52, [KEY, list(bad)]))
    for fields in ([KEY, [1, "2"]], [KEY, [1, 2.0]], [KEY, [True]], ["", [1]], [KEY],
                   [KEY, [1], 2], [KEY, 1]):
        with pytest.raises(MalformedMessage):
            decode(_raw(52, fields))


def _seeding(interval: float = 0.05, busy: float = 0.0,
             upload_rate: float = 0.0) -> tuple[SwarmEngine, list, list[str]]:
    """Node 0 downloads KEY (8 chunks) and has two peers interested in it."""
    refs, _ = make_key("h", 8)
    eng = lone_engine(refs, SwarmConfig(have_interval=interval, have_busy_interval=busy,
                                        upload_rate=upload_rate), seed=1)
    peers = [node_id(1), node_id(2)]
    for p in peers:
        eng.peer_connected(p, 0.0)
    eng.want(KEY, 2, 0.0)   # type: ignore[arg-type]
    for p in peers:
        eng.receive(p, Interested(KEY), 0.0)
    eng.take_outputs()
    return eng, refs, peers


def test_chunks_stored_together_go_to_each_peer_as_one_haves() -> None:
    eng, refs, peers = _seeding()
    eng.chunks_stored([refs[5].hash, refs[1].hash, refs[2].hash], 1.0)
    got = _announcements(eng)
    assert got == [(p, Haves(KEY, (1, 2, 5))) for p in peers]


def test_a_peer_is_told_at_most_once_per_interval_and_a_lone_chunk_at_once() -> None:
    eng, refs, peers = _seeding(0.05)
    eng.chunk_stored(refs[0].hash, 1.0)        # after a quiet spell: at once
    assert _announcements(eng) == [(p, Have(KEY, 0)) for p in peers]
    eng.chunk_stored(refs[3].hash, 1.01)       # within the interval: held back
    eng.chunk_stored(refs[4].hash, 1.02)
    assert _announcements(eng) == []
    assert eng.next_deadline() == pytest.approx(1.05)
    eng.on_timer(1.05)
    assert _announcements(eng) == [(p, Haves(KEY, (3, 4))) for p in peers]
    eng.chunk_stored(refs[6].hash, 2.0)
    assert _announcements(eng) == [(p, Have(KEY, 6)) for p in peers]


def test_a_peer_being_served_is_told_once_per_busy_interval_and_nothing_is_lost() -> None:
    # 1,000 B chunks at 500 B/s (a 1 s burst): peer 1's second request waits here,
    # so peer 1 has work here and hears of new chunks at most every 0.5 s; peer 2,
    # which asked for nothing and holds each chunk it is told of (it says so), still
    # hears of each at the plain interval
    eng, refs, peers = _seeding(0.05, busy=0.5, upload_rate=500.0)
    eng.chunks_stored([refs[0].hash, refs[1].hash], 1.0)
    eng.take_outputs()
    for r in refs[:2]:
        eng.receive(peers[0], Request(KEY, r.hash, 2), 1.0)
    eng.take_outputs()
    told: dict[str, list[int]] = {p: [] for p in peers}
    sent: dict[str, list[float]] = {p: [] for p in peers}
    stores = {112 + 12 * k: refs[2 + k].hash for k in range(6)}   # every 0.12 s
    for tick in range(101, 300):                                   # 1.01 .. 2.99 s
        now = tick / 100
        if tick in stores:
            eng.chunk_stored(stores[tick], now)
        elif (due := eng.next_deadline()) is not None and due <= now:
            eng.on_timer(now)
        for peer, msg in _announcements(eng):
            told[peer] += [msg.index] if isinstance(msg, Have) else list(msg.indices)
            sent[peer].append(now)
            if peer == peers[1]:
                eng.receive(peer, msg, now)
    assert all(sorted(told[p]) == list(range(2, 8)) for p in peers)   # nothing lost
    assert len(sent[peers[1]]) == 6                                    # one a store
    assert len(sent[peers[0]]) <= 3                                    # batched
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(sent[peers[0]]))


def test_a_peer_told_of_chunks_it_lacks_has_work_here_and_is_told_less_often() -> None:
    # nobody's requests wait here; peer 1 says it holds what it is told, peer 2 does
    # not: once 4 chunks announced to peer 2 are not known to be held by it, it can
    # ask for those, and hears of the next ones at most every 0.5 s
    eng, refs, peers = _seeding(0.05, busy=0.5)
    sent: dict[str, list[tuple[float, tuple[int, ...]]]] = {p: [] for p in peers}
    for k in range(8):
        now = 1.0 + 0.12 * k
        eng.chunk_stored(refs[k].hash, now)
        for later in (now + 0.06, now + 0.09):
            due = eng.next_deadline()
            if due is not None and due <= later:
                eng.on_timer(later)
        for peer, msg in _announcements(eng):
            got = (msg.index,) if isinstance(msg, Have) else msg.indices
            sent[peer].append((now, got))
            if peer == peers[0]:
                eng.receive(peer, msg, now)
    eng.on_timer(3.0)
    for peer, msg in _announcements(eng):
        sent[peer].append((3.0, (msg.index,) if isinstance(msg, Have) else msg.indices))
    assert [i for _, got in sent[peers[0]] for i in got] == list(range(8))
    assert len(sent[peers[0]]) == 8
    assert sorted(i for _, got in sent[peers[1]] for i in got) == list(range(8))
    assert [got for _, got in sent[peers[1]][:4]] == [(0,), (1,), (2,), (3,)]
    assert len(sent[peers[1]]) <= 6


def test_pending_haves_are_dropped_for_a_peer_that_lost_interest_or_left() -> None:
    eng, refs, peers = _seeding(0.05)
    eng.chunk_stored(refs[0].hash, 1.0)
    eng.take_outputs()
    eng.chunk_stored(refs[1].hash, 1.01)
    eng.receive(peers[0], NotInterested(KEY), 1.02)
    eng.peer_disconnected(peers[1], 1.03)
    eng.on_timer(1.06)
    assert _announcements(eng) == []


def test_interval_zero_announces_every_store_at_once() -> None:
    eng, refs, peers = _seeding(0.0)
    eng.chunk_stored(refs[0].hash, 1.0)
    eng.chunk_stored(refs[1].hash, 1.0)
    assert _announcements(eng) == [(p, Have(KEY, i)) for i in (0, 1) for p in peers]


def test_a_received_haves_makes_those_chunks_requestable_from_the_peer() -> None:
    refs, _ = make_key("r", 8)
    eng = lone_engine(refs, seed=2)
    peer = node_id(1)
    eng.peer_connected(peer, 0.0)
    eng.want(KEY, 2, 0.0)   # type: ignore[arg-type]
    eng.take_outputs()
    eng.receive(peer, Haves(KEY, (2, 5)), 0.1)
    asked = set()
    for o in eng.take_outputs():
        if isinstance(o, SendMessage) and isinstance(o.message, Request | Requests):
            assert o.peer == peer
            asked |= ({o.message.chunk_hash} if isinstance(o.message, Request)
                      else set(o.message.chunk_hashes))
    assert asked == {refs[2].hash, refs[5].hash}
    # an index past the key's chunk list: the whole message is refused and counted
    before = eng.statistics().bad_have_messages
    eng.receive(peer, Haves(KEY, (6, 8)), 0.2)
    assert eng.statistics().bad_have_messages == before + 1
    assert not [o for o in eng.take_outputs() if isinstance(o, SendMessage)
                and isinstance(o.message, Request | Requests)]


def test_a_decoded_gossip_message_knows_its_wire_size() -> None:
    body = encode(GossipSummary(bytes(16), 7))
    msg = decode(body)
    assert msg._size == len(body)
    assert wire_size(msg) == len(body)
