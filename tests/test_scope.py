from __future__ import annotations

from protocol._intents import IntentKind, Scope, resolve, scope_matches
from protocol._ledger import Ledger

from ._fleet import admitted_ledger, caps, intent, node_key, record


def _target(led: Ledger, node: int) -> str | None:
    it = resolve(led.intents(), "m", node_key(node).key_id, led.records(), led.trust)
    return None if it is None else it.version


def test_each_scope_kind() -> None:
    nid = node_key(0).key_id
    gpu_node = record(name="cam-1", formation="alpha", capabilities=caps(gpu_gb=16))
    cpu_node = record(name="cam-2", formation="beta", capabilities=caps(arch="aarch64"))
    assert scope_matches(Scope.all(), nid, None)
    assert scope_matches(Scope.of_formation("alpha"), nid, gpu_node)
    assert not scope_matches(Scope.of_formation("alpha"), nid, cpu_node)
    assert not scope_matches(Scope.of_formation("alpha"), nid, None)
    assert scope_matches(Scope.of_nodes(nid), nid, None)
    # a name a node declares in its record is not enough: names are certified
    # (tests/test_node_revocation_names.py)
    assert not scope_matches(Scope.of_nodes("cam-1"), "other", gpu_node)
    assert not scope_matches(Scope.of_nodes("cam-1"), "other", cpu_node)
    assert scope_matches(Scope.capable(min_gpu_mem_gb=8), nid, gpu_node)
    assert not scope_matches(Scope.capable(min_gpu_mem_gb=8), nid, cpu_node)
    assert scope_matches(Scope.capable(cpu_arch="aarch64"), nid, cpu_node)
    assert not scope_matches(Scope.capable(cpu_arch="aarch64"), nid, gpu_node)
    assert not scope_matches(Scope.capable(min_storage_mb=10**9), nid, gpu_node)
    assert not scope_matches(Scope.capable(), nid, record())     # no probe yet


def test_node_that_joins_later_picks_up_standing_intent() -> None:
    led = admitted_ledger(3)
    led.append(node_key(0), record(formation="alpha"))
    led.append(node_key(0), intent("2.0.0", scope=Scope.of_formation("alpha")))
    assert _target(led, 0) == "2.0.0"
    assert _target(led, 1) is None
    led.append(node_key(1), record(formation="alpha"))    # joins after the intent
    assert _target(led, 1) == "2.0.0"


def test_node_that_changes_formation_follows_its_new_formation() -> None:
    led = admitted_ledger(2)
    led.append(node_key(0), intent("1.0.0", scope=Scope.of_formation("alpha"), wall=1))
    led.append(node_key(0), intent("3.0.0", scope=Scope.of_formation("beta"), wall=2))
    led.append(node_key(1), record(formation="alpha"))
    assert _target(led, 1) == "1.0.0"
    led.append(node_key(1), record(formation="beta"))
    assert _target(led, 1) == "3.0.0"
    led.append(node_key(1), record(formation="gamma"))
    assert _target(led, 1) is None


def test_newest_intent_wins_and_cancel_restores_the_previous_one() -> None:
    led = admitted_ledger(1)
    old, new = intent("1.0.0", wall=1), intent("2.0.0", wall=5)
    led.append(node_key(0), new)
    led.append(node_key(0), old)        # arrival order does not matter, the stamp does
    assert _target(led, 0) == "2.0.0"
    cancel = intent("2.0.0", kind=IntentKind.CANCEL, cancels=new.intent_id, wall=6)
    led.append(node_key(0), cancel)
    assert _target(led, 0) == "1.0.0"
    led.append(node_key(0), cancel)     # idempotent (a second stamp of the same cancel)
    assert _target(led, 0) == "1.0.0"


def test_capable_scope_follows_a_new_probe() -> None:
    led = admitted_ledger(1)
    led.append(node_key(0), intent("1.0.0", scope=Scope.capable(min_gpu_mem_gb=8)))
    led.append(node_key(0), record(capabilities=caps()))
    assert _target(led, 0) is None
    led.append(node_key(0), record(capabilities=caps(gpu_gb=24)))
    assert _target(led, 0) == "1.0.0"
