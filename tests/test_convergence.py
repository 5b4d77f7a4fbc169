from __future__ import annotations

from protocol._convergence import compute_convergence, unreachable_nodes
from protocol._intents import Scope
from protocol._ledger import Ledger, Suspicion
from protocol._types import BlockerReason, ModelOperationalStatus

from ._fleet import admitted_ledger, intent, node_key, record, running

S = ModelOperationalStatus


def _status(led: Ledger, unreachable: set[str] | None = None, now: float = 100.0):  # type: ignore[no-untyped-def]
    return compute_convergence("m", "2.0.0", led.intents(), led.records(), led.trust,
                               unreachable or set(), now)


def _fleet() -> Ledger:
    led = admitted_ledger(5)
    led.append(node_key(0), intent("2.0.0", scope=Scope.of_formation("a")))
    led.append(node_key(0), record(formation="a", models=(running("m", "2.0.0"),)))
    led.append(node_key(1), record(formation="a", models=(
        running("m", "2.0.0", S.DOWNLOADING, bytes_done=500, bytes_total=1000,
                started_at=50.0, updated_at=100.0),)))
    led.append(node_key(2), record(formation="a", models=(
        running("m", "2.0.0", S.FAILED, blocker=BlockerReason.DEPLOYMENT_FAILED,
                blocker_detail="migrator exited 3", blocker_since=90.0),)))
    led.append(node_key(3), record(formation="a", models=(running("m", "1.0.0"),)))
    led.append(node_key(4), record(formation="b", models=(running("m", "1.0.0"),)))
    return led


def test_counts_distribution_blockers_and_eta() -> None:
    s = _status(_fleet())
    assert (s.total_platforms, s.converged, s.in_progress, s.failed, s.pending) == (4, 1, 1, 1, 1)
    assert s.version_distribution == {"2.0.0": 1, "1.0.0": 1, "none": 2}
    assert [(b.node_id, b.reason) for b in s.blockers] == [
        (node_key(2).key_id, BlockerReason.DEPLOYMENT_FAILED)]
    # node 3 has not started (no rate of its own): the estimate is unknown
    # (tests/test_status_truth.py covers the estimate itself)
    assert s.estimated_completion is None
    assert not s.is_complete and not s.is_success and s.progress == 0.25


def _lost(led: Ledger, now: float, need: int = 2, after: float = 30.0) -> set[str]:
    records = led.records()
    return unreachable_nodes(records, {n: led.record_counter(n) for n in records}, need,
                             after, now)


def test_unreachable_node_in_scope_is_a_partition_blocker() -> None:
    led = _fleet()
    gone = node_key(3).key_id
    seen = led.record_counter(gone)
    led.append(node_key(0), record(formation="a", models=(running("m", "2.0.0"),),
                                   suspects=(Suspicion(gone, seen, 50.0),)))
    assert _lost(led, 100.0) == set()                   # one voice is not enough
    led.append(node_key(4), record(formation="b", suspects=(Suspicion(gone, seen, 60.0),)))
    assert _lost(led, 89.9) == set()                    # the 2nd silence is not 30 s old
    assert _lost(led, 90.0) == {gone}
    s = _status(led, _lost(led, 100.0))
    assert (gone, BlockerReason.NETWORK_PARTITION) in [(b.node_id, b.reason) for b in s.blockers]


def test_a_newer_record_refutes_older_suspicions() -> None:
    led = _fleet()
    gone = node_key(3).key_id
    seen = led.record_counter(gone)
    for i in (0, 4):
        led.append(node_key(i), record(suspects=(Suspicion(gone, seen, 10.0),)))
    assert _lost(led, 100.0) == {gone}
    led.append(node_key(3), record(models=(running("m", "1.0.0"),)))   # it spoke since
    assert _lost(led, 100.0) == set()
    # a node's own record cannot vouch against itself, and unknown nodes are ignored
    led.append(node_key(3), record(suspects=(Suspicion(node_key(3).key_id, 99, 0.0),
                                             Suspicion("ab" * 16, 1, 0.0))))
    assert _lost(led, 100.0, need=1) == set()


def test_complete_and_success() -> None:
    led = admitted_ledger(2)
    led.append(node_key(0), intent("2.0.0"))
    for i in range(2):
        led.append(node_key(i), record(models=(running("m", "2.0.0"),)))
    s = _status(led)
    assert s.is_complete and s.is_success and s.progress == 1.0
    assert s.estimated_completion == 0.0


def test_no_rate_observed_means_no_estimate() -> None:
    led = admitted_ledger(1)
    led.append(node_key(0), intent("2.0.0"))
    led.append(node_key(0), record())
    s = _status(led)
    assert s.pending == 1 and s.estimated_completion is None
