"""The on-disk content store: an index of chunks inside the files of the versions kept.

Theory of operation
-------------------
There is one copy of a model's bytes on disk: the files of its versions. The store
does not hold chunk files; it is an index, for every chunk of every version the node
keeps, of where its bytes are: ``hash -> (directory, file, offset)``. Two kinds of
directory are indexed:

* **installed versions**, ``models/<model>/versions/<version>/`` with their install
  record ``.shoal-install`` (manifest id, variant);
* **packs**, ``store/packs/<manifest id>.<variant>/``: the files of a variant that is
  published here (``shoal publish`` writes the package's files into a pack in the same
  pass that chunks and hashes them) or being fetched (a *staged* pack). A pack's
  record is ``.shoal-pack``. Installing a variant renames its pack into
  ``versions/<version>`` (same filesystem): no copy.

A staged pack is made of its final files, preallocated (``posix_fallocate``, so a full
disk is found before any byte is fetched). Each verified chunk is written straight to
its offset(s) (:meth:`ChunkStore.put`), and its hash is then appended to the pack's
progress log ``.shoal-progress``. When the pack is completed (:meth:`ChunkStore.complete`),
the chunks it lacks are copied from the files that hold them (``os.copy_file_range``,
which shares extents on XFS and btrfs), every file is fsynced once, every chunk range
is re-read and hashed (but for the chunks this process wrote from bytes it had just
verified: the re-read would only hash the page cache's copy of them), and the progress
log is removed. After a crash the progress log
says which chunks were written; each is re-read and hashed when the store opens (a
power cut may have lost unsynced bytes), so a node refetches no chunk it had verified
and written, and never counts one that is not there.

Reads verify: :meth:`ChunkStore.get` reads the chunk from one of the files that hold it
and hashes it. A mismatch (bit rot, a tampered file) drops that location from the index
(the range is remembered as *wanted*, so the next :meth:`put` of the chunk repairs it in
place); if no good copy is left the chunk is no longer held, :class:`ChunkCorrupted` is
raised and the swarm fetches it again. Bad bytes are never served.

Manifests live in ``manifests/<manifest_id>`` and pins in ``pins/<manifest_id>``.
:meth:`ChunkStore.gc` works on versions: it deletes packs whose manifest is not pinned,
and installed versions that are neither pinned, current, nor the newest other
installed version of their model (the rollback).

A data directory written by the earlier layout (one file per chunk under
``chunks/``) is converted when the store opens: the chunks a pinned manifest needs
that no installed version holds are written into staged packs, then ``chunks/`` is
removed. Installed versions, pins and manifests are kept as they are.

The store is safe to use from several threads of one process. Its shared state and
index primitives are in ``store_base.py``, its reads in ``store_reads.py``, its
manifests, pins and gc in ``store_pins.py``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent._errors import ChunkCorrupted, ChunkNotFound, StoreError
from agent._storage.files import (
    TMP_PREFIX,
    copy_range,
    create_file,
    fsync_path,
    hold,
    in_use,
    io_pool,
    preallocate,
    pwrite_runs,
    read_record,
    write_all,
    write_record,
)
from agent._storage.index import (
    IndexedDir,
    new_dir,
)
from agent._storage.legacy import convert_legacy
from agent._storage.paths import confine, fsync_dir
from agent._storage.store_base import (
    _MAX_MANIFEST,
    INSTALL_RECORD,
    PACK_RECORD,
    PROGRESS_LOG,
    ChunkProblem,
    GcResult,
    StoreBatch,
    StoreStatistics,
)
from agent._storage.store_pins import StorePins
from agent._storage.store_reads import StoreReads
from protocol import (
    HASH_SIZE,
    InvalidValue,
    MalformedMessage,
    Manifest,
    chunk_matches,
    decode_value,
)

__all__ = ["ChunkStore", "StoreBatch", "StoreStatistics", "GcResult", "ChunkProblem",
           "PACK_RECORD", "PROGRESS_LOG", "INSTALL_RECORD", "copy_range", "create_file",
           "preallocate", "fsync_path", "io_pool"]

class ChunkStore(StoreReads, StorePins):
    """Manifests, pins, packs and the chunk index under ``root`` (created if missing).

    ``models`` is the directory of installed models whose versions are indexed too
    (default: ``root``'s sibling ``models``, as in a data directory)."""

    def __init__(self, root: Path | str, *, fsync: bool = True,
                 models: Path | str | None = None) -> None:
        super().__init__(root, fsync=fsync, models=models)
        try:
            for d in (self._packs_dir, self._manifests_dir, self._pins_dir,
                      self._quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            raise StoreError(f"cannot open the content store at {self.root}: "
                             f"{exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the progress logs this store holds open (it may be used no more)."""
        with self._lock:
            for d in self._dirs.values():
                if d.progress_fd is not None:
                    os.close(d.progress_fd)
                    d.progress_fd = None

    # ------------------------------------------------------------------ open

    def _scan(self) -> None:
        # (a temporary another process is writing -- a publish from the command line
        # while this daemon starts -- is held with flock and left alone)
        for entry in os.scandir(self._manifests_dir):
            if entry.name.startswith(TMP_PREFIX):
                if in_use(entry.path):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                self._stale_removed += 1
                continue
            manifest = self._load_manifest(Path(entry.path))
            if manifest is not None:
                self._manifests[manifest.manifest_id] = manifest
        for entry in os.scandir(self._pins_dir):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            if entry.name in self._manifests:
                self._pin_refs(entry.name)
        # installed versions
        if self.models.is_dir():
            for model in os.scandir(self.models):
                vroot = os.path.join(model.path, "versions")
                if not model.is_dir(follow_symlinks=False) or not os.path.isdir(vroot):
                    continue
                for v in os.scandir(vroot):
                    if v.is_dir(follow_symlinks=False):
                        rec = read_record(os.path.join(v.path, INSTALL_RECORD))
                        if rec is not None:
                            self._index_dir(v.path, rec[0], rec[1], installed=True)
        for entry in os.scandir(self._packs_dir):
            if entry.name.startswith(TMP_PREFIX):
                if in_use(entry.path):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                self._stale_removed += 1
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            rec = read_record(os.path.join(entry.path, PACK_RECORD)) or \
                read_record(os.path.join(entry.path, INSTALL_RECORD))
            if rec is None or rec[0] not in self._manifests or \
                    (rec[0], rec[1]) in self._by_key:
                # a pack whose manifest never got stored (a publish killed before its
                # end), or a leftover of a version installed meanwhile
                shutil.rmtree(entry.path, ignore_errors=True)
                self._stale_removed += 1
                continue
            self._index_dir(entry.path, rec[0], rec[1], installed=False)
        legacy = self.root / "chunks"
        if legacy.is_dir():
            convert_legacy(self, legacy)

    def _index_dir(self, path: str, manifest_id: str, variant_id: str, *,
                   installed: bool) -> None:
        manifest = self._manifests.get(manifest_id)
        if manifest is None:
            return
        try:
            variant = manifest.variant(variant_id)
        except InvalidValue:
            return
        d = new_dir(path, manifest, variant, installed=installed)
        log = os.path.join(path, PROGRESS_LOG)
        have: bytearray | None = None
        if not installed and os.path.exists(log):
            have = self._verify_logged(d, log)
            d.progress_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._register(d, have)
        if have is not None:
            d.checked = bytearray(have)     # re-read and hashed just now

    def _verify_logged(self, d: IndexedDir, log: str) -> bytearray:
        """The chunks the progress log names whose bytes are there (re-read, hashed), as
        a bitset over ``d``'s positions."""
        with open(log, "rb") as f:
            raw = f.read()
        good = bytearray((len(d) + 7) >> 3)
        fds: dict[str, int] = {}
        try:
            for i in range(0, len(raw) - HASH_SIZE + 1, HASH_SIZE):
                h = raw[i:i + HASH_SIZE]
                p = d.position(h)
                if p < 0 or good[p >> 3] >> (p & 7) & 1:
                    continue
                if all(self._range_ok(d, fds, rel, off, h) for rel, off in d.places(h)):
                    good[p >> 3] |= 1 << (p & 7)
        finally:
            for fd in fds.values():
                os.close(fd)
        return good

    def _range_ok(self, d: IndexedDir, fds: dict[str, int], rel: str, off: int, h: bytes) -> bool:
        try:
            fd = fds.get(rel)
            if fd is None:
                fd = fds[rel] = os.open(confine(Path(d.path), rel),
                                        os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            data = os.pread(fd, d.size(h), off)
        except OSError:
            return False
        return chunk_matches(h, d.size(h), data)

    def _load_manifest(self, path: Path) -> Manifest | None:
        try:
            raw = path.read_bytes()
            manifest = decode_value(Manifest, raw, max_size=_MAX_MANIFEST)
            if manifest.manifest_id != path.name:
                raise MalformedMessage("manifest id does not match its file name")
        except (OSError, MalformedMessage):
            self._quarantine(path, f"manifest-{path.name}")
            return None
        return manifest

    # ------------------------------------------------------------------ packs

    def stage(self, manifest: Manifest, variant_id: str) -> str:
        """The directory that holds (or will hold) ``variant_id`` of ``manifest``:
        its installed version or pack, else a new staged pack of preallocated files
        (:class:`InsufficientStorage` if they do not fit). Stores and pins the manifest."""
        variant = manifest.variant(variant_id)
        self.put_manifest(manifest)
        with self._lock:
            found = self._by_key.get((manifest.manifest_id, variant_id))
            if found is not None:
                return found
            self.pin(manifest.manifest_id)
            final = self._pack_path(manifest.manifest_id, variant_id)
            tmp = os.path.join(self._packs_dir, f"{TMP_PREFIX}{secrets.token_hex(8)}")
            try:
                os.mkdir(tmp)
                write_record(os.path.join(tmp, PACK_RECORD), manifest, variant_id,
                              self._fsync)
                open(os.path.join(tmp, PROGRESS_LOG), "xb").close()
                for entry in variant.files:
                    target = create_file(Path(tmp), entry.path, entry.executable)
                    try:
                        if entry.size:
                            preallocate(target, entry.size)
                    finally:
                        os.close(target)
                self._into_packs(tmp, final)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise self._os_error(exc, f"staging {manifest.model_id} {manifest.version} "
                                     f"({variant.size} bytes)") from exc
            d = new_dir(final, manifest, variant, installed=False)
            d.progress_fd = os.open(os.path.join(final, PROGRESS_LOG),
                                    os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._register(d, ())
            return final

    def _into_packs(self, tmp: str, final: str) -> None:
        """Move a complete temporary directory into place as a pack, durably (an
        unindexed leftover at ``final`` is replaced)."""
        if self._fsync:
            fsync_dir(tmp)
        if os.path.exists(final):
            shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        if self._fsync:
            fsync_dir(self._packs_dir)

    @property
    def fsyncs(self) -> bool:
        """Whether this store makes what it writes durable (tests turn it off)."""
        return self._fsync

    def new_pack_dir(self) -> Path:
        """A fresh temporary directory among the packs (removed at open if left over)."""
        path = self._packs_dir / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            path.mkdir()
            self._held_tmp[str(path)] = hold(path)
        except OSError as exc:
            raise self._os_error(exc, "creating a pack") from exc
        return path

    def release_pack_dir(self, path: Path) -> None:
        """Let go of a directory made by :meth:`new_pack_dir` (moved into place, or
        about to be deleted)."""
        fd = self._held_tmp.pop(str(path), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def add_pack(self, tmp: Path, manifest: Manifest, variant_id: str, *,
                 hashed: bool = False) -> str:
        """Index the complete, fsynced files of ``variant_id`` in ``tmp`` (made by
        :meth:`new_pack_dir`) as its pack; the pack's path. If the variant is held
        already, ``tmp`` is deleted and the existing directory's path returned.
        ``hashed``: the manifest's chunk hashes were computed, in this process, from
        these files' bytes (``publish`` hashes its copy, not the package), so the chunks
        are marked checked and :meth:`complete` does not re-read them."""
        manifest.variant(variant_id)
        with self._lock:
            found = self._by_key.get((manifest.manifest_id, variant_id))
            if found is not None:
                self.release_pack_dir(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
                return found
            final = self._pack_path(manifest.manifest_id, variant_id)
            try:
                write_record(os.path.join(tmp, PACK_RECORD), manifest, variant_id,
                              self._fsync)
                self._into_packs(str(tmp), final)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise self._os_error(exc, f"storing {manifest.model_id} "
                                     f"{manifest.version}") from exc
            finally:
                self.release_pack_dir(tmp)
            self._index_dir(final, manifest.manifest_id, variant_id, installed=False)
            d = self._dirs.get(final)
            if hashed and d is not None:
                d.checked = bytearray(d.have)
            return final

    def missing(self, manifest: Manifest, variant_id: str) -> list[bytes]:
        """The chunks of the variant that no indexed file holds."""
        variant = manifest.variant(variant_id)
        with self._lock:
            own = self._by_key.get((manifest.manifest_id, variant_id))
            if own is not None and self._dirs[own].n_have == len(self._dirs[own]):
                return []       # its own directory holds every chunk: no pass over them
            return [h for h in variant.distinct_chunks().iter_hashes()
                    if not self._held(h)]

    def complete(self, manifest: Manifest, variant_id: str) -> str:
        """Make the variant's directory whole and durable; its path.

        Chunks its files lack are copied from the files that hold them; each file is
        fsynced once; every chunk range is re-read and hashed (a mismatch drops the
        chunk and raises :class:`ChunkCorrupted`) -- except those this process wrote
        itself from bytes it had verified, or re-read and hashed when it opened the
        pack (``IndexedDir.checked``): reading them back would hash the page cache's copy
        of what was just verified. :class:`ChunkNotFound` when some chunk is held
        nowhere."""
        lacking = self.missing(manifest, variant_id)
        if lacking:
            raise ChunkNotFound(f"{len(lacking)} chunks of {manifest.model_id} "
                                f"{manifest.version} ({variant_id}) are not in the store, "
                                f"e.g. {lacking[0].hex()}; fetch the version first",
                                chunk_hashes=tuple(lacking))
        path = self.stage(manifest, variant_id)
        d = self._dirs[path]
        if d.installed:
            return path
        try:
            if not d.complete:
                self._fill(d)
                paths = [os.fspath(confine(Path(path), rel)) for rel, _, _ in d.files]
                if self._fsync:
                    list(io_pool().map(fsync_path, paths))
            bad = [h for found in io_pool().map(lambda i: self._verify_file(d, i),
                                                      range(len(d.files)))
                   for h in found]
        except OSError as exc:
            raise self._os_error(exc, f"completing {manifest.model_id} "
                                 f"{manifest.version}") from exc
        if bad:
            with self._lock:
                for h in bad:
                    self._drop_have(d, h)
                self._corrupt += len(bad)
                self._quarantined += len(bad)
            raise ChunkCorrupted(f"{manifest.model_id} {manifest.version}: {len(bad)} "
                                 f"chunk(s) on disk do not match their hash, e.g. "
                                 f"{bad[0].hex()}; dropped, they will be fetched again",
                                 chunk_hashes=tuple(bad))
        with self._lock:
            if d.progress_fd is not None:
                os.close(d.progress_fd)
                d.progress_fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, PROGRESS_LOG))
            if self._fsync:
                fsync_dir(path)
        return path

    def _fill(self, d: IndexedDir) -> None:
        """Copy into ``d`` every chunk it lacks, from the files that hold it, in runs. A
        run whose source turns out shorter than the index says (a model rewrote its own
        installed file) is copied chunk by chunk through :meth:`get`, which verifies each
        and moves on to another copy (or finds none: ``ChunkNotFound``)."""
        for index, (rel, _, _) in enumerate(d.files):
            with self._lock:
                # src file, src off, dst off, n, and the chunks of the run (hash, dst off)
                runs: list[tuple[str, int, int, int, list[tuple[bytes, int]]]] = []
                pos = 0
                for h, off in d.file_chunks(index):
                    pos = off
                    if d.holds(h):
                        continue
                    src = self._source(h, exclude=d.path)
                    if src is None:
                        raise ChunkNotFound(f"chunk {h.hex()} is not in the store",
                                            chunk_hashes=(h,))
                    sfile, soff = src
                    n = d.size(h)
                    if runs and runs[-1][0] == sfile and runs[-1][1] + runs[-1][3] == soff \
                            and runs[-1][2] + runs[-1][3] == pos:
                        last = runs[-1]
                        runs[-1] = (last[0], last[1], last[2], last[3] + n,
                                    [*last[4], (h, pos)])
                    else:
                        runs.append((sfile, soff, pos, n, [(h, pos)]))
            if not runs:
                continue
            dst = os.open(confine(Path(d.path), rel), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                for sfile, soff, doff, n, chunks in runs:
                    try:
                        src_fd = os.open(sfile, os.O_RDONLY | os.O_CLOEXEC)
                        try:
                            copy_range(src_fd, dst, soff, doff, n)
                        finally:
                            os.close(src_fd)
                    except OSError:
                        for h, at in chunks:        # verified, from wherever it is good
                            write_all(dst, self.get(h), at)
            finally:
                os.close(dst)
        with self._lock:
            for h in d.hashes():
                self._add_have(d, h)

    def _source(self, h: bytes, exclude: str | None = None) -> tuple[str, int] | None:
        for path in self._holder_paths(h):
            if path == exclude:
                continue
            rel, off = self._dirs[path].place(h)
            return os.path.join(path, *rel.split("/")), off
        return None

    def _verify_file(self, d: IndexedDir, index: int) -> list[bytes]:
        rel, size, _ = d.files[index]
        bad: list[bytes] = []
        fd = os.open(confine(Path(d.path), rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != size:
                raise StoreError(f"{rel}: {os.fstat(fd).st_size} bytes on disk, the manifest "
                                 f"says {size}")
            buf = bytearray()   # one buffer for the file's chunks, not a new one each
            for h, off in d.file_chunks(index):
                p = d.position(h)
                if d.is_checked(p):
                    continue            # written here from verified bytes (``checked``)
                n = d.chunks.size(p)
                if len(buf) < n:
                    buf = bytearray(max(n, 2 * len(buf)))
                with memoryview(buf) as whole, whole[:n] as slot:
                    if os.preadv(fd, [slot], off) != n or not chunk_matches(h, n, slot):
                        bad.append(h)
        finally:
            os.close(fd)
        return bad

    def adopt(self, old: str, new: str) -> None:
        """The pack at ``old`` has been renamed to the installed version ``new``."""
        self._rename_dir(old, new, installed=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index still (an installer renames directories under it)."""
        with self._lock:
            yield

    def swap_installed(self, pack: str, final: str) -> None:
        """``pack`` and the installed version ``final`` were exchanged on disk: ``final``
        now holds the pack's files, ``pack`` the version that was installed there."""
        with self._lock:
            placeholder = f"{final}\0swapped"
            self._rename_dir(final, placeholder, installed=False)
            self._rename_dir(pack, final, installed=True)
            self.retire(placeholder, pack)

    def retire(self, indexed_as: str, disk_path: str) -> None:
        """The installed version indexed as ``indexed_as``, now at ``disk_path``, is no
        longer installed: keep its files as a pack (one copy), or drop them when a pack
        of that variant exists already."""
        with self._lock:
            d = self._dirs.get(indexed_as)
            if d is None:
                shutil.rmtree(disk_path, ignore_errors=True)
                return
            target = self._pack_path(d.manifest_id, d.variant_id)
            if os.path.exists(target) and target != disk_path:
                self._unregister(indexed_as)
                shutil.rmtree(disk_path, ignore_errors=True)
                return
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(disk_path, PACK_RECORD))
                write_record(os.path.join(disk_path, PACK_RECORD),
                              self._manifests[d.manifest_id], d.variant_id, self._fsync)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(disk_path, INSTALL_RECORD))
                os.rename(disk_path, target)
                if self._fsync:
                    fsync_dir(self._packs_dir)
            except OSError:
                self._unregister(indexed_as)
                shutil.rmtree(disk_path, ignore_errors=True)
                return
            self._rename_dir(indexed_as, target, installed=False)

    def forget(self, path: str) -> None:
        """Drop a directory from the index (it is being deleted or replaced)."""
        self._unregister(path)

    def index_installed(self, path: str, manifest_id: str, variant_id: str) -> None:
        """Index an installed version directory (idempotent)."""
        if path in self._dirs:
            return
        self._index_dir(path, manifest_id, variant_id, installed=True)

    # ------------------------------------------------------------------ writes

    def put(self, chunk_hash: bytes, data: bytes, *, trusted_hash: bool = False,
            batch: StoreBatch | None = None) -> bool:
        """Write a verified chunk into every indexed file that wants it; True if the
        store did not hold it before.

        The bytes are verified against ``chunk_hash`` first (a mismatch raises
        :class:`ChunkCorrupted` and nothing is written) unless ``trusted_hash``
        says the caller computed the hash from these very bytes a moment ago. A chunk
        that no staged version needs raises :class:`StoreError` (stage the version
        first: :meth:`stage`)."""
        result = self._put_many([(chunk_hash, data)], trusted_hash)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _put_many(self, chunks: Sequence[tuple[bytes, bytes | memoryview]], trusted_hash: bool
                  ) -> list[bool | Exception]:
        results: list[bool | Exception] = []
        logged: dict[int, list[bytes]] = {}
        fds: dict[str, int] = {}
        # the batch's writes (fd, offset, bytes, chunk), made together -- back-to-back
        # ranges of a file in one pwritev -- and then the chunks written are marked
        writes: list[tuple[int, int, bytes | memoryview, int]] = []
        marks: list[tuple[int, IndexedDir, bytes]] = []
        first: dict[bytes, int] = {}        # chunk -> its first place in the batch
        try:
            with self._lock:
                for k, (chunk_hash, data) in enumerate(chunks):
                    results.append(False)
                    if not trusted_hash and not chunk_matches(chunk_hash, len(data), data):
                        self._corrupt += 1
                        results[k] = ChunkCorrupted(
                            f"chunk {chunk_hash.hex()}: {len(data)} bytes offered do not "
                            "match its BLAKE3 name; not stored")
                        continue
                    if chunk_hash in first:     # twice in one batch: the second is held
                        continue                # (or fails as the first did, below)
                    targets = sorted(self._wanting_paths(chunk_hash))
                    if not targets:
                        if self._held(chunk_hash):
                            self._puts_duplicate += 1
                        else:
                            results[k] = StoreError(
                                f"chunk {chunk_hash.hex()}: no version being fetched needs "
                                "it; not stored")
                        continue
                    try:
                        for path in targets:
                            d = self._dirs[path]
                            if d.size(chunk_hash) != len(data):
                                raise ChunkCorrupted(f"chunk {chunk_hash.hex()}: {len(data)} "
                                                     "bytes, the manifest says "
                                                     f"{d.size(chunk_hash)}")
                            for rel, off in d.places(chunk_hash):
                                full = os.path.join(path, *rel.split("/"))
                                fd = fds.get(full)
                                if fd is None:
                                    fd = fds[full] = os.open(
                                        confine(Path(path), rel),
                                        os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                                writes.append((fd, off, data, k))
                            marks.append((k, d, chunk_hash))
                        first[chunk_hash] = k
                    except OSError as exc:
                        results[k] = self._os_error(exc, f"writing chunk {chunk_hash.hex()}")
                    except StoreError as exc:
                        results[k] = exc
                failed = pwrite_runs(writes)
                for k, d, chunk_hash in marks:
                    if k not in failed and not isinstance(results[k], Exception):
                        d.set_checked(d.position(chunk_hash))
                        if d.progress_fd is not None:
                            logged.setdefault(d.progress_fd, []).append(chunk_hash)
                        results[k] = self._add_have(d, chunk_hash) or results[k]
                for k, why in failed.items():
                    results[k] = self._os_error(why, f"writing chunk {chunks[k][0].hex()}")
                for k, (chunk_hash, _) in enumerate(chunks):
                    at = first.get(chunk_hash, k)
                    if at != k and not isinstance(results[k], Exception):
                        results[k] = results[at] if isinstance(results[at], Exception) \
                            else False
                    if at == k and chunk_hash in first and results[k] is True:
                        self._puts_new += 1
                    elif results[k] is False and chunk_hash in first:
                        self._puts_duplicate += 1
                for fd, hashes in logged.items():
                    os.write(fd, b"".join(hashes))
        except OSError as exc:   # the progress log: the chunks stay held in this process
            err = self._os_error(exc, "appending to a progress log")
            return [err if r is not False else r for r in results]
        finally:
            for fd in fds.values():
                os.close(fd)
        return results

    def put_verified_batch(self, chunks: Sequence[tuple[bytes, bytes | memoryview]]
                           ) -> list[Exception | None]:
        """Write chunks whose bytes were verified against their hashes; per chunk, None
        or why it failed."""
        return [r if isinstance(r, Exception) else None
                for r in self._put_many(chunks, trusted_hash=True)]

    def statistics(self) -> StoreStatistics:
        with self._lock:
            dirs = list(self._dirs.values())
            return StoreStatistics(
                chunks=self._n_held,
                bytes=self._bytes,
                manifests=len(self._manifests),
                pinned=len(self._pinned),
                referenced_chunks=self._referenced_chunks(),
                puts_new=self._puts_new,
                puts_duplicate=self._puts_duplicate,
                corrupt_detected=self._corrupt,
                quarantined=self._quarantined,
                stale_temporaries_removed=self._stale_removed,
                gc_runs=self._gc_runs,
                gc_freed_chunks=self._gc_chunks,
                gc_freed_bytes=self._gc_bytes,
                versions=sum(d.installed for d in dirs),
                packs=sum(not d.installed for d in dirs),
                staged=sum(d.progress_fd is not None for d in dirs),
                disk_bytes=sum(s for d in dirs for _, s, _ in d.files),
            )

    @staticmethod
    def _raise_first(results: list[bool | Exception]) -> None:
        for r in results:
            if isinstance(r, Exception):
                raise r
