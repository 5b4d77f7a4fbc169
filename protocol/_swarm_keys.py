"""The content keys a swarm engine knows: each key's chunk list, and chunk -> keys.

Theory of operation
-------------------
A content key ``f"{manifest_id}/{variant_id}"`` names a chunk list that the signed
manifest fixes, so every peer agrees on it; a have-set is a bitfield over its
positions and a ``Have`` names one index. The engine knows a key while it wants it or
some peer is interested in it, and forgets it after (its memory follows the swarms in
progress, not every manifest in the ledger).

For a known key the catalog holds a :class:`KeyInfo`: the chunk list and, for each
distinct hash, its first position and its size. It also maps every chunk hash back to
the known keys that hold it, because pieces, stores and losses name chunks by hash and
a chunk shared by two versions is one chunk: a store of it advances both downloads and
is announced in both swarms. That map holds the key itself, and a set only when several
keys share the chunk (a set per chunk cost ~220 B of memory per chunk).

The catalog never calls the manifest lookup itself: the engine does, so that when a key
becomes known it can also answer the peers that asked for it before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._manifest import ChunkRef

__all__ = ["KeyInfo", "KeyCatalog"]


@dataclass(slots=True)
class KeyInfo:
    refs: tuple[ChunkRef, ...]
    index_of: dict[bytes, int]     # first position of each hash
    size_of: dict[bytes, int]


class KeyCatalog:
    """Known keys (``infos``) and the reverse map from chunk hash to keys."""

    __slots__ = ("infos", "_hash_keys")

    def __init__(self) -> None:
        self.infos: dict[str, KeyInfo] = {}
        # chunk hash -> the known key holding it: the key itself, a set only when
        # several keys share the chunk
        self._hash_keys: dict[bytes, str | set[str]] = {}

    def add(self, key: str, refs: Sequence[ChunkRef]) -> KeyInfo:
        """Make ``key`` known with the chunk list ``refs``."""
        index_of: dict[bytes, int] = {}
        size_of: dict[bytes, int] = {}
        for i, ref in enumerate(refs):
            if ref.hash not in index_of:
                index_of[ref.hash] = i
                size_of[ref.hash] = ref.size
        info = KeyInfo(tuple(refs), index_of, size_of)
        self.infos[key] = info
        hash_keys = self._hash_keys
        for h in index_of:
            held_by = hash_keys.get(h)
            if held_by is None:
                hash_keys[h] = key
            elif isinstance(held_by, str):
                if held_by != key:
                    hash_keys[h] = {held_by, key}
            else:
                held_by.add(key)
        return info

    def forget(self, key: str) -> None:
        info = self.infos.pop(key, None)
        if info is None:
            return
        hash_keys = self._hash_keys
        for h in info.index_of:
            keys = hash_keys.get(h)
            if keys is None:
                continue
            if isinstance(keys, str):
                if keys == key:
                    del hash_keys[h]
                continue
            keys.discard(key)
            if len(keys) == 1:
                hash_keys[h] = next(iter(keys))
            elif not keys:
                del hash_keys[h]

    def keys_of(self, chunk_hash: bytes) -> tuple[str, ...] | set[str]:
        """The known keys that hold ``chunk_hash``."""
        keys = self._hash_keys.get(chunk_hash)
        if keys is None:
            return ()
        return (keys,) if isinstance(keys, str) else keys

    def known(self, chunk_hash: bytes) -> tuple[bytes, int] | None:
        """``(the manifest's own bytes object for this hash, the chunk's size)``, or None
        for a chunk of no known key. Keeping the manifest's object (not the copy each
        message decodes) keeps one 32-byte object per chunk in every set that holds it."""
        for key in self.keys_of(chunk_hash):
            info = self.infos[key]
            return info.refs[info.index_of[chunk_hash]].hash, info.size_of[chunk_hash]
        return None
