"""Issue 24: a distribute's rollout policy acts on degraded reports, fleet-wide, with
no server: ``rollback`` sends every node back to the version it ran (from disk, no
transfer), ``halt`` stops it spreading, ``ignore`` does nothing; the action is one
``policy`` intent (signed by the node that saw the threshold crossed), so nothing
loops; two halves of a partition that both act agree once healed."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import trio

from protocol import (
    Intent,
    IntentKind,
    ModelOperationalStatus,
    OnDegraded,
    RolloutPolicy,
    RolloutState,
)
from protocol._errors import InvalidValue

from ._fleet import HLC, OPERATOR, InProcessFleet, intent, node_key

S = ModelOperationalStatus


def _two_versions(fleet: InProcessFleet, policy: RolloutPolicy, wall: int = 5) -> Intent:
    fleet.publish_files("1.0.0", seed="a")
    fleet.issue(0, intent("1.0.0", wall=1))
    fleet.advance(20)
    fleet.publish_files("2.0.0", seed="b")
    d = Intent.create(OPERATOR, IntentKind.DISTRIBUTE, "m", "2.0.0", HLC(wall, 0, "op"),
                      policy=policy)
    fleet.issue(0, d)
    return d


def _running(fleet: InProcessFleet, i: int) -> str:
    st = fleet.m(i).model_state("m")
    return st.active_version if st is not None else ""


def test_rollback_over_the_threshold_sends_every_node_back_from_disk() -> None:
    fleet = InProcessFleet(4)
    d = _two_versions(fleet, RolloutPolicy(25.0, OnDegraded.ROLLBACK))
    fleet.advance(20)
    assert [_running(fleet, i) for i in range(4)] == ["2.0.0"] * 4
    fleet.m(1).health_reported("m", "2.0.0", "accuracy collapsed", fleet.now)
    fleet.advance(5)                                  # 1 of 4 = 25 %: not more than 25 %
    assert [_running(fleet, i) for i in range(4)] == ["2.0.0"] * 4
    assert fleet.m(0).convergence("m", "2.0.0", fleet.now).degraded == 1
    fleet.m(2).health_reported("m", "2.0.0", "accuracy collapsed", fleet.now)
    fleet.advance(10)                                 # 2 of 4 = 50 %: crossed
    assert [_running(fleet, i) for i in range(4)] == ["1.0.0"] * 4
    for i in range(4):
        # back from disk: activations, no second install of 1.0.0
        assert [a.version for a in fleet.activations[i]] == ["1.0.0"]
        assert [x.version for x in fleet.installs[i]] == ["1.0.0", "2.0.0"]
    acts = [i for i in fleet.m(3).ledger.intents() if i.kind is IntentKind.POLICY]
    assert len(acts) >= 1 and all(a.cancels == d.intent_id for a in acts)
    assert sum(fleet.m(i).statistics().policy_actions for i in range(4)) == len(acts)
    rep = fleet.m(3).convergence("m", "2.0.0", fleet.now)
    assert rep.state is RolloutState.ROLLED_BACK and "rollout policy" in rep.state_detail
    assert fleet.m(3).convergence("m", "1.0.0", fleet.now).is_success
    # nothing loops: the nodes report 1.0.0 healthy now, and stay there
    fleet.advance(30)
    assert [_running(fleet, i) for i in range(4)] == ["1.0.0"] * 4
    assert all(len(fleet.activations[i]) == 1 for i in range(4))
    # a node still failing on the version it returned to reports failed, and stays put
    fleet.m(2).health_reported("m", "1.0.0", "disk errors", fleet.now)
    fleet.advance(20)
    st = fleet.m(2).model_state("m")
    assert st is not None and st.status is S.FAILED and st.active_version == "1.0.0"
    assert "still failing after its rollout policy rolled 2.0.0 back" in st.blocker_detail
    assert len(fleet.activations[2]) == 1 and len(fleet.installs[2]) == 2
    assert fleet.m(0).convergence("m", "1.0.0", fleet.now).failed == 1
    fleet.m(2).health_reported("m", "1.0.0", None, fleet.now)      # fixed by hand
    st = fleet.m(2).model_state("m")
    assert st is not None and st.status is S.OPERATIONAL


def test_halt_stops_the_version_spreading_and_keeps_it_where_it_runs() -> None:
    fleet = InProcessFleet(4)
    fleet.publish_files("1.0.0", seed="a")
    fleet.issue(0, intent("1.0.0", wall=1))
    fleet.advance(20)
    fleet.split([[0, 1, 2], [3]])                      # node 3 cannot get 2.0.0 yet
    fleet.publish_files("2.0.0", seed="b")
    d = Intent.create(OPERATOR, IntentKind.DISTRIBUTE, "m", "2.0.0", HLC(5, 0, "op"),
                      policy=RolloutPolicy(0.0, OnDegraded.HALT))
    fleet.issue(0, d)
    fleet.advance(20)
    assert [_running(fleet, i) for i in range(3)] == ["2.0.0"] * 3
    fleet.m(1).health_reported("m", "2.0.0", "latency 3x", fleet.now)
    fleet.advance(5)
    fleet.heal()
    fleet.advance(30)
    assert [_running(fleet, i) for i in range(4)] == ["2.0.0", "2.0.0", "2.0.0", "1.0.0"]
    assert [x.version for x in fleet.installs[3]] == ["1.0.0"]    # never fetched 2.0.0
    for i in range(4):
        rep = fleet.m(i).convergence("m", "2.0.0", fleet.now)
        assert rep.state is RolloutState.HALTED and "halted" in rep.state_detail


def test_ignore_reports_degraded_nodes_and_does_nothing_more() -> None:
    fleet = InProcessFleet(3)
    _two_versions(fleet, RolloutPolicy(0.0, OnDegraded.IGNORE))
    fleet.advance(20)
    for i in range(3):
        fleet.m(i).health_reported("m", "2.0.0", "bad", fleet.now)
    fleet.advance(10)
    assert [_running(fleet, i) for i in range(3)] == ["2.0.0"] * 3
    assert not [i for i in fleet.m(0).ledger.intents() if i.kind is IntentKind.POLICY]
    rep = fleet.m(0).convergence("m", "2.0.0", fleet.now)
    assert rep.degraded == 3 and rep.converged == 3 and rep.state is RolloutState.COMPLETE


def test_both_halves_of_a_partition_act_and_agree_once_healed() -> None:
    fleet = InProcessFleet(6)
    d = _two_versions(fleet, RolloutPolicy(10.0, OnDegraded.ROLLBACK))
    fleet.advance(20)
    fleet.split([[0, 1, 2], [3, 4, 5]])
    fleet.advance(15)                      # the halves suspect each other; records stay
    fleet.m(1).health_reported("m", "2.0.0", "left is bad", fleet.now)
    fleet.m(4).health_reported("m", "2.0.0", "right is bad", fleet.now)
    fleet.advance(10)
    fleet.heal()
    fleet.advance(40)
    acts = {a.intent_id for i in range(6) for a in fleet.m(i).ledger.intents()
            if a.kind is IntentKind.POLICY}
    assert len(acts) >= 2                  # each half wrote its own
    assert [_running(fleet, i) for i in range(6)] == ["1.0.0"] * 6
    states = {(fleet.m(i).convergence("m", "2.0.0", fleet.now).state,
               fleet.m(i).convergence("m", "2.0.0", fleet.now).state_detail)
              for i in range(6)}
    assert len(states) == 1 and next(iter(states))[0] is RolloutState.ROLLED_BACK
    assert all(fleet.m(i).desired("m") == fleet.m(0).desired("m") for i in range(6))
    del d


def test_a_policy_intent_counts_only_for_a_distribute_whose_policy_asks_for_it() -> None:
    fleet = InProcessFleet(3)
    fleet.publish_files("1.0.0", seed="a")
    fleet.issue(0, intent("1.0.0", wall=1))
    fleet.advance(20)
    fleet.publish_files("2.0.0", seed="b")
    plain = intent("2.0.0", wall=5)                       # no policy
    fleet.issue(0, plain)
    fleet.advance(20)
    # a captured node writes a policy action for a distribute without a policy: ignored
    rogue = Intent.create(node_key(2), IntentKind.POLICY, "m", "2.0.0", HLC(6, 0, "x"),
                          cancels=plain.intent_id)
    fleet.issue(2, rogue)
    fleet.advance(10)
    assert [_running(fleet, i) for i in range(3)] == ["2.0.0"] * 3
    # and only a distribute carries a policy; a policy intent names one
    for bad in (lambda: Intent.create(OPERATOR, IntentKind.ROLLBACK, "m", "1.0.0",
                                      HLC(7, 0, "op"),
                                      policy=RolloutPolicy(5.0, OnDegraded.HALT)),
                lambda: Intent.create(node_key(1), IntentKind.POLICY, "m", "2.0.0",
                                      HLC(7, 0, "op")),
                lambda: RolloutPolicy(101.0, OnDegraded.HALT)):
        try:
            bad()
        except InvalidValue:
            continue
        raise AssertionError("accepted")


# ------------------------------------------------------------------ real daemons

HEALTHY = "import sys; sys.exit(0)\n"
FLAGGED = '''import os, sys
flag = os.path.join(os.environ["SHOAL_DATA_DIR"], "unhealthy")
if os.path.exists(flag):
    print("inference returns NaN", file=sys.stderr)
    sys.exit(1)
'''


def _package(where: Path, check: str, seed: int) -> Path:
    import random
    (where / "cpu").mkdir(parents=True)
    (where / "cpu" / "weights.bin").write_bytes(random.Random(seed).randbytes(200_000))
    (where / "cpu" / "check.py").write_text(check)
    (where / "shoal-model.toml").write_text('[[variant]]\nid = "cpu"\n'
                                            'health_check = "check.py"\n')
    return where


def _fleet_on_v1(tmp_path: Path) -> tuple[Any, tuple[str, ...]]:
    """Three daemons running det 1.0.0 (healthy check), 2.0.0 published (its check
    fails where a node's data directory holds ``unhealthy``)."""
    from agent._demo.fleet import FAST_GOSSIP, LocalFleet

    from ._helpers import shoal_cli, wait_for

    health = "[health]\nsettle_window = 1.0\nsettle_every = 0.3\ninterval = 0.5\n"
    f = LocalFleet(tmp_path / "fleet", 3, extra_config=FAST_GOSSIP + health)
    try:
        for i in range(3):
            f.start(i)
        # (the fleet meshed first, so the distribute below reaches all three at once)
        trio.run(f.wait_meshed, 30.0)
        cfg = ("--config", str(f.nodes[0].config_path))
        for pkg, version in ((_package(tmp_path / "v1", HEALTHY, 1), "1.0.0"),
                             (_package(tmp_path / "v2", FLAGGED, 2), "2.0.0")):
            r = shoal_cli("publish", str(pkg), "--model", "det", "--version", version, *cfg)
            assert r.returncode == 0, r.stderr
        assert shoal_cli("distribute", "det", "1.0.0", *cfg).returncode == 0

        async def all_on_1(c: Any) -> bool:
            return len(await c.nodes_with_version("det", "1.0.0")) == 3

        wait_for(f, 0, all_on_1, timeout=60)
    except BaseException:
        f.stop_all()          # (no daemon outlives a failed set-up)
        raise
    return f, cfg


def test_real_daemons_leave_a_degraded_version_alone_under_ignore(tmp_path: Path) -> None:
    from ._helpers import shoal_cli, wait_for

    f, cfg = _fleet_on_v1(tmp_path)
    try:
        for i in (1, 2):
            (f.nodes[i].data_dir / "unhealthy").write_text("x")
        r = shoal_cli("distribute", "det", "2.0.0", "--max-degraded", "10%",
                      "--on-degraded", "ignore", *cfg)
        assert r.returncode == 0, r.stderr

        async def two_degraded(c: Any) -> Any:
            s = await c.convergence_status("det", "2.0.0")
            return s if s.degraded == 2 and s.converged == 3 else None

        rep = wait_for(f, 0, two_degraded, timeout=60)
        assert rep.state.value == "complete", rep
        time.sleep(3.0)                       # several policy checks later: still there
        rep = wait_for(f, 1, lambda c: c.convergence_status("det", "2.0.0"), timeout=10)
        assert rep.state.value == "complete" and rep.converged == 3, rep
    finally:
        f.stop_all()


def test_real_daemons_halt_a_degraded_version_before_it_spreads(tmp_path: Path) -> None:
    """Node 2 is down while 2.0.0 goes out with `--on-degraded halt`; node 1 reports
    it degraded, the policy halts it; node 2 comes back and stays on 1.0.0."""
    from ._helpers import shoal_cli, wait_for

    f, cfg = _fleet_on_v1(tmp_path)
    try:
        f.kill(2, signal.SIGTERM)
        (f.nodes[1].data_dir / "unhealthy").write_text("x")
        r = shoal_cli("distribute", "det", "2.0.0", "--max-degraded", "0%",
                      "--on-degraded", "halt", *cfg)
        assert r.returncode == 0, r.stderr

        async def halted(c: Any) -> Any:
            s = await c.convergence_status("det", "2.0.0")
            return s if s.state.value == "halted" else None

        rep = wait_for(f, 0, halted, timeout=60)
        assert "halted by its rollout policy" in rep.state_detail
        f.start(2)
        import trio
        trio.run(f.wait_ready, 2, 30.0)

        async def node2_caught_up(c: Any) -> Any:
            s = await c.convergence_status("det", "2.0.0")
            return s if s.state.value == "halted" else None

        wait_for(f, 2, node2_caught_up, timeout=60)
        time.sleep(3.0)
        on_2 = wait_for(f, 0, lambda c: c.nodes_with_version("det", "2.0.0"), timeout=10)
        assert f.nodes[2].node_id not in on_2          # it never took 2.0.0
        on_1 = wait_for(f, 2, lambda c: c.nodes_with_version("det", "1.0.0"), timeout=10)
        assert f.nodes[2].node_id in on_1
    finally:
        f.stop_all()


def test_real_daemons_roll_a_degraded_version_back_by_policy(tmp_path: Path) -> None:
    """Three daemons; 2.0.0's health check fails on two of them; `shoal distribute
    --max-degraded 40% --on-degraded rollback` brings every node back to 1.0.0 on its
    own, and `shoal status` says why."""
    import json

    from agent._demo.fleet import FAST_GOSSIP, LocalFleet

    from ._helpers import shoal_cli, wait_for

    health = "[health]\nsettle_window = 1.0\nsettle_every = 0.3\ninterval = 0.5\n"
    f = LocalFleet(tmp_path / "fleet", 3, extra_config=FAST_GOSSIP + health)
    try:
        for i in range(3):
            f.start(i)
        # (the fleet meshed first, so the distribute below reaches all three at once)
        trio.run(f.wait_meshed, 30.0)
        cfg = ("--config", str(f.nodes[0].config_path))
        v1 = _package(tmp_path / "v1", HEALTHY, 1)
        v2 = _package(tmp_path / "v2", FLAGGED, 2)
        for pkg, version in ((v1, "1.0.0"), (v2, "2.0.0")):
            r = shoal_cli("publish", str(pkg), "--model", "det", "--version", version, *cfg)
            assert r.returncode == 0, r.stderr
        for i in (1, 2):
            (f.nodes[i].data_dir / "unhealthy").write_text("x")
        r = shoal_cli("distribute", "det", "1.0.0", *cfg)
        assert r.returncode == 0, r.stderr
        async def all_on_1(c: Any) -> bool:
            return len(await c.nodes_with_version("det", "1.0.0")) == 3

        async def rolled_back(c: Any) -> Any:
            s = await c.convergence_status("det", "2.0.0")
            return s if s.state.value == "rolled_back" else None

        wait_for(f, 0, all_on_1, timeout=60)
        r = shoal_cli("distribute", "det", "2.0.0", "--max-degraded", "40%",
                      "--on-degraded", "rollback", *cfg)
        assert r.returncode == 0, r.stderr
        rep = wait_for(f, 0, rolled_back, timeout=60)
        assert "rollout policy" in rep.state_detail
        wait_for(f, 0, all_on_1, timeout=60)
        out = json.loads(shoal_cli("status", "det", "2.0.0", "--json", *cfg).stdout)
        assert out["state"] == "rolled_back", out
        text = shoal_cli("status", "det", "2.0.0", *cfg).stdout
        assert "rolled back by its rollout policy (rollback over 40% degraded" in text, text
    finally:
        f.stop_all()
