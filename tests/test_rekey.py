"""Session keys are replaced after a bounded number of records or bytes (protocol/_handshake.py)."""

from __future__ import annotations

import random

import pytest
import trio

from agent._daemon.transport import PeerListener, SecureChannel, TransportSettings, dial
from protocol._codec import decode
from protocol._errors import LocalProtocolError, RemoteProtocolError
from protocol._handshake import (
    DEFAULT_REKEY_BYTES,
    DEFAULT_REKEY_RECORDS,
    ConnectionRole,
    ConnectionState,
    KeyUpdate,
    RecordError,
    SecureConnection,
)

from ._net_fixtures import Fleet, Note, connection
from .test_handshake import pump

INIT, RESP = ConnectionRole.INITIATOR, ConnectionRole.RESPONDER


def established(**kw: object) -> tuple[SecureConnection, SecureConnection]:
    fleet = Fleet()
    rng = random.Random(7)
    ci = connection(fleet.node("a"), fleet.trust, INIT, rng, **kw)
    cr = connection(fleet.node("b"), fleet.trust, RESP, rng, **kw)
    pump(ci, cr)
    assert ci.established and cr.established
    return ci, cr


def test_the_defaults_stay_within_aes_gcm_limits() -> None:
    # (blocks + records)^2 / 2^129 below TLS 1.3's 2^-60 per key
    blocks = DEFAULT_REKEY_BYTES // 16 + 2 * DEFAULT_REKEY_RECORDS
    assert (blocks + DEFAULT_REKEY_RECORDS) ** 2 < 2 ** (129 - 60)
    ci, _ = established()
    assert (ci.rekey_records, ci.rekey_bytes) == (DEFAULT_REKEY_RECORDS, DEFAULT_REKEY_BYTES)


def test_many_records_both_ways_cross_many_key_updates() -> None:
    ci, cr = established(rekey_records=3, rekey_bytes=1000)
    rng = random.Random(1)
    sent_i: list[object] = []
    sent_r: list[object] = []
    got_i: list[object] = []
    got_r: list[object] = []
    for n in range(300):
        for _ in range(rng.randrange(1, 4)):
            msg = Note(f"i{n}", rng.randbytes(rng.randrange(0, 700)))
            ci.send(msg)
            sent_i.append(msg)
        msg = Note(f"r{n}", rng.randbytes(rng.randrange(0, 2000)))
        cr.send(msg)
        sent_r.append(msg)
        a, b = pump(ci, cr)
        got_i += a
        got_r += b
    assert got_r == sent_i and got_i == sent_r   # every record decrypted, none extra
    si, sr = ci.statistics(), cr.statistics()
    assert si.records_sent == len(sent_i) == sr.records_received   # updates not counted
    assert si.send_epoch == sr.recv_epoch >= (len(sent_i) - 1) // 2
    assert sr.send_epoch == si.recv_epoch >= 149
    assert ci.established and cr.established


def test_the_key_changes_with_the_epoch_and_the_old_one_is_dropped() -> None:
    ci, cr = established(rekey_records=2)
    key0 = ci._send_key
    ci.send(Note("one"))
    ci.send(Note("two"))                    # the first key is full: update, then seal
    assert ci.statistics().send_epoch == 1
    key1 = ci._send_key
    assert key1 != key0 and len(key1) == 32
    wire = bytes(ci.data_to_send())
    assert cr.receive_data(wire) == [Note("one"), Note("two")]
    assert cr.statistics().recv_epoch == 1 and cr._recv_key == key1
    assert ci._send_ctr == 1                  # counters restart under each key
    assert cr.statistics().send_epoch == 0    # the other direction rekeys on its own


def test_byte_threshold_triggers_an_update() -> None:
    ci, cr = established(rekey_bytes=4096)
    for _ in range(10):
        ci.send(Note("x", bytes(3000)))
    got = cr.receive_data(ci.data_to_send())
    assert len(got) == 10
    assert ci.statistics().send_epoch == 9 == cr.statistics().recv_epoch


def test_a_record_replayed_from_an_earlier_epoch_closes_the_session() -> None:
    ci, cr = established(rekey_records=2)
    ci.send(Note("zero"))
    old = bytes(ci.data_to_send())           # record 0 of epoch 0
    assert cr.receive_data(old) == [Note("zero")]
    ci.send(Note("one"))                     # update, then record 0 of epoch 1
    assert cr.receive_data(ci.data_to_send()) == [Note("one")]
    assert cr.statistics().recv_epoch == 1
    with pytest.raises(RemoteProtocolError) as exc:
        cr.receive_data(old)                 # same counter, earlier key
    assert isinstance(exc.value, RecordError)
    assert cr.state is ConnectionState.CLOSED


def test_a_replayed_key_update_is_refused() -> None:
    ci, cr = established(rekey_records=2)
    ci.send(Note("zero"))
    ci.send(Note("one"))
    wire = bytes(ci.data_to_send())
    cr.receive_data(wire)
    with pytest.raises(RecordError):
        cr.receive_data(wire)                # the whole epoch-0 stream again
    assert cr.state is ConnectionState.CLOSED


def test_key_updates_are_not_the_applications() -> None:
    ci, _ = established()
    with pytest.raises(LocalProtocolError):
        ci.send(KeyUpdate(1))
    with pytest.raises(LocalProtocolError):
        established(rekey_records=1)


def test_the_update_record_is_sealed_under_the_old_key() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    ci, _ = established(rekey_records=2)
    key0 = ci._send_key
    ci.send(Note("a"))
    ci.data_to_send()
    ci.send(Note("b"))
    wire = bytes(ci.data_to_send())
    first = wire[4:4 + int.from_bytes(wire[:4], "big")]
    pt = AESGCM(key0).decrypt((1).to_bytes(12, "big"), first, None)
    assert decode(pt) == KeyUpdate(1)


async def test_a_real_session_rekeys_while_moving_megabytes() -> None:
    fleet = Fleet()
    server, client = fleet.node("server"), fleet.node("client")
    small = TransportSettings(handshake_timeout=5.0, idle_timeout=10.0,
                              rekey_records=5, rekey_bytes=256 * 1024)
    blob = random.Random(3).randbytes(100 * 1024)

    async def echo(channel: SecureChannel) -> None:
        async for msg in channel:
            assert isinstance(msg, Note)
            await channel.send(Note(f"echo:{msg.text}", msg.data))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = PeerListener(identity=server.identity, certificate=server.certificate,
                                    trust=fleet.trust, handler=echo, settings=small)
            await nursery.start(listener.serve)
            ch = await dial("127.0.0.1", listener.port, identity=client.identity,
                            certificate=client.certificate, trust=fleet.trust,
                            settings=small, expected_peer=server.node_id)
            async with ch:
                n = 40                               # 4 MiB each way

                async def send_all() -> None:
                    for i in range(n):
                        await ch.send(Note(str(i), blob))

                async with trio.open_nursery() as senders:
                    senders.start_soon(send_all)     # TCP buffers hold less than 4 MiB
                    for i in range(n):
                        assert await ch.receive() == Note(f"echo:{i}", blob)
                stats = ch.statistics().connection
            nursery.cancel_scope.cancel()
    assert stats.records_sent == n and stats.records_received == n
    assert stats.send_epoch >= 10 and stats.recv_epoch >= 10
    assert stats.state is not ConnectionState.CLOSED
