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
the answer depends only on the ledger (and ``now``, for the time estimate),
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

``estimated_completion`` (seconds from ``now``): each transferring node's
observed rate ``bytes_done / (updated_at - started_at)`` gives its remaining
time; a node not started yet is assumed to need its variant's size (or the
mean size of the others) at the mean observed rate. The estimate is the
slowest node; 0.0 when complete; None only when no rate has been observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._codec import struct
from ._identity import FleetTrust
from ._intents import Intent, resolve
from ._ledger import NodeRecord
from ._types import BlockerReason, ModelOperationalStatus

__all__ = ["ConvergenceBlocker", "ModelConvergenceStatus", "compute_convergence",
           "unreachable_nodes"]

_DONE = (ModelOperationalStatus.OPERATIONAL, ModelOperationalStatus.DEGRADED)
_BUSY = (ModelOperationalStatus.DOWNLOADING, ModelOperationalStatus.LOADING)


@struct
@dataclass(frozen=True, slots=True)
class ConvergenceBlocker:
    node_id: str
    reason: BlockerReason
    since: float
    details: str


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
    estimated_completion: float | None      # seconds from now; None: no rate observed yet
    bytes_done: int = 0         # summed over the nodes in scope that report target_version
    bytes_total: int = 0

    @property
    def is_complete(self) -> bool:
        """Every node in scope has reached a final state (converged or failed)."""
        return self.in_progress == 0 and self.pending == 0

    @property
    def is_success(self) -> bool:
        return self.total_platforms > 0 and self.converged == self.total_platforms

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


def compute_convergence(model_id: str, version: str, intents: Iterable[Intent],
                        records: Mapping[str, NodeRecord], trust: FleetTrust,
                        unreachable: set[str], now: float) -> ModelConvergenceStatus:
    intents = [i for i in intents if i.model_id == model_id]
    converged = in_progress = pending = failed = 0
    dist: dict[str, int] = {}
    blockers: list[ConvergenceBlocker] = []
    rates: list[float] = []
    sizes: list[int] = []
    remaining: list[tuple[int, float | None]] = []   # bytes left, own rate
    bytes_done = bytes_total = 0
    for node_id in sorted(records):
        target = resolve(intents, model_id, node_id, records, trust)
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
            if st.bytes_total and st.updated_at > st.started_at:
                rates.append(st.bytes_done / (st.updated_at - st.started_at))
            continue
        if on_target and st is not None and st.status is ModelOperationalStatus.FAILED:
            failed += 1
        elif on_target and st is not None and st.status in _BUSY:
            in_progress += 1
            rate = None
            if st.updated_at > st.started_at and st.bytes_done > 0:
                rate = st.bytes_done / (st.updated_at - st.started_at)
                rates.append(rate)
            if st.bytes_total:
                sizes.append(st.bytes_total)
            remaining.append((max(0, st.bytes_total - st.bytes_done), rate))
        else:
            pending += 1
            remaining.append((-1, None))
        if node_id in unreachable:
            blockers.append(ConvergenceBlocker(node_id, BlockerReason.NETWORK_PARTITION,
                                               rec.written_at, "no news of this node from "
                                               "several peers"))
        elif on_target and st is not None and st.blocker is not None:
            blockers.append(ConvergenceBlocker(node_id, st.blocker, st.blocker_since,
                                               st.blocker_detail))
    total = converged + in_progress + pending + failed
    eta: float | None = None
    if in_progress == 0 and pending == 0:
        eta = 0.0
    elif rates:
        mean_rate = sum(rates) / len(rates)
        mean_size = sum(sizes) / len(sizes) if sizes else 0.0
        worst = 0.0
        for left, rate in remaining:
            bytes_left = mean_size if left < 0 else left
            r = rate if rate else mean_rate
            worst = max(worst, bytes_left / r if r > 0 else 0.0)
        eta = worst
    return ModelConvergenceStatus(model_id, version, total, converged, in_progress, pending,
                                  failed, dist, tuple(blockers), eta, bytes_done, bytes_total)
