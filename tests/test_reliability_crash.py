"""Crash chaos: SIGKILL random daemons at seeded random moments during rollouts.

A real fleet on loopback (node 0 publishes and issues the intents). While a
rollout runs, a seeded plan picks a node and a moment, SIGKILLs it, checks the
dead node's disk (every ``versions/<v>`` directory re-hashes against its
manifest; ``current`` names a complete version), and restarts it. Must hold:

* no version directory ever contains a file that fails verification, and
  ``current`` always names a complete version (checked after every kill);
* after a restart a node fetches no chunk it already held (``puts_duplicate``:
  what it refetched is at most what was in flight);
* the fleet converges on the rollout after the last fault.

Fast: one rollout, 3 kills. ``make soak`` (marker ``soak``): 3 rollouts (full,
delta, full) with 10 kills each, under two seeds.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package, mutate_package

from ._chaos import MiB, verify_installed

pytestmark = pytest.mark.slow

N = 3


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    slow = '[bandwidth]\ndownload = "6MiB"\n'
    f = LocalFleet(tmp_path / "fleet", N, per_node={i: slow for i in range(1, N)},
                   extra_config=FAST_GOSSIP + "[swarm]\nrequest_timeout = 2.0\n")
    with f.running():
        yield f


def _duplicates(f: LocalFleet, i: int) -> int:
    try:
        st = trio.run(f.call, i, lambda c: c.status())
    except Exception:   # not up yet: counted at its next life
        return 0
    return int(json.loads(st.statistics_json)["store"]["puts_duplicate"])


@pytest.mark.parametrize(("seed", "kills", "rollouts"), [
    (8, 3, 1),
    pytest.param(81, 10, 3, marks=pytest.mark.soak),
    pytest.param(82, 10, 3, marks=pytest.mark.soak),
])
def test_sigkill_during_rollouts(fleet: LocalFleet, tmp_path: Path, seed: int, kills: int,
                                 rollouts: int) -> None:
    rng = random.Random(seed)
    f = fleet
    pkg1 = make_package(tmp_path / "p1", 24 * MiB, seed=31)        # cpu variant 12 MiB
    pkg2 = mutate_package(pkg1, tmp_path / "p2", 0.05, seed=32)
    trio.run(f.call, 0, lambda c: c.publish(str(pkg1), "chaos", "1.0.0"))
    trio.run(f.call, 0, lambda c: c.publish(str(pkg2), "chaos", "1.1.0"))
    plan = [("1.0.0", None), ("1.1.0", "1.0.0"), ("1.0.0", None)][:rollouts]
    tried = held = 0
    duplicates = 0
    problems: list[str] = []
    for version, base in plan:
        if base is None:
            trio.run(f.call, 0, lambda c, v=version: c.distribute_model("chaos", v))
        else:
            trio.run(f.call, 0, lambda c, v=version, b=base: c.distribute_model_delta(
                "chaos", v, b))
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 2.5))
            victim = rng.randrange(N)
            duplicates += _duplicates(f, victim)
            f.kill(victim, signal.SIGKILL)
            tried += 1
            checks, links = verify_installed(f.nodes[victim].data_dir)
            bad = [f"node{victim} {c.version}: {p}" for c in checks for p in c.problems]
            bad += [f"node{victim}: {ln}" for ln in links]
            problems += bad
            held += not bad
            time.sleep(rng.uniform(0.0, 1.0))
            f.start(victim)
            trio.run(f.wait_ready, victim, 30.0)
        rep = trio.run(f.wait_converged, 0, "chaos", version, 180)
        assert rep.converged == N and rep.failed == 0
    duplicates += sum(_duplicates(f, i) for i in range(N))
    f.stop_all()
    for i in range(N):
        checks, links = verify_installed(f.nodes[i].data_dir)
        problems += [f"node{i} {c.version}: {p}" for c in checks for p in c.problems]
        problems += [f"node{i}: {ln}" for ln in links]
        cur = f.nodes[i].data_dir / "models" / "chaos" / "current"
        assert cur.resolve().name == plan[-1][0]
    print(f"\nreliability/crash: {tried} SIGKILLs during {len(plan)} rollouts, {held} held "
          f"on-disk invariants, chunks refetched though held: {duplicates}")
    assert problems == []
    assert duplicates == 0
    assert held == tried
