"""Runs of chunks on the wire: ``Requests`` and ``Pieces`` (protocol/_swarm_messages.py),
how the engine takes them, and the record layer's path for large records."""

from __future__ import annotations

import os
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._codec import decode, encode
from protocol._config import SwarmConfig
from protocol._errors import InvalidValue, MalformedMessage
from protocol._events import DropPeer, SendMessage, ServeChunk, StoreChunk
from protocol._handshake import RecordError
from protocol._swarm_messages import (
    MAX_RUN,
    HaveSet,
    Interested,
    Piece,
    Pieces,
    Request,
    Requests,
    make_bitfield,
    pieces_header,
)
from tests.swarm_sim import KEY, fetch_from, lone_engine, make_key, node_id

from ._net_fixtures import Fleet, Note, connection
from .test_handshake import INIT, RESP, pump


def _hashes(n: int) -> tuple[bytes, ...]:
    return tuple(bytes([i % 256]) * 32 for i in range(n))


# ----------------------------------------------------------------------------- messages


def test_runs_round_trip_and_the_header_is_the_encoding_up_to_the_data() -> None:
    chunks = [os.urandom(n) for n in (0, 5, 300, 70_000)]
    hashes = _hashes(len(chunks))
    msg = Pieces(2, hashes, tuple(len(c) for c in chunks), b"".join(chunks))
    wire = encode(msg)
    assert wire == pieces_header(2, hashes, [len(c) for c in chunks]) + b"".join(chunks)
    back = decode(wire)
    assert back == msg and type(back) is Pieces
    assert [(h, bytes(v)) for h, v in back.runs()] == list(zip(hashes, chunks, strict=True))
    assert isinstance(back.data, memoryview)      # a view of the record, not a copy
    req = Requests(KEY, hashes, 3)
    assert decode(encode(req)) == req
    assert req.split() == [Request(KEY, h, 3) for h in hashes]


@pytest.mark.parametrize("build", [
    lambda: Requests(KEY, (), 1),                                  # empty run
    lambda: Requests(KEY, _hashes(MAX_RUN + 1), 1),                # oversize run
    lambda: Requests(KEY, (b"short",), 1),                         # not a hash
    lambda: Requests("", _hashes(1), 1),                           # no key
    lambda: Pieces(1, (), (), b""),
    lambda: Pieces(1, _hashes(MAX_RUN + 1), (0,) * (MAX_RUN + 1), b""),
    lambda: Pieces(1, _hashes(2), (1,), b"ab"),                    # one size short
    lambda: Pieces(1, _hashes(2), (1, -1), b""),                   # negative size
    lambda: Pieces(1, _hashes(2), (1, 1), b"abc"),                 # sizes do not add up
    lambda: Pieces(1, (b"x" * 31,), (1,), b"a"),
    lambda: pieces_header(1, _hashes(MAX_RUN + 1), [0] * (MAX_RUN + 1)),
    lambda: pieces_header(1, _hashes(2), [1]),
])
def test_malformed_runs_are_refused_when_built(build: object) -> None:
    with pytest.raises(InvalidValue):
        build()  # type: ignore[operator]


def _good_wire() -> bytes:
    return encode(Pieces(1, _hashes(3), (2, 3, 4), b"aabbbcccc"))


@pytest.mark.parametrize("wire", [
    _good_wire()[:-1],                                             # data cut short
    _good_wire() + b"x",                                           # trailing byte
    _good_wire()[:40],                                             # header cut short
    pieces_header(1, _hashes(3), [2, 3, 4])[:-5] + b"\xc4\x09aabbbcccc",  # bin 8, fine...
])
def test_malformed_pieces_bodies(wire: bytes) -> None:
    if wire.endswith(b"\xc4\x09aabbbcccc"):   # ... a shorter bin header decodes the same
        assert decode(wire) == decode(_good_wire())
        return
    with pytest.raises(MalformedMessage):
        decode(wire)


def _raw_pieces(fields: list[object], data_header: bytes, data: bytes) -> bytes:
    head = msgpack.packb([1, 51, fields], use_bin_type=True)
    assert head[3] == 0x90 + len(fields)
    return head[:3] + bytes([0x90 + len(fields) + 1]) + head[4:] + data_header + data


@pytest.mark.parametrize(("fields", "data_header", "data"), [
    ([True, list(_hashes(1)), [1]], b"\xc4\x01", b"a"),            # priority a bool
    ([1, ["x" * 32], [1]], b"\xc4\x01", b"a"),                     # a hash as text
    ([1, list(_hashes(1)), [True]], b"\xc4\x01", b"a"),            # a size a bool
    ([1, list(_hashes(1)), [2]], b"\xc4\x01", b"a"),               # sizes != data
    ([1, list(_hashes(MAX_RUN + 1)), [0] * (MAX_RUN + 1)], b"\xc4\x00", b""),   # oversize
    ([1, list(_hashes(1)), [1]], b"\xa1", b"a"),                   # data as text
    ([1, list(_hashes(1)), [1]], b"\xc6\xff\xff\xff\xff", b"a"),   # announces 4 GiB
    ([1, [list(_hashes(1))], [1]], b"\xc4\x01", b"a"),             # nested
    ([1, {"a": 1}, [1]], b"\xc4\x01", b"a"),                       # a map
])
def test_pieces_decoding_is_strict_and_typed(fields: list[object], data_header: bytes,
                                             data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(_raw_pieces(fields, data_header, data))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_bytes_after_a_pieces_envelope_decode_or_raise_malformed(tail: bytes) -> None:
    """Whatever follows, the decoder gives a Pieces or a typed error, nothing else."""
    try:
        msg = decode(b"\x93\x01\x33\x94" + tail)
    except MalformedMessage:
        return
    assert type(msg) is Pieces and sum(msg.sizes) == len(msg.data)


# ----------------------------------------------------------------------------- the engine


def test_a_run_with_one_bad_chunk_keeps_the_good_ones_and_refetches_the_bad() -> None:
    refs, blobs = make_key("r", 4)
    eng = lone_engine(refs, SwarmConfig(min_requests_per_peer=8), seed=1)
    fetch_from(eng, [1], 4, heard_at=0.1)
    asked = [o.message.chunk_hash for o in eng.take_outputs()
             if isinstance(o, SendMessage) and isinstance(o.message, Request)]
    assert sorted(asked) == sorted(r.hash for r in refs)
    eng.peer_connected(node_id(2), 0.2)
    eng.receive(node_id(2), Interested(KEY), 0.2)
    eng.receive(node_id(2), HaveSet(KEY, 4, make_bitfield([True] * 4)), 0.2)
    eng.take_outputs()
    run = asked[:3]
    data = [blobs[run[0]], b"forged", blobs[run[2]]]
    eng.receive(node_id(1), Pieces(1, tuple(run), tuple(len(d) for d in data),
                                   b"".join(data)), 0.3)
    outs = eng.take_outputs()
    stored = [o.chunk_hash for o in outs if isinstance(o, StoreChunk)]
    assert stored == [run[0], run[2]]                      # the good ones, in order
    assert [bytes(o.data) for o in outs if isinstance(o, StoreChunk)] == [data[0], data[2]]
    assert any(isinstance(o, DropPeer) and o.peer == node_id(1) for o in outs)
    again = {o.message.chunk_hash for o in outs if isinstance(o, SendMessage)
             and o.peer == node_id(2) and isinstance(o.message, Request)}
    assert run[1] in again and asked[3] in again           # asked of the other peer
    stats = eng.statistics()
    assert stats.corrupt_pieces == 1 and stats.pieces_accepted == 2


def test_a_run_is_taken_as_the_pieces_it_stands_for() -> None:
    refs, blobs = make_key("p", 5)
    outs = []
    for as_run in (False, True):
        eng = lone_engine(refs, SwarmConfig(min_requests_per_peer=8), seed=3)
        fetch_from(eng, [1], 5, heard_at=0.1)
        asked = [o.message.chunk_hash for o in eng.take_outputs()
                 if isinstance(o, SendMessage) and isinstance(o.message, Request)]
        if as_run:
            eng.receive(node_id(1), Pieces(1, tuple(asked), tuple(len(blobs[h]) for h in asked),
                                           b"".join(blobs[h] for h in asked)), 0.2)
        else:
            for h in asked:
                eng.receive(node_id(1), Piece(h, blobs[h], 1), 0.2)
        out = eng.take_outputs()
        outs.append([(o.chunk_hash, bytes(o.data)) for o in out if isinstance(o, StoreChunk)])
        eng.chunks_stored([h for h, _ in outs[-1]], 0.3)
        eng.take_outputs()
        p = eng.progress(KEY)
        assert p.bytes_held == p.bytes_total and not p.stalled
    assert outs[0] == outs[1] and len(outs[0]) == 5


def test_requests_are_served_as_the_requests_they_stand_for() -> None:
    refs, _ = make_key("q", 6)
    held = {r.hash for r in refs}
    served = []
    for as_run in (False, True):
        eng = lone_engine(refs, seed=5, held=held)
        eng.peer_connected(node_id(1), 0.0)
        eng.receive(node_id(1), Interested(KEY), 0.0)
        eng.take_outputs()
        hashes = tuple(r.hash for r in refs)
        if as_run:
            eng.receive(node_id(1), Requests(KEY, hashes, 2), 0.1)
        else:
            for h in hashes:
                eng.receive(node_id(1), Request(KEY, h, 2), 0.1)
        served.append([(o.peer, o.chunk_hash, o.priority) for o in eng.take_outputs()
                       if isinstance(o, ServeChunk)])
    assert served[0] == served[1] and len(served[0]) == 6


def test_uploads_done_for_a_run_opens_the_window_as_each_would() -> None:
    refs, _ = make_key("w", 8)
    held = {r.hash for r in refs}
    eng = lone_engine(refs, SwarmConfig(upload_window=2), seed=5, held=held)
    eng.peer_connected(node_id(1), 0.0)
    eng.receive(node_id(1), Interested(KEY), 0.0)
    eng.upload_done(node_id(1), b"\0" * 32, 0.0)   # the driver reports: the window is on
    eng.take_outputs()
    eng.receive(node_id(1), Requests(KEY, tuple(r.hash for r in refs), 2), 0.1)
    first = [o.chunk_hash for o in eng.take_outputs() if isinstance(o, ServeChunk)]
    assert len(first) == 2
    eng.uploads_done(node_id(1), first, 0.2)
    second = [o.chunk_hash for o in eng.take_outputs() if isinstance(o, ServeChunk)]
    assert len(second) == 2 and not set(second) & set(first)


# ----------------------------------------------------------------------------- records


@pytest.mark.parametrize("step", [1, 7, 4096, 65_536, 1 << 20])
def test_a_large_record_arrives_whole_however_it_is_cut(step: int) -> None:
    fleet = Fleet()
    ci, cr = (connection(fleet.node("a"), fleet.trust, INIT, random.Random(1)),
              connection(fleet.node("b"), fleet.trust, RESP, random.Random(2)))
    pump(ci, cr)
    chunks = [os.urandom(200_000), os.urandom(150_000)]
    big = Pieces(1, _hashes(2), (200_000, 150_000), b"".join(chunks))
    ci.send(Note("before"))
    ci.send(big)
    ci.send(Note("after"))
    ci.send(big)
    wire = ci.data_to_send()
    got: list[object] = []
    for k in range(0, len(wire), step):
        got += cr.receive_data(wire[k:k + step])
        assert cr.buffered <= 4 + cr.frame_limit
    assert got == [Note("before"), big, Note("after"), big]
    assert cr.buffered == 0


def test_a_tampered_large_record_kills_the_session() -> None:
    fleet = Fleet()
    ci, cr = (connection(fleet.node("a"), fleet.trust, INIT, random.Random(1)),
              connection(fleet.node("b"), fleet.trust, RESP, random.Random(2)))
    pump(ci, cr)
    ci.send(Pieces(1, _hashes(1), (300_000,), os.urandom(300_000)))
    wire = bytearray(ci.data_to_send())
    wire[200_000] ^= 1
    cr.receive_data(bytes(wire[:100_000]))
    with pytest.raises(RecordError):
        cr.receive_data(bytes(wire[100_000:]))


def test_the_daemon_keeps_large_buffers_in_the_heap_on_glibc() -> None:
    """``shoal daemon`` raises glibc's mmap and trim thresholds (agent/_daemon/heap.py)
    so a run's multi-MiB buffers are reused, not mapped and zeroed afresh; elsewhere
    it changes nothing."""
    import platform

    from agent._daemon.heap import MMAP_THRESHOLD, keep_large_buffers
    from protocol import DEFAULT_MAX_FRAME
    assert MMAP_THRESHOLD > DEFAULT_MAX_FRAME
    assert keep_large_buffers() is (platform.libc_ver()[0] == "glibc")
