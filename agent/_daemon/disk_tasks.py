"""The daemon's disk work: the ledger saved, chunks written in place as they arrive,
installs, and the removal of versions a node no longer keeps. Each runs in a worker
thread; what the machine must hear of comes back through the machine task's inbox
(``agent/_daemon/runtime.py``, whose :class:`NodeRuntime` this class is a part of)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from agent._daemon.health import HealthMonitor
from agent._daemon.inbox import (
    ChunkMissing,
    ChunksGone,
    ChunkStored,
    ChunkStoreFailed,
    InboxEvent,
    InstallDone,
)
from agent._daemon.migrator import ingest_hook
from agent._errors import (
    AgentError,
    ChunkCorrupted,
    ChunkNotFound,
    InsufficientStorage,
    StoreError,
)
from agent._storage.install import Installer
from agent._storage.paths import DataDir
from agent._storage.persist import save_ledger
from agent._storage.store import ChunkStore
from protocol import (
    BlockerReason,
    InstallVariant,
    Manifest,
    NodeMachine,
    ProtocolError,
    RemoveVersions,
    StoreChunk,
)

__all__ = ["STORE_BATCH", "STORE_WORKERS", "DiskTasks"]

log = logging.getLogger("shoal.daemon")

STORE_WORKERS = 2            # store workers writing chunks at once
STORE_BATCH = 32             # chunks a run sent to a store worker holds at most
_STORE_GATHER = 8            # ... for which a store worker waits at most
_STORE_GATHER_S = 0.002      # ... seconds before it writes what it has


class DiskTasks:
    """The disk side of :class:`~agent._daemon.runtime.NodeRuntime` (which sets these)."""

    store: ChunkStore
    installer: Installer
    machine: NodeMachine
    health: HealthMonitor
    migrator_timeout: float
    migrator_allow_remote: bool
    _store_recv: trio.MemoryReceiveChannel[list[StoreChunk]]
    _installs: int
    node_id: str
    data: DataDir
    clock: Callable[[], float]
    ledger_save_interval: float
    _saves: int
    _saved_own: int
    _owed_own: int
    _saved_vv: dict[str, int]
    _last_save: float
    _save_retry_at: float
    _stored_manifests: set[str]
    _store_keeps: set[str]          # forgotten by the ledger, still needed on this disk
    _saved_manifests: int           # manifests the ledger held at the last save

    def post(self, event: InboxEvent) -> None:
        raise NotImplementedError

    def _track_stored_manifests(self) -> None:
        """Start from the manifests the store holds (the ledger's are added on save)."""
        self._stored_manifests = {m.manifest_id for m in self.store.manifests()}
        self._store_keeps = set()
        self._saved_manifests = 0

    async def _read_served(self, hashes: list[bytes]) -> dict[bytes, bytes]:
        """The verified bytes of the chunks to serve that the store can give: those in
        the page cache read and verified here (a worker-thread hop costs more than
        that), the rest in one worker-thread call."""
        chunks: dict[bytes, bytes] = {}
        for h in hashes:
            data = self.store.get_cached(h)
            if data is not None:
                chunks[h] = data
        rest = [h for h in hashes if h not in chunks]
        if rest:
            chunks.update(await trio.to_thread.run_sync(self._read_chunks, rest))
        return chunks

    def _read_chunks(self, hashes: list[bytes]) -> dict[bytes, bytes]:
        """The verified bytes of each chunk the store can give (worker thread)."""
        out: dict[bytes, bytes] = {}
        for h in hashes:
            try:
                out[h] = self.store.get(h)
            except (ChunkNotFound, ChunkCorrupted, StoreError) as exc:
                log.warning("cannot serve chunk %s: %s", h.hex()[:16], exc)
        return out

    async def _save_if_due(self) -> None:
        """Save changes that are not the node's own at most every
        ``ledger_save_interval`` seconds, and retry a save that failed."""
        vv = self.machine.ledger.version_vector
        now = self.clock()
        # (a retirement pass that forgot a manifest moves no vector: its file goes too)
        forgot = len(self.machine.ledger.bodies()) < self._saved_manifests
        if self._owed_own > self._saved_own or (
                (vv != self._saved_vv or forgot)
                and now - self._last_save >= self.ledger_save_interval):
            await self._save(now)

    async def _save(self, now: float) -> None:
        """Save the ledger (and the manifests new in it) unless a failed save waits out
        its retry delay."""
        if now < self._save_retry_at:
            return
        ledger = self.machine.ledger
        # top_counter, not the vector: while this node's gap is open (a first start, a
        # lost ledger) its own writes are held but not claimed in the vector
        vv, own = ledger.version_vector, ledger.top_counter(self.node_id)
        try:
            await trio.to_thread.run_sync(save_ledger, self.data.root, ledger)
            self._saved_own, self._saved_vv, self._last_save = own, vv, now
            self._saves += 1
            live = {m.manifest_id: m for m in ledger.bodies()}
            self._saved_manifests = len(live)
            for mid, manifest in live.items():
                if mid not in self._stored_manifests:
                    await trio.to_thread.run_sync(self.store.put_manifest, manifest)
                    self._stored_manifests.add(mid)
            # forgotten by the ledger: the store drops those no version on this disk needs
            if retired := self._stored_manifests - live.keys() - self._store_keeps:
                gone = await trio.to_thread.run_sync(self.store.forget_manifests, retired)
                self._stored_manifests -= set(gone)
                self._store_keeps |= retired - set(gone)
        except AgentError as exc:
            # disk full or unwritable: keep serving and retry; own counters are
            # wall-clock floored, so an unsaved own entry is never reused
            self._save_retry_at = now + 1.0
            log.error("could not save the ledger: %s; retrying in 1 s", exc)

    async def _remove_versions(self, out: RemoveVersions) -> None:
        """Delete versions the machine no longer keeps, and tell it which chunks went."""
        def remove() -> set[bytes]:
            before = self.store.hashes()
            for version in out.versions:
                try:
                    if self.installer.remove(out.model_id, version):
                        log.info("removed %s %s from disk (not kept)", out.model_id, version,
                                 extra={"model_id": out.model_id, "version": version})
                except AgentError as exc:
                    log.error("could not remove %s %s: %s", out.model_id, version, exc,
                              extra={"model_id": out.model_id, "version": version})
            return before - self.store.hashes()
        gone = await trio.to_thread.run_sync(remove)
        self._store_keeps.clear()        # a version left the disk: its manifest may go too
        if gone:
            self.post(ChunksGone(frozenset(gone)))

    async def _store_worker(self) -> None:
        """Write verified chunks in place, into the staged files of the versions being
        fetched: every chunk waiting is written in one call, and each is reported stored
        once it is written and named in its pack's progress log (after a crash the log's
        chunks are re-read and hashed, so ``held`` never names a chunk that is not
        there). The files are fsynced once each, when the version is complete."""
        while True:
            # a run of chunks a machine step stored (a Pieces run: up to 32); a short one
            # waits a little for more before the worker-thread hop, which costs more than
            # writing one 128 KiB chunk
            batch = await self._store_recv.receive()
            with trio.move_on_after(_STORE_GATHER_S):
                while len(batch) < _STORE_GATHER:
                    batch = batch + await self._store_recv.receive()
            targets = self._download_targets()
            results = await trio.to_thread.run_sync(
                self._write_chunks, targets, [(o.chunk_hash, o.data) for o in batch])
            stored = tuple(out.chunk_hash for out, failure in zip(batch, results, strict=True)
                           if failure is None)
            if stored:
                self.post(ChunkStored(stored))
            for out, failure in zip(batch, results, strict=True):
                if failure is None:
                    continue
                if isinstance(failure, InsufficientStorage):
                    self.post(ChunkStoreFailed(out.chunk_hash,
                                               BlockerReason.INSUFFICIENT_STORAGE, str(failure)))
                else:
                    self.post(ChunkStoreFailed(out.chunk_hash, BlockerReason.UNKNOWN,
                                               str(failure)))

    def _download_targets(self) -> list[tuple[Manifest, str]]:
        """The variants the swarm fetches now (``manifest_id/variant_id`` keys): their
        packs must be staged before their chunks can be written in place."""
        out = []
        for key in self.machine.swarm.wanted():
            mid, _, variant_id = key.partition("/")
            manifest = self.machine.ledger.manifest_by_id(mid)
            if manifest is not None and self.store.locate(mid, variant_id) is None:
                out.append((manifest, variant_id))
        return out

    def _write_chunks(self, targets: list[tuple[Manifest, str]],
                      chunks: list[tuple[bytes, bytes | memoryview]]) -> list[Exception | None]:
        """Stage the packs of new downloads, then write verified chunks in place
        (worker thread)."""
        for manifest, variant_id in targets:
            try:
                self.store.stage(manifest, variant_id)
            except StoreError as exc:
                return [exc] * len(chunks)
        return self.store.put_verified_batch(chunks)

    async def _install(self, out: InstallVariant) -> None:
        manifest = self.machine.ledger.manifest_by_id(out.manifest_id)
        ok, reason, detail = False, BlockerReason.DEPLOYMENT_FAILED, ""
        gone: tuple[bytes, ...] = ()
        if manifest is None:
            detail = f"manifest {out.manifest_id} is not in the ledger"
        else:
            try:
                res = await trio.to_thread.run_sync(self._install_sync, manifest,
                                                    out.variant_id, out.previous_version)
                ok = True
                detail = f"installed at {res}"
                self._installs += 1
                log.info("installed %s %s (%s)", out.model_id, out.version, out.variant_id,
                         extra={"model_id": out.model_id, "version": out.version})
            except InsufficientStorage as exc:
                reason, detail = BlockerReason.INSUFFICIENT_STORAGE, str(exc)
            except AgentError as exc:
                detail = str(exc)
                gone = exc.chunk_hashes   # held chunks found bad or gone (a model that
                for h in gone:            # rewrote its own installed file): fetch them
                    self.post(ChunkMissing(h))
            except (ProtocolError, OSError) as exc:
                detail = str(exc)
        if not ok:
            log.error("install of %s %s failed: %s", out.model_id, out.version, detail,
                      extra={"model_id": out.model_id, "version": out.version})
        unhealthy = None
        if ok and manifest is not None:     # the model is `loading` until this settles
            unhealthy = await self.health.after_install(manifest, out.variant_id)
        if gone and not ok:
            log.warning("install of %s %s found %d chunk(s) bad or gone; fetching them "
                        "again", out.model_id, out.version, len(gone),
                        extra={"model_id": out.model_id, "version": out.version})
        self.post(InstallDone(out.model_id, out.version, out.variant_id, ok,
                              None if ok else reason, detail, unhealthy,
                              refetch=bool(gone) and not ok))

    def _running_version(self, model_id: str) -> str | None:
        st = self.machine.model_state(model_id)
        return None if st is None else st.active_version

    def _install_sync(self, manifest: Manifest, variant_id: str,
                      previous_version: str | None = None) -> str:
        self.store.put_manifest(manifest)
        # a version with a migrator ingests the state of the one it replaces before
        # it is activated (agent/_daemon/migrator.py); on failure the node stays on the old one
        prepare = ingest_hook(self.installer, manifest, variant_id, previous_version,
                              timeout=self.migrator_timeout,
                              allow_remote=self.migrator_allow_remote)
        return self.installer.install(manifest, variant_id, prepare=prepare).path
