"""Installing a model version from the content store, and switching versions.

Theory of operation
-------------------
Layout per model::

    models/<model_id>/versions/<version>/...files...
    models/<model_id>/versions/<version>/.shoal-install   (the install record)
    models/<model_id>/current -> versions/<version>

An install does not copy: the variant's files are a pack of the store
(``store/packs/<manifest id>.<variant>/``: written by ``shoal publish`` or by the
swarm as chunks arrived). :meth:`ChunkStore.complete` fills in the chunks the pack
lacks from the files of other versions, fsyncs each file once and re-hashes every
chunk range; the migrator's ``prepare`` hook runs on it; the install record
(manifest id, variant) is written, and the directory is renamed to
``versions/<version>`` (same filesystem: atomic). Only then is ``current``
switched: a new symlink is made under a temporary name and ``os.replace``d over
``current``. At every moment ``current`` names a complete, verified version. The
previous version stays on disk, so :meth:`Installer.activate` can switch back
without any transfer. A version replaced by another variant of itself goes back to
being a pack (its bytes are kept once, for serving, until gc).

Every file path is joined through :func:`agent._storage.paths.confine`, and files are
created with ``O_EXCL | O_NOFOLLOW``: a manifest cannot write outside its version
directory even if something planted a symlink there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent._errors import (
    ChunkCorrupted,
    ChunkNotFound,
    InstallError,
    InsufficientStorage,
    NotFound,
    StoreError,
)
from agent._storage.paths import DataDir, confine, fsync_dir
from agent._storage.store import PACK_RECORD, ChunkStore
from protocol import (
    ChunkIntegrityError,
    FileEntry,
    InvalidValue,
    Manifest,
    SemVer,
    hash_chunk,
    validate_model_id,
    validate_version,
)

__all__ = ["RECORD_NAME", "InstalledVersion", "InstallResult", "Installer"]

RECORD_NAME = ".shoal-install"
_TMP_PREFIX = ".tmp-install-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the kernel or C library cannot (other platforms, old
    kernels, filesystems without support); raises on any other error.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))
_LINK_TMP_PREFIX = ".tmp-current-"


@dataclass(frozen=True, slots=True)
class InstalledVersion:
    model_id: str
    version: str
    variant_id: str
    manifest_id: str
    path: str
    active: bool


@dataclass(frozen=True, slots=True)
class InstallResult:
    model_id: str
    version: str
    variant_id: str
    manifest_id: str
    path: str
    bytes: int
    files: int
    previous: str | None        # the version that was active before (kept on disk)
    already_installed: bool


class Installer:
    """Installs versions under ``<data>/models`` from a :class:`ChunkStore`."""

    def __init__(self, data: DataDir, store: ChunkStore) -> None:
        self.data = data
        self.store = store
        data.models.mkdir(parents=True, exist_ok=True)
        self._remove_stale()

    def _remove_stale(self) -> None:
        for model in os.scandir(self.data.models):
            if not model.is_dir(follow_symlinks=False):
                continue
            for e in os.scandir(model.path):
                if e.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(e.path, ignore_errors=True)
                elif e.name.startswith(_LINK_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)

    # ------------------------------------------------------------------ queries

    def _record(self, version_dir: Path) -> dict[str, str] | None:
        try:
            with open(version_dir / RECORD_NAME, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in
                                                ("manifest_id", "variant_id", "version")):
            return None
        return rec

    def active(self, model_id: str) -> InstalledVersion | None:
        """The version ``current`` points at, or None."""
        link = self.data.model_dir(model_id) / "current"
        try:
            target = os.readlink(link)
        except OSError:
            return None
        version = os.path.basename(target)
        return self._installed_version(model_id, version, active=True)

    def _installed_version(self, model_id: str, version: str,
                           active: bool) -> InstalledVersion | None:
        vdir = self.data.model_dir(model_id) / "versions" / version
        rec = self._record(vdir)
        if rec is None:
            return None
        return InstalledVersion(model_id, version, rec["variant_id"], rec["manifest_id"],
                                str(vdir), active)

    def installed(self, model_id: str | None = None) -> list[InstalledVersion]:
        """Every installed version (of one model, or of all), by model then version."""
        out: list[InstalledVersion] = []
        models = [model_id] if model_id is not None else sorted(
            e.name for e in os.scandir(self.data.models) if e.is_dir(follow_symlinks=False))
        for mid in models:
            vroot = self.data.model_dir(mid) / "versions"
            if not vroot.is_dir():
                continue
            current = self.active(mid)
            versions = []
            for e in os.scandir(vroot):
                try:
                    versions.append((SemVer.parse(e.name), e.name))
                except InvalidValue:
                    continue
            for _, v in sorted(versions):
                iv = self._installed_version(mid, v, current is not None
                                             and current.version == v)
                if iv is not None:
                    out.append(iv)
        return out

    # ------------------------------------------------------------------ install

    def install(self, manifest: Manifest, variant_id: str, *,
                prepare: Callable[[Path], None] | None = None,
                progress: Callable[[int, int], None] | None = None) -> InstallResult:
        """Assemble, verify and activate ``variant_id`` of ``manifest``.

        ``prepare(directory)``, if given, runs on the assembled and verified files
        before the version is renamed into place and activated (the migrator's
        ingest); if it raises, nothing is installed and ``current`` is unchanged.
        It is not called when the version is already installed.
        ``progress(bytes_done, bytes_total)`` is called as files are assembled.
        """
        variant = manifest.variant(variant_id)
        model_id, version = manifest.model_id, manifest.version
        if any(f.path.split("/")[0] == RECORD_NAME for f in variant.files):
            raise InstallError(f"{model_id} {version}: file name {RECORD_NAME} is reserved")
        model_dir = self.data.model_dir(model_id)
        versions = model_dir / "versions"
        final = versions / version
        previous = self.active(model_id)
        prev_version = previous.version if previous is not None else None
        rec = self._record(final)
        if rec is not None and rec["manifest_id"] == manifest.manifest_id \
                and rec["variant_id"] == variant_id:
            self._switch(model_id, version)
            return InstallResult(model_id, version, variant_id, manifest.manifest_id,
                                 str(final), variant.size, len(variant.files),
                                 prev_version if prev_version != version else None, True)
        replacing_active = final.exists() and prev_version == version
        versions.mkdir(parents=True, exist_ok=True)
        try:
            pack = self.store.complete(manifest, variant_id)
        except ChunkNotFound as exc:
            raise InstallError(f"{model_id} {version}: {exc}",
                               chunk_hashes=exc.chunk_hashes) from None
        except (InsufficientStorage, ChunkCorrupted):
            raise
        except StoreError as exc:
            raise InstallError(f"{model_id} {version}: {exc}") from None
        if progress is not None:
            done = 0
            for entry in variant.files:
                done += entry.size
                progress(done, variant.size)
        if os.path.realpath(pack) == os.path.realpath(final):   # indexed, record unreadable
            self.store.forget(pack)
            raise InstallError(f"{model_id} {version}: the installed directory has no "
                               "readable install record; remove it and retry")
        try:
            if prepare is not None:
                prepare(Path(pack))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(pack) / RECORD_NAME)
            self._write_record(Path(pack), manifest, variant_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(pack) / PACK_RECORD)
            fsync_dir(pack)
            with self.store.locked():
                if replacing_active:
                    # `current` names versions/<version>: swap the directories under it
                    # in one step, so it never points at a missing or half-written version
                    if not exchange_paths(Path(pack), final):
                        raise InstallError(
                            f"{model_id} {version} is active with another variant and this "
                            "system cannot swap directories atomically; activate another "
                            "version before replacing it")
                    self.store.swap_installed(pack, str(final))   # the old variant: a pack again
                    fsync_dir(versions)
                    return self._finish(manifest, variant_id, final, variant.size,
                                        len(variant.files), None)
                if final.exists() or final.is_symlink():
                    trash = model_dir / f"{_TMP_PREFIX}old-{secrets.token_hex(4)}"
                    os.rename(final, trash)
                    self.store.retire(str(final), str(trash))
                os.rename(pack, final)
                self.store.adopt(pack, str(final))
            fsync_dir(versions)
            fsync_dir(os.path.dirname(pack))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(f"no space left to install {model_id} {version} "
                                          f"under {model_dir}; free space and retry") from exc
            raise InstallError(f"cannot install {model_id} {version}: "
                               f"{exc.strerror or exc}") from exc
        return self._finish(manifest, variant_id, final, variant.size, len(variant.files),
                            prev_version)

    def _finish(self, manifest: Manifest, variant_id: str, final: Path, size: int,
                files: int, prev_version: str | None) -> InstallResult:
        self._switch(manifest.model_id, manifest.version)
        if self._stored(manifest):
            self.store.pin(manifest.manifest_id)
        return InstallResult(manifest.model_id, manifest.version, variant_id,
                             manifest.manifest_id, str(final), size, files, prev_version, False)

    def _stored(self, manifest: Manifest) -> bool:
        try:
            self.store.get_manifest(manifest.manifest_id)
        except NotFound:
            return False
        return True

    @staticmethod
    def _verify_written(fd: int, entry: FileEntry) -> None:
        """Re-read the file as written and hash each chunk range."""
        size = os.fstat(fd).st_size
        if size != entry.size:
            raise InstallError(f"{entry.path}: {size} bytes on disk, the manifest says "
                               f"{entry.size}")
        offset = 0
        for ref in entry.chunks:
            data = os.pread(fd, ref.size, offset)
            if len(data) != ref.size or hash_chunk(data) != ref.hash:
                raise InstallError(f"{entry.path}: bytes at offset {offset} do not match "
                                   f"chunk {ref.hash.hex()} after writing")
            offset += ref.size

    @staticmethod
    def _write_record(root: Path, manifest: Manifest, variant_id: str) -> None:
        rec = {"manifest_id": manifest.manifest_id, "model_id": manifest.model_id,
               "version": manifest.version, "variant_id": variant_id}
        path = root / RECORD_NAME
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ activate

    def _switch(self, model_id: str, version: str) -> None:
        model_dir = self.data.model_dir(model_id)
        tmp_link = model_dir / f"{_LINK_TMP_PREFIX}{secrets.token_hex(4)}"
        os.symlink(f"versions/{version}", tmp_link)
        try:
            os.replace(tmp_link, model_dir / "current")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_link)
            raise
        fsync_dir(model_dir)

    def activate(self, model_id: str, version: str) -> InstalledVersion:
        """Point ``current`` at an installed version (no transfer)."""
        validate_model_id(model_id)
        validate_version(version)
        iv = self._installed_version(model_id, version, active=True)
        if iv is None:
            have = ", ".join(v.version for v in self.installed(model_id)) or "none"
            raise NotFound(f"{model_id} {version} is not installed (installed: {have})")
        self._switch(model_id, version)
        return iv

    def remove(self, model_id: str, version: str) -> bool:
        """Delete an installed version that is not active (the node no longer keeps it:
        ``RemoveVersions``); its manifest is unpinned unless the store holds it as a
        pack too (a publisher's). False if it was not installed."""
        validate_model_id(model_id)
        validate_version(version)
        iv = self._installed_version(model_id, version, active=False)
        if iv is None:
            return False
        active = self.active(model_id)
        if active is not None and active.version == version:
            raise InstallError(f"{model_id} {version} is the active version; activate "
                               "another before removing it")
        model_dir = self.data.model_dir(model_id)
        trash = model_dir / f"{_TMP_PREFIX}gone-{secrets.token_hex(4)}"
        with self.store.locked():
            os.rename(iv.path, trash)
            self.store.forget(iv.path)
        fsync_dir(model_dir / "versions")
        shutil.rmtree(trash, ignore_errors=True)
        if self.store.locate(iv.manifest_id, iv.variant_id) is None:
            self.store.unpin(iv.manifest_id)
        return True

    def verify(self, model_id: str, version: str) -> list[str]:
        """Re-hash an installed version's files against its manifest; the problems found."""
        iv = self._installed_version(model_id, version, active=False)
        if iv is None:
            raise NotFound(f"{model_id} {version} is not installed")
        variant = self.store.get_manifest(iv.manifest_id).variant(iv.variant_id)
        problems = []
        for entry in variant.files:
            path = confine(Path(iv.path), entry.path)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                problems.append(f"{entry.path}: {exc.strerror or exc}")
                continue
            try:
                self._verify_written(fd, entry)
            except (InstallError, ChunkIntegrityError) as exc:
                problems.append(str(exc))
            finally:
                os.close(fd)
        return problems
