"""Swarm distribution in the simulator, side by side in one run: measured time
against Kumar & Ross's T_min and against a hub that serves every node itself;
duplicate fraction; delta bytes fetched against bytes changed."""

from __future__ import annotations

from typing import Any

from sim._scenarios import MiB, delta, swarm


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cases = ([(20, 32 * MiB, False)] if quick else
             [(100, 1024 * MiB, False), (100, 1024 * MiB, True),
              (1000, 64 * MiB, False), (1000, 64 * MiB, True)])
    for n, size, hetero in cases:
        r = swarm(nodes=n, size=size, up=100.0, down=100.0, seed=1, hetero=hetero,
                  hub=True)
        tag = f"swarm N={n} {size // MiB} MiB {'hetero' if hetero else 'homog'}"
        rows.append({"name": f"{tag} T_min/T_measured",
                     "value": None if r["ratio"] is None else round(r["ratio"], 3),
                     "unit": "ratio",
                     "detail": f"T_min {r['t_min']:.1f} s, measured {r['t_measured']} s "
                               f"(of which gossip start-up {r['t_startup']} s)"})
        rows.append({"name": f"{tag} T_hub/T_measured",
                     "value": r.get("hub_speedup") and round(r["hub_speedup"], 2),
                     "unit": "x", "detail": f"hub run {r.get('t_hub')} s"})
        rows.append({"name": f"{tag} duplicate fraction",
                     "value": round(r["duplicate_fraction"], 4), "unit": "ratio",
                     "detail": "aim <= 0.01"})
    d = delta(nodes=5 if quick else 20, size=32 * MiB if quick else 256 * MiB, changed=0.1,
              seed=1)
    rows.append({"name": "delta 10% changed: fetched/changed",
                 "value": None if d["ratio"] is None else round(d["ratio"], 3),
                 "unit": "ratio",
                 "detail": f"{d['bytes_fetched']:.0f} B fetched per node, "
                 f"{d['bytes_changed']} B changed; aim <= 1.1"})
    return rows
