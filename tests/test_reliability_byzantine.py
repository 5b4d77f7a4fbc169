"""A captured (byzantine) node in a LIVE fleet cannot harm the honest nodes (issue 25).

Four real daemons on loopback: nodes 0-2 honest (node 0 publishes and holds the operator
key), node 3 the test build ``python -m tests._byzantine_daemon`` of the real daemon,
whose outgoing gossip is rewritten (see that module): it forges vector claims for node 1
(``(0, 2**62)``, ``(0, 2**64-1)`` to node 1 itself), re-wraps every intent, manifest and
certificate it holds under fresh counters in bulk (2,000 a second, up to 3 MiB, to each
peer once a second in a delta and in a push: the pushes beyond the per-origin push rate
are refused), pushes two large valid manifests (4,000 chunk references each) it signs
with its publisher key, and calls itself ``node1`` (its config's ``node_name``).

Must hold, during the attack:

* a rollout to every node reaches every honest node, every honest node's files
  re-verified (the liar's own records come late or not at all: its entries are rated
  per origin in bytes together with its flood, so its state is not waited for);
* ``nodes=node1`` installs on node 1 only (names resolve through certificates);
* every honest ledger holds each content at most once per origin, and node 1's vector
  entry is its own (no forged claim moved it);
* each honest daemon's peak RSS (VmHWM) stays under RSS_BOUND_MIB, and the CPU it spends
  during the attack (utime + stime) under CPU_SHARE of a core and CPU_PER_MIB seconds per
  MiB of gossip it received (bounds from measurement, see below);

and once the root revokes node 3 (``shoal fleet revoke`` + ``shoal fleet announce`` at
node 0), no honest node lists it among its peers, nor again a second later (how soon is
printed, not asserted: a time on two shared cores is a figure, not a property; the
wait gives up after CUT_WAIT seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package
from agent._storage.keys import load_key
from agent._storage.persist import load_ledger, write_seed
from protocol._identity import FleetTrust
from protocol._intents import Scope
from protocol._ledger import content_key

from ._chaos import MiB, verify_installed
from ._helpers import peer_ids, shoal_cli

pytestmark = pytest.mark.slow

HONEST = (0, 1, 2)
VICTIM, LIAR = 1, 3
ATTACK_S = 12.0           # the attack runs at least this long before the bounds are read
# Measured (2 shared cores, 3 honest daemons + the byzantine one, ~12 s of attack with
# two rollouts; 6 runs): honest peak RSS 71-93 MiB; honest CPU 1.8-6.8 s over the window
# (at most 0.53 of a core), 0.14-0.19 s per MiB of gossip received (13-43 MiB each). The
# bounds leave room for a loaded machine but catch an unbounded ledger or a full
# re-verification of every re-wrap.
RSS_BOUND_MIB = 200
CPU_SHARE = 0.75          # of one core, over the attack window
CPU_PER_MIB = 0.5         # honest CPU seconds per MiB of gossip received
CUT_WAIT = 30.0           # seconds the test waits for the liar to leave every peer list


def peers(f: LocalFleet, i: int) -> set[str]:
    return peer_ids(f.socket(i))


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _start_liar(f: LocalFleet) -> None:
    node = f.nodes[LIAR]
    log = open(node.data_dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    f.procs[LIAR] = subprocess.Popen(
        [sys.executable, "-m", "tests._byzantine_daemon", "--config", str(node.config_path),
         "--victim", f.nodes[VICTIM].node_id], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    f = LocalFleet(tmp_path / "fleet", 4, extra_config=FAST_GOSSIP)
    cfg = f.nodes[LIAR].config_path            # the liar calls itself node1
    cfg.write_text(cfg.read_text().replace(f'node_name = "node{LIAR}"',
                                           f'node_name = "node{VICTIM}"'))
    try:
        yield f
    finally:
        f.stop_all()


def _pid(f: LocalFleet, i: int) -> int:
    p = f.procs[i]
    assert p is not None and p.poll() is None, f"node {i} died; see its daemon.log"
    return p.pid


async def _attack(f: LocalFleet, pkg1: Path, pkg2: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for i in HONEST:
        await f.wait_ready(i, timeout=30)
    await f.call(0, lambda c: c.publish(str(pkg1), "byz", "1.0.0"))
    _start_liar(f)
    await f.wait_meshed(timeout=30)
    t0 = time.monotonic()
    cpu0 = {i: cpu_s(_pid(f, i)) for i in HONEST}
    # a rollout to every node, under attack
    await f.call(0, lambda c: c.distribute_model("byz", "1.0.0"))
    honest = {f.nodes[i].node_id for i in HONEST}
    # (liveness bounds: 20-30 s on a quiet 2-core machine; the attack and four daemons
    # share those cores with whatever else runs, and at load 5-12 the rollout took
    # over 40 s, so the bounds leave room for that -- what must hold is that it ends)
    with trio.fail_after(90):
        while not honest <= set(await f.call(0, lambda c: c.nodes_with_version(
                "byz", "1.0.0"))):
            await trio.sleep(0.3)
    rep = await f.call(0, lambda c: c.convergence_status("byz", "1.0.0"))
    out["rollout_s"] = time.monotonic() - t0
    out["rollout"] = rep
    # nodes=node1: only the node the root named node1
    await f.call(0, lambda c: c.publish(str(pkg2), "byz", "1.1.0"))
    await f.call(0, lambda c: c.distribute_model("byz", "1.1.0", Scope.of_nodes("node1")))
    with trio.fail_after(60):
        while True:
            rep2 = await f.call(0, lambda c: c.convergence_status("byz", "1.1.0"))
            if rep2.converged >= 1 and rep2.is_success:
                break
            await trio.sleep(0.3)
    # let the attack run its full length before reading the bounds
    await trio.sleep(max(0.0, ATTACK_S - (time.monotonic() - t0)))
    out["scoped"] = [await f.call(i, lambda c: c.convergence_status("byz", "1.1.0"))
                     for i in HONEST]
    out["attack_s"] = time.monotonic() - t0
    out["cpu"] = {i: cpu_s(_pid(f, i)) - cpu0[i] for i in HONEST}
    out["rss"] = {i: peak_rss_mib(_pid(f, i)) for i in HONEST}
    out["liar_cpu"] = cpu_s(_pid(f, LIAR))
    out["stats"] = {i: json.loads((await f.call(i, lambda c: c.status())).statistics_json)
                    for i in HONEST}
    await trio.sleep(2.5)           # a ledger save (every 2 s) after the attack's bulk
    trust = FleetTrust(f.fleet_id, f.root.public_key)
    out["ledgers"] = {i: load_ledger(f.nodes[i].data_dir, trust)[0] for i in HONEST}
    return out


def test_a_byzantine_node_cannot_stop_the_fleet_and_is_cut_off(fleet: LocalFleet,
                                                               tmp_path: Path) -> None:
    f = fleet
    pkg1 = make_package(tmp_path / "pkg1", 2 * MiB, seed=25)
    pkg2 = make_package(tmp_path / "pkg2", 2 * MiB, seed=26)
    for i in HONEST:
        f.start(i)
    t_start = time.monotonic()
    out = trio.run(_attack, f, pkg1, pkg2)
    liar = f.nodes[LIAR].node_id
    victim = f.nodes[VICTIM].node_id

    # the rollout reached the three honest nodes under attack (the waiting above), and
    # they count themselves converged
    assert out["rollout"].converged >= 3, out["rollout"]  # type: ignore[attr-defined]
    # nodes=node1 targets node 1 only, at every honest node: not the liar calling itself so
    for rep in out["scoped"]:                                   # type: ignore[attr-defined]
        assert rep.total_platforms == 1 and rep.converged == 1, rep
    stats = out["stats"]
    for i in HONEST:                 # the attack really came: pushes over the rate refused
        g = stats[i]["gossip"]                                  # type: ignore[index]
        assert g["entries_received"] > 1000, g
        assert g["pushes_refused"] > 0, g
        # ... and `shoal status` shows the forged claims cut to what node 1 vouched for
        led = stats[i]["ledger"]                                # type: ignore[index]
        assert led["refused"].get("claim", 0) > 0, led
    # each content at most once per origin (the liar's thousands of re-wraps included);
    # node 1's vector entry is what node 1 vouched for, not the forged 2**62
    liar_held = {}
    for i in HONEST:
        ledger = out["ledgers"][i]                              # type: ignore[index]
        per = Counter((e.origin, content_key(e)) for e in ledger.entries()
                      if content_key(e) is not None)
        assert max(per.values()) == 1, per.most_common(3)
        liar_held[i] = sum(n for (o, _), n in per.items() if o == liar)
        assert 0 < liar_held[i] < 100, liar_held
        assert ledger.version_of(victim) < 1 << 50, ledger.version_of(victim)
    # the large manifests it signed arrived (and are held once, like everything else)
    assert any(m.model_id.startswith("junk-") for i in HONEST
               for m in out["ledgers"][i].manifests()), "no large manifest arrived"  # type: ignore[index]
    mib_in = {i: stats[i]["gossip"]["bytes_received"] / MiB for i in HONEST}  # type: ignore[index]
    for i in HONEST:
        assert out["rss"][i] < RSS_BOUND_MIB, out["rss"]        # type: ignore[index]
        cpu = out["cpu"][i]                                     # type: ignore[index]
        assert cpu < CPU_SHARE * out["attack_s"], (cpu, out["attack_s"])  # type: ignore[operator]
        assert cpu / mib_in[i] < CPU_PER_MIB, (cpu, mib_in)

    # revocation cuts the liar off everywhere
    key = load_key(f.nodes[LIAR].data_dir / "keys", "node")
    admin = tmp_path / "admin"
    write_seed(admin / "keys" / "root.key", f.root)
    rev = admin / "revoke.bin"
    r = shoal_cli("fleet", "revoke", "--data-dir", str(admin), "--fleet", f.fleet_id,
              "--key", key.public_key.hex(), "--out", str(rev), "--json")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    r = shoal_cli("fleet", "announce", str(rev), "--socket", f.socket(0), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    cut: dict[int, float] = {}
    while len(cut) < len(HONEST) and time.monotonic() - t0 < CUT_WAIT:
        for i in HONEST:
            if i not in cut and liar not in peers(f, i):
                cut[i] = time.monotonic() - t0
        time.sleep(0.1)
    assert sorted(cut) == list(HONEST), f"liar still a peer after {CUT_WAIT} s: {cut}"
    time.sleep(1.0)
    for i in HONEST:
        assert liar not in peers(f, i)

    f.stop_all()
    # every honest node: installed files re-verified; 1.1.0 on node 1 only
    for i in HONEST:
        checks, link_problems = verify_installed(f.nodes[i].data_dir)
        want = ["1.0.0", "1.1.0"] if i == VICTIM else ["1.0.0"]
        assert sorted(c.version for c in checks) == want, (i, checks)
        assert all(not c.problems for c in checks), checks
        assert link_problems == []
    total = time.monotonic() - t_start
    print(f"\nreliability/byzantine: rollout {out['rollout_s']:.1f} s under attack; attack "
          f"{out['attack_s']:.1f} s: honest peak RSS "
          f"{', '.join(f'{v:.0f}' for v in out['rss'].values())} MiB "  # type: ignore[attr-defined]
          f"(bound {RSS_BOUND_MIB}), CPU "
          f"{', '.join(f'{v:.1f}' for v in out['cpu'].values())} s "  # type: ignore[attr-defined]
          f"(bounds {CPU_SHARE} x attack, {CPU_PER_MIB} s/MiB); liar CPU "
          f"{out['liar_cpu']:.1f} s; entries received "
          f"{[stats[i]['gossip']['entries_received'] for i in HONEST]}, "  # type: ignore[index]
          f"pushes refused {[stats[i]['gossip']['pushes_refused'] for i in HONEST]}, "  # type: ignore[index]
          f"MiB received {[stats[i]['gossip']['bytes_received'] >> 20 for i in HONEST]}; "  # type: ignore[index]
          f"liar contents held {list(liar_held.values())}; cut off in "
          f"{', '.join(f'{v:.2f}' for v in cut.values())} s; "
          f"total {total:.1f} s")
