"""Upgrade in place from the earlier store layout (one file per chunk under
``store/chunks/``): what :class:`~agent._storage.store.ChunkStore` runs when it opens a
data directory that still has that folder."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from agent._errors import ChunkCorrupted, StoreError
from agent._storage.files import TMP_PREFIX
from agent._storage.paths import fsync_dir
from protocol import HASH_SIZE, Manifest, hash_chunk

if TYPE_CHECKING:
    from agent._storage.store import ChunkStore

__all__ = ["convert_legacy"]


def _is_hex_name(name: str) -> bool:
    if len(name) != 2 * HASH_SIZE:
        return False
    try:
        bytes.fromhex(name)
    except ValueError:
        return False
    return name == name.lower()


def convert_legacy(store: ChunkStore, chunks_dir: Path) -> None:
    """Convert a store of the earlier layout (one file per chunk): every variant of a
    pinned manifest that is not installed and has chunks only there becomes a
    staged pack holding them (completed when all are there); each chunk file is
    deleted once no variant still to convert needs it, so the conversion needs
    about one variant of free space; then ``chunks/`` is removed (what no pinned
    manifest needed is what gc would have deleted). Cut short (a crash, a full
    disk), it goes on the next time the store opens: ``chunks/`` is only removed
    at the end, and a staged pack takes the chunk files' bytes again."""
    loose: dict[bytes, str] = {}
    for shard in os.scandir(chunks_dir):
        if not shard.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(shard.path):
            if _is_hex_name(entry.name) and entry.is_file(follow_symlinks=False):
                loose[bytes.fromhex(entry.name)] = entry.path
    plan: list[tuple[Manifest, str, set[bytes]]] = []
    for mid in sorted(store._pinned):
        manifest = store._manifests[mid]
        for v in manifest.variants:
            path = store._by_key.get((mid, v.variant_id))
            if path is not None and (store._dirs[path].installed
                                     or store._dirs[path].complete):
                continue
            hashes = {r.hash for r in v.chunk_refs()} & loose.keys()
            if path is None and all(store._held(h) for h in hashes):
                continue
            plan.append((manifest, v.variant_id, hashes))
    needed: dict[bytes, int] = {}
    for _, _, hashes in plan:
        for h in hashes:
            needed[h] = needed.get(h, 0) + 1
    try:
        for manifest, variant_id, hashes in plan:
            store.stage(manifest, variant_id)
            batch: list[tuple[bytes, bytes]] = []
            for h in sorted(hashes):
                try:
                    with open(loose[h], "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if hash_chunk(data) == h:   # a corrupt chunk file is not carried over
                    batch.append((h, data))
                if len(batch) >= 64:
                    store._raise_first(store._put_many(batch, trusted_hash=True))
                    batch = []
            store._raise_first(store._put_many(batch, trusted_hash=True))
            if not store.missing(manifest, variant_id):
                with contextlib.suppress(ChunkCorrupted):
                    store.complete(manifest, variant_id)
            for h in hashes:
                needed[h] -= 1
                if needed[h] == 0:
                    with contextlib.suppress(OSError):
                        os.unlink(loose[h])
    except StoreError:
        return      # e.g. no space for the next pack: the rest waits for the next open
    tmp = store.root / f"{TMP_PREFIX}legacy-chunks-{secrets.token_hex(4)}"
    os.rename(chunks_dir, tmp)
    if store._fsync:
        fsync_dir(store.root)
    shutil.rmtree(tmp, ignore_errors=True)
