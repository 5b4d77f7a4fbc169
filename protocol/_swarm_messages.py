"""Wire messages of the swarm (type ids 40-59).

A swarm is keyed by a *content key* ``f"{manifest_id}/{variant_id}"``. Both
sides derive the key's chunk list from the same signed manifest, so a have-set
is a bitfield over positions in that list and a single ``Have`` names one
index. Requests, pieces and cancels name chunks by hash: a chunk shared by two
versions is the same chunk.

``Haves`` names several indices of one key: the engine announces the chunks it
stores to each peer at most once per ``have_interval`` (``protocol/_swarm_haves.py``),
so what it stored in between goes out as one message (a lone index as a ``Have``).

``Requests`` and ``Pieces`` carry a *run* of chunks (at most :data:`MAX_RUN`) in one
message: a driver may coalesce the ``Request`` s it sends one peer in one step, and
the pieces it serves one peer in one write, and the receiving engine handles a run as
the requests or pieces it stands for (one scheduling pass for the run). A ``Pieces``
body is its chunks' bytes back to back in one byte string, the last field, so a
driver can read the chunks straight into one buffer behind the header
(:func:`pieces_header`) and encrypt that buffer as the record, with no copy of the
bytes in between.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import msgpack

from ._codec import PROTOCOL_VERSION, message
from ._errors import InvalidValue, MalformedMessage

__all__ = [
    "Interested",
    "NotInterested",
    "HaveSet",
    "CannotHelp",
    "Have",
    "Request",
    "Piece",
    "Cancel",
    "Reject",
    "Redirect",
    "Requests",
    "Pieces",
    "Haves",
    "MAX_RUN",
    "MAX_HAVES",
    "pieces_header",
    "SWARM_MESSAGES",
    "make_bitfield",
    "bitfield_indices",
]

_MAX_KEY = 512


def _check_key(key: str) -> None:
    if not key or len(key) > _MAX_KEY:
        raise InvalidValue(f"content key must be 1-{_MAX_KEY} characters")


def _check_hash(chunk_hash: bytes) -> None:
    if len(chunk_hash) != 32:
        raise InvalidValue("a chunk hash is 32 bytes")


@message(40)
@dataclass(frozen=True, slots=True)
class Interested:
    """I want ``key``: send me your have-set and keep me posted with ``Have``."""

    key: str

    def __post_init__(self) -> None:
        _check_key(self.key)


@message(41)
@dataclass(frozen=True, slots=True)
class NotInterested:
    """I no longer want ``key``: stop sending ``Have`` updates for it."""

    key: str

    def __post_init__(self) -> None:
        _check_key(self.key)


@message(42)
@dataclass(frozen=True, slots=True)
class HaveSet:
    """The chunks of ``key`` I hold: bit ``i`` (MSB first) is position ``i`` of the list."""

    key: str
    count: int
    bitfield: bytes

    def __post_init__(self) -> None:
        _check_key(self.key)
        if self.count < 0 or len(self.bitfield) != (self.count + 7) // 8:
            raise InvalidValue(f"have-set bitfield of {len(self.bitfield)} bytes does not "
                               f"cover {self.count} chunks")


@message(43)
@dataclass(frozen=True, slots=True)
class CannotHelp:
    """I do not know ``key`` (no manifest yet); ask again later."""

    key: str

    def __post_init__(self) -> None:
        _check_key(self.key)


@message(44)
@dataclass(frozen=True, slots=True)
class Have:
    """I just stored the chunk at position ``index`` of ``key``."""

    key: str
    index: int

    def __post_init__(self) -> None:
        _check_key(self.key)
        if self.index < 0:
            raise InvalidValue("chunk index must be >= 0")


@message(45)
@dataclass(frozen=True, slots=True)
class Request:
    """Send me chunk ``chunk_hash`` (part of ``key``) at ``priority`` (a TransferPriority)."""

    key: str
    chunk_hash: bytes
    priority: int

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_hash(self.chunk_hash)


@message(46)
@dataclass(frozen=True, slots=True)
class Piece:
    """The bytes of ``chunk_hash``; the receiver verifies them before anything else."""

    chunk_hash: bytes
    data: bytes
    priority: int

    def __post_init__(self) -> None:
        _check_hash(self.chunk_hash)


@message(47)
@dataclass(frozen=True, slots=True)
class Cancel:
    """Forget my request for ``chunk_hash`` (another peer delivered it)."""

    chunk_hash: bytes

    def __post_init__(self) -> None:
        _check_hash(self.chunk_hash)


@message(48)
@dataclass(frozen=True, slots=True)
class Reject:
    """I will not serve ``chunk_hash``: ``missing`` (I do not hold it) or busy (queue full)."""

    chunk_hash: bytes
    missing: bool

    def __post_init__(self) -> None:
        _check_hash(self.chunk_hash)


_MAX_HINTS = 16


@message(49)
@dataclass(frozen=True, slots=True)
class Redirect:
    """I hold ``chunk_hash`` but uploaded it moments ago: fetch it from the peers that
    got it (ask me again later if none has it). ``hints`` are positions in ``key`` of
    chunks I have not uploaded to anyone yet: ask me for those instead (super-seeding)."""

    key: str
    chunk_hash: bytes
    hints: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_hash(self.chunk_hash)
        if len(self.hints) > _MAX_HINTS or any(i < 0 for i in self.hints):
            raise InvalidValue(f"a redirect carries at most {_MAX_HINTS} chunk indices >= 0")


#: Chunks in one ``Requests`` or ``Pieces`` at most.
MAX_RUN = 64


def _check_run(hashes: tuple[bytes, ...]) -> None:
    if not 1 <= len(hashes) <= MAX_RUN:
        raise InvalidValue(f"a run names 1-{MAX_RUN} chunks, not {len(hashes)}")
    for h in hashes:
        _check_hash(h)


@message(50)
@dataclass(frozen=True, slots=True)
class Requests:
    """A run of ``Request`` s: send me each of ``chunk_hashes`` (part of ``key``) at
    ``priority``, as if each had been asked for alone, in this order."""

    key: str
    chunk_hashes: tuple[bytes, ...]
    priority: int

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_run(self.chunk_hashes)

    def split(self) -> list[Request]:
        return [Request(self.key, h, self.priority) for h in self.chunk_hashes]


@message(51)
@dataclass(frozen=True, slots=True)
class Pieces:
    """A run of ``Piece`` s: the bytes of ``chunk_hashes[i]`` are the ``sizes[i]`` bytes
    of ``data`` after those of the chunks before it. The receiver verifies each chunk on
    its own: the good ones are kept, whatever else the run holds. Decoded, ``data`` is
    a read-only view of the record it came in (no copy of the bytes)."""

    priority: int
    chunk_hashes: tuple[bytes, ...]
    sizes: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        _check_run(self.chunk_hashes)
        if len(self.sizes) != len(self.chunk_hashes) or any(n < 0 for n in self.sizes):
            raise InvalidValue("a run has one size >= 0 per chunk")
        if sum(self.sizes) != len(self.data):
            raise InvalidValue(f"a run's sizes add up to {sum(self.sizes)} bytes, its "
                               f"data is {len(self.data)}")

    def wire_encode(self) -> bytes:
        """The codec's encoding (a raw tail: ``protocol/_codec.py``)."""
        return pieces_header(self.priority, self.chunk_hashes, self.sizes) + bytes(self.data)

    @staticmethod
    def wire_decode(body: bytes | bytearray | memoryview) -> Pieces:
        """The codec's decoding: ``data`` a view of ``body``, not a copy."""
        return _decode_pieces(body)

    def runs(self) -> list[tuple[bytes, memoryview]]:
        """(hash, bytes) of each chunk, in order; the bytes are views into ``data``."""
        out = []
        at = 0
        view = memoryview(self.data)
        for h, n in zip(self.chunk_hashes, self.sizes, strict=True):
            out.append((h, view[at:at + n]))
            at += n
        return out


_BIN32 = struct.Struct(">BI")


def pieces_header(priority: int, chunk_hashes: Sequence[bytes], sizes: Sequence[int]) -> bytes:
    """The encoding of ``Pieces(priority, chunk_hashes, sizes, data)`` up to ``data``'s
    bytes: that encoding is this header followed by the ``sum(sizes)`` bytes of
    ``data``. The fields are checked as :class:`Pieces` checks them."""
    hashes = tuple(chunk_hashes)
    _check_run(hashes)
    if len(sizes) != len(hashes) or any(n < 0 for n in sizes):
        raise InvalidValue("a run has one size >= 0 per chunk")
    head = msgpack.packb([PROTOCOL_VERSION, 51, [int(priority), hashes, tuple(sizes)]],
                         use_bin_type=True, buf_size=_HEAD_MAX)   # not msgpack's 256 KiB
    # [0x93, version, type 51 (a fixint), fields]: the fields array has 3 entries
    # packed and 4 on the wire (a fixarray: 0x93 -> 0x94), the fourth a bin 32 header
    # whose bytes follow
    at = 3
    assert head[at] == 0x93
    return b"".join((head[:at], b"\x94", head[at + 1:], _BIN32.pack(0xC6, sum(sizes))))


# the most a Pieces header takes before its data: the envelope and field headers,
# the priority, MAX_RUN hashes and MAX_RUN sizes (uint64 at most each), the bin header
_HEAD_MAX = 32 + MAX_RUN * (2 + 32) + MAX_RUN * 9 + 5


def _decode_pieces(body: bytes | bytearray | memoryview) -> Pieces:
    """Decode a ``Pieces`` body without copying its data: ``data`` is a view of
    ``body`` (which must not change afterwards; a record's plaintext does not). As
    strict as the codec's decode: exact types, no trailing bytes."""
    view = memoryview(body)
    up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True,
                          max_buffer_size=_HEAD_MAX, max_array_len=MAX_RUN, max_map_len=0,
                          max_str_len=0, max_bin_len=32, max_ext_len=0)
    try:
        up.feed(view[:_HEAD_MAX])
        if up.read_array_header() != 3 or up.unpack() != PROTOCOL_VERSION:
            raise MalformedMessage("a message is [version, type, fields]")
        if up.unpack() != 51 or up.read_array_header() != 4:
            raise MalformedMessage("Pieces takes 4 fields")
        priority, hashes, sizes = up.unpack(), up.unpack(), up.unpack()
        at = up.tell()
    except MalformedMessage:
        raise
    except Exception as exc:  # msgpack raises many types; all are the peer's fault
        raise MalformedMessage(f"Pieces: undecodable header: {type(exc).__name__}: "
                               f"{exc}") from None
    if (type(priority) is not int or type(hashes) is not tuple or type(sizes) is not tuple
            or any(type(h) is not bytes for h in hashes)
            or any(type(n) is not int for n in sizes)):
        raise MalformedMessage("Pieces: fields of the wrong type")
    tag = view[at] if at < len(view) else -1
    width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(tag)
    if width is None:
        raise MalformedMessage("Pieces.data: expected bytes")
    start = at + 1 + width
    size = int.from_bytes(view[at + 1:start], "big")
    if start + size != len(view):
        raise MalformedMessage(f"Pieces.data: {size} bytes announced, "
                               f"{len(view) - start} present")
    try:
        return Pieces(priority, hashes, sizes, view[start:])  # type: ignore[arg-type]
    except InvalidValue as exc:
        raise MalformedMessage(f"Pieces: {exc}") from None


#: Indices in one ``Haves`` at most (a longer batch goes as several messages).
MAX_HAVES = 1024


@message(52)
@dataclass(frozen=True, slots=True)
class Haves:
    """A batch of ``Have`` s: I stored the chunks at ``indices`` of ``key`` (strictly
    increasing positions, 1-:data:`MAX_HAVES` of them) since I last told you."""

    key: str
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_key(self.key)
        ix = self.indices
        if not 1 <= len(ix) <= MAX_HAVES:
            raise InvalidValue(f"a Haves names 1-{MAX_HAVES} indices, not {len(ix)}")
        if ix[0] < 0 or any(a >= b for a, b in pairwise(ix)):
            raise InvalidValue("Haves indices must be >= 0 and strictly increasing")


SWARM_MESSAGES = (Interested, NotInterested, HaveSet, CannotHelp, Have, Request, Piece,
                  Cancel, Reject, Redirect, Requests, Pieces, Haves)


def make_bitfield(flags: list[bool]) -> bytes:
    """Pack booleans MSB-first into bytes."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def bitfield_indices(bitfield: bytes, count: int) -> list[int]:
    """Positions set in ``bitfield`` (only the first ``count`` bits are read)."""
    out = []
    for i in range(count):
        if bitfield[i >> 3] & (0x80 >> (i & 7)):
            out.append(i)
    return out
