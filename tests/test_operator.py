"""Operator decisions in protocol: ``NodeMachine.issue`` / ``cancel`` refuse before
anything is signed, stamp with the node's own clock, and follow the one cancel rule
(``standing_cancels``) that resolution and the rollout state obey."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol._convergence import RolloutState
from protocol._errors import (
    EmptyScope,
    InvalidValue,
    LocalProtocolError,
    RequestRejected,
    UnknownIntent,
    UnknownModel,
    UnknownVariant,
    UnknownVersion,
)
from protocol._identity import Certificate, Role
from protocol._intents import IntentKind, Scope, standing_cancels
from protocol._node import NodeMachine
from protocol._operator import find_node, intent_views, nodes_running

from ._fleet import (
    FLEET,
    OPERATOR,
    ROGUE,
    ROOT,
    intent,
    lone_machine,
    make_trust,
    manifest,
)


def machine(now: float = 100.0) -> NodeMachine:
    m = lone_machine(0, now=now, name="n0", formation="alpha")
    man, _ = manifest("m", "1.0.0")
    m.publish_manifest(man, now)
    return m


def test_refusals_are_local_protocol_errors_and_write_nothing() -> None:
    m = machine()
    before = len(m.ledger.intents())
    d = IntentKind.DISTRIBUTE
    cases: list[tuple[type[RequestRejected], Callable[[], object]]] = [
        (UnknownModel, lambda: m.issue(OPERATOR, d, "nope", "1.0.0", 101.0)),
        (UnknownVersion, lambda: m.issue(OPERATOR, d, "m", "9.9.9", 101.0)),
        (UnknownVersion, lambda: m.issue(OPERATOR, d, "m", "1.0.0", 101.0, delta_from="0.1.0")),
        (UnknownVariant, lambda: m.issue(OPERATOR, d, "m", "1.0.0", 101.0, variant_id="tpu")),
        (EmptyScope, lambda: m.issue(OPERATOR, d, "m", "1.0.0", 101.0,
                                     scope=Scope.of_formation("zulu"))),
        (EmptyScope, lambda: m.issue(OPERATOR, d, "m", "1.0.0", 101.0,
                                     scope=Scope.of_nodes("ghost"))),
    ]
    for exc, issue in cases:
        with pytest.raises(exc) as info:
            issue()
        assert isinstance(info.value, LocalProtocolError)
    with pytest.raises(RequestRejected, match="not admitted; nothing was sent"):
        m.issue(ROGUE, IntentKind.DISTRIBUTE, "m", "1.0.0", 101.0)
    with pytest.raises(InvalidValue):
        m.issue(OPERATOR, IntentKind.CANCEL, "m", "1.0.0", 101.0)
    assert len(m.ledger.intents()) == before


def test_issue_stamps_with_the_node_clock_and_cancel_is_idempotent() -> None:
    m = machine()
    first = m.issue(OPERATOR, IntentKind.DISTRIBUTE, "m", "1.0.0", 101.0,
                    scope=Scope.of_formation("alpha"))
    second = m.issue(OPERATOR, IntentKind.DISTRIBUTE, "m", "1.0.0", 101.0)
    assert first.stamp.node_id == m.node_id and first.stamp.wall_ms == 101_000
    assert second.stamp > first.stamp                  # same wall ms: the clock still moves
    assert m.desired("m") == second
    assert find_node(m.ledger, "n0") == m.node_id
    cancel = m.cancel(OPERATOR, 102.0, model_id="m")   # the intent this node follows
    assert cancel.kind is IntentKind.CANCEL and cancel.cancels == second.intent_id
    assert m.cancel(OPERATOR, 103.0, intent_id=second.intent_id) == cancel   # no new one
    assert m.desired("m") == first
    views = {v.intent.intent_id: v for v in intent_views(m.ledger, m.trust, "m")}
    assert views[second.intent_id].cancelled_by == cancel.intent_id
    assert views[first.intent_id].cancelled_by is None and views[first.intent_id].targets == 1
    with pytest.raises(UnknownIntent, match="itself a cancel"):
        m.cancel(OPERATOR, 104.0, intent_id=cancel.intent_id)
    with pytest.raises(UnknownIntent, match="no intent"):
        m.cancel(OPERATOR, 104.0, intent_id="ab" * 32)
    with pytest.raises(UnknownIntent, match="follows no intent"):
        m.cancel(OPERATOR, 104.0, model_id="other")
    assert nodes_running(m.ledger, "m", "1.0.0") == ()


def test_one_cancel_rule_the_oldest_admitted_cancel_of_the_same_model_stands() -> None:
    trust = make_trust()
    other = Certificate.issue(ROOT, FLEET, ROGUE.public_key, Role.OPERATOR, "ops2", 1)
    target = intent("1.0.0", wall=1)
    late = intent(kind=IntentKind.CANCEL, cancels=target.intent_id, wall=9)
    early = intent(kind=IntentKind.CANCEL, cancels=target.intent_id, wall=5, issuer=ROGUE)
    elsewhere = intent(model="k", kind=IntentKind.CANCEL, cancels=target.intent_id, wall=2)
    pool = [target, late, early, elsewhere]
    assert standing_cancels(pool, "m", trust) == {target.intent_id: late}   # ROGUE unknown
    trust.add_certificate(other)
    assert standing_cancels(pool, "m", trust) == {target.intent_id: early}
    assert standing_cancels(pool, "k", trust) == {target.intent_id: elsewhere}


def test_a_cancelled_rollout_names_the_cancel_that_stands() -> None:
    m = machine()
    it = m.issue(OPERATOR, IntentKind.DISTRIBUTE, "m", "1.0.0", 101.0)
    cancel = m.cancel(OPERATOR, 102.0, intent_id=it.intent_id)
    status = m.convergence("m", "1.0.0", 103.0)
    assert status.state is RolloutState.CANCELLED
    assert cancel.intent_id[:16] in status.state_detail
