"""Publishing: turn a model package on disk into stored chunks and a signed manifest.

A *package* is one of:

* a directory with ``shoal-model.toml`` listing its variants, best first::

      [[variant]]
      id = "fp16-gpu"                 # the subdirectory, unless `path` says otherwise
      precision = "fp16"
      min_gpu_mem_gb = 4
      execution_providers = ["CUDAExecutionProvider"]
      cpu_arch = ["x86_64", "aarch64"]
      min_ram_gb = 8
      min_storage_mb = 600
      migrator = "migrate.py"         # optional, a file of the variant

      [[variant]]
      id = "int8-cpu"
      precision = "int8"

* a directory without that file, or a single file: one variant named ``default``.

Every file is cut through a read-only mapping on the main thread, half a window at a
time (:func:`protocol.cut_view`: memory bounded by the window, whatever the file size);
the file is copied into the variant's pack in the store (its files as they will be
installed) by ``copy_file_range`` on a writer thread, 32 MiB a step, writeback started
as it goes, and a hashing thread names each half's chunks from the *copy's* bytes (a
mapping of the pack's file, once the steps under that half are copied),
not the package's: the manifest names what the pack holds, so the store marks the pack's
chunks checked and installing it here does not read and hash them again
(``ChunkStore.add_pack(..., hashed=True)``), and a package changed while it is published
can move chunk boundaries but never make the pack disagree with its manifest.
The package is read once and written once (on XFS and btrfs the copy may share the
package's extents), and no file is made per chunk. Symlinks
are followed only when they resolve to a regular file inside the package;
symlinked directories, sockets, FIFOs and devices are refused.

Publishing is idempotent: the same package under the same ``(model, version)``
stores nothing new and returns the manifest already stored. The same version
with *different* content is refused — a fleet must never see two meanings of
one version.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import mmap
import os
import shutil
import stat
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent._errors import ConfigError, InsufficientStorage, PublishError
from agent._storage.files import copy_range_flushing, create_file, io_pool, preallocate
from agent._storage.store import ChunkStore
from protocol import (
    DEFAULT_PARAMS,
    DEFAULT_WINDOW,
    ChunkList,
    ChunkParams,
    ChunkRef,
    FileEntry,
    InvalidValue,
    Ledger,
    Manifest,
    ManifestHead,
    Requirements,
    ShoalError,
    SigningIdentity,
    Variant,
    cut_view,
    hash_cuts,
    manifests_to_retire,
    merkle_root,
    normalise_arch,
    validate_model_id,
    validate_relative_path,
    validate_version,
)

__all__ = ["PACKAGE_FILE", "VariantSpec", "PublishResult", "announce_stored", "load_package",
           "publish"]

log = logging.getLogger("shoal.daemon")

PACKAGE_FILE = "shoal-model.toml"
DEFAULT_VARIANT = "default"
_REQUIREMENT_KEYS = {"cpu_arch", "min_gpu_mem_gb", "execution_providers", "precision",
                     "min_ram_gb", "min_storage_mb", "accelerators"}
_VARIANT_KEYS = _REQUIREMENT_KEYS | {"id", "path", "migrator", "migrator_address",
                                     "health_check"}
#: Blocks handed to the writer thread but not yet written (bounds memory: 8 reads of <= 4 MiB).
_MAX_IN_FLIGHT = 8
_COPY_STEP = 32 << 20       # bytes a copy step (its writeback started when it is done)


@dataclass(frozen=True, slots=True)
class VariantSpec:
    variant_id: str
    path: Path                 # a directory, or a single file
    requirements: Requirements
    migrator: str | None
    health_check: str | None = None
    migrator_address: str | None = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    manifest_id: str
    model_id: str
    version: str
    variants: tuple[str, ...]
    files: int
    bytes_total: int        # logical bytes of every file of every variant
    chunks_total: int       # distinct chunks the manifest references
    chunks_new: int         # chunks this publish wrote to the store
    bytes_new: int          # their bytes
    already_published: bool  # the same content was stored under this version before


# ---------------------------------------------------------------------- package


def _inside(root_real: str, path: str) -> bool:
    return path == root_real or path.startswith(root_real + os.sep)


def _requirements(table: dict[str, Any], where: str) -> Requirements:
    kwargs: dict[str, Any] = {}
    for key in ("cpu_arch", "execution_providers", "accelerators"):
        if key in table:
            value = table[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of strings")
            kwargs[key] = tuple(normalise_arch(v) for v in value) if key == "cpu_arch" \
                else tuple(value)
    for key in ("min_gpu_mem_gb", "min_ram_gb"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: {key} must be a number")
            kwargs[key] = float(value)
    if "min_storage_mb" in table:
        value = table["min_storage_mb"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: min_storage_mb must be an integer")
        kwargs["min_storage_mb"] = value
    if "precision" in table:
        if not isinstance(table["precision"], str):
            raise ConfigError(f"{where}: precision must be a string")
        kwargs["precision"] = table["precision"]
    try:
        return Requirements(**kwargs)
    except InvalidValue as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_package(path: Path | str) -> list[VariantSpec]:
    """The variants of the package at ``path``, in preference order."""
    root = Path(path)
    try:
        st = os.stat(root)
    except OSError as exc:
        raise PublishError(f"cannot read package {root}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return [VariantSpec(DEFAULT_VARIANT, root, Requirements(), None)]
    if not stat.S_ISDIR(st.st_mode):
        raise PublishError(f"{root} is neither a regular file nor a directory")
    toml_path = root / PACKAGE_FILE
    if not toml_path.exists():
        return [VariantSpec(DEFAULT_VARIANT, root, Requirements(), None)]
    try:
        with open(toml_path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from None
    unknown = set(doc) - {"variant"}
    if unknown:
        raise ConfigError(f"{toml_path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          "a package file holds [[variant]] tables")
    tables = doc.get("variant")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{toml_path}: no [[variant]] tables; list at least one variant")
    root_real = os.path.realpath(root)
    specs: list[VariantSpec] = []
    for i, table in enumerate(tables):
        where = f"{toml_path} variant #{i + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(table) - _VARIANT_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        vid = table.get("id")
        if not isinstance(vid, str):
            raise ConfigError(f"{where}: needs id = \"...\"")
        where = f"{toml_path} variant {vid!r}"
        rel = table.get("path", vid)
        migrator = table.get("migrator")
        health = table.get("health_check")
        address = table.get("migrator_address")
        if not isinstance(rel, str) or any(v is not None and not isinstance(v, str)
                                           for v in (migrator, health, address)):
            raise ConfigError(f"{where}: path, migrator, migrator_address and health_check "
                              "must be strings")
        try:
            validate_relative_path(rel)
            for v in (migrator, health):
                if v is not None:
                    validate_relative_path(v)
        except InvalidValue as exc:
            raise ConfigError(f"{where}: {exc}") from None
        vpath = root / rel
        if not _inside(root_real, os.path.realpath(vpath)):
            raise PublishError(f"{where}: {rel} resolves outside the package")
        if not vpath.is_dir():
            raise ConfigError(f"{where}: {vpath} is not a directory")
        specs.append(VariantSpec(vid, vpath, _requirements(table, where), migrator, health,
                                 address))
    ids = [s.variant_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{toml_path}: duplicate variant ids")
    return specs


def _walk(base: Path, root_real: str) -> Iterator[tuple[str, str, bool]]:
    """(relative path, path to open, executable) for every file under ``base``, sorted."""
    if base.is_file():
        yield base.name, str(base), bool(os.stat(base).st_mode & 0o111)
        return

    def visit(directory: str, prefix: str) -> Iterator[tuple[str, str, bool]]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = f"{prefix}{e.name}"
            if not prefix and e.name == PACKAGE_FILE:
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise PublishError(f"file name {rel!r} is not valid UTF-8") from None
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(e.path)
                if not _inside(root_real, target):
                    raise PublishError(f"refusing symlink {e.path} -> {os.readlink(e.path)}: "
                                       "it leads outside the package")
                tst = os.stat(target)
                if not stat.S_ISREG(tst.st_mode):
                    raise PublishError(f"refusing symlink {e.path}: only symlinks to regular "
                                       "files inside the package are published")
                yield rel, target, bool(tst.st_mode & 0o111)
            elif stat.S_ISDIR(st.st_mode):
                yield from visit(e.path, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                yield rel, e.path, bool(st.st_mode & 0o111)
            else:
                raise PublishError(f"refusing {e.path}: not a regular file or directory "
                                   "(sockets, FIFOs and devices are not published)")

    yield from visit(str(base), "")


# ---------------------------------------------------------------------- publish


class _Writer:
    """Writes the package's bytes into the pack's files as they are read for chunking:
    one thread, a bounded number of blocks in flight, so reading, cutting/hashing and
    writing overlap and every byte is read once and written once."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-write")
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-hash")
        self.pending: collections.deque[Future[None]] = collections.deque()
        self.fds: list[tuple[int, str]] = []
        self.seen: set[bytes] = set()
        self.chunks_new = 0
        self.bytes_new = 0

    def open(self, root: Path, rel: str, executable: bool, size: int) -> int:
        try:
            fd = create_file(root, rel, executable)
        except OSError as exc:
            raise self._error(exc, rel) from exc
        self.fds.append((fd, rel))
        if size:
            try:
                preallocate(fd, size)
            except OSError as exc:
                raise self._error(exc, rel) from exc
        return fd

    def _error(self, exc: OSError, rel: str) -> ShoalError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return InsufficientStorage(f"no space left on the device holding "
                                       f"{self.store.root} while publishing {rel}; free "
                                       "space and retry")
        return PublishError(f"cannot write {rel} into the store: {exc.strerror or exc}")

    def copy(self, src: int, dst: int, offset: int, size: int) -> Future[None]:
        """Copy ``size`` bytes at ``offset`` of ``src`` to the same place in ``dst`` on
        the writer thread (one at a time, in order), writeback started."""
        return self.pool.submit(copy_range_flushing, src, dst, size, size, offset)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        while len(self.pending) >= _MAX_IN_FLIGHT:
            try:
                self.pending.popleft().result()
            except OSError as exc:
                raise self._error(exc, "a file") from exc
        self.pending.append(self.pool.submit(_pwrite_all, fd, data, offset))

    def count(self, chunk_hash: bytes, size: int) -> None:
        if chunk_hash not in self.seen and not self.store.has(chunk_hash):
            self.seen.add(chunk_hash)
            self.chunks_new += 1
            self.bytes_new += size

    def drain(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        except OSError as exc:
            raise self._error(exc, "a file") from exc

    def sync(self, fsync: bool) -> None:
        """Each file written, fsynced once (concurrently: fsyncs share journal commits)."""
        self.drain()
        if fsync:
            try:
                list(io_pool().map(lambda item: os.fsync(item[0]), self.fds))
            except OSError as exc:
                raise self._error(exc, "a file") from exc

    def close(self) -> None:
        for fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.hasher.shutdown(wait=True, cancel_futures=True)
        for fd, _ in self.fds:
            os.close(fd)
        self.fds = []


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _hash_window(copied: list[Future[None]], mm: mmap.mmap, start: int,
                 cuts: list[tuple[int, int]]) -> list[ChunkRef]:
    for step in copied:     # the copy's bytes are what is named (OSError: raised here)
        step.result()
    with memoryview(mm) as whole, whole[start:] as view:
        return hash_cuts(view, cuts)


def _cut_and_hash(mm: mmap.mmap, out: mmap.mmap, fds: tuple[int, int], params: ChunkParams,
                  window: int, writer: _Writer, tick: Callable[[int], None] | None,
                  rel: str) -> list[ChunkRef]:
    """Cut the package's mapped file (``mm``) half a window at a time on this thread
    while the writer thread copies the whole file into the pack's (``fds``: source,
    destination), :data:`_COPY_STEP` bytes a step, and the hashing thread names each
    half cut from ``out``, the pack file's mapping, once the steps under it are copied
    (BLAKE3 releases the GIL; the cutter does not): at most a window is mapped in,
    pages already hashed are dropped."""
    size = len(mm)
    steps = [writer.copy(fds[0], fds[1], off, min(_COPY_STEP, size - off))
             for off in range(0, size, _COPY_STEP)]
    refs: list[ChunkRef] = []
    step = max(params.max_size, window // 2)
    pos = 0
    hashing: tuple[Future[list[ChunkRef]], int] | None = None

    def collect(job: tuple[Future[list[ChunkRef]], int]) -> None:
        fut, done_to = job
        try:
            got = fut.result()
        except OSError as exc:
            raise writer._error(exc, rel) from exc
        for r in got:
            writer.count(r.hash, r.size)
            if tick is not None:
                tick(r.size)
        refs.extend(got)
        with contextlib.suppress(OSError, AttributeError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, 0, done_to - done_to % mmap.PAGESIZE)
            out.madvise(mmap.MADV_DONTNEED, 0, done_to - done_to % mmap.PAGESIZE)

    try:
        while pos < size:
            end = min(size, pos + step)
            with memoryview(mm) as whole, whole[pos:end] as view:
                cuts, used = cut_view(view, params, eof=end == size)
            under = steps[pos // _COPY_STEP:(pos + used - 1) // _COPY_STEP + 1]
            job = (writer.hasher.submit(_hash_window, under, out, pos, cuts), pos + used)
            if hashing is not None:
                collect(hashing)
            hashing = job
            pos += used
        if hashing is not None:
            collect(hashing)
            hashing = None
    finally:
        if hashing is not None:     # an error on the way: let the hashing end first,
            with contextlib.suppress(Exception):
                hashing[0].result()
        for copied in steps:        # and the copy: no step may outlive the source's fd
            if not copied.cancel():
                with contextlib.suppress(Exception):
                    copied.result()
    return refs


def _publish_file(rel: str, open_path: str, executable: bool, writer: _Writer, dest: Path,
                  params: ChunkParams, window: int,
                  tick: Callable[[int], None] | None = None) -> FileEntry:
    """Copy one file into the pack (in the kernel, ``copy_file_range``, on the writer
    thread, :data:`_COPY_STEP` bytes a step) while it is cut through a read-only mapping,
    and name its chunks from the copy's bytes (:func:`_cut_and_hash`). The source's
    bytes come from disk once."""
    try:
        fd = os.open(open_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise PublishError(f"cannot read {open_path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PublishError(f"refusing {open_path}: not a regular file")
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = st.st_size
        out = writer.open(dest, rel, executable, size)
        refs: list[ChunkRef] = []
        if size:
            try:
                mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            except (OSError, ValueError) as exc:
                raise PublishError(f"cannot read {open_path}: {exc}") from exc
            try:
                try:
                    copy = mmap.mmap(out, size, prot=mmap.PROT_READ)
                except (OSError, ValueError) as exc:
                    raise PublishError(f"cannot map {rel} in the store: {exc}") from exc
                try:
                    refs = _cut_and_hash(mm, copy, (fd, out), params, window, writer,
                                         tick, rel)
                finally:
                    copy.close()
            finally:
                mm.close()
        total = sum(r.size for r in refs)
        if total != size or os.fstat(fd).st_size != size:
            raise PublishError(f"{open_path} changed while it was being published; retry")
    finally:
        os.close(fd)
    try:
        return FileEntry(rel, total, ChunkList(refs), merkle_root([r.hash for r in refs]),
                         executable)
    except InvalidValue as exc:
        raise PublishError(f"cannot publish {open_path}: {exc}") from None


def publish(store: ChunkStore, package: Path | str, model_id: str, version: str,
            publisher: SigningIdentity, *, params: ChunkParams = DEFAULT_PARAMS,
            window: int = DEFAULT_WINDOW, created_at_ms: int | None = None,
            writer_threads: int = 1, base_version: str | None = None,
            progress: Callable[[int, int], None] | None = None,
            known: Iterable[Manifest | ManifestHead] = ()) -> PublishResult:
    """Chunk, store, sign and pin ``package`` as ``(model_id, version)``.

    The files are copied into the store's packs (one per variant) in the same pass that
    chunks and hashes them; each is fsynced once. ``base_version`` marks a derived
    version (a migrator export layered on a base). ``known`` are manifests published
    elsewhere (a daemon passes its ledger's): one ``(model, version)`` has one
    manifest, whoever published it first. ``progress(bytes_done, bytes_total)`` is
    called as the files are chunked. (``writer_threads`` is accepted for callers of the
    earlier API; one writer thread is enough now that no file is made per chunk.)
    """
    del writer_threads
    try:
        validate_model_id(model_id)
        validate_version(version)
        if base_version is not None:
            validate_version(base_version)
    except InvalidValue as exc:
        raise PublishError(str(exc)) from None
    specs = load_package(package)
    root_real = os.path.realpath(package)
    if os.path.isfile(root_real):
        root_real = os.path.dirname(root_real)
    variants: list[Variant] = []
    dirs: list[Path] = []
    writer = _Writer(store)
    try:
        try:
            walked = [list(_walk(spec.path, root_real)) for spec in specs]
            total = sum(os.path.getsize(p) for files in walked for _, p, _ in files)
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)
            for spec, listing in zip(specs, walked, strict=True):
                dest = store.new_pack_dir()
                dirs.append(dest)
                files = [_publish_file(rel, p, x, writer, dest, params, window, tick)
                         for rel, p, x in listing]
                try:
                    variants.append(Variant(spec.variant_id, spec.requirements,
                                            tuple(files), spec.migrator,
                                            migrator_address=spec.migrator_address,
                                            health_check=spec.health_check))
                except InvalidValue as exc:
                    raise PublishError(f"variant {spec.variant_id}: {exc}") from None
            writer.sync(store.fsyncs)
        finally:
            writer.close()
        body = tuple(variants)
        manifest: Manifest | None = None
        already = False
        for existing in [*store.manifests(), *known]:
            if existing.model_id == model_id and existing.version == version:
                if isinstance(existing, Manifest) and existing.variants == body and \
                        existing.base_version == base_version:
                    manifest, already = existing, True
                    break
                raise PublishError(f"{model_id} {version} is already published with "
                                   f"different content (manifest {existing.manifest_id[:16]});"
                                   " a version names one content forever: publish the change "
                                   "under a new version")
        if manifest is None:
            if created_at_ms is None:
                created_at_ms = int(time.time() * 1000)
            manifest = Manifest.sign(publisher, model_id, version, body, created_at_ms,
                                     base_version=base_version)
        store.put_manifest(manifest)
        for spec, dest in zip(specs, dirs, strict=True):
            store.add_pack(dest, manifest, spec.variant_id, hashed=True)
        store.pin(manifest.manifest_id)
    finally:
        for dest in dirs:       # what was not moved into place (an error, a duplicate)
            store.release_pack_dir(dest)
            shutil.rmtree(dest, ignore_errors=True)
    return _result(manifest, writer, already=already)


def _result(manifest: Manifest, writer: _Writer, *, already: bool) -> PublishResult:
    refs = {c.hash: c.size for c in manifest.iter_chunks()}
    return PublishResult(
        manifest_id=manifest.manifest_id,
        model_id=manifest.model_id,
        version=manifest.version,
        variants=tuple(v.variant_id for v in manifest.variants),
        files=sum(len(v.files) for v in manifest.variants),
        bytes_total=sum(v.size for v in manifest.variants),
        chunks_total=len(refs),
        chunks_new=writer.chunks_new,
        bytes_new=writer.bytes_new,
        already_published=already,
    )


def announce_stored(store: ChunkStore, ledger: Ledger,
                    publish_manifest: Callable[[Manifest], Manifest]) -> None:
    """Hand the manifests ``shoal publish`` stored while no daemon ran (pinned, and not
    in ``ledger``) to ``publish_manifest``, which writes them to the ledger so gossip
    carries them to the fleet. Not those the fleet has forgotten (a version below a
    settled one that no node keeps: ``protocol._settle``), which a publisher's store
    still holds. A manifest the ledger refuses (a conflicting version, a publisher no
    longer admitted) is logged and skipped."""
    stored = store.manifests()
    forgotten = manifests_to_retire(stored, ledger.intents(), ledger.records().values())
    for manifest in stored:
        mid = manifest.manifest_id
        if not store.is_pinned(mid) or mid in forgotten or \
                ledger.manifest_by_id(mid) is not None:     # (its head and body held)
            continue
        try:
            standing = publish_manifest(manifest)
        except ShoalError as exc:
            log.warning("not announcing %s %s from the store: %s", manifest.model_id,
                        manifest.version, exc, extra={"model_id": manifest.model_id})
            continue
        if standing.manifest_id == manifest.manifest_id:
            log.info("announced %s %s (published while the daemon was stopped)",
                     manifest.model_id, manifest.version,
                     extra={"model_id": manifest.model_id})
