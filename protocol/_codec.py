"""The wire codec: typed messages <-> msgpack, framing, canonical encoding.

Theory of operation
-------------------
Every message is a frozen, slotted dataclass registered under a small integer
type id with :func:`message`. Values nested inside messages (a chunk reference,
a certificate, a scope) are frozen dataclasses registered with :func:`struct`.
At registration the field annotations are compiled into a tree of converter
functions, so decoding is strict and cheap: every field must be present, no
field may be extra, and every value must have exactly its declared type
(``bool`` is not an ``int``, a ``str`` is not ``bytes``).

On the wire a message is the msgpack array ``[PROTOCOL_VERSION, type_id,
[field, ...]]``; a struct is the positional array of its fields; enums travel
as their values; dicts as maps whose keys are sorted, so the encoding of a value
is a pure function of the value. That makes :func:`canonical` (the bytes that
get signed and hashed) simply the encoding itself.

Frames are a 4-byte big-endian length prefix and a body. :class:`FrameDecoder`
is incremental (feed it whatever the socket returned) and checks the announced
length against its limit *before* buffering the body, so a peer cannot make us
allocate more than ``max_frame`` bytes.

Anything a peer can get wrong raises :class:`MalformedMessage` or
:class:`FrameTooLarge` — both :class:`RemoteProtocolError` — and nothing else.
"""

from __future__ import annotations

import dataclasses
import enum
import struct as _struct
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgpack

from ._errors import FrameTooLarge, LocalProtocolError, MalformedMessage

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME",
    "message",
    "struct",
    "encode",
    "decode",
    "canonical",
    "encode_value",
    "decode_value",
    "frame",
    "FrameDecoder",
    "message_types",
]

PROTOCOL_VERSION = 1
#: Largest frame a peer may send: one chunk (<= 4 MiB) plus headroom.
DEFAULT_MAX_FRAME = 8 * 1024 * 1024
_LENGTH = _struct.Struct(">I")

T = TypeVar("T")
_Converter = Callable[[Any], Any]

_MESSAGE_BY_ID: dict[int, type[Any]] = {}
_ID_BY_MESSAGE: dict[type[Any], int] = {}
_STRUCTS: set[type[Any]] = set()
# cls -> (field names, per-field decoders, per-field encoders)
_Schema = tuple[tuple[str, ...], tuple[_Converter, ...], tuple[_Converter, ...]]
_SCHEMA: dict[type[Any], _Schema] = {}


class _Bad(Exception):
    """Internal: a value does not fit its declared type (path, reason)."""


# --------------------------------------------------------------------------- compile


def _compile(tp: Any) -> tuple[_Converter, _Converter]:
    """Return (decoder, encoder) for annotation ``tp``."""
    if tp is Any:
        raise TypeError("Any is not allowed in a wire type")
    if tp is type(None) or tp is None:
        def dec_none(v: Any) -> None:
            if v is not None:
                raise _Bad(f"expected nil, got {type(v).__name__}")
            return None
        return dec_none, _checker(type(None), "nil")
    if tp is bool:
        def dec_bool(v: Any) -> bool:
            if type(v) is not bool:
                raise _Bad(f"expected bool, got {type(v).__name__}")
            return v
        return dec_bool, _checker(bool, "bool")
    if tp is int:
        def dec_int(v: Any) -> int:
            if type(v) is not int:
                raise _Bad(f"expected int, got {type(v).__name__}")
            return v
        return dec_int, _checker(int, "int")
    if tp is float:
        def dec_float(v: Any) -> float:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _Bad(f"expected float, got {type(v).__name__}")

        def enc_float(v: Any) -> Any:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise LocalProtocolError(f"expected float, got {type(v).__name__}")
        return dec_float, enc_float
    if tp is str:
        def dec_str(v: Any) -> str:
            if type(v) is not str:
                raise _Bad(f"expected str, got {type(v).__name__}")
            return v
        return dec_str, _checker(str, "str")
    if tp is bytes:
        def dec_bytes(v: Any) -> bytes:
            if type(v) is not bytes:
                raise _Bad(f"expected bytes, got {type(v).__name__}")
            return v
        return dec_bytes, _checker(bytes, "bytes")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_cls = tp

        def dec_enum(v: Any) -> Any:
            try:
                return enum_cls(v)
            except (ValueError, TypeError):
                raise _Bad(f"{v!r} is not a valid {enum_cls.__name__}") from None

        def enc_enum(v: Any) -> Any:
            if not isinstance(v, enum_cls):
                raise LocalProtocolError(f"expected {enum_cls.__name__}, got {type(v).__name__}")
            return v.value
        return dec_enum, enc_enum
    if isinstance(tp, type) and tp in _STRUCTS:
        return _struct_decoder(tp), _struct_encoder(tp)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1 or len(args) != 2:
            raise TypeError(f"only `X | None` unions are allowed on the wire, not {tp}")
        inner_dec, inner_enc = _compile(options[0])

        def dec_opt(v: Any) -> Any:
            return None if v is None else inner_dec(v)

        def enc_opt(v: Any) -> Any:
            return None if v is None else inner_enc(v)
        return dec_opt, enc_opt
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item_dec, item_enc = _compile(args[0])

            def dec_seq(v: Any) -> tuple[Any, ...]:
                if type(v) is not list:
                    raise _Bad(f"expected array, got {type(v).__name__}")
                return tuple(item_dec(x) for x in v)

            def enc_seq(v: Any) -> list[Any]:
                return [item_enc(x) for x in v]
            return dec_seq, enc_seq
        convs = [_compile(a) for a in args]

        def dec_fixed(v: Any) -> tuple[Any, ...]:
            if type(v) is not list or len(v) != len(convs):
                raise _Bad(f"expected array of {len(convs)}")
            return tuple(c[0](x) for c, x in zip(convs, v, strict=True))

        def enc_fixed(v: Any) -> list[Any]:
            return [c[1](x) for c, x in zip(convs, v, strict=True)]
        return dec_fixed, enc_fixed
    if origin is dict:
        key_dec, key_enc = _compile(args[0])
        val_dec, val_enc = _compile(args[1])
        if args[0] not in (str, bytes, int):
            raise TypeError(f"dict keys must be str, bytes or int, not {args[0]}")

        def dec_map(v: Any) -> dict[Any, Any]:
            if type(v) is not dict:
                raise _Bad(f"expected map, got {type(v).__name__}")
            return {key_dec(k): val_dec(x) for k, x in v.items()}

        def enc_map(v: Any) -> dict[Any, Any]:
            return {key_enc(k): val_enc(v[k]) for k in sorted(v)}
        return dec_map, enc_map
    raise TypeError(f"type {tp!r} cannot be sent on the wire")


def _checker(tp: type, name: str) -> _Converter:
    """An encoder that refuses, on the sending side, a value of the wrong type."""

    def enc(v: Any) -> Any:
        if type(v) is not tp:
            raise LocalProtocolError(f"expected {name}, got {type(v).__name__}")
        return v
    return enc


def _struct_decoder(cls: type[Any]) -> _Converter:
    def dec(v: Any) -> Any:
        if type(v) is not list:
            raise _Bad(f"expected {cls.__name__} array, got {type(v).__name__}")
        return _build(cls, v)
    return dec


def _struct_encoder(cls: type[Any]) -> _Converter:
    def enc(v: Any) -> Any:
        if type(v) is not cls:
            raise LocalProtocolError(f"expected {cls.__name__}, got {type(v).__name__}")
        return _fields_of(v)
    return enc


def _build(cls: type[Any], values: list[Any]) -> Any:
    names, decoders, _ = _SCHEMA[cls]
    if len(values) != len(names):
        raise _Bad(f"{cls.__name__} takes {len(names)} fields, got {len(values)}")
    kwargs = {}
    for name, dec, raw in zip(names, decoders, values, strict=True):
        try:
            kwargs[name] = dec(raw)
        except _Bad as exc:
            raise _Bad(f"{cls.__name__}.{name}: {exc}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, LocalProtocolError) as exc:
        raise _Bad(f"{cls.__name__}: {exc}") from None


def _fields_of(value: Any) -> list[Any]:
    names, _, encoders = _SCHEMA[type(value)]
    return [enc(getattr(value, n)) for n, enc in zip(names, encoders, strict=True)]


def _register(cls: type[Any]) -> None:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be @dataclass(frozen=True, slots=True)")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    compiled = [_compile(hints[f.name]) for f in fields]
    _SCHEMA[cls] = (
        tuple(f.name for f in fields),
        tuple(c[0] for c in compiled),
        tuple(c[1] for c in compiled),
    )


def struct(cls: type[T]) -> type[T]:
    """Register a frozen, slotted dataclass as a value that can nest inside messages."""
    _STRUCTS.add(cls)
    _register(cls)
    return cls


def message(type_id: int) -> Callable[[type[T]], type[T]]:
    """Register a frozen, slotted dataclass as a top-level message with ``type_id``."""

    def wrap(cls: type[T]) -> type[T]:
        if type_id in _MESSAGE_BY_ID and _MESSAGE_BY_ID[type_id] is not cls:
            other = _MESSAGE_BY_ID[type_id].__name__
            raise TypeError(f"message type id {type_id} is taken by {other}")
        if not 0 < type_id < 65536:
            raise TypeError("message type ids are 1..65535")
        _STRUCTS.add(cls)
        _register(cls)
        _MESSAGE_BY_ID[type_id] = cls
        _ID_BY_MESSAGE[cls] = type_id
        return cls

    return wrap


def message_types() -> dict[int, type[Any]]:
    """A snapshot of the registry: type id -> message class."""
    return dict(_MESSAGE_BY_ID)


# --------------------------------------------------------------------------- encode


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def encode_value(value: Any) -> bytes:
    """Encode a registered struct (not wrapped as a message)."""
    if type(value) not in _SCHEMA:
        raise LocalProtocolError(f"{type(value).__name__} is not a registered wire type")
    return _pack(_fields_of(value))


def canonical(value: Any) -> bytes:
    """The canonical bytes of a registered value: what gets signed and hashed."""
    return encode_value(value)


def encode(msg: Any) -> bytes:
    """Encode a registered message to its wire bytes (no frame header)."""
    type_id = _ID_BY_MESSAGE.get(type(msg))
    if type_id is None:
        raise LocalProtocolError(f"{type(msg).__name__} is not a registered message")
    return _pack([PROTOCOL_VERSION, type_id, _fields_of(msg)])


# --------------------------------------------------------------------------- decode


def _unpack(data: bytes | bytearray | memoryview, max_size: int) -> Any:
    if len(data) > max_size:
        raise FrameTooLarge(len(data), max_size)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises many types; all are the peer's fault
        raise MalformedMessage(f"undecodable msgpack: {type(exc).__name__}: {exc}") from None


def decode_value(cls: type[T], data: bytes | bytearray | memoryview,
                 max_size: int = DEFAULT_MAX_FRAME) -> T:
    """Decode a registered struct encoded by :func:`encode_value`."""
    raw = _unpack(data, max_size)
    if type(raw) is not list:
        raise MalformedMessage(f"{cls.__name__}: expected array")
    try:
        return _build(cls, raw)  # type: ignore[no-any-return]
    except _Bad as exc:
        raise MalformedMessage(str(exc)) from None
    except RecursionError:
        raise MalformedMessage("value nested too deeply") from None


def decode(data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_FRAME) -> Any:
    """Decode wire bytes to a message, strictly. Raises only RemoteProtocolError."""
    raw = _unpack(data, max_size)
    if type(raw) is not list or len(raw) != 3:
        raise MalformedMessage("a message is [version, type, fields]")
    version, type_id, fields = raw
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise MalformedMessage(f"unsupported protocol version {version!r}")
    if type(type_id) is not int:
        raise MalformedMessage("message type must be an int")
    cls = _MESSAGE_BY_ID.get(type_id)
    if cls is None:
        raise MalformedMessage(f"unknown message type {type_id}")
    if type(fields) is not list:
        raise MalformedMessage(f"{cls.__name__}: fields must be an array")
    try:
        return _build(cls, fields)
    except _Bad as exc:
        raise MalformedMessage(str(exc)) from None
    except RecursionError:
        raise MalformedMessage("message nested too deeply") from None


# --------------------------------------------------------------------------- framing


def frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its length. Refuses (locally) to build an oversize frame."""
    if len(payload) > max_frame:
        raise LocalProtocolError(f"refusing to send a {len(payload)}-byte frame "
                                 f"(limit {max_frame})")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental frame splitter with a hard size limit checked before buffering.

    >>> d = FrameDecoder(); list(d.feed(frame(b"hi")))
    [b'hi']
    """

    __slots__ = ("_buf", "_need", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame in progress

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Add bytes; yield every complete frame body. Raises FrameTooLarge."""
        self._buf += data
        while True:
            if self._need is None:
                if len(self._buf) < _LENGTH.size:
                    return
                (length,) = _LENGTH.unpack_from(self._buf)
                if length > self.max_frame:
                    self._buf.clear()
                    raise FrameTooLarge(length, self.max_frame)
                del self._buf[: _LENGTH.size]
                self._need = length
            if len(self._buf) < self._need:
                return
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._need = None
            yield body

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place to close)."""
        return self._need is None and not self._buf
