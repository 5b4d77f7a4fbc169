"""Gossip dissemination in the simulator: rounds to reach the fleet against
push-pull's log3 N + ln ln N, quiet-fleet bytes per node-round, and simulator speed
(simulated node-seconds per real second). Sizes: N = 50 (quick), 100 and 300.
N = 1000 and 10000 are left out: with the ledger engineer's 5-round heartbeats
the simulated cost grows ~N^2 (N = 300 took ~300 s); see docs/SIMULATOR.md."""

from __future__ import annotations

from typing import Any

from sim._scenarios import gossip


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sizes = [50] if quick else [100, 300]
    for n in sizes:
        r = gossip(nodes=n, seed=1, settle_rounds=15, quiet_rounds=5)
        detail = (f"bound log3N+lnlnN={r['bound']:.2f}, degree {r['degree']}, "
                  f"fanout {r['fanout']}, seed 1")
        rows.append({"name": f"gossip N={n} rounds_to_99", "value": _r(r["rounds_to_99"]),
                     "unit": "rounds", "detail": detail})
        rows.append({"name": f"gossip N={n} rounds_to_100", "value": _r(r["rounds_to_100"]),
                     "unit": "rounds", "detail": detail})
        rows.append({"name": f"gossip N={n} rounds_to_100 - bound",
                     "value": None if r["rounds_to_100"] is None
                     else round(r["rounds_to_100"] - r["bound"], 2),
                     "unit": "rounds", "detail": "aim <= 3"})
        rows.append({"name": f"gossip N={n} quiet bytes per node-round",
                     "value": round(r["quiet_bytes_per_node_round"], 1), "unit": "B",
                     "detail": "aim <= 2048 at N=1000; heartbeats on (default config)"})
        rows.append({"name": f"sim speed N={n}",
                     "value": round(r["node_seconds_per_second"] or 0.0),
                     "unit": "node-s/s",
                     "detail": f"{r['sim_seconds']:.0f} s simulated in "
                     f"{r['wall_seconds']:.1f} s"})
    floor = gossip(nodes=sizes[0], seed=1, settle_rounds=15, quiet_rounds=5,
                   heartbeat_every=10**9)
    rows.append({"name": f"gossip N={sizes[0]} quiet bytes per node-round, no heartbeats",
                 "value": round(floor["quiet_bytes_per_node_round"], 1), "unit": "B",
                 "detail": "summaries only: the floor of the push-pull design"})
    return rows
