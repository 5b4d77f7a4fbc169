"""Gossip dissemination in the simulator: rounds to reach the fleet against
push-pull's log3 N + ln ln N, quiet-fleet bytes per node-round, and simulator speed
(simulated node-seconds per real second, plus the CPU seconds of the run).

Sizes: N = 100 (quick, a few seconds) and N = 100, 300, 1000 (full; N = 1000 alone
costs ~140 s of CPU). A quiet fleet writes nothing to the ledger (liveness is
suspicion-based, see docs/LEDGER.md), so the quiet figure is the summary traffic of
the push-pull rounds plus keepalives: the aim is <= 2048 B per node-round at N = 1000.
The intent is pushed (``gossip.push``, the default): rounds_to_100 is then the flood's
time in rounds of 1 s; the same fleet with ``push=False`` gives the anti-entropy rounds
the bound is about (rows "anti-entropy only"), so each size runs twice.
"""

from __future__ import annotations

import time
from typing import Any

from sim._scenarios import gossip


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # (nodes, settle rounds, quiet rounds): the settle phase must let every node's
    # first record reach the whole fleet, or the "quiet" window still carries it.
    sizes = [(100, 30, 10)] if quick else [(100, 30, 10), (300, 30, 10), (1000, 30, 10)]
    for n, settle, quiet in sizes:
        cpu = time.process_time()
        r = gossip(nodes=n, seed=1, settle_rounds=settle, quiet_rounds=quiet)
        cpu = time.process_time() - cpu
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
        by_type = ", ".join(f"{k} {v}" for k, v in r["quiet_bytes_by_type"].items())
        rows.append({"name": f"gossip N={n} quiet bytes per node-round",
                     "value": round(r["quiet_bytes_per_node_round"], 1), "unit": "B",
                     "detail": f"aim <= 2048 at N=1000; {quiet} quiet rounds after "
                     f"{settle} settle rounds; no ledger writes when quiet"
                     + (f"; by type: {by_type}" if by_type else "")})
        alone = gossip(nodes=n, seed=1, settle_rounds=settle, quiet_rounds=quiet, push=False)
        rows.append({"name": f"gossip N={n} rounds_to_100, anti-entropy only",
                     "value": _r(alone["rounds_to_100"]), "unit": "rounds",
                     "detail": detail + f"; gossip.push off (with push: "
                     f"{_r(r['rounds_to_100'])})"})
        rows.append({"name": f"sim speed N={n}",
                     "value": round(r["node_seconds_per_second"] or 0.0),
                     "unit": "node-s/s",
                     "detail": f"{r['sim_seconds']:.0f} s simulated in "
                     f"{r['wall_seconds']:.1f} s wall, {cpu:.1f} s CPU"})
    return rows
