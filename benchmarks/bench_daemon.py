"""Real daemons on loopback: transfer rate against raw TCP, receiver memory, idle CPU.

Every figure comes from real ``shoal daemon`` processes started by
:class:`agent._demo.fleet.LocalFleet` (TCP + mDNS on 127.0.0.1), driven through
their control sockets, in one run:

(a) *agent-to-agent transfer*: a single-variant model of ``size`` bytes is
    published on node 0 and distributed to node 1; the clock runs from the
    ``distribute`` call until node 0's convergence view reports node 1
    ``operational`` (so it includes gossip of the intent, the swarm transfer,
    hashing, the receiver's chunk store writes and the install). The raw TCP
    copy of the same number of bytes between two processes
    (:func:`benchmarks.bench_transport._two_processes`) runs in the same
    benchmark, and the ratio is reported.
(b) *peak RSS of the receiving daemon* (psutil, polled every 50 ms) during a
    transfer of a small and of a large model, each in a fresh 2-node fleet.
(c) *idle CPU*: a fleet of N daemons with the default gossip settings that has
    converged on a small model; ``cpu_times`` of every daemon over a quiet
    window, as % of one core.

quick=True: 128/256 MiB, a fleet of 4 and a 5 s window; full: 1/4 GiB, 10, 20 s.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from agent._demo.fleet import LocalFleet
from protocol import OverlayConfig

from .bench_transport import _two_processes

__all__ = ["run"]

MiB = 1024 * 1024
_BLOCK = 16 * MiB


def _package(root: Path, size: int, seed: int) -> Path:
    """A one-variant package (``cpu``) whose model file is ``size`` random bytes."""
    root.mkdir(parents=True)
    (root / "shoal-model.toml").write_text('[[variant]]\nid = "cpu"\nprecision = "fp32"\n')
    (root / "cpu").mkdir()
    rng = random.Random(seed)   # random bytes, in blocks: never the whole file in memory
    with open(root / "cpu" / "model.bin", "wb") as f:
        left = size
        while left > 0:
            n = min(left, _BLOCK)
            f.write(rng.randbytes(n))
            left -= n
    return root


class _Peak:
    """Peak RSS of one process, polled in the background."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.start = self.peak

    async def poll(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            await trio.sleep(0.05)


async def _transfer(fleet: LocalFleet, pkg: Path, model: str, timeout: float
                    ) -> tuple[float, float, int, int]:
    """Publish on 0, distribute, wait until 1 is operational: (seconds, publish s, peak, start)."""
    t = time.perf_counter()
    await fleet.call(0, lambda c: c.publish(str(pkg), model, "1.0.0"))
    publish_s = time.perf_counter() - t
    proc = fleet.procs[1]
    assert proc is not None
    peak = _Peak(proc.pid)
    async with trio.open_nursery() as n:
        n.start_soon(peak.poll)
        t = time.perf_counter()
        await fleet.call(0, lambda c: c.distribute_model(model, "1.0.0"))
        await fleet.wait_converged(0, model, "1.0.0", timeout)
        elapsed = time.perf_counter() - t
        n.cancel_scope.cancel()
    return elapsed, publish_s, peak.peak, peak.start


def _run_transfer(base: Path, size: int, timeout: float) -> tuple[float, float, int, int]:
    pkg = _package(base / "pkg", size, seed=size)
    # a fleet id of its own: other local fleets on the loopback mDNS stay out of it
    fleet = LocalFleet(base / "fleet", 2, fleet_id=f"bench-xfer-{os.getpid()}")
    try:
        with fleet.running(60):
            return trio.run(_transfer, fleet, pkg, "bench", timeout)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _idle(fleet: LocalFleet, n: int, pkg: Path, window: float
                ) -> tuple[list[float], float]:
    for i in range(n):
        await fleet.wait_ready(i, timeout=60)
    t = time.perf_counter()
    for i in range(n):   # every peer, or the overlay's degree of them in a larger fleet
        await fleet.wait_peers(i, min(n - 1, OverlayConfig().degree), timeout=120)
    await fleet.call(0, lambda c: c.publish(str(pkg), "idle", "1.0.0"))
    await fleet.call(0, lambda c: c.distribute_model("idle", "1.0.0"))
    await fleet.wait_converged(0, "idle", "1.0.0", 120)
    settle = time.perf_counter() - t
    await trio.sleep(3.0)   # let the last progress writes and saves go out
    procs = [psutil.Process(p.pid) for p in fleet.procs if p is not None]
    before = [p.cpu_times() for p in procs]
    t0 = time.perf_counter()
    await trio.sleep(window)
    wall = time.perf_counter() - t0
    after = [p.cpu_times() for p in procs]
    pct = [100.0 * ((a.user + a.system) - (b.user + b.system)) / wall
           for a, b in zip(after, before, strict=True)]
    return pct, settle


def _run_idle(base: Path, n: int, window: float) -> tuple[list[float], float]:
    pkg = _package(base / "pkg", 2 * MiB, seed=7)
    # default gossip settings (interval 1 s): what an idle production fleet runs
    fleet = LocalFleet(base / "fleet", n, fleet_id=f"bench-idle-{os.getpid()}",
                       extra_config="")
    try:
        fleet.start_all()
        return trio.run(_idle, fleet, n, pkg, window)
    finally:
        fleet.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def _progress(text: str) -> None:
    """Partial figures on stderr, so a long full run that is stopped leaves them."""
    print(f"  [bench_daemon] {text}", file=sys.stderr, flush=True)


def run(quick: bool) -> list[dict[str, Any]]:
    small, large = (128 * MiB, 256 * MiB) if quick else (1024 * MiB, 4096 * MiB)
    n_idle, window = (4, 5.0) if quick else (10, 20.0)
    timeout = 120.0 if quick else 2400.0
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-daemon-"))
    try:
        raw = _two_processes(small, secure=False)
        raw_disk = _two_processes(small, secure=False, to_file=str(tmp / "raw-copy.bin"))
        (tmp / "raw-copy.bin").unlink()
        xfer, pub_s, peak_small, start_small = _run_transfer(tmp / "a", small, timeout)
        _progress(f"raw TCP {small / 1e6 / raw:.1f} MB/s; agent-to-agent {xfer:.2f} s "
                  f"({small / 1e6 / xfer:.1f} MB/s); receiver peak RSS "
                  f"{peak_small / MiB:.1f} MiB")
        large_s, _, peak_large, start_large = _run_transfer(tmp / "b", large, timeout)
        _progress(f"{large // MiB} MiB: {large_s:.1f} s; receiver peak RSS "
                  f"{peak_large / MiB:.1f} MiB")
        idle, settle = _run_idle(tmp / "c", n_idle, window)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb_small = small / 1e6
    label_s, label_l = f"{small // MiB} MiB", f"{large // MiB} MiB"
    return [
        {"name": f"daemon: agent-to-agent transfer {label_s}", "value": round(mb_small / xfer, 1),
         "unit": "MB/s", "detail": f"{xfer:.2f} s from distribute to operational "
                                   f"(publish took {pub_s:.2f} s), loopback, 2 daemons"},
        {"name": f"daemon: raw TCP copy {label_s}", "value": round(mb_small / raw, 1),
         "unit": "MB/s", "detail": "two processes, same run, same bytes"},
        {"name": "daemon: agent-to-agent / raw TCP", "value": round(raw / xfer, 3),
         "unit": "ratio", "detail": "includes gossip, store writes and install"},
        {"name": f"daemon: raw TCP copy into a file + fsync {label_s}",
         "value": round(mb_small / raw_disk, 1), "unit": "MB/s",
         "detail": "two processes, same run, same bytes; the receiver writes them to one "
                   "file and fsyncs it (the disk a daemon must also write to)"},
        {"name": "daemon: agent-to-agent / raw TCP into a file", "value":
            round(raw_disk / xfer, 3), "unit": "ratio",
         "detail": "the daemon also verifies, encrypts, stores each chunk and installs"},
        {"name": f"daemon: agent-to-agent transfer {label_l}",
         "value": round(large / 1e6 / large_s, 1), "unit": "MB/s",
         "detail": f"{large_s:.2f} s from distribute to operational, fresh 2-daemon fleet"},
        {"name": f"daemon: receiver peak RSS, {label_s} model", "value":
            round(peak_small / MiB, 1), "unit": "MiB",
         "detail": f"RSS before the transfer {start_small / MiB:.1f} MiB"},
        {"name": f"daemon: receiver peak RSS, {label_l} model", "value":
            round(peak_large / MiB, 1), "unit": "MiB",
         "detail": f"RSS before the transfer {start_large / MiB:.1f} MiB"},
        {"name": "daemon: receiver peak RSS large / small", "value":
            round(peak_large / peak_small, 3), "unit": "ratio",
         "detail": f"model {large // small}x larger; 1.0 = memory does not grow with size"},
        {"name": f"daemon: idle CPU, fleet of {n_idle} (mean)",
         "value": round(sum(idle) / len(idle), 2), "unit": "% of one core",
         "detail": f"cpu_times over {window:g} s after convergence (reached in "
                   f"{settle:.1f} s), default gossip interval; max {max(idle):.2f}%"},
    ]

