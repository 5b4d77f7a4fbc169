"""The migrator SDK: a small servicer helper for Python models.

A model keeps its state across versions by serving the seed's gRPC service
``t1.fps.model.Migrator`` (``agent/_grpc/migrator.proto``; any language will do).
For a Python model this module is the whole job: subclass :class:`Migrator`,
implement :meth:`~Migrator.export` and/or :meth:`~Migrator.ingest`, and call
:func:`main` — it serves on the address the agent put in ``SHOAL_MIGRATOR_ADDRESS``
until the agent stops it (SIGTERM)::

    from agent.migrator_sdk import IngestContext, Migrator, main

    class ThresholdMigrator(Migrator):
        def export(self) -> list[str]:
            return ["state"]                       # what `shoal export` publishes

        def ingest(self, ctx: IngestContext) -> None:
            ctx.copy("state")                      # old version's state -> this one

    main(ThresholdMigrator())

``export()`` returns paths (files or directories, relative to the version
directory) that hold the model's mutable state. ``ingest()`` runs while the node
moves to this version; it asks the agent to copy files out of the old version with
:meth:`IngestContext.copy` (source relative to the old version's directory,
destination relative to the new one — the agent refuses anything outside them).
Raise :class:`MigrationError` to fail with a reason the operator sees (the call
ends with status ``FAILED_PRECONDITION`` and that reason); the node then stays on
its old version.

A model that already runs its own gRPC server adds the service to it with
:func:`add_to_server` instead.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc

from agent._grpc import migrator_pb2 as pb
from agent._grpc import migrator_pb2_grpc as pb_grpc

__all__ = ["ADDRESS_ENV", "Migrator", "IngestContext", "MigrationError", "add_to_server",
           "serve", "main"]

#: Where the agent asks a started migrator to serve (a ``unix:`` address).
ADDRESS_ENV = "SHOAL_MIGRATOR_ADDRESS"


class MigrationError(Exception):
    """Raise from ``export``/``ingest`` to fail the migration with this reason."""


class IngestContext:
    """What ``ingest`` gets: the copy request, answered by the agent."""

    def __init__(self, send: queue.SimpleQueue[Any], results: Iterator[pb.IngestFileResult]
                 ) -> None:
        self._send = send
        self._results = results

    def try_copy(self, source: str, dest: str | None = None) -> str | None:
        """Copy ``source`` (old version) to ``dest`` (new version, default: the same
        path); None on success, else the agent's error text."""
        dest = source if dest is None else dest
        self._send.put(pb.IngestFileCopy(source_path=source, dest_path=dest))
        try:
            reply = next(self._results)
        except StopIteration:
            raise MigrationError("the agent ended the call") from None
        if (reply.source_path, reply.dest_path) != (source, dest):
            raise MigrationError(f"unexpected answer to a copy request: {reply!r}")
        return reply.error or None

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
        """Carry state over from the old version; the default carries nothing."""


_DONE = object()


class _Servicer(pb_grpc.MigratorServicer):
    def __init__(self, migrator: Migrator) -> None:
        self.migrator = migrator

    def Export(self, request: pb.ExportRequest, context: grpc.ServicerContext
               ) -> pb.ExportResponse:
        try:
            paths = [str(p) for p in self.migrator.export()]
        except MigrationError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.ExportResponse(paths=paths)

    def Ingest(self, request_iterator: Iterator[pb.IngestFileResult],
               context: grpc.ServicerContext) -> Iterator[pb.IngestFileCopy]:
        # ingest() is written as plain calls (copy, wait for the answer); the stream is
        # a generator: run ingest() on its own thread and relay its copy requests.
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        failure: list[str] = []

        def work() -> None:
            try:
                self.migrator.ingest(IngestContext(outbox, request_iterator))
            except MigrationError as exc:
                failure.append(str(exc))
            except Exception as exc:
                traceback.print_exc()
                failure.append(f"{type(exc).__name__}: {exc}")
            finally:
                outbox.put(_DONE)

        thread = threading.Thread(target=work, name="migrator-ingest", daemon=True)
        thread.start()
        while (item := outbox.get()) is not _DONE:
            yield item
        thread.join()
        if failure:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, failure[0])


def add_to_server(migrator: Migrator, server: grpc.Server) -> None:
    """Serve ``migrator`` as ``t1.fps.model.Migrator`` on an existing gRPC server."""
    pb_grpc.add_MigratorServicer_to_server(_Servicer(migrator), server)  # type: ignore[no-untyped-call]


def serve(migrator: Migrator, address: str | None = None) -> None:
    """Serve ``migrator`` on ``address`` (default: ``$SHOAL_MIGRATOR_ADDRESS``) until
    SIGTERM or SIGINT."""
    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise SystemExit(f"{ADDRESS_ENV} is not set: the shoal agent starts a migrator "
                         "with the address it should serve on")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_to_server(migrator, server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot serve on {address}")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=1.0).wait()


def main(migrator: Migrator) -> None:
    """Serve ``migrator`` for the agent, then exit — the last line of a migrator script."""
    serve(migrator)
    sys.exit(0)
