"""Swarm distribution in the simulator, side by side in one run: measured time
against Kumar & Ross's T_min and against a hub that serves every node itself;
duplicate fraction; copies of the model the seeder sent; delta bytes fetched
against bytes changed.

Full mode (docs/SWARM.md has the figures): N=100 with a 1 GiB model (1 MiB chunks),
homogeneous and heterogeneous; N=1000 with a 256 MiB model in 1 MiB chunks, homogeneous
and heterogeneous, and with 1 GiB homogeneous (a long run: per-row CPU is in
docs/PERFORMANCE.md); the hub is
*simulated* where its run fits (N=20, N=100 / 64 MiB) and
taken from its formula ``(N-1) x F / u_seeder`` elsewhere (a hub run at N=100 / 1 GiB
is 8,500 simulated seconds) — each row's detail says which.
"""

from __future__ import annotations

from typing import Any

from sim._scenarios import MiB, delta, swarm

# (nodes, size, chunk size, hetero, simulate the hub)
QUICK = [(20, 32 * MiB, MiB, False, True)]
FULL = [(100, 1024 * MiB, MiB, False, False), (100, 1024 * MiB, MiB, True, False),
        (100, 64 * MiB, MiB, False, True),
        (1000, 256 * MiB, MiB, False, False), (1000, 256 * MiB, MiB, True, False),
        (1000, 1024 * MiB, MiB, False, False)]


def _s(seconds: float | None) -> str:
    return "incomplete" if seconds is None else f"{seconds:.2f} s"


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, size, chunk, hetero, hub in (QUICK if quick else FULL):
        r = swarm(nodes=n, size=size, chunk_size=chunk, up=100.0, down=100.0, seed=1,
                  hetero=hetero, hub=hub)
        tag = (f"swarm N={n} {size // MiB} MiB/{chunk // MiB} MiB chunks "
               f"{'hetero' if hetero else 'homog'}")
        rows.append({"name": f"{tag} T_min/T_measured",
                     "value": None if r["ratio"] is None else round(r["ratio"], 3),
                     "unit": "ratio",
                     "detail": f"T_min {r['t_min']:.1f} s, measured {_s(r['t_measured'])} "
                               f"(of which gossip start-up {_s(r['t_startup'])}); "
                               f"seeder sent {r['seeder_copies']:.2f} copies; "
                               f"{r['wall_seconds']:.0f} s of wall time"})
        if hub:
            rows.append({"name": f"{tag} T_hub/T_measured",
                         "value": r.get("hub_speedup") and round(r["hub_speedup"], 2),
                         "unit": "x", "detail": f"hub simulated: {_s(r.get('t_hub'))}"})
        else:
            speedup = (r["t_hub_formula"] / r["t_measured"]) if r["t_measured"] else None
            rows.append({"name": f"{tag} T_hub/T_measured",
                         "value": speedup and round(speedup, 2), "unit": "x",
                         "detail": f"hub from its formula (N-1) F / u_seeder = "
                                   f"{r['t_hub_formula']:.0f} s (not simulated)"})
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
