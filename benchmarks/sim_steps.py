"""Run the gossip scenario's fleet in steps of virtual time and print, after each step,
the wall and CPU seconds so far, the peak RSS, simulated node-seconds per wall-second and
per CPU-second, and the mean records held per ledger (sampled over 50 nodes): where the
cost of a large fleet goes before a whole run could finish (docs/SIMULATOR.md, "Simulator
cost"). Not part of ``make bench``.

    python -m benchmarks.sim_steps NODES STEP END [MEM_GB]
    python -m benchmarks.sim_steps 10000 0.25 2 10
"""

from __future__ import annotations

import resource
import sys
import time

from protocol import Config, GossipConfig
from sim._fleet import Fleet, NodeSpec
from sim._network import LinkProfile
from sim._scenarios import mbit


def main(argv: list[str]) -> int:
    n, step, end = int(argv[0]), float(argv[1]), float(argv[2])
    cap = int(float(argv[3]) * (1 << 30)) if len(argv) > 3 else 10 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    specs = [NodeSpec(up=mbit(100), down=mbit(100)) for _ in range(n)]
    config = Config(fleet_id="sim", gossip=GossipConfig(interval=1.0, fanout=3, push=True))
    fleet = Fleet(specs, seed=1, config=config, topology="overlay", degree=8,
                  profile=LinkProfile(latency=0.02, jitter=0.01))   # as sim gossip
    sample = range(0, n, max(1, n // 50))
    t = 0.0
    while t < end:
        t += step
        fleet.run(until=t)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        records = sum(len(fleet.nodes[i].machine.ledger.records()) for i in sample) / len(sample)
        print(f"t={t:.2f} wall {wall:.1f} s cpu {cpu:.1f} s rss {rss:.0f} MB "
              f"node-s/wall-s {n * t / wall:.0f} node-s/cpu-s {n * t / cpu:.0f} "
              f"mean records/ledger {records:.0f} events {fleet.loop.statistics().events_run}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
