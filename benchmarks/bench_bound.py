"""Real daemons against the swarm's bound (issue 23): does the bounded overlay cost
rollout time?

``n`` real ``shoal daemon`` processes on loopback (``LocalFleet``: TCP + mDNS), each
capped by its own ``[bandwidth]`` at ``rate`` Mbit/s up and down, roll out one model
of ``size`` bytes published on node 0; the time is from ``distribute`` until node 0
sees every node operational (``benchmarks/bench_overlay.py``'s window). The bound is
Kumar and Ross's ``T_min = max(F/u_s, F/d_min, N F / (u_s + sum u))``, which with
every node capped alike is ``F / rate``. Two fleets side by side in one run: the
overlay's degree rule (degree 8, ``mesh_up_to = 0``: else a fleet of up to 16 nodes is
a full mesh by default) and a full mesh (``[overlay] degree`` = n - 1, what every
daemon did before the overlay).

quick: 8 daemons, 4 MiB at 16 Mbit/s; full: 16 daemons, 16 MiB at 16 Mbit/s. (At 8
daemons the default overlay *is* a full mesh: 7 peers < degree 8.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import trio

from agent._demo.fleet import LocalFleet
from benchmarks.bench_overlay import _package, _rollout

__all__ = ["run", "measure"]

MiB = 1024 * 1024


def measure(n: int, size: int, rate_mbit: float, degree: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"shoal-bench-bound-{n}-"))
    pkg = _package(base / "pkg", size)
    config = (f'[bandwidth]\nupload = "{rate_mbit:g}mbit"\ndownload = "{rate_mbit:g}mbit"\n'
              f"[overlay]\ndegree = {degree}\nmesh_up_to = 0\n")
    fleet = LocalFleet(base / "fleet", n, fleet_id=f"bench-bound-{os.getpid()}-{degree}",
                       extra_config=config)
    try:
        fleet.start_all()
        out = trio.run(_rollout, fleet, n, pkg, 600.0)
    finally:
        fleet.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    t_min = size * 8 / (rate_mbit * 1e6)
    out.update(t_min=t_min, ratio=t_min / out["rollout_s"], degree=degree)
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    n, size, rate = (8, 4 * MiB, 16.0) if quick else (16, 16 * MiB, 16.0)
    rows: list[dict[str, Any]] = []
    for label, degree in (("overlay (degree 8)", 8), ("full mesh", n - 1)):
        r = measure(n, size, rate, degree)
        rows.append({"name": f"{n} daemons, {size // MiB} MiB at {rate:g} Mbit/s, {label}: "
                             "T_min / T", "value": round(r["ratio"], 3), "unit": "",
                     "detail": f"T {r['rollout_s']:.2f} s, T_min {r['t_min']:.2f} s, "
                               f"CPU/node {r['cpu_per_node']:.2f} s, "
                               f"sessions max {r['sessions_most']}"})
    return rows


if __name__ == "__main__":
    import json
    import sys
    args = [int(a) for a in sys.argv[1:3]] or [16, 16]
    for degree in (8, args[0] - 1):
        print(json.dumps(measure(args[0], args[1] * MiB, 16.0, degree)))
