"""The client end of a daemon's control socket (what the CLI and ``ShoalClient`` use).

One connection, one request at a time: each request gets its answer, or the
daemon's :class:`~._control_messages.ErrorResponse` raised here as an exception.
An operator's mistake the daemon refused (``kind`` names a
:class:`protocol.RequestRejected` class: ``UnknownModel``, ``EmptyScope``...)
is raised as that protocol class *and* as a :class:`ControlError`, so both
``except UnknownModel`` and ``except ControlError`` (with ``.kind``) catch it; any
other error is a plain :class:`ControlError` carrying the daemon's class name.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, cast

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
    EmptyScope,
    FrameDecoder,
    IntentKind,
    ModelConvergenceStatus,
    RequestRejected,
    Revocation,
    RolloutPolicy,
    Scope,
    TransferPriority,
    UnknownIntent,
    UnknownModel,
    UnknownNode,
    UnknownVariant,
    UnknownVersion,
    decode,
    encode,
    frame,
)

__all__ = [
    "ControlClient", "ControlError", "ControlRefused", "REJECTIONS",
    "RequestRejected", "UnknownModel", "UnknownVersion", "UnknownVariant", "EmptyScope",
    "UnknownIntent", "UnknownNode",
]

_ALL = Scope()


class ControlError(AgentError):
    """The daemon answered a control request with an error (``kind``: its class name)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ControlRefused(AgentError):
    """The control socket is missing, or the daemon refused this user."""


def _answered(cls: type[RequestRejected]) -> type[ControlError]:
    """``cls`` as the daemon's answer: an instance is a ``cls`` and a ControlError."""
    made = type(cls.__name__, (ControlError, cls), {"__module__": __name__,
                                                    "__doc__": cls.__doc__})
    return cast("type[ControlError]", made)


#: ErrorResponse.kind -> the exception the client raises for that refusal
REJECTIONS: dict[str, type[ControlError]] = {
    c.__name__: _answered(c) for c in (RequestRejected, UnknownModel, UnknownVersion,
                                       UnknownVariant, EmptyScope, UnknownIntent,
                                       UnknownNode)}


class ControlClient:
    """Async client of a daemon's control socket (the seed API's nine operations)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._stream: trio.SocketStream | None = None
        self._decoder = FrameDecoder(MAX_CONTROL_FRAME)
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
        msg = decode(self._pending.pop(0), MAX_CONTROL_FRAME)
        if isinstance(msg, ErrorResponse):
            raise REJECTIONS.get(msg.kind, ControlError)(msg.kind, msg.message)
        return msg

    async def request(self, req: object) -> Any:
        assert self._stream is not None, "use `async with ControlClient(path)`"
        try:
            await self._stream.send_all(frame(encode(req), MAX_CONTROL_FRAME))
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
                               priority: TransferPriority = TransferPriority.NORMAL,
                               policy: RolloutPolicy | None = None) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.DISTRIBUTE, model_id, version, scope=scope, priority=priority,
            policy=policy))
        return r

    async def distribute_model_variant(self, model_id: str, version: str, variant_id: str,
                                       scope: Scope = _ALL, priority: TransferPriority =
                                       TransferPriority.NORMAL,
                                       policy: RolloutPolicy | None = None) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.DISTRIBUTE, model_id, version, variant_id, scope=scope,
            priority=priority, policy=policy))
        return r

    async def distribute_model_delta(self, model_id: str, version: str, delta_from: str,
                                     scope: Scope = _ALL, priority: TransferPriority =
                                     TransferPriority.NORMAL,
                                     policy: RolloutPolicy | None = None) -> IntentResponse:
        r: IntentResponse = await self.request(DistributeRequest(
            IntentKind.DISTRIBUTE, model_id, version, delta_from=delta_from, scope=scope,
            priority=priority, policy=policy))
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
                                          MAX_CONTROL_FRAME))
        while True:
            rep = await self._receive()
            assert isinstance(rep, ConvergenceReport)
            yield rep.status
            if until_complete and rep.status.is_final:
                return
