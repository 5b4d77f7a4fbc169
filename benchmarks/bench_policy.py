"""Rollout policy in the simulator (issue 24): the time from the first degraded report
to the whole fleet back on the previous version, at N = 100 (quick) and N = 1000.

Every node runs 2.0.0 (a distribute with ``--max-degraded 10% --on-degraded
rollback``) and holds 1.0.0 on disk; at t0, 20 % of the nodes report 2.0.0 degraded
at once (``NodeMachine.health_reported``, what a failing health check does). The
figure is the virtual time until every node runs 1.0.0 again: the policy check (once
a second), the policy intent's flood, and an activation from disk (no transfer).
The simulator's links: 100 Mbit/s, 10 ms; overlay degree 8.
"""

from __future__ import annotations

import time
from typing import Any

from protocol import HLC, Intent, IntentKind, OnDegraded, RolloutPolicy, Scope
from sim._content import build_model
from sim._fleet import Fleet
from sim._network import LinkProfile
from sim._scenarios import _overlay_for, _specs

MiB = 1 << 20


def policy_rollback(nodes: int, seed: int = 1, degraded: float = 0.2) -> dict[str, Any]:
    wall = time.perf_counter()
    specs = _specs(nodes, 100.0, 100.0, False, seed)
    topology, degree = _overlay_for(nodes, None)
    fleet = Fleet(specs, seed=seed, topology=topology, degree=degree,
                  profile=LinkProfile(latency=0.01))
    v1 = build_model(fleet.publisher, "m", "1.0.0", 2 * MiB, 1 * MiB)
    v2 = build_model(fleet.publisher, "m", "2.0.0", 2 * MiB, 1 * MiB)
    everyone = list(range(nodes))
    for v in (v1, v2):
        fleet.add_content(v, everyone)
        fleet.install(v, everyone)          # v2 listed last: the active one
    fleet.run(until=2.0)
    fleet.publish(0, v1)
    fleet.publish(0, v2)
    op = fleet.operator
    fleet.issue(0, Intent.create(op, IntentKind.DISTRIBUTE, "m", "1.0.0",
                                 HLC(1000, 0, "op"), scope=Scope.all()))
    fleet.issue(0, Intent.create(op, IntentKind.DISTRIBUTE, "m", "2.0.0",
                                 HLC(2000, 0, "op"), scope=Scope.all(),
                                 policy=RolloutPolicy(10.0, OnDegraded.ROLLBACK)))

    def on(version: str) -> int:
        n = 0
        for node in fleet.nodes:
            st = node.machine.model_state("m") if node.machine is not None else None
            n += st is not None and st.active_version == version
        return n

    fleet.run(until=fleet.loop.now + 60.0, stop_when=lambda: on("2.0.0") == nodes)
    settled = on("2.0.0") == nodes
    t0 = fleet.loop.now + 5.0
    fleet.run(until=t0)
    bad = everyone[:: max(1, round(1 / degraded))][: max(1, int(nodes * degraded))]
    for i in bad:
        fleet.nodes[i].machine.health_reported("m", "2.0.0", "simulated failure",
                                               fleet.loop.now)
        fleet._pump(fleet.nodes[i])
    fleet.run(until=t0 + 300.0, stop_when=lambda: on("1.0.0") == nodes)
    back = on("1.0.0")
    return {"nodes": nodes, "degraded_nodes": len(bad), "settled_on_v2": settled,
            "back_on_v1": back, "seconds_to_all_back": fleet.loop.now - t0
            if back == nodes else None, "wall_seconds": time.perf_counter() - wall}


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in ([100] if quick else [100, 1000]):
        r = policy_rollback(n)
        rows.append({"name": f"policy rollback N={n}: first degraded report -> all on "
                             "the previous version", "value": r["seconds_to_all_back"],
                     "unit": "s (virtual)",
                     "detail": f"{r['degraded_nodes']} of {n} degraded at once, policy "
                               f"10% rollback; back {r['back_on_v1']}/{n}; wall "
                               f"{r['wall_seconds']:.1f} s"})
    return rows


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
