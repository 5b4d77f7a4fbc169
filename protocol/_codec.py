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
[field, ...]]``; a struct is the positional array of its fields (fields appended
to a struct after it first shipped are declared with :func:`appended`: they are
left off the end of the array while they hold their default, so a value that does
not use them encodes -- and hashes, and verifies -- exactly as it did before they
existed, and an older encoding without them decodes to their defaults); enums travel
as their values; dicts as maps whose keys are sorted, so the encoding of a value
is a pure function of the value. That makes :func:`canonical` (the bytes that
get signed and hashed) simply the encoding itself.

A message whose bulk is its last field, a byte string, may encode and decode itself
(a *raw tail*): a class with a ``wire_encode(self) -> bytes`` method and a
``wire_decode(body)`` static method is handed its whole body by :func:`decode` and
its encoding by :func:`encode`. The encoding is still ``[version, type_id, fields]``
(the last field under a bin 32 header, so a driver can write the bytes behind a
header it encoded first); the decoder hands the byte string out as a view of the
body rather than a copy, and must be as strict as :func:`decode` and raise only
:class:`MalformedMessage` (``protocol/_swarm_messages.py``, ``Pieces``).

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

from ._codec_shape import WIRE_ITEM, DecodeLimits, Shape, shape_of
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
    "DecodeLimits",
    "decode_limits",
    "appended",
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
# cls -> (field names, per-field decoders, per-field encoders, decode shape, fields
# required on the wire (those before the appended ones), the fields' defaults)
_Schema = tuple[tuple[str, ...], tuple[_Converter, ...], tuple[_Converter, ...], Shape,
                int, tuple[Any, ...]]
APPENDED = "shoal.codec.appended"
_SCHEMA: dict[type[Any], _Schema] = {}
#: A message class with a field of this name, not set by ``__init__``, is given the
#: length of the body :func:`decode` decoded it from (``protocol/_gossip.py``'s
#: ``wire_size`` would otherwise encode a received message again to learn it).
SIZE_SLOT = "_size"
_SIZED: set[type[Any]] = set()


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
    if isinstance(tp, type) and hasattr(tp, WIRE_ITEM):
        return _packed_sequence(tp)

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
                if type(v) is not tuple:
                    raise _Bad(f"expected array, got {_kind(v)}")
                return tuple(item_dec(x) for x in v)

            def enc_seq(v: Any) -> list[Any]:
                return [item_enc(x) for x in v]
            return dec_seq, enc_seq
        convs = [_compile(a) for a in args]

        def dec_fixed(v: Any) -> tuple[Any, ...]:
            if type(v) is not tuple or len(v) != len(convs):
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
            if type(v) is not dict and v is not _EMPTY_MAP:
                raise _Bad(f"expected map, got {_kind(v)}")
            return {key_dec(k): val_dec(x) for k, x in v.items()}

        def enc_map(v: Any) -> dict[Any, Any]:
            return {key_enc(k): val_enc(v[k]) for k in sorted(v)}
        return dec_map, enc_map
    raise TypeError(f"type {tp!r} cannot be sent on the wire")


def _kind(v: Any) -> str:
    """The msgpack kind of a decoded value, for error messages."""
    if type(v) is tuple:
        return "array"
    if type(v) is dict or v is _EMPTY_MAP:
        return "map"
    return type(v).__name__


def _checker(tp: type, name: str) -> _Converter:
    """An encoder that refuses, on the sending side, a value of the wrong type."""

    def enc(v: Any) -> Any:
        if type(v) is not tp:
            raise LocalProtocolError(f"expected {name}, got {type(v).__name__}")
        return v
    return enc


def _packed_sequence(cls: type[Any]) -> tuple[_Converter, _Converter]:
    """A sequence type held compactly in memory that travels as ``tuple[item, ...]``:
    ``cls.__wire_item__`` names the item struct, ``cls.from_pairs`` builds one from the
    decoded item arrays (checking them as strictly as the item's own decoder, raising
    ``ValueError``), ``value.iter_wire()`` gives the item arrays back one by one."""

    def dec(v: Any) -> Any:
        if type(v) is not tuple:
            raise _Bad(f"expected array, got {_kind(v)}")
        try:
            return cls.from_pairs(v)
        except (ValueError, TypeError) as exc:
            raise _Bad(str(exc)) from None

    def enc(v: Any) -> Any:
        if type(v) is not cls:
            raise LocalProtocolError(f"expected {cls.__name__}, got {type(v).__name__}")
        return v      # written item by item when packed (``_stream``)
    return dec, enc


def _struct_decoder(cls: type[Any]) -> _Converter:
    def dec(v: Any) -> Any:
        if type(v) is not tuple:
            raise _Bad(f"expected {cls.__name__} array, got {_kind(v)}")
        return _build(cls, v)
    return dec


def _struct_encoder(cls: type[Any]) -> _Converter:
    def enc(v: Any) -> Any:
        if type(v) is not cls:
            raise LocalProtocolError(f"expected {cls.__name__}, got {type(v).__name__}")
        return _fields_of(v)
    return enc


def appended(default: Any) -> Any:
    """A field appended to a struct that has shipped: ``x: T = appended(default)``.
    Appended fields come last; each is left off the wire while it holds ``default``."""
    return dataclasses.field(default=default, metadata={APPENDED: True})


def _build(cls: type[Any], values: tuple[Any, ...]) -> Any:
    names, decoders, _, _, required, _ = _SCHEMA[cls]
    if not required <= len(values) <= len(names):
        want = str(len(names)) if required == len(names) else f"{required}..{len(names)}"
        raise _Bad(f"{cls.__name__} takes {want} fields, got {len(values)}")
    kwargs = {}
    for name, dec, raw in zip(names, decoders, values, strict=False):
        try:
            kwargs[name] = dec(raw)
        except _Bad as exc:
            raise _Bad(f"{cls.__name__}.{name}: {exc}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, LocalProtocolError) as exc:
        raise _Bad(f"{cls.__name__}: {exc}") from None


def _fields_of(value: Any) -> list[Any]:
    names, _, encoders, _, required, defaults = _SCHEMA[type(value)]
    values = [getattr(value, n) for n in names]
    n = len(values)
    while n > required and values[n - 1] == defaults[n - 1]:
        n -= 1                        # an appended field at its default stays off the wire
    return [enc(v) for enc, v in zip(encoders[:n], values[:n], strict=True)]


def _register(cls: type[Any]) -> None:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be @dataclass(frozen=True, slots=True)")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    compiled = [_compile(hints[f.name]) for f in fields]
    names = tuple(f.name for f in fields)
    decoders = tuple(c[0] for c in compiled)
    encoders = tuple(c[1] for c in compiled)
    tail = [bool(f.metadata.get(APPENDED)) for f in fields]
    required = tail.index(True) if True in tail else len(fields)
    if not all(tail[required:]):
        raise TypeError(f"{cls.__name__}: appended fields must come last")
    defaults = tuple(f.default for f in fields)
    _SCHEMA[cls] = (names, decoders, encoders, (0, (), (), False, False, (0, 1)), required,
                    defaults)
    _SCHEMA[cls] = (names, decoders, encoders, shape_of(cls, _SCHEMA), required,
                    defaults)  # the shape needs cls registered


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
        if any(f.name == SIZE_SLOT and not f.init
               for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
            _SIZED.add(cls)
        return cls

    return wrap


def message_types() -> dict[int, type[Any]]:
    """A snapshot of the registry: type id -> message class."""
    return dict(_MESSAGE_BY_ID)


# --------------------------------------------------------------------------- encode


_PACK_BUF = 4096


def _pack(obj: Any) -> bytes:
    try:
        # a small first buffer: msgpack's default (256 KiB) is a large block allocated
        # and freed for every message encoded; longer messages grow it
        return msgpack.packb(obj, use_bin_type=True,  # type: ignore[no-any-return]
                             default=_refuse_packed, buf_size=_PACK_BUF)
    except _Streamed:
        # a packed sequence inside: the same bytes, written as the tree is walked, so a
        # long sequence costs no list of per-item objects on the way out
        packer = msgpack.Packer(use_bin_type=True, autoreset=False, buf_size=_PACK_BUF)
        _stream(obj, packer)
        return packer.bytes()  # type: ignore[no-any-return]


class _Streamed(Exception):
    """Internal: msgpack met a packed sequence; encode by walking (:func:`_stream`)."""


def _refuse_packed(obj: Any) -> Any:
    if hasattr(type(obj), WIRE_ITEM):
        raise _Streamed
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _stream(obj: Any, packer: msgpack.Packer) -> None:
    if type(obj) is list or type(obj) is tuple:
        packer.pack_array_header(len(obj))
        for x in obj:
            _stream(x, packer)
    elif type(obj) is dict:
        packer.pack_map_header(len(obj))
        for k, v in obj.items():
            _stream(k, packer)
            _stream(v, packer)
    elif hasattr(type(obj), WIRE_ITEM):
        packer.pack_array_header(len(obj))
        for item in obj.iter_wire():
            packer.pack(item)
    else:
        packer.pack(obj)


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
    if hasattr(msg, "wire_encode"):     # a raw tail (module doc)
        return msg.wire_encode()  # type: ignore[no-any-return]
    return _pack([PROTOCOL_VERSION, type_id, _fields_of(msg)])


# --------------------------------------------------------------------------- decode


def decode_limits(cls: type[Any], size: int) -> DecodeLimits:
    """The msgpack limits for decoding a ``size``-byte body holding a ``cls``."""
    fixed, seqs, maps, has_str, has_bytes, (containers, per) = _SCHEMA[cls][3]
    return DecodeLimits(
        size=size,
        max_array_len=max([fixed] + [size // m for m in seqs]),
        max_map_len=max([0] + [size // m for m in maps]),
        max_str_len=size if has_str else 0,
        max_bin_len=size if has_bytes else 0,
        # a fixed tree is stored as (-count, 0); otherwise (containers, bytes)
        max_containers=(2 - containers) if per == 0 else 4 + size * containers // per,
    )


class _TooMany(Exception):
    """Internal: a body holds more arrays and maps than its schema allows."""


#: What an empty msgpack map decodes to: one shared, read-only object (an empty map
#: costs one byte on the wire and would cost a new dict each).
_EMPTY_MAP: Any = types.MappingProxyType({})


def _no_map(pairs: Any) -> Any:
    raise _TooMany("a map where the schema has none")


def _map(pairs: list[tuple[Any, Any]]) -> Any:
    if not pairs:
        return _EMPTY_MAP
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _TooMany("a map with a duplicate key")
    return out


def _unpack(data: bytes | bytearray | memoryview, max_size: int,
            cls: type[Any] | None = None) -> Any:
    """msgpack-decode ``data`` under ``cls``'s :func:`decode_limits`.

    Arrays come back as tuples (so an empty array costs no allocation: CPython shares
    ``()``) and an empty map as one shared empty mapping. Where the schema bounds the
    number of arrays tightly (a value with no sequence or map), each array is counted
    as it is built and decoding stops at the first one too many; where it has no map,
    at the first map.
    """
    if len(data) > max_size:
        raise FrameTooLarge(len(data), max_size)
    lim = decode_limits(cls, len(data)) if cls is not None else DecodeLimits(
        len(data), 3, 0, 0, 0, 2)
    kwargs: dict[str, Any] = {}
    if lim.max_containers < len(data):
        left = [lim.max_containers]

        def count(obj: Any) -> Any:
            left[0] -= 1
            if left[0] < 0:
                raise _TooMany(f"more than {lim.max_containers} arrays")
            return obj
        kwargs["list_hook"] = count
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            object_pairs_hook=_map if lim.max_map_len else _no_map,
            max_array_len=lim.max_array_len,
            max_map_len=lim.max_map_len,
            max_str_len=lim.max_str_len,
            max_bin_len=lim.max_bin_len,
            max_ext_len=0,
            **kwargs,
        )
    except _TooMany as exc:
        name = cls.__name__ if cls is not None else "value"
        raise MalformedMessage(f"{name}: {exc} (in {len(data)} bytes)") from None
    except Exception as exc:  # msgpack raises many types; all are the peer's fault
        raise MalformedMessage(f"undecodable msgpack: {type(exc).__name__}: {exc}") from None


_ENVELOPE = 0x93          # fixarray of 3: [version, type_id, fields]


def _peek_type(data: bytes | bytearray | memoryview) -> type[Any]:
    """The message class a body names, read from its first bytes before decoding, so
    the decode can be limited by that class's schema. Our encoder writes the envelope
    as ``0x93, 0x01`` and the type id as a positive fixint, uint8 or uint16. The
    fields array's header must then announce exactly the class's field count (so the
    top level cannot carry a long array the schema would refuse only after msgpack
    built it)."""
    head = bytes(data[:10])
    if len(head) < 3 or head[0] != _ENVELOPE:
        raise MalformedMessage("a message is [version, type, fields]")
    if head[1] != PROTOCOL_VERSION:
        raise MalformedMessage(f"unsupported protocol version (first bytes "
                               f"{head[:3].hex()})")
    tag = head[2]
    if tag < 0x80:
        type_id, at = tag, 3
    elif tag == 0xCC and len(head) >= 4:
        type_id, at = head[3], 4
    elif tag == 0xCD and len(head) >= 5:
        type_id, at = int.from_bytes(head[3:5], "big"), 5
    else:
        raise MalformedMessage("message type must be an int")
    cls = _MESSAGE_BY_ID.get(type_id)
    if cls is None:
        raise MalformedMessage(f"unknown message type {type_id}")
    want, required = len(_SCHEMA[cls][0]), _SCHEMA[cls][4]
    fields = head[at] if len(head) > at else -1
    if 0x90 <= fields <= 0x9F:
        count = fields - 0x90
    elif fields == 0xDC and len(head) >= at + 3:
        count = int.from_bytes(head[at + 1:at + 3], "big")
    elif fields == 0xDD and len(head) >= at + 5:
        count = int.from_bytes(head[at + 1:at + 5], "big")
    else:
        raise MalformedMessage(f"{cls.__name__}: fields must be an array")
    if not required <= count <= want:
        raise MalformedMessage(f"{cls.__name__} takes {want} fields, got {count}")
    return cls


def decode_value(cls: type[T], data: bytes | bytearray | memoryview,
                 max_size: int = DEFAULT_MAX_FRAME) -> T:
    """Decode a registered struct encoded by :func:`encode_value`."""
    if len(data) > max_size:
        raise FrameTooLarge(len(data), max_size)
    raw = _unpack(data, max_size, cls if cls in _SCHEMA else None)
    if type(raw) is not tuple:
        raise MalformedMessage(f"{cls.__name__}: expected array")
    try:
        return _build(cls, raw)  # type: ignore[no-any-return]
    except _Bad as exc:
        raise MalformedMessage(str(exc)) from None
    except RecursionError:
        raise MalformedMessage("value nested too deeply") from None


def decode(data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_FRAME) -> Any:
    """Decode wire bytes to a message, strictly. Raises only RemoteProtocolError.

    The message type is read from the envelope first, and msgpack decodes the body
    under that type's :func:`decode_limits`: no array, map, string or byte string
    longer, and no more arrays and maps in all, than a valid message of that type
    and size can hold."""
    if len(data) > max_size:
        raise FrameTooLarge(len(data), max_size)
    fast = getattr(_peek_type(data), "wire_decode", None)
    if fast is not None:            # a raw tail (module doc)
        return fast(data)
    raw = _unpack(data, max_size, _peek_type(data))
    if type(raw) is not tuple or len(raw) != 3:
        raise MalformedMessage("a message is [version, type, fields]")
    version, type_id, fields = raw
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise MalformedMessage(f"unsupported protocol version {version!r}")
    if type(type_id) is not int:
        raise MalformedMessage("message type must be an int")
    cls = _MESSAGE_BY_ID.get(type_id)
    if cls is None:
        raise MalformedMessage(f"unknown message type {type_id}")
    if type(fields) is not tuple:
        raise MalformedMessage(f"{cls.__name__}: fields must be an array")
    try:
        msg = _build(cls, fields)
    except _Bad as exc:
        raise MalformedMessage(str(exc)) from None
    except RecursionError:
        raise MalformedMessage("message nested too deeply") from None
    if cls in _SIZED:      # what it cost on the wire, known here for free
        object.__setattr__(msg, SIZE_SLOT, len(data))
    return msg


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
