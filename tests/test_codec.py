"""The wire codec, tested generically over its registry.

Strategies are derived from the registered dataclasses' type hints, so every message
and struct any module registers — including ones written after this test — is
round-tripped and fuzzed without this file knowing it exists. Values are built
through the class, so ``__post_init__`` validation runs; draws the class rejects are
retried a few times, then discarded with ``assume``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import pkgutil
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import protocol
from protocol import _codec
from protocol._capabilities import Requirements
from protocol._codec import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    decode,
    decode_value,
    encode,
    encode_value,
    frame,
)
from protocol._entries import Entry
from protocol._errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root
from protocol._manifest_fetch import BodyCancel, BodyWant
from protocol._manifest_head import ManifestHead
from protocol._swarm_messages import Pieces, Requests

# Import every protocol module so that every registered type is in the registry.
for _mod in pkgutil.iter_modules(protocol.__path__):
    if _mod.name.startswith("_"):
        importlib.import_module(f"protocol.{_mod.name}")

MESSAGES = sorted(_codec.message_types().items())
STRUCTS = sorted((c for c in _codec._STRUCTS if c not in dict(MESSAGES).values()),
                 key=lambda c: c.__qualname__)

# Strings that pass the usual validators (ids, versions, paths, precisions, node ids),
# mixed with arbitrary text, so that validated classes can be built often enough.
PLAUSIBLE_STRINGS = [
    "", "a", "model-a", "resnet50.v2", "1.2.3", "0.1.0", "2.0.0-rc.1", "1.0.0+build.5",
    "weights/model.bin", "config.json", "bin/migrate", "fp32", "fp16", "int8", "x86_64",
    "aarch64", "CPUExecutionProvider", "CUDAExecutionProvider", "alpha", "fleet-1",
    "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210",
]
MAX_INT = 2**64 - 1
MIN_INT = -(2**63)
RETRIES = 5
_IDS = st.sampled_from(["a", "model-a", "resnet50.v2", "cpu-fp32", "gpu.fp16"])
_VERSIONS = st.sampled_from(["1.2.3", "0.1.0", "2.0.0-rc.1", "1.0.0+build.5", "10.0.1"])
# Field names that (by convention across modules) carry validated values. Only a bias:
# each also draws from the generic strategy, so invalid values are still exercised.
FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "model_id": _IDS, "variant_id": _IDS, "version": _VERSIONS,
    "base_version": _VERSIONS, "delta_from": _VERSIONS,
    "precision": st.sampled_from(["fp32", "fp16", "int8"]),
    "path": st.sampled_from(["model.bin", "weights/a.bin", "config.json", "bin/migrate"]),
    "migrator": st.sampled_from(["bin/migrate", "model.bin"]),
    "migrator_address": st.sampled_from(["unix:///run/model/m.sock", "127.0.0.1:50051"]),
    "health_check": st.sampled_from(["config.json", "bin/migrate", "grpc"]),
}
_BYTES_BY_SUFFIX = {"key": 32, "hash": 32, "root": 32, "signature": 64, "nonce": 32}


def _scalar(tp: Any) -> st.SearchStrategy[Any] | None:
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(st.integers(0, 2000), st.integers(MIN_INT, MAX_INT))
    if tp is float:
        return st.one_of(st.floats(0, 1e6), st.floats(allow_nan=False))
    if tp is str:
        return st.one_of(st.sampled_from(PLAUSIBLE_STRINGS), st.text(max_size=24))
    if tp is bytes:
        return st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=80),
                         st.binary(min_size=64, max_size=64))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    return None


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for any type the codec accepts on the wire."""
    simple = _scalar(tp)
    if simple is not None:
        return simple
    if isinstance(tp, type) and tp in _codec._SCHEMA:
        return st.deferred(lambda: instances(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return st.one_of(st.none(), strategy_for(inner))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=2).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    raise TypeError(f"no strategy for wire type {tp!r}")


def _valid_file_entry() -> st.SearchStrategy[FileEntry]:
    # Cross-field invariant (size == sum of chunk sizes, a true Merkle root) that
    # independent field draws would almost never meet.
    @st.composite
    def build(draw: st.DrawFn) -> FileEntry:
        chunks = tuple(draw(st.lists(st.builds(ChunkRef, st.binary(min_size=32, max_size=32),
                                                st.integers(1, 4 << 20)), max_size=2)))
        path = draw(st.sampled_from(["model.bin", "weights/a.bin", "weights/b.bin",
                                     "config.json", "bin/migrate", "tokenizer/vocab.txt"]))
        return FileEntry(path, sum(c.size for c in chunks), chunks,
                         merkle_root([c.hash for c in chunks]), draw(st.booleans()))
    return build()


def _valid_manifest() -> st.SearchStrategy[Manifest]:
    # Generic derivation works but needs ~1 s per example (nested retries).
    @st.composite
    def build(draw: st.DrawFn) -> Manifest:
        variants = draw(st.lists(instances(Variant), min_size=1, max_size=2,
                                 unique_by=lambda v: v.variant_id))
        return Manifest(draw(_IDS), draw(_VERSIONS), tuple(variants),
                        draw(st.binary(min_size=32, max_size=32)), draw(st.integers(0, 2**50)),
                        draw(st.none() | _VERSIONS), draw(st.binary(min_size=64, max_size=64)))
    return build()


def _valid_variant() -> st.SearchStrategy[Variant]:
    # Generic derivation retries until the migrator and the health check name files of
    # the variant (~1 s an example, in every manifest-bearing type); this draws them so.
    @st.composite
    def build(draw: st.DrawFn) -> Variant:
        files = draw(st.lists(_valid_file_entry(), max_size=3, unique_by=lambda f: f.path))
        paths = [f.path for f in files]
        migrator = draw(st.none() | st.sampled_from(paths)) if paths else None
        address = None if migrator is not None else draw(
            st.none() | FIELD_HINTS["migrator_address"])
        checks = [p for p in (*paths, "grpc" if address else None) if p is not None]
        health = draw(st.none() | st.sampled_from(checks)) if checks else None
        return Variant(variant_id=draw(_IDS), requirements=draw(instances(Requirements)),
                       files=tuple(files), migrator=migrator, migrator_address=address,
                       health_check=health)
    return build()


def _valid_entry() -> st.SearchStrategy[Entry]:
    # Exactly one of the five payloads: independent draws of each optional field
    # would almost never give that.
    payloads = ("record", "intent", "manifest", "certificate", "revocation")
    hints = typing.get_type_hints(Entry)

    @st.composite
    def build(draw: st.DrawFn) -> Entry:
        kind = draw(st.sampled_from(payloads))
        inner = next(a for a in typing.get_args(hints[kind]) if a is not type(None))
        body = {name: None for name in payloads}
        body[kind] = draw(strategy_for(inner))
        return Entry(origin_key=draw(st.binary(min_size=32, max_size=32)),
                     counter=draw(st.integers(1, MAX_INT)),
                     signature=draw(st.binary(min_size=64, max_size=64)), **body)
    return build()


_HASHES = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=3).map(tuple)


@st.composite
def _valid_pieces(draw: st.DrawFn) -> Pieces:
    chunks = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3))
    hashes = [draw(st.binary(min_size=32, max_size=32)) for _ in chunks]
    return Pieces(draw(st.integers(0, 3)), tuple(hashes), tuple(len(c) for c in chunks),
                  b"".join(chunks))


# Classes whose invariants span fields. Everything else is derived from type hints.
_BODY_IDS = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=8).map(tuple)
OVERRIDES: dict[type[Any], st.SearchStrategy[Any]] = {
    FileEntry: _valid_file_entry(), Manifest: _valid_manifest(), Pieces: _valid_pieces(),
    Variant: _valid_variant(), Entry: _valid_entry(),
    ManifestHead: _valid_manifest().map(ManifestHead.unsigned),
    BodyWant: st.builds(BodyWant, _BODY_IDS),
    BodyCancel: st.builds(BodyCancel, _BODY_IDS),
    Requests: st.builds(Requests, _IDS, _HASHES, st.integers(0, 3))}


def _field_strategy(name: str, tp: Any) -> st.SearchStrategy[Any]:
    generic = strategy_for(tp)
    hint = FIELD_HINTS.get(name) if tp in (str, str | None) else None
    if hint is None and tp is bytes:
        size = next((n for suffix, n in _BYTES_BY_SUFFIX.items() if name.endswith(suffix)), None)
        if size is not None:
            hint = st.binary(min_size=size, max_size=size)
    if hint is None:
        return generic
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        hint = st.none() | hint
    return st.one_of(hint, hint, hint, generic)


_INSTANCES: dict[type[Any], st.SearchStrategy[Any]] = {}


def instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Valid instances of a registered dataclass, built through its constructor."""
    if cls in OVERRIDES:
        return OVERRIDES[cls]
    if cls not in _INSTANCES:
        _INSTANCES[cls] = _derive(cls)
    return _INSTANCES[cls]


def _derive(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    field_strategies = {f.name: _field_strategy(f.name, hints[f.name]) for f in fields}

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        for _ in range(RETRIES):
            kwargs = {name: draw(s) for name, s in field_strategies.items()}
            try:
                return cls(**kwargs)
            except (ValueError, TypeError, LocalProtocolError):
                continue  # the class refused this combination: draw another
        assume(False)
        raise AssertionError  # unreachable
    return build()


FUZZ = settings(max_examples=12, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def test_registry_is_populated() -> None:
    ids = [i for i, _ in MESSAGES]
    assert len(ids) == len(set(ids))
    assert any(cls is ChunkRef for cls in STRUCTS)


@pytest.mark.parametrize(("type_id", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
@FUZZ
@given(data=st.data())
def test_every_message_round_trips(type_id: int, cls: type[Any], data: st.DataObject) -> None:
    msg = data.draw(instances(cls))
    wire = encode(msg)
    back = decode(wire)
    assert type(back) is cls
    assert back == msg
    assert encode(back) == wire  # the encoding is canonical
    assert msgpack.unpackb(wire)[1] == type_id


@pytest.mark.parametrize("cls", STRUCTS, ids=[c.__qualname__ for c in STRUCTS])
@FUZZ
@given(data=st.data())
def test_every_struct_round_trips(cls: type[Any], data: st.DataObject) -> None:
    value = data.draw(instances(cls))
    wire = encode_value(value)
    back = decode_value(cls, wire)
    assert back == value
    assert encode_value(back) == wire


def _only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    _only_remote_errors(data)


_MSGPACK_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(MIN_INT, MAX_INT) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5) | st.binary(max_size=5) | st.integers(-5, 5),
                      inner, max_size=3),
    max_leaves=12,
)


@pytest.mark.parametrize(("type_id", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
@FUZZ
@given(data=st.data())
def test_wrong_field_values_raise_only_remote_errors(type_id: int, cls: type[Any],
                                                     data: st.DataObject) -> None:
    """Well-framed messages of a known type with arbitrary field values."""
    n = len(_codec._SCHEMA[cls][0])
    length = data.draw(st.sampled_from([n, n, n, 0, n + 1, max(n - 1, 0)]))
    fields = data.draw(st.lists(_MSGPACK_ANY, min_size=length, max_size=length))
    _only_remote_errors(msgpack.packb([_codec.PROTOCOL_VERSION, type_id, fields],
                                      use_bin_type=True))


@st.composite
def _mutated(draw: st.DrawFn, wire: bytes) -> bytes:
    buf = bytearray(wire)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not buf:
            buf.append(draw(st.integers(0, 255)))
            continue
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xCC,
                                           0xD0, 0xDC, 0xDE, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


@pytest.mark.parametrize(("type_id", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
@FUZZ
@given(data=st.data())
def test_mutated_encodings_raise_only_remote_errors(type_id: int, cls: type[Any],
                                                    data: st.DataObject) -> None:
    wire = encode(data.draw(instances(cls)))
    _only_remote_errors(data.draw(_mutated(wire)))


def test_decode_rejects_bad_envelopes() -> None:
    type_id, cls = MESSAGES[0]
    good = msgpack.unpackb(encode(_example(cls)))
    for bad in (
        [2, type_id, good[2]],                  # another protocol version
        [True, type_id, good[2]],               # bool is not an int
        [1, 65_000, good[2]],                   # unknown type
        [1, str(type_id), good[2]],             # type is not an int
        [1, type_id, {}],                       # fields not an array
        [1, type_id],                           # short envelope
        {"v": 1},                               # not an array
    ):
        with pytest.raises(RemoteProtocolError):
            decode(msgpack.packb(bad, use_bin_type=True))


def test_decode_rejects_deep_nesting() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"  # [[[[...nil...]]]]
    with pytest.raises(RemoteProtocolError):
        decode(b"\x93\x01" + bytes([MESSAGES[0][0]]) + deep)


def test_decode_refuses_oversize_input() -> None:
    with pytest.raises(FrameTooLarge):
        decode(b"\x00" * 101, max_size=100)


def _example(cls: type[Any]) -> Any:
    found: list[Any] = []

    @settings(max_examples=200, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(instances(cls))
    def grab(value: Any) -> None:
        found.append(value)
        raise _Found

    with pytest.raises(_Found):
        grab()
    return found[0]


class _Found(Exception):
    pass


# --------------------------------------------------------------------------- framing


def test_frame_decoder_refuses_oversize_prefix_without_buffering() -> None:
    dec = FrameDecoder(max_frame=1000)
    header = (1001).to_bytes(4, "big")
    with pytest.raises(FrameTooLarge) as info:
        list(dec.feed(header + b"x" * 500))  # the body has started arriving: not kept
    assert info.value.length == 1001 and info.value.limit == 1000
    assert dec.buffered == 0


def test_frame_decoder_refuses_a_4gib_prefix_byte_by_byte() -> None:
    dec = FrameDecoder()
    header = (2**32 - 1).to_bytes(4, "big")
    for b in header[:3]:
        assert list(dec.feed(bytes([b]))) == []
    assert dec.buffered == 3
    with pytest.raises(FrameTooLarge):
        list(dec.feed(header[3:]))
    assert dec.buffered == 0


def test_frame_decoder_accepts_exactly_the_limit() -> None:
    dec = FrameDecoder(max_frame=16)
    assert list(dec.feed(frame(b"y" * 16, max_frame=16))) == [b"y" * 16]
    assert dec.at_boundary()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.integers(1, 50))
def test_frame_decoder_splits_any_feed_pattern(bodies: list[bytes], step: int) -> None:
    stream = b"".join(frame(b) for b in bodies)
    for size in (1, step):  # byte by byte, then in ragged pieces
        dec = FrameDecoder()
        got: list[bytes] = []
        for i in range(0, len(stream), size):
            got.extend(dec.feed(stream[i:i + size]))
            assert dec.buffered <= max((len(b) for b in bodies), default=0) + 4
        assert got == bodies
        assert dec.at_boundary()


def test_frame_decoder_partial_frame_is_not_a_boundary() -> None:
    dec = FrameDecoder()
    assert list(dec.feed(frame(b"hello")[:6])) == []
    assert not dec.at_boundary()
    assert list(dec.feed(b"llo")) == [b"hello"]
    assert dec.at_boundary()


def test_frame_refuses_oversize_payload_locally() -> None:
    with pytest.raises(LocalProtocolError):
        frame(b"z" * 11, max_frame=10)
    with pytest.raises(LocalProtocolError):
        frame(b"z" * (DEFAULT_MAX_FRAME + 1))
    assert frame(b"z" * 10, max_frame=10)[:4] == (10).to_bytes(4, "big")


def test_encode_refuses_unregistered_values() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class NotRegistered:
        x: int

    with pytest.raises(LocalProtocolError):
        encode(NotRegistered(1))
    with pytest.raises(LocalProtocolError):
        encode_value(NotRegistered(1))


def test_encode_refuses_a_mistyped_field_on_the_sending_side() -> None:
    """A value of the wrong type fails at encode (our fault), not at the peer's decode."""
    ref = ChunkRef(b"\x01" * 32, 10)
    bad = dataclasses.replace(ref)
    object.__setattr__(bad, "size", "10")  # bypass __post_init__: a caller bug
    with pytest.raises(LocalProtocolError, match="expected int"):
        _codec.encode_value(bad)
    object.__setattr__(bad, "size", True)  # bool is not an int on the wire
    with pytest.raises(LocalProtocolError, match="expected int"):
        _codec.encode_value(bad)
    object.__setattr__(bad, "size", 10)
    object.__setattr__(bad, "hash", bytearray(b"\x01" * 32))
    with pytest.raises(LocalProtocolError, match="expected bytes"):
        _codec.encode_value(bad)
