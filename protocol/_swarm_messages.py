"""Wire messages of the swarm (type ids 40-59).

A swarm is keyed by a *content key* ``f"{manifest_id}/{variant_id}"``. Both
sides derive the key's chunk list from the same signed manifest, so a have-set
is a bitfield over positions in that list and a single ``Have`` names one
index. Requests, pieces and cancels name chunks by hash: a chunk shared by two
versions is the same chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codec import message
from ._errors import InvalidValue

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


SWARM_MESSAGES = (Interested, NotInterested, HaveSet, CannotHelp, Have, Request, Piece,
                  Cancel, Reject, Redirect)


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
