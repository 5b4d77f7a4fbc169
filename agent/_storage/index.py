"""The store's index of one directory (an installed version or a pack): where each
chunk of its variant sits and which of them it holds, by position in the variant's
compact chunk list -- no dict, set or object per chunk.

A directory's distinct chunks are the positions of its variant's
:meth:`~protocol.Variant.distinct_chunks` (a :class:`~protocol.ChunkList`: hashes in
one buffer). A chunk's position is found through the chunk list's own position index
(:meth:`~protocol.ChunkList.find`: an open-addressing table of 4-byte slots, shared
with the swarm engine when the variant is one file); its first place is the chunk list's own
offset when the variant is one file without repeats, else a packed ``(file, offset)``
in ``first`` (8 bytes a chunk); further places of a repeated chunk are in ``dups``;
what the directory holds is a bitset. The store asks each of its directories (a few:
the versions a node keeps and the packs being fetched) instead of keeping tables from
hash to directories (those cost ~300 B a chunk; docs/JOURNAL.md, 2026-12-06, "issue 16:
per-chunk state by position").
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from protocol import ChunkList, Manifest, Variant

__all__ = ["IndexedDir", "new_dir"]

_OFF_BITS = 44                 # a packed place: file index << 44 | offset
_OFF_MASK = (1 << _OFF_BITS) - 1


@dataclass(slots=True)
class IndexedDir:
    """One indexed directory: an installed version or a pack (module docstring)."""

    path: str
    manifest_id: str
    variant_id: str
    installed: bool
    variant: Variant
    files: list[tuple[str, int, bool]]                  # relative path, size, executable
    chunks: ChunkList                                   # distinct chunks, first-use order
    first: array[int] | None                            # packed first place; None: one file
    dups: dict[int, list[int]]                          # position -> packed further places
    have: bytearray = field(default_factory=bytearray)  # bitset over positions
    n_have: int = 0
    progress_fd: int | None = None                      # open while a pack is staged
    # bitset over positions: bytes this process wrote from verified data, or re-read and
    # hashed at open; complete() re-hashes only the others (copied or published ranges)
    checked: bytearray = field(default_factory=bytearray)

    @property
    def complete(self) -> bool:
        return self.progress_fd is None and self.n_have == len(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def position(self, h: bytes) -> int:
        """The chunk's position among the directory's distinct chunks, or -1."""
        return self.chunks.find(h)

    def __contains__(self, h: object) -> bool:
        return isinstance(h, bytes) and self.position(h) >= 0

    def hashes(self) -> Iterator[bytes]:
        """The distinct chunk hashes, in first-use order."""
        return self.chunks.iter_hashes()

    def holds(self, h: bytes) -> bool:
        p = self.position(h)
        return p >= 0 and self.has_at(p)

    def has_at(self, p: int) -> bool:
        return bool(self.have[p >> 3] >> (p & 7) & 1)

    def set_have(self, p: int, value: bool) -> bool:
        """Mark position ``p`` held (or not); True if that changed anything. A chunk no
        longer held is no longer checked either."""
        if not value and p >> 3 < len(self.checked):
            self.checked[p >> 3] &= ~(1 << (p & 7)) & 0xFF
        if self.has_at(p) == value:
            return False
        self.have[p >> 3] ^= 1 << (p & 7)
        self.n_have += 1 if value else -1
        return True

    def set_checked(self, p: int) -> None:
        """Position ``p``'s bytes on disk are known good: this process wrote them from
        bytes it verified, or re-read and hashed them (see ``checked``)."""
        if not self.checked:
            self.checked = bytearray(len(self.have))
        self.checked[p >> 3] |= 1 << (p & 7)

    def is_checked(self, p: int) -> bool:
        return p >> 3 < len(self.checked) and bool(self.checked[p >> 3] >> (p & 7) & 1)

    def held_hashes(self) -> Iterator[bytes]:
        """The hashes of the chunks the directory holds."""
        have = self.have
        for p, h in enumerate(self.chunks.iter_hashes()):
            if have[p >> 3] >> (p & 7) & 1:
                yield h

    def size(self, h: bytes) -> int:
        p = self.position(h)
        if p < 0:
            raise KeyError(h)
        return self.chunks.size(p)

    def _unpack(self, packed: int) -> tuple[str, int]:
        return self.files[packed >> _OFF_BITS][0], packed & _OFF_MASK

    def _first(self, p: int) -> tuple[str, int]:
        if self.first is None:
            return self.files[0][0], self.chunks.offset(p)
        return self._unpack(self.first[p])

    def place(self, h: bytes) -> tuple[str, int]:
        """(relative path, offset) of the chunk's first place."""
        p = self.position(h)
        if p < 0:
            raise KeyError(h)
        return self._first(p)

    def places(self, h: bytes) -> list[tuple[str, int]]:
        p = self.position(h)
        if p < 0:
            raise KeyError(h)
        return [self._first(p), *map(self._unpack, self.dups.get(p, ()))]

    def file_chunks(self, index: int) -> Iterator[tuple[bytes, int]]:
        """(hash, offset) of every chunk of the ``index``-th file, in order, read from the
        manifest's compact chunk list as it goes (no list per chunk of the file)."""
        chunks = self.variant.files[index].chunks
        off = 0
        for h, size in zip(chunks.iter_hashes(), chunks.sizes(), strict=True):
            yield h, off
            off += size

    def mark(self, present: Iterable[bytes] | None) -> None:
        """Hold every chunk (None) or those of ``present`` that are the directory's."""
        n = len(self.chunks)
        self.checked = bytearray()
        if present is None:
            self.have = bytearray(b"\xff" * (n >> 3))
            if n & 7:
                self.have.append((1 << (n & 7)) - 1)
            self.n_have = n
            return
        self.have = bytearray((n + 7) >> 3)
        self.n_have = 0
        for h in present:
            p = self.position(h)
            if p >= 0:
                self.set_have(p, True)


def new_dir(path: str, manifest: Manifest, variant: Variant, *, installed: bool) -> IndexedDir:
    """The index of ``variant``'s directory at ``path``, holding nothing yet."""
    files = [(entry.path, entry.size, entry.executable) for entry in variant.files]
    chunks = variant.distinct_chunks()
    first: array[int] | None = None
    dups: dict[int, list[int]] = {}
    if not (len(variant.files) == 1 and chunks is variant.files[0].chunks):
        first = array("Q", [0]) * len(chunks)
        seen = bytearray((len(chunks) + 7) >> 3)
        for i, entry in enumerate(variant.files):
            off = 0
            for h, size in zip(entry.chunks.iter_hashes(), entry.chunks.sizes(), strict=True):
                p = chunks.find(h)
                packed = (i << _OFF_BITS) | off
                if seen[p >> 3] >> (p & 7) & 1:
                    dups.setdefault(p, []).append(packed)
                else:
                    seen[p >> 3] |= 1 << (p & 7)
                    first[p] = packed
                off += size
    d = IndexedDir(path, manifest.manifest_id, variant.variant_id, installed, variant, files,
                   chunks, first, dups)
    d.mark(())
    return d
