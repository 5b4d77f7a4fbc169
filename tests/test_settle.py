"""Issue 21: a ledger bounded by the live fleet. An intent carried out and healthy on
every node it targets is *settled* (one ``settle`` intent, written by the lowest such
node); the history it dominates is void -- no reader sees it -- and is forgotten. What
must hold: the answers (desired states, convergence) are those of a ledger that never
forgets; rollback targets still on disk keep their manifests; a cancel of a settled
intent does not bring back what it dominated; a node that comes back empty converges
without the history."""

from __future__ import annotations

from typing import Any

from protocol import Intent, IntentKind, ModelOperationalStatus, Scope, ScopeKind
from protocol._config import Config, LedgerConfig
from protocol._hlc import HLC
from protocol._intents import OnDegraded, RolloutPolicy, resolve
from protocol._node import RETIRE_INTERVAL
from protocol._settle import dominates, manifests_to_retire, settles_to_write, void_intents

from ._fleet import (
    OPERATOR,
    InProcessFleet,
    intent,
    make_trust,
    manifest,
    node_key,
    record,
    running,
)

S = ModelOperationalStatus
DAY_MS = 24 * 3600 * 1000


# ------------------------------------------------------------------ the rules


def test_dominance_is_static_scope_containment_and_newer() -> None:
    old, new = intent("1.0.0", wall=1), intent("2.0.0", wall=2)
    assert dominates(new, old) and not dominates(old, new)
    alpha = Scope.of_formation("alpha")
    a1, a2 = intent("1.0.0", wall=1, scope=alpha), intent("2.0.0", wall=2, scope=alpha)
    beta2 = intent("2.0.0", wall=2, scope=Scope.of_formation("beta"))
    assert dominates(a2, a1) and dominates(new, a1)       # same scope, or all
    assert not dominates(beta2, a1) and not dominates(a2, old)   # not a superset
    rb = intent("1.0.0", wall=3, kind=IntentKind.ROLLBACK)
    # a rollback targets only nodes that deployed the model: it covers no distribute
    assert not dominates(rb, new) and dominates(intent("3.0.0", wall=4), rb)
    assert dominates(intent("1.0.0", wall=5, kind=IntentKind.ROLLBACK), rb)
    other_model = intent("9.0.0", wall=9, model="other")
    assert not dominates(other_model, old)


def _settle(j: Intent, wall: int = 50) -> Intent:
    return intent(j.version, wall=wall, kind=IntentKind.SETTLE, cancels=j.intent_id,
                  issuer=node_key(0))


def test_void_is_what_a_settled_intent_dominates_and_what_names_it() -> None:
    d1, d2 = intent("1.0.0", wall=1), intent("2.0.0", wall=2)
    c1 = intent("1.0.0", wall=3, kind=IntentKind.CANCEL, cancels=d1.intent_id)
    f1 = intent("1.0.0", wall=1, scope=Scope.of_formation("alpha"))
    assert void_intents([d1, d2, c1]) == set()               # nothing settled: all live
    s2 = _settle(d2)
    assert void_intents([d1, d2, c1, s2, f1]) == {d1.intent_id, c1.intent_id, f1.intent_id}
    d3 = intent("3.0.0", wall=4)
    s3 = _settle(d3, wall=60)
    # d3 settled too: d2 and its settle are void as well, d3 and s3 stand
    assert void_intents([d1, d2, d3, s2, s3]) == {d1.intent_id, d2.intent_id, s2.intent_id}


def test_a_cancel_of_a_settled_intent_does_not_bring_back_what_it_dominated() -> None:
    trust = make_trust()
    d1, d2 = intent("1.0.0", wall=1), intent("2.0.0", wall=2)
    c2 = intent("2.0.0", wall=3, kind=IntentKind.CANCEL, cancels=d2.intent_id)
    recs = {"a" * 32: record("a")}
    # unsettled: cancelling 2.0.0 sends the fleet back to 1.0.0 (undo)
    live = [i for i in (d1, d2, c2) if i.intent_id not in void_intents([d1, d2, c2])]
    assert resolve(live, "m", "a" * 32, recs, trust) == d1
    # settled: 1.0.0 is history; the cancel stops 2.0.0, nodes stay where they are
    s2 = _settle(d2)
    every = [d1, d2, c2, s2]
    live = [i for i in every if i.intent_id not in void_intents(every)]
    assert resolve(live, "m", "a" * 32, recs, trust) is None


def test_a_settle_is_written_once_everyone_targeted_runs_it_healthy() -> None:
    trust = make_trust()
    d1, d2 = intent("1.0.0", wall=1), intent("2.0.0", wall=2)
    a, b = "a" * 32, "b" * 32
    on1 = running("m", "1.0.0", intent_id=d1.intent_id)
    on2 = running("m", "2.0.0", intent_id=d2.intent_id)
    recs = {a: record("a", models=(on2,)), b: record("b", models=(on1,))}
    assert settles_to_write([d1, d2], recs, trust, a, 10, DAY_MS) == []     # b lags
    recs[b] = record("b", models=(on2,))
    assert settles_to_write([d1, d2], recs, trust, a, 10, DAY_MS) == [d2]   # a: lowest id
    assert settles_to_write([d1, d2], recs, trust, b, 10, DAY_MS) == []
    degraded = running("m", "2.0.0", intent_id=d2.intent_id)
    recs[b] = record("b", models=(degraded.__class__(
        "m", "2.0.0", "v", S.DEGRADED, intent_id=d2.intent_id, active_version="2.0.0"),))
    assert settles_to_write([d1, d2], recs, trust, a, 10, DAY_MS) == []     # not healthy
    # nothing to dominate: nothing to settle
    assert settles_to_write([d2], {a: record("a", models=(on2,))}, trust, a, 10, DAY_MS) == []
    # a node that never returns: past the horizon, any node settles it
    recs[b] = record("b", models=(on1,))
    assert settles_to_write([d1, d2], recs, trust, b, 2 + DAY_MS, DAY_MS) == [d2]


def test_a_distribute_whose_policy_may_act_settles_only_at_the_horizon() -> None:
    trust = make_trust()
    d1 = intent("1.0.0", wall=1)
    d2 = Intent.create(OPERATOR, IntentKind.DISTRIBUTE, "m", "2.0.0", HLC(2, 0, "op"),
                       policy=RolloutPolicy(10.0, OnDegraded.ROLLBACK))
    a = "a" * 32
    recs = {a: record("a", models=(running("m", "2.0.0", intent_id=d2.intent_id),))}
    assert settles_to_write([d1, d2], recs, trust, a, 10, DAY_MS) == []
    assert settles_to_write([d1, d2], recs, trust, a, 2 + DAY_MS, DAY_MS) == [d2]


def test_manifests_are_kept_while_an_intent_or_a_record_names_them() -> None:
    m1, _ = manifest(version="1.0.0", seed="a")
    m2, _ = manifest(version="2.0.0", seed="b")
    m3, _ = manifest(version="3.0.0", seed="c")      # published, not distributed yet
    d1, d2 = intent("1.0.0", wall=5), intent("2.0.0", wall=6)
    s2 = _settle(d2)
    live = [d2, s2]                                  # d1 is void
    on2 = running("m", "2.0.0", intent_id=d2.intent_id)
    assert manifests_to_retire([m1, m2, m3], live, [record(models=(on2,))]) == {
        m1.manifest_id}
    kept = running("m", "2.0.0", intent_id=d2.intent_id, installed=("1.0.0", "2.0.0"))
    assert manifests_to_retire([m1, m2, m3], live, [record(models=(kept,))]) == set()
    assert manifests_to_retire([m1, m2], [d1, d2], [record(models=(on2,))]) == set()


# ------------------------------------------------------------------ whole machines


def _three_rollouts(fleet: InProcessFleet) -> None:
    """1.0.0, 2.0.0 and 3.0.0 published and distributed to all, each given the time to
    settle and be retired before the next."""
    for k, version in enumerate(("1.0.0", "2.0.0", "3.0.0")):
        fleet.publish_files(version, seed="abc"[k])
        fleet.issue(0, intent(version, wall=1 + 4 * k))
        fleet.advance(20 + 2 * RETIRE_INTERVAL)


def _on(fleet: InProcessFleet, version: str) -> bool:
    return all((st := fleet.m(i).model_state("m")) is not None
               and st.active_version == version for i in range(len(fleet.nodes)))


def test_a_fleet_forgets_the_history_a_settled_rollout_covers() -> None:
    fleet = InProcessFleet(4)
    fleet.publish_files("1.0.0", seed="a")
    d1 = intent("1.0.0", wall=1)
    fleet.issue(0, d1)
    fleet.advance(20)
    assert _on(fleet, "1.0.0")
    fleet.publish_files("2.0.0", seed="b")
    d2 = intent("2.0.0", wall=5)
    fleet.issue(1, d2)
    fleet.advance(20 + 2 * RETIRE_INTERVAL)
    assert _on(fleet, "2.0.0")
    settles = {i.intent_id: i for n in range(4) for i in fleet.m(n).ledger.intents()
               if i.kind is IntentKind.SETTLE}
    assert [s.cancels for s in settles.values()] == [d2.intent_id]   # one, naming d2
    for n in range(4):
        led = fleet.m(n).ledger
        assert led.intent(d1.intent_id) is None                     # no reader sees it
        assert d1.intent_id not in {i.intent_id for i in led.all_intents()}   # forgotten
        assert led.statistics().retired >= 1
        # 1.0.0 is on every disk (the rollback target): its manifest is kept
        assert led.manifest_for("m", "1.0.0") is not None
        assert fleet.m(n).convergence("m", "2.0.0", fleet.now).is_success
    # the rollback target still works, from disk
    fleet.issue(2, intent("1.0.0", wall=9, kind=IntentKind.ROLLBACK))
    fleet.advance(20)
    assert _on(fleet, "1.0.0")
    assert all([a.version for a in fleet.activations[i]][-1] == "1.0.0" for i in range(4))


def test_a_cancel_after_settling_leaves_nodes_where_they_are() -> None:
    fleet = InProcessFleet(3)
    fleet.publish_files("1.0.0", seed="a")
    fleet.issue(0, intent("1.0.0", wall=1))
    fleet.advance(20)
    fleet.publish_files("2.0.0", seed="b")
    d2 = intent("2.0.0", wall=5)
    fleet.issue(0, d2)
    fleet.advance(30)
    assert _on(fleet, "2.0.0")
    fleet.issue(2, intent("2.0.0", wall=9, kind=IntentKind.CANCEL, cancels=d2.intent_id))
    fleet.advance(20)
    assert _on(fleet, "2.0.0")            # not back to 1.0.0: that history is settled


def test_a_node_that_returns_empty_converges_without_the_history() -> None:
    fleet = InProcessFleet(4)
    _three_rollouts(fleet)
    assert _on(fleet, "3.0.0")
    fleet.restart(3, forget_ledger=True)
    fleet.advance(30)
    assert _on(fleet, "3.0.0")
    ids = [{i.intent_id for i in fleet.m(n).ledger.intents()} for n in range(4)]
    assert ids[3] == ids[0]
    assert fleet.m(3).convergence("m", "3.0.0", fleet.now).is_success


def test_retirement_off_keeps_every_entry_and_gives_the_same_answers() -> None:
    keep = Config(fleet_id="test-fleet", ledger=LedgerConfig(retire=False))
    fleet = InProcessFleet(3, config=keep)
    fleet.publish_files("1.0.0", seed="a")
    d1 = intent("1.0.0", wall=1)
    fleet.issue(0, d1)
    fleet.advance(20)
    fleet.publish_files("2.0.0", seed="b")
    fleet.issue(0, intent("2.0.0", wall=5))
    fleet.advance(20 + 2 * RETIRE_INTERVAL)
    assert _on(fleet, "2.0.0")
    led = fleet.m(1).ledger
    assert d1.intent_id in {i.intent_id for i in led.all_intents()}
    assert led.intent(d1.intent_id) is None and led.statistics().retired == 0


def test_a_node_keeps_the_active_version_and_one_to_roll_back_to() -> None:
    fleet = InProcessFleet(3)
    _three_rollouts(fleet)
    assert _on(fleet, "3.0.0")
    for n in range(3):
        st = fleet.m(n).model_state("m")
        assert st is not None and st.installed == ("2.0.0", "3.0.0")    # A/B
        assert {v for (_, v, _) in fleet.nodes[n].disk.installed} == {"2.0.0", "3.0.0"}
        led = fleet.m(n).ledger
        # no node runs or keeps 1.0.0, and a newer version settled: its manifest is gone
        assert led.manifest_for("m", "1.0.0") is None
        assert led.manifest_for("m", "2.0.0") is not None
    fleet.issue(1, intent("2.0.0", wall=30, kind=IntentKind.ROLLBACK))
    fleet.advance(10)
    assert _on(fleet, "2.0.0")                  # from disk


def test_keep_versions_zero_keeps_every_version() -> None:
    fleet = InProcessFleet(2, config=Config(fleet_id="test-fleet",
                                            ledger=LedgerConfig(keep_versions=0)))
    _three_rollouts(fleet)
    st = fleet.m(1).model_state("m")
    assert st is not None and st.installed == ("1.0.0", "2.0.0", "3.0.0")
    assert fleet.m(1).ledger.manifest_for("m", "1.0.0") is not None


def test_an_install_that_finds_held_chunks_bad_fetches_them_again() -> None:
    """A model that rewrote its own installed file made a chunk the next version shares
    unservable here: the driver reports it gone and the install failed with ``refetch``.
    The node goes back to downloading, fetches that chunk from a peer and installs again
    (it once stayed failed, or overwrote the model's file with the fetched bytes)."""
    from sim._fleet import Fleet

    fleet = InProcessFleet(3)
    fleet.publish_files("1.0.0", seed="a")
    d = intent("1.0.0", wall=1)
    first = True
    real = Fleet._installed

    def installed(self: Fleet, index: int, life: int, model_id: str, version: str,
                  variant_id: str) -> None:
        nonlocal first
        if index == 2 and first:
            first = False
            node = self.nodes[2]
            bad = next(iter(sorted(node.disk.held)))
            node.disk.held.discard(bad)
            node.machine.chunk_missing(bad, self.loop.now)
            node.machine.install_finished(model_id, version, variant_id, False, None,
                                          "1 chunk on disk does not match its hash",
                                          self.loop.now, refetch=True)
            self._pump(node)
            return
        real(self, index, life, model_id, version, variant_id)
    fleet._installed = installed.__get__(fleet)       # type: ignore[method-assign]
    fleet.issue(0, d)
    fleet.advance(30)
    assert not first                                  # the failure did happen
    assert _on(fleet, "1.0.0")
    assert [x.version for x in fleet.installs[2]] == ["1.0.0", "1.0.0"]   # again
    st = fleet.m(2).model_state("m")
    assert st is not None and st.status is S.OPERATIONAL and st.blocker is None


class _KeeperFleet(InProcessFleet):
    """Node 2 keeps every entry (``retire = false``); the others retire as by default."""

    def _machine(self, **kw: Any) -> Any:
        if self.by_id[kw["identity"].key_id].index == 2:
            kw["config"] = Config(fleet_id="test-fleet", ledger=LedgerConfig(retire=False))
        return super()._machine(**kw)


def test_a_manifest_forgotten_here_comes_back_when_an_operator_names_it_again() -> None:
    """Nodes retire at their own pace. Node 2 publishes three versions to nodes 0 and 1
    (out of scope itself, it keeps every chunk it published) and still holds 1.0.0's
    manifest after nodes 0 and 1 forgot it; an operator rolls them back to 1.0.0 there.
    Their vectors still cover the forgotten entry, so no round sends it again: they ask
    for it (``GossipWant``), get the signed entry back, fetch 1.0.0 from node 2 and run
    it. (Without the want, they waited for that manifest for ever.)"""
    fleet = _KeeperFleet(3)
    pair = Scope(ScopeKind.NODES, nodes=("n0", "n1"))
    for k, version in enumerate(("1.0.0", "2.0.0", "3.0.0")):
        fleet.publish_files(version, seed="abc"[k], at=2)
        fleet.issue(2, intent(version, wall=1 + 4 * k, scope=pair))
        fleet.advance(20 + 2 * RETIRE_INTERVAL)
    for n in (0, 1):
        st = fleet.m(n).model_state("m")
        assert st is not None and st.active_version == "3.0.0"
        assert fleet.m(n).ledger.manifest_for("m", "1.0.0") is None      # forgotten
    assert fleet.m(2).ledger.manifest_for("m", "1.0.0") is not None
    fleet.issue(2, intent("1.0.0", wall=30, kind=IntentKind.ROLLBACK, scope=pair))
    fleet.advance(40)
    for n in (0, 1):
        assert fleet.m(n).ledger.manifest_for("m", "1.0.0") is not None
        st = fleet.m(n).model_state("m")
        assert st is not None and st.active_version == "1.0.0"
    stats = [fleet.m(n).gossip.statistics() for n in range(3)]
    assert stats[0].wants_sent + stats[1].wants_sent >= 1
    assert sum(s.wants_answered for s in stats) >= 1
