"""Large records received into reused buffers (agent/_daemon/buffers.py, the receive
path of protocol/_handshake.py and agent/_daemon/transport.py; issue 16)."""

from __future__ import annotations

import random
from collections.abc import Callable

import blake3
import pytest
import trio
import trio.testing

from agent._daemon.buffers import BufferPool
from agent._daemon.transport import SecureChannel, TransportSettings
from protocol import Pieces, pieces_header
from protocol._errors import FrameTooLarge, LocalProtocolError, MalformedMessage
from protocol._handshake import ConnectionRole, RecordError, SecureConnection

from ._net_fixtures import Fleet, Note, connection

_FLEET = Fleet()
_A, _B = _FLEET.node("alice"), _FLEET.node("bob")
KiB = 1024


def _pair(pool: BufferPool | None, seed: int = 1, max_frame: int = 8 << 20
          ) -> tuple[SecureConnection, SecureConnection]:
    """An established pair; the receiver (responder) takes its buffers from ``pool``."""
    rng = random.Random(seed)
    ci = connection(_A, _FLEET.trust, ConnectionRole.INITIATOR, rng, max_frame=max_frame)
    cr = connection(_B, _FLEET.trust, ConnectionRole.RESPONDER, rng, max_frame=max_frame,
                    buffers=None if pool is None else pool.take)
    for _ in range(10):
        ab, ba = ci.data_to_send(), cr.data_to_send()
        if not ab and not ba:
            break
        if ab:
            assert cr.receive_data(ab) == []
        if ba:
            assert ci.receive_data(ba) == []
    assert ci.established and cr.established
    return ci, cr


def _run(fill: int, sizes: list[int]) -> bytearray:
    """The plaintext of a Pieces record: chunk k is ``sizes[k]`` bytes of ``fill + k``."""
    hashes = [blake3.blake3(bytes([fill + k]) * n).digest() for k, n in enumerate(sizes)]
    return bytearray(pieces_header(1, hashes, sizes)
                     + b"".join(bytes([fill + k]) * n for k, n in enumerate(sizes)))


def _check(msg: object, fill: int, sizes: list[int]) -> None:
    assert isinstance(msg, Pieces)
    assert list(msg.sizes) == sizes and len(msg.data) == sum(sizes)
    for k, (h, data) in enumerate(msg.runs()):
        assert bytes(data) == bytes([fill + k]) * sizes[k]
        assert blake3.blake3(data).digest() == h


def _feed(cr: SecureConnection, wire: bytes | bytearray, step: int) -> list[object]:
    """Deliver ``wire`` as a session does: straight into a large record's buffer when
    one is open, else through receive_data, ``step`` bytes at most per read."""
    got: list[object] = []
    pos = 0
    while pos < len(wire):
        into = cr.receive_buffer()
        if into is not None:
            n = min(step, len(into), len(wire) - pos)
            into[:n] = wire[pos:pos + n]
            into.release()
            got += cr.received_into(n)
        else:
            n = min(step, len(wire) - pos)
            got += cr.receive_data(wire[pos:pos + n])
        pos += n
    return got


# ---------------------------------------------------------------------------- the pool


def test_a_buffer_in_use_is_never_handed_out_and_is_reused_once_free() -> None:
    pool = BufferPool(keep=4, granule=1024)
    a = pool.take(3000)
    assert len(a) >= 3000
    view = memoryview(a)[10:20].toreadonly()   # a slice of a view still refers to it
    del a
    b = pool.take(3000)
    assert b is not view.obj
    b[:] = b"\x01" * len(b)
    assert bytes(view) == b"\x00" * 10          # untouched by the later user
    del b
    view.release()
    again = pool.take(2000)
    st = pool.statistics()
    assert st.reused == 1 and st.allocated == 2 and st.pooled == 2
    assert len(again) >= 3000


def test_a_free_buffer_too_short_is_replaced_and_the_pool_is_bounded() -> None:
    pool = BufferPool(keep=2, granule=1024)
    small = pool.take(1000)
    del small
    big = pool.take(5000)                       # the free 1 KiB one gives way
    assert len(big) == 5120 and pool.statistics().pooled == 1
    other = pool.take(100)                      # as long as the longest held
    assert len(other) == 5120
    extra = pool.take(100)                      # both pooled ones in use: a fresh one
    assert len(extra) == 100
    st = pool.statistics()
    assert st.overflow == 1 and st.pooled == 2 and st.pooled_bytes == 2 * 5120
    del big, other, extra
    with pytest.raises(ValueError):
        pool.take(-1)
    with pytest.raises(ValueError):
        BufferPool(keep=0)


def test_the_pool_is_exhausted_only_when_full_and_every_buffer_is_in_use() -> None:
    pool = BufferPool(keep=2, granule=1024)
    a = pool.take(10)
    assert not pool.exhausted()                 # room for one more
    b = pool.take(10)
    assert pool.exhausted()
    view = memoryview(b)
    del b
    assert pool.exhausted()                     # a view is still out
    view.release()
    assert not pool.exhausted()
    del a


# ---------------------------------------------------------------------------- records


@pytest.mark.parametrize("step", [1500, 64 * KiB + 7, 1 << 20])
def test_a_reused_buffer_never_shows_an_earlier_records_bytes(step: int) -> None:
    pool = BufferPool(keep=4)
    ci, cr = _pair(pool)
    first = [100 * KiB] * 20                    # ~2 MiB
    later = [70 * KiB, 3]                       # shorter: the reused buffer is longer
    ci.send_bytes(_run(1, first))
    [msg] = _feed(cr, ci.data_to_send(), step)
    _check(msg, 1, first)
    del msg                                     # nothing refers to it any more
    before = pool.statistics()
    ci.send_bytes(_run(50, later))
    ci.send(Note("after", b"n"))
    got = _feed(cr, ci.data_to_send(), step)
    assert len(got) == 2 and got[1] == Note("after", b"n")
    _check(got[0], 50, later)
    assert pool.statistics().reused > before.reused   # the same buffers, taken again
    assert cr.buffered == 0 and cr.receive_buffer() is None


def test_records_still_referred_to_are_never_overwritten() -> None:
    pool = BufferPool(keep=3)
    ci, cr = _pair(pool, seed=2)
    held = []
    for fill in range(0, 60, 10):               # six records, all kept alive
        ci.send_bytes(_run(fill, [128 * KiB] * 3))
        held += _feed(cr, ci.data_to_send(), 1 << 20)
    for k, msg in enumerate(held):
        _check(msg, 10 * k, [128 * KiB] * 3)
    assert pool.statistics().overflow > 0       # the pool ran out: fresh buffers
    data = held[0].data
    assert isinstance(data, memoryview) and data.readonly


def test_without_a_pool_records_are_received_the_same() -> None:
    ci, cr = _pair(None, seed=3)
    ci.send_bytes(_run(7, [90 * KiB, 200 * KiB]))
    [msg] = _feed(cr, ci.data_to_send(), 32 * KiB)
    _check(msg, 7, [90 * KiB, 200 * KiB])


# ---------------------------------------------------------------------------- bad input


def test_an_oversize_frame_is_refused_before_a_buffer_is_taken() -> None:
    pool = BufferPool()
    _, cr = _pair(pool, seed=4, max_frame=1 << 20)
    with pytest.raises(FrameTooLarge):
        cr.receive_data((2 << 20).to_bytes(4, "big") + b"\x00" * 100)
    assert pool.statistics().taken == 0
    with pytest.raises(LocalProtocolError):
        cr.receive_data(b"\x00")               # closed for good


def test_a_malformed_pooled_record_is_a_typed_error() -> None:
    pool = BufferPool()
    ci, cr = _pair(pool, seed=5)
    body = _run(3, [100 * KiB, 100 * KiB])
    del body[-1]                                # sizes no longer add up to the data
    ci.send_bytes(body)
    with pytest.raises(MalformedMessage):
        _feed(cr, ci.data_to_send(), 1 << 20)
    with pytest.raises(LocalProtocolError):
        cr.receive_buffer() or cr.receive_data(b"x")


@pytest.mark.parametrize("direct", [True, False])
def test_a_tampered_large_record_fails_authentication(direct: bool) -> None:
    pool = BufferPool()
    ci, cr = _pair(pool, seed=6)
    ci.send_bytes(_run(9, [300 * KiB]))
    wire = bytearray(ci.data_to_send())
    wire[len(wire) // 2] ^= 0x40
    with pytest.raises(RecordError):
        if direct:
            _feed(cr, wire, 1 << 20)
        else:
            cr.receive_data(wire)
    assert cr.receive_buffer() is None


def test_received_into_refuses_more_than_the_record_takes() -> None:
    ci, cr = _pair(BufferPool(), seed=7)
    with pytest.raises(LocalProtocolError):
        cr.received_into(1)                     # no large record open
    ci.send_bytes(_run(1, [100 * KiB]))
    wire = ci.data_to_send()
    assert cr.receive_data(wire[:1000]) == []
    into = cr.receive_buffer()
    assert into is not None and len(into) == len(wire) - 1000
    with pytest.raises(LocalProtocolError):
        cr.received_into(len(into) + 1)
    into[:] = wire[1000:]
    into.release()
    _check(cr.received_into(len(wire) - 1000)[0], 1, [100 * KiB])


# ---------------------------------------------------------------------------- channels


async def _channel_pair(stream_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]],
                        settings: TransportSettings
                        ) -> tuple[SecureConnection, SecureChannel, trio.abc.Stream]:
    """A sending connection driven by hand, and a receiving channel on the other end."""
    ci, cr = _pair(BufferPool(keep=4), seed=11)
    a, b = stream_pair()
    channel = SecureChannel(b, cr, settings, "peer", [])
    return ci, channel, a


@pytest.mark.parametrize("sockets", [True, False])
async def test_a_channel_receives_runs_straight_into_their_buffers(sockets: bool) -> None:
    """Over a socket (recv_into) and over a memory stream (receive_some and a copy),
    runs of pieces arrive whole while earlier ones are still held."""
    make = _sockets if sockets else trio.testing.memory_stream_pair
    ci, channel, wire = await _channel_pair(make, TransportSettings(read_size=100 * KiB))
    sizes = [128 * KiB] * 5
    held = []
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            for fill in range(0, 80, 10):
                ci.send_bytes(_run(fill, sizes))
                ci.send(Note(f"n{fill}"))
                await wire.send_all(ci.data_to_send())
        nursery.start_soon(send)
        while len(held) < 16:
            held.append(await channel.receive())
    for k in range(8):
        _check(held[2 * k], 10 * k, sizes)
        assert held[2 * k + 1] == Note(f"n{10 * k}")
    await channel.aclose()
    await wire.aclose()


def _sockets() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)
