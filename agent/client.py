"""The public Python API of a shoal node: ``ModelDistribution`` over the control socket.

::

    from agent import DistributionScope, ShoalClient, TransferPriority

    async with ShoalClient.connect("/var/lib/shoal/run/control.sock") as shoal:
        handle = await shoal.distribute_model("detector", "2.0.0",
                                              DistributionScope.formation("alpha"),
                                              TransferPriority.HIGH)
        async with shoal.subscribe_convergence("detector", "2.0.0") as updates:
            async for status in updates:
                print(status.converged, "/", status.total_platforms)

The client talks to the *local* daemon; the daemon signs the intent with its
operator key and gossips it to the fleet. The types here are thin frozen
dataclasses built from the control messages (``agent/_daemon/control_messages.py``); see
``docs/API.md`` for the semantics of every operation. A refusal (``UnknownModel``,
``EmptyScope``... the error classes of ``protocol``) is raised as that class,
which is also a ``ControlError``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

from agent._daemon.control_client import (
    ControlClient,
    ControlError,
    ControlRefused,
    EmptyScope,
    RequestRejected,
    UnknownIntent,
    UnknownModel,
    UnknownNode,
    UnknownVariant,
    UnknownVersion,
)
from agent._daemon.control_messages import IntentResponse, PublishResponse
from protocol import (
    BlockerReason,
    ConvergenceBlocker,
    IntentKind,
    ModelConvergenceStatus,
    ModelOperationalStatus,
    ModelState,
    OnDegraded,
    RolloutPolicy,
    RolloutState,
    Scope,
    ScopeKind,
    TransferPriority,
)

__all__ = [
    "ShoalClient", "PublishResponse", "DistributionScope", "TransferPriority",
    "ModelDistributionHandle",
    "ModelConvergenceStatus", "ConvergenceBlocker", "BlockerReason", "NodeModelStatus",
    "ModelOperationalStatus", "IntentKind", "ConvergenceSubscription", "RolloutState",
    "RolloutPolicy", "OnDegraded",
    "ControlError", "ControlRefused", "RequestRejected", "UnknownModel", "UnknownVersion",
    "UnknownVariant", "EmptyScope", "UnknownIntent", "UnknownNode",
]

@dataclass(frozen=True, slots=True)
class DistributionScope:
    """Which nodes an operation is for. Evaluated continuously by every node against
    its current record: a node that joins later or changes formation or hardware
    picks up (or leaves) a standing rollout."""

    scope: Scope = field(default_factory=Scope)

    @classmethod
    def all(cls) -> DistributionScope:
        return cls(Scope())

    @classmethod
    def formation(cls, name: str) -> DistributionScope:
        return cls(Scope.of_formation(name))

    @classmethod
    def nodes(cls, *node_ids: str) -> DistributionScope:
        """Node ids (32 hex) or node names."""
        return cls(Scope.of_nodes(*node_ids))

    @classmethod
    def capable(cls, min_gpu_mem_gb: float = 0.0, cpu_arch: str = "",
                min_storage_mb: int = 0) -> DistributionScope:
        return cls(Scope.capable(min_gpu_mem_gb, cpu_arch, min_storage_mb))

    @classmethod
    def parse(cls, text: str) -> DistributionScope:
        """The CLI syntax: ``all``, ``formation=NAME``, ``nodes=ID,ID``,
        ``capable:min-gpu-mem-gb=4,arch=aarch64,min-storage-mb=2048``."""
        return cls(Scope.parse(text))

    @property
    def kind(self) -> ScopeKind:
        return self.scope.kind

    def __str__(self) -> str:
        return self.scope.text()


@dataclass(frozen=True, slots=True)
class ModelDistributionHandle:
    """An issued intent. ``handle_id`` (the intent id) works at every node."""

    handle_id: str
    kind: IntentKind
    model_id: str
    version: str
    variant_id: str | None
    delta_from: str | None
    scope: DistributionScope
    priority: TransferPriority
    issued_at: float            # seconds since the epoch (the intent's clock stamp)
    issuer_id: str              # the operator key that signed it
    targets: int                # nodes the scope matched when the answering node replied
    cancels: str | None         # for a cancel: the handle it cancels
    cancelled_by: str | None    # the cancel of this handle, when one is known

    @classmethod
    def from_response(cls, r: IntentResponse) -> ModelDistributionHandle:
        return cls(r.intent_id, r.kind, r.model_id, r.version, r.variant_id, r.delta_from,
                   DistributionScope(r.scope), r.priority, r.issued_at, r.issuer_id,
                   r.targets, r.cancels, r.cancelled_by)


@dataclass(frozen=True, slots=True)
class NodeModelStatus:
    """One node's own report on one model (from the ledger, as gossip delivered it)."""

    node_id: str
    node_name: str
    model_id: str
    version: str                # the version it works towards ("" when none)
    variant_id: str
    status: ModelOperationalStatus
    active_version: str         # the version it runs now ("" when none)
    installed: tuple[str, ...]  # versions on disk (rollback without transfer)
    bytes_done: int
    bytes_total: int
    bytes_reused: int           # already held locally when the transfer began
    bytes_fetched: int          # fetched from peers
    blocker: BlockerReason | None
    blocker_detail: str
    intent_id: str              # the handle it is carrying out
    updated_at: float

    @classmethod
    def from_state(cls, node_id: str, name: str, st: ModelState) -> NodeModelStatus:
        return cls(node_id, name, st.model_id, st.version, st.variant_id, st.status,
                   st.active_version, st.installed, st.bytes_done, st.bytes_total,
                   st.bytes_reused, st.bytes_fetched, st.blocker, st.blocker_detail,
                   st.intent_id, st.updated_at)


class ConvergenceSubscription:
    """An async iterator of :class:`ModelConvergenceStatus`, one per change, on its own
    connection. With ``until_complete`` it ends after the first final status: the
    rollout completed, or was superseded, cancelled or rolled back (``status.state``
    says which, ``status.state_detail`` by what). Use it as ``async with`` (or call
    :meth:`aclose`) when you may stop early."""

    def __init__(self, path: str, model_id: str, version: str, until_complete: bool) -> None:
        self._path = path
        self._args = (model_id, version, until_complete)
        self._control: ControlClient | None = None
        self._reports: AsyncIterator[ModelConvergenceStatus] | None = None
        self._closed = False

    async def __aenter__(self) -> ConvergenceSubscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __aiter__(self) -> ConvergenceSubscription:
        return self

    async def __anext__(self) -> ModelConvergenceStatus:
        if self._closed:
            raise StopAsyncIteration
        if self._control is None:
            self._control = ControlClient(self._path)
            await self._control.__aenter__()
            self._reports = self._control.subscribe_convergence(*self._args).__aiter__()
        assert self._reports is not None
        try:
            report = await self._reports.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except BaseException:
            await self.aclose()
            raise
        return report

    async def aclose(self) -> None:
        self._closed = True
        reports, self._reports = self._reports, None
        if reports is not None:
            aclose = getattr(reports, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        control, self._control = self._control, None
        if control is not None:
            await control.__aexit__(None, None, None)


class ShoalClient:
    """The nine ``ModelDistribution`` operations against the local daemon."""

    def __init__(self, control: ControlClient) -> None:
        self._control = control
        self._subs: list[ConvergenceSubscription] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, socket_path: str | os.PathLike[str]
                      ) -> AsyncIterator[ShoalClient]:
        """``async with ShoalClient.connect(path) as shoal:`` (raises ControlRefused)."""
        async with ControlClient(socket_path) as control:
            client = cls(control)
            try:
                yield client
            finally:
                for sub in client._subs:
                    await sub.aclose()

    @property
    def control(self) -> ControlClient:
        """The raw control connection (status, peers, publish...)."""
        return self._control

    # ------------------------------------------------------------------ operations
    async def publish(self, path: str | os.PathLike[str], model_id: str, version: str
                      ) -> PublishResponse:
        """Publish the package at ``path`` (read by the daemon) as ``(model_id, version)``:
        chunked, stored, signed with the daemon's publisher key and announced to the
        fleet. The same bytes again are a no-op (``already_published``); other bytes
        under a published version are refused."""
        return await self._control.publish(os.path.abspath(path), model_id, version)

    async def distribute_model(self, model_id: str, version: str,
                               scope: DistributionScope | None = None,
                               priority: TransferPriority = TransferPriority.NORMAL,
                               policy: RolloutPolicy | None = None
                               ) -> ModelDistributionHandle:
        """Roll ``version`` out; every node picks the best variant its hardware runs.
        ``policy``: what the fleet does when too many nodes report it degraded."""
        r = await self._control.distribute_model(model_id, version, _wire(scope), priority,
                                                 policy)
        return ModelDistributionHandle.from_response(r)

    async def distribute_model_variant(self, model_id: str, version: str, variant_id: str,
                                       scope: DistributionScope | None = None,
                                       priority: TransferPriority = TransferPriority.NORMAL,
                                       policy: RolloutPolicy | None = None
                                       ) -> ModelDistributionHandle:
        """Roll out one explicit variant (a node that cannot run it reports a blocker)."""
        r = await self._control.distribute_model_variant(model_id, version, variant_id,
                                                         _wire(scope), priority, policy)
        return ModelDistributionHandle.from_response(r)

    async def distribute_model_delta(self, model_id: str, from_version: str,
                                     to_version: str, scope: DistributionScope | None = None,
                                     priority: TransferPriority = TransferPriority.NORMAL,
                                     policy: RolloutPolicy | None = None
                                     ) -> ModelDistributionHandle:
        """Roll ``to_version`` out as a delta on ``from_version``: nodes fetch only the
        chunks they do not hold already."""
        r = await self._control.distribute_model_delta(model_id, to_version, from_version,
                                                       _wire(scope), priority, policy)
        return ModelDistributionHandle.from_response(r)

    async def rollback(self, model_id: str, to_version: str,
                       scope: DistributionScope | None = None) -> ModelDistributionHandle:
        """Send the nodes in scope back to ``to_version`` (no transfer where on disk)."""
        r = await self._control.rollback(model_id, to_version, _wire(scope))
        return ModelDistributionHandle.from_response(r)

    async def cancel(self, handle: ModelDistributionHandle | str) -> ModelDistributionHandle:
        """Cancel a rollout fleet-wide; idempotent (the standing cancel is returned)."""
        hid = handle if isinstance(handle, str) else handle.handle_id
        r = await self._control.cancel("", hid)
        return ModelDistributionHandle.from_response(r)

    async def convergence_status(self, model_id: str, target_version: str
                                 ) -> ModelConvergenceStatus:
        return await self._control.convergence_status(model_id, target_version)

    async def node_model_status(self, model_id: str, node_id: str
                                ) -> NodeModelStatus | None:
        """``node_id`` (id or name; "" = this node) on ``model_id``; None when that node
        reports nothing about the model, :class:`UnknownNode` when no node of that id
        or name is known here."""
        r = await self._control.node_model_status(node_id)
        st = r.record.model(model_id) if r.record is not None else None
        if st is None or r.record is None:
            return None
        return NodeModelStatus.from_state(r.node_id, r.record.name, st)

    async def nodes_with_version(self, model_id: str, version: str) -> list[str]:
        """Ids of the nodes running ``version`` now (active), sorted."""
        return list(await self._control.nodes_with_version(model_id, version))

    def subscribe_convergence(self, model_id: str, target_version: str, *,
                              until_complete: bool = True) -> ConvergenceSubscription:
        sub = ConvergenceSubscription(self._control.path, model_id, target_version,
                                      until_complete)
        self._subs.append(sub)
        return sub

    # ------------------------------------------------------------------ extras
    async def handles(self, model_id: str = "") -> list[ModelDistributionHandle]:
        """Every intent this node knows (oldest first), cancels included."""
        return [ModelDistributionHandle.from_response(r)
                for r in await self._control.intents(model_id)]


def _wire(scope: DistributionScope | None) -> Scope:
    return scope.scope if scope is not None else Scope()
