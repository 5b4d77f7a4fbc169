"""The simulator at scale (issue 18): a 10,000-node gossip run and a 1,000-node, 1 GiB
swarm, each against the aim of <= 10 minutes of wall time on the project's 2-core
machine, with the CPU time, the peak RSS and the simulated node-seconds per wall-second.

Each scenario runs as its own ``python -m sim ... --json`` process, so its CPU time and
peak RSS are that process's own (``os.wait4``), and it runs under a memory cap
(``RLIMIT_AS``, default 12 GiB, ``SHOAL_BENCH_SIM_MEM_GB``) and a wall-clock limit
(default 15 minutes, ``SHOAL_BENCH_SIM_LIMIT_S``): a run that hits either is reported as
not finished (value None, with why), not left to take the shared machine down.

Sizes: quick, gossip N=300 and a swarm of N=50, 16 MiB (seconds); full, the two scale
scenarios themselves (``python -m sim gossip --nodes 10000 --seed 1 --json`` and
``python -m sim swarm --nodes 1000 --size 1G --chunk-size 1M --seed 1 --json --no-hub``).
docs/SIMULATOR.md ("Simulator cost") says why the 10,000-node gossip does not fit this
machine today: every node's ledger holds every node's record, so its memory and CPU
grow with N squared.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOSSIP_FULL = ["gossip", "--nodes", "10000", "--seed", "1"]
SWARM_FULL = ["swarm", "--nodes", "1000", "--size", "1G", "--chunk-size", "1M", "--seed", "1",
              "--no-hub"]
GOSSIP_QUICK = ["gossip", "--nodes", "300", "--seed", "1"]
SWARM_QUICK = ["swarm", "--nodes", "50", "--size", "16M", "--seed", "1", "--no-hub"]


def measure(args: list[str], *, limit_s: float | None = None,
            mem_bytes: int | None = None) -> dict[str, Any]:
    """Run ``python -m sim ARGS --json`` in a child process; its result with the child's
    ``wall_s``, ``cpu_s`` (user + system), ``peak_rss_mb`` and ``node_seconds_per_second``
    (nodes x simulated seconds / wall seconds), or ``error`` when it did not finish."""
    def cap() -> None:   # in the child, before exec
        if mem_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        start = time.perf_counter()
        with log.open("wb") as err:
            child = subprocess.Popen(
                [sys.executable, "-m", "sim", *args, "--json", "--out", str(out)],
                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=cap)
        timed_out = False
        # reaped here with os.wait4, not Popen.wait: its resource usage is the child's own
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if limit_s is not None and time.perf_counter() - start > limit_s:
                child.kill()
                timed_out = True
                _, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.2)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        row: dict[str, Any] = {"args": args, "wall_s": wall,
                               "cpu_s": usage.ru_utime + usage.ru_stime,
                               "peak_rss_mb": usage.ru_maxrss / 1024}   # KiB on Linux
        if timed_out:
            row["error"] = f"over the {limit_s:.0f} s limit"
            return row
        if not out.exists():
            lines = log.read_text(errors="replace").strip().splitlines()
            row["error"] = (lines[-1] if lines else f"exit status {child.returncode}")[:200]
            return row
        result = json.loads(out.read_text())
    row["result"] = result
    nodes = result.get("nodes", 0)
    sim_s = result.get("sim_seconds")
    row["sim_seconds"] = sim_s
    row["node_seconds_per_second"] = (nodes * sim_s / wall) if sim_s and wall > 0 else None
    return row


def run(quick: bool) -> list[dict[str, Any]]:
    limit = float(os.environ.get("SHOAL_BENCH_SIM_LIMIT_S", "900"))
    mem = int(float(os.environ.get("SHOAL_BENCH_SIM_MEM_GB", "12")) * (1 << 30))
    rows: list[dict[str, Any]] = []
    scenarios = [("gossip", GOSSIP_QUICK if quick else GOSSIP_FULL),
                 ("swarm", SWARM_QUICK if quick else SWARM_FULL)]
    for label, args in scenarios:
        m = measure(args, limit_s=limit, mem_bytes=mem)
        name = f"sim {label} " + " ".join(args[1:])
        cpu = m.get("cpu_s")
        rss = m.get("peak_rss_mb")
        aim = "quick size (the aim, <= 600 s wall, is the full run's)" if quick else \
            "aim <= 600 s wall"
        detail = f"{aim}; CPU {cpu:.0f} s" if cpu is not None else aim
        if rss is not None:
            detail += f", peak RSS {rss:.0f} MB"
        if "error" in m:
            detail += f"; did not finish: {m['error']}"
        rows.append({"name": f"{name}: wall", "value": None if "error" in m
                     else round(m["wall_s"], 1), "unit": "s", "detail": detail})
        rows.append({"name": f"{name}: CPU", "value": None if cpu is None else round(cpu, 1),
                     "unit": "s"})
        rows.append({"name": f"{name}: peak RSS", "value": None if rss is None
                     else round(rss), "unit": "MB"})
        speed = m.get("node_seconds_per_second")
        rows.append({"name": f"{name}: node-seconds per wall-second",
                     "value": None if speed is None else round(speed),
                     "unit": "node-s/s",
                     "detail": "" if speed is None else
                     f"{m['sim_seconds']:.1f} s simulated"})
    return rows
