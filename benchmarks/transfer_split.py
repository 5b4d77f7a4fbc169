"""One transfer between two real daemons, with each daemon's user and system CPU.

``python -m benchmarks.transfer_split [GIB] [--config TOML]`` starts a 2-node
:class:`agent._demo.fleet.LocalFleet`, publishes a one-variant model of ``GIB`` GiB
(default 1) on node 0, distributes it and asks node 0 every 20 ms until node 1 is
operational. It prints the time from ``distribute`` to then and the CPU each daemon
spent in it (``/proc`` via psutil). ``--config`` appends TOML to both daemons'
configs, e.g. ``--config $'[swarm]\\nmax_requests_per_peer = 64\\n'``, so settings
can be compared run against run (``bench_daemon`` gives the figures of record).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet

from .bench_daemon import _package

__all__ = ["main"]


async def _run(fleet: LocalFleet, pkg: Path) -> None:
    await fleet.call(0, lambda c: c.publish(str(pkg), "bench", "1.0.0"))
    procs = [psutil.Process(p.pid) for p in fleet.procs if p is not None]
    before = [p.cpu_times() for p in procs]
    t = time.perf_counter()
    await fleet.call(0, lambda c: c.distribute_model("bench", "1.0.0"))
    with trio.fail_after(600):
        while True:
            rep = await fleet.call(0, lambda c: c.convergence_status("bench", "1.0.0"))
            if rep.is_success and rep.total_platforms == 2:
                break
            await trio.sleep(0.02)
    elapsed = time.perf_counter() - t
    after = [p.cpu_times() for p in procs]
    cpu = [(b.user - a.user, b.system - a.system) for a, b in zip(before, after, strict=True)]
    print(f"distribute -> operational {elapsed:.2f} s; CPU sender user {cpu[0][0]:.2f} "
          f"sys {cpu[0][1]:.2f} s, receiver user {cpu[1][0]:.2f} sys {cpu[1][1]:.2f} s; "
          f"load {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer_split")
    parser.add_argument("gib", nargs="?", type=float, default=1.0)
    parser.add_argument("--config", default="", help="TOML appended to both daemons' configs")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="shoal-transfer-split-"))
    try:
        pkg = _package(base / "pkg", int(args.gib * (1 << 30)), seed=1)
        fleet = LocalFleet(base / "fleet", 2, fleet_id=f"split-{os.getpid()}",
                           extra_config=FAST_GOSSIP + args.config)
        with fleet.running(60):
            trio.run(_run, fleet, pkg)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
