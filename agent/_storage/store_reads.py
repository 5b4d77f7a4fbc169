"""Reading chunks out of the store: every read is hashed, and a chunk whose bytes on
disk changed is dropped from the index, kept aside in ``quarantine/`` and named in the
error (the swarm fetches it again)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from agent._errors import ChunkCorrupted, ChunkNotFound, StoreError
from agent._storage.files import back_to_back
from agent._storage.store_base import _NOWAIT, ChunkProblem, StoreBase
from protocol import (
    Manifest,
    chunk_matches,
)

__all__ = ["StoreReads"]

class StoreReads(StoreBase):
    """The reads of :class:`~agent._storage.store.ChunkStore`."""

    # ------------------------------------------------------------------ reads

    def has(self, chunk_hash: bytes) -> bool:
        # (no lock, as a dict probe needed none: a snapshot of the directories)
        return any(d.holds(chunk_hash) for d in list(self._dirs.values()))

    __contains__ = has

    def size_of(self, chunk_hash: bytes) -> int | None:
        for d in list(self._dirs.values()):     # (no lock: see has)
            p = d.position(chunk_hash)
            if p >= 0 and d.has_at(p):
                return d.chunks.size(p)
        return None

    def hashes(self) -> set[bytes]:
        """A copy of the set of held chunk hashes (what the node machine calls ``held``)."""
        with self._lock:
            out: set[bytes] = set()
            for d in self._dirs.values():
                out.update(d.held_hashes())
            return out

    def __len__(self) -> int:
        return self._n_held

    def get(self, chunk_hash: bytes) -> bytes:
        """The chunk's bytes, read from a file that holds it and verified.

        A location whose bytes do not match is dropped (and repaired by the next put
        of the chunk); :class:`ChunkCorrupted` when no good copy is left."""
        corrupt = False
        for _ in range(8):
            with self._lock:
                holders = self._holder_paths(chunk_hash)
                if not holders:
                    break
                path = holders[0]
                d = self._dirs[path]
                rel, off = d.place(chunk_hash)
                size = d.size(chunk_hash)
            full = os.path.join(path, *rel.split("/"))
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    data = os.pread(fd, size, off)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                with self._lock:
                    if self._dirs.get(path) is not d:
                        continue          # renamed or removed meanwhile: look again
                data = b""
            except OSError as exc:
                raise StoreError(f"cannot read chunk {chunk_hash.hex()}: "
                                 f"{exc.strerror or exc}") from exc
            if chunk_matches(chunk_hash, size, data):
                return data
            with self._lock:
                corrupt = True
                self._corrupt += 1
                if self._dirs.get(path) is d:
                    self._drop_have(d, chunk_hash)
                    self._keep_bad(chunk_hash, data, full, off)
        if corrupt:
            raise ChunkCorrupted(f"chunk {chunk_hash.hex()} on disk does not match its hash; "
                                 "dropped from the index, it will be fetched again",
                                 chunk_hashes=(chunk_hash,))
        raise ChunkNotFound(f"chunk {chunk_hash.hex()} is not in the store",
                            chunk_hashes=(chunk_hash,))

    def get_cached(self, chunk_hash: bytes) -> bytes | None:
        """The chunk's verified bytes when they can be had without waiting (see
        :meth:`read_cached_into`); None otherwise."""
        try:       # (no lock: a holder may go meanwhile; read_cached_into checks again)
            size = self.size_of(chunk_hash)
        except KeyError:
            return None
        if size is None:
            return None
        buf = bytearray(size)
        return bytes(buf) if self.read_cached_into(chunk_hash, memoryview(buf)) else None

    def read_cached_into(self, chunk_hash: bytes, buf: memoryview) -> bool:
        """Read the chunk into ``buf`` (exactly its size) and verify it, when that can
        be done without waiting: the index lock is free and every byte is in the page
        cache (``preadv`` with ``RWF_NOWAIT``, which fails rather than wait for the
        disk). False otherwise, and on any doubt (a short read, a mismatch, an error):
        :meth:`get` in a worker thread then reads, verifies and quarantines as usual.
        Meant for the event loop's thread, where a worker-thread hop per read costs
        more than the read."""
        if _NOWAIT is None or not self._lock.acquire(blocking=False):
            return False
        try:
            holders = self._holder_paths(chunk_hash)
            if not holders:
                return False
            path = holders[0]
            d = self._dirs[path]
            rel, off = d.place(chunk_hash)
            size = d.size(chunk_hash)
        finally:
            self._lock.release()
        if len(buf) != size:
            return False
        try:
            fd = os.open(os.path.join(path, *rel.split("/")),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                n = os.preadv(fd, [buf], off, _NOWAIT)
            finally:
                os.close(fd)
        except OSError:         # EAGAIN: not all of it cached; or gone, or anything else
            return False
        return n == size and chunk_matches(chunk_hash, size, buf)

    def read_cached_many(self, chunks: Sequence[tuple[bytes, memoryview]]) -> list[bool]:
        """:meth:`read_cached_into` for several chunks (a run to serve), each answer
        as it would give: the index is looked up under one lock, each file opened
        once, and chunks that lie back to back in one file are read with one
        ``preadv`` (a short read leaves the chunks it did not cover False). Every
        chunk read is verified on its own."""
        ok = [False] * len(chunks)
        if _NOWAIT is None or not self._lock.acquire(blocking=False):
            return ok
        plan: list[tuple[int, str, int, int]] = []      # (chunk, file, offset, size)
        try:
            for k, (chunk_hash, buf) in enumerate(chunks):
                holders = self._holder_paths(chunk_hash)
                if not holders:
                    continue
                d = self._dirs[holders[0]]
                rel, off = d.place(chunk_hash)
                if len(buf) == d.size(chunk_hash):
                    plan.append((k, os.path.join(holders[0], *rel.split("/")), off, len(buf)))
        finally:
            self._lock.release()
        fds: dict[str, int] = {}
        try:
            for i, j in back_to_back([(name, off, size) for _, name, off, size in plan]):
                _, name, start, _ = plan[i]
                try:
                    if name not in fds:
                        fds[name] = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    n = os.preadv(fds[name], [chunks[x[0]][1] for x in plan[i:j]], start,
                                  _NOWAIT)
                except OSError:   # EAGAIN: not all of it cached; or gone, or anything else
                    n = 0
                for k, _, off, size in plan[i:j]:
                    if off + size - start > n:
                        break
                    ok[k] = chunk_matches(chunks[k][0], size, chunks[k][1])
        finally:
            for fd in fds.values():
                os.close(fd)
        return ok

    def check(self, chunk_hash: bytes, size: int) -> str | None:
        """Re-read and verify one chunk: None when good, else ``"missing"``/``"corrupt"``."""
        try:
            data = self.get(chunk_hash)
        except ChunkNotFound:
            return "missing"
        except ChunkCorrupted:
            return "corrupt"
        return None if len(data) == size else "corrupt"

    def verify_manifest(self, manifest: Manifest,
                        variant_ids: Iterable[str] | None = None) -> list[ChunkProblem]:
        """Re-read every chunk of the manifest (or of the named variants) and verify it."""
        wanted = set(variant_ids) if variant_ids is not None else None
        problems: list[ChunkProblem] = []
        seen: set[bytes] = set()
        for v in manifest.variants:
            if wanted is not None and v.variant_id not in wanted:
                continue
            for ref in v.chunk_refs():
                if ref.hash in seen:
                    continue
                seen.add(ref.hash)
                problem = self.check(ref.hash, ref.size)
                if problem is not None:
                    problems.append(ChunkProblem(ref.hash.hex(), ref.size, problem))
        return problems
