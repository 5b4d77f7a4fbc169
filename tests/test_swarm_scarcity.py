"""Swarm engine: super-seeding redirects, first-copy upload order, link-sized
pipelines, tail-only endgame and download-side pre-emption (no I/O, seeded)."""

from __future__ import annotations

import random

import pytest

from protocol._codec import decode, encode
from protocol._config import SwarmConfig
from protocol._events import SendMessage, ServeChunk, StoreChunk
from protocol._manifest import ChunkRef
from protocol._swarm import SwarmEngine
from protocol._swarm_messages import (
    Cancel,
    HaveSet,
    Interested,
    Piece,
    Redirect,
    Request,
    make_bitfield,
)
from protocol._swarm_serving import _REDIRECTS_PER_PEER
from protocol._swarm_uploads import UploadScheduler
from protocol._types import TransferPriority
from tests.swarm_sim import KEY, fetch_from, lone_engine, make_key, node_id

LOW_KEY = "m2/v"


def sent(eng: SwarmEngine, kind: type) -> list[tuple[str, object]]:
    return [(o.peer, o.message) for o in eng.take_outputs()
            if isinstance(o, SendMessage) and isinstance(o.message, kind)]


def seed(refs: list[ChunkRef], **cfg: object) -> SwarmEngine:
    return lone_engine(refs, SwarmConfig(**cfg), seed=7,  # type: ignore[arg-type]
                       held={r.hash for r in refs})


def interested(eng: SwarmEngine, *peers: str) -> None:
    """Connect ``peers``, each interested in the key; drop what the engine answered."""
    for p in peers:
        eng.peer_connected(p, 0.0)
        eng.receive(p, Interested(KEY), 0.0)
    eng.take_outputs()


def test_redirect_round_trips_and_validates() -> None:
    h = bytes(range(32))
    msg = Redirect(KEY, h, (1, 5, 9))
    assert decode(encode(msg)) == msg
    with pytest.raises(ValueError):
        Redirect(KEY, h, (-1,))
    with pytest.raises(ValueError):
        Redirect(KEY, h, tuple(range(17)))


def test_seed_redirects_a_repeat_within_the_window_then_serves_it() -> None:
    refs, _ = make_key("s", 10)
    eng = seed(refs)
    a, b = node_id(1), node_id(2)
    interested(eng, a, b)
    x = refs[3].hash
    eng.receive(a, Request(KEY, x, 2), 0.1)
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)] == [ServeChunk(a, x, 2)]
    # b asks for the chunk that just left: redirected, with never-uploaded positions
    eng.receive(b, Request(KEY, x, 2), 0.2)
    out = eng.take_outputs()
    assert not [o for o in out if isinstance(o, ServeChunk)]
    redirects = [o.message for o in out if isinstance(o, SendMessage)
                 and isinstance(o.message, Redirect)]
    assert len(redirects) == 1 and redirects[0].chunk_hash == x
    assert redirects[0].hints and 3 not in redirects[0].hints
    assert all(0 <= i < 10 for i in redirects[0].hints)
    # c asks while the chunk is still spreading: redirected too
    c = node_id(3)
    eng.peer_connected(c, 1.0)
    eng.receive(c, Interested(KEY), 1.0)
    eng.take_outputs()
    eng.receive(c, Request(KEY, x, 2), 1.5)
    assert not [o for o in eng.take_outputs() if isinstance(o, ServeChunk)]
    assert eng.statistics().redirects_sent == 2
    # b asks again (nobody else had it for b): a peer is redirected a few times per
    # chunk at most, then served, never redirected forever
    for _ in range(_REDIRECTS_PER_PEER - 1):
        eng.receive(b, Request(KEY, x, 2), 1.55)
        assert not [o for o in eng.take_outputs() if isinstance(o, ServeChunk)]
    eng.receive(b, Request(KEY, x, 2), 1.6)
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)] == [ServeChunk(b, x, 2)]
    assert eng.statistics().redirects_sent == 1 + _REDIRECTS_PER_PEER
    # once redirect_window has passed since it last left, a repeat is served at once
    window = SwarmConfig().redirect_window
    d = node_id(4)
    eng.peer_connected(d, 2.0)
    eng.receive(d, Interested(KEY), 2.0)
    eng.take_outputs()
    eng.receive(d, Request(KEY, x, 2), 1.6 + window + 0.01)
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)] == [ServeChunk(d, x, 2)]
    assert eng.statistics().redirects_sent == 1 + _REDIRECTS_PER_PEER


def test_requests_queued_for_a_chunk_are_redirected_when_its_first_copy_leaves() -> None:
    """Two peers ask a seed for the same chunk before it has left: the first is served;
    the other's request, still queued, would be a repeat, so it is redirected at once
    to chunks never uploaded (a request that arrives after the upload is, too)."""
    refs, _ = make_key("q", 10)
    eng = seed(refs, upload_window=1)
    a, b = node_id(1), node_id(2)
    interested(eng, a, b)
    first, y = refs[0].hash, refs[1].hash
    eng.receive(a, Request(KEY, first, 2), 0.05)
    assert len([o for o in eng.take_outputs() if isinstance(o, ServeChunk)]) == 1
    eng.upload_done(a, first, 0.06)                  # the window (1 piece) is on from here
    eng.receive(a, Request(KEY, y, 2), 0.07)         # y is out and unreported: window full
    x = refs[5].hash
    eng.receive(a, Request(KEY, x, 2), 0.1)          # so both requests for x wait here
    eng.receive(b, Request(KEY, x, 2), 0.1)
    eng.take_outputs()
    assert eng.statistics().uploads_queued == 2
    eng.upload_done(a, y, 0.15)
    out = eng.take_outputs()
    served = [o for o in out if isinstance(o, ServeChunk)]
    redirects = [o for o in out if isinstance(o, SendMessage) and isinstance(o.message, Redirect)]
    assert len(served) == 1 and served[0].chunk_hash == x          # one copy leaves ...
    other = b if served[0].peer == a else a
    assert [(r.peer, r.message.chunk_hash) for r in redirects] == [(other, x)]  # ... not two
    assert 5 not in redirects[0].message.hints
    assert eng.statistics().uploads_queued == 0


def test_no_redirect_once_every_chunk_has_left_or_after_the_window() -> None:
    refs, _ = make_key("w", 2)
    eng = seed(refs, redirect_window=5.0)
    a, b = node_id(1), node_id(2)
    for p in (a, b):
        eng.peer_connected(p, 0.0)
    for i, r in enumerate(refs):
        eng.receive(a, Request(KEY, r.hash, 2), 0.1 * i)
    eng.take_outputs()
    # every chunk has been uploaded once: nothing better to send, so serve repeats
    eng.receive(b, Request(KEY, refs[0].hash, 2), 0.3)
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)]
    refs3, _ = make_key("v", 3)
    eng = seed(refs3, redirect_window=5.0)
    for p in (a, b):
        eng.peer_connected(p, 0.0)
    eng.receive(a, Request(KEY, refs3[0].hash, 2), 0.0)
    eng.take_outputs()
    eng.receive(b, Request(KEY, refs3[0].hash, 2), 6.0)   # outside the window
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)]


def test_downloader_follows_redirect_hints_and_backs_off_the_redirected_chunk() -> None:
    refs, blobs = make_key("d", 6)
    eng = lone_engine(refs, SwarmConfig(redirect_backoff=1.0), seed=3)
    s = node_id(1)
    fetch_from(eng, [1], 6)
    first = [m for _, m in sent(eng, Request)]
    assert len(first) == 2   # unmeasured peer: the pipeline floor
    x = first[0].chunk_hash  # type: ignore[attr-defined]
    hint = next(i for i, r in enumerate(refs) if r.hash not in
                {m.chunk_hash for m in first})  # type: ignore[attr-defined]
    eng.receive(s, Redirect(KEY, x, (hint,)), 0.05)
    again = [m for _, m in sent(eng, Request)]
    assert [m.chunk_hash for m in again] == [refs[hint].hash]  # type: ignore[attr-defined]
    assert eng.statistics().redirects_received == 1
    # pieces come back; x is not asked of that peer before the back-off ends
    for m in (first[1], again[0]):
        h = m.chunk_hash  # type: ignore[attr-defined]
        eng.receive(s, Piece(h, blobs[h], 2), 0.1)
        eng.chunk_stored(h, 0.1)
    asked = [m.chunk_hash for _, m in sent(eng, Request)]  # type: ignore[attr-defined]
    assert x not in asked and asked
    deadline = eng.next_deadline()
    assert deadline is not None and deadline <= 1.05
    eng.on_timer(1.06)
    for h in list(eng.outstanding()):
        eng.receive(s, Piece(h, blobs[h], 2), 1.07)
        eng.chunk_stored(h, 1.07)
    eng.on_timer(1.1)
    later = {m.chunk_hash for _, m in sent(eng, Request)}  # type: ignore[attr-defined]
    assert x in later or x in eng.outstanding()


def test_upload_scheduler_serves_the_never_uploaded_chunk_first() -> None:
    up = UploadScheduler(SwarmConfig(upload_slots=1, optimistic_slots=0), random.Random(1), 0.0)
    old, new = b"o" * 32, b"n" * 32
    up.enqueue("p", old, 10, 2, 0.0)
    assert [s.chunk_hash for s in up.pump(0.0)] == [old]
    assert up.copies(old) == 1 and up.uploaded_since(old, 0.0)
    up.enqueue("p", old, 10, 2, 1.0)
    up.enqueue("p", new, 10, 2, 1.0)   # queued after the repeat, served before it
    assert [s.chunk_hash for s in up.pump(1.0)] == [new, old]
    assert up.copies(old) == 2 and up.copies(new) == 1


def _pipe_depth(rtt: float, service: float, pieces: int = 20) -> int:
    """Drive one downloader over a link of round trip ``rtt`` that serialises a piece in
    ``service`` seconds; return the most requests it kept in flight."""
    refs, blobs = make_key("p", 60)
    eng = lone_engine(refs, SwarmConfig(max_requests_per_peer=8), seed=4)
    s = node_id(1)
    fetch_from(eng, [1], 60)
    arrivals: dict[bytes, float] = {}
    link_free = 0.0
    now = 0.0
    most = 0
    for _ in range(pieces):
        for _, m in sent(eng, Request):
            h = m.chunk_hash  # type: ignore[attr-defined]
            link_free = max(link_free, now + rtt / 2) + service
            arrivals[h] = link_free + rtt / 2
        most = max(most, len(eng.outstanding()))
        h = min(arrivals, key=lambda k: arrivals[k])
        now = arrivals.pop(h)
        eng.receive(s, Piece(h, blobs[h], 2), now)
        eng.chunk_stored(h, now)
    return most


def test_pipeline_is_sized_to_the_link_bandwidth_delay_product() -> None:
    # a long fat link: 100 ms round trip, 10 ms per piece -> ~11 needed, capped at 8
    assert _pipe_depth(0.1, 0.01) == 8
    # a medium one: 40 ms round trip, 10 ms per piece -> about 5-6
    assert 4 <= _pipe_depth(0.04, 0.01) <= 7
    # a thin link: a piece takes longer to serialise than the round trip -> the floor
    assert _pipe_depth(0.02, 0.5) == 2


def test_endgame_only_for_the_tail_and_only_when_overdue() -> None:
    refs, blobs = make_key("e", 100)
    eng = lone_engine(refs, SwarmConfig(min_requests_per_peer=8, max_requests_per_peer=8,
                                        endgame_fraction=0.02),
                      seed=5, held={r.hash for r in refs[:97]})
    fetch_from(eng, [1, 2], 100)
    eng.take_outputs()
    assert all(len(v) == 1 for v in eng.outstanding().values())
    assert not eng.in_endgame(KEY)   # 3 left > max(1, 2% of 100)
    h0 = next(iter(eng.outstanding()))
    peer0 = next(iter(eng.outstanding()[h0]))
    eng.receive(peer0, Piece(h0, blobs[h0], 2), 0.2)
    eng.chunk_stored(h0, 0.2)
    eng.take_outputs()
    assert eng.in_endgame(KEY)
    assert all(len(v) == 1 for v in eng.outstanding().values())   # not overdue yet
    wake = eng.next_deadline()
    assert wake is not None and wake < 30.0   # an endgame check, before any timeout
    eng.on_timer(wake)
    assert any(len(v) == 2 for v in eng.outstanding().values())
    assert eng.statistics().endgame_requests >= 1


def test_a_critical_key_preempts_low_requests_in_flight() -> None:
    low_refs, low_blobs = make_key("l", 6)
    crit_refs, _ = make_key("c", 4)
    eng = lone_engine({KEY: crit_refs, LOW_KEY: low_refs}, seed=6)
    s = node_id(1)
    eng.peer_connected(s, 0.0)
    eng.want(LOW_KEY, TransferPriority.LOW, 0.0)
    eng.receive(s, HaveSet(LOW_KEY, 6, make_bitfield([True] * 6)), 0.0)
    low = {m.chunk_hash for _, m in sent(eng, Request)}  # type: ignore[attr-defined]
    assert len(low) == 2
    eng.receive(s, HaveSet(KEY, 4, make_bitfield([True] * 4)), 0.1)
    eng.want(KEY, TransferPriority.CRITICAL, 0.1)
    out = eng.take_outputs()
    cancels = {o.message.chunk_hash for o in out if isinstance(o, SendMessage)
               and isinstance(o.message, Cancel)}
    requests = [o.message for o in out if isinstance(o, SendMessage)
                and isinstance(o.message, Request)]
    assert cancels == low
    assert requests and all(r.key == KEY for r in requests)
    assert eng.statistics().preempted_requests == 2
    # a cancelled piece that still arrives is accepted: it is still needed
    h = next(iter(low))
    eng.receive(s, Piece(h, low_blobs[h], 0), 0.2)
    assert eng.progress(LOW_KEY).bytes_fetched == 1000


def test_seed_serves_a_repeat_to_the_peer_its_first_copy_went_to() -> None:
    """A peer that asks again for the chunk it was sent lost it (or its request timed
    out): only the seed can give it back, so the repeat is served, not redirected."""
    refs, _ = make_key("f", 10)
    eng = seed(refs)
    a, b = node_id(1), node_id(2)
    interested(eng, a, b)
    x = refs[3].hash
    eng.receive(a, Request(KEY, x, 2), 0.1)
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)] == [ServeChunk(a, x, 2)]
    eng.receive(a, Request(KEY, x, 2), 3.0)
    assert [o for o in eng.take_outputs() if isinstance(o, ServeChunk)] == [ServeChunk(a, x, 2)]
    # anyone else is still redirected while never-uploaded chunks remain
    eng.receive(b, Request(KEY, x, 2), 3.1)
    assert [m.chunk_hash for _, m in sent(eng, Redirect)] == [x]   # type: ignore[attr-defined]
    assert eng.statistics().redirects_sent == 1


def _fetch_pipelined(n: int, **cfg: object) -> tuple[SwarmEngine, dict[bytes, bytes], list[bytes]]:
    """Node 0 fetching ``n`` chunks from peer 1 alone, four requests in flight."""
    refs, data = make_key("o", n)
    config = SwarmConfig(min_requests_per_peer=4, max_requests_per_peer=4,  # type: ignore[arg-type]
                         endgame_chunks=0, **cfg)
    eng = lone_engine(refs, config, seed=3)
    fetch_from(eng, [1], n)
    asked = [m.chunk_hash for _, m in sent(eng, Request)]   # type: ignore[attr-defined]
    return eng, data, asked


def test_a_request_overtaken_by_three_later_pieces_is_asked_again_at_once() -> None:
    """A peer serves its requests in order, so a piece that three pieces asked after it
    have overtaken was lost on the way: it is asked again then, not after
    ``request_timeout``; if it still arrives it is taken."""
    eng, data, asked = _fetch_pipelined(12)
    assert len(asked) == 4
    peer = node_id(1)
    lost = asked[0]
    for i, h in enumerate(asked[1:3]):
        eng.receive(peer, Piece(h, data[h], 2), 1.0 + i)
    assert eng.statistics().requests_lost == 0
    again = [m.chunk_hash for _, m in sent(eng, Request)]   # type: ignore[attr-defined]
    assert lost not in again
    eng.receive(peer, Piece(asked[3], data[asked[3]], 2), 3.0)   # the third to overtake it
    assert eng.statistics().requests_lost == 1
    assert eng.statistics().requests_timed_out == 0
    again = [m.chunk_hash for _, m in sent(eng, Request)]   # type: ignore[attr-defined]
    assert lost in again
    # the first copy arrives after all (it was late, not lost): accepted, stored once
    eng.receive(peer, Piece(lost, data[lost], 2), 3.5)
    stores = [o.chunk_hash for o in eng.take_outputs() if isinstance(o, StoreChunk)]
    assert stores.count(lost) == 1


def test_overtaken_requests_wait_for_the_timeout_when_the_rule_is_off() -> None:
    eng, data, asked = _fetch_pipelined(12, lost_after_overtaken=0, request_timeout=30.0)
    peer = node_id(1)
    for i, h in enumerate(asked[1:]):
        eng.receive(peer, Piece(h, data[h], 2), 1.0 + i)
    assert eng.statistics().requests_lost == 0
    assert asked[0] not in [m.chunk_hash for _, m in sent(eng, Request)]   # type: ignore[attr-defined]


def test_a_peer_that_never_answers_interested_is_asked_again() -> None:
    """An :class:`Interested` or its :class:`HaveSet` lost on the way must not leave the
    peer's chunks unknown for good: it is asked again every ``interest_retry``."""
    refs, _ = make_key("i", 4)
    eng = lone_engine(refs, SwarmConfig(interest_retry=5.0), seed=2)
    p, q = node_id(1), node_id(2)
    eng.peer_connected(p, 0.0)
    eng.peer_connected(q, 0.0)
    eng.want(KEY, TransferPriority.NORMAL, 0.0)
    assert sorted(peer for peer, _ in sent(eng, Interested)) == [p, q]
    eng.receive(q, HaveSet(KEY, 4, make_bitfield([True] * 4)), 0.2)   # q answered, p not
    eng.take_outputs()
    assert eng.next_deadline() == pytest.approx(5.0)
    eng.on_timer(5.0)
    assert [peer for peer, _ in sent(eng, Interested)] == [p]
    eng.receive(p, HaveSet(KEY, 4, make_bitfield([True] * 4)), 5.1)
    eng.take_outputs()
    eng.on_timer(20.0)
    assert sent(eng, Interested) == []
