"""The simulator driving real NodeMachines: determinism, gossip under partition,
a small swarm against its lower bound, delta transfers, liars, churn."""

from __future__ import annotations

import json

import pytest

from protocol._config import Config, GossipConfig
from protocol._errors import SignatureError
from protocol._identity import verify_signature
from protocol._types import ModelOperationalStatus
from sim import _scenarios as sc
from sim.__main__ import main
from sim._content import build_model, derive_model, verify_token
from sim._fleet import Fleet, NodeSpec, seeded_identity
from sim._network import LinkProfile
from sim._speedups import SignatureMemo

MiB = sc.MiB


def small_fleet(n: int, seed: int = 1, **kw: object) -> Fleet:
    specs = [NodeSpec(up=sc.mbit(100), down=sc.mbit(100)) for _ in range(n)]
    return Fleet(specs, seed=seed, **kw)  # type: ignore[arg-type]


def test_same_seed_same_trace_different_seed_different_trace() -> None:
    a = sc.swarm(nodes=6, size=4 * MiB, seed=3, hub=False)
    b = sc.swarm(nodes=6, size=4 * MiB, seed=3, hub=False)
    c = sc.swarm(nodes=6, size=4 * MiB, seed=4, hub=False)
    assert a["trace"] == b["trace"]
    assert a["t_measured"] == b["t_measured"]
    assert a["trace"] != c["trace"]


def test_small_swarm_completes_and_respects_the_lower_bound() -> None:
    r = sc.swarm(nodes=8, size=8 * MiB, seed=1, hub=True)
    assert r["complete"]
    assert r["t_measured"] >= r["t_min"]
    assert r["t_hub"] >= r["t_measured"]  # a swarm never loses to the hub
    # every downloader received at least the model, and almost nothing twice (first-copy
    # uploads and a tail-only endgame keep this small)
    assert r["piece_bytes_received"] >= 7 * 8 * MiB
    assert 0.0 <= r["duplicate_fraction"] < 0.05


@pytest.mark.parametrize(("n", "degree", "seed"), [(1000, 8, 1), (300, 8, 2), (101, 5, 3)])
def test_random_overlay_gives_every_node_about_degree_neighbours(
        n: int, degree: int, seed: int) -> None:
    """A ring plus degree - 2 chord ends per node, paired: connected, no self-loops, and
    no node left with fewer than degree - 1 neighbours (uniform random chords left ~e^-6
    of a thousand nodes on their two ring links, which set the heterogeneous finish)."""
    fleet = small_fleet(n, seed=seed, topology="random", degree=degree)
    degrees = [len(fleet.neighbours[i]) for i in range(n)]
    assert all(a != b for a, b in fleet.edges)
    assert min(degrees) >= degree - 1 and max(degrees) <= degree
    assert sum(degrees) >= n * degree - 1
    seen, frontier = {0}, [0]
    while frontier:
        frontier = [j for i in frontier for j in fleet.neighbours[i] if j not in seen]
        seen.update(frontier)
    assert len(seen) == n


def test_delta_fetches_about_the_changed_bytes() -> None:
    r = sc.delta(nodes=5, size=16 * MiB, changed=0.25, seed=2)
    assert r["complete"]
    assert r["bytes_changed"] == 4 * MiB
    # every old-version node fetched the changed chunks and (endgame being only for
    # overdue tail requests) hardly anything more
    assert r["bytes_changed"] <= r["bytes_fetched"] <= 1.1 * r["bytes_changed"]


def test_gossip_reaches_everyone_within_the_bound() -> None:
    r = sc.gossip(nodes=30, seed=2, settle_rounds=8, quiet_rounds=3)
    assert r["known"] == 30
    assert r["rounds_to_99"] is not None and r["rounds_to_100"] is not None
    assert r["rounds_to_99"] <= r["rounds_to_100"] <= r["bound"] + 3
    assert r["quiet_bytes_per_node_round"] > 0


def test_partitioned_fleet_diverges_heals_and_converges() -> None:
    fleet = small_fleet(8, seed=5, topology="full")
    fleet.run(until=3.0)
    side_a, side_b = [0, 1, 2, 3], [4, 5, 6, 7]
    fleet.split([side_a, side_b])
    intent = sc._intent(fleet, "m", "1.0.0", 0)
    fleet.issue(0, intent)
    fleet.run(until=15.0)
    knows = [fleet.nodes[i].machine.ledger.intent(intent.intent_id) is not None
             for i in range(8)]
    assert knows == [True] * 4 + [False] * 4  # diverged: the other side never heard
    fleet.heal()
    fleet.run(until=30.0)
    keys = {fleet.nodes[i].machine.ledger.intent(intent.intent_id) is not None
            for i in range(8)}
    assert keys == {True}
    fleet.run(until=45.0)
    # and the ledgers themselves converge to one state
    assert len({n.machine.ledger.state_key() for n in fleet.nodes}) == 1


def test_partition_during_rollout_scenario_converges() -> None:
    r = sc.partition(nodes=6, size=4 * MiB, seed=1, heal_after=10.0)
    assert r["ledgers_equal_during_split"] is False
    assert r["complete"]
    assert r["t_measured"] >= r["healed_at"] - 1.0 or r["b_complete_during_split"] == 3


def test_liar_is_dropped_and_transfer_still_completes() -> None:
    r = sc.swarm(nodes=8, size=8 * MiB, seed=1, hub=False, liars=1)
    assert r["complete"]
    assert r["drops"] >= 1


def test_crash_keeps_disk_and_churn_completes() -> None:
    r = sc.churn(nodes=8, size=8 * MiB, seed=2, crashes=3, downtime=2.0, late_joiners=1)
    assert r["complete"], r
    assert r["t_measured"] >= r["t_min_no_churn"]


def test_synthetic_content_and_verifier() -> None:
    pub = seeded_identity(1, "publisher")
    v1 = build_model(pub, "m", "1.0.0", 10 * MiB + 5, MiB)
    assert v1.size == 10 * MiB + 5
    assert len(v1.chunk_hashes) == 11
    h = v1.chunk_hashes[0]
    assert verify_token(h, v1.sizes[h], v1.tokens[h])
    assert not verify_token(h, v1.sizes[h], b"lie/" + v1.tokens[h])
    v2 = derive_model(pub, v1, "1.1.0", 0.2)
    assert len(set(v2.chunk_hashes) - set(v1.chunk_hashes)) == 2
    v1.manifest.verify()
    v2.manifest.verify()


def test_memoized_signatures_still_reject_forgeries() -> None:
    fleet = small_fleet(1)
    check = fleet.trust.verifier          # the fleet's own memoised check, given to its trust
    assert isinstance(check, SignatureMemo)
    ident = seeded_identity(9, "x")
    sig = ident.sign(b"data")
    for _ in range(2):                    # the second answer comes from the memo
        check(ident.public_key, b"data", sig)
        with pytest.raises(SignatureError):
            check(ident.public_key, b"other", sig)
    # the check is the fleet's, not the process's: protocol's own is untouched
    assert small_fleet(1).trust.verifier is not check
    assert Fleet([], seed=1, memo_signatures=False).trust.verifier is verify_signature
    with pytest.raises(SignatureError):
        verify_signature(ident.public_key, b"other", sig)


def test_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["delta", "--nodes", "3", "--size", "4M", "--changed", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scenario"] == "delta"
    assert out["complete"] is True


def test_message_size_is_the_encoded_size_and_is_remembered() -> None:
    from protocol._codec import encode
    from protocol._swarm_messages import Cancel, Have, HaveSet, Reject, Request
    from sim._fleet import message_size

    key = "ab" * 32 + "/cpu"
    h = bytes(range(32))
    for msg in (Have(key, 0), Have(key, 300), Have(key, 70_000), Request(key, h, 3),
                Cancel(h), Reject(h, True), HaveSet(key, 9, b"\xff\x80")):
        assert message_size(msg) == len(encode(msg))
        assert message_size(msg) == len(encode(msg))   # from the memo this time
    assert message_size(Have(key, 1)) != message_size(Have(key, 70_000))


def _rollout_record_writes(fleet_progress_rate: float) -> tuple[float, list[int], Fleet]:
    """20 nodes on 10 Mbit/s links fetch 32 MiB (40-42 s measured); each node's own
    record writes during the rollout, and the fleet afterwards."""
    n = 20
    specs = [NodeSpec(up=sc.mbit(10), down=sc.mbit(10)) for _ in range(n)]
    config = Config(fleet_id="sim", gossip=GossipConfig(fleet_progress_rate=fleet_progress_rate))
    fleet = Fleet(specs, seed=3, config=config, topology="random", degree=6,
                  profile=LinkProfile(latency=0.01))
    model = build_model(seeded_identity(3, "publisher"), "m", "1.0.0", 32 * MiB, MiB)
    fleet.add_content(model, [0])
    fleet.run(until=2.0)
    before = [node.machine.statistics().record_writes for node in fleet.nodes]
    res = sc._transfer(fleet, model, list(range(1, n)), 0, horizon=600.0)
    assert res["complete"]
    writes = [node.machine.statistics().record_writes - b
              for node, b in zip(fleet.nodes, before, strict=True)]
    fleet.run(until=fleet.loop.now + 20.0)   # installs finish, records spread
    return float(res["t_measured"]), writes[1:], fleet


def test_progress_writes_share_a_fleet_wide_rate_and_status_still_arrives() -> None:
    """Every record reaches every node, so progress alone costs each node's links N
    records a second; ``fleet_progress_rate`` caps the fleet's progress-only writes.
    With 20 nodes and a rate of 2/s each node writes mere progress every 10 s instead of
    every second -- and the fleet still ends with every node's final record everywhere."""
    t_free, free, _ = _rollout_record_writes(0.0)
    t_capped, capped, fleet = _rollout_record_writes(2.0)
    # unlimited: about one write a second while downloading (record_min_interval 1 s)
    assert min(free) >= 0.6 * t_free
    # capped: one progress write per 10 s, plus the status changes (downloading, the
    # completion, loading, operational) written at once
    assert max(capped) <= t_capped / 10.0 + 6
    assert sum(capped) < sum(free) / 3
    # nothing is lost: every node's record, as every other node holds it, says operational
    # with every byte done
    for viewer in fleet.nodes:
        records = viewer.machine.ledger.records()
        for node in fleet.nodes[1:]:
            (state,) = records[node.node_id].models
            assert state.status is ModelOperationalStatus.OPERATIONAL, (viewer.index, state)
            assert state.bytes_done == state.bytes_total > 0
