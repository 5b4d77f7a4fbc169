"""Running a model's migrator: export of its state, ingest across an upgrade.

Theory of operation
-------------------
A variant may name a migrator (``Variant.migrator``, a file of the variant). The
agent starts it as a child process — ``python FILE`` for a ``.py`` file (with
this agent's interpreter, so :mod:`agent.migrator_sdk` imports), else the file
itself — with the version directory as its working directory, in a new session
(so a kill reaches its children too), and speaks the frames of
the migrator messages of :mod:`protocol` over its stdin/stdout. Its stderr is kept
(the last few KiB) for the failure reason. One wall-clock timeout covers the
whole conversation *and* the exit: past it the process group is killed.

* :func:`run_export` asks for the state paths; each is checked (relative,
  confined to the version directory, no symlink leading out).
* :func:`run_ingest` serves :class:`IngestFileCopy` requests with
  :func:`copy_confined` — a source confined to the *old* version's directory,
  a destination confined to the *new* one, directories copied recursively,
  symlinks followed only to regular files inside the old root. A path that
  escapes (``..``, absolute, a symlink out) is a :class:`MigratorRefused`: the
  migration is aborted at once and the process killed. An ordinary failure
  (a missing file) is answered with ``IngestFileResult(error=...)`` and the
  migrator decides.

Every failure is a :class:`MigratorError` (an :class:`AgentError`) whose message
is what the operator sees as the ``deployment_failed`` blocker detail.

Install with ingest (:func:`ingest_hook`): the :class:`~agent._install.Installer`
assembles the new version in its temporary directory, calls the hook there, and
only renames the directory into ``versions/`` and switches ``current`` when the
hook returned; on an exception the temporary directory is removed and
``current`` still names the old version.

Export (:func:`export_version`): the running version's migrator names the state
paths; a derived manifest (``base_version`` = the running version) lists the
base variant's files unchanged (same chunks, so a node that holds the base
fetches only the state) plus the state files, chunked into the store, plus a
small marker file :data:`EXPORT_MARKER`. A derived version carries its state:
moving to it never runs ingest.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agent._errors import AgentError
from agent._storage.install import RECORD_NAME, Installer
from agent._storage.paths import confine
from agent._storage.store import ChunkStore
from protocol import (
    DEFAULT_PARAMS,
    MAX_MIGRATOR_FRAME,
    ChunkRef,
    ExportRequest,
    ExportResponse,
    FileEntry,
    FrameDecoder,
    HostilePath,
    IngestFileCopy,
    IngestFileResult,
    IngestRequest,
    InvalidValue,
    Manifest,
    MigratorDone,
    MigratorFailed,
    ProtocolError,
    SemVer,
    ShoalError,
    SigningIdentity,
    Variant,
    check_migrator_path,
    chunk_stream,
    decode,
    encode,
    frame,
    merkle_root,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXPORT_MARKER",
    "MigratorError",
    "MigratorRefused",
    "MigratorTimeout",
    "MigratorCrashed",
    "MigratorGarbage",
    "MigratorReportedFailure",
    "IngestReport",
    "ExportResult",
    "migrator_command",
    "run_export",
    "run_ingest",
    "copy_confined",
    "collect_state_files",
    "build_derived",
    "export_version",
    "default_derived_version",
    "is_derived",
    "ingest_hook",
]

#: Seconds a migrator may run (conversation and exit) before it is killed.
DEFAULT_TIMEOUT = 120.0
#: A file every derived (exported) version carries: its base version and state paths.
EXPORT_MARKER = ".shoal-export.json"
_STDERR_TAIL = 4096
_TMP = ".tmp-ingest-"
_SHOAL_ROOT = str(Path(__file__).resolve().parent.parent)


class MigratorError(AgentError):
    """A migrator run failed; the message is the operator-facing reason."""


class MigratorRefused(MigratorError):
    """The migrator asked for a path outside its roots (``..``, absolute, a symlink out)."""


class MigratorTimeout(MigratorError):
    """The migrator ran past its timeout and was killed."""


class MigratorCrashed(MigratorError):
    """The migrator exited (or could not start) before finishing its conversation."""


class MigratorGarbage(MigratorError):
    """The migrator wrote something that is not a valid frame or an expected message."""


class MigratorReportedFailure(MigratorError):
    """The migrator itself said the migration cannot be done (``MigratorFailed``)."""


@dataclass(frozen=True, slots=True)
class IngestReport:
    copies: int          # IngestFileCopy requests served successfully
    failed: int          # requests answered with an error
    files: int           # files written into the new version
    bytes: int           # their bytes
    detail: str          # the migrator's MigratorDone detail


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


# ---------------------------------------------------------------------- process


def migrator_command(version_dir: Path, migrator: str) -> list[str]:
    """The argv that starts ``migrator`` (a file of the version) in ``version_dir``."""
    try:
        path = confine(version_dir, check_migrator_path(migrator, "program"))
    except HostilePath as exc:
        raise MigratorRefused(str(exc)) from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise MigratorCrashed(f"migrator {migrator!r} cannot be started: "
                              f"{exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MigratorCrashed(f"migrator {migrator!r} is not a regular file")
    if migrator.endswith(".py"):
        return [sys.executable, str(path)]
    if not st.st_mode & 0o100:
        raise MigratorCrashed(f"migrator {migrator!r} is not executable (publish it with "
                              "its executable bit, or name a .py file)")
    return [str(path)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _SHOAL_ROOT + (os.pathsep + old if old else "")
    env["SHOAL_MIGRATOR"] = "1"
    return env


class _Channel:
    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.decoder = FrameDecoder(MAX_MIGRATOR_FRAME)
        self.pending: list[bytes] = []

    async def send(self, msg: object) -> None:
        try:
            await self.stdin.send_all(frame(encode(msg), MAX_MIGRATOR_FRAME))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _Eof from None

    async def receive(self) -> object:
        while not self.pending:
            data = await self.stdout.receive_some(65536)
            if not data:
                if not self.decoder.at_boundary():
                    raise MigratorGarbage("migrator output ended in the middle of a frame")
                raise _Eof
            try:
                self.pending.extend(self.decoder.feed(data))
            except ProtocolError as exc:
                raise MigratorGarbage(f"migrator wrote garbage on stdout ({exc}); only "
                                      "shoal frames may go there (log to stderr)") from None
        body = self.pending.pop(0)
        try:
            return decode(body, MAX_MIGRATOR_FRAME)
        except ProtocolError as exc:
            raise MigratorGarbage(f"migrator wrote an undecodable frame: {exc}") from None


class _Eof(Exception):
    """The migrator closed its end before the conversation was over."""


Handler = Callable[[object, _Channel], Awaitable[Any]]


async def _converse(version_dir: Path, migrator: str, first: object, handler: Handler,
                    timeout: float, label: str) -> Any:
    """Start the migrator, send ``first``, feed replies to ``handler`` until it returns
    something other than None, then require a clean exit. All within ``timeout``."""
    cmd = migrator_command(version_dir, migrator)
    try:
        proc = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=str(version_dir), env=_env(), start_new_session=True)
    except OSError as exc:
        raise MigratorCrashed(f"{label}: cannot start migrator {migrator!r}: "
                              f"{exc.strerror or exc}") from None
    tail = bytearray()
    stderr_done = trio.Event()
    result: Any = None
    error: BaseException | None = None

    async def drain() -> None:
        assert proc.stderr is not None
        try:
            while data := await proc.stderr.receive_some(65536):
                tail.extend(data)
                del tail[:-_STDERR_TAIL]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stderr_done.set()

    def why() -> str:
        text = tail.decode("utf-8", "replace").strip().splitlines()
        return f"; stderr: {text[-1][:300]}" if text else ""

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.move_on_after(timeout) as scope:
                chan = _Channel(proc)
                try:
                    await chan.send(first)
                    while result is None:
                        result = await handler(await chan.receive(), chan)
                    with contextlib.suppress(OSError):
                        await proc.stdin.aclose()  # type: ignore[union-attr]
                    code = await proc.wait()
                    if code != 0:
                        error = MigratorCrashed(f"{label}: migrator finished its conversation "
                                                f"but exited with status {code}")
                except _Eof:
                    code = await proc.wait()
                    with trio.move_on_after(1.0):
                        await stderr_done.wait()
                    error = MigratorCrashed(
                        f"{label}: migrator exited with status {code} before finishing"
                        f"{why()}")
                except MigratorError as exc:
                    error = exc
            if scope.cancelled_caught and error is None:
                error = MigratorTimeout(f"{label}: migrator did not finish within "
                                        f"{timeout:g} s and was killed")
            _kill(proc)
            with trio.move_on_after(1.0):
                await stderr_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        _kill(proc)
        with trio.CancelScope(shield=True):
            await proc.wait()
    if error is not None:
        if isinstance(error, MigratorCrashed) and not str(error).endswith(why()):
            error = MigratorCrashed(f"{error}{why()}")
        raise error
    return result


def _kill(proc: trio.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


# ---------------------------------------------------------------------- export


async def run_export(version_dir: Path, migrator: str, *,
                     timeout: float = DEFAULT_TIMEOUT) -> tuple[str, ...]:
    """The state paths the migrator of ``version_dir`` names, each checked to be inside."""

    async def handle(msg: object, chan: _Channel) -> tuple[str, ...] | None:
        if isinstance(msg, ExportResponse):
            for p in msg.paths:
                try:
                    confine(version_dir, check_migrator_path(p, "export path"))
                except HostilePath as exc:
                    raise MigratorRefused(f"export: {exc}") from None
            return tuple(dict.fromkeys(msg.paths))
        if isinstance(msg, MigratorFailed):
            raise MigratorReportedFailure(f"export: migrator failed: {msg.reason}")
        raise MigratorGarbage(f"export: unexpected {type(msg).__name__} from the migrator")

    result: tuple[str, ...] = await _converse(version_dir, migrator, ExportRequest(), handle,
                                              timeout, "export")
    return result


# ---------------------------------------------------------------------- ingest


def _inside(real_root: str, path: str) -> bool:
    return path == real_root or path.startswith(real_root + os.sep)


def _source_entries(real_root: str, src: str, rel: str) -> Iterator[tuple[str, str, int]]:
    """(path to read, path relative to the copy's top, mode) for every file under ``src``.

    Symlinks are followed only to regular files inside ``real_root``; a symlink out
    is :class:`HostilePath`, a symlinked directory or a special file an ``OSError``.
    """
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(src)
        if not _inside(real_root, target):
            raise HostilePath(f"{rel or '.'} is a symlink leading out of the old version "
                              f"(to {target})")
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{rel}: symlinked directories and special files are not copied")
        yield target, rel, st.st_mode
    elif stat.S_ISREG(st.st_mode):
        yield src, rel, st.st_mode
    elif stat.S_ISDIR(st.st_mode):
        with os.scandir(src) as it:
            names = sorted(e.name for e in it)
        for name in names:
            yield from _source_entries(real_root, os.path.join(src, name),
                                       f"{rel}/{name}" if rel else name)
    else:
        raise OSError(f"{rel or '.'}: not a regular file or directory")


def _write_confined(new_root: Path, dest: str, read_path: str, mode: int) -> int:
    target = confine(new_root, dest)
    os.makedirs(target.parent, exist_ok=True)
    target = confine(new_root, dest)           # re-check now the parents exist
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(f"{dest} is a directory in the new version")
    tmp = target.parent / f"{_TMP}{secrets.token_hex(4)}"
    src_fd = os.open(read_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(src_fd).st_mode):
            raise OSError(f"{read_path} is not a regular file")
        out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode & 0o777)
        try:
            total = 0
            while data := os.read(src_fd, 1 << 20):
                view = memoryview(data)
                while view:
                    view = view[os.write(out_fd, view):]
                total += len(data)
            os.fsync(out_fd)
        finally:
            os.close(out_fd)
        os.replace(tmp, target)   # replaces a planted symlink itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(src_fd)
    return total


def copy_confined(old_root: Path, new_root: Path, source: str, dest: str) -> tuple[int, int]:
    """Copy ``old_root/source`` (a file, or a directory recursively) to ``new_root/dest``.

    Returns (files, bytes). :class:`HostilePath` when either path escapes its root;
    ``OSError`` for ordinary failures (missing source...).
    """
    check_migrator_path(source, "ingest source")
    check_migrator_path(dest, "ingest destination")
    if dest.split("/")[0] == RECORD_NAME:
        raise HostilePath(f"migrator ingest destination {dest!r} refused: {RECORD_NAME} is "
                          "the agent's install record")
    src = confine(old_root, source)
    confine(new_root, dest)
    real_old = os.path.realpath(old_root)
    entries = list(_source_entries(real_old, str(src), ""))
    files = nbytes = 0
    for read_path, rel, mode in entries:
        nbytes += _write_confined(new_root, f"{dest}/{rel}" if rel else dest, read_path, mode)
        files += 1
    return files, nbytes


async def run_ingest(old_dir: Path, new_dir: Path, migrator: str, *, model_id: str,
                     from_version: str, to_version: str,
                     timeout: float = DEFAULT_TIMEOUT) -> IngestReport:
    """Run ``new_dir``'s migrator in ingest mode, serving its copy requests."""
    counts = {"copies": 0, "failed": 0, "files": 0, "bytes": 0}

    async def handle(msg: object, chan: _Channel) -> IngestReport | None:
        if isinstance(msg, IngestFileCopy):
            error: str | None = None
            try:
                files, nbytes = await trio.to_thread.run_sync(
                    copy_confined, old_dir, new_dir, msg.source_path, msg.dest_path)
            except HostilePath as exc:
                with contextlib.suppress(_Eof):
                    await chan.send(IngestFileResult(msg.source_path, msg.dest_path,
                                                     f"refused: {exc}"))
                raise MigratorRefused(f"ingest {from_version} -> {to_version}: {exc}; "
                                      "the migration was aborted") from None
            except (OSError, ShoalError) as exc:
                error = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
                counts["failed"] += 1
            else:
                counts["copies"] += 1
                counts["files"] += files
                counts["bytes"] += nbytes
            await chan.send(IngestFileResult(msg.source_path, msg.dest_path, error))
            return None
        if isinstance(msg, MigratorDone):
            return IngestReport(counts["copies"], counts["failed"], counts["files"],
                                counts["bytes"], msg.detail)
        if isinstance(msg, MigratorFailed):
            raise MigratorReportedFailure(f"ingest {from_version} -> {to_version}: migrator "
                                          f"failed: {msg.reason}")
        raise MigratorGarbage(f"ingest: unexpected {type(msg).__name__} from the migrator")

    report: IngestReport = await _converse(
        new_dir, migrator, IngestRequest(model_id, from_version, to_version), handle,
        timeout, f"ingest {from_version} -> {to_version}")
    return report


def is_derived(manifest: Manifest, variant_id: str) -> bool:
    """A derived (exported) version carries its own state: never ingest into it."""
    if manifest.base_version is not None:
        return True
    return any(f.path == EXPORT_MARKER for f in manifest.variant(variant_id).files)


def ingest_hook(installer: Installer, manifest: Manifest, variant_id: str,
                previous_version: str | None, *, timeout: float = DEFAULT_TIMEOUT
                ) -> Callable[[Path], None] | None:
    """The ``prepare`` callable for :meth:`Installer.install` when moving
    ``previous_version`` -> ``manifest.version`` needs an ingest; else None.

    The callable runs in a worker thread of a trio run (the daemon's installs do),
    and drives :func:`run_ingest` on the trio loop.
    """
    migrator = manifest.variant(variant_id).migrator
    if migrator is None or previous_version is None or previous_version == manifest.version:
        return None
    if is_derived(manifest, variant_id):
        return None
    old_dir = installer.data.version_dir(manifest.model_id, previous_version)
    if not (old_dir / RECORD_NAME).is_file():
        return None
    model_id, version = manifest.model_id, manifest.version

    def prepare(new_dir: Path) -> None:
        trio.from_thread.run(lambda: run_ingest(
            old_dir, new_dir, migrator, model_id=model_id, from_version=previous_version,
            to_version=version, timeout=timeout))
    return prepare


# ---------------------------------------------------------------------- derived versions


def collect_state_files(version_dir: Path, paths: tuple[str, ...]
                        ) -> list[tuple[str, str, bool]]:
    """(relative path, path to read, executable) for every file the state paths name."""
    real = os.path.realpath(version_dir)
    out: dict[str, tuple[str, str, bool]] = {}
    for p in paths:
        try:
            top = confine(version_dir, check_migrator_path(p, "export path"))
            entries = list(_source_entries(real, str(top), ""))
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
    entry = FileEntry(rel, sum(r.size for r in refs), tuple(refs),
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
                                  tuple(files[k] for k in sorted(files)), variant.migrator)
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
                         timeout: float = DEFAULT_TIMEOUT) -> ExportResult:
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
    if migrator is None:
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
    paths = await run_export(vdir, migrator, timeout=timeout)
    return await trio.to_thread.run_sync(
        lambda: build_derived(installer.store, publisher, base, active.variant_id, vdir,
                              paths, version, int(now_s * 1000)))
