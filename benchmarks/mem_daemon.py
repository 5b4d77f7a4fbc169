"""What a receiving daemon holds during a real transfer (tracemalloc + gc), by size.

``python -m benchmarks.mem_daemon [--frames N] [--every S] [--top K] MIB [MIB ...]``
runs, for each size, the transfer of ``bench_daemon --rss`` (a fresh 2-node
:class:`~agent._demo.fleet.LocalFleet`, a one-variant model of ``MIB`` MiB published on
node 0, distributed to node 1) with node 1 started under this module's ``--daemon``
wrapper: tracemalloc on (``N`` frames a trace) and a SIGUSR1 handler that writes a
snapshot, the RSS, ``/proc/self/smaps_rollup`` and the count of gc-tracked objects per
type. The driver signals the receiver every ``S`` seconds of the transfer and once more
at the end (before the install's switch is seen); for each size it prints the snapshot
taken at the highest traced memory, and then the ``K`` tracebacks that grew the most
from the first size's peak to the last one's, with the object counts that grew.

A benchmark-only hook: the daemon itself has no such handler. Tracing slows the receiver
(figures of time from it mean nothing); what it gives is where the bytes are.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import trio

from agent._demo.fleet import LocalFleet

from .bench_daemon import MiB, _package

_DIR_ENV = "SHOAL_MEM_DIR"


# -- the wrapper (runs in the receiving daemon) ------------------------------------

def _smaps() -> dict[str, int]:
    """RSS by kind of mapping: the brk heap, anonymous maps (pymalloc's arenas, other
    threads' malloc arenas, large blocks), thread stacks, files."""
    out: collections.Counter[str] = collections.Counter()
    kind = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            path = head[5] if len(head) > 5 else ""
            kind = path if path.startswith("[") else ("file" if path else "anon")
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) * 1024
    return dict(out)


def _dump(_sig: int, _frame: FrameType | None) -> None:
    from agent._daemon.transport import RECORD_POOL
    out = Path(os.environ[_DIR_ENV])
    n = len(list(out.glob("info-*.json")))
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    if tracemalloc.is_tracing():
        with open(out / f"snap-{n:03d}.pickle", "wb") as f:
            pickle.dump(tracemalloc.take_snapshot(), f)
    rollup = Path("/proc/self/smaps_rollup").read_text()
    with open(out / f"info-{n:03d}.json", "w") as f:
        json.dump({"rss": psutil.Process().memory_info().rss,
                   "traced": tracemalloc.get_traced_memory(), "smaps": _smaps(),
                   "pool": dataclasses.asdict(RECORD_POOL.statistics()),
                   "objects": dict(counts.most_common(60)), "rollup": rollup,
                   "t": time.time()}, f)


def _daemon(argv: list[str]) -> int:
    from agent._cli.main import main as shoal_main
    signal.signal(signal.SIGUSR1, _dump)
    return shoal_main(argv)


# -- the driver --------------------------------------------------------------------

class _TracedFleet(LocalFleet):
    frames = 1
    out = Path()

    def start(self, i: int) -> None:
        if i != 1:
            return super().start(i)
        node = self.nodes[i]
        log = open(node.data_dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        env[_DIR_ENV] = str(self.out)
        trace = ["-X", f"tracemalloc={self.frames}"] if self.frames else []
        self.procs[i] = subprocess.Popen(
            [sys.executable, *trace, "-m", "benchmarks.mem_daemon",
             "--daemon", "daemon", "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return None


async def _transfer(fleet: _TracedFleet, pkg: Path, every: float) -> float:
    await fleet.call(0, lambda c: c.publish(str(pkg), "bench", "1.0.0"))
    procs = [p for p in fleet.procs if p is not None]
    rcv = procs[1]
    await trio.sleep(1.0)
    rcv.send_signal(signal.SIGUSR1)           # before: the idle daemon
    await trio.sleep(2.0)
    t = time.perf_counter()
    async with trio.open_nursery() as n:
        async def tick() -> None:
            while True:
                await trio.sleep(every)
                rcv.send_signal(signal.SIGUSR1)
        n.start_soon(tick)
        await fleet.call(0, lambda c: c.distribute_model("bench", "1.0.0"))
        await fleet.wait_converged(0, "bench", "1.0.0", 3600)
        n.cancel_scope.cancel()
    rcv.send_signal(signal.SIGUSR1)
    await trio.sleep(3.0)
    return time.perf_counter() - t


def _peak(out: Path) -> tuple[tracemalloc.Snapshot | None, dict[str, Any],
                              list[dict[str, Any]]]:
    """The snapshot at the highest traced memory (untraced: the highest RSS)."""
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("info-*.json"))]
    i = max(range(len(infos)), key=lambda k: (infos[k]["traced"][0], infos[k]["rss"]))
    snap = None
    if (out / f"snap-{i:03d}.pickle").exists():
        with open(out / f"snap-{i:03d}.pickle", "rb") as f:
            snap = pickle.load(f)
    return snap, infos[i], infos


def _rollup(text: str) -> str:
    keep = ("Rss", "Anonymous", "Private_Dirty")
    return ", ".join(line.split(":")[0] + " " + str(int(line.split()[1]) // 1024) + " MiB"
                     for line in text.splitlines() if line.split(":")[0] in keep)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--daemon"]:
        return _daemon(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mem_daemon")
    parser.add_argument("sizes", nargs="+", type=int, help="model sizes in MiB")
    parser.add_argument("--frames", type=int, default=1, help="0: no tracemalloc")
    parser.add_argument("--every", type=float, default=4.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="keep the snapshots in this directory")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="shoal-mem-daemon-"))
    keep = Path(args.keep) if args.keep else tmp / "snaps"
    peaks: list[tuple[int, tracemalloc.Snapshot | None, dict[str, Any]]] = []
    key = "traceback" if args.frames > 1 else "lineno"
    try:
        for size in args.sizes:
            out = keep / f"{size}"
            out.mkdir(parents=True, exist_ok=True)
            base = tmp / f"run-{size}"
            pkg = _package(base / "pkg", size * MiB, seed=size)
            fleet = _TracedFleet(base / "fleet", 2, fleet_id=f"bench-mem-{os.getpid()}-{size}")
            fleet.frames, fleet.out = args.frames, out
            with fleet.running(60):
                seconds = trio.run(_transfer, fleet, pkg, args.every)
            shutil.rmtree(base, ignore_errors=True)
            snap, info, infos = _peak(out)
            print(f"== {size} MiB: {seconds:.1f} s, {len(infos)} snapshots; RSS (MiB) "
                  + " ".join(f"{i['rss'] / MiB:.0f}" for i in infos)
                  + "; traced (MiB) " + " ".join(f"{i['traced'][0] / MiB:.1f}" for i in infos))
            print(f"   peak of traced: {info['traced'][0] / MiB:.1f} MiB, RSS "
                  f"{info['rss'] / MiB:.1f} MiB; {_rollup(info['rollup'])}")
            print("   RSS by mapping (MiB), each snapshot: " + "; ".join(
                " ".join(f"{k} {v / MiB:.1f}" for k, v in sorted(i["smaps"].items()))
                for i in infos))
            print(f"   record pool at the peak: {info['pool']}")
            if snap is not None:
                for stat in snap.statistics(key)[:args.top]:
                    print(f"   {stat.size / 1024:10.1f} KiB {stat.count:8d}  {stat.traceback}")
            peaks.append((size, snap, info))
        if len(peaks) > 1:
            (s0, a, ia), (s1, b, ib) = peaks[0], peaks[-1]
            print(f"== grew from {s0} to {s1} MiB at the peak: "
                  f"{(ib['traced'][0] - ia['traced'][0]) / MiB:+.1f} MiB traced, "
                  f"{(ib['rss'] - ia['rss']) / MiB:+.1f} MiB RSS")
            for d in (b.compare_to(a, key)[:args.top] if a is not None and b is not None
                      else []):
                tb = "\n          ".join(str(f) for f in d.traceback.format()[-2 * args.frames:])
                print(f"   {d.size_diff / 1024:+10.1f} KiB {d.count_diff:+8d}  {tb}")
            oa, ob = ia["objects"], ib["objects"]
            grown = sorted(((ob.get(k, 0) - oa.get(k, 0), k) for k in set(oa) | set(ob)),
                           reverse=True)
            print("   objects: " + ", ".join(f"{k} {d:+d}" for d, k in grown[:15]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
