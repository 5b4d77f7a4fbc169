"""The local control socket: the CLI and the Python client talk to the daemon here.

A Unix stream socket (mode 0600 inside a 0700 directory) carrying the codec's
frames (4-byte length + message). Each request (type ids 100-149) gets one
response, or an :class:`ErrorResponse` naming the error class and an
operator-readable message; :class:`Subscribe` gets a stream of
:class:`ConvergenceReport` until the rollout is complete or the client hangs up.

The kernel tells the daemon who connected (``SO_PEERCRED``): any uid other than
the daemon's own and root is refused before a byte is read, whatever the file
mode says.

Intents issued here are signed with the operator key of the data directory
(``keys/operator.key`` with its ``operator.cert``); a daemon without one
refuses distribute / rollback / cancel with an error saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import struct as _struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from protocol._codec import FrameDecoder, decode, encode, frame, message, struct
from protocol._convergence import ModelConvergenceStatus
from protocol._errors import ProtocolError, ShoalError
from protocol._identity import Certificate, Revocation, Role, fingerprint
from protocol._intents import Intent, IntentKind, Scope, ScopeKind, targets_node
from protocol._ledger import NodeRecord
from protocol._types import TransferPriority

from ._errors import AgentError

if TYPE_CHECKING:
    from protocol._node import NodeMachine

    from ._runtime import NodeRuntime

__all__ = [
    "ControlServer", "ControlClient", "ControlError", "ControlRefused", "ControlSocketBusy",
    "StatusRequest", "StatusResponse", "PeersRequest", "PeersResponse", "PeerEntry",
    "PublishRequest", "PublishResponse", "DistributeRequest", "CancelRequest",
    "IntentResponse", "ConvergenceRequest", "ConvergenceReport",
    "NodeStatusRequest", "NodeStatusResponse", "NodesWithVersionRequest", "NodeListResponse",
    "Subscribe", "ErrorResponse", "IntentsRequest", "IntentListResponse",
    "RecordsRequest", "RecordsResponse", "RecordEntry",
    "RequestRejected", "UnknownModel", "UnknownVersion", "UnknownVariant", "EmptyScope",
    "UnknownIntent", "UnknownNode", "AnnounceTrustRequest", "AnnounceTrustResponse",
    "MAX_CONTROL_CONNECTIONS", "CONTROL_IDLE_TIMEOUT", "ControlStatistics",
]

log = logging.getLogger("shoal.control")
_MAX_FRAME = 16 * 1024 * 1024
MAX_CONTROL_CONNECTIONS = 64      # concurrent control connections; more are refused
CONTROL_IDLE_TIMEOUT = 30.0       # seconds a connection may send nothing (between or in
                                  # the middle of requests); a subscription is exempt
_BACKLOG = 128
_ALL = Scope()


class ControlError(AgentError):
    """The daemon answered a control request with an error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ControlRefused(AgentError):
    """The control socket is missing, or the daemon refused this user."""


class ControlSocketBusy(AgentError):
    """Another live daemon serves the control socket this daemon was configured with."""


class RequestRejected(ControlError):
    """The issuing daemon refused an operation before anything was sent to the fleet."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(kind or type(self).__name__, message)


class UnknownModel(RequestRejected):
    """No manifest of this model is in the ledger (publish it first)."""


class UnknownVersion(RequestRejected):
    """The model is known but not this version (publish it, or check the spelling)."""


class UnknownVariant(RequestRejected):
    """The version has no variant of that id."""


class EmptyScope(RequestRejected):
    """The scope names no node the fleet knows (or some node it names is unknown)."""


class UnknownIntent(RequestRejected):
    """No distribute / rollback intent with that handle id (or model) is known here."""


class UnknownNode(RequestRejected):
    """No node with that id or name is known here."""


REJECTIONS: dict[str, type[RequestRejected]] = {
    c.__name__: c for c in (RequestRejected, UnknownModel, UnknownVersion, UnknownVariant,
                            EmptyScope, UnknownIntent, UnknownNode)}


# ---------------------------------------------------------------------------- messages


@message(100)
@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@message(101)
@dataclass(frozen=True, slots=True)
class StatusResponse:
    node_id: str
    name: str
    fleet_id: str
    formation: str
    listen_port: int
    peers: tuple[str, ...]
    record: NodeRecord | None
    statistics_json: str


@struct
@dataclass(frozen=True, slots=True)
class PeerEntry:
    node_id: str
    name: str
    address: str
    initiated_by_us: bool
    connected_for: float
    bytes_sent: int
    bytes_received: int


@message(102)
@dataclass(frozen=True, slots=True)
class PeersRequest:
    pass


@message(103)
@dataclass(frozen=True, slots=True)
class PeersResponse:
    peers: tuple[PeerEntry, ...]


@message(104)
@dataclass(frozen=True, slots=True)
class PublishRequest:
    path: str
    model_id: str
    version: str
    base_version: str | None = None  # set for a derived version (`shoal export`)


@message(105)
@dataclass(frozen=True, slots=True)
class PublishResponse:
    manifest_id: str
    model_id: str
    version: str
    variants: tuple[str, ...]
    bytes_total: int
    chunks_total: int
    chunks_new: int
    bytes_new: int
    files: int = 0
    already_published: bool = False


@message(106)
@dataclass(frozen=True, slots=True)
class DistributeRequest:
    kind: IntentKind                 # distribute or rollback
    model_id: str
    version: str
    variant_id: str | None = None
    delta_from: str | None = None
    scope: Scope = dataclasses.field(default_factory=Scope)
    priority: TransferPriority = TransferPriority.NORMAL


@message(107)
@dataclass(frozen=True, slots=True)
class IntentResponse:
    """An intent as the client sees it (the handle of an operation)."""

    intent_id: str
    model_id: str
    version: str
    kind: IntentKind = IntentKind.DISTRIBUTE
    variant_id: str | None = None
    delta_from: str | None = None
    scope: Scope = dataclasses.field(default_factory=Scope)
    priority: TransferPriority = TransferPriority.NORMAL
    issued_at: float = 0.0           # the intent's HLC wall time (seconds)
    issuer_id: str = ""              # operator key id that signed it
    targets: int = 0                 # nodes the scope matched when answered, at this node
    cancels: str | None = None       # for a cancel: the intent it cancels
    cancelled_by: str | None = None  # for a distribute/rollback: its cancel, if any


@message(108)
@dataclass(frozen=True, slots=True)
class CancelRequest:
    model_id: str                    # "" when intent_id is given
    intent_id: str | None = None     # None: the intent this node follows for the model


@message(110)
@dataclass(frozen=True, slots=True)
class ConvergenceRequest:
    model_id: str
    version: str


@message(111)
@dataclass(frozen=True, slots=True)
class ConvergenceReport:
    """The answer to a ConvergenceRequest, and each item of a Subscribe stream."""

    status: ModelConvergenceStatus


@message(112)
@dataclass(frozen=True, slots=True)
class NodeStatusRequest:
    node_id: str                     # id or name; "" = this node


@message(113)
@dataclass(frozen=True, slots=True)
class NodeStatusResponse:
    node_id: str
    record: NodeRecord | None


@message(114)
@dataclass(frozen=True, slots=True)
class NodesWithVersionRequest:
    model_id: str
    version: str


@message(115)
@dataclass(frozen=True, slots=True)
class NodeListResponse:
    node_ids: tuple[str, ...]


@message(116)
@dataclass(frozen=True, slots=True)
class Subscribe:
    model_id: str
    version: str
    until_complete: bool = True


@message(117)
@dataclass(frozen=True, slots=True)
class IntentsRequest:
    model_id: str = ""               # "" = every model


@message(118)
@dataclass(frozen=True, slots=True)
class IntentListResponse:
    intents: tuple[IntentResponse, ...]


@message(119)
@dataclass(frozen=True, slots=True)
class RecordsRequest:
    """Every node record this node's ledger holds (for fleet views: ``status --watch``)."""


@struct
@dataclass(frozen=True, slots=True)
class RecordEntry:
    node_id: str
    record: NodeRecord


@message(120)
@dataclass(frozen=True, slots=True)
class RecordsResponse:
    records: tuple[RecordEntry, ...]


@message(121)
@dataclass(frozen=True, slots=True)
class AnnounceTrustRequest:
    """Hand a root-signed certificate or revocation (exactly one) to the daemon: it
    verifies it against the fleet root and writes it to the ledger, so gossip spreads it."""

    certificate: Certificate | None = None
    revocation: Revocation | None = None


@message(122)
@dataclass(frozen=True, slots=True)
class AnnounceTrustResponse:
    kind: str                        # "certificate" or "revocation"
    subject_id: str                  # key id the certificate admits / the revocation revokes
    added: bool                      # False: the ledger already held it
    revoked_keys: tuple[str, ...]    # every key id this node's trust now holds revoked


@message(149)
@dataclass(frozen=True, slots=True)
class ErrorResponse:
    kind: str
    message: str


# ---------------------------------------------------------------------------- helpers


def count_targets(m: NodeMachine, scope: Scope, kind: IntentKind, model_id: str) -> int:
    """How many nodes of this node's ledger an intent of ``kind`` with ``scope`` targets now.

    The same rule as :func:`protocol._intents.intent_applies`: a rollback targets
    only nodes in scope that have (had) the model deployed."""
    return sum(1 for nid, rec in m.ledger.records().items()
               if targets_node(kind, model_id, scope, nid, rec))


def check_known(m: NodeMachine, model_id: str, version: str) -> None:
    """Refuse a question about a model or version nothing in the ledger mentions."""
    led = m.ledger
    versions = {x.version for x in led.manifests() if x.model_id == model_id}
    versions |= {i.version for i in led.intents() if i.model_id == model_id}
    if not versions:
        raise UnknownModel(f"no model {model_id!r} is known to this node (`shoal models` "
                           f"on the publisher, `shoal handles` here)")
    if version not in versions:
        raise UnknownVersion(f"{model_id} has no version {version!r} known here; known: "
                             f"{', '.join(sorted(versions))}")


def find_node(m: NodeMachine, node: str) -> str:
    """The id of the node named by id or name; :class:`UnknownNode` if none."""
    records = m.ledger.records()
    if node in records:
        return node
    named = sorted(k for k, r in records.items() if r.name == node)
    if not named:
        raise UnknownNode(f"no node {node!r} is known here (by id or name); "
                          f"`shoal nodes` lists the nodes")
    return named[0]


def check_request(m: NodeMachine, req: DistributeRequest) -> int:
    """Refuse what cannot work before anything is signed or gossiped; the target count.

    Unknown model, version, delta base or variant, and a scope that covers no
    known node (or names a node nobody knows) are refused here, at the issuing
    node, with an error an operator can act on."""
    led = m.ledger
    versions = sorted({x.version for x in led.manifests() if x.model_id == req.model_id})
    if not versions:
        raise UnknownModel(f"no published model {req.model_id!r} is known to this node; "
                           f"publish it first (`shoal publish`), or wait for its manifest "
                           f"to arrive by gossip")
    manifest = led.manifest_for(req.model_id, req.version)
    if manifest is None:
        raise UnknownVersion(f"{req.model_id} has no published version {req.version!r}; "
                             f"known versions: {', '.join(versions)}")
    if req.delta_from is not None:
        if req.delta_from == req.version:
            raise UnknownVersion(f"a delta from {req.version} to itself moves nothing")
        if led.manifest_for(req.model_id, req.delta_from) is None:
            raise UnknownVersion(f"delta base {req.model_id} {req.delta_from!r} was never "
                                 f"published; known versions: {', '.join(versions)}")
    if req.variant_id is not None and req.variant_id not in {
            v.variant_id for v in manifest.variants}:
        raise UnknownVariant(f"{req.model_id} {req.version} has no variant "
                             f"{req.variant_id!r}; it has "
                             f"{', '.join(v.variant_id for v in manifest.variants)}")
    records = led.records()
    if req.scope.kind is ScopeKind.NODES:
        names = {r.name for r in records.values() if r.name}
        unknown = [n for n in req.scope.nodes if n not in records and n not in names]
        if unknown:
            raise EmptyScope(f"scope names nodes no record mentions: {', '.join(unknown)} "
                             f"(use node ids or names from `shoal status`)")
    targets = count_targets(m, req.scope, req.kind, req.model_id)
    if targets == 0:
        raise EmptyScope(f"scope {describe_scope(req.scope)} matches none of the "
                         f"{len(records)} known nodes; nothing was sent")
    return targets


def check_operator(m: NodeMachine, key: bytes) -> None:
    """Refuse to sign with an operator key this node's trust no longer admits."""
    if not m.trust.is_admitted(key, Role.OPERATOR):
        revoked = any(r.subject_key == key for r in m.trust.revocations())
        raise RequestRejected(
            f"this daemon's operator key {fingerprint(key)} is "
            + ("revoked by the fleet root" if revoked else "not admitted")
            + "; nothing was sent. Have the fleet root admit a new operator key "
              "(`shoal fleet admit --role operator`) and install it here")


def describe_scope(scope: Scope) -> str:
    """The CLI spelling of ``scope`` (``all``, ``formation=x``, ``capable:...``)."""
    return scope.text()


def cancel_of(m: NodeMachine, intent_id: str) -> Intent | None:
    """The admitted cancel intent naming ``intent_id`` (first by id), if any."""
    for it in m.ledger.intents():
        if it.kind is IntentKind.CANCEL and it.cancels == intent_id and \
                m.trust.is_admitted(it.issuer_key, Role.OPERATOR):
            return it
    return None


def describe(m: NodeMachine, intent: Intent, targets: int) -> IntentResponse:
    cancel = cancel_of(m, intent.intent_id) if intent.kind is not IntentKind.CANCEL else None
    return IntentResponse(intent.intent_id, intent.model_id, intent.version, intent.kind,
                          intent.variant_id, intent.delta_from, intent.scope, intent.priority,
                          intent.stamp.wall_ms / 1000.0, intent.issuer_id, targets,
                          intent.cancels, cancel.intent_id if cancel is not None else None)


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _struct.calcsize("3i"))
    _pid, uid, _gid = _struct.unpack("3i", raw)
    return int(uid)


# ---------------------------------------------------------------------------- server


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
            return await stream.receive_some(65536)
        self._idle_closed += 1
        log.info("closed control connection: idle for %g s", self.idle_timeout)
        return b""

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(_MAX_FRAME)
        async with stream:
            try:
                while data := await self._receive(stream):
                    for body in decoder.feed(data):
                        self.requests += 1
                        try:
                            req = decode(body, _MAX_FRAME)
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

    @staticmethod
    async def _send(stream: trio.SocketStream, msg: object) -> None:
        await stream.send_all(frame(encode(msg), _MAX_FRAME))

    async def _dispatch(self, stream: trio.SocketStream, req: object) -> None:
        try:
            if isinstance(req, Subscribe | ConvergenceRequest):
                await self.runtime.call(
                    lambda m, now: check_known(m, req.model_id, req.version))
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
            import json
            from dataclasses import asdict

            def status(m: NodeMachine, now: float) -> StatusResponse:
                stats = {"runtime": asdict(rt.statistics()),
                         "store": asdict(rt.store.statistics()),
                         "rejected_entries": dict(m.ledger.statistics().rejected),
                         "swarm": asdict(m.swarm.statistics()),
                         "gossip": asdict(m.gossip.statistics()),
                         "control": asdict(self.statistics()),
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
                nid = find_node(m, req.node_id) if req.node_id else rt.node_id
                return NodeStatusResponse(nid, m.ledger.records().get(nid))
            return await rt.call(node_status)
        if isinstance(req, RecordsRequest):
            return await rt.call(lambda m, now: RecordsResponse(tuple(
                RecordEntry(nid, rec) for nid, rec in sorted(m.ledger.records().items()))))
        if isinstance(req, AnnounceTrustRequest):
            return await self._announce_trust(req)
        if isinstance(req, NodesWithVersionRequest):
            def with_version(m: NodeMachine, now: float) -> NodeListResponse:
                check_known(m, req.model_id, req.version)
                out = []
                for nid, rec in sorted(m.ledger.records().items()):
                    st = rec.model(req.model_id)
                    if st is not None and st.active_version == req.version:
                        out.append(nid)
                return NodeListResponse(tuple(out))
            return await rt.call(with_version)
        raise ValueError(f"not a control request: {type(req).__name__}")

    async def _publish(self, req: PublishRequest) -> PublishResponse:
        from ._publish import publish

        rt = self.runtime
        if rt.publisher is None:
            raise AgentError("this daemon holds no admitted publisher key (keys/publisher.key "
                             "with keys/publisher.cert); publish on a node that has one")
        publisher = rt.publisher
        if not os.path.isabs(req.path):
            raise AgentError(f"publish: {req.path!r} is not an absolute path (the daemon "
                             f"does not share the caller's working directory)")
        known = await rt.call(lambda m, now: m.ledger.manifests())
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

    def _operator(self) -> Any:
        if self.runtime.operator is None:
            raise AgentError("this daemon holds no admitted operator key (keys/operator.key "
                             "with keys/operator.cert); issue intents from an operator node")
        return self.runtime.operator

    async def _intent(self, req: DistributeRequest) -> IntentResponse:
        op = self._operator()
        if req.kind is IntentKind.CANCEL:
            raise ValueError("use CancelRequest to cancel")

        def issue(m: NodeMachine, now: float) -> IntentResponse:
            check_operator(m, op.public_key)
            targets = check_request(m, req)       # raises before anything is written
            intent = Intent.create(op, req.kind, req.model_id, req.version, m.clock.tick(now),
                                   scope=req.scope, priority=req.priority,
                                   variant_id=req.variant_id, delta_from=req.delta_from)
            m.issue_intent(intent, now)
            return describe(m, intent, targets)
        result: IntentResponse = await self.runtime.call(issue)
        return result

    async def _cancel(self, req: CancelRequest) -> IntentResponse:
        op = self._operator()

        def cancel(m: NodeMachine, now: float) -> IntentResponse:
            check_operator(m, op.public_key)
            if req.intent_id:
                target = m.ledger.intent(req.intent_id)
                if target is None:
                    raise UnknownIntent(
                        f"no intent {req.intent_id} is known at this node (yet): check the "
                        f"handle id, or wait for gossip to bring it from the issuing node")
            else:
                target = m.desired(req.model_id)
                if target is None:
                    raise UnknownIntent(f"this node follows no intent for {req.model_id!r}; "
                                        f"give the handle id to cancel")
            if target.kind is IntentKind.CANCEL:
                raise UnknownIntent(f"{target.intent_id} is itself a cancel; cancel the "
                                    f"distribute or rollback it names")
            done = cancel_of(m, target.intent_id)
            if done is not None:                  # idempotent: the cancel already stands
                return describe(m, done, 0)
            intent = Intent.create(op, IntentKind.CANCEL, target.model_id, target.version,
                                   m.clock.tick(now), cancels=target.intent_id)
            m.issue_intent(intent, now)
            return describe(m, intent, 0)
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
            out = [describe(m, i, count_targets(m, i.scope, i.kind, i.model_id))
                   for i in m.ledger.intents()
                   if not req.model_id or i.model_id == req.model_id]
            out.sort(key=lambda r: (r.issued_at, r.intent_id))
            return IntentListResponse(tuple(out))
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


# ---------------------------------------------------------------------------- client


class ControlClient:
    """Async client of a daemon's control socket (the seed API's nine operations)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._stream: trio.SocketStream | None = None
        self._decoder = FrameDecoder(_MAX_FRAME)
        self._pending: list[bytes] = []

    async def __aenter__(self) -> ControlClient:
        try:
            self._stream = await trio.open_unix_socket(self.path)
        except OSError as exc:
            raise ControlRefused(f"cannot reach the daemon at {self.path}: "
                                 f"{exc.strerror or exc}; is `shoal daemon` running?") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    async def _receive(self) -> object:
        assert self._stream is not None
        while not self._pending:
            data = await self._stream.receive_some(65536)
            if not data:
                raise ControlRefused("the daemon closed the control connection (refused "
                                     "this user, or it is shutting down)")
            self._pending.extend(self._decoder.feed(data))
        msg = decode(self._pending.pop(0), _MAX_FRAME)
        if isinstance(msg, ErrorResponse):
            rejected = REJECTIONS.get(msg.kind)
            if rejected is not None:
                raise rejected(msg.message)
            raise ControlError(msg.kind, msg.message)
        return msg

    async def request(self, req: object) -> Any:
        assert self._stream is not None, "use `async with ControlClient(path)`"
        try:
            await self._stream.send_all(frame(encode(req), _MAX_FRAME))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ControlRefused("the daemon closed the control connection") from None
        return await self._receive()

    # -- the seed API
    async def status(self) -> StatusResponse:
        r: StatusResponse = await self.request(StatusRequest())
        return r

    async def peers(self) -> PeersResponse:
        r: PeersResponse = await self.request(PeersRequest())
        return r

    async def publish(self, path: str, model_id: str, version: str,
                      base_version: str | None = None) -> PublishResponse:
        r: PublishResponse = await self.request(
            PublishRequest(path, model_id, version, base_version))
        return r

    async def distribute_model(self, model_id: str, version: str, scope: Scope = _ALL,
                               priority: TransferPriority = TransferPriority.NORMAL
                               ) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.DISTRIBUTE, model_id, version, scope=scope, priority=priority))
        return r

    async def distribute_model_variant(self, model_id: str, version: str, variant_id: str,
                                       scope: Scope = _ALL, priority: TransferPriority =
                                       TransferPriority.NORMAL) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.DISTRIBUTE, model_id, version, variant_id, scope=scope,
            priority=priority))
        return r

    async def distribute_model_delta(self, model_id: str, version: str, delta_from: str,
                                     scope: Scope = _ALL, priority: TransferPriority =
                                     TransferPriority.NORMAL) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.DISTRIBUTE, model_id, version, delta_from=delta_from, scope=scope,
            priority=priority))
        return r

    async def rollback(self, model_id: str, version: str, scope: Scope = _ALL
                       ) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.ROLLBACK, model_id, version, scope=scope,
            priority=TransferPriority.HIGH))
        return r

    async def cancel(self, model_id: str, intent_id: str | None = None) -> IntentResponse:
        r: IntentResponse = await self.request(CancelRequest(model_id, intent_id))
        return r

    async def convergence_status(self, model_id: str, version: str
                                 ) -> ModelConvergenceStatus:
        r: ConvergenceReport = await self.request(ConvergenceRequest(model_id, version))
        return r.status

    async def node_model_status(self, node_id: str = "") -> NodeStatusResponse:
        r: NodeStatusResponse = await self.request(NodeStatusRequest(node_id))
        return r

    async def nodes_with_version(self, model_id: str, version: str) -> tuple[str, ...]:
        r: NodeListResponse = await self.request(NodesWithVersionRequest(model_id, version))
        return r.node_ids

    async def records(self) -> tuple[RecordEntry, ...]:
        """Every node record the daemon's ledger holds, by node id."""
        r: RecordsResponse = await self.request(RecordsRequest())
        return r.records

    async def announce_trust(self, item: Certificate | Revocation) -> AnnounceTrustResponse:
        """Hand a root-signed certificate or revocation to the daemon (spreads by gossip)."""
        req = (AnnounceTrustRequest(certificate=item) if isinstance(item, Certificate)
               else AnnounceTrustRequest(revocation=item))
        r: AnnounceTrustResponse = await self.request(req)
        return r

    async def intents(self, model_id: str = "") -> tuple[IntentResponse, ...]:
        r: IntentListResponse = await self.request(IntentsRequest(model_id))
        return r.intents

    async def subscribe_convergence(self, model_id: str, version: str,
                                    until_complete: bool = True
                                    ) -> AsyncIterator[ModelConvergenceStatus]:
        """Statuses as they change. The connection is dedicated to the stream after this.
        With ``until_complete`` it ends after the first final status (the rollout
        completed, or was superseded, cancelled or rolled back: ``status.state``)."""
        assert self._stream is not None
        await self._stream.send_all(frame(encode(Subscribe(model_id, version, until_complete)),
                                          _MAX_FRAME))
        while True:
            rep = await self._receive()
            assert isinstance(rep, ConvergenceReport)
            yield rep.status
            if until_complete and rep.status.is_final:
                return
