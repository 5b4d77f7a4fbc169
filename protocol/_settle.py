"""Settled intents, and which history the ledger may forget.

Theory of operation
-------------------
The ledger would otherwise keep every intent and manifest ever accepted. Most of
that history can no longer decide anything: once a later intent covers every node an
earlier one covered, the earlier one matters only if the later one stops standing (a
cancel, a rollout policy, its operator's revocation). That "only if" is what keeps
history alive, so retirement needs one more fact, recorded in the ledger itself.

* **Dominance** (:func:`dominates`, a pure function of two intents): ``j``
  dominates ``i`` when both are for the same model, ``j`` is newer (HLC stamp, then
  id), both replace a node's desired state (``distribute`` or ``rollback``), and every
  node ``i`` can ever target, ``j`` targets too: ``j``'s scope is ``all`` or equal
  to ``i``'s, and a ``rollback`` (which targets only nodes that deployed the model)
  dominates only rollbacks. Scopes are evaluated against records that change, so
  only this static containment is used.
* **Settled** (the latch): a ``settle`` intent, signed by a node key like a
  ``policy`` intent, names a distribute or rollback ``j``. A node writes it
  (:func:`settles_to_write`) when ``j`` stands (no cancel, no policy action), it
  dominates something held, and either every node ``j`` targets reports ``j``
  carried out and healthy (its record follows ``j``, runs ``j``'s version, status
  operational) -- only the lowest such node id writes, so one entry is the usual
  cost -- or ``j`` is older than the operator's horizon (``[ledger] settle_after``)
  for nodes that never return. A distribute whose rollout policy halts or rolls back
  settles only at the horizon: its health checks keep running, and the fallback its
  policy may still need is what it dominates. From then on ``j`` is the fleet's new floor for what
  it dominates: a cancel of ``j``, its rollout policy, or its operator's
  revocation no longer brings back what ``j`` dominated (as RAUC and Mender mark a
  slot good once it has proved itself). Its policy stops acting.
* **Void** (:func:`void_intents`, a pure function of the set of intents held): an
  intent dominated by a settled intent held here, and any ``cancel``, ``policy`` or
  ``settle`` naming a void intent. Every reader of the ledger sees only the intents
  that are not void (``Ledger.intents``), so whether a node has *dropped* a void
  intent yet changes no answer: two nodes holding the same live intents compute the
  same desired states and convergence, retired or not. That is the whole argument
  for correctness; docs/LEDGER.md spells it out.
* **Manifests** (:func:`manifests_to_retire`): a manifest is kept while a live
  intent names its version (as the version or the base of a delta) or any node's
  record reports it (running, being fetched, installed on disk as a rollback
  target); one that neither does, of a version below a settled intent of its model
  and published before it, is forgotten. A node that still needs it (its own
  record names it) keeps it, since the rule reads its record too.
* **Wanted back** (:func:`wanted_manifests`): nodes retire at their own pace, so an
  operator may name a version again (a rollback) at a node that still holds its
  manifest after another node forgot it. That node's vector still covers the
  forgotten entry, so the rounds never send it again; it asks its peers for the
  manifests a live intent names and it lacks (``GossipWant``, ``_gossip``), and takes
  the signed entry back like any other.

A dropped entry is forgotten only where the ledger can vouch for its counter
without it: an origin's newest entry is never dropped (``_ledger``, "Vouched
claims"), so at most one stale entry per origin outlives retirement until that
origin writes again (every node rewrites its record on each change of state).

Everything here is a pure function of its inputs; the module does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._identity import FleetTrust, Role
from ._intents import (
    Intent,
    IntentKind,
    OnDegraded,
    ScopeKind,
    intent_applies,
    policy_actions,
    standing_cancels,
)
from ._manifest import Manifest, SemVer
from ._manifest_head import ManifestHead
from ._records import NodeRecord
from ._types import ModelOperationalStatus

__all__ = ["dominates", "void_intents", "settled_ids", "carried_out",
           "settles_to_write", "manifests_to_retire", "wanted_manifests"]


_REPLACING = (IntentKind.DISTRIBUTE, IntentKind.ROLLBACK)
_NAMING = (IntentKind.CANCEL, IntentKind.POLICY, IntentKind.SETTLE)


def dominates(j: Intent, i: Intent) -> bool:
    """Does ``j`` cover every node ``i`` could ever target, and is it newer?"""
    if j.model_id != i.model_id or j.kind not in _REPLACING or i.kind not in _REPLACING:
        return False
    if (i.stamp, i.intent_id) >= (j.stamp, j.intent_id):
        return False
    if j.kind is IntentKind.ROLLBACK and i.kind is not IntentKind.ROLLBACK:
        return False
    return j.scope.kind is ScopeKind.ALL or j.scope == i.scope


def settled_ids(intents: Iterable[Intent]) -> set[str]:
    """Ids the ``settle`` intents among ``intents`` name."""
    return {i.cancels for i in intents if i.kind is IntentKind.SETTLE and i.cancels}


def void_intents(intents: Iterable[Intent]) -> set[str]:
    """Ids of the intents that can no longer decide anything (see the module doc)."""
    everything = list(intents)
    by_id = {i.intent_id: i for i in everything}
    floors = [by_id[s] for s in sorted(settled_ids(everything))
              if s in by_id and by_id[s].kind in _REPLACING]
    if not floors:
        return set()
    void: set[str] = set()
    replacing = [i for i in everything if i.kind in _REPLACING]
    for j in floors:
        void.update(i.intent_id for i in replacing if dominates(j, i))
    void.update(i.intent_id for i in everything if i.kind in _NAMING and i.cancels in void)
    return void


def carried_out(j: Intent, record: NodeRecord) -> bool:
    """Does ``record`` say its node follows ``j`` and runs its version, healthy?"""
    st = record.model(j.model_id)
    return (st is not None and st.intent_id == j.intent_id and st.active_version == j.version
            and st.status is ModelOperationalStatus.OPERATIONAL)


def settles_to_write(intents: Iterable[Intent], records: Mapping[str, NodeRecord],
                     trust: FleetTrust, node_id: str, now_ms: int,
                     horizon_ms: int) -> list[Intent]:
    """The intents this node should latch as settled now (``intents``: the live ones)."""
    live = list(intents)
    settled = settled_ids(live)
    out: list[Intent] = []
    for model_id in sorted({i.model_id for i in live if i.kind in _REPLACING}):
        mine = [i for i in live if i.model_id == model_id]
        cancelled = standing_cancels(mine, model_id, trust)
        acted = policy_actions(mine, model_id, trust)
        for j in mine:
            jid = j.intent_id
            if (j.kind not in _REPLACING or jid in settled or jid in cancelled or jid in acted
                    or not trust.is_admitted(j.issuer_key, Role.OPERATOR)
                    or not any(dominates(j, i) for i in mine)):
                continue
            if j.stamp.wall_ms + horizon_ms <= now_ms:
                out.append(j)
                continue
            if j.policy is not None and j.policy.on_degraded is not OnDegraded.IGNORE:
                continue    # its policy may still act on a later failed health check
            # the lowest targeted node writes it: any lower one targeted ends the look
            targeted: list[str] = []
            for n, r in records.items():
                if intent_applies(j, n, r, trust):
                    if n < node_id:
                        break
                    targeted.append(n)
            else:
                if node_id in targeted and all(carried_out(j, records[n]) for n in targeted):
                    out.append(j)
    return out


def manifests_to_retire(manifests: Iterable[Manifest | ManifestHead], intents: Iterable[Intent],
                        records: Iterable[NodeRecord]) -> set[str]:
    """Ids of the manifests nothing live needs any more (``intents``: the live ones)."""
    live = list(intents)
    by_id = {i.intent_id: i for i in live}
    floors: dict[str, list[Intent]] = {}
    for s in settled_ids(live):
        j = by_id.get(s)
        if j is not None and j.kind in _REPLACING:
            floors.setdefault(j.model_id, []).append(j)
    if not floors:
        return set()
    named: set[tuple[str, str]] = set()
    for i in live:
        named.add((i.model_id, i.version))
        if i.delta_from:
            named.add((i.model_id, i.delta_from))
    for rec in records:
        for st in rec.models:
            named.update((st.model_id, v) for v in (st.version, st.active_version, *st.installed)
                         if v)
    out: set[str] = set()
    for m in manifests:
        if (m.model_id, m.version) in named:
            continue
        below = SemVer.parse(m.version)
        if any(m.created_at < j.stamp.wall_ms and below < SemVer.parse(j.version)
               for j in floors.get(m.model_id, ())):
            out.add(m.manifest_id)
    return out


def wanted_manifests(intents: Iterable[Intent],
                     manifests: Iterable[Manifest | ManifestHead]) -> list[tuple[str, str]]:
    """``(model_id, version)`` pairs a live distribute or rollback among ``intents``
    names (its version, or the base of its delta) with none of ``manifests`` for it:
    a manifest still on its way, or one this node forgot and an operator named again."""
    held = {(m.model_id, m.version) for m in manifests}
    out: set[tuple[str, str]] = set()
    for i in intents:
        if i.kind in _REPLACING:
            for v in (i.version, i.delta_from):
                if v and (i.model_id, v) not in held:
                    out.add((i.model_id, v))
    return sorted(out)
