"""Real daemons on loopback: what one rollout costs each node as the fleet grows.

Fleets of ``small`` and ``large`` real ``shoal daemon`` processes
(:class:`agent._demo.fleet.LocalFleet`: TCP + mDNS on 127.0.0.1, default settings,
so the default overlay degree) each roll out one model of ``size`` bytes published on
node 0. Once every daemon has found all the others (mDNS) and settled, each daemon's
``statistics.runtime.messages_in`` and its CPU time (``psutil``, user + system) are
read before the ``distribute`` and again once node 0 sees every node operational; the
publish itself (node 0 chunking the model) is outside the window. Reported per fleet:
messages received per node (and how many of them were gossip: ``statistics.gossip``) and
CPU seconds per node (means), the fleet's CPU, the
rollout's wall time, the most peer sessions any daemon held at a poll during it
(``status().peers``: every open session, one being declined included), the mean of
those polls, the sessions at the window's start and end, and the dials per node in
the window; the messages per node by type in the window (``statistics.runtime
.messages_by_type``); and, from two quiet windows of ``QUIET`` seconds just before the
``distribute`` and just after the window, CPU and messages per node per second (what a
node pays per second whatever it transfers: anything of that kind is paid longer when a
larger fleet's rollout takes longer). Then the large/small ratios of messages and CPU per
node.

Each fleet is measured twice in one sequence: uncapped, then with every daemon's own
``[bandwidth]`` capped at ``cap`` Mbit/s up and down (``CAP``), so that both fleets
are link-bound — what a fleet of separate boxes sees — rather than bound by the two
cores they share here, where 32 daemons take 3-5x as long as 8 and so pay 3-5x the
per-second costs (gossip rounds, ``Haves`` windows). Each row carries the rollout's
wall time and the load average at the window's start and end; the capped ratio is
the one to judge the aim on only when the two capped rollout times agree within
~25 % (``time_ratio`` in the rows says how far they are apart).

quick=True: 4 and 8 daemons, 4 MiB; full: 8 and 32 daemons, 16 MiB (issue 23's aim:
per-node messages and CPU grow by at most 1.3x from 8 to 32).

Also runnable as a script (``python benchmarks/bench_overlay.py [SMALL LARGE [MiB]]
[--cap MBIT]``, ``--cap 0`` for the uncapped pair alone), which prints the rows as
JSON: run from another checkout's root (with that checkout first on ``PYTHONPATH``) it
measures that checkout's daemons the same way.
"""

from __future__ import annotations

import json
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

__all__ = ["run", "measure"]

MiB = 1024 * 1024
QUIET = 5.0     # seconds of each quiet window, before and after the rollout
CAP = 8.0       # Mbit/s up and down per daemon for the capped pair: 16 MiB takes 16.8 s
                # at T_min, longer than 32 uncapped daemons need on two shared cores


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _package(root: Path, size: int) -> Path:
    root.mkdir(parents=True)
    (root / "shoal-model.toml").write_text('[[variant]]\nid = "cpu"\nprecision = "fp32"\n')
    (root / "cpu").mkdir()
    (root / "cpu" / "model.bin").write_bytes(random.Random(size).randbytes(size))
    return root


def _cpu(procs: list[psutil.Process]) -> list[float]:
    out = []
    for p in procs:
        t = p.cpu_times()
        out.append(t.user + t.system)
    return out


async def _rollout(fleet: LocalFleet, n: int, pkg: Path, timeout: float) -> dict[str, Any]:
    for i in range(n):
        await fleet.wait_ready(i, timeout=120)
    t = time.perf_counter()

    async def overlay(i: int) -> dict[str, int]:
        st = json.loads((await fleet.call(i, lambda c: c.status())).statistics_json)
        return dict(st["overlay"])

    with trio.fail_after(timeout):       # mDNS: every daemon has found every other one
        while True:                      # and holds sessions (degree - 1 at least: a node
            found = [len((await fleet.call(i, lambda c: c.peers())).peers) for i in range(n)]
            known = [(await overlay(i))["known"] for i in range(n)]   # may wait one short)
            if min(known) >= n - 1 and min(found) >= min(n - 1, 7):
                break
            await trio.sleep(0.5)
    await trio.sleep(5.0)                # let the overlay and the first gossip settle
    settle = time.perf_counter() - t
    await fleet.call(0, lambda c: c.publish(str(pkg), "wide", "1.0.0"))
    await trio.sleep(1.0)
    procs = [psutil.Process(p.pid) for p in fleet.procs if p is not None]

    types: list[dict[str, int]] = []   # the last read's messages by type, per daemon

    async def messages() -> tuple[list[int], list[int]]:
        total, gossip = [], []
        types.clear()
        for i in range(n):
            st = json.loads((await fleet.call(i, lambda c: c.status())).statistics_json)
            total.append(int(st["runtime"]["messages_in"]))
            gossip.append(int(st["gossip"]["messages_received"]))
            types.append(dict(st["runtime"].get("messages_by_type", {})))
        return total, gossip

    def by_type(before: list[dict[str, int]], after: list[dict[str, int]]
                ) -> dict[str, float]:
        names = sorted({k for d in after for k in d})
        out = {k: sum(b.get(k, 0) - a.get(k, 0) for a, b in zip(before, after, strict=True))
               / n for k in names}
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v}

    # a quiet window before the rollout and one after it, QUIET seconds each: what a
    # node pays per second whatever it transfers (gossip rounds, keepalives, records)
    (mq, _), cq = await messages(), _cpu(procs)
    tq = [dict(d) for d in types]
    await trio.sleep(QUIET)
    (m0, g0), c0 = await messages(), _cpu(procs)
    t0_types = [dict(d) for d in types]
    d0 = [(await overlay(i))["dials"] for i in range(n)]
    sessions_start = [len((await fleet.call(i, lambda c: c.peers())).peers) for i in range(n)]
    polled: list[int] = []
    most = max(found)
    load0 = _load()
    t0 = time.perf_counter()
    await fleet.call(0, lambda c: c.distribute_model("wide", "1.0.0"))
    with trio.fail_after(timeout):
        while True:
            rep = await fleet.call(0, lambda c: c.convergence_status("wide", "1.0.0"))
            for i in range(0, n, max(1, n // 8)):
                polled.append(len((await fleet.call(i, lambda c: c.peers())).peers))
                most = max(most, polled[-1])
            if rep.is_success and rep.total_platforms == n:
                break
            await trio.sleep(0.3)
    elapsed = time.perf_counter() - t0
    load1 = _load()
    (m1, g1), c1 = await messages(), _cpu(procs)
    t1_types = [dict(d) for d in types]
    await trio.sleep(QUIET)
    (m2, _), c2 = await messages(), _cpu(procs)
    t2_types = [dict(d) for d in types]
    sessions = [len((await fleet.call(i, lambda c: c.peers())).peers) for i in range(n)]
    d1 = [(await overlay(i))["dials"] for i in range(n)]
    msgs = [b - a for a, b in zip(m0, m1, strict=True)]
    cpu = [b - a for a, b in zip(c0, c1, strict=True)]
    gossip = [b - a for a, b in zip(g0, g1, strict=True)]
    return {"n": n, "messages_per_node": sum(msgs) / n, "messages_max": max(msgs),
            "gossip_messages_per_node": sum(gossip) / n,
            "cpu_per_node": sum(cpu) / n, "cpu_fleet": sum(cpu), "rollout_s": elapsed,
            "load_start": load0, "load_end": load1,
            "settle_s": settle, "sessions_most": max(most, *sessions),
            "sessions_start": sorted(sessions_start), "sessions_end": sorted(sessions),
            "sessions_mean_polled": sum(polled) / max(1, len(polled)),
            "dials_per_node": (sum(d1) - sum(d0)) / n,
            "by_type_per_node": by_type(t0_types, t1_types),
            "quiet_before": {"cpu_per_node_s": (sum(c0) - sum(cq)) / n / QUIET,
                             "messages_per_node_s": (sum(m0) - sum(mq)) / n / QUIET,
                             "by_type_per_node_s": {k: round(v / QUIET, 2) for k, v in
                                                    by_type(tq, t0_types).items()}},
            "quiet_after": {"cpu_per_node_s": (sum(c2) - sum(c1)) / n / QUIET,
                            "messages_per_node_s": (sum(m2) - sum(m1)) / n / QUIET,
                            "by_type_per_node_s": {k: round(v / QUIET, 2) for k, v in
                                                   by_type(t1_types, t2_types).items()}}}


def measure(n: int, size: int, timeout: float = 300.0, cap: float = 0.0) -> dict[str, Any]:
    """One fleet of ``n`` daemons rolls out ``size`` bytes; the figures of the window.
    ``cap`` > 0: every daemon's ``[bandwidth]`` up and down, Mbit/s."""
    if cap < 0:
        raise ValueError(f"cap must be >= 0 Mbit/s, not {cap}")
    base = Path(tempfile.mkdtemp(prefix=f"shoal-bench-overlay-{n}-"))
    pkg = _package(base / "pkg", size)
    config = (f'[bandwidth]\nupload = "{cap:g}mbit"\ndownload = "{cap:g}mbit"\n'
              if cap else "")
    fleet = LocalFleet(base / "fleet", n,
                       fleet_id=f"bench-overlay-{os.getpid()}-{n}-{cap:g}",
                       extra_config=config)
    try:
        fleet.start_all()
        out = trio.run(_rollout, fleet, n, pkg, timeout)
    finally:
        fleet.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    out["cap_mbit"] = cap
    if cap:
        out["t_min_s"] = size * 8 / (cap * 1e6)
    return out


def _rows(small: dict[str, Any], large: dict[str, Any], size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cap = small.get("cap_mbit", 0.0)
    tag = f", capped {cap:g} Mbit/s" if cap else ", uncapped"
    for r in (small, large):
        n = r["n"]
        rows += [
            {"name": f"overlay: messages per node, rollout to {n} daemons{tag}",
             "value": round(r["messages_per_node"]), "unit": "messages",
             "detail": f"{size // MiB} MiB model; max {r['messages_max']}; of them gossip "
                       f"{r['gossip_messages_per_node']:.0f}; rollout {r['rollout_s']:.1f} s"
                       + (f" (T_min {r['t_min_s']:.1f} s)" if r.get("t_min_s") else "")
                       + f"; load {r['load_start']} -> {r['load_end']}"},
            {"name": f"overlay: CPU per node, rollout to {n} daemons{tag}",
             "value": round(r["cpu_per_node"], 2), "unit": "s",
             "detail": f"fleet {r['cpu_fleet']:.1f} s of CPU"},
            {"name": f"overlay: most sessions of a daemon, {n} daemons",
             "value": r["sessions_most"], "unit": "sessions",
             "detail": f"polled during the rollout; at its end {r['sessions_end']}"},
            {"name": f"overlay: sessions per daemon (mean of polls), {n} daemons",
             "value": round(r["sessions_mean_polled"], 2), "unit": "sessions",
             "detail": f"at the start {r['sessions_start']}; dials per node in the window "
                       f"{r['dials_per_node']:.2f}"},
        ]
    times = round(large["rollout_s"] / small["rollout_s"], 2)   # judged as shown
    judged = "aim <= 1.3" + (
        "" if not cap else
        f"; rollout times {times:.2f}x apart: "
        + ("link-bound alike, the ratio to judge" if 0.8 <= times <= 1.25
           else "not comparable (> 25 % apart), not the ratio to judge"))
    rows += [
        {"name": f"overlay: messages per node {large['n']} / {small['n']} daemons{tag}",
         "value": round(large["messages_per_node"] / small["messages_per_node"], 2),
         "unit": "ratio", "detail": judged},
        {"name": f"overlay: CPU per node {large['n']} / {small['n']} daemons{tag}",
         "value": round(large["cpu_per_node"] / small["cpu_per_node"], 2),
         "unit": "ratio", "detail": judged},
        {"name": f"overlay: rollout time {large['n']} / {small['n']} daemons{tag}",
         "value": round(times, 2), "unit": "ratio",
         "detail": f"{small['rollout_s']:.1f} s -> {large['rollout_s']:.1f} s"},
    ]
    return rows


def sequence(small_n: int, large_n: int, size: int, cap: float,
             report: Any = None) -> list[dict[str, Any]]:
    """The uncapped pair, then (``cap`` > 0) the capped pair, in one sequence."""
    rows: list[dict[str, Any]] = []
    for c in ((0.0, cap) if cap else (0.0,)):
        pair = []
        for n in (small_n, large_n):
            r = measure(n, size, timeout=600.0 if c else 300.0, cap=c)
            if report is not None:
                report(r)
            pair.append(r)
        rows += _rows(pair[0], pair[1], size)
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    small_n, large_n, size = (4, 8, 4 * MiB) if quick else (8, 32, 16 * MiB)
    return sequence(small_n, large_n, size, CAP, report=lambda r: print(
        f"  [bench_overlay] {json.dumps(r)}", file=sys.stderr, flush=True))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(prog="bench_overlay.py")
    parser.add_argument("counts", nargs="*", type=int, help="SMALL LARGE MiB (8 32 16)")
    parser.add_argument("--cap", type=float, default=CAP,
                        help=f"Mbit/s per daemon for the capped pair ({CAP:g}; 0: none)")
    ns = parser.parse_args()
    a, b, mib = (ns.counts + [8, 32, 16][len(ns.counts):])[:3]
    rows = sequence(a, b, mib * MiB, ns.cap,
                    report=lambda r: print(json.dumps(r), flush=True))
    print(json.dumps(rows, indent=1))
