"""The migrator SDK: what a model author writes to keep a model's state across versions.

A migrator is a file of the model's variant, named in ``shoal-model.toml``
(``migrator = "migrate.py"``). The agent runs it with the version directory as
its working directory. With this SDK it is a few lines::

    from agent.migrator_sdk import IngestContext, Migrator, main

    class ThresholdMigrator(Migrator):
        def export(self) -> list[str]:
            return ["state"]                       # what `shoal export` publishes

        def ingest(self, ctx: IngestContext) -> None:
            ctx.copy("state")                      # old version's state -> this one

    main(ThresholdMigrator())

``export()`` returns paths (files or directories, relative to the version
directory) that hold the model's mutable state. ``ingest()`` runs in the *new*
version's directory while the node moves from ``ctx.from_version``; it asks the
agent to copy files out of the old version with :meth:`IngestContext.copy`
(paths relative to the old and the new version's directory — the agent refuses
anything outside them). Raise :class:`MigrationError` to fail with a reason the
operator sees; the node then stays on its old version.

``print()`` is safe: while the migrator runs, ``sys.stdout`` is redirected to
stderr, because the real stdout carries the agent's frames.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import BinaryIO

from protocol import (
    MAX_MIGRATOR_FRAME,
    ExportRequest,
    ExportResponse,
    FrameDecoder,
    IngestFileCopy,
    IngestFileResult,
    IngestRequest,
    MigratorDone,
    MigratorFailed,
    ProtocolError,
    decode,
    encode,
    frame,
)

__all__ = ["Migrator", "IngestContext", "MigrationError", "run", "main"]


class MigrationError(Exception):
    """Raise from ``export``/``ingest`` to fail the migration with this reason."""


class _Pipe:
    def __init__(self, rfile: BinaryIO, wfile: BinaryIO) -> None:
        self.rfile, self.wfile = rfile, wfile
        self.decoder = FrameDecoder(MAX_MIGRATOR_FRAME)
        self.pending: list[bytes] = []

    def send(self, msg: object) -> None:
        self.wfile.write(frame(encode(msg), MAX_MIGRATOR_FRAME))
        self.wfile.flush()

    def receive(self) -> object:
        while not self.pending:
            data = self.rfile.read1(65536) if hasattr(self.rfile, "read1") \
                else self.rfile.read(65536)
            if not data:
                raise MigrationError("the agent closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return decode(self.pending.pop(0), MAX_MIGRATOR_FRAME)


class IngestContext:
    """What ``ingest`` gets: the versions involved and the copy request."""

    def __init__(self, request: IngestRequest, pipe: _Pipe) -> None:
        self.model_id = request.model_id
        self.from_version = request.from_version
        self.to_version = request.to_version
        self._pipe = pipe

    def try_copy(self, source: str, dest: str | None = None) -> str | None:
        """Copy ``source`` (old version) to ``dest`` (new version, default: the same
        path); None on success, else the agent's error text."""
        dest = source if dest is None else dest
        self._pipe.send(IngestFileCopy(source, dest))
        reply = self._pipe.receive()
        if not isinstance(reply, IngestFileResult) or (reply.source_path, reply.dest_path) \
                != (source, dest):
            raise MigrationError(f"unexpected answer to a copy request: {reply!r}")
        return reply.error

    def copy(self, source: str, dest: str | None = None) -> None:
        """Like :meth:`try_copy`, but a failed copy raises :class:`MigrationError`."""
        error = self.try_copy(source, dest)
        if error is not None:
            raise MigrationError(f"copying {source} failed: {error}")


class Migrator:
    """Override :meth:`export` and/or :meth:`ingest`."""

    def export(self) -> Iterable[str]:
        """Paths (relative to the version directory) of the model's mutable state."""
        return ()

    def ingest(self, ctx: IngestContext) -> None:
        """Carry state over from ``ctx.from_version``; the default carries nothing."""


def run(migrator: Migrator, rfile: BinaryIO | None = None,
        wfile: BinaryIO | None = None) -> int:
    """Serve one agent request on ``rfile``/``wfile`` (default: stdin/stdout); exit status."""
    pipe = _Pipe(rfile or sys.stdin.buffer, wfile or sys.stdout.buffer)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr           # a stray print() must not corrupt the frames
    try:
        try:
            first = pipe.receive()
        except (ProtocolError, MigrationError) as exc:
            print(f"migrator: bad request from the agent: {exc}", file=sys.stderr)
            return 2
        try:
            if isinstance(first, ExportRequest):
                pipe.send(ExportResponse(tuple(migrator.export())))
            elif isinstance(first, IngestRequest):
                migrator.ingest(IngestContext(first, pipe))
                pipe.send(MigratorDone(f"ingested from {first.from_version}"))
            else:
                pipe.send(MigratorFailed(f"unexpected request {type(first).__name__}"))
                return 1
        except MigrationError as exc:
            pipe.send(MigratorFailed(str(exc)))
            return 1
        return 0
    finally:
        sys.stdout = real_stdout


def main(migrator: Migrator) -> None:
    """``sys.exit(run(migrator))`` — the last line of a migrator script."""
    sys.exit(run(migrator))
