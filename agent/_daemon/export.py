"""Export: a running model's learned state, published as a derived version.

Theory of operation
-------------------
The running version's migrator names the state paths (``Export``, through
:func:`~agent._daemon.migrator.run_export`); each is confined to the version
directory. A *derived* manifest (``base_version`` = the running version) lists the
base variant's files unchanged -- the same chunks, so a node that holds the base
fetches only the state -- plus the state files, chunked into the store, plus a small
marker file :data:`~agent._daemon.migrator.EXPORT_MARKER`. A derived version carries
its state: moving to it never runs ingest (:func:`~agent._daemon.migrator.is_derived`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from agent._daemon.migrator import (
    DEFAULT_TIMEOUT,
    EXPORT_MARKER,
    MigratorError,
    MigratorRefused,
    run_export,
    source_entries,
)
from agent._storage.install import RECORD_NAME, Installer
from agent._storage.paths import confine
from agent._storage.store import ChunkStore
from protocol import (
    DEFAULT_PARAMS,
    ChunkList,
    ChunkRef,
    FileEntry,
    HostilePath,
    InvalidValue,
    Manifest,
    SemVer,
    SigningIdentity,
    Variant,
    check_migrator_path,
    chunk_stream,
    merkle_root,
)

__all__ = ["ExportResult", "build_derived", "collect_state_files", "default_derived_version",
           "export_version"]


@dataclass(frozen=True, slots=True)
class ExportResult:
    manifest: Manifest
    base_version: str
    variant_id: str
    state_paths: tuple[str, ...]
    state_files: int
    state_bytes: int
    new_chunks: int
    new_bytes: int



# ---------------------------------------------------------------------- derived versions


def collect_state_files(version_dir: Path, paths: tuple[str, ...]
                        ) -> list[tuple[str, str, bool]]:
    """(relative path, path to read, executable) for every file the state paths name."""
    real = os.path.realpath(version_dir)
    out: dict[str, tuple[str, str, bool]] = {}
    for p in paths:
        try:
            top = confine(version_dir, check_migrator_path(p, "export path"))
            entries = list(source_entries(real, str(top), ""))
        except HostilePath as exc:
            raise MigratorRefused(f"export: {exc}") from None
        except OSError as exc:
            raise MigratorError(f"export: state path {p!r}: {exc.strerror or exc}") from None
        for read_path, rel, mode in entries:
            name = f"{p}/{rel}" if rel else p
            if name.split("/")[0] in (RECORD_NAME, EXPORT_MARKER):
                continue
            out[name] = (name, read_path, bool(mode & 0o111))
    return [out[k] for k in sorted(out)]


def _chunk_file(store: ChunkStore, rel: str, data_source: Callable[[int], bytes],
                executable: bool) -> tuple[FileEntry, int, int]:
    refs: list[ChunkRef] = []
    new_chunks = new_bytes = 0
    seen: set[bytes] = set()
    for h, data in chunk_stream(data_source, DEFAULT_PARAMS):
        if not store.has(h) and h not in seen:
            seen.add(h)
            new_chunks += 1
            new_bytes += len(data)
        refs.append(ChunkRef(h, len(data)))
    entry = FileEntry(rel, sum(r.size for r in refs), ChunkList(refs),
                      merkle_root([r.hash for r in refs]), executable)
    return entry, new_chunks, new_bytes


def _reader(data: bytes) -> Callable[[int], bytes]:
    pos = [0]

    def read(n: int) -> bytes:
        chunk = data[pos[0]:pos[0] + n]
        pos[0] += len(chunk)
        return chunk
    return read


def build_derived(store: ChunkStore, publisher: SigningIdentity, base: Manifest,
                  variant_id: str, version_dir: Path, state_paths: tuple[str, ...],
                  new_version: str, created_at_ms: int) -> ExportResult:
    """Chunk the state, sign the derived manifest (stored, pinned) and stage its pack:
    the state's chunks are written into it; the base's are copied in when it is
    completed (installed)."""
    variant = base.variant(variant_id)
    files = {f.path: f for f in variant.files if f.path != EXPORT_MARKER}
    state = collect_state_files(version_dir, state_paths)
    new_chunks = new_bytes = state_bytes = 0
    for rel, read_path, executable in state:
        with open(read_path, "rb", buffering=0) as f:
            entry, nc, nb = _chunk_file(store, rel, f.read, executable)
        files[rel] = entry
        new_chunks += nc
        new_bytes += nb
        state_bytes += entry.size
    marker = json.dumps({"base_version": base.version, "variant_id": variant_id,
                         "state_paths": list(state_paths)}, sort_keys=True).encode()
    entry, nc, nb = _chunk_file(store, EXPORT_MARKER, _reader(marker), False)
    files[EXPORT_MARKER] = entry
    new_chunks += nc
    new_bytes += nb
    try:
        derived_variant = Variant(variant_id, variant.requirements,
                                  tuple(files[k] for k in sorted(files)), variant.migrator,
                                  variant.migrator_address)
        manifest = Manifest.sign(publisher, base.model_id, new_version, (derived_variant,),
                                 created_at_ms, base_version=base.version)
    except InvalidValue as exc:
        raise MigratorError(f"export: the derived version is not valid: {exc}") from None
    store.put_manifest(manifest)
    store.pin(manifest.manifest_id)
    store.stage(manifest, variant_id)
    sources = [(rel, read_path) for rel, read_path, _ in state]
    for rel, read_path in sources:
        with open(read_path, "rb", buffering=0) as f:
            _put_chunks(store, rel, f.read, files[rel])
    _put_chunks(store, EXPORT_MARKER, _reader(marker), files[EXPORT_MARKER])
    return ExportResult(manifest, base.version, variant_id, state_paths, len(state),
                        state_bytes, new_chunks, new_bytes)


def _put_chunks(store: ChunkStore, rel: str, data_source: Callable[[int], bytes],
                entry: FileEntry) -> None:
    expected = [r.hash for r in entry.chunks]
    got = []
    for h, data in chunk_stream(data_source, DEFAULT_PARAMS):
        got.append(h)
        store.put(h, data, trusted_hash=True)
    if got != expected:
        raise MigratorError(f"export: {rel} changed while it was being exported; retry")


def default_derived_version(base: str, now_s: float) -> str:
    """A version that sorts after ``base`` and before its next release:
    ``1.2.3`` -> ``1.2.4-state.<unix seconds>``; ``2.0.0-rc.1`` -> ``2.0.0-rc.1.state.<s>``."""
    v = SemVer.parse(base)
    stamp = int(now_s)
    core = base.split("+", 1)[0]
    if v.pre:
        return f"{core}.state.{stamp}"
    return f"{v.major}.{v.minor}.{v.patch + 1}-state.{stamp}"


async def export_version(installer: Installer, publisher: SigningIdentity, model_id: str,
                         new_version: str | None, now_s: float, *,
                         timeout: float = DEFAULT_TIMEOUT,
                         allow_remote: bool = False) -> ExportResult:
    """Export the active version of ``model_id``: run its migrator, store a derived version.

    The caller announces ``result.manifest`` (a daemon: ``machine.publish_manifest`` and
    ``chunk_stored`` for its chunks, as the control socket's publish does).
    """
    active = installer.active(model_id)
    if active is None:
        raise MigratorError(f"{model_id} has no active version on this node; nothing to "
                            "export")
    base = installer.store.get_manifest(active.manifest_id)
    migrator = base.variant(active.variant_id).migrator
    address = base.variant(active.variant_id).migrator_address
    if migrator is None and address is None:
        raise MigratorError(f"{model_id} {active.version} (variant {active.variant_id}) "
                            "declares no migrator; add `migrator = \"...\"` to its "
                            "shoal-model.toml variant")
    version = new_version or default_derived_version(active.version, now_s)
    if SemVer.parse(version) == SemVer.parse(active.version):
        raise MigratorError(f"the derived version must differ from {active.version}")
    for m in installer.store.manifests():
        if m.model_id == model_id and m.version == version:
            raise MigratorError(f"{model_id} {version} already exists; choose another "
                                "--version")
    vdir = Path(active.path)
    paths = await run_export(vdir, migrator, address=address, timeout=timeout,
                             allow_remote=allow_remote)
    return await trio.to_thread.run_sync(
        lambda: build_derived(installer.store, publisher, base, active.variant_id, vdir,
                              paths, version, int(now_s * 1000)))
