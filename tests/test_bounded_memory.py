"""Issue 20 in process: decode limits from the schema, the handshake's frame limit, and
the control socket's request limit. (The live attack is tests/test_reliability_memory.py.)"""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, cast

import msgpack
import nacl.utils
import pytest
import trio

from agent._daemon.control_messages import ErrorResponse
from agent._daemon.control_server import MAX_CONTROL_REQUEST, ControlServer
from protocol._codec import FrameDecoder, decode, decode_limits, encode, frame
from protocol._errors import FrameTooLarge, MalformedMessage
from protocol._gossip import GossipDelta, GossipDigest
from protocol._handshake import (
    HANDSHAKE_MAX_FRAME,
    Auth,
    ConnectionRole,
    Hello,
    SecureConnection,
)
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity
from protocol._swarm_messages import Piece

if TYPE_CHECKING:
    from agent._daemon.runtime import NodeRuntime

MiB = 1024 * 1024


def _body(type_id: int, fields: bytes) -> bytes:
    return b"\x93\x01" + (bytes([type_id]) if type_id < 128 else b"\xcc" + bytes([type_id])) \
        + fields


def _array32(n: int, item: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + item * n


def _peak(fn: object) -> tuple[int, float]:
    """Peak traced allocation (bytes) and CPU seconds of ``fn()``; it must raise
    MalformedMessage."""
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(MalformedMessage):
            fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1], time.process_time() - t0
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------- decoding


def test_handshake_types_allow_only_their_own_shape() -> None:
    lim = decode_limits(Hello, HANDSHAKE_MAX_FRAME)
    # the widest array is the certificate's fields (7, with expires_at)
    assert lim.max_array_len == 7 and lim.max_map_len == 0 and lim.max_containers == 4
    assert decode_limits(Auth, HANDSHAKE_MAX_FRAME).max_str_len == 0


@pytest.mark.parametrize("type_id", [1, 2, 46])
def test_an_array_of_empty_arrays_is_refused_at_its_header(type_id: int) -> None:
    """The issue's bomb (8 MiB of empty arrays) where the schema has no sequence."""
    data = _body(type_id, _array32(8 * MiB - 16, b"\x90"))
    peak, cpu = _peak(lambda: decode(data, 16 * MiB))
    assert peak < 1 * MiB and cpu < 0.1, (peak, cpu)


def test_an_array_of_empty_arrays_in_a_sequence_type_is_cheap() -> None:
    """Where the schema has sequences, empty arrays decode to the shared ``()``: about
    16 bytes a slot (measured), not a list each (the old decoder: 1.8 s, ~600 MiB)."""
    n = 8 * MiB - 32
    data = _body(22, b"\x92" + _array32(n, b"\x90") + b"\x80")   # entries, ranges
    peak, cpu = _peak(lambda: decode(data, 16 * MiB))
    assert peak < 17 * n + 16 * MiB and cpu < 1.0, (peak / MiB, cpu)


@pytest.mark.parametrize("item", [b"\x90", b"\xe0", b"\x80"])
def test_a_long_top_level_fields_array_is_refused_at_its_header(item: bytes) -> None:
    """The fields array must announce the class's field count before anything is built
    (an 8 MiB one of -32s cost ~390 MiB and 0.44 s before this check)."""
    data = _body(22, _array32(8 * MiB - 16, item))
    peak, cpu = _peak(lambda: decode(data, 16 * MiB))
    assert peak < 1 * MiB and cpu < 0.1, (peak, cpu)


def test_an_array_of_empty_maps_is_cheap_or_refused() -> None:
    n = 4 * MiB
    for type_id, fields in ((22, b"\x92%s\x80"), (46, b"\x93%s\xc0\x01")):
        data = _body(type_id, fields % _array32(n, b"\x80"))   # Piece has no map
        peak, _ = _peak(lambda d=data: decode(d, 16 * MiB))   # type: ignore[misc]
        assert peak < 17 * n + 16 * MiB, peak / MiB


def test_nested_arrays_beyond_a_fixed_schema_stop_at_once() -> None:
    data = _body(46, b"\x93" + b"\x91" * 200_000 + b"\xc0" + b"\xc0\xc0")
    peak, cpu = _peak(lambda: decode(data, 16 * MiB))
    assert peak < 1 * MiB and cpu < 0.1


def test_maps_where_the_schema_has_none_and_duplicate_keys_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="map"):
        decode(_body(46, b"\x93\x80\xc0\xc0"))
    dup = msgpack.packb([1, 21, [{b"a": 1}, True, 0, []]])
    dup = dup.replace(b"\x81\xc4\x01a\x01", b"\x82\xc4\x01a\x01\xc4\x01a\x02")
    with pytest.raises(MalformedMessage, match="duplicate"):
        decode(dup)


def test_strings_where_the_schema_has_none_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="max_str_len"):
        decode(_body(2, b"\x91\xa5hello"))          # Auth(signature: bytes)


def test_unknown_type_and_bad_envelope_are_refused_before_decoding() -> None:
    with pytest.raises(MalformedMessage, match="unknown message type"):
        decode(_body(99, _array32(1 << 20, b"\x90")))
    with pytest.raises(MalformedMessage, match="version, type, fields"):
        decode(b"\xdd" + struct.pack(">I", 1 << 20) + b"\x90" * (1 << 20))


def test_real_messages_still_round_trip() -> None:
    digest = GossipDigest({b"n" * 32: 5, b"m" * 32: 0}, True, 2, (1, 2, 3))
    assert decode(encode(digest)) == digest
    delta = GossipDelta((), {})
    assert decode(encode(delta)) == delta
    piece = Piece(b"h" * 32, b"x" * 4096, 1)
    assert decode(encode(piece)) == piece


# ---------------------------------------------------------------------------- handshake


def _responder() -> SecureConnection:
    root = SigningIdentity.generate()
    ident = SigningIdentity.generate()
    cert = Certificate.issue(root, "f", ident.public_key, Role.NODE, "r", 1)
    return SecureConnection(role=ConnectionRole.RESPONDER, identity=ident, certificate=cert,
                            trust=FleetTrust("f", root.public_key),
                            ephemeral_secret=nacl.utils.random(32),
                            nonce=nacl.utils.random(32), max_frame=8 * MiB)


def test_before_authentication_frames_are_handshake_sized() -> None:
    conn = _responder()
    assert conn.frame_limit == HANDSHAKE_MAX_FRAME
    with pytest.raises(FrameTooLarge):
        conn.receive_data(struct.pack(">I", HANDSHAKE_MAX_FRAME + 1))
    conn = _responder()
    # a partial frame just under the limit is held, and no more than it
    assert conn.receive_data(struct.pack(">I", HANDSHAKE_MAX_FRAME) + b"\x00" * 4000) == []
    assert conn.buffered == 4004
    with pytest.raises(FrameTooLarge):                 # the session limit does not apply
        _responder().receive_data(struct.pack(">I", 8 * MiB - 1))


# ---------------------------------------------------------------------------- control socket

_NO_RUNTIME = cast("NodeRuntime", None)


async def test_control_requests_over_their_limit_get_a_typed_error(tmp_path: Path) -> None:
    server = ControlServer(_NO_RUNTIME, str(tmp_path / "run" / "c.sock"), idle_timeout=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        stream = await trio.open_unix_socket(str(server.path))
        await stream.send_all(struct.pack(">I", MAX_CONTROL_REQUEST + 1))
        got = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                got += chunk
        answers = [decode(b, 16 * MiB) for b in FrameDecoder(16 * MiB).feed(got)]
        assert len(answers) == 1 and isinstance(answers[0], ErrorResponse)
        assert answers[0].kind == "FrameTooLarge"
        await stream.aclose()
        nursery.cancel_scope.cancel()


def test_frames_helper_is_unchanged() -> None:
    assert list(FrameDecoder().feed(frame(b"ok"))) == [b"ok"]


# ---------------------------------------------------------------------------- config

_MINIMAL = ('data_dir = "/var/lib/shoal"\nfleet_id = "acme"\n'
            f'fleet_root_key = "{"ab" * 32}"\n')


def test_transport_limits_are_configurable_and_checked() -> None:
    from agent._config import parse_config
    from agent._daemon.transport import HANDSHAKE_RESERVE, TransportSettings
    from agent._errors import ConfigError

    assert TransportSettings().handshake_pool == 64
    assert TransportSettings().handshake_timeout == 5.0
    cfg = parse_config(_MINIMAL + "[transport]\nfirst_byte_timeout = 1.5\nmax_handshakes = 32\n"
                       "max_handshakes_per_address = 4\nhandshake_memory = 163920\n")
    t = cfg.transport
    assert (t.first_byte_timeout, t.max_handshakes, t.max_handshakes_per_address) == \
        (1.5, 32, 4)
    assert t.handshake_pool == 163920 // HANDSHAKE_RESERVE == 10   # the budget binds
    with pytest.raises(ConfigError, match="handshake_memory"):
        parse_config(_MINIMAL + "[transport]\nhandshake_memory = 1000\n")
    with pytest.raises(ConfigError, match="max_handshakes"):
        parse_config(_MINIMAL + "[transport]\nmax_handshakes = 0\n")
