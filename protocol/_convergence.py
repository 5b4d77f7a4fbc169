"""Fleet convergence for one ``(model, version)``, computed from the ledger alone.

Theory of operation
-------------------
The nodes *in scope* are those whose desired state (:func:`~._intents.resolve`,
scopes evaluated against the current records) targets ``version``; a rollback
targets only nodes that have (had) the model deployed, so a node that never ran
it does not count. Each is classified from its own record: *converged* (that
version, operational or degraded, and the intent's variant when it names one),
*failed*, *in progress* (downloading or loading that version) or *pending*
(anything else, e.g. still running another variant of the version). Because
the answer depends only on the ledger (``now`` only feeds ``unreachable``),
every node holding the same ledger reports the same status.

A node ``x`` is *unreachable* when at least ``min_suspecting`` other nodes list
it in the ``suspects`` of their own records (each node suspects the *direct*
peers it has not heard from for ``suspect_after`` seconds, see the gossip
engine), every one of those suspicions is newer than ``x``'s latest record
(it names ``x``'s current record counter: a record ``x`` wrote since refutes
it), and that state has lasted ``unreachable_after`` seconds (measured from
when the silences began). In a fleet too small for ``min_suspecting``, every
other node must suspect it. Unreachable nodes in scope get a
``network_partition`` blocker.

``estimated_completion`` (seconds, from the nodes' latest reports) counts only
what this rollout moved: a transferring node's rate is ``bytes_fetched /
(updated_at - started_at)`` (bytes it fetched from peers since its transfer
began; bytes it already held -- a resumed transfer, a delta's unchanged chunks
-- are not rate), and its remaining time is ``(bytes_total - bytes_done) /
rate``. The estimate is the slowest node. It is None (unknown) while any node
still to finish has no measured rate (pending, waiting for the manifest, or not
fetched a byte yet) or is blocked (a blocker in its record, or unreachable);
0.0 when nothing is outstanding; None once the rollout ended without completing.

``state`` says what became of the rollout, from the intents and the records
(so every node with the same ledger agrees): *unknown* when no intent (of an
admitted operator) ever targeted ``version``; *active* while nodes are in scope
and some are still to finish (or while an intent targets the version but no
node is in its scope yet); *complete* when every node in scope has finished
(converged or failed); *cancelled* when every intent that targeted the version
was cancelled; *superseded* when intents for the version still stand but every
node they cover follows a newer intent for another version -- *rolled_back*
when the newest of those is a rollback. ``state_detail`` names the intent that
ended it. The final states (:attr:`RolloutState.is_final`) end a subscription.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._codec import appended, struct
from ._identity import FleetTrust, Role
from ._intents import (
    Intent,
    IntentKind,
    OnDegraded,
    intent_applies,
    policy_actions,
    resolve,
    standing_cancels,
)
from ._records import NodeRecord
from ._settle import settled_ids
from ._types import BlockerReason, ModelOperationalStatus

__all__ = ["ConvergenceBlocker", "ModelConvergenceStatus", "RolloutState",
           "compute_convergence", "rollout_state", "unreachable_nodes"]

_DONE = (ModelOperationalStatus.OPERATIONAL, ModelOperationalStatus.DEGRADED)
_BUSY = (ModelOperationalStatus.DOWNLOADING, ModelOperationalStatus.LOADING)


@struct
@dataclass(frozen=True, slots=True)
class ConvergenceBlocker:
    node_id: str
    reason: BlockerReason
    since: float
    details: str


class RolloutState(enum.StrEnum):
    """What became of the rollout of one ``(model, version)`` (see the module docstring)."""

    UNKNOWN = "unknown"            # no intent ever targeted the version
    ACTIVE = "active"              # nodes in scope, some still to finish
    COMPLETE = "complete"          # every node in scope converged or failed
    SUPERSEDED = "superseded"      # its nodes follow a newer intent for another version
    CANCELLED = "cancelled"        # every intent that targeted it was cancelled
    ROLLED_BACK = "rolled_back"    # superseded by a rollback (or its policy rolled it back)
    HALTED = "halted"              # its rollout policy stopped it spreading

    @property
    def is_final(self) -> bool:
        """The rollout ended (a subscription stops here)."""
        return self in _FINAL


_FINAL = frozenset({RolloutState.COMPLETE, RolloutState.SUPERSEDED, RolloutState.CANCELLED,
                    RolloutState.ROLLED_BACK, RolloutState.HALTED})


@struct
@dataclass(frozen=True, slots=True)
class ModelConvergenceStatus:
    """Where the fleet stands on ``(model_id, target_version)``; computed from one
    node's ledger, so every node with the same ledger gives the same answer."""

    model_id: str
    target_version: str
    total_platforms: int        # nodes whose desired version is target_version
    converged: int              # ... running it (operational or degraded)
    in_progress: int            # ... downloading or loading it
    pending: int                # ... not started (or waiting for the manifest)
    failed: int                 # ... that failed (see blockers)
    version_distribution: dict[str, int]   # active version ("none") -> nodes in scope
    blockers: tuple[ConvergenceBlocker, ...]
    estimated_completion: float | None      # seconds left; None: unknown
    bytes_done: int = 0         # summed over the nodes in scope that report target_version
    bytes_total: int = 0
    state: RolloutState = RolloutState.ACTIVE
    state_detail: str = ""      # why it ended ("superseded by 1.2.0 (intent ...)"), or ""
    degraded: int = appended(0)  # of the converged: running it, health check failing

    @property
    def is_complete(self) -> bool:
        """Every node in scope has reached a final state (converged or failed)."""
        return self.in_progress == 0 and self.pending == 0

    @property
    def is_success(self) -> bool:
        return self.total_platforms > 0 and self.converged == self.total_platforms

    @property
    def is_final(self) -> bool:
        """The rollout ended: complete, superseded, cancelled or rolled back."""
        return self.state.is_final

    @property
    def progress(self) -> float:
        if self.total_platforms == 0:
            return 0.0
        return self.converged / self.total_platforms


def unreachable_nodes(records: Mapping[str, NodeRecord], counters: Mapping[str, int],
                      min_suspecting: int, unreachable_after: float, now: float) -> set[str]:
    """Nodes the fleet has lost: see the module docstring.

    A suspicion of ``x`` counts when it names ``x``'s current record counter (or a
    newer one): a record ``x`` wrote after the suspicion began refutes it. ``x`` is
    unreachable once ``need`` suspicions count and the ``need``-th oldest silence
    began at least ``unreachable_after`` seconds before ``now``."""
    since: dict[str, list[float]] = {}
    for origin, rec in records.items():
        for s in rec.suspects:
            if s.node_id != origin and s.node_id in records and (
                    s.counter >= counters.get(s.node_id, 0)):
                since.setdefault(s.node_id, []).append(s.since)
    need = max(1, min(min_suspecting, len(records) - 1))
    out: set[str] = set()
    for node, times in since.items():
        if len(times) >= need and now - sorted(times)[need - 1] >= unreachable_after:
            out.add(node)
    return out


def _short(intent_id: str) -> str:
    return f"{intent_id[:16]}\u2026"


def rollout_state(model_id: str, version: str, intents: Iterable[Intent],
                  records: Mapping[str, NodeRecord], trust: FleetTrust,
                  targets: Mapping[str, Intent | None], in_scope: int, unfinished: int
                  ) -> tuple[RolloutState, str]:
    """The :class:`RolloutState` of ``(model_id, version)`` and its detail text.

    ``targets`` is each node's resolved intent, ``in_scope`` the nodes it sends to
    ``version`` and ``unfinished`` those of them still pending or in progress."""
    for d, act in policy_actions(intents, model_id, trust).values():
        if d.version != version or d.policy is None:
            continue
        why = (f"by its rollout policy ({d.policy.text()}; intent "
               f"{_short(act.intent_id)} from node {act.issuer_id[:12]})")
        if d.policy.on_degraded is OnDegraded.ROLLBACK and not in_scope:
            return RolloutState.ROLLED_BACK, f"rolled back {why}"
        if d.policy.on_degraded is OnDegraded.HALT:
            return RolloutState.HALTED, f"halted {why}"
    if in_scope:
        if unfinished:
            return RolloutState.ACTIVE, ""
        return RolloutState.COMPLETE, ""
    mine = [i for i in intents if i.model_id == model_id
            and trust.is_admitted(i.issuer_key, Role.OPERATOR)]
    cancels = standing_cancels(mine, model_id, trust)
    aimed = sorted((i for i in mine if i.kind is not IntentKind.CANCEL and i.version == version),
                   key=lambda i: (i.stamp, i.intent_id))
    if not aimed:
        # its intents may have been void history: a newer intent settled (``_settle``)
        everything = [i for i in intents if i.model_id == model_id]
        settled = settled_ids(everything)
        floors = [i for i in everything if i.intent_id in settled and i.version != version]
        if floors:
            floor = max(floors, key=lambda i: (i.stamp, i.intent_id))
            return RolloutState.SUPERSEDED, (f"superseded by {floor.version} "
                                             f"(intent {_short(floor.intent_id)})")
        return RolloutState.UNKNOWN, "no intent targets this version"
    live = [i for i in aimed if i.intent_id not in cancels]
    if not live:
        last = aimed[-1]
        return RolloutState.CANCELLED, (f"cancelled by intent "
                                        f"{_short(cancels[last.intent_id].intent_id)}")
    followed = [t for node_id, t in sorted(targets.items())
                if t is not None and any(intent_applies(i, node_id, records.get(node_id), trust)
                                         for i in live)]
    if not followed:
        return RolloutState.ACTIVE, "no node is in scope yet"
    newest = max(followed, key=lambda i: (i.stamp, i.intent_id))
    if newest.kind is IntentKind.ROLLBACK:
        return RolloutState.ROLLED_BACK, (f"rolled back to {newest.version} "
                                          f"(intent {_short(newest.intent_id)})")
    return RolloutState.SUPERSEDED, (f"superseded by {newest.version} "
                                     f"(intent {_short(newest.intent_id)})")


def compute_convergence(model_id: str, version: str, intents: Iterable[Intent],
                        records: Mapping[str, NodeRecord], trust: FleetTrust,
                        unreachable: set[str], now: float) -> ModelConvergenceStatus:
    intents = [i for i in intents if i.model_id == model_id]
    converged = in_progress = pending = failed = degraded = 0
    dist: dict[str, int] = {}
    blockers: list[ConvergenceBlocker] = []
    targets: dict[str, Intent | None] = {}
    times: list[float | None] = []      # per node still to finish: seconds left (None: unknown)
    bytes_done = bytes_total = 0
    for node_id in sorted(records):
        target = targets[node_id] = resolve(intents, model_id, node_id, records, trust)
        if target is None or target.version != version:
            continue
        rec = records[node_id]
        st = rec.model(model_id)
        current = st.active_version if st is not None else ""
        dist[current or "none"] = dist.get(current or "none", 0) + 1
        on_target = st is not None and st.version == version
        if on_target and st is not None:
            bytes_done += st.bytes_done
            bytes_total += st.bytes_total
        variant_ok = st is not None and (target.variant_id is None
                                         or st.variant_id == target.variant_id)
        if on_target and variant_ok and st is not None and st.status in _DONE:
            converged += 1
            if st.status is ModelOperationalStatus.DEGRADED:
                degraded += 1
                blockers.append(ConvergenceBlocker(node_id, st.blocker or BlockerReason.UNKNOWN,
                                                   st.blocker_since, st.blocker_detail))
            continue
        left: float | None = None         # seconds this node still needs (None: unknown)
        has_failed = (on_target and st is not None
                      and st.status is ModelOperationalStatus.FAILED)
        if has_failed:
            failed += 1
        elif on_target and st is not None and st.status in _BUSY:
            in_progress += 1
            to_fetch = max(0, st.bytes_total - st.bytes_done)
            if to_fetch == 0:
                left = 0.0
            elif st.bytes_fetched > 0 and st.updated_at > st.started_at:
                left = to_fetch * (st.updated_at - st.started_at) / st.bytes_fetched
        else:
            pending += 1                  # not started: no rate of its own yet
        if node_id in unreachable:
            blockers.append(ConvergenceBlocker(node_id, BlockerReason.NETWORK_PARTITION,
                                               rec.written_at, "no news of this node from "
                                               "several peers"))
            left = None                   # a blocked node finishes who knows when
        elif on_target and st is not None and st.blocker is not None:
            blockers.append(ConvergenceBlocker(node_id, st.blocker, st.blocker_since,
                                               st.blocker_detail))
            left = None
        if not has_failed:                # a failed node is final: nothing to wait for
            times.append(left)
    total = converged + in_progress + pending + failed
    state, detail = rollout_state(model_id, version, intents, records, trust, targets,
                                  total, in_progress + pending)
    eta: float | None = None              # unknown, or it will never complete
    if not state.is_final or state is RolloutState.COMPLETE:
        known = [t for t in times if t is not None]
        if len(known) == len(times):
            eta = max(known, default=0.0)
    return ModelConvergenceStatus(model_id, version, total, converged, in_progress, pending,
                                  failed, dist, tuple(blockers), eta, bytes_done, bytes_total,
                                  state, detail, degraded)
