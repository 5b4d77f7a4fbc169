"""The ledger's indexes (sorted origins, vector digest, bucket hashes) against the
plain computations they replace: every answer must be the same, after any merges."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._codec import encode
from protocol._errors import InvalidValue
from protocol._gossip import GossipDelta, GossipDigest, bucket_hashes, bucket_of, wire_size
from protocol._hlc import vv_from_wire, vv_hash, vv_to_wire
from protocol._ledger import Ledger
from protocol._vector_index import VectorIndex

from ._fleet import admitted_ledger, node_cert, node_key, record

N = 12

# an op: (writer, reader): the writer writes a record, then the reader takes a delta
# from it cut into one-entry pieces, of which it applies those the mask keeps
ops = st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, N - 1), st.integers(0, 7)),
               max_size=25)


def _fleet(history: list[tuple[int, int, int]]) -> list[Ledger]:
    ledgers = [admitted_ledger(N) for _ in range(N)]
    for step, (writer, reader, mask) in enumerate(history):
        ledgers[writer].append(node_key(writer), record(name=f"n{writer}",
                                                        written_at=float(step)))
        if reader != writer:
            pieces = ledgers[writer].delta_since(ledgers[reader].version_vector, 1)
            for i, p in enumerate(pieces):
                if mask >> (i % 3) & 1:
                    ledgers[reader].merge_entries(p.entries, p.ranges)
    return ledgers


def _known(led: Ledger) -> set[str]:
    return {e.origin for e in led.entries()} | set(led.version_vector)


@settings(max_examples=40)
@given(ops, st.integers(0, 6), st.sets(st.integers(0, 63), max_size=6))
def test_indexes_answer_as_the_scans_do(history: list[tuple[int, int, int]], bits: int,
                                        raw_buckets: set[int]) -> None:
    buckets = tuple(sorted(b % (1 << bits) for b in raw_buckets))
    for led in _fleet(history):
        vv = led.version_vector
        assert led.vv_hash() == vv_hash(vv)
        assert led.origins_in_vector() == len(vv)
        for b in range(7):          # every width, twice (the second from the cache)
            assert led.bucket_hashes(b) == bucket_hashes(vv, b)
            assert led.bucket_hashes(b) == bucket_hashes(vv, b)
        listed = led.origins_in_buckets(bits, buckets)
        assert listed == sorted(o for o in _known(led) if bucket_of(o, bits) in buckets)
        assert led.vector_in_buckets(bits, buckets) == {
            k: c for k, c in vv_to_wire(vv).items() if bucket_of(k.hex(), bits) in buckets}

        def only(o: str) -> bool:
            return bucket_of(o, bits) in buckets

        for peer in ({}, {o: c // 2 for o, c in vv.items()}):
            assert led.missing_for(peer, origins=listed) == led.missing_for(peer, only)
            for max_bytes in (1, 600, 1 << 20):
                a = led.delta_since(peer, max_bytes, only)
                b = led.delta_since(peer, max_bytes, origins=listed)
                assert [(p.entries, list(p.ranges.items()), p.size) for p in a] == [
                    (p.entries, list(p.ranges.items()), p.size) for p in b]
                assert bool(a) == led.missing_for(peer, only)
                for p in b:   # the size a sender passes in is the encoded size
                    msg = GossipDelta(p.entries, {bytes.fromhex(o): r
                                                  for o, r in p.ranges.items()})
                    assert wire_size(msg, p.size) == len(encode(msg))


def test_bucket_cache_follows_the_vector() -> None:
    """Hashes asked for before and after the vector moves match a fresh computation."""
    ledgers = _fleet([(0, 1, 7), (2, 1, 7)])
    led = ledgers[1]
    before = {b: led.bucket_hashes(b) for b in range(5)}
    assert before == {b: bucket_hashes(led.version_vector, b) for b in range(5)}
    src = ledgers[3]
    src.append(node_key(3), record(name="n3"))
    for p in src.delta_since(led.version_vector):
        led.merge_entries(p.entries, p.ranges)
    after = {b: led.bucket_hashes(b) for b in range(5)}
    assert after == {b: bucket_hashes(led.version_vector, b) for b in range(5)}
    assert after != before
    assert led.vv_hash() == vv_hash(led.version_vector)


def test_records_is_a_copy_of_the_live_records() -> None:
    led = _fleet([(0, 1, 7), (0, 1, 7), (2, 1, 7)])[1]
    recs = led.records()
    assert set(recs) == {node_key(0).key_id, node_key(2).key_id}
    assert recs[node_key(0).key_id] == led.record(node_key(0).key_id)
    recs.clear()                              # the caller's copy, not the ledger's
    assert len(led.records()) == 2


def test_digest_size_is_the_encoded_size() -> None:
    rng = random.Random(4)
    edge = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
    for n in (0, 1, 15, 16, 17, 300, 70_000):
        for draw in (lambda: rng.randrange(1 << 64), lambda: rng.choice(edge)):
            vv = {rng.randbytes(16): draw() for _ in range(n)}
            msg = GossipDigest(vv, rng.random() < 0.5, rng.randrange(13),
                               tuple(range(rng.randrange(20))))
            assert wire_size(msg) == len(encode(msg))
            ranges = {k: (v // 2, v) for k, v in vv.items()}
            delta = GossipDelta((), ranges)
            assert wire_size(delta) == len(encode(delta))
    odd = GossipDelta((), {b"k" * 16: (1, 2, 3)})   # not what the codec takes: encode decides
    with pytest.raises(ValueError):
        wire_size(odd)


def test_vv_from_wire_checks_every_item() -> None:
    good = {bytes(range(16)): 3, bytes(range(1, 17)): 0}
    assert vv_from_wire(good) == {k.hex(): v for k, v in good.items()}
    for bad in ({b"x" * 15: 1}, {**good, b"y" * 16: -1}, {**good, b"z" * 17: 1}):
        try:
            vv_from_wire(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


@settings(max_examples=30)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 2**64 - 1), st.booleans()),
                max_size=120),
       st.integers(0, 6), st.sets(st.integers(0, 63), max_size=6))
def test_vector_index_alone_answers_as_the_scans_do(
        moves: list[tuple[int, int, bool]], bits: int, raw_buckets: set[int]) -> None:
    """The index fed directly (origins told of first or not, counters anywhere in the
    wire's range, in any order): hashes and slices as computed from the plain vector."""
    names = [random.Random(i).randbytes(16).hex() for i in range(41)]
    buckets = tuple(sorted(b % (1 << bits) for b in raw_buckets))
    index, vv, known = VectorIndex(), {}, set()
    for gen, (i, counter, told) in enumerate(moves):
        origin = names[i]
        if told:
            index.know(origin)
            known.add(origin)
        vv[origin] = counter
        index.moved(origin, counter, told)
        known.add(origin)
        assert index.vv_hash(gen) == vv_hash(vv)
    assert index.vv_hash(len(moves)) == vv_hash(vv)
    for b in range(7):
        assert index.bucket_hashes(b) == bucket_hashes(vv, b)
    assert index.vector_in_buckets(vv, bits, buckets) == {
        k: c for k, c in vv_to_wire(vv).items() if bucket_of(k.hex(), bits) in buckets}
    assert index.origins_in_buckets(bits, buckets) == sorted(
        o for o in known if bucket_of(o, bits) in buckets)


def test_vector_index_refuses_an_origin_that_is_not_16_bytes_of_hex() -> None:
    index = VectorIndex()
    for bad in ("ab" * 15, "ab" * 17, "zz" * 16):
        with pytest.raises(ValueError):
            index.moved(bad, 1)
    with pytest.raises(InvalidValue):
        index.moved("ab" * 15, 1)
    assert index.vv_hash(0) == vv_hash({})


def test_ledgers_holding_one_entry_share_its_keys() -> None:
    """The keys an entry is held by are made once per entry object (every simulated
    ledger holding it shares them), and are the plain tuples."""
    ledgers = _fleet([(0, 1, 7), (1, 2, 7)])     # node 0's record reaches 1, then 2
    e = next(x for x in ledgers[0].entries() if x.record is not None)
    assert e.stamp == (e.origin, e.counter) and e.stamp is e.stamp
    assert e.relay_key() is None and e.content_key() is None
    held = [next(k for k in led._entries if k == e.stamp) for led in ledgers[1:3]]
    assert held[0] is held[1] is e.stamp
    cert = node_cert(node_key(5))
    relay = ledgers[5].append(node_key(5), cert)
    assert relay.content_key() == ("certificate", cert)
    assert relay.relay_key() == (relay.origin, relay.content_key())
    assert relay.relay_key() is relay.relay_key()
