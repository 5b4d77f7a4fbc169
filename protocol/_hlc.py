"""Hybrid logical clocks and version vectors.

Theory of operation
-------------------
An :class:`HLC` stamp is ``(wall_ms, logical, node_id)``, totally ordered as a
tuple. :class:`HybridClock` produces stamps that never go backwards even when the
wall clock (the ``now`` input, seconds) does, and that sort after every stamp the
node has observed (Kulkarni et al., 2014): ``tick`` takes ``max(wall, last)``
and bumps the logical counter on a tie; ``observe`` folds a remote stamp in.

A version vector maps an origin (a node id) to the highest counter of that
origin's ledger entries that a ledger holds *completely*. Vectors are plain
``dict[str, int]``; the helpers here join, compare and compact them for the wire
(16 raw bytes per node id instead of 32 hex characters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import blake3

from ._codec import struct
from ._errors import InvalidValue

__all__ = [
    "HLC",
    "HybridClock",
    "VersionVector",
    "vv_join",
    "vv_dominates",
    "vv_to_wire",
    "vv_from_wire",
    "vv_hash",
]

VersionVector = dict[str, int]


@struct
@dataclass(frozen=True, slots=True, order=True)
class HLC:
    wall_ms: int
    logical: int
    node_id: str

    def __post_init__(self) -> None:
        if self.wall_ms < 0 or self.logical < 0:
            raise InvalidValue("an HLC stamp cannot be negative")


class HybridClock:
    """The clock of one node. Feed it ``now`` (seconds); it never runs backwards."""

    __slots__ = ("node_id", "_wall_ms", "_logical")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._wall_ms = 0
        self._logical = 0

    def tick(self, now: float) -> HLC:
        """A new stamp for a local event at ``now``."""
        wall = int(now * 1000)
        if wall > self._wall_ms:
            self._wall_ms, self._logical = wall, 0
        else:
            self._logical += 1
        return HLC(self._wall_ms, self._logical, self.node_id)

    def observe(self, stamp: HLC, now: float) -> None:
        """Fold in a stamp seen on a message so later ticks sort after it."""
        wall = int(now * 1000)
        top = max(wall, self._wall_ms, stamp.wall_ms)
        if top == self._wall_ms and top == stamp.wall_ms:
            self._logical = max(self._logical, stamp.logical) + 1
        elif top == self._wall_ms:
            self._logical += 1
        elif top == stamp.wall_ms:
            self._logical = stamp.logical + 1
        else:
            self._logical = 0
        self._wall_ms = top

    def peek(self) -> HLC:
        return HLC(self._wall_ms, self._logical, self.node_id)


def vv_join(a: Mapping[str, int], b: Mapping[str, int]) -> VersionVector:
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, 0):
            out[k] = v
    return out


def vv_dominates(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """True when ``a`` has seen everything ``b`` has."""
    return all(a.get(k, 0) >= v for k, v in b.items())


def vv_to_wire(vv: Mapping[str, int]) -> dict[bytes, int]:
    """Compact form: 16 raw bytes per node id (ids are 32 hex characters)."""
    return {bytes.fromhex(k): v for k, v in vv.items() if v > 0}


def vv_from_wire(raw: Mapping[bytes, int]) -> VersionVector:
    if raw and (set(map(len, raw)) != {16} or min(raw.values()) < 0):
        raise InvalidValue("a version-vector origin is 16 bytes, a counter is >= 0")
    hexes = (list(map(bytes.hex, raw)) if set(map(type, raw)) == {bytes}
             else [k.hex() for k in raw])
    return dict(zip(hexes, raw.values(), strict=True))


def vv_hash(vv: Mapping[str, int]) -> bytes:
    """A 16-byte digest of a vector: equal vectors, equal digests."""
    h = blake3.blake3()
    for k in sorted(vv):
        if vv[k] > 0:
            h.update(bytes.fromhex(k) + vv[k].to_bytes(8, "big"))
    return h.digest(16)
