"""Operator intents, their scopes, and desired-state resolution.

Theory of operation
-------------------
An :class:`Intent` is an immutable command signed by an operator key the fleet
root admitted. Its id is the BLAKE3 hash of its canonical unsigned body.

A node's *desired state* for a model is a pure function of the ledger:
:func:`resolve` takes every ``distribute``/``rollback`` intent for the model
whose issuer is admitted, that no admitted ``cancel`` names, and whose scope
matches the node's *current* record, and returns the newest (HLC stamp, then
intent id). Scopes are evaluated continuously, never frozen at issue time: a
node that joins later, or moves to another formation, or gains a GPU, picks up
the standing intents that now cover it (and drops those that no longer do).
Every node holding the same ledger computes the same answer for every node.

One rule says which intents are cancelled (:func:`standing_cancels`): a
``cancel`` intent for the same model, signed by an operator the fleet still
admits, cancels the intent it names; when several do, the oldest (HLC stamp,
then intent id) is *the* cancel that stands for it. Resolution, the rollout
state and the operator's answers all read that one function.

A ``distribute`` may carry a :class:`RolloutPolicy`: when more than
``max_degraded_pct`` of the nodes it targets report its version ``degraded``, the
fleet *halts* it (nodes that do not run its version yet no longer take it) or
*rolls back* it (it stops counting everywhere: every node falls back to the intent
it followed before, on disk, so no transfer). Whichever node first sees the
threshold crossed in its ledger writes a ``policy`` intent naming the distribute,
signed by its *node* key: that entry is the latch (records move on -- a node that
rolled back no longer reports degraded -- but the action stands), so nothing
loops. :func:`policy_actions` is the rule: an action counts only for a distribute
whose own, operator-signed policy asks for it (a captured node can at most trigger
early the fallback the operator already chose), the oldest action per distribute.
Once a distribute is *settled* (``_settle``: carried out and healthy on every node it
targets), its policy no longer acts.

A ``rollback`` applies only to nodes in its scope that have (had) the model
deployed: their record reports a version of the model (running, being fetched
or failed) or any version installed on disk (:func:`intent_applies`). A node
that never ran the model is not targeted: a rollback never installs a model
somewhere it was not, and such a node does not count in that rollback's
convergence. The rule is stable: a node that follows the rollback reports its
version, so it stays targeted; a node that does not, writes nothing about the
model, so it stays untargeted.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import blake3

from ._capabilities import normalise_arch
from ._codec import appended, canonical, struct
from ._errors import InvalidValue
from ._hlc import HLC
from ._identity import (
    FleetTrust,
    Role,
    SigningContext,
    SigningIdentity,
    fingerprint,
    signing_payload,
)
from ._manifest import validate_model_id, validate_version
from ._records import NodeRecord
from ._types import TransferPriority

__all__ = ["IntentKind", "ScopeKind", "Scope", "Intent", "OnDegraded", "RolloutPolicy",
           "scope_matches", "certified_as", "certified_names", "has_deployed",
           "intent_applies", "targets_node", "standing_cancels", "policy_actions",
           "resolve"]


class IntentKind(enum.StrEnum):
    DISTRIBUTE = "distribute"
    ROLLBACK = "rollback"
    CANCEL = "cancel"
    POLICY = "policy"     # a distribute's rollout policy acted (signed by a node)
    SETTLE = "settle"     # an intent carried out and healthy everywhere (a node; _settle)


class OnDegraded(enum.StrEnum):
    IGNORE = "ignore"
    HALT = "halt"
    ROLLBACK = "rollback"


@struct
@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """What the fleet does when more than ``max_degraded_pct`` % of a distribute's
    nodes report its version degraded."""

    max_degraded_pct: float
    on_degraded: OnDegraded

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_degraded_pct <= 100.0:
            raise InvalidValue("max_degraded_pct must be within 0..100")

    def text(self) -> str:
        return f"{self.on_degraded.value} over {self.max_degraded_pct:g}% degraded"


class ScopeKind(enum.StrEnum):
    ALL = "all"
    FORMATION = "formation"
    NODES = "nodes"
    CAPABLE = "capable"


@struct
@dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind = ScopeKind.ALL
    formation: str = ""
    nodes: tuple[str, ...] = ()        # node ids (32 hex) or node names
    min_gpu_mem_gb: float = 0.0
    cpu_arch: str = ""
    min_storage_mb: int = 0

    def __post_init__(self) -> None:
        if self.kind is ScopeKind.FORMATION and not self.formation:
            raise InvalidValue("a formation scope needs a formation name")
        if self.kind is ScopeKind.NODES and not self.nodes:
            raise InvalidValue("a nodes scope needs at least one node id or name")
        if self.min_gpu_mem_gb < 0 or self.min_storage_mb < 0:
            raise InvalidValue("scope minimums cannot be negative")

    @classmethod
    def all(cls) -> Scope:
        return cls()

    @classmethod
    def of_formation(cls, name: str) -> Scope:
        return cls(ScopeKind.FORMATION, formation=name)

    @classmethod
    def of_nodes(cls, *nodes: str) -> Scope:
        return cls(ScopeKind.NODES, nodes=tuple(nodes))

    @classmethod
    def capable(cls, min_gpu_mem_gb: float = 0.0, cpu_arch: str = "",
                min_storage_mb: int = 0) -> Scope:
        return cls(ScopeKind.CAPABLE, min_gpu_mem_gb=min_gpu_mem_gb,
                   cpu_arch=normalise_arch(cpu_arch) if cpu_arch else "",
                   min_storage_mb=min_storage_mb)

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The text form: ``all``, ``formation=NAME``, ``nodes=ID,ID`` (ids or names),
        ``capable:min-gpu-mem-gb=N,arch=NAME,min-storage-mb=N`` (any subset; ``arch``
        takes the aliases the probe knows: arm64 = aarch64, x64 = amd64 = x86_64).
        :class:`InvalidValue` says what is wrong."""
        t = text.strip()
        if t == "all":
            return cls()
        if t.startswith("capable:") or t == "capable":
            return cls._parse_capable(text, t.partition(":")[2])
        kind, eq, value = t.partition("=")
        if eq and kind == "formation" and value.strip():
            return cls.of_formation(value.strip())
        if eq and kind == "nodes":
            ids = [v.strip() for v in value.split(",") if v.strip()]
            if ids:
                return cls.of_nodes(*ids)
        raise InvalidValue(f"scope {text!r}: expected all, formation=NAME, nodes=ID,ID or "
                           f"capable:min-gpu-mem-gb=N,arch=NAME,min-storage-mb=N")

    @classmethod
    def _parse_capable(cls, text: str, body: str) -> Scope:
        kw: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, eq, value = part.partition("=")
            name = _CAPABLE_KEYS.get(key.strip())
            if not eq or name is None or not value.strip():
                raise InvalidValue(f"scope {text!r}: capable takes min-gpu-mem-gb=N, "
                                   f"arch=NAME, min-storage-mb=N (comma separated), "
                                   f"not {part!r}")
            kw[name] = value.strip()
        if not kw:
            raise InvalidValue(f"scope {text!r}: capable needs at least one of "
                               f"min-gpu-mem-gb, arch, min-storage-mb")
        gpu = _number(text, "min-gpu-mem-gb", kw.get("min_gpu_mem_gb", "0"), float)
        storage = _number(text, "min-storage-mb", kw.get("min_storage_mb", "0"), int)
        return cls.capable(float(gpu), kw.get("cpu_arch", ""), int(storage))

    def text(self) -> str:
        """The text form :meth:`parse` reads."""
        if self.kind is ScopeKind.ALL:
            return "all"
        if self.kind is ScopeKind.FORMATION:
            return f"formation={self.formation}"
        if self.kind is ScopeKind.NODES:
            return "nodes=" + ",".join(self.nodes)
        parts = []
        if self.min_gpu_mem_gb:
            parts.append(f"min-gpu-mem-gb={self.min_gpu_mem_gb:g}")
        if self.cpu_arch:
            parts.append(f"arch={self.cpu_arch}")
        if self.min_storage_mb:
            parts.append(f"min-storage-mb={self.min_storage_mb}")
        return "capable:" + ",".join(parts)


_CAPABLE_KEYS = MappingProxyType({"min-gpu-mem-gb": "min_gpu_mem_gb", "arch": "cpu_arch",
                                  "cpu-arch": "cpu_arch", "min-storage-mb": "min_storage_mb"})


def _number(text: str, key: str, value: str, kind: type[int] | type[float]) -> int | float:
    try:
        n = kind(value)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise InvalidValue(f"scope {text!r}: {key} must be {noun}, not {value!r}") from None
    if n < 0 or n != n or n == float("inf"):
        raise InvalidValue(f"scope {text!r}: {key} must be a finite number >= 0, "
                           f"not {value!r}")
    return n


def certified_as(trust: FleetTrust | None, node_id: str, names: Iterable[str]) -> bool:
    """Does the root-signed node certificate of ``node_id`` carry one of ``names``?

    A node's name is the one its certificate gives it (the fleet root signed it), never
    the one its own record declares: any admitted node can write any name there."""
    if trust is None:
        return False
    wanted = frozenset(names)
    return any(c.role is Role.NODE and c.name in wanted and fingerprint(c.subject_key) == node_id
               for c in trust.certificates())


def certified_names(trust: FleetTrust) -> set[str]:
    """The names the fleet root gave the nodes it admitted."""
    return {c.name for c in trust.certificates()
            if c.role is Role.NODE and trust.is_admitted(c.subject_key, Role.NODE)}


def scope_matches(scope: Scope, node_id: str, record: NodeRecord | None,
                  trust: FleetTrust | None = None) -> bool:
    """Does ``scope`` cover node ``node_id`` as its current ``record`` describes it?

    ``nodes=`` scopes name nodes by id, or by the name in their node certificate
    (looked up in ``trust``; without one, by id only)."""
    if scope.kind is ScopeKind.ALL:
        return True
    if scope.kind is ScopeKind.NODES:
        return node_id in scope.nodes or certified_as(trust, node_id, scope.nodes)
    if record is None:
        return False
    if scope.kind is ScopeKind.FORMATION:
        return record.formation == scope.formation
    caps = record.capabilities
    if caps is None:
        return False
    if scope.cpu_arch and caps.cpu_arch != normalise_arch(scope.cpu_arch):
        return False
    if caps.max_gpu_memory_gb < scope.min_gpu_mem_gb:
        return False
    return caps.storage_free_mb >= scope.min_storage_mb


def has_deployed(model_id: str, record: NodeRecord | None) -> bool:
    """Does the node (as ``record`` describes it) run, fetch, or hold any version of
    ``model_id``? A node that never had the model reports no version and nothing
    installed (a cancelled first transfer returns it to that state)."""
    if record is None:
        return False
    st = record.model(model_id)
    return st is not None and bool(st.version or st.active_version or st.installed)


def targets_node(kind: IntentKind, model_id: str, scope: Scope, node_id: str,
                 record: NodeRecord | None, trust: FleetTrust | None = None) -> bool:
    """Would an intent of ``kind`` for ``model_id`` with ``scope`` target ``node_id``?

    Its scope must cover the node; a rollback also needs the node to have (had)
    the model deployed (:func:`has_deployed`). Also used before an intent exists
    (to refuse one that would target nobody)."""
    if not scope_matches(scope, node_id, record, trust):
        return False
    return kind is not IntentKind.ROLLBACK or has_deployed(model_id, record)


def intent_applies(intent: Intent, node_id: str, record: NodeRecord | None,
                   trust: FleetTrust | None = None) -> bool:
    """Is node ``node_id`` a target of ``intent`` (a distribute or rollback)?"""
    return targets_node(intent.kind, intent.model_id, intent.scope, node_id, record, trust)


@struct
@dataclass(frozen=True, slots=True)
class _IntentBody:
    kind: IntentKind
    model_id: str
    version: str
    variant_id: str | None
    delta_from: str | None
    scope: Scope
    priority: TransferPriority
    issuer_key: bytes
    stamp: HLC
    cancels: str | None
    policy: RolloutPolicy | None = appended(None)


@struct
@dataclass(frozen=True, slots=True)
class Intent:
    """A signed operator command. ``cancels`` names another intent's id (a cancel, or
    the distribute whose rollout policy a ``policy`` intent enacts)."""

    kind: IntentKind
    model_id: str
    version: str
    variant_id: str | None
    delta_from: str | None
    scope: Scope
    priority: TransferPriority
    issuer_key: bytes
    stamp: HLC
    cancels: str | None
    signature: bytes
    policy: RolloutPolicy | None = appended(None)   # a distribute's rollout policy
    # the id, hashed once per object (no part of the encoding, equality or repr)
    _id: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_model_id(self.model_id)
        validate_version(self.version)
        if self.delta_from is not None:
            validate_version(self.delta_from)
        if (self.kind in (IntentKind.CANCEL, IntentKind.POLICY, IntentKind.SETTLE)) != \
                (self.cancels is not None):
            raise InvalidValue("a cancel, policy or settle intent, and only those, names "
                               "another intent")
        if self.policy is not None and self.kind is not IntentKind.DISTRIBUTE:
            raise InvalidValue("only a distribute carries a rollout policy")
        if len(self.issuer_key) != 32:
            raise InvalidValue("issuer key must be 32 bytes")

    def _body(self) -> _IntentBody:
        return _IntentBody(self.kind, self.model_id, self.version, self.variant_id,
                           self.delta_from, self.scope, self.priority, self.issuer_key,
                           self.stamp, self.cancels, self.policy)

    @property
    def intent_id(self) -> str:
        i = self._id
        if i is None:
            i = blake3.blake3(canonical(self._body())).hexdigest()
            object.__setattr__(self, "_id", i)
        return i

    def signed_bytes(self) -> bytes:
        """What the issuer signs: the intent context label, then the canonical body."""
        return signing_payload(SigningContext.INTENT, canonical(self._body()))

    @property
    def issuer_id(self) -> str:
        return fingerprint(self.issuer_key)

    @classmethod
    def create(cls, operator: SigningIdentity, kind: IntentKind, model_id: str, version: str,
               stamp: HLC, *, scope: Scope | None = None,
               priority: TransferPriority = TransferPriority.NORMAL,
               variant_id: str | None = None, delta_from: str | None = None,
               cancels: str | None = None, policy: RolloutPolicy | None = None) -> Intent:
        scope = scope if scope is not None else Scope()
        body = _IntentBody(kind, model_id, version, variant_id, delta_from, scope, priority,
                           operator.public_key, stamp, cancels, policy)
        return cls(kind, model_id, version, variant_id, delta_from, scope, priority,
                   operator.public_key, stamp, cancels,
                   operator.sign(signing_payload(SigningContext.INTENT, canonical(body))),
                   policy)

    @property
    def issuer_role(self) -> Role:
        """Who may sign it: a node for a ``policy`` or ``settle`` intent, an operator
        otherwise."""
        return Role.NODE if self.kind in (IntentKind.POLICY, IntentKind.SETTLE) \
            else Role.OPERATOR

    def verify(self, trust: FleetTrust) -> None:
        """Raise UntrustedKey / SignatureError unless an admitted operator (a node, for
        a ``policy`` intent) signed it."""
        trust.check(self.issuer_key, self.issuer_role)
        trust.verifier(self.issuer_key, self.signed_bytes(), self.signature)


def standing_cancels(intents: Iterable[Intent], model_id: str,
                     trust: FleetTrust) -> dict[str, Intent]:
    """The cancel rule: each cancelled intent id of ``model_id`` -> the cancel that
    stands for it.

    A ``cancel`` intent for ``model_id`` whose issuer the fleet admits (re-checked
    here: a revoked operator's cancels stop counting) cancels the intent it names.
    When several name the same intent, the oldest (HLC stamp, then intent id) stands.
    Other intents in ``intents`` are ignored."""
    out: dict[str, Intent] = {}
    for it in intents:
        if it.kind is not IntentKind.CANCEL or it.model_id != model_id or \
                not trust.is_admitted(it.issuer_key, Role.OPERATOR):
            continue
        assert it.cancels is not None
        held = out.get(it.cancels)
        if held is None or (it.stamp, it.intent_id) < (held.stamp, held.intent_id):
            out[it.cancels] = it
    return out


def policy_actions(intents: Iterable[Intent], model_id: str,
                   trust: FleetTrust) -> dict[str, tuple[Intent, Intent]]:
    """The policy rule: each distribute id of ``model_id`` whose rollout policy acted
    -> (the distribute, the ``policy`` intent that stands for it: the oldest, by an
    admitted node, for a distribute whose operator-signed policy halts or rolls back).
    A distribute some ``settle`` intent names (``_settle``) has proved itself: its
    policy no longer acts."""
    mine = [i for i in intents if i.model_id == model_id]
    settled = {i.cancels for i in mine if i.kind is IntentKind.SETTLE}   # (_settle)
    by_id = {i.intent_id: i for i in mine if i.kind is IntentKind.DISTRIBUTE
             and i.policy is not None and i.policy.on_degraded is not OnDegraded.IGNORE
             and i.intent_id not in settled}
    out: dict[str, tuple[Intent, Intent]] = {}
    for it in mine:
        if it.kind is not IntentKind.POLICY or it.cancels not in by_id or \
                not trust.is_admitted(it.issuer_key, Role.NODE):
            continue
        held = out.get(it.cancels)
        if held is None or (it.stamp, it.intent_id) < (held[1].stamp, held[1].intent_id):
            out[it.cancels] = (by_id[it.cancels], it)
    return out


def runs_version(record: NodeRecord | None, model_id: str, version: str) -> bool:
    st = record.model(model_id) if record is not None else None
    return st is not None and st.active_version == version


def resolve(intents: Iterable[Intent], model_id: str, node_id: str,
            records: Mapping[str, NodeRecord], trust: FleetTrust) -> Intent | None:
    """The intent node ``node_id`` should follow for ``model_id`` (None: no standing one).

    Candidates are the intents no cancel stands for (:func:`standing_cancels`)
    that apply to the node (:func:`intent_applies`: scope, and for a rollback a
    deployed model).

    ``intents`` must already be verified; admission is re-checked so a revoked
    operator's intents stop counting everywhere at once.
    """
    candidates: list[Intent] = []
    cancels: list[Intent] = []
    acts: list[Intent] = []
    for it in intents:
        if it.model_id != model_id:
            continue
        if it.kind is IntentKind.CANCEL:
            cancels.append(it)
        elif it.kind is IntentKind.POLICY or it.kind is IntentKind.SETTLE:
            acts.append(it)
        elif trust.is_admitted(it.issuer_key, Role.OPERATOR):
            candidates.append(it)
    cancelled = standing_cancels(cancels, model_id, trust) if cancels else {}
    record = records.get(node_id)
    if acts:
        for iid, (d, _) in policy_actions([*candidates, *acts], model_id, trust).items():
            assert d.policy is not None
            # rolled back: it counts nowhere; halted: only where its version runs already
            if d.policy.on_degraded is OnDegraded.ROLLBACK or \
                    not runs_version(record, model_id, d.version):
                cancelled = {**cancelled, iid: d}
    best: Intent | None = None
    best_key: tuple[HLC, str] | None = None
    for it in candidates:
        iid = it.intent_id
        if iid in cancelled or not intent_applies(it, node_id, record, trust):
            continue
        key = (it.stamp, iid)
        if best_key is None or key > best_key:
            best, best_key = it, key
    return best
