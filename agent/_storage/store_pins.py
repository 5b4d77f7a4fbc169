"""The store's manifests, its pins and its gc, which works on versions: a pinned
manifest's packs and installed versions are kept; the rest, except the version
``current`` names and the rollback, is deleted."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil

from agent._errors import NotFound
from agent._storage.store_base import INSTALL_RECORD, GcResult, StoreBase
from protocol import (
    Manifest,
    encode_value,
)

__all__ = ["StorePins"]


class StorePins(StoreBase):
    """Manifests, pins and gc of :class:`~agent._storage.store.ChunkStore`."""

    # ------------------------------------------------------------------ manifests

    def put_manifest(self, manifest: Manifest) -> str:
        """Store a manifest (idempotent); its id."""
        mid = manifest.manifest_id
        with self._lock:
            if mid in self._manifests:
                return mid
        self._write_atomic(os.path.join(self._manifests_dir, mid), encode_value(manifest))
        with self._lock:
            self._manifests[mid] = manifest
        return mid

    def get_manifest(self, manifest_id: str) -> Manifest:
        try:
            return self._manifests[manifest_id]
        except KeyError:
            raise NotFound(f"no manifest {manifest_id} in the store") from None

    def manifests(self) -> list[Manifest]:
        """Every stored manifest, by model id then version."""
        from protocol import SemVer

        with self._lock:
            items = list(self._manifests.values())
        return sorted(items, key=lambda m: (m.model_id, SemVer.parse(m.version), m.manifest_id))

    def find_manifest(self, model_id: str, version: str) -> Manifest:
        """The stored manifest of ``(model_id, version)``; :class:`NotFound` if none."""
        found = [m for m in self.manifests() if m.model_id == model_id and m.version == version]
        if not found:
            known = sorted({m.version for m in self.manifests() if m.model_id == model_id})
            hint = f"; stored versions: {', '.join(known)}" if known else \
                "; `shoal models` lists what is stored"
            raise NotFound(f"model {model_id} version {version} is not in the store{hint}")
        found.sort(key=lambda m: (m.manifest_id in self._pinned, m.created_at), reverse=True)
        return found[0]

    def forget_manifests(self, manifest_ids: set[str]) -> list[str]:
        """Delete these manifests' files, except those pinned or of a version held here
        (a pack or an installed version): what the node's ledger retired and nothing on
        this disk needs (``docs/LEDGER.md``). The ids deleted."""
        gone: list[str] = []
        with self._lock:
            held = {d.manifest_id for d in self._dirs.values()}
            for mid in sorted(manifest_ids):
                if mid not in self._manifests or mid in self._pinned or mid in held:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._manifests_dir, mid))
                del self._manifests[mid]
                gone.append(mid)
        return gone

    # ------------------------------------------------------------------ pins and gc

    def pin(self, manifest_id: str) -> None:
        """Keep the versions of this (stored) manifest through gc."""
        with self._lock:
            if manifest_id not in self._manifests:
                raise NotFound(f"cannot pin {manifest_id}: not in the store")
            if manifest_id in self._pinned:
                return
            self._write_atomic(os.path.join(self._pins_dir, manifest_id), b"")
            self._pin_refs(manifest_id)

    def unpin(self, manifest_id: str) -> None:
        with self._lock:
            if manifest_id not in self._pinned:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._pins_dir, manifest_id))
            self._pinned.discard(manifest_id)

    def is_pinned(self, manifest_id: str) -> bool:
        return manifest_id in self._pinned

    def refcount(self, chunk_hash: bytes) -> int:
        """How many pinned manifests name ``chunk_hash`` (a scan of their hash buffers)."""
        with self._lock:
            return sum(1 for manifest_id in self._pinned
                       if any(f.chunks.find(chunk_hash) >= 0
                              for v in self._manifests[manifest_id].variants
                              for f in v.files))

    def _kept_installed(self) -> set[str]:
        """Per model: the version ``current`` names and the newest other (rollback)."""
        kept: set[str] = set()
        by_model: dict[str, list[tuple[float, str]]] = {}
        for d in self._dirs.values():
            if d.installed:
                model_dir = os.path.dirname(os.path.dirname(d.path))
                try:
                    mtime = os.stat(os.path.join(d.path, INSTALL_RECORD)).st_mtime
                except OSError:
                    mtime = 0.0
                by_model.setdefault(model_dir, []).append((mtime, d.path))
        for model_dir, items in by_model.items():
            try:
                cur = os.path.realpath(os.path.join(model_dir, "current"))
            except OSError:
                cur = ""
            kept.add(cur)
            others = sorted((i for i in items if os.path.realpath(i[1]) != cur), reverse=True)
            if others:
                kept.add(os.path.realpath(others[0][1]))
        return kept

    def gc(self) -> GcResult:
        """Delete the versions nothing keeps: packs whose manifest is not pinned, and
        installed versions that are neither pinned, current, nor the rollback."""
        with self._lock:
            kept = self._kept_installed()
            before_chunks, before_bytes = self._n_held, self._bytes
            removed: list[str] = []
            for d in list(self._dirs.values()):
                if d.manifest_id in self._pinned:
                    continue
                if d.installed and os.path.realpath(d.path) in kept:
                    continue
                self._unregister(d.path)
                if d.installed:
                    trash = os.path.join(os.path.dirname(os.path.dirname(d.path)),
                                         f".tmp-install-gc-{secrets.token_hex(4)}")
                    with contextlib.suppress(OSError):
                        os.rename(d.path, trash)
                        shutil.rmtree(trash, ignore_errors=True)
                else:
                    shutil.rmtree(d.path, ignore_errors=True)
                removed.append(d.path)
            freed_chunks = before_chunks - self._n_held
            freed_bytes = before_bytes - self._bytes
            self._gc_runs += 1
            self._gc_chunks += freed_chunks
            self._gc_bytes += freed_bytes
            return GcResult(freed_chunks, freed_bytes, self._n_held, self._bytes,
                            tuple(removed))
