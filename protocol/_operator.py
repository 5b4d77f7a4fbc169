"""Operator decisions: what a node checks before it signs an intent, and what it answers.

Theory of operation
-------------------
An operator talks to one node (through its driver: the agent's control socket).
That node signs intents with its operator key, writes them to its ledger, and
gossip carries them to the fleet; an intent, once written, cannot be taken back.
So the issuing node refuses, *before* anything is signed, what cannot work, with
a :class:`~._errors.RequestRejected` that names the mistake and what to do:

* a key the fleet root no longer admits (:func:`check_operator`);
* a model, version, delta base or variant no published manifest has, and a scope
  that matches none of the nodes this ledger knows, or names a node it does not
  (:func:`check_request`); the answer is the number of nodes it targets now;
* a cancel of something that is not a known distribute or rollback
  (:func:`cancel_target`); a cancel of an intent a cancel already stands for is
  no mistake: it answers the standing cancel, and nothing new is written.

Every rule here reads the ledger the way every node does, through the functions
of :mod:`._intents`: targets are counted with :func:`~._intents.targets_node`
(the rule :func:`~._intents.resolve` applies at each node), and "cancelled, by
which cancel" is :func:`~._intents.standing_cancels` (the rule resolution and the
rollout state obey). A node's view is only as new as its ledger: a manifest or
node that gossip has not brought yet is unknown *here*, and the error says so.

:class:`~._node.NodeMachine` calls the checks in ``issue`` and ``cancel``; the
query helpers (:func:`describe`, :func:`intent_views`, :func:`find_node`,
:func:`check_known`, :func:`nodes_running`) are what a driver answers an operator
with. All of them are pure functions of a :class:`~._ledger.Ledger` and a
:class:`~._identity.FleetTrust`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import (
    EmptyScope,
    InvalidValue,
    RequestRejected,
    UnknownIntent,
    UnknownModel,
    UnknownNode,
    UnknownVariant,
    UnknownVersion,
)
from ._identity import FleetTrust, Role, fingerprint
from ._intents import (
    Intent,
    IntentKind,
    Scope,
    ScopeKind,
    certified_names,
    standing_cancels,
    targets_node,
)
from ._ledger import Ledger

__all__ = ["IntentView", "check_operator", "check_request", "check_known", "find_node",
           "count_targets", "cancel_target", "cancel_of", "describe", "intent_views",
           "nodes_running"]


@dataclass(frozen=True, slots=True)
class IntentView:
    """An intent as an operator is told about it."""

    intent: Intent
    targets: int                     # nodes it targets in this ledger, when answered
    cancelled_by: str | None         # the cancel that stands for it, if any


# ---------------------------------------------------------------------------- checks


def check_operator(trust: FleetTrust, key: bytes) -> None:
    """Refuse to sign with an operator key this node's trust no longer admits."""
    if not trust.is_admitted(key, Role.OPERATOR):
        revoked = any(r.subject_key == key for r in trust.revocations())
        raise RequestRejected(
            f"this daemon's operator key {fingerprint(key)} is "
            + ("revoked by the fleet root" if revoked else "not admitted")
            + "; nothing was sent. Have the fleet root admit a new operator key "
              "(`shoal fleet admit --role operator`) and install it here")


def count_targets(ledger: Ledger, scope: Scope, kind: IntentKind, model_id: str) -> int:
    """How many nodes of ``ledger`` an intent of ``kind`` with ``scope`` targets now.

    The rule of :func:`~._intents.targets_node`: a rollback targets only nodes in
    scope that have (had) the model deployed."""
    return sum(1 for nid, rec in ledger.records().items()
               if targets_node(kind, model_id, scope, nid, rec, ledger.trust))


def check_request(ledger: Ledger, kind: IntentKind, model_id: str, version: str,
                  scope: Scope, variant_id: str | None = None,
                  delta_from: str | None = None) -> int:
    """Refuse a distribute or rollback that cannot work; else the nodes it targets now.

    Unknown model, version, delta base or variant, and a scope that covers no
    known node (or names a node nobody knows) are refused at the issuing node,
    with an error an operator can act on."""
    if kind is IntentKind.CANCEL:
        raise InvalidValue("a cancel names the intent it cancels (NodeMachine.cancel)")
    versions = sorted({x.version for x in ledger.manifests() if x.model_id == model_id})
    if not versions:
        raise UnknownModel(f"no published model {model_id!r} is known to this node; "
                           f"publish it first (`shoal publish`), or wait for its manifest "
                           f"to arrive by gossip")
    manifest = ledger.head_for(model_id, version)
    if manifest is None:
        raise UnknownVersion(f"{model_id} has no published version {version!r}; "
                             f"known versions: {', '.join(versions)}")
    if delta_from is not None:
        if delta_from == version:
            raise UnknownVersion(f"a delta from {version} to itself moves nothing")
        if ledger.head_for(model_id, delta_from) is None:
            raise UnknownVersion(f"delta base {model_id} {delta_from!r} was never "
                                 f"published; known versions: {', '.join(versions)}")
    if variant_id is not None and variant_id not in {v.variant_id for v in manifest.variants}:
        raise UnknownVariant(f"{model_id} {version} has no variant {variant_id!r}; it has "
                             f"{', '.join(v.variant_id for v in manifest.variants)}")
    records = ledger.records()
    if scope.kind is ScopeKind.NODES:
        names = certified_names(ledger.trust)    # the root's names, not self-declared
        unknown = [n for n in scope.nodes if n not in records and n not in names]
        if unknown:
            raise EmptyScope(f"scope names nodes no record mentions: {', '.join(unknown)} "
                             f"(use node ids, or the names in their node certificates)")
    targets = count_targets(ledger, scope, kind, model_id)
    if targets == 0:
        raise EmptyScope(f"scope {scope.text()} matches none of the "
                         f"{len(records)} known nodes; nothing was sent")
    return targets


def check_known(ledger: Ledger, model_id: str, version: str) -> None:
    """Refuse a question about a model or version nothing in the ledger mentions."""
    versions = {x.version for x in ledger.manifests() if x.model_id == model_id}
    versions |= {i.version for i in ledger.intents() if i.model_id == model_id}
    if not versions:
        raise UnknownModel(f"no model {model_id!r} is known to this node (`shoal models` "
                           f"on the publisher, `shoal handles` here)")
    if version not in versions:
        raise UnknownVersion(f"{model_id} has no version {version!r} known here; known: "
                             f"{', '.join(sorted(versions))}")


def find_node(ledger: Ledger, node: str) -> str:
    """The id of the node named by id or by the name in its node certificate (the
    smallest id when a name is shared); :class:`UnknownNode` if none."""
    records = ledger.records()
    if node in records:
        return node
    certified = {fingerprint(c.subject_key) for c in ledger.trust.certificates()
                 if c.role is Role.NODE and c.name == node}   # the root's name, not the record's
    named = sorted(certified & records.keys())
    if not named:
        raise UnknownNode(f"no node {node!r} is known here (by id or name); "
                          f"`shoal nodes` lists the nodes")
    return named[0]


# ---------------------------------------------------------------------------- cancel


def cancel_of(ledger: Ledger, trust: FleetTrust, intent: Intent) -> Intent | None:
    """The cancel that stands for ``intent`` (:func:`~._intents.standing_cancels`), if any."""
    return standing_cancels(ledger.intents(), intent.model_id, trust).get(intent.intent_id)


def cancel_target(ledger: Ledger, desired: Intent | None, *, intent_id: str | None,
                  model_id: str) -> Intent:
    """The distribute or rollback a cancel request names: the intent ``intent_id``, or
    (without one) ``desired``, the intent this node follows for ``model_id``."""
    if intent_id:
        target = ledger.intent(intent_id)
        if target is None:
            raise UnknownIntent(
                f"no intent {intent_id} is known at this node (yet): check the "
                f"handle id, or wait for gossip to bring it from the issuing node")
    else:
        target = desired
        if target is None:
            raise UnknownIntent(f"this node follows no intent for {model_id!r}; "
                                f"give the handle id to cancel")
    if target.kind is IntentKind.CANCEL:
        raise UnknownIntent(f"{target.intent_id} is itself a cancel; cancel the "
                            f"distribute or rollback it names")
    return target


# ---------------------------------------------------------------------------- answers


def describe(ledger: Ledger, trust: FleetTrust, intent: Intent, targets: int) -> IntentView:
    """``intent`` with ``targets`` and, for a distribute or rollback, its standing cancel."""
    cancel = cancel_of(ledger, trust, intent) if intent.kind is not IntentKind.CANCEL else None
    return IntentView(intent, targets, cancel.intent_id if cancel is not None else None)


def intent_views(ledger: Ledger, trust: FleetTrust, model_id: str = "") -> list[IntentView]:
    """Every intent of ``model_id`` ("" = every model) in ``ledger``, oldest first, each
    with the nodes it targets now and its standing cancel."""
    intents = ledger.intents()
    cancels: dict[str, dict[str, Intent]] = {}
    out = []
    for it in intents:
        if model_id and it.model_id != model_id:
            continue
        cancel = None
        if it.kind is not IntentKind.CANCEL:
            if it.model_id not in cancels:
                cancels[it.model_id] = standing_cancels(intents, it.model_id, trust)
            cancel = cancels[it.model_id].get(it.intent_id)
        out.append(IntentView(it, count_targets(ledger, it.scope, it.kind, it.model_id),
                              cancel.intent_id if cancel is not None else None))
    out.sort(key=lambda v: (v.intent.stamp.wall_ms / 1000.0, v.intent.intent_id))
    return out


def nodes_running(ledger: Ledger, model_id: str, version: str) -> tuple[str, ...]:
    """Ids of the nodes whose record says they run ``version`` of ``model_id`` now
    (sorted); :class:`UnknownModel` / :class:`UnknownVersion` when nothing here
    mentions it."""
    check_known(ledger, model_id, version)
    out = []
    for nid, rec in sorted(ledger.records().items()):
        st = rec.model(model_id)
        if st is not None and st.active_version == version:
            out.append(nid)
    return tuple(out)
