"""The on-disk content store: chunks named by their BLAKE3 hash, and manifests.

Theory of operation
-------------------
Each chunk is one file, ``chunks/<first byte hex>/<full hex>``. A chunk is
never visible under its name until its bytes are complete and checked:
:meth:`ChunkStore.put` verifies the bytes against the name, writes them to a
temporary name (``.tmp-…``) *in the same directory*, fsyncs the file, renames
it onto the final name (atomic on POSIX) and fsyncs the directory. A writer
killed at any moment leaves at most a temporary, which the next
:class:`ChunkStore` removes when it opens. A full disk (ENOSPC/EDQUOT) removes
the temporary and raises :class:`InsufficientStorage`.

Reads verify too: :meth:`ChunkStore.get` hashes what it read, and a chunk whose
bytes no longer match its name (bit rot, a tampered file, a power cut that lost
unsynced data) raises :class:`ChunkCorrupted` after the file is moved to
``quarantine/`` and dropped from the index, so the swarm fetches it again.

The set of held hashes is kept in memory (built by listing the shard
directories at open) — the node state machine needs it as a set, and
``has()`` must not touch the disk.

Manifests live in ``manifests/<manifest_id>`` (codec-encoded, written the same
atomic way). A *pinned* manifest (``pins/<manifest_id>``) holds a reference on
every chunk it lists; :meth:`ChunkStore.gc` deletes the chunks no pinned
manifest references and reports what it freed. Reference counts are derived
from the pinned manifests at open, so they can never drift from the disk.

A :meth:`ChunkStore.batch` is a group commit (publishing, and the daemon's
writes of received chunks): the fsyncs of the chunks put with ``batch=`` are
deferred to the end of the batch: the chunk files and their shard directories are
fsynced when the batch ends, concurrently, so a few journal commits cover
them all instead of one per chunk (docs/STORAGE.md). The rename is still atomic,
so no partial chunk is ever visible; a manifest must only be written after the
batch that stored its chunks has ended.

The store is safe to use from several threads of one process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent._errors import ChunkCorrupted, ChunkNotFound, InsufficientStorage, NotFound, StoreError
from agent._storage.paths import fsync_dir
from protocol import (
    HASH_SIZE,
    MalformedMessage,
    Manifest,
    chunk_matches,
    decode_value,
    encode_value,
)

__all__ = ["ChunkStore", "StoreBatch", "StoreStatistics", "GcResult", "ChunkProblem"]

_TMP_PREFIX = ".tmp-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: Largest manifest the store will decode (a manifest of 100k files is a few MiB).
_MAX_MANIFEST = 64 * 1024 * 1024
_SYNC_THREADS = 16
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _fsync_pool() -> ThreadPoolExecutor:
    """The process's pool of fsync threads, started on first use and kept (a daemon
    commits a batch of received chunks many times a second: threads are not started
    for each)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_SYNC_THREADS,
                                       thread_name_prefix="shoal-fsync")
        return _pool


class StoreBatch:
    """The files a group commit (:meth:`ChunkStore.batch`) still has to fsync."""

    __slots__ = ("_lock", "_files", "_dirs")

    def __init__(self) -> None:
        self._lock = threading.Lock()   # puts of one batch may come from several threads
        self._files: list[str] = []
        self._dirs: set[str] = set()

    def _dirty(self, path: str, directory: str) -> None:
        with self._lock:
            self._files.append(path)
            self._dirs.add(directory)

    def _take(self) -> tuple[list[str], list[str]]:
        with self._lock:
            files, dirs = self._files, sorted(self._dirs)
            self._files, self._dirs = [], set()
        return files, dirs


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    chunks: int                 # chunks held
    bytes: int                  # their total size
    manifests: int              # manifests stored
    pinned: int                 # of those, pinned
    referenced_chunks: int      # distinct chunks referenced by pinned manifests
    puts_new: int               # chunks written since open
    puts_duplicate: int         # puts of a chunk already held (nothing written)
    corrupt_detected: int       # chunks that failed verification (on put or on read)
    quarantined: int            # files moved to quarantine/ since open
    stale_temporaries_removed: int
    gc_runs: int
    gc_freed_chunks: int
    gc_freed_bytes: int


@dataclass(frozen=True, slots=True)
class GcResult:
    chunks_freed: int
    bytes_freed: int
    chunks_kept: int
    bytes_kept: int


@dataclass(frozen=True, slots=True)
class ChunkProblem:
    """One chunk of a manifest that is missing or corrupt in the store."""

    chunk_hash: str
    size: int
    problem: str  # "missing" or "corrupt"


def _is_hex_name(name: str) -> bool:
    if len(name) != 2 * HASH_SIZE:
        return False
    try:
        bytes.fromhex(name)
    except ValueError:
        return False
    return name == name.lower()


class ChunkStore:
    """Chunks and manifests under ``root`` (created if missing)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._fsync = fsync
        self._chunks_dir = self.root / "chunks"
        self._manifests_dir = self.root / "manifests"
        self._pins_dir = self.root / "pins"
        self._quarantine_dir = self.root / "quarantine"
        self._lock = threading.RLock()
        self._sizes: dict[bytes, int] = {}
        self._bytes = 0
        self._manifests: dict[str, Manifest] = {}
        self._pinned: set[str] = set()
        self._refs: dict[bytes, int] = {}
        self._puts_new = 0
        self._puts_duplicate = 0
        self._corrupt = 0
        self._quarantined = 0
        self._stale_removed = 0
        self._gc_runs = 0
        self._gc_chunks = 0
        self._gc_bytes = 0
        try:
            for d in (self._chunks_dir, self._manifests_dir, self._pins_dir,
                      self._quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            raise StoreError(f"cannot open the content store at {self.root}: "
                             f"{exc.strerror or exc}") from exc

    # ------------------------------------------------------------------ open

    def _scan(self) -> None:
        for shard in os.scandir(self._chunks_dir):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    self._stale_removed += 1
                elif _is_hex_name(entry.name) and entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    self._sizes[bytes.fromhex(entry.name)] = size
                    self._bytes += size
        for entry in os.scandir(self._manifests_dir):
            if entry.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                self._stale_removed += 1
                continue
            if not _is_hex_name(entry.name):
                continue
            manifest = self._read_manifest_file(Path(entry.path))
            if manifest is not None:
                self._manifests[manifest.manifest_id] = manifest
        for entry in os.scandir(self._pins_dir):
            if entry.name in self._manifests:
                self._pin_refs(entry.name)

    def _read_manifest_file(self, path: Path) -> Manifest | None:
        data = path.read_bytes()
        try:
            manifest = decode_value(Manifest, data, max_size=_MAX_MANIFEST)
        except MalformedMessage:
            manifest = None
        if manifest is None or manifest.manifest_id != path.name:
            self._quarantine(path, f"manifest-{path.name}")
            return None
        return manifest

    # ------------------------------------------------------------------ paths

    def _chunk_path(self, chunk_hash: bytes) -> str:
        hx = chunk_hash.hex()
        return os.path.join(self._chunks_dir, hx[:2], hx)

    def _quarantine(self, path: Path | str, name: str) -> None:
        target = self._quarantine_dir / f"{name}.{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            self._quarantined += 1

    # ------------------------------------------------------------------ writes

    def _write_atomic(self, final: str, data: bytes | memoryview,
                      batch: StoreBatch | None = None) -> None:
        """Write ``data`` to ``final`` via a temporary in the same directory.

        Inside ``batch`` the fsyncs are left to the end of that batch."""
        directory = os.path.dirname(final)
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self._fsync and batch is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno in _NO_SPACE:
                raise InsufficientStorage(
                    f"no space left on the device holding {self.root} while writing "
                    f"{len(data)} bytes; free space (try `shoal gc`) and retry") from exc
            raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from exc
        if not self._fsync:
            return
        if batch is not None:
            batch._dirty(final, directory)
            return
        fsync_dir(directory)

    @contextlib.contextmanager
    def batch(self) -> Iterator[StoreBatch]:
        """A group commit: the chunks put with ``batch=`` this batch are fsynced together.

        Renames stay atomic (a killed writer still leaves nothing partial); the
        batch only ends — and a manifest may only be written — once every file
        and directory touched through it is fsynced. One journal commit then covers
        them all, instead of one per chunk. Batches are independent: several
        threads may each run their own at once. If the flush fails (a full disk
        can report ENOSPC only then: :class:`InsufficientStorage`), the batch's
        chunks are dropped from the store again before the error is raised.
        """
        b = StoreBatch()
        try:
            yield b
        finally:
            files, dirs = b._take()
            if self._fsync:
                try:
                    self._sync_paths(files, dirs)
                except StoreError:
                    self._discard(files)
                    raise

    def _discard(self, files: list[str]) -> None:
        """Drop chunk files whose group commit failed: a chunk is only held once it is
        durable, so a later put of it writes (and flushes) it again."""
        for path in files:
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(ValueError):
                self._forget(bytes.fromhex(os.path.basename(path)))

    @staticmethod
    def _fsync_file(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # collected meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_paths(self, files: list[str], dirs: list[str]) -> None:
        # fsyncs issued concurrently share journal commits, so a batch needs far fewer
        try:
            if len(files) > 1:
                list(_fsync_pool().map(self._fsync_file, files))
            else:
                for path in files:
                    self._fsync_file(path)
            for d in dirs:
                fsync_dir(d)
        except OSError as exc:
            if exc.errno in _NO_SPACE:   # delayed allocation can report it only here
                raise InsufficientStorage(
                    f"no space left on the device holding {self.root} while flushing "
                    f"{len(files)} chunks; free space (try `shoal gc`) and retry") from exc
            raise StoreError(f"cannot flush the content store at {self.root}: "
                             f"{exc.strerror or exc}") from exc

    def put(self, chunk_hash: bytes, data: bytes, *, trusted_hash: bool = False,
            batch: StoreBatch | None = None) -> bool:
        """Store a chunk; True if it was new, False if already held.

        The bytes are verified against ``chunk_hash`` first (a mismatch raises
        :class:`ChunkCorrupted` and nothing is written) unless ``trusted_hash``
        says the caller computed the hash from these very bytes a moment ago.
        With ``batch`` the chunk is durable only once that batch has ended.
        """
        if self.has(chunk_hash):
            with self._lock:
                self._puts_duplicate += 1
            return False
        if not trusted_hash and not chunk_matches(chunk_hash, len(data), data):
            with self._lock:
                self._corrupt += 1
            raise ChunkCorrupted(f"chunk {chunk_hash.hex()}: {len(data)} bytes offered do not "
                                 "match its BLAKE3 name; not stored")
        self._write_atomic(self._chunk_path(chunk_hash), data, batch)
        with self._lock:
            if chunk_hash in self._sizes:  # another thread stored it meanwhile
                self._puts_duplicate += 1
                return False
            self._sizes[chunk_hash] = len(data)
            self._bytes += len(data)
            self._puts_new += 1
        return True

    # ------------------------------------------------------------------ reads

    def put_verified_batch(self, chunks: list[tuple[bytes, bytes]]) -> list[Exception | None]:
        """Write chunks whose bytes were verified against their hashes under one group
        commit; per chunk, None or why it failed (a failed flush fails them all)."""
        results: list[Exception | None] = []
        try:
            with self.batch() as group:
                for chunk_hash, data in chunks:
                    try:
                        self.put(chunk_hash, data, trusted_hash=True, batch=group)
                        results.append(None)
                    except (StoreError, OSError) as exc:
                        results.append(exc)
        except (StoreError, OSError) as exc:     # the flush at the end of the batch
            return [exc] * len(chunks)
        return results

    def has(self, chunk_hash: bytes) -> bool:
        return chunk_hash in self._sizes

    __contains__ = has

    def size_of(self, chunk_hash: bytes) -> int | None:
        return self._sizes.get(chunk_hash)

    def hashes(self) -> set[bytes]:
        """A copy of the set of held chunk hashes (what the node machine calls ``held``)."""
        with self._lock:
            return set(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def get(self, chunk_hash: bytes) -> bytes:
        """The chunk's bytes, verified; :class:`ChunkCorrupted` (and quarantined) if not."""
        path = self._chunk_path(chunk_hash)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._forget(chunk_hash)
            raise ChunkNotFound(f"chunk {chunk_hash.hex()} is not in the store") from None
        except OSError as exc:
            raise StoreError(f"cannot read chunk {chunk_hash.hex()}: "
                             f"{exc.strerror or exc}") from exc
        expected = self._sizes.get(chunk_hash, len(data))
        if not chunk_matches(chunk_hash, len(data), data) or len(data) != expected:
            with self._lock:
                self._corrupt += 1
            self._quarantine(path, chunk_hash.hex())
            self._forget(chunk_hash)
            raise ChunkCorrupted(f"chunk {chunk_hash.hex()} on disk does not match its hash; "
                                 "moved to quarantine, it will be fetched again")
        return data

    def _forget(self, chunk_hash: bytes) -> None:
        with self._lock:
            size = self._sizes.pop(chunk_hash, None)
            if size is not None:
                self._bytes -= size

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
        # several manifests for one version can only come from different publishers;
        # prefer the pinned, then the newest
        found.sort(key=lambda m: (m.manifest_id in self._pinned, m.created_at), reverse=True)
        return found[0]

    # ------------------------------------------------------------------ pins and gc

    def _pin_refs(self, manifest_id: str) -> None:
        self._pinned.add(manifest_id)
        for ref in {c.hash for c in self._manifests[manifest_id].iter_chunks()}:
            self._refs[ref] = self._refs.get(ref, 0) + 1

    def pin(self, manifest_id: str) -> None:
        """Keep the chunks of this (stored) manifest through gc."""
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
            for ref in {c.hash for c in self._manifests[manifest_id].iter_chunks()}:
                left = self._refs.get(ref, 0) - 1
                if left > 0:
                    self._refs[ref] = left
                else:
                    self._refs.pop(ref, None)

    def is_pinned(self, manifest_id: str) -> bool:
        return manifest_id in self._pinned

    def refcount(self, chunk_hash: bytes) -> int:
        return self._refs.get(chunk_hash, 0)

    def gc(self) -> GcResult:
        """Delete every chunk that no pinned manifest references; what was freed."""
        with self._lock:
            victims = [(h, s) for h, s in self._sizes.items() if h not in self._refs]
            freed_chunks = freed_bytes = 0
            for h, size in victims:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._chunk_path(h))
                self._forget(h)
                freed_chunks += 1
                freed_bytes += size
            self._gc_runs += 1
            self._gc_chunks += freed_chunks
            self._gc_bytes += freed_bytes
            return GcResult(freed_chunks, freed_bytes, len(self._sizes), self._bytes)

    def statistics(self) -> StoreStatistics:
        with self._lock:
            return StoreStatistics(
                chunks=len(self._sizes),
                bytes=self._bytes,
                manifests=len(self._manifests),
                pinned=len(self._pinned),
                referenced_chunks=len(self._refs),
                puts_new=self._puts_new,
                puts_duplicate=self._puts_duplicate,
                corrupt_detected=self._corrupt,
                quarantined=self._quarantined,
                stale_temporaries_removed=self._stale_removed,
                gc_runs=self._gc_runs,
                gc_freed_chunks=self._gc_chunks,
                gc_freed_bytes=self._gc_bytes,
            )
