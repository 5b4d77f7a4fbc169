"""The indexes the ledger keeps beside its version vector, so that gossip costs what
changed and not the size of the fleet (docs/LEDGER.md, "Indexes that keep the cost
with the change").

The vector's origins are kept sorted with their leading 16 bits and their 24-byte digest
input (raw id + counter): a bucket of origins sharing their leading ``bits`` bits is then
a contiguous slice found by bisection. The whole-vector hash is kept per vector
generation; bucket hashes per bucket width, and only the buckets whose origins moved
are hashed again. Everything answers exactly what a scan of the vector would
(``tests/test_ledger_indexes.py``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

import blake3

__all__ = ["VectorIndex"]


class VectorIndex:
    """See the module docstring. The ledger tells it of every origin it learns of
    (:meth:`know`) and every move of the vector (:meth:`moved`)."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}             # origin -> position in the vector's order
        self._meta: dict[str, tuple[bytes, int]] = {}   # origin -> raw id, leading 16 bits
        self._sorted: list[str] = []                 # origins of the vector, sorted
        self._prefix: list[int] = []                 # their leading 16 bits, same order
        self._piece: dict[str, bytes] = {}           # origin -> raw id + counter (digest input)
        self._known: list[str] = []                  # origins held or in the vector, sorted
        self._known_prefix: list[int] = []
        self._known_set: set[str] = set()
        self._hash_cache: tuple[int, bytes] = (-1, b"")
        self._bucket_cache: dict[int, tuple[list[bytes], set[int]]] = {}  # bits -> hashes, dirty

    def order(self, origin: str) -> int:
        """When ``origin`` first entered the vector (a scan of the vector meets origins
        in this order)."""
        return self._order[origin]

    def know(self, origin: str) -> None:
        if origin not in self._known_set:
            self._known_set.add(origin)
            i = bisect.bisect_left(self._known, origin)
            self._known.insert(i, origin)
            self._known_prefix.insert(i, int(origin[:4], 16))

    def moved(self, origin: str, counter: int) -> None:
        """The vector of ``origin`` is now ``counter``."""
        meta = self._meta.get(origin)
        if meta is None:
            raw = bytes.fromhex(origin)
            meta = self._meta[origin] = (raw, int(origin[:4], 16))
            self._order[origin] = len(self._order)
            i = bisect.bisect_left(self._sorted, origin)
            self._sorted.insert(i, origin)
            self._prefix.insert(i, meta[1])
            self.know(origin)
        self._piece[origin] = meta[0] + counter.to_bytes(8, "big")
        if self._bucket_cache:
            prefix = meta[1]
            for bits, (_, dirty) in self._bucket_cache.items():
                dirty.add(prefix >> (16 - bits))

    def vector_in_buckets(self, vv: Mapping[str, int], bits: int,
                          buckets: Iterable[int]) -> dict[bytes, int]:
        """The entries of ``vv`` (16 raw id bytes -> counter) whose origins' leading
        ``bits`` bits are one of ``buckets``."""
        shift = 16 - bits
        out: dict[bytes, int] = {}
        meta, names, prefixes = self._meta, self._sorted, self._prefix
        for b in sorted(set(buckets)):
            i = bisect.bisect_left(prefixes, b << shift)
            j = bisect.bisect_left(prefixes, (b + 1) << shift, i)
            part = names[i:j]
            out.update(zip([meta[o][0] for o in part], map(vv.__getitem__, part),
                           strict=True))
        return out

    def vv_hash(self, generation: int) -> bytes:
        """The whole vector's hash, computed once per ``generation``."""
        if self._hash_cache[0] != generation:
            data = b"".join([self._piece[o] for o in self._sorted])
            self._hash_cache = (generation, blake3.blake3(data).digest(16))
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
        shift = 16 - bits
        i = bisect.bisect_left(self._prefix, bucket << shift)
        j = bisect.bisect_left(self._prefix, (bucket + 1) << shift, i)
        return blake3.blake3(b"".join([self._piece[o] for o in self._sorted[i:j]])).digest(8)

    def origins_in_buckets(self, bits: int, buckets: Iterable[int]) -> list[str]:
        """The known origins whose leading ``bits`` bits are one of ``buckets``, in id
        order."""
        shift = 16 - bits
        out: list[str] = []
        for b in sorted(set(buckets)):
            i = bisect.bisect_left(self._known_prefix, b << shift)
            j = bisect.bisect_left(self._known_prefix, (b + 1) << shift, i)
            out.extend(self._known[i:j])
        return out
