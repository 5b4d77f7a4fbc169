"""The content keys a swarm engine knows: each key's chunk list, and chunk -> keys.

Theory of operation
-------------------
A content key ``f"{manifest_id}/{variant_id}"`` names a chunk list that the signed
manifest fixes, so every peer agrees on it; a have-set is a bitfield over its
positions and a ``Have`` names one index. The engine knows a key while it wants it or
some peer is interested in it, and forgets it after (its memory follows the swarms in
progress, not every manifest in the ledger).

For a known key the catalog holds a :class:`KeyInfo`: the chunk list, compact (the
manifest's :class:`~._manifest.ChunkList`, shared with it when the key is one file
without repeats), and views of it -- position -> hash (:class:`HashView`, a slice of the
list's hash buffer on demand), hash -> first position (:class:`FirstPositions`, a probe
of the list's own position index) and hash -> size (:attr:`KeyInfo.size_of`) -- so the
catalog keeps no object per chunk (a hash object, an int and a dict entry per chunk,
~130 B, until issue 16's RSS work). The rest of the engine's per-chunk state is by
position too: a download's missing chunks (:class:`PositionSet`), each peer's have-set
and the node's own held chunks (:class:`PeerHas`, kept here so that they follow the
keys that become known or are forgotten) are a flag byte per position, not a set entry
(~64 B) and a hash object per chunk. Pieces, stores and losses name
chunks by hash, and a chunk shared by two versions is one chunk: a store of it advances
both downloads and is announced in both swarms. :meth:`KeyCatalog.keys_of` finds the
known keys that hold a chunk by probing each key's ``index_of`` (the known keys are the
swarms in progress, a handful), so there is no reverse map with an entry per chunk (it
cost ~40 B a chunk, and a set, ~220 B, for each chunk two versions share).

The catalog never calls the manifest lookup itself: the engine does, so that when a key
becomes known it can also answer the peers that asked for it before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

from ._manifest import ChunkList, ChunkRef

__all__ = ["KeyInfo", "KeyCatalog", "KeyRefs", "PositionSet", "PeerHas"]


class KeyRefs(Sequence[ChunkRef]):
    """A key's chunk list as the engine reads it: position ``i`` is ``ChunkRef(hashes[i],
    chunks.size(i))``, built on demand."""

    __slots__ = ("chunks", "hashes")

    def __init__(self, chunks: ChunkList, hashes: HashView) -> None:
        self.chunks = chunks
        self.hashes = hashes

    def __len__(self) -> int:
        return len(self.chunks)

    @overload
    def __getitem__(self, i: int) -> ChunkRef: ...

    @overload
    def __getitem__(self, i: slice) -> list[ChunkRef]: ...

    def __getitem__(self, i: int | slice) -> ChunkRef | list[ChunkRef]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self.chunks)
        return ChunkRef(self.chunks.hash(i), self.chunks.size(i))

    def __iter__(self) -> Iterator[ChunkRef]:
        for h, size in zip(self.chunks.iter_hashes(), self.chunks.sizes(), strict=True):
            yield ChunkRef(h, size)


class HashView(Sequence[bytes]):
    """Position -> hash over a key's chunk list, sliced from the list's hash buffer on
    demand (a new 32-byte object each time): no object is kept per position."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: ChunkList) -> None:
        self._chunks = chunks

    def __len__(self) -> int:
        return len(self._chunks)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self._chunks)
        return self._chunks.hash(i)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks.iter_hashes()


class FirstPositions:
    """``hash -> first position`` of a key's chunk list, as the dict it replaces
    answered (``get``, ``[]``, ``in``, iteration in position order, ``items``,
    ``values``, ``len``), read from the list's own position index
    (:meth:`~._manifest.ChunkList.find`: 4-byte slots, no object per chunk) instead of
    a dict entry, a hash object and an int per chunk (~130 B)."""

    __slots__ = ("_chunks", "_len")

    def __init__(self, chunks: ChunkList) -> None:
        self._chunks = chunks
        self._len = -1

    @overload
    def get(self, h: object) -> int | None: ...

    @overload
    def get(self, h: object, default: int) -> int: ...

    def get(self, h: object, default: int | None = None) -> int | None:
        i = self._chunks.find(h) if type(h) is bytes else -1
        return default if i < 0 else i

    def __getitem__(self, h: bytes) -> int:
        i = self._chunks.find(h) if type(h) is bytes else -1
        if i < 0:
            raise KeyError(h)
        return i

    def __contains__(self, h: object) -> bool:
        return type(h) is bytes and self._chunks.find(h) >= 0

    def items(self) -> Iterator[tuple[bytes, int]]:
        """``(hash, first position)`` in position order, each hash once."""
        chunks = self._chunks
        if chunks.distinct:
            return zip(chunks.iter_hashes(), range(len(chunks)), strict=True)
        find = chunks.find
        return ((h, i) for i, h in enumerate(chunks.iter_hashes()) if find(h) == i)

    def values(self) -> Iterator[int]:
        """The first positions, in order."""
        return (i for _, i in self.items())

    def __iter__(self) -> Iterator[bytes]:
        return (h for h, _ in self.items())

    def __len__(self) -> int:
        if self._len < 0:
            chunks = self._chunks
            self._len = len(chunks) if chunks.distinct else sum(1 for _ in self.items())
        return self._len


class KeySizes(Mapping[bytes, int]):
    """``hash -> size`` over a key's distinct chunks, read through ``index_of``."""

    __slots__ = ("_info",)

    def __init__(self, info: KeyInfo) -> None:
        self._info = info

    def __getitem__(self, h: bytes) -> int:
        info = self._info
        return info.refs.chunks.size(info.index_of[h])

    def __contains__(self, h: object) -> bool:
        return h in self._info.index_of

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._info.index_of)

    def __len__(self) -> int:
        return len(self._info.index_of)


@dataclass(slots=True)
class KeyInfo:
    refs: KeyRefs
    index_of: FirstPositions       # first position of each hash (the chunk list's index)

    @property
    def size_of(self) -> KeySizes:
        """``hash -> size`` of the key's distinct chunks (a view, no dict of its own)."""
        return KeySizes(self)


class KeyCatalog:
    """Known keys (``infos``), and which of them hold a chunk; the peers' have-sets
    (``have_sets``, kept by position over the known keys, so they follow the keys)."""

    __slots__ = ("infos", "have_sets", "_own")

    def __init__(self) -> None:
        self.infos: dict[str, KeyInfo] = {}
        self.have_sets: dict[str, PeerHas] = {}
        self._own: list[PeerHas] = []      # the node's own held chunks (held_set)

    def add(self, key: str, refs: Sequence[ChunkRef]) -> KeyInfo:
        """Make ``key`` known with the chunk list ``refs``."""
        chunks = refs if isinstance(refs, ChunkList) else ChunkList(refs)
        info = KeyInfo(KeyRefs(chunks, HashView(chunks)), FirstPositions(chunks))
        self.infos[key] = info
        for has in self.have_sets.values():
            has.key_added(key, info)
        for has in self._own:
            has.key_added(key, info)
        return info

    def forget(self, key: str) -> None:
        info = self.infos.pop(key, None)
        if info is not None:
            for has in self.have_sets.values():
                has.key_forgotten(key, info)
            for has in self._own:
                has.key_forgotten(key, info)

    def held_set(self, hashes: Iterable[bytes] = ()) -> PeerHas:
        """A set of the node's own chunks, starting with ``hashes``, kept by position
        over the known keys as a peer's have-set is (not one of ``have_sets``)."""
        has = PeerHas(self.infos, hashes)
        self._own.append(has)
        return has

    def new_have_set(self, peer: str) -> PeerHas:
        has = self.have_sets[peer] = PeerHas(self.infos)
        return has

    def keys_of(self, chunk_hash: bytes) -> tuple[str, ...]:
        """The known keys that hold ``chunk_hash`` (a dict probe per known key: the keys
        are the swarms in progress, a handful, so no reverse map per chunk)."""
        return tuple(key for key, info in self.infos.items() if chunk_hash in info.index_of)

    def known(self, chunk_hash: bytes) -> tuple[bytes, int] | None:
        """``(chunk_hash, the chunk's size)``, or None for a chunk of no known key (the
        catalog keeps no object per chunk: the caller's own is handed back)."""
        for info in self.infos.values():
            i = info.index_of.get(chunk_hash)
            if i is not None:
                return chunk_hash, info.refs.chunks.size(i)
        return None


class PositionSet:
    """A set of a key's chunk hashes kept as flags over the key's positions (its
    first positions, ``KeyInfo.index_of``): one byte a chunk -- a byte, not a bit, as
    ``flags[i]`` is the picker's cheapest test -- instead of a set entry (~64 B).
    Membership takes a hash (a dict probe in ``index_of``) or a position; it iterates
    in position order, yielding the catalog's hash objects."""

    __slots__ = ("_info", "bits", "_n", "_bytes")

    def __init__(self, info: KeyInfo | None = None) -> None:
        self._info = info
        self.bits = bytearray(len(info.refs)) if info is not None else bytearray()
        self._n = 0
        self._bytes = 0     # the sizes of the chunks in the set, kept as it changes

    @property
    def size_sum(self) -> int:
        """The bytes of the chunks in the set (their sizes in the key's chunk list),
        kept as chunks come and go rather than summed on each call."""
        return self._bytes

    def _pos(self, h: object) -> int:
        info = self._info
        if info is None or not isinstance(h, bytes):
            return -1
        return info.index_of.get(h, -1)

    def has_pos(self, i: int) -> bool:
        return bool(self.bits[i])

    def __contains__(self, h: object) -> bool:
        info = self._info
        if info is None:
            return False
        i = info.index_of.get(h)
        return i is not None and bool(self.bits[i])

    def add_pos(self, i: int) -> None:
        bits = self.bits
        if not 0 <= i < len(bits):
            raise IndexError(f"position {i} is outside the key's {len(bits)} positions")
        if not bits[i]:
            bits[i] = 1
            self._n += 1
            if self._info is not None:      # (bits is empty without a key)
                self._bytes += self._info.refs.chunks.size(i)

    def add(self, h: bytes) -> None:
        """Add a chunk of the key (:class:`KeyError` for a hash the key does not have)."""
        i = self._pos(h)
        if i < 0:
            raise KeyError(h)
        self.add_pos(i)

    def discard(self, h: bytes) -> None:
        i = self._pos(h)
        if i >= 0 and self.bits[i]:
            self.bits[i] = 0
            self._n -= 1
            if self._info is not None:
                self._bytes -= self._info.refs.chunks.size(i)

    def positions(self) -> Iterator[int]:
        """The positions in the set, in order."""
        return _bit_positions(self.bits)

    def __iter__(self) -> Iterator[bytes]:
        if self._info is None:
            return iter(())
        hashes = self._info.refs.hashes
        return (hashes[i] for i in self.positions())

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0


def _bit_positions(bits: bytearray) -> Iterator[int]:
    """The positions set in a flag array (one byte a position), found at C speed."""
    i = bits.find(1)
    while i >= 0:
        yield i
        i = bits.find(1, i + 1)


class PeerHas:
    """What one peer holds, as a set of chunk hashes kept by position: for every known
    key a flag per position (``by_key``, a byte each), complete -- a chunk the peer holds
    has its bit set in every known key that has it, whichever key's ``Have`` named it
    -- and the hashes of no known key (``loose``: a key forgotten while the peer held
    its chunks). So ``h in has`` and ``len(has)`` answer as the set of hashes did, at
    1 byte a chunk per known key instead of a set entry (~64 B) per chunk."""

    __slots__ = ("_infos", "by_key", "loose", "_n")

    def __init__(self, infos: dict[str, KeyInfo], hashes: Iterable[bytes] = ()) -> None:
        self._infos = infos
        self.by_key = {key: bytearray(len(info.refs))
                       for key, info in infos.items()}
        self.loose: set[bytes] = set()
        self._n = 0
        for h in hashes:
            self.add(h)

    def __contains__(self, h: object) -> bool:
        if h in self.loose:
            return True
        for key, info in self._infos.items():
            i = info.index_of.get(h)
            if i is not None:
                return bool(self.by_key[key][i])
        return False

    def add(self, h: bytes) -> bool:
        """Add ``h``; True if the peer was not known to hold it."""
        if h in self:
            return False
        found = False
        for key, info in self._infos.items():
            i = info.index_of.get(h)
            if i is not None:
                self.by_key[key][i] = 1
                found = True
        if not found:
            self.loose.add(h)
        self._n += 1
        return True

    def discard(self, h: bytes) -> bool:
        """Remove ``h``; True if the peer was known to hold it."""
        if h not in self:
            return False
        for key, info in self._infos.items():
            i = info.index_of.get(h)
            if i is not None:
                self.by_key[key][i] = 0
        self.loose.discard(h)
        self._n -= 1
        return True

    def key_added(self, key: str, info: KeyInfo) -> None:
        """``key`` became known: set its bits for the chunks the peer holds."""
        bits = bytearray(len(info.refs))
        index_of = info.index_of
        for h in [h for h in self.loose if h in index_of]:
            i = index_of[h]
            bits[i] = 1
            self.loose.discard(h)
        for other, obits in self.by_key.items():
            if other == key:
                continue
            ohashes = self._infos[other].refs.hashes
            for p in _bit_positions(obits):
                j = index_of.get(ohashes[p])
                if j is not None:
                    bits[j] = 1
        self.by_key[key] = bits

    def key_forgotten(self, key: str, info: KeyInfo) -> None:
        """``key`` is no longer known (already out of the catalog): a chunk the peer
        holds that no other known key has is kept as a loose hash."""
        bits = self.by_key.pop(key, None)
        if bits is None:
            return
        hashes = info.refs.hashes
        for p in _bit_positions(bits):
            h = hashes[p]
            if not any(h in other.index_of for other in self._infos.values()):
                self.loose.add(h)

    def __iter__(self) -> Iterator[bytes]:
        yield from self.loose
        seen: list[KeyInfo] = []
        for key, bits in self.by_key.items():
            info = self._infos[key]
            hashes = info.refs.hashes
            for p in _bit_positions(bits):
                h = hashes[p]
                if not any(h in earlier.index_of for earlier in seen):
                    yield h
            seen.append(info)

    def __len__(self) -> int:
        return self._n
