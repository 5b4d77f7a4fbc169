"""Rollout policies: when a distribute's degraded share crosses its threshold.

Theory of operation
-------------------
A distribute may carry a :class:`~._intents.RolloutPolicy` (``max_degraded_pct``,
``on_degraded``). Its *share* is computed from the ledger alone, like
convergence: of the nodes whose desired state is that distribute, how many report
its version ``degraded`` (their health check fails). It *crossed* when at least one
does and more than ``max_degraded_pct`` % do. Every node checks the policies it
holds on its timer (at most once a second, and only while some distribute has a
policy that has not acted); the first to see one crossed writes the ``policy``
intent that enacts it (:func:`~._intents.policy_actions` is the rule every node
reads), signed by its node key and pushed like any intent. Several nodes may write
one for the same distribute before they hear of each other's: the oldest stands, the
effect is the same. After that the records may change as they like -- nodes that
rolled back report the previous version, nodes halted stay where they are -- the
action stands, so nothing flaps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._identity import FleetTrust
from ._intents import Intent, IntentKind, OnDegraded, policy_actions, resolve
from ._records import NodeRecord
from ._types import ModelOperationalStatus

__all__ = ["POLICY_CHECK_INTERVAL", "crossed", "degraded_share", "policies_to_enact"]

POLICY_CHECK_INTERVAL = 1.0   # seconds between a node's checks of the standing policies


def degraded_share(d: Intent, intents: list[Intent], records: Mapping[str, NodeRecord],
                   trust: FleetTrust) -> tuple[int, int]:
    """(nodes that run ``d``'s version degraded, nodes whose desired state is ``d``)."""
    degraded = total = 0
    for node_id, rec in records.items():
        target = resolve(intents, d.model_id, node_id, records, trust)
        if target is None or target.intent_id != d.intent_id:
            continue
        total += 1
        st = rec.model(d.model_id)
        if st is not None and st.version == d.version and \
                st.status is ModelOperationalStatus.DEGRADED:
            degraded += 1
    return degraded, total


def crossed(d: Intent, degraded: int, total: int) -> bool:
    assert d.policy is not None
    return degraded > 0 and degraded * 100.0 > d.policy.max_degraded_pct * total


def policies_to_enact(intents: Iterable[Intent], records: Mapping[str, NodeRecord],
                      trust: FleetTrust) -> list[Intent]:
    """The distributes whose policy (halt or rollback) crossed and has not acted."""
    everything = list(intents)
    watched = [i for i in everything if i.kind is IntentKind.DISTRIBUTE
               and i.policy is not None and i.policy.on_degraded is not OnDegraded.IGNORE]
    out: list[Intent] = []
    for model_id in sorted({d.model_id for d in watched}):
        mine = [i for i in everything if i.model_id == model_id]
        acted = policy_actions(mine, model_id, trust)
        for d in watched:
            if d.model_id != model_id or d.intent_id in acted:
                continue
            if crossed(d, *degraded_share(d, mine, records, trust)):
                out.append(d)
    return out
