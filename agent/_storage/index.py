"""The store's index of one directory (an installed version or a pack): where each
chunk of its variant sits, packed small, and the tables from chunk to directories."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from protocol import Manifest, Variant

__all__ = ["IndexedDir", "multi_add", "multi_get", "multi_remove", "multi_rename",
           "new_dir"]

_OFF_BITS = 44                 # a packed place: size << 88 | file index << 44 | offset
_OFF_MASK = (1 << _OFF_BITS) - 1


@dataclass(slots=True)
class IndexedDir:
    """One indexed directory: an installed version or a pack.

    Kept small (a daemon indexes every chunk of every version it keeps): one packed int
    per distinct chunk, its first place; ``dups`` only for chunks that occur again."""

    path: str
    manifest_id: str
    variant_id: str
    installed: bool
    variant: Variant
    files: list[tuple[str, int, bool]]                  # relative path, size, executable
    layout: dict[bytes, int]                            # hash -> packed first place
    dups: dict[bytes, list[int]]                        # hash -> packed further places
    have: set[bytes] = field(default_factory=set)
    progress_fd: int | None = None                      # open while a pack is staged

    @property
    def complete(self) -> bool:
        return self.progress_fd is None and len(self.have) == len(self.layout)

    def size(self, h: bytes) -> int:
        return self.layout[h] >> (2 * _OFF_BITS)

    def _unpack(self, packed: int) -> tuple[str, int]:
        return self.files[(packed >> _OFF_BITS) & _OFF_MASK][0], packed & _OFF_MASK

    def place(self, h: bytes) -> tuple[str, int]:
        """(relative path, offset) of the chunk's first place."""
        return self._unpack(self.layout[h])

    def places(self, h: bytes) -> list[tuple[str, int]]:
        return [self._unpack(self.layout[h]), *map(self._unpack, self.dups.get(h, ()))]

    def file_chunks(self, index: int) -> Iterator[tuple[bytes, int]]:
        """(hash, offset) of every chunk of the ``index``-th file, in order, read from the
        manifest's compact chunk list as it goes (no list per chunk of the file)."""
        chunks = self.variant.files[index].chunks
        off = 0
        for h, size in zip(chunks.iter_hashes(), chunks.sizes(), strict=True):
            yield h, off
            off += size


def new_dir(path: str, manifest: Manifest, variant: Variant, *, installed: bool) -> IndexedDir:
    files: list[tuple[str, int, bool]] = []
    layout: dict[bytes, int] = {}
    dups: dict[bytes, list[int]] = {}
    for i, entry in enumerate(variant.files):
        files.append((entry.path, entry.size, entry.executable))
        off = 0
        for h, size in zip(entry.chunks.iter_hashes(), entry.chunks.sizes(), strict=True):
            packed = (size << (2 * _OFF_BITS)) | (i << _OFF_BITS) | off
            if h in layout:
                dups.setdefault(h, []).append(packed)
            else:
                layout[h] = packed
            off += size
    return IndexedDir(path, manifest.manifest_id, variant.variant_id, installed, variant, files,
                layout, dups)


def multi_add(table: dict[bytes, str | list[str]], h: bytes, path: str) -> int:
    """Add ``path`` to ``table[h]`` (a str, or a list when several); how many now."""
    cur = table.get(h)
    if cur is None:
        table[h] = path
        return 1
    if isinstance(cur, str):
        if cur == path:
            return 1
        table[h] = [cur, path]
        return 2
    if path not in cur:
        cur.append(path)
    return len(cur)


def multi_remove(table: dict[bytes, str | list[str]], h: bytes, path: str) -> int:
    """Remove ``path`` from ``table[h]``; how many are left."""
    cur = table.get(h)
    if cur is None:
        return 0
    if isinstance(cur, str):
        if cur == path:
            del table[h]
            return 0
        return 1
    with contextlib.suppress(ValueError):
        cur.remove(path)
    if len(cur) == 1:
        table[h] = cur[0]
        return 1
    if not cur:
        del table[h]
    return len(cur)


def multi_get(table: dict[bytes, str | list[str]], h: bytes) -> list[str]:
    cur = table.get(h)
    if cur is None:
        return []
    return [cur] if isinstance(cur, str) else list(cur)


def multi_rename(table: dict[bytes, str | list[str]], h: bytes, old: str, new: str) -> None:
    cur = table.get(h)
    if cur == old:
        table[h] = new
    elif isinstance(cur, list) and old in cur:
        cur[cur.index(old)] = new
