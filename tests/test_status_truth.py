"""Status that tells the truth: a rollout's state (active, complete, superseded,
cancelled, rolled back, unknown) from the ledger alone, and an ETA that is unknown
while it cannot be known and is computed from the bytes the rollout moved."""

from __future__ import annotations

from dataclasses import replace

from protocol._codec import decode, decode_value, encode, encode_value
from protocol._config import Config, GossipConfig
from protocol._convergence import ModelConvergenceStatus, RolloutState, compute_convergence
from protocol._intents import IntentKind, Scope
from protocol._ledger import Ledger
from protocol._types import BlockerReason, ModelOperationalStatus
from sim import _scenarios as sc
from sim._content import build_model, derive_model
from sim._fleet import Fleet, NodeSpec
from sim._network import LinkProfile

from ._fleet import admitted_ledger, intent, node_key, record, running

S = ModelOperationalStatus
MiB = 1024 * 1024


def _status(led: Ledger, version: str = "2.0.0",
            unreachable: set[str] | None = None) -> ModelConvergenceStatus:
    return compute_convergence("m", version, led.intents(), led.records(), led.trust,
                               unreachable or set(), 100.0)


def _two_nodes_on(version: str, status: ModelOperationalStatus = S.OPERATIONAL,
                  **kw: object) -> Ledger:
    led = admitted_ledger(2)
    for i in range(2):
        led.append(node_key(i), record(models=(running("m", version, status, **kw),)))
    return led


# ---------------------------------------------------------------------------- state


def test_no_intent_is_unknown_not_complete() -> None:
    s = _status(_two_nodes_on("1.0.0"))
    assert s.state is RolloutState.UNKNOWN and not s.is_final
    assert "no intent" in s.state_detail and s.total_platforms == 0


def test_active_then_complete() -> None:
    led = _two_nodes_on("1.0.0")
    led.append(node_key(0), intent("2.0.0", wall=2))
    s = _status(led)
    assert s.state is RolloutState.ACTIVE and not s.is_final and s.pending == 2
    for i in range(2):
        led.append(node_key(i), record(models=(running("m", "2.0.0"),)))
    s = _status(led)
    assert s.state is RolloutState.COMPLETE and s.is_final and s.is_success


def test_cancelled_says_cancelled() -> None:
    led = _two_nodes_on("1.0.0")
    it = intent("2.0.0", wall=2)
    led.append(node_key(0), it)
    cancel = intent("2.0.0", wall=3, kind=IntentKind.CANCEL, cancels=it.intent_id)
    led.append(node_key(1), cancel)
    s = _status(led)
    assert s.state is RolloutState.CANCELLED and s.is_final
    assert s.state_detail.startswith(f"cancelled by intent {cancel.intent_id[:16]}")
    assert s.estimated_completion is None          # it will never complete


def test_superseded_by_a_newer_version() -> None:
    led = _two_nodes_on("1.0.0")
    led.append(node_key(0), intent("2.0.0", wall=2))
    newer = intent("3.0.0", wall=3)
    led.append(node_key(0), newer)
    s = _status(led)
    assert s.state is RolloutState.SUPERSEDED and s.is_final and s.total_platforms == 0
    assert s.state_detail == f"superseded by 3.0.0 (intent {newer.intent_id[:16]}\u2026)"
    assert _status(led, "3.0.0").state is RolloutState.ACTIVE


def test_rolled_back() -> None:
    led = _two_nodes_on("2.0.0")
    led.append(node_key(0), intent("1.0.0", wall=1))
    led.append(node_key(0), intent("2.0.0", wall=2))
    back = intent("1.0.0", wall=3, kind=IntentKind.ROLLBACK)
    led.append(node_key(1), back)
    s = _status(led)
    assert s.state is RolloutState.ROLLED_BACK and s.is_final
    assert s.state_detail == f"rolled back to 1.0.0 (intent {back.intent_id[:16]}\u2026)"


def test_partly_superseded_stays_with_the_nodes_still_in_scope() -> None:
    led = admitted_ledger(2)
    led.append(node_key(0), record(formation="a", models=(running("m", "2.0.0"),)))
    led.append(node_key(1), record(formation="b", models=(running("m", "2.0.0"),)))
    led.append(node_key(0), intent("2.0.0", wall=2))
    led.append(node_key(0), intent("3.0.0", wall=3, scope=Scope.of_formation("a")))
    s = _status(led)
    assert s.state is RolloutState.COMPLETE and s.total_platforms == 1


def test_a_cancelled_newer_intent_hands_the_nodes_back() -> None:
    led = _two_nodes_on("2.0.0")
    led.append(node_key(0), intent("2.0.0", wall=2))
    newer = intent("3.0.0", wall=3)
    led.append(node_key(0), newer)
    led.append(node_key(0), intent("3.0.0", wall=4, kind=IntentKind.CANCEL,
                                   cancels=newer.intent_id))
    assert _status(led).state is RolloutState.COMPLETE
    assert _status(led, "3.0.0").state is RolloutState.CANCELLED


def test_status_with_state_travels_on_the_wire() -> None:
    from agent._daemon.control_messages import ConvergenceReport

    led = _two_nodes_on("1.0.0")
    led.append(node_key(0), intent("2.0.0", wall=2))
    led.append(node_key(0), intent("3.0.0", wall=3))
    s = _status(led)
    assert decode_value(ModelConvergenceStatus, encode_value(s)) == s
    assert decode(encode(ConvergenceReport(s))) == ConvergenceReport(s)


# ---------------------------------------------------------------------------- ETA


def test_reused_bytes_do_not_count_as_rate() -> None:
    # 1000 B; 500 held before the transfer (a delta, or a resumed transfer) and 100
    # fetched in 10 s: 10 B/s, 400 B left -> 40 s. Counting the 600 B held as rate
    # (60 B/s) would say 6.7 s.
    led = _two_nodes_on("2.0.0", S.DOWNLOADING, bytes_total=1000, bytes_done=600,
                        bytes_reused=500, bytes_fetched=100, started_at=50.0,
                        updated_at=60.0)
    led.append(node_key(0), intent("2.0.0"))
    s = _status(led)
    assert s.in_progress == 2 and s.estimated_completion == 40.0


def test_eta_unknown_while_a_node_is_pending_unmeasured_or_blocked() -> None:
    moving = running("m", "2.0.0", S.DOWNLOADING, bytes_total=1000, bytes_done=100,
                     bytes_fetched=100, started_at=50.0, updated_at=60.0)
    led = admitted_ledger(2)
    led.append(node_key(0), intent("2.0.0"))
    led.append(node_key(0), record(models=(moving,)))
    led.append(node_key(1), record(models=(running("m", "1.0.0"),)))     # not started
    assert _status(led).pending == 1 and _status(led).estimated_completion is None
    # started, but nothing fetched yet: no rate of its own
    led.append(node_key(1), record(models=(replace(moving, bytes_done=0, bytes_fetched=0),)))
    assert _status(led).estimated_completion is None
    led.append(node_key(1), record(models=(moving,)))
    assert _status(led).estimated_completion == 90.0
    # a blocker in its record, or the fleet cannot reach it
    led.append(node_key(1), record(models=(replace(
        moving, blocker=BlockerReason.INSUFFICIENT_STORAGE, blocker_detail="disk full"),)))
    s = _status(led)
    assert s.estimated_completion is None and s.blockers[0].node_id == node_key(1).key_id
    led.append(node_key(1), record(models=(moving,)))
    assert _status(led, unreachable={node_key(1).key_id}).estimated_completion is None
    # a failed node is final: it does not hold the estimate up
    led.append(node_key(1), record(models=(replace(
        moving, status=S.FAILED, blocker=BlockerReason.DEPLOYMENT_FAILED),)))
    assert _status(led).estimated_completion == 90.0


def _sampled_rollout(delta: bool, changed: float = 0.5, seed: int = 7
                     ) -> tuple[list[tuple[float, ModelConvergenceStatus]], float]:
    """A 5-node fleet on 4 Mbit/s links (the seeder's uplink 8 Mbit/s) rolls out
    8 MiB (or, with ``delta``, a version that changes ``changed`` of a model every
    node holds); node 4's view is sampled every 0.5 s. Returns the samples (seconds
    after the order) and when node 4 first saw the rollout complete."""
    specs = [NodeSpec(up=sc.mbit(8 if i == 0 else 4), down=sc.mbit(4)) for i in range(5)]
    config = Config(fleet_id="sim", gossip=GossipConfig(interval=0.5,
                                                        record_min_interval=0.5))
    fleet = Fleet(specs, seed=seed, config=config, topology="full",
                  profile=LinkProfile(latency=0.01))
    v1 = build_model(fleet.publisher, "m", "1.0.0", 8 * MiB, 256 * 1024)
    model = v1
    if delta:
        model = derive_model(fleet.publisher, v1, "2.0.0", changed)
        fleet.add_content(v1, range(5))
        fleet.install(v1, range(5))
    fleet.add_content(model, [0])
    fleet.run(until=3.0)
    if delta:
        fleet.publish(0, v1)
    fleet.publish(0, model)
    version = model.manifest.version
    fleet.issue(0, sc._intent(fleet, "m", version, 0,
                              delta_from="1.0.0" if delta else None))
    t0 = fleet.loop.now
    samples: list[tuple[float, ModelConvergenceStatus]] = []
    watcher = fleet.nodes[4].machine
    while fleet.loop.now < t0 + 120:
        fleet.run(until=fleet.loop.now + 0.5)
        s = watcher.convergence("m", version, fleet.loop.now)
        samples.append((fleet.loop.now - t0, s))
        if s.is_complete and s.total_platforms == 5:
            assert s.state is RolloutState.COMPLETE and s.estimated_completion == 0.0
            return samples, fleet.loop.now - t0
    raise AssertionError("the rollout did not complete in 120 s")


def _check_against_timeline(delta: bool) -> None:
    samples, done = _sampled_rollout(delta)
    # before every node has started (and measured its own rate), nobody knows
    waiting = [s for _, s in samples if s.pending > 0]
    assert waiting and all(s.estimated_completion is None for s in waiting)
    # mid-rollout the estimate tracks what the simulation then really took (it runs
    # high early on: a rate measured from the start of a transfer includes start-up)
    mid = [(t, s.estimated_completion) for t, s in samples
           if s.estimated_completion is not None and 0.3 * done <= t <= 0.85 * done]
    assert len(mid) >= 5, samples
    for t, eta in mid:
        actual = done - t
        assert eta is not None and actual / 2 - 0.5 <= eta <= 2.5 * actual + 0.5, (
            t, eta, actual, done)


def test_eta_tracks_the_simulated_timeline() -> None:
    _check_against_timeline(delta=False)


def test_eta_of_a_delta_is_not_fooled_by_the_chunks_already_held() -> None:
    # every node holds half the new version: counting those bytes as rate made the
    # estimate about 3.5x too low here
    _check_against_timeline(delta=True)
