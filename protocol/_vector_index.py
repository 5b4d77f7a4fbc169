"""The indexes the ledger keeps beside its version vector, so that gossip costs what
changed and not the size of the fleet (docs/LEDGER.md, "Indexes that keep the cost
with the change").

The vector's origins are kept sorted, with their leading 16 bits and their 24-byte digest
input (raw id + counter): a bucket of origins sharing their leading ``bits`` bits is then
a contiguous slice found by bisection. The digest inputs lie end to end in one buffer in
that order, so the whole-vector hash and a bucket's hash are one hash call over a slice
of it, with no Python loop over the origins. The whole-vector hash is kept per vector
generation; bucket hashes per bucket width, and only the buckets whose origins moved
are hashed again. Everything answers exactly what a scan of the vector would
(``tests/test_ledger_indexes.py``).

Every ledger holds one per origin it knows of, so the per-origin cost is kept small: a
position in a list of names, two bytes of prefix in an array, 24 bytes of buffer.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Mapping
from struct import Struct

import blake3

from ._errors import InvalidValue

__all__ = ["VectorIndex"]

_PIECE = 24   # raw id (16 bytes) + counter (8 bytes, big-endian): one origin's digest input
_COUNTER = Struct(">Q")


class VectorIndex:
    """See the module docstring. The ledger tells it of every origin it learns of
    (:meth:`know`) and every move of the vector (:meth:`moved`)."""

    __slots__ = ("_order", "_sorted", "_prefix", "_pieces", "_known", "_known_prefix",
                 "_hash_cache", "_bucket_cache")

    def __init__(self) -> None:
        self._order: dict[str, int] = {}       # origin -> position in the vector's order
        self._sorted: list[str] = []           # origins of the vector, sorted
        self._prefix = array("H")              # their leading 16 bits, same order
        self._pieces = bytearray()             # their digest inputs, same order, end to end
        self._known: list[str] = []            # origins held or in the vector, sorted
        self._known_prefix = array("H")
        self._hash_cache: tuple[int, bytes] = (-1, b"")
        self._bucket_cache: dict[int, tuple[list[bytes], set[int]]] = {}  # bits -> hashes, dirty

    def order(self, origin: str) -> int:
        """When ``origin`` first entered the vector (a scan of the vector meets origins
        in this order)."""
        return self._order[origin]

    def know(self, origin: str) -> None:
        known = self._known
        i = bisect.bisect_left(known, origin)
        if i == len(known) or known[i] != origin:
            known.insert(i, origin)
            self._known_prefix.insert(i, int(origin[:4], 16))

    def moved(self, origin: str, counter: int, known: bool = False) -> None:
        """The vector of ``origin`` is now ``counter`` (``known``: the caller told
        :meth:`know` of it already)."""
        i = bisect.bisect_left(self._sorted, origin)
        at = i * _PIECE
        if origin in self._order:
            _COUNTER.pack_into(self._pieces, at + 16, counter)
        else:
            raw = bytes.fromhex(origin)
            if len(raw) != 16:
                raise InvalidValue(f"an origin is 16 bytes of hex, not {origin!r}")
            self._order[origin] = len(self._order)
            self._sorted.insert(i, origin)
            self._prefix.insert(i, int(origin[:4], 16))
            self._pieces[at:at] = raw + counter.to_bytes(8, "big")
            if not known:
                self.know(origin)
        if self._bucket_cache:
            prefix = self._prefix[i]
            for bits, (_, dirty) in self._bucket_cache.items():
                dirty.add(prefix >> (16 - bits))

    def _slice(self, bits: int, bucket: int, prefixes: array[int]) -> tuple[int, int]:
        shift = 16 - bits
        i = bisect.bisect_left(prefixes, bucket << shift)
        return i, bisect.bisect_left(prefixes, (bucket + 1) << shift, i)

    def vector_in_buckets(self, vv: Mapping[str, int], bits: int,
                          buckets: Iterable[int]) -> dict[bytes, int]:
        """The entries of ``vv`` (16 raw id bytes -> counter) whose origins' leading
        ``bits`` bits are one of ``buckets``."""
        out: dict[bytes, int] = {}
        pieces = self._pieces
        for b in sorted(set(buckets)):
            i, j = self._slice(bits, b, self._prefix)
            seg = bytes(pieces[i * _PIECE:j * _PIECE])
            out.update(zip([seg[k:k + 16] for k in range(0, len(seg), _PIECE)],
                           map(vv.__getitem__, self._sorted[i:j]), strict=True))
        return out

    def vv_hash(self, generation: int) -> bytes:
        """The whole vector's hash, computed once per ``generation``."""
        if self._hash_cache[0] != generation:
            self._hash_cache = (generation, blake3.blake3(self._pieces).digest(16))
        return self._hash_cache[1]

    def bucket_hashes(self, bits: int) -> bytes:
        """One 8-byte hash per bucket, in bucket order; only moved buckets are hashed
        again."""
        cached = self._bucket_cache.get(bits)
        if cached is None:
            hashes = [self._bucket_hash(bits, b) for b in range(1 << bits)]
            self._bucket_cache[bits] = (hashes, set())
        else:
            hashes, dirty = cached
            for b in dirty:
                hashes[b] = self._bucket_hash(bits, b)
            dirty.clear()
        return b"".join(hashes)

    def _bucket_hash(self, bits: int, bucket: int) -> bytes:
        i, j = self._slice(bits, bucket, self._prefix)
        return blake3.blake3(self._pieces[i * _PIECE:j * _PIECE]).digest(8)

    def origins_in_buckets(self, bits: int, buckets: Iterable[int]) -> list[str]:
        """The known origins whose leading ``bits`` bits are one of ``buckets``, in id
        order."""
        out: list[str] = []
        for b in sorted(set(buckets)):
            i, j = self._slice(bits, b, self._known_prefix)
            out.extend(self._known[i:j])
        return out
