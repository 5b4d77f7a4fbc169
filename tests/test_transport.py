"""Secure channels over real TCP on 127.0.0.1 (agent/_daemon/transport.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from agent._daemon.redial import Redialer, backoff_delay
from agent._daemon.transport import (
    ChannelClosed,
    HandshakeTimeout,
    IdleTimeout,
    PeerListener,
    SecureChannel,
    TransportSettings,
    dial,
)
from protocol._codec import FrameDecoder, decode, encode, frame
from protocol._handshake import HandshakeReject, HandshakeRejected, RecordError, RejectCode
from protocol._identity import FleetTrust

from ._net_fixtures import Fleet, Member, Note

FAST = TransportSettings(handshake_timeout=5.0, idle_timeout=10.0)


async def echo(channel: SecureChannel) -> None:
    async for msg in channel:
        assert isinstance(msg, Note)
        await channel.send(Note(f"echo:{msg.text}", msg.data))


@asynccontextmanager
async def serving(member: Member, trust: FleetTrust,
                  handler: Callable[[SecureChannel], Awaitable[None]] = echo,
                  settings: TransportSettings = FAST) -> AsyncIterator[PeerListener]:
    async with trio.open_nursery() as nursery:
        listener = PeerListener(identity=member.identity, certificate=member.certificate,
                                trust=trust, handler=handler, settings=settings)
        await nursery.start(listener.serve)
        yield listener
        nursery.cancel_scope.cancel()


def dialler(member: Member, trust: FleetTrust, port: int, expected_peer: str | None = None
            ) -> Callable[[], Awaitable[SecureChannel]]:
    return partial(dial, "127.0.0.1", port, identity=member.identity,
                   certificate=member.certificate, trust=trust, settings=FAST,
                   expected_peer=expected_peer)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for the other side's task to catch up; statistics lag the wire."""
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.005)


async def read_all(stream: trio.SocketStream) -> bytes:
    """Read until EOF (or reset), bounded in time."""
    got = bytearray()
    with trio.fail_after(5):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            got += data
    return bytes(got)


async def test_dial_and_listen_exchange_messages_both_ways() -> None:
    fleet = Fleet()
    server, client = fleet.node("server"), fleet.node("client")
    seen: list[str] = []

    async def handler(channel: SecureChannel) -> None:
        seen.append(channel.peer_id)
        await channel.send(Note("welcome"))
        await echo(channel)

    with trio.fail_after(10):
        async with serving(server, fleet.trust, handler) as listener:
            ch = await dialler(client, fleet.trust, listener.port,
                               expected_peer=server.node_id)()
            async with ch:
                assert ch.peer_id == server.node_id
                assert ch.peer_certificate == server.certificate
                assert await ch.receive() == Note("welcome")
                big = bytes(range(256)) * 4096  # 1 MiB in one record
                await ch.send(Note("big", big))
                for i in range(20):
                    await ch.send(Note(str(i)))
                assert await ch.receive() == Note("echo:big", big)
                for i in range(20):
                    assert await ch.receive() == Note(f"echo:{i}")
                stats = ch.statistics().connection
                assert stats.records_sent == 21 and stats.records_received == 22
            assert seen == [client.node_id]
            st = listener.statistics()
            assert st.sessions == 1 and st.handshake_failures == 0


async def test_concurrent_senders_keep_records_whole() -> None:
    fleet = Fleet()
    server, client = fleet.node("server"), fleet.node("client")
    with trio.fail_after(10):
        async with serving(server, fleet.trust) as listener, \
                await dialler(client, fleet.trust, listener.port)() as ch:
                async def blast(tag: str) -> None:
                    for i in range(30):
                        await ch.send(Note(f"{tag}{i}", tag.encode() * 5000))
                got: list[object] = []

                async def collect() -> None:
                    for _ in range(90):
                        got.append(await ch.receive())
                async with trio.open_nursery() as n:  # read while writing: no deadlock
                    n.start_soon(collect)
                    for tag in "abc":
                        n.start_soon(blast, tag)
                texts = {m.text for m in got if isinstance(m, Note)}
                assert texts == {f"echo:{t}{i}" for t in "abc" for i in range(30)}


async def test_unadmitted_dialler_is_refused_with_reason_on_both_sides() -> None:
    fleet, rogue_fleet = Fleet(), Fleet(tag="rogue")
    server, rogue = fleet.node("server"), rogue_fleet.node("mallory")
    with trio.fail_after(10):
        async with serving(server, fleet.trust) as listener:
            with pytest.raises(HandshakeRejected) as info:
                await dialler(rogue, rogue_fleet.trust, listener.port)()
            assert info.value.code is RejectCode.UNTRUSTED_KEY
            assert "not admitted" in info.value.detail
            await until(lambda: listener.statistics().handshake_failures == 1)
            st = listener.statistics()
            assert st.sessions == 0
            assert "not admitted" in st.last_failure and rogue.node_id in st.last_failure


async def test_revoked_and_wrong_fleet_dialers_are_refused() -> None:
    fleet, other = Fleet(), Fleet("fleet-other")
    server, stolen = fleet.node("server"), fleet.node("stolen")
    fleet.revoke(stolen)
    with trio.fail_after(10):
        async with serving(server, fleet.trust) as listener:
            with pytest.raises(HandshakeRejected) as info:
                await dialler(stolen, fleet.trust, listener.port)()
            assert info.value.code is RejectCode.UNTRUSTED_KEY
            assert "revoked" in info.value.detail
            with pytest.raises(HandshakeRejected) as info:
                await dialler(other.node("x"), other.trust, listener.port)()
            assert info.value.code is RejectCode.WRONG_FLEET
            await until(lambda: listener.statistics().handshake_failures == 2)


async def relay(target: int, tamper: trio.Event,
                *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A one-connection TCP relay; once ``tamper`` is set it flips one bit client->server."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    client = await listeners[0].accept()
    upstream = await trio.open_tcp_stream("127.0.0.1", target)
    flipped = [False]

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream, may_flip: bool) -> None:
        try:
            while data := await src.receive_some(65536):
                if may_flip and tamper.is_set() and not flipped[0]:
                    data = data[:-1] + bytes([data[-1] ^ 0x01])  # last byte: the MAC tag
                    flipped[0] = True
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await trio.aclose_forcefully(dst)

    async with trio.open_nursery() as n:
        n.start_soon(pipe, client, upstream, True)
        n.start_soon(pipe, upstream, client, False)
    for lst in listeners:
        await lst.aclose()


async def test_tampered_record_kills_only_that_session() -> None:
    fleet = Fleet()
    server = fleet.node("server")
    a, b = fleet.node("a"), fleet.node("b")
    ended: list[BaseException | None] = []

    async def handler(channel: SecureChannel) -> None:
        try:
            await echo(channel)
            ended.append(None)
        except RecordError as exc:
            ended.append(exc)
            raise

    with trio.fail_after(10):
        async with serving(server, fleet.trust, handler) as listener, \
                trio.open_nursery() as n:
            tamper = trio.Event()
            relay_port = await n.start(relay, listener.port, tamper)
            ch_a = await dialler(a, fleet.trust, relay_port)()
            ch_b = await dialler(b, fleet.trust, listener.port)()
            await ch_a.send(Note("clean"))
            assert await ch_a.receive() == Note("echo:clean")
            tamper.set()
            await ch_a.send(Note("tampered"))
            with pytest.raises(ChannelClosed):
                await ch_a.receive()  # the listener closed the session
            await until(lambda: bool(ended))
            assert isinstance(ended[0], RecordError)
            # the other session of the same listener still works
            await ch_b.send(Note("still here"))
            assert await ch_b.receive() == Note("echo:still here")
            await until(lambda: listener.statistics().session_errors == 1)
            assert "failed authentication" in listener.statistics().last_failure
            await ch_a.aclose()
            await ch_b.aclose()
            n.cancel_scope.cancel()


async def test_oversize_length_prefix_is_refused_without_reading_the_body() -> None:
    fleet = Fleet()
    settings = TransportSettings(handshake_timeout=5.0, max_frame=64 * 1024)
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, settings=settings) as listener:
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            # announce 1 GiB and send nothing more: the listener must answer and close now
            await stream.send_all((1 << 30).to_bytes(4, "big"))
            reply = await read_all(stream)
            frames = list(FrameDecoder().feed(reply))
            assert len(frames) == 1
            reject = decode(frames[0])
            assert isinstance(reject, HandshakeReject)
            assert reject.code is RejectCode.MALFORMED
            # before authentication the limit is the handshake's, not max_frame
            assert "exceeds the limit of 8192" in reject.detail
            await stream.aclose()
            await until(lambda: listener.statistics().handshake_failures == 1)


async def test_garbage_before_the_handshake_is_refused() -> None:
    fleet = Fleet()
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust) as listener:
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            await stream.send_all(frame(b"\x93\x01\x63garbage that is not a hello"))
            frames = list(FrameDecoder().feed(await read_all(stream)))
            reject = decode(frames[0])
            assert isinstance(reject, HandshakeReject) and reject.code is RejectCode.MALFORMED
            await stream.aclose()
            # a well-formed message that is not a Hello is out of order
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            await stream.send_all(frame(encode(Note("hello?"))))
            reject = decode(next(FrameDecoder().feed(await read_all(stream))))
            assert isinstance(reject, HandshakeReject) and "expected Hello" in reject.detail
            await stream.aclose()
            await until(lambda: listener.statistics().handshake_failures == 2)


async def test_connection_limit_holds() -> None:
    """``max_connections`` bounds authenticated sessions; idle unauthenticated
    sockets no longer count against it (they live in the handshake pool)."""
    fleet = Fleet()
    settings = TransportSettings(handshake_timeout=30.0, max_connections=2)

    async def hold(channel: SecureChannel) -> None:
        async for _ in channel:
            pass

    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, hold,
                           settings=settings) as listener:
            idle = [await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(3)]
            held = [await dialler(fleet.node(f"p{i}"), fleet.trust, listener.port)()
                    for i in range(2)]
            await until(lambda: listener.statistics().sessions == 2)
            # a third session is refused: over max_connections
            extra = await trio.open_tcp_stream("127.0.0.1", listener.port)
            assert await read_all(extra) == b""  # closed at once, nothing said
            st = listener.statistics()
            assert st.refused_over_limit == 1 and st.pending == 3
            await extra.aclose()
            for ch in held:
                await ch.aclose()
            for s in idle:
                await s.aclose()
            await until(lambda: listener.statistics().active == 0)
            ch = await dialler(fleet.node("late"), fleet.trust, listener.port)()
            await ch.aclose()


async def test_idle_sockets_cannot_lock_out_a_peer() -> None:
    """A full pool of silent connections: a real peer evicts the oldest and gets in."""
    fleet = Fleet()
    settings = TransportSettings(handshake_timeout=30.0, first_byte_timeout=30.0,
                                 max_handshakes=4, max_handshakes_per_address=64)
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, settings=settings) as listener:
            idle = [await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(4)]
            await until(lambda: listener.statistics().pending == 4)
            ch = await dialler(fleet.node("peer"), fleet.trust, listener.port)()
            async with ch:
                await ch.send(Note("in"))
                assert await ch.receive() == Note("echo:in")
            assert await read_all(idle[0]) == b""          # the oldest was closed
            st = listener.statistics()
            assert st.evicted == 1 and st.pending == 3
            for s in idle:
                await s.aclose()


async def test_one_address_holds_only_its_share_of_the_pool() -> None:
    fleet = Fleet()
    settings = TransportSettings(handshake_timeout=30.0, first_byte_timeout=30.0,
                                 max_handshakes=16, max_handshakes_per_address=2)
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, settings=settings) as listener:
            idle = [await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(5)]
            await until(lambda: listener.statistics().evicted_per_address == 3)
            assert listener.statistics().pending == 2
            for s in idle[:3]:
                assert await read_all(s) == b""
            for s in idle:
                await s.aclose()


async def test_first_byte_timeout() -> None:
    fleet = Fleet()
    settings = TransportSettings(handshake_timeout=5.0, first_byte_timeout=0.2)
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, settings=settings) as listener:
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            t0 = trio.current_time()
            assert await read_all(stream) == b""
            assert trio.current_time() - t0 < 2.0
            await stream.aclose()
            await until(lambda: listener.statistics().first_byte_timeouts == 1)
            assert "first_byte_timeout" in listener.statistics().last_failure


async def test_handshake_timeout() -> None:
    fleet = Fleet()
    settings = TransportSettings(handshake_timeout=0.3)
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, settings=settings) as listener:
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            assert await read_all(stream) == b""  # silent client: dropped
            await stream.aclose()
            await until(lambda: listener.statistics().handshake_failures == 1)
            st = listener.statistics()
            assert "handshake within 0.3 s" in st.last_failure
        # and from the dialler's side: a server that accepts but never answers
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(HandshakeTimeout):
            await partial(dial, "127.0.0.1", port, identity=fleet.node("c").identity,
                          certificate=fleet.node("c").certificate, trust=fleet.trust,
                          settings=settings)()
        for lst in listeners:
            await lst.aclose()


async def test_idle_timeout_closes_a_silent_channel() -> None:
    fleet = Fleet()

    async def silent(channel: SecureChannel) -> None:
        await trio.sleep_forever()

    idle = TransportSettings(handshake_timeout=5.0, idle_timeout=0.2)
    with trio.fail_after(10):
        async with serving(fleet.node("server"), fleet.trust, silent) as listener:
            ch = await dial("127.0.0.1", listener.port, identity=fleet.node("c").identity,
                            certificate=fleet.node("c").certificate, trust=fleet.trust,
                            settings=idle)
            with pytest.raises(IdleTimeout, match="nothing received"):
                await ch.receive()
            assert ch.closed
            with pytest.raises(ChannelClosed):
                await ch.send(Note("late"))


async def test_dial_to_a_closed_port_fails_cleanly() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for lst in listeners:
        await lst.aclose()
    fleet = Fleet()
    with pytest.raises(ChannelClosed, match="cannot connect"):
        await dialler(fleet.node("c"), fleet.trust, port)()


def test_backoff_grows_to_the_cap_with_jitter_and_replays() -> None:
    rng = random.Random(42)
    delays = [backoff_delay(k, rng, base=0.5, cap=8.0) for k in range(10)]
    for k, d in enumerate(delays):
        nominal = min(8.0, 0.5 * 2**k)
        assert nominal / 2 <= d <= nominal
    assert delays[-1] >= 4.0
    rng2 = random.Random(42)
    assert delays == [backoff_delay(k, rng2, base=0.5, cap=8.0) for k in range(10)]
    assert len(set(delays[5:])) > 1  # jitter: capped delays still differ
    assert backoff_delay(10_000, rng, base=0.5, cap=8.0) <= 8.0


async def test_redialer_retries_until_the_peer_appears_then_reconnects() -> None:
    fleet = Fleet()
    server, client = fleet.node("server"), fleet.node("client")
    # reserve a port, then free it so the first dials fail
    probe = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = probe[0].socket.getsockname()[1]
    for lst in probe:
        await lst.aclose()
    sessions: list[str] = []

    async def on_channel(channel: SecureChannel) -> None:
        sessions.append(channel.peer_id)
        await channel.send(Note("ping"))
        assert await channel.receive() == Note("echo:ping")
        # return: the session ends and the redialer must come back

    redialer = Redialer(dialler(client, fleet.trust, port), on_channel,
                        rng=random.Random(7), base_delay=0.02, max_delay=0.1)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(redialer.run)
            while redialer.statistics().failures < 3:
                await trio.sleep(0.01)
            st = redialer.statistics()
            assert st.connections == 0 and "cannot connect" in st.last_error
            assert st.consecutive_failures >= 3
            listener = PeerListener(identity=server.identity, certificate=server.certificate,
                                    trust=fleet.trust, handler=echo, port=port, settings=FAST)
            await n.start(listener.serve)
            while len(sessions) < 2:
                await trio.sleep(0.01)
            assert sessions == [server.node_id, server.node_id]
            assert redialer.statistics().consecutive_failures == 0
            n.cancel_scope.cancel()
