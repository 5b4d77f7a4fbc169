"""Issue 18's aim: a rollout over 1 Mbit/s radio links with 2 % loss, 100 ms latency and
scheduled partitions, against the peer-assisted bound over the periods its links were
up (``benchmarks/fleets/radio.toml``; ``sim/_bound.py``). The figure is the ratio
measured / bound of the file's one distribute, per seed (aim: <= 1.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim._fleetfile import load, simulate

FILE = Path(__file__).parent / "fleets" / "radio.toml"


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ff = load(FILE)
    for seed in ([1] if quick else [1, 2, 3]):
        result = simulate(ff, seed=seed)
        (r,) = result["rollouts"]
        rows.append({"name": f"radio rollout / bound over connected periods, seed {seed}",
                     "value": r["ratio"], "unit": "x",
                     "detail": f"{r['measured_s']} s against {r['bound_s']} s, "
                               f"{r['targets']} nodes, last {r['last_node']}; wall "
                               f"{result['wall_seconds']:.1f} s"})
    return rows
