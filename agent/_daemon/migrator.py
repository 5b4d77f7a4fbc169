"""Running a model's migrator: export of its state, ingest across an upgrade.

Theory of operation
-------------------
A variant may name a migrator: ``Variant.migrator``, a program among the
variant's files. The migrator is a gRPC server implementing the seed's
``t1.fps.model.Migrator`` service (``agent/_grpc/migrator.proto``); the agent is
its client. One wire, whatever language the model is written in.

* **A program** — the agent starts it (``python FILE`` for a ``.py`` file, with
  this agent's interpreter so :mod:`agent.migrator_sdk` imports, else the file
  itself) in the version directory, in a new session (so a kill reaches its
  children), with :data:`ADDRESS_ENV` set to a fresh ``unix:`` address inside a
  private (0700) temporary directory. The agent waits until the channel is ready,
  makes one call, then stops the process group (SIGTERM, SIGKILL after
  :data:`STOP_GRACE` seconds) and removes the directory with the socket. The
  program's stdout and stderr are kept (the last few KiB) for failure reasons.
* **An address** (``migrator_address=``, a model already running as a service):
  the agent only connects (:func:`check_migrator_address`).

The gRPC client is blocking; it runs in a worker thread with a deadline (the
time left of one wall-clock timeout that also covers start-up and readiness), and
a trio watchdog cancels the call if the deadline or a trio cancellation comes
first. The worker thread is never abandoned: a cancelled call ends it promptly,
and nothing writes into a version directory after the runner returned.

* :func:`run_export` calls ``Export``; each returned path is checked (relative,
  confined to the version directory, no symlink leading out).
* :func:`run_ingest` calls ``Ingest`` and serves each ``IngestFileCopy`` with
  :func:`copy_confined` — a source confined to the *old* version's directory, a
  destination confined to the *new* one, directories copied recursively,
  symlinks followed only to regular files inside the old root — answering one
  ``IngestFileResult`` per copy (``error`` empty on success). A path that escapes
  (``..``, absolute, a symlink out) is a :class:`MigratorRefused`: the call is
  cancelled at once. An ordinary failure (a missing file) is answered with
  ``error`` set and the migrator decides. The server ends the call: status OK
  means the state is ingested; any other status fails the upgrade with its
  details.

Every failure is a :class:`MigratorError` (an :class:`AgentError`) whose message
is what the operator sees as the ``deployment_failed`` blocker detail.

Install with ingest (:func:`ingest_hook`): the :class:`~agent._install.Installer`
assembles the new version in its temporary directory, calls the hook there, and
only renames the directory into ``versions/`` and switches ``current`` when the
hook returned; on an exception the temporary directory is removed and
``current`` still names the old version.

Export and derived versions (the state a migrator names, published as a version of
its own) are in ``agent/_daemon/export.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import trio

from agent._errors import AgentError
from agent._grpc import migrator_pb2 as pb
from agent._grpc import migrator_pb2_grpc as pb_grpc
from agent._storage.install import RECORD_NAME, Installer
from agent._storage.paths import confine
from protocol import (
    HostilePath,
    Manifest,
    ShoalError,
    check_migrator_path,
)

__all__ = [
    "ADDRESS_ENV",
    "DEFAULT_TIMEOUT",
    "EXPORT_MARKER",
    "STOP_GRACE",
    "MigratorError",
    "MigratorRefused",
    "MigratorTimeout",
    "MigratorNotReady",
    "MigratorCrashed",
    "MigratorGarbage",
    "MigratorReportedFailure",
    "IngestReport",
    "check_migrator_address",
    "migrator_command",
    "run_export",
    "run_ingest",
    "copy_confined",
    "is_derived",
    "ingest_hook",
]

#: Seconds a migrator may take (start, readiness, the call) before it is given up on.
DEFAULT_TIMEOUT = 120.0
#: Seconds a started migrator has to exit after SIGTERM before its group gets SIGKILL.
STOP_GRACE = 5.0
#: Where a started migrator's private socket directory is made (None: the system's temp).
PRIVATE_DIR: str | None = None
#: The environment variable that tells a started migrator where to serve.
ADDRESS_ENV = "SHOAL_MIGRATOR_ADDRESS"
#: A file every derived (exported) version carries: its base version and state paths.
EXPORT_MARKER = ".shoal-export.json"
_OUTPUT_TAIL = 4096
_TMP = ".tmp-ingest-"
_SHOAL_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_MAX_MESSAGE = 4 * 1024 * 1024
_CHANNEL_OPTIONS = [
    # a started server comes up within milliseconds: do not sit in a 1 s reconnect backoff
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]
T = TypeVar("T")


class MigratorError(AgentError):
    """A migrator run failed; the message is the operator-facing reason."""


class MigratorRefused(MigratorError):
    """The migrator asked for a path outside its roots (``..``, absolute, a symlink out)."""


class MigratorTimeout(MigratorError):
    """The migrator's call ran past its timeout and was cancelled."""


class MigratorNotReady(MigratorError):
    """The migrator never became ready to serve (or its address cannot be reached)."""


class MigratorCrashed(MigratorError):
    """The migrator process exited (or could not start) before the call was over."""


class MigratorGarbage(MigratorError):
    """The migrator sent something that is not the service's message or a known status."""


class MigratorReportedFailure(MigratorError):
    """The migrator ended the call with a non-OK status (its details are the reason)."""


@dataclass(frozen=True, slots=True)
class IngestReport:
    copies: int          # IngestFileCopy requests served successfully
    failed: int          # requests answered with an error
    files: int           # files written into the new version
    bytes: int           # their bytes
    detail: str          # what the migrator's call ended with


# ---------------------------------------------------------------------- reaching it


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


def check_migrator_address(address: str, *, allow_remote: bool = False) -> str:
    """``address`` if the agent may connect to it: ``unix:///abs/path`` (or
    ``unix:/abs/path``), or ``host:port`` on a loopback host unless ``allow_remote``.
    :class:`MigratorRefused` otherwise."""
    if address.startswith("unix:"):
        path = address[len("unix://"):] if address.startswith("unix://") else address[5:]
        if not path.startswith("/") or "\x00" in path:
            raise MigratorRefused(f"migrator address {address!r} refused: a unix address "
                                  "names an absolute path (unix:///run/model/migrator.sock)")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MigratorRefused(f"migrator address {address!r} refused: expected "
                              "unix:///path or host:port")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if allow_remote:
        return address
    if bare == "localhost":
        return address
    try:
        loopback = ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise MigratorRefused(f"migrator address {address!r} refused: only loopback hosts "
                              "(127.0.0.1, [::1], localhost) unless the node's config sets "
                              "migrator_allow_remote = true")
    return address


def _env(address: str) -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _SHOAL_ROOT + (os.pathsep + old if old else "")
    env[ADDRESS_ENV] = address
    return env


class _CallBox:
    """Cancels a gRPC call from another thread, even before the call exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call: Any = None
        self.reason: str | None = None

    def set(self, call: Any) -> None:
        with self._lock:
            self._call = call
            cancel = self.reason is not None
        if cancel:
            call.cancel()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            call = self._call
        if call is not None:
            call.cancel()


class _Started:
    """A migrator program the agent started: its process and its output tail."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.output = bytearray()

    async def drain(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await self.proc.stdout.receive_some(65536):
                self.output.extend(data)
                del self.output[:-_OUTPUT_TAIL]

    def why(self) -> str:
        lines = self.output.decode("utf-8", "replace").strip().splitlines()
        return f"; output: {lines[-1][:300]}" if lines else ""

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` s; reap the process."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.proc.wait()
        self.signal_group(signal.SIGKILL)   # stragglers of the group, or the leader itself
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


async def _accepts(address: str) -> bool:
    """Whether a connection to ``address`` (``unix:`` or ``host:port``) is accepted now."""
    with trio.move_on_after(1.0):
        try:
            if address.startswith("unix:"):
                path = address[len("unix://"):] if address.startswith("unix://") \
                    else address[5:]
                sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
                with sock:
                    await sock.connect(path)
            else:
                host, _, port = address.rpartition(":")
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                await stream.aclose()
        except OSError:
            return False
        return True
    return False


def _status_error(exc: grpc.RpcError, label: str, box: _CallBox, timeout: float
                  ) -> MigratorError:
    """The operator-facing error for a call that ended with a non-OK status."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    if box.reason == "timeout" or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return MigratorTimeout(f"{label}: migrator did not finish within {timeout:g} s; "
                               "the call was cancelled")
    if box.reason is not None:
        return MigratorError(f"{label}: the call was cancelled ({box.reason})")
    if code == grpc.StatusCode.INTERNAL and details.startswith("Exception deserializing"):
        return MigratorGarbage(f"{label}: migrator sent a message that is not a valid "
                               f"t1.fps.model message ({details})")
    if code == grpc.StatusCode.UNKNOWN and details.startswith("Server sent unknown code"):
        return MigratorGarbage(f"{label}: migrator ended the call with an unknown status "
                               f"({details[:300]})")
    if not isinstance(code, grpc.StatusCode):
        return MigratorGarbage(f"{label}: migrator ended the call with no valid status")
    if code == grpc.StatusCode.UNAVAILABLE:
        return MigratorCrashed(f"{label}: migrator connection lost: {details[:300]}")
    return MigratorReportedFailure(f"{label}: migrator failed with status {code.name}: "
                                   f"{details[:500] or '(no details)'}")


async def _call(version_dir: Path, migrator: str | None, address: str | None,
                rpc: Callable[[pb_grpc.MigratorStub, float, _CallBox], T], *,
                timeout: float, label: str, allow_remote: bool = False) -> T:
    """Reach the migrator (start ``migrator`` in ``version_dir``, or connect to
    ``address``), wait for the channel, run ``rpc(stub, seconds_left, box)`` in a
    worker thread, stop what was started. All within ``timeout`` seconds."""
    deadline = trio.current_time() + timeout
    private: str | None = None
    cmd: list[str] = []
    if address is not None:
        check_migrator_address(address, allow_remote=allow_remote)
    elif migrator is not None:
        cmd = migrator_command(version_dir, migrator)
        private = tempfile.mkdtemp(prefix="shoal-migrator-", dir=PRIVATE_DIR)  # mode 0700
        if len(private) > 80:       # a unix socket path has at most 107 bytes
            os.rmdir(private)
            private = tempfile.mkdtemp(prefix="shoal-migrator-", dir="/tmp")
        address = f"unix://{private}/migrator.sock"
    else:
        raise MigratorError(f"{label}: the variant declares no migrator")
    started: _Started | None = None
    try:
        if private is not None:
            try:
                proc = await trio.lowlevel.open_process(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, cwd=str(version_dir), env=_env(address),
                    start_new_session=True)
            except OSError as exc:
                raise MigratorCrashed(f"{label}: cannot start migrator {migrator!r}: "
                                      f"{exc.strerror or exc}") from None
            started = _Started(proc)
        outcome: list[tuple[bool, Any]] = []
        async with trio.open_nursery() as nursery:
            if started is not None:
                nursery.start_soon(started.drain)
            try:
                outcome.append((True, await _connected(address, started, rpc, deadline,
                                                       timeout, label)))
            except Exception as exc:    # raised below, not wrapped in the nursery's group
                outcome.append((False, exc))
            finally:
                if started is not None:
                    with trio.CancelScope(shield=True):
                        await started.stop(STOP_GRACE)
                nursery.cancel_scope.cancel()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]
    finally:
        if started is not None:
            with trio.CancelScope(shield=True):
                await started.stop(0)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


async def _connected(address: str, started: _Started | None,
                     rpc: Callable[[pb_grpc.MigratorStub, float, _CallBox], T],
                     deadline: float, timeout: float, label: str) -> T:
    # Ready means something accepts connections on the address. (Checked with a plain
    # connect: grpc's connectivity watcher thread races channel.close() and raises.)
    while not await _accepts(address):
        if started is not None and started.proc.poll() is not None:
            await trio.sleep(0.05)      # let the output drain
            raise MigratorCrashed(f"{label}: migrator exited with status "
                                  f"{started.proc.returncode} before it served "
                                  f"{ADDRESS_ENV}{started.why()}")
        if trio.current_time() >= deadline:
            where = f"the address in {ADDRESS_ENV}" if started is not None else address
            raise MigratorNotReady(f"{label}: migrator did not become ready on {where} "
                                   f"within {timeout:g} s"
                                   f"{started.why() if started else ''}")
        await trio.sleep(0.02)
    channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    try:
        box = _CallBox()
        stub = pb_grpc.MigratorStub(channel)  # type: ignore[no-untyped-call]
        outcome: list[Any] = []

        seconds = max(0.001, deadline - trio.current_time())

        def work() -> None:
            try:
                outcome.append(("ok", rpc(stub, seconds, box)))
            except BaseException as exc:  # handed back to the trio task below
                outcome.append(("err", exc))

        finished = False
        async with trio.open_nursery() as nursery:
            async def watchdog() -> None:
                try:
                    await trio.sleep_until(deadline + 0.25)   # grpc's own deadline comes first
                    box.cancel("timeout")
                except trio.Cancelled:
                    if not finished:
                        box.cancel("the agent cancelled the migration")
                    raise
            nursery.start_soon(watchdog)
            await trio.to_thread.run_sync(work)   # not abandoned: a cancel ends the call
            finished = True
            nursery.cancel_scope.cancel()
        kind, value = outcome[0]
        if kind == "ok":
            return value  # type: ignore[no-any-return]
        if isinstance(value, grpc.RpcError):
            err = _status_error(value, label, box, timeout)
            if started is not None and not isinstance(err, MigratorTimeout):
                with trio.move_on_after(0.5):
                    await started.proc.wait()
                if started.proc.returncode is not None:
                    await trio.sleep(0.05)
                    raise MigratorCrashed(f"{label}: migrator exited with status "
                                          f"{started.proc.returncode} before finishing"
                                          f"{started.why()}") from None
            raise err from None
        if isinstance(value, grpc.FutureCancelledError):
            raise _status_error(grpc.RpcError(), label, box, timeout) from None
        raise value
    finally:
        channel.close()


# ---------------------------------------------------------------------- export


async def run_export(version_dir: Path, migrator: str | None, *, address: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT,
                     allow_remote: bool = False) -> tuple[str, ...]:
    """The state paths the migrator of ``version_dir`` names, each checked to be inside."""

    def rpc(stub: pb_grpc.MigratorStub, seconds: float, box: _CallBox) -> tuple[str, ...]:
        fut = stub.Export.future(pb.ExportRequest(), timeout=seconds, wait_for_ready=True)
        box.set(fut)
        return tuple(fut.result().paths)

    paths = await _call(version_dir, migrator, address, rpc, timeout=timeout, label="export",
                        allow_remote=allow_remote)
    for p in paths:
        try:
            confine(version_dir, check_migrator_path(p, "export path"))
        except HostilePath as exc:
            raise MigratorRefused(f"export: {exc}") from None
    return tuple(dict.fromkeys(paths))


# ---------------------------------------------------------------------- ingest


def _inside(real_root: str, path: str) -> bool:
    return path == real_root or path.startswith(real_root + os.sep)


def source_entries(real_root: str, src: str, rel: str) -> Iterator[tuple[str, str, int]]:
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
            yield from source_entries(real_root, os.path.join(src, name),
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
    entries = list(source_entries(real_old, str(src), ""))
    files = nbytes = 0
    for read_path, rel, mode in entries:
        nbytes += _write_confined(new_root, f"{dest}/{rel}" if rel else dest, read_path, mode)
        files += 1
    return files, nbytes


async def run_ingest(old_dir: Path, new_dir: Path, migrator: str | None, *, model_id: str,
                     from_version: str, to_version: str, address: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT,
                     allow_remote: bool = False) -> IngestReport:
    """Call ``Ingest`` on the new version's migrator, serving its copy requests."""
    label = f"ingest {from_version} -> {to_version}"

    def rpc(stub: pb_grpc.MigratorStub, seconds: float, box: _CallBox) -> IngestReport:
        replies: queue.SimpleQueue[pb.IngestFileResult | None] = queue.SimpleQueue()

        def requests() -> Iterator[pb.IngestFileResult]:
            while (item := replies.get()) is not None:
                yield item

        counts = {"copies": 0, "failed": 0, "files": 0, "bytes": 0}
        call = stub.Ingest(requests(), timeout=seconds, wait_for_ready=True)
        box.set(call)
        try:
            for copy in call:
                src, dst = copy.source_path, copy.dest_path
                error = ""
                try:
                    files, nbytes = copy_confined(old_dir, new_dir, src, dst)
                except HostilePath as exc:
                    replies.put(pb.IngestFileResult(source_path=src, dest_path=dst,
                                                    error=f"refused: {exc}"))
                    box.cancel("refused")
                    raise MigratorRefused(f"{label}: {exc}; the migration was "
                                          "aborted") from None
                except (OSError, ShoalError) as exc:
                    error = ((exc.strerror or str(exc)) if isinstance(exc, OSError)
                             else str(exc)) or type(exc).__name__
                    counts["failed"] += 1
                else:
                    counts["copies"] += 1
                    counts["files"] += files
                    counts["bytes"] += nbytes
                replies.put(pb.IngestFileResult(source_path=src, dest_path=dst, error=error))
        finally:
            replies.put(None)
        return IngestReport(counts["copies"], counts["failed"], counts["files"],
                            counts["bytes"], f"ingested from {from_version}")

    del model_id    # the seed's service carries no model or version names
    return await _call(new_dir, migrator, address, rpc, timeout=timeout, label=label,
                       allow_remote=allow_remote)


def is_derived(manifest: Manifest, variant_id: str) -> bool:
    """A derived (exported) version carries its own state: never ingest into it."""
    if manifest.base_version is not None:
        return True
    return any(f.path == EXPORT_MARKER for f in manifest.variant(variant_id).files)


def ingest_hook(installer: Installer, manifest: Manifest, variant_id: str,
                previous_version: str | None, *, timeout: float = DEFAULT_TIMEOUT,
                allow_remote: bool = False) -> Callable[[Path], None] | None:
    """The ``prepare`` callable for :meth:`Installer.install` when moving
    ``previous_version`` -> ``manifest.version`` needs an ingest; else None.

    The callable runs in a worker thread of a trio run (the daemon's installs do),
    and drives :func:`run_ingest` on the trio loop.
    """
    variant = manifest.variant(variant_id)
    migrator, address = variant.migrator, variant.migrator_address
    if (migrator is None and address is None) or previous_version is None \
            or previous_version == manifest.version:
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
            to_version=version, address=address, timeout=timeout, allow_remote=allow_remote))
    return prepare
