"""The sans-IO secure-session handshake and record layer (protocol/_handshake.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol._codec import encode, frame
from protocol._errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    UntrustedKey,
)
from protocol._handshake import (
    Auth,
    ConnectionRole,
    ConnectionState,
    HandshakeReject,
    HandshakeRejected,
    Hello,
    RecordError,
    RejectCode,
    SecureConnection,
)
from protocol._identity import Certificate, Role, SigningIdentity

from ._net_fixtures import Fleet, Member, Note, connection

INIT, RESP = ConnectionRole.INITIATOR, ConnectionRole.RESPONDER


def pump(a: SecureConnection, b: SecureConnection) -> tuple[list[object], list[object]]:
    """Move bytes both ways until quiet; return what each side received."""
    got_a: list[object] = []
    got_b: list[object] = []
    for _ in range(10):
        ab = a.data_to_send()
        ba = b.data_to_send()
        if not ab and not ba:
            break
        if ab:
            got_b += b.receive_data(ab)
        if ba:
            got_a += a.receive_data(ba)
    return got_a, got_b


def pair(fleet: Fleet, a: Member, b: Member, seed: int = 1,
         **kw: object) -> tuple[SecureConnection, SecureConnection]:
    rng = random.Random(seed)
    return (connection(a, fleet.trust, INIT, rng, **kw), connection(b, fleet.trust, RESP, rng))


def test_two_admitted_nodes_establish_and_talk_both_ways() -> None:
    fleet = Fleet()
    alice, bob = fleet.node("alice"), fleet.node("bob")
    ci, cr = pair(fleet, alice, bob)
    assert (ci.state, ci.peer_id) == (ConnectionState.HANDSHAKE, None)
    pump(ci, cr)
    assert ci.established and cr.established
    assert ci.peer_id == bob.node_id and cr.peer_id == alice.node_id
    assert cr.peer_certificate == alice.certificate
    ci.send(Note("hi bob", b"\x00" * 100))
    cr.send(Note("hi alice"))
    cr.send(Note("twice"))
    got_i, got_r = pump(ci, cr)
    assert got_r == [Note("hi bob", b"\x00" * 100)]
    assert got_i == [Note("hi alice"), Note("twice")]
    st_i = ci.statistics()
    assert st_i.records_sent == 1 and st_i.records_received == 2


def test_records_are_encrypted_on_the_wire() -> None:
    fleet = Fleet()
    ci, cr = pair(fleet, fleet.node("a"), fleet.node("b"))
    pump(ci, cr)
    secret = b"the launch code is 0000"
    ci.send(Note("x", secret))
    wire = ci.data_to_send()
    assert secret not in wire and encode(Note("x", secret)) not in wire
    assert cr.receive_data(wire) == [Note("x", secret)]


def test_byte_at_a_time_delivery() -> None:
    fleet = Fleet()
    ci, cr = pair(fleet, fleet.node("a"), fleet.node("b"))
    got: list[object] = []
    for _ in range(5):
        for src, dst in ((ci, cr), (cr, ci)):
            data = src.data_to_send()
            for k in range(len(data)):
                got += dst.receive_data(data[k:k + 1])
    assert ci.established and cr.established
    ci.send(Note("slow"))
    data = ci.data_to_send()
    for k in range(len(data)):
        got += cr.receive_data(data[k:k + 1])
    assert got == [Note("slow")]


def test_session_keys_differ_per_session_and_direction() -> None:
    fleet = Fleet()
    a, b = fleet.node("a"), fleet.node("b")
    c1 = pair(fleet, a, b, seed=1)
    c2 = pair(fleet, a, b, seed=2)
    pump(*c1)
    pump(*c2)
    c1[0].send(Note("same"))
    c2[0].send(Note("same"))
    w1, w2 = c1[0].data_to_send(), c2[0].data_to_send()
    assert w1 != w2
    # a record from session 1 does not authenticate in session 2
    with pytest.raises(RecordError):
        c2[1].receive_data(w1)
    assert c2[1].state is ConnectionState.CLOSED
    # session 1 is unaffected
    assert c1[1].receive_data(w1) == [Note("same")]


def _refused(ci: SecureConnection, cr: SecureConnection, refuser: SecureConnection,
             code: RejectCode) -> tuple[Exception, HandshakeRejected]:
    """Run a handshake that must fail; return (refuser's error, refused side's error)."""
    refused = ci if refuser is cr else cr
    errors: dict[int, Exception] = {}
    for _ in range(4):
        for src, dst in ((ci, cr), (cr, ci)):
            data = src.data_to_send()
            if data and dst.state is not ConnectionState.CLOSED:
                try:
                    dst.receive_data(data)
                except Exception as exc:
                    errors[id(dst)] = exc
    assert refuser.state is ConnectionState.CLOSED
    assert refused.state is ConnectionState.CLOSED
    mine, theirs = errors[id(refuser)], errors[id(refused)]
    assert isinstance(theirs, HandshakeRejected)
    assert theirs.code is code
    assert refuser.failure is not None and refuser.failure[0] is code
    assert refused.failure == (code, theirs.detail)
    return mine, theirs


def test_node_not_admitted_by_root_is_refused_with_reason_on_both_sides() -> None:
    fleet = Fleet()
    rogue_root = Fleet(tag="rogue")  # same fleet name, different root key
    good, rogue = fleet.node("good"), rogue_root.node("mallory")
    ci = connection(rogue, rogue_root.trust, INIT, random.Random(1))
    cr = connection(good, fleet.trust, RESP, random.Random(2))
    mine, theirs = _refused(ci, cr, cr, RejectCode.UNTRUSTED_KEY)
    assert isinstance(mine, UntrustedKey)
    assert "not admitted" in str(mine) and rogue.node_id in str(mine)
    assert "not admitted" in theirs.detail
    assert cr.data_to_send() == b""  # nothing further after the reject


def test_initiator_refuses_an_unadmitted_responder() -> None:
    fleet = Fleet()
    rogue_root = Fleet(tag="rogue")
    ci = connection(fleet.node("good"), fleet.trust, INIT, random.Random(1))
    cr = connection(rogue_root.node("mallory"), rogue_root.trust, RESP, random.Random(2))
    # the responder also refuses (it does not admit "good"): it answers first
    _refused(ci, cr, cr, RejectCode.UNTRUSTED_KEY)
    # a rogue responder that trusts the good root admits the dialler, but is refused by it
    ci = connection(fleet.node("good"), fleet.trust, INIT, random.Random(3))
    cr = connection(rogue_root.node("mallory"), fleet.trust, RESP, random.Random(4))
    mine, theirs = _refused(ci, cr, ci, RejectCode.UNTRUSTED_KEY)
    assert "not admitted" in str(mine) and "not admitted" in theirs.detail


def test_revoked_node_is_refused() -> None:
    fleet = Fleet()
    good, revoked = fleet.node("good"), fleet.node("stolen", issued_at=1000)
    fleet.revoke(revoked, issued_at=1500)
    ci = connection(revoked, fleet.trust, INIT, random.Random(1))
    cr = connection(good, fleet.trust, RESP, random.Random(2))
    mine, theirs = _refused(ci, cr, cr, RejectCode.UNTRUSTED_KEY)
    assert "revoked" in str(mine) and "revoked" in theirs.detail
    # re-admitted by a certificate newer than the revocation
    fleet2 = fleet
    renewed = fleet2.node("stolen", issued_at=3000)
    ci = connection(renewed, fleet.trust, INIT, random.Random(3))
    cr = connection(good, fleet.trust, RESP, random.Random(4))
    pump(ci, cr)
    assert ci.established and cr.established


def test_wrong_fleet_is_refused() -> None:
    ours, theirs_fleet = Fleet("fleet-a"), Fleet("fleet-b")
    ci = connection(theirs_fleet.node("x"), theirs_fleet.trust, INIT, random.Random(1))
    cr = connection(ours.node("y"), ours.trust, RESP, random.Random(2))
    mine, theirs = _refused(ci, cr, cr, RejectCode.WRONG_FLEET)
    assert "fleet-b" in str(mine) and "fleet-a" in theirs.detail


def test_publisher_certificate_is_not_a_node_certificate() -> None:
    fleet = Fleet()
    pub = fleet.node("publisher", role=Role.PUBLISHER)
    ci = connection(pub, fleet.trust, INIT, random.Random(1))
    cr = connection(fleet.node("n"), fleet.trust, RESP, random.Random(2))
    mine, _ = _refused(ci, cr, cr, RejectCode.UNTRUSTED_KEY)
    assert "node certificate is required" in str(mine)


def test_unexpected_peer_is_refused_by_the_dialler() -> None:
    fleet = Fleet()
    a, b, c = fleet.node("a"), fleet.node("b"), fleet.node("c")
    ci = connection(a, fleet.trust, INIT, random.Random(1), expected_peer=c.node_id)
    cr = connection(b, fleet.trust, RESP, random.Random(2))
    mine, _ = _refused(ci, cr, ci, RejectCode.UNEXPECTED_PEER)
    assert c.node_id in str(mine) and b.node_id in str(mine)


def test_stolen_certificate_without_the_key_fails_the_signature() -> None:
    fleet = Fleet()
    victim, good = fleet.node("victim"), fleet.node("good")
    thief = Member(SigningIdentity(bytes(range(32))), victim.certificate)
    # the thief's connection object refuses to pretend locally...
    with pytest.raises(LocalProtocolError):
        connection(thief, fleet.trust, INIT, random.Random(1))
    # ...so forge on the wire: send the victim's Hello, then an Auth by another key
    rng = random.Random(5)
    cr = connection(good, fleet.trust, RESP, rng)
    hello = Hello(fleet.fleet_id, 1, rng.randbytes(32), victim.certificate, rng.randbytes(32))
    cr.receive_data(frame(encode(hello)))
    assert cr.data_to_send()  # its Hello + Auth
    with pytest.raises(Exception, match="bad handshake signature"):
        cr.receive_data(frame(encode(Auth(thief.identity.sign(b"x" * 40)))))
    out = cr.data_to_send()
    assert cr.failure is not None
    # the dialler already counts the session as open: the refusal goes sealed (record 0)
    assert out and encode(HandshakeReject(RejectCode.BAD_SIGNATURE, cr.failure[1])) not in out


def test_garbage_before_the_handshake_is_refused() -> None:
    fleet = Fleet()
    cr = connection(fleet.node("n"), fleet.trust, RESP, random.Random(1))
    with pytest.raises(MalformedMessage):
        cr.receive_data(frame(b"\xc1 this is not msgpack"))
    assert cr.state is ConnectionState.CLOSED
    assert cr.failure is not None and cr.failure[0] is RejectCode.MALFORMED
    # an HTTP request reads as an absurd length prefix: refused before buffering
    cr = connection(fleet.node("n"), fleet.trust, RESP, random.Random(2))
    with pytest.raises(FrameTooLarge):
        cr.receive_data(b"GET / HTTP/1.1\r\n")
    # a record before any handshake is out of order
    cr = connection(fleet.node("n"), fleet.trust, RESP, random.Random(3))
    with pytest.raises(MalformedMessage, match="expected Hello"):
        cr.receive_data(frame(encode(Note("too early"))))


def test_oversize_length_prefix_is_refused_without_the_body() -> None:
    fleet = Fleet()
    ci, cr = pair(fleet, fleet.node("a"), fleet.node("b"), max_frame=4096)
    pump(ci, cr)
    with pytest.raises(FrameTooLarge) as info:
        ci.receive_data((5000).to_bytes(4, "big"))
    assert info.value.length == 5000 and info.value.limit == 4096
    assert ci.state is ConnectionState.CLOSED


def test_local_oversize_message_is_refused() -> None:
    fleet = Fleet()
    ci, cr = pair(fleet, fleet.node("a"), fleet.node("b"), max_frame=4096)
    pump(ci, cr)
    with pytest.raises(LocalProtocolError, match="frame limit"):
        ci.send(Note("big", b"x" * 5000))
    assert ci.established  # a local refusal does not kill the session


def test_replayed_and_reordered_records_kill_the_session() -> None:
    fleet = Fleet()
    ci, cr = pair(fleet, fleet.node("a"), fleet.node("b"))
    pump(ci, cr)
    ci.send(Note("one"))
    r1 = ci.data_to_send()
    ci.send(Note("two"))
    r2 = ci.data_to_send()
    assert cr.receive_data(r1) == [Note("one")]
    with pytest.raises(RecordError, match="tampered, replayed or reordered"):
        cr.receive_data(r1)  # replay
    assert cr.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        cr.receive_data(r2)
    # reordering
    ci, cr = pair(fleet, fleet.node("a"), fleet.node("b"), seed=9)
    pump(ci, cr)
    ci.send(Note("one"))
    r1 = ci.data_to_send()
    ci.send(Note("two"))
    r2 = ci.data_to_send()
    with pytest.raises(RecordError):
        cr.receive_data(r2 + r1)


def test_cannot_send_before_established() -> None:
    fleet = Fleet()
    ci, _ = pair(fleet, fleet.node("a"), fleet.node("b"))
    with pytest.raises(LocalProtocolError, match="handshake"):
        ci.send(Note("early"))


def test_certificate_must_match_identity() -> None:
    fleet = Fleet()
    a, b = fleet.node("a"), fleet.node("b")
    with pytest.raises(LocalProtocolError, match="own identity"):
        SecureConnection(role=INIT, identity=a.identity, certificate=b.certificate,
                         trust=fleet.trust, ephemeral_secret=bytes(32), nonce=bytes(32))


def test_low_order_ephemeral_key_is_refused() -> None:
    fleet = Fleet()
    good = fleet.node("good")
    cr = connection(good, fleet.trust, RESP, random.Random(1))
    hello = Hello(fleet.fleet_id, 1, bytes(32), fleet.node("x").certificate, bytes(32))
    with pytest.raises(MalformedMessage, match="low-order"):
        cr.receive_data(frame(encode(hello)))


_FLEET = Fleet()
_A, _B = _FLEET.node("a"), _FLEET.node("b")


@given(seed=st.integers(0, 2**32 - 1),
       payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_property_any_split_of_the_stream_delivers_everything_in_order(
        seed: int, payloads: list[bytes], cuts: list[int]) -> None:
    ci, cr = pair(_FLEET, _A, _B, seed=seed)
    pump(ci, cr)
    for p in payloads:
        ci.send(Note("p", p))
    wire = ci.data_to_send()
    got: list[object] = []
    pos, k = 0, 0
    while pos < len(wire):
        step = cuts[k % len(cuts)]
        got += cr.receive_data(wire[pos:pos + step])
        pos += step
        k += 1
    assert got == [Note("p", p) for p in payloads]


@given(seed=st.integers(0, 2**32 - 1), payload=st.binary(max_size=200),
       bit=st.integers(0, 10_000))
def test_property_any_bit_flip_in_a_record_is_detected(seed: int, payload: bytes,
                                                       bit: int) -> None:
    ci, cr = pair(_FLEET, _A, _B, seed=seed)
    pump(ci, cr)
    ci.send(Note("p", payload))
    wire = bytearray(ci.data_to_send())
    body_bits = (len(wire) - 4) * 8
    pos = 32 + bit % body_bits  # past the length prefix: the ciphertext and tag
    wire[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(RecordError):
        cr.receive_data(bytes(wire))
    assert cr.state is ConnectionState.CLOSED


def test_certificate_fixture_is_root_signed() -> None:
    fleet = Fleet()
    cert = fleet.node("z").certificate
    assert isinstance(cert, Certificate)
    cert.verify(fleet.root.public_key, fleet.fleet_id)


def test_auth_and_first_records_in_one_read_are_all_delivered() -> None:
    """The initiator's last handshake frame and its first records arrive in one buffer."""
    ci, cr = pair(_FLEET, _A, _B, seed=7)
    cr.receive_data(ci.data_to_send())          # Hello(I)
    ci.receive_data(cr.data_to_send())          # Hello(R) + Auth(R): I is established
    assert (ci.established, cr.established) == (True, False)
    ci.send(Note("first", b"1"))
    ci.send(Note("second", b"2" * 70_000))
    got = cr.receive_data(ci.data_to_send())    # Auth(I) + two records, one buffer
    assert cr.established
    assert got == [Note("first", b"1"), Note("second", b"2" * 70_000)]


def test_a_record_is_one_length_prefixed_write() -> None:
    ci, cr = pair(_FLEET, _A, _B, seed=8)
    pump(ci, cr)
    ci.send(Note("n", b"x" * 1000))
    wire = ci.data_to_send()
    assert int.from_bytes(wire[:4], "big") == len(wire) - 4
    assert ci.data_to_send() == b""
    assert cr.receive_data(wire) == [Note("n", b"x" * 1000)]


def test_large_record_fed_in_small_reads_then_the_next_in_the_same_read() -> None:
    ci, cr = pair(_FLEET, _A, _B, seed=9)
    pump(ci, cr)
    big = random.Random(3).randbytes(1 << 20)
    ci.send(Note("big", big))
    ci.send(Note("after", b"a"))
    wire = bytes(ci.data_to_send())
    got: list[object] = []
    step = 64 * 1024 + 3
    for pos in range(0, len(wire), step):
        got += cr.receive_data(memoryview(wire)[pos:pos + step])
    assert got == [Note("big", big), Note("after", b"a")]
    assert cr.statistics().records_received == 2
