"""The daemon end of the local control socket: the CLI and the Python client talk here.

A Unix stream socket (mode 0600 inside a 0700 directory) carrying the control
messages of :mod:`._control_messages`. The server translates each request into
calls on the node state machine (inside the runtime's machine task) and the
answer into a message; what to refuse and what to answer is decided in
``protocol`` (``NodeMachine.issue`` / ``cancel``, ``protocol._operator``). Any
:class:`ShoalError` (or ``ValueError`` / ``OSError``) becomes an
:class:`ErrorResponse` naming its class.

The kernel tells the daemon who connected (``SO_PEERCRED``): any uid other than
the daemon's own and root is refused before a byte is read, whatever the file
mode says. At most ``max_connections`` are served at once, and a connection that
sends nothing for ``idle_timeout`` seconds is closed.

Memory: a connection buffers at most one partial request frame
(``MAX_CONTROL_REQUEST``, 1 MiB: requests are small; answers may still be up to
``MAX_CONTROL_FRAME``) plus one read (64 KiB), and one answer being written; an
answer the client does not take within ``idle_timeout`` closes the connection. So
the control socket holds at most ``max_connections`` x (1 MiB + 64 KiB + one answer),
each answer for at most ``idle_timeout`` seconds.

Intents issued here are signed with the operator key of the data directory
(``keys/operator.key`` with its ``operator.cert``); a daemon without one
refuses distribute / rollback / cancel with an error saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct as _struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from agent._daemon.control_messages import (
    MAX_CONTROL_FRAME,
    AnnounceTrustRequest,
    AnnounceTrustResponse,
    CancelRequest,
    ConvergenceReport,
    ConvergenceRequest,
    DistributeRequest,
    ErrorResponse,
    IntentListResponse,
    IntentResponse,
    IntentsRequest,
    NodeListResponse,
    NodeStatusRequest,
    NodeStatusResponse,
    NodesWithVersionRequest,
    PeersRequest,
    PeersResponse,
    PublishRequest,
    PublishResponse,
    RecordEntry,
    RecordsRequest,
    RecordsResponse,
    StatusRequest,
    StatusResponse,
    Subscribe,
)
from agent._errors import AgentError
from protocol import (
    Certificate,
    FrameDecoder,
    Intent,
    IntentKind,
    IntentView,
    ModelConvergenceStatus,
    ProtocolError,
    Revocation,
    ShoalError,
    SigningIdentity,
    check_known,
    count_targets,
    decode,
    describe,
    encode,
    find_node,
    fingerprint,
    frame,
    intent_views,
    nodes_running,
)

if TYPE_CHECKING:
    from agent._daemon.runtime import NodeRuntime
    from protocol import NodeMachine

__all__ = ["ControlServer", "ControlStatistics", "ControlSocketBusy",
           "MAX_CONTROL_CONNECTIONS", "CONTROL_IDLE_TIMEOUT", "MAX_CONTROL_REQUEST"]

log = logging.getLogger("shoal.control")
MAX_CONTROL_CONNECTIONS = 64      # concurrent control connections; more are refused
CONTROL_IDLE_TIMEOUT = 30.0       # seconds a connection may send nothing (between or in
                                  # the middle of requests); a subscription is exempt
_BACKLOG = 128
_READ = 65536                     # bytes asked of a control connection per read
MAX_CONTROL_REQUEST = 1024 * 1024  # bytes of one request frame (answers: MAX_CONTROL_FRAME)


class ControlSocketBusy(AgentError):
    """Another live daemon serves the control socket this daemon was configured with."""


def _intent_response(view: IntentView) -> IntentResponse:
    """The handle of an operation, as the client sees it."""
    it = view.intent
    return IntentResponse(it.intent_id, it.model_id, it.version, it.kind, it.variant_id,
                          it.delta_from, it.scope, it.priority, it.stamp.wall_ms / 1000.0,
                          it.issuer_id, view.targets, it.cancels, view.cancelled_by)


def _intent_answer(m: NodeMachine, intent: Intent, targets: int) -> IntentResponse:
    """The answer to a distribute, rollback or cancel that returned ``intent``."""
    return _intent_response(describe(m.ledger, m.trust, intent, targets))


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _struct.calcsize("3i"))
    _pid, uid, _gid = _struct.unpack("3i", raw)
    return int(uid)


@dataclass(frozen=True, slots=True)
class ControlStatistics:
    active: int                      # connections open now
    accepted: int
    refused_uid: int                 # another user (SO_PEERCRED)
    refused_over_limit: int          # beyond ``max_connections``
    idle_closed: int                 # sent nothing for ``idle_timeout`` seconds
    requests: int


class ControlServer:
    """Serves the control socket of one :class:`NodeRuntime`.

    At most ``max_connections`` connections are served at once (more are closed at
    once, with a log line), and a connection that sends nothing for ``idle_timeout``
    seconds - between requests or in the middle of one - is closed (a subscription
    that is streaming reports is not idle)."""

    def __init__(self, runtime: NodeRuntime, path: str, *,
                 max_connections: int = MAX_CONTROL_CONNECTIONS,
                 idle_timeout: float = CONTROL_IDLE_TIMEOUT) -> None:
        self.runtime = runtime
        self.path = Path(path)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.refused = 0
        self.requests = 0
        self._active = 0
        self._accepted = 0
        self._over_limit = 0
        self._idle_closed = 0

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(self._active, self._accepted, self.refused,
                                 self._over_limit, self._idle_closed, self.requests)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        await self._remove_stale_socket()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        ours = os.stat(self.path)
        sock.listen(_BACKLOG)
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, [listener])
        finally:
            # only the socket this server bound: never one another daemon bound since
            with contextlib.suppress(OSError):
                now = os.stat(self.path)
                if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                    os.unlink(self.path)

    async def _remove_stale_socket(self) -> None:
        """Unlink a socket file nobody serves; refuse one a live daemon answers on."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await probe.connect(str(self.path))
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        finally:
            probe.close()
        raise ControlSocketBusy(f"control socket {self.path} is served by another running "
                                f"daemon; give this one its own control_socket")

    async def _handle(self, stream: trio.SocketStream) -> None:
        uid = peer_uid(stream.socket)
        if uid not in (os.getuid(), 0):
            self.refused += 1
            log.warning("refused control connection from uid %d", uid)
            await trio.aclose_forcefully(stream)
            return
        if self._active >= self.max_connections:
            self._over_limit += 1
            log.warning("refused control connection: over the limit of %d concurrent "
                        "control connections", self.max_connections)
            await trio.aclose_forcefully(stream)
            return
        self._active += 1
        self._accepted += 1
        try:
            await self._serve_connection(stream)
        finally:
            self._active -= 1

    async def _receive(self, stream: trio.SocketStream) -> bytes:
        """The next bytes, or b"" when the peer closed or sent nothing for too long."""
        with trio.move_on_after(self.idle_timeout):
            return await stream.receive_some(_READ)
        self._idle_closed += 1
        log.info("closed control connection: idle for %g s", self.idle_timeout)
        return b""

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(MAX_CONTROL_REQUEST)
        async with stream:
            try:
                while data := await self._receive(stream):
                    for body in decoder.feed(data):
                        self.requests += 1
                        try:
                            req = decode(body, MAX_CONTROL_REQUEST)
                        except ProtocolError as exc:
                            await self._send(stream, ErrorResponse(type(exc).__name__,
                                                                   str(exc)))
                            return
                        await self._dispatch(stream, req)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except ProtocolError as exc:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._send(stream, ErrorResponse(type(exc).__name__, str(exc)))

    async def _send(self, stream: trio.SocketStream, msg: object) -> None:
        """Write one answer; a client that does not take it within ``idle_timeout``
        is closed (its answer is not held longer)."""
        data = frame(encode(msg), MAX_CONTROL_FRAME)
        with trio.move_on_after(self.idle_timeout):
            await stream.send_all(data)
            return
        self._idle_closed += 1
        log.info("closed control connection: did not read its answer for %g s",
                 self.idle_timeout)
        await trio.aclose_forcefully(stream)
        raise trio.ClosedResourceError("the client did not read its answer")

    async def _dispatch(self, stream: trio.SocketStream, req: object) -> None:
        try:
            if isinstance(req, Subscribe | ConvergenceRequest):
                await self.runtime.call(
                    lambda m, now: check_known(m.ledger, req.model_id, req.version))
            if isinstance(req, Subscribe):
                await self._subscribe(stream, req)
                return
            resp = await self._answer(req)
        except (ShoalError, ValueError, OSError) as exc:
            resp = ErrorResponse(type(exc).__name__, str(exc))
        await self._send(stream, resp)

    async def _answer(self, req: object) -> object:
        rt = self.runtime
        if isinstance(req, StatusRequest):
            def status(m: NodeMachine, now: float) -> StatusResponse:
                stats = {"runtime": asdict(rt.statistics()),
                         "store": asdict(rt.store.statistics()),
                         "rejected_entries": dict(m.ledger.statistics().rejected),
                         "ledger": asdict(m.ledger.statistics()),
                         "swarm": asdict(m.swarm.statistics()),
                         "gossip": asdict(m.gossip.statistics()),
                         "overlay": rt.overlay_statistics(),
                         "control": asdict(self.statistics()),
                         "probe": rt.probe_report.as_dict(),
                         "revoked_keys": [fingerprint(r.subject_key)
                                          for r in m.trust.revocations()]}
                return StatusResponse(rt.node_id, m.name, rt.config.fleet_id, m.formation,
                                      rt.port, tuple(p.node_id for p in rt.peers()),
                                      m.ledger.record(rt.node_id),
                                      json.dumps(stats, default=str))
            return await rt.call(status)
        if isinstance(req, PeersRequest):
            return PeersResponse(tuple(rt.peers()))
        if isinstance(req, PublishRequest):
            return await self._publish(req)
        if isinstance(req, DistributeRequest):
            return await self._intent(req)
        if isinstance(req, CancelRequest):
            return await self._cancel(req)
        if isinstance(req, IntentsRequest):
            return await self._intents(req)
        if isinstance(req, ConvergenceRequest):
            return await rt.call(lambda m, now: ConvergenceReport(
                m.convergence(req.model_id, req.version, now)))
        if isinstance(req, NodeStatusRequest):
            def node_status(m: NodeMachine, now: float) -> NodeStatusResponse:
                nid = find_node(m.ledger, req.node_id) if req.node_id else rt.node_id
                return NodeStatusResponse(nid, m.ledger.records().get(nid))
            return await rt.call(node_status)
        if isinstance(req, RecordsRequest):
            return await rt.call(lambda m, now: RecordsResponse(tuple(
                RecordEntry(nid, rec) for nid, rec in sorted(m.ledger.records().items()))))
        if isinstance(req, AnnounceTrustRequest):
            return await self._announce_trust(req)
        if isinstance(req, NodesWithVersionRequest):
            return await rt.call(lambda m, now: NodeListResponse(
                nodes_running(m.ledger, req.model_id, req.version)))
        raise ValueError(f"not a control request: {type(req).__name__}")

    async def _publish(self, req: PublishRequest) -> PublishResponse:
        from agent._storage.publish import publish

        rt = self.runtime
        if rt.publisher is None:
            raise AgentError("this daemon holds no admitted publisher key (keys/publisher.key "
                             "with keys/publisher.cert); publish on a node that has one")
        publisher = rt.publisher
        if not os.path.isabs(req.path):
            raise AgentError(f"publish: {req.path!r} is not an absolute path (the daemon "
                             f"does not share the caller's working directory)")
        # the manifests this node has whole, and the heads of those it has not
        known = await rt.call(lambda m, now: [*m.ledger.bodies(), *(
            h for h in m.ledger.manifests() if m.ledger.manifest_by_id(h.manifest_id) is None)])
        res = await trio.to_thread.run_sync(
            lambda: publish(rt.store, req.path, req.model_id, req.version, publisher,
                            base_version=req.base_version, known=known))
        manifest = rt.store.get_manifest(res.manifest_id)
        hashes = {c.hash for c in manifest.iter_chunks()}

        def announce(m: NodeMachine, now: float) -> None:
            for h in hashes:          # the swarm learns the publisher holds every chunk
                m.chunk_stored(h, now)
            m.publish_manifest(manifest, now)
        await rt.call(announce)
        log.info("published %s %s (manifest %s)", res.model_id, res.version, res.manifest_id,
                 extra={"model_id": res.model_id})
        return PublishResponse(res.manifest_id, res.model_id, res.version, res.variants,
                               res.bytes_total, res.chunks_total, res.chunks_new, res.bytes_new,
                               res.files, res.already_published)

    def _operator(self) -> SigningIdentity:
        if self.runtime.operator is None:
            raise AgentError("this daemon holds no admitted operator key (keys/operator.key "
                             "with keys/operator.cert); issue intents from an operator node")
        return self.runtime.operator

    async def _intent(self, req: DistributeRequest) -> IntentResponse:
        op = self._operator()
        if req.kind is IntentKind.CANCEL:
            raise ValueError("use CancelRequest to cancel")

        def issue(m: NodeMachine, now: float) -> IntentResponse:
            intent = m.issue(op, req.kind, req.model_id, req.version, now, scope=req.scope,
                             priority=req.priority, variant_id=req.variant_id,
                             delta_from=req.delta_from, policy=req.policy)
            targets = count_targets(m.ledger, intent.scope, intent.kind, intent.model_id)
            return _intent_answer(m, intent, targets)
        result: IntentResponse = await self.runtime.call(issue)
        return result

    async def _cancel(self, req: CancelRequest) -> IntentResponse:
        op = self._operator()

        def cancel(m: NodeMachine, now: float) -> IntentResponse:
            issued = m.cancel(op, now, intent_id=req.intent_id, model_id=req.model_id)
            return _intent_answer(m, issued, 0)
        result: IntentResponse = await self.runtime.call(cancel)
        return result

    async def _announce_trust(self, req: AnnounceTrustRequest) -> AnnounceTrustResponse:
        item: Certificate | Revocation
        if req.certificate is not None and req.revocation is None:
            item, kind = req.certificate, "certificate"
        elif req.revocation is not None and req.certificate is None:
            item, kind = req.revocation, "revocation"
        else:
            raise ValueError("announce exactly one certificate or one revocation")

        def announce(m: NodeMachine, now: float) -> AnnounceTrustResponse:
            added = m.announce_trust(item, now)     # raises unless root-signed
            revoked = tuple(fingerprint(r.subject_key) for r in m.trust.revocations())
            return AnnounceTrustResponse(kind, fingerprint(item.subject_key), added, revoked)
        result: AnnounceTrustResponse = await self.runtime.call(announce)
        if result.added:
            log.warning("announced %s of key %s (by the fleet root)", kind, result.subject_id)
        return result

    async def _intents(self, req: IntentsRequest) -> IntentListResponse:
        def listing(m: NodeMachine, now: float) -> IntentListResponse:
            return IntentListResponse(tuple(
                _intent_response(v) for v in intent_views(m.ledger, m.trust, req.model_id)))
        result: IntentListResponse = await self.runtime.call(listing)
        return result

    async def _subscribe(self, stream: trio.SocketStream, req: Subscribe) -> None:
        rt = self.runtime
        last: ModelConvergenceStatus | None = None
        while True:
            status: ModelConvergenceStatus = await rt.call(
                lambda m, now: m.convergence(req.model_id, req.version, now))
            if status != last:
                await self._send(stream, ConvergenceReport(status))
                last = status
            if req.until_complete and status.is_final:
                return          # complete, superseded, cancelled or rolled back
            with trio.move_on_after(0.5):
                await rt.wait_changed()
            await trio.sleep(0.2)
