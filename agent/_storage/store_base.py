"""The content store's shared state: what it indexes (directories, holders, the chunks
each lacks), its paths, counters and small records. :class:`ChunkStore`
(``agent/_storage/store.py``) is built on it, with its reads (``store_reads.py``) and
its manifests, pins and gc (``store_pins.py``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent._errors import InsufficientStorage, StoreError
from agent._storage.files import (
    TMP_PREFIX,
    no_space,
    write_all,
)
from agent._storage.index import IndexedDir
from agent._storage.paths import fsync_dir
from protocol import (
    Manifest,
)

__all__ = ["StoreBase", "StoreBatch", "StoreStatistics", "GcResult", "ChunkProblem",
           "PACK_RECORD", "PROGRESS_LOG", "INSTALL_RECORD"]

#: ``preadv`` flag: fail with EAGAIN instead of waiting for the disk (Linux >= 4.14)
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)

#: Largest manifest the store will decode (a manifest of 100k files is a few MiB).
_MAX_MANIFEST = 64 * 1024 * 1024
PACK_RECORD = ".shoal-pack"
PROGRESS_LOG = ".shoal-progress"
INSTALL_RECORD = ".shoal-install"
class StoreBatch:
    """Kept for callers of the earlier API: writes no longer need a group commit (a
    chunk is durable once its version is completed, and the progress log is
    re-verified after a crash)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    chunks: int                 # distinct chunks held (readable from some file)
    bytes: int                  # their total size
    manifests: int              # manifests stored
    pinned: int                 # of those, pinned
    referenced_chunks: int      # distinct chunks referenced by pinned manifests
    puts_new: int               # chunks written since open
    puts_duplicate: int         # puts of a chunk already held (nothing written)
    corrupt_detected: int       # chunks that failed verification (on put or on read)
    quarantined: int            # chunk locations dropped because their bytes were bad
    stale_temporaries_removed: int
    gc_runs: int
    gc_freed_chunks: int
    gc_freed_bytes: int
    versions: int = 0           # installed versions indexed
    packs: int = 0              # packs (published or being fetched)
    staged: int = 0             # of those, not complete yet
    disk_bytes: int = 0         # bytes of all indexed files (what the versions take)


@dataclass(frozen=True, slots=True)
class GcResult:
    chunks_freed: int
    bytes_freed: int
    chunks_kept: int
    bytes_kept: int
    versions_removed: tuple[str, ...] = ()   # directories deleted


@dataclass(frozen=True, slots=True)
class ChunkProblem:
    """One chunk of a manifest that is missing or corrupt in the store."""

    chunk_hash: str
    size: int
    problem: str  # "missing" or "corrupt"


class StoreBase:
    """The state every part of the store shares, and the index's primitives."""

    def __init__(self, root: Path | str, *, fsync: bool = True,
                 models: Path | str | None = None) -> None:
        self.root = Path(root)
        self.models = Path(models) if models is not None else self.root.parent / "models"
        self._fsync = fsync
        self._packs_dir = self.root / "packs"
        self._manifests_dir = self.root / "manifests"
        self._pins_dir = self.root / "pins"
        self._quarantine_dir = self.root / "quarantine"
        self._lock = threading.RLock()
        self._dirs: dict[str, IndexedDir] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        # (no table from hash to the directories that hold or lack it: each directory's
        # index answers by position, docs/JOURNAL.md "issue 16: per-chunk state by
        # position"; the distinct chunks held are counted here)
        self._n_held = 0
        self._bytes = 0
        self._manifests: dict[str, Manifest] = {}
        # (no per-chunk reference counts: refcount() and referenced_chunks are worked out
        # from the pinned manifests when asked, so the store's memory is its index alone)
        self._pinned: set[str] = set()
        self._puts_new = 0
        self._puts_duplicate = 0
        self._corrupt = 0
        self._quarantined = 0
        self._held_tmp: dict[str, int] = {}   # new_pack_dir's directories, held (flock)
        self._stale_removed = 0
        self._gc_runs = 0
        self._gc_chunks = 0
        self._gc_bytes = 0

    # ------------------------------------------------------------------ index

    def _register(self, d: IndexedDir, have: Iterable[bytes] | bytearray | None) -> None:
        """Index ``d`` holding ``have`` (hashes, a bitset over ``d``'s positions, or None:
        every chunk of it)."""
        with self._lock:
            self._dirs[d.path] = d
            key = (d.manifest_id, d.variant_id)
            if key not in self._by_key or d.installed:
                self._by_key[key] = d.path
            d.mark(())
            hashes: Iterable[bytes]
            if have is None:
                hashes = d.hashes()
            elif isinstance(have, bytearray):
                bits = have
                hashes = (h for p, h in enumerate(d.hashes()) if bits[p >> 3] >> (p & 7) & 1)
            else:
                hashes = have
            for h in hashes:
                self._add_have(d, h)

    def _holder_paths(self, h: bytes, exclude: IndexedDir | None = None) -> list[str]:
        """The directories that hold ``h``, in the order they were indexed."""
        return [path for path, d in self._dirs.items() if d is not exclude and d.holds(h)]

    def _wanting_paths(self, h: bytes) -> list[str]:
        """The staged directories (not installed) that lack ``h``."""
        out = []
        for path, d in self._dirs.items():
            if not d.installed:
                p = d.position(h)
                if p >= 0 and not d.has_at(p):
                    out.append(path)
        return out

    def _held(self, h: bytes) -> bool:
        return any(d.holds(h) for d in self._dirs.values())

    def _add_have(self, d: IndexedDir, h: bytes) -> bool:
        """Mark ``h`` present in ``d``; True if the store did not hold it before."""
        p = d.position(h)
        if p < 0 or d.has_at(p):
            return False
        new = not any(o is not d and o.holds(h) for o in self._dirs.values())
        d.set_have(p, True)
        if new:
            self._n_held += 1
            self._bytes += d.chunks.size(p)
        return new

    def _drop_have(self, d: IndexedDir, h: bytes) -> None:
        # (an installed version's files are its model's: a chunk found changed there
        # -- a model that rewrote its own state -- is never written back over it, as
        # :meth:`_wanting_paths` names staged directories only)
        p = d.position(h)
        if p < 0 or not d.set_have(p, False):
            return
        if not any(o is not d and o.holds(h) for o in self._dirs.values()):
            self._n_held -= 1
            self._bytes -= d.chunks.size(p)

    def _unregister(self, path: str) -> IndexedDir | None:
        with self._lock:
            d = self._dirs.get(path)
            if d is None:
                return None
            for h in list(d.held_hashes()):
                self._drop_have(d, h)
            del self._dirs[path]
            key = (d.manifest_id, d.variant_id)
            if self._by_key.get(key) == path:
                del self._by_key[key]
                for other in self._dirs.values():
                    if (other.manifest_id, other.variant_id) == key:
                        self._by_key[key] = other.path
                        break
            if d.progress_fd is not None:
                os.close(d.progress_fd)
                d.progress_fd = None
            return d

    def _rename_dir(self, old: str, new: str, *, installed: bool) -> None:
        """``old`` was renamed to ``new`` on disk: point the index there."""
        with self._lock:
            d = self._dirs.pop(old)
            d.path, d.installed = new, installed
            self._dirs[new] = d
            key = (d.manifest_id, d.variant_id)
            if self._by_key.get(key) == old or installed:
                self._by_key[key] = new

    def locate(self, manifest_id: str, variant_id: str) -> str | None:
        """The indexed directory (installed version or pack) of a variant, if any."""
        return self._by_key.get((manifest_id, variant_id))

    # ------------------------------------------------------------------ paths

    def _pack_path(self, manifest_id: str, variant_id: str) -> str:
        return os.path.join(self._packs_dir, f"{manifest_id}.{variant_id}")

    def _quarantine(self, path: Path | str, name: str) -> None:
        target = self._quarantine_dir / f"{name}.{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            self._quarantined += 1

    def _keep_bad(self, chunk_hash: bytes, data: bytes, where: str, offset: int) -> None:
        """Keep a copy of bytes that failed verification in ``quarantine/`` (for an
        operator to look at; at most one chunk) and say where they were."""
        self._quarantined += 1
        name = f"{chunk_hash.hex()}.{secrets.token_hex(4)}"
        with contextlib.suppress(OSError):
            (self._quarantine_dir / name).write_bytes(data)
            (self._quarantine_dir / f"{name}.where").write_text(f"{where} @ {offset}\n")

    def _write_atomic(self, final: str, data: bytes | memoryview) -> None:
        """Write ``data`` to ``final`` via a temporary in the same directory."""
        directory = os.path.dirname(final)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)   # in use: another store's open leaves it
                write_all(fd, data, 0)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if self._fsync:
                fsync_dir(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._os_error(exc, f"writing {final}") from exc

    def _os_error(self, exc: OSError, what: str) -> StoreError:
        if no_space(exc):
            return InsufficientStorage(
                f"no space left on the device holding {self.root} while {what}; "
                "free space (try `shoal gc`) and retry")
        return StoreError(f"store at {self.root}: {what}: {exc.strerror or exc}")

    @contextlib.contextmanager
    def batch(self) -> Iterator[StoreBatch]:
        """A no-op kept for callers of the earlier API (see :class:`StoreBatch`)."""
        yield StoreBatch()

    def _pin_refs(self, manifest_id: str) -> None:
        self._pinned.add(manifest_id)

    def _referenced_chunks(self) -> int:
        """Distinct chunks the pinned manifests name (worked out when asked)."""
        seen: set[bytes] = set()
        for manifest_id in self._pinned:
            for v in self._manifests[manifest_id].variants:
                for f in v.files:
                    seen.update(f.chunks.iter_hashes())
        return len(seen)
