"""Real daemons on loopback: transfer rate against raw TCP, receiver memory, idle CPU.

Every figure comes from real ``shoal daemon`` processes started by
:class:`agent._demo.fleet.LocalFleet` (TCP + mDNS on 127.0.0.1), driven through
their control sockets, in one run:

(a) *agent-to-agent transfer*: a single-variant model of ``size`` bytes is
    published on node 0 and distributed to node 1; the clock runs from the
    ``distribute`` call until node 0's convergence view reports node 1
    ``operational`` (so it includes gossip of the intent, the swarm transfer,
    hashing, the receiver's in-place writes and the install). The raw TCP
    copy of the same number of bytes between two processes
    (:func:`benchmarks.bench_transport._two_processes`) runs in the same
    benchmark, and the ratio is reported.
(b) *peak RSS of the receiving daemon* (psutil, polled every 50 ms) during a
    transfer of a small and of a large model, each in a fresh 2-node fleet.
(c) *idle CPU*: a fleet of N daemons with the default gossip settings that has
    converged on a small model; ``cpu_times`` of every daemon over a quiet
    window, as % of one core.

quick=True: 128/256 MiB, a fleet of 4 and a 5 s window; full: 1/4 GiB, 10, 20 s.

``python -m benchmarks.bench_daemon --rss [--quick]`` runs (b) alone -- the two
transfers, each in a fresh fleet -- and prints the receiver's peak RSS for each, their
ratio and the CPU of both daemons per GiB moved (issue 16's memory aim, a few minutes
instead of the whole module).
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
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


@dataclass(frozen=True, slots=True)
class _Transfer:
    seconds: float          # distribute -> operational
    publish_s: float
    peak: int               # receiver peak RSS
    start: int              # receiver RSS before
    cpu_s: float            # sender + receiver CPU seconds during the transfer
    disk: int               # bytes allocated under the receiver's models/ and store/


def _cpu(procs: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def _own_and_children_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _allocated(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


async def _transfer(fleet: LocalFleet, pkg: Path, model: str, timeout: float) -> _Transfer:
    """Publish on 0, distribute, wait until 1 is operational."""
    t = time.perf_counter()
    await fleet.call(0, lambda c: c.publish(str(pkg), model, "1.0.0"))
    publish_s = time.perf_counter() - t
    procs = [p for p in fleet.procs if p is not None]
    assert len(procs) == 2
    both = [psutil.Process(p.pid) for p in procs]
    peak = _Peak(procs[1].pid)
    async with trio.open_nursery() as n:
        n.start_soon(peak.poll)
        cpu0 = _cpu(both)
        t = time.perf_counter()
        await fleet.call(0, lambda c: c.distribute_model(model, "1.0.0"))
        # asked every 20 ms: the default 0.3 s poll would add up to 0.3 s to the figure
        await fleet.wait_converged(0, model, "1.0.0", timeout, poll=0.02)
        elapsed = time.perf_counter() - t
        cpu = _cpu(both) - cpu0
        n.cancel_scope.cancel()
    rcv = fleet.nodes[1].data_dir
    disk = _allocated(rcv / "models") + _allocated(rcv / "store")
    return _Transfer(elapsed, publish_s, peak.peak, peak.start, cpu, disk)


def _run_transfer(base: Path, size: int, timeout: float) -> _Transfer:
    pkg = _package(base / "pkg", size, seed=size)
    # a fleet id of its own: other local fleets on the loopback mDNS stay out of it
    fleet = LocalFleet(base / "fleet", 2, fleet_id=f"bench-xfer-{os.getpid()}")
    try:
        with fleet.running(60):
            return trio.run(_transfer, fleet, pkg, "bench", timeout)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _primitives(size: int, work: Path) -> dict[str, float]:
    """CPU seconds of the primitives a transfer of ``size`` bytes cannot avoid, on the
    same bytes in this run: AES-256-GCM seal and open (64 KiB records, as a session
    does), one BLAKE3 pass, and one write + fsync of the bytes into a file."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    block = os.urandom(64 * 1024)
    n = size // len(block)
    aead = AESGCM(b"k" * 32)
    nonce = b"\0" * 12
    t = time.process_time()
    for _ in range(n):
        aead.decrypt(nonce, aead.encrypt(nonce, block, None), None)
    aes = time.process_time() - t
    t = time.process_time()
    for _ in range(n):
        blake3.blake3(block).digest()
    b3 = time.process_time() - t
    big = block * 256       # 16 MiB writes
    t = time.process_time()
    fd = os.open(work / "prim.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(max(1, size // len(big))):
            os.write(fd, big)
        os.fsync(fd)
    finally:
        os.close(fd)
    wr = time.process_time() - t
    (work / "prim.bin").unlink()
    return {"aes": aes, "blake3": b3, "write": wr}


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


def run_rss(quick: bool) -> list[dict[str, Any]]:
    """(b) alone: the receiver's peak RSS for the small and the large model."""
    small, large = (128 * MiB, 256 * MiB) if quick else (1024 * MiB, 4096 * MiB)
    timeout = 120.0 if quick else 2400.0
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-daemon-"))
    try:
        a = _run_transfer(tmp / "a", small, timeout)
        _progress(f"{small // MiB} MiB: {a.seconds:.1f} s; receiver peak RSS "
                  f"{a.peak / MiB:.1f} MiB (before {a.start / MiB:.1f})")
        b = _run_transfer(tmp / "b", large, timeout)
        _progress(f"{large // MiB} MiB: {b.seconds:.1f} s; receiver peak RSS "
                  f"{b.peak / MiB:.1f} MiB (before {b.start / MiB:.1f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for label, t, size in ((f"{small // MiB} MiB", a, small), (f"{large // MiB} MiB", b, large)):
        rows.append({"name": f"daemon: receiver peak RSS, {label} model",
                     "value": round(t.peak / MiB, 1), "unit": "MiB",
                     "detail": f"RSS before the transfer {t.start / MiB:.1f} MiB"})
        rows.append({"name": f"daemon: CPU s per GiB moved, sender + receiver, {label}",
                     "value": round(t.cpu_s / (size / (1 << 30)), 2), "unit": "s/GiB",
                     "detail": f"{t.seconds:.2f} s from distribute to operational"})
    rows.append({"name": "daemon: receiver peak RSS large / small",
                 "value": round(b.peak / a.peak, 3), "unit": "ratio",
                 "detail": f"aim <= 1.1; growth above the RSS before: "
                           f"{(a.peak - a.start) / MiB:.1f} / {(b.peak - b.start) / MiB:.1f} MiB"})
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    small, large = (128 * MiB, 256 * MiB) if quick else (1024 * MiB, 4096 * MiB)
    n_idle, window = (4, 5.0) if quick else (10, 20.0)
    timeout = 120.0 if quick else 2400.0
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-daemon-"))
    try:
        raw = _two_processes(small, secure=False)
        cpu0 = _own_and_children_cpu()
        raw_disk = _two_processes(small, secure=False, to_file=str(tmp / "raw-copy.bin"))
        raw_disk_cpu = _own_and_children_cpu() - cpu0
        (tmp / "raw-copy.bin").unlink()
        a = _run_transfer(tmp / "a", small, timeout)
        xfer = a.seconds
        prim = _primitives(small, tmp)
        _progress(f"raw TCP {small / 1e6 / raw:.1f} MB/s; into a file {small / 1e6 / raw_disk:.1f}"
                  f" MB/s; agent-to-agent {xfer:.2f} s ({small / 1e6 / xfer:.1f} MB/s); "
                  f"receiver peak RSS {a.peak / MiB:.1f} MiB; CPU {a.cpu_s:.2f} s")
        b = _run_transfer(tmp / "b", large, timeout)
        _progress(f"{large // MiB} MiB: {b.seconds:.1f} s; receiver peak RSS "
                  f"{b.peak / MiB:.1f} MiB")
        idle, settle = _run_idle(tmp / "c", n_idle, window)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb_small = small / 1e6
    gib = small / (1 << 30)
    label_s, label_l = f"{small // MiB} MiB", f"{large // MiB} MiB"
    prim_s = prim["aes"] + prim["blake3"] + prim["write"]
    return [
        {"name": f"daemon: agent-to-agent transfer {label_s}", "value": round(mb_small / xfer, 1),
         "unit": "MB/s", "detail": f"{xfer:.2f} s from distribute to operational "
                                   f"(publish took {a.publish_s:.2f} s), loopback, 2 daemons"},
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
         "detail": "aim >= 0.5; the daemon also verifies, encrypts, writes in place and "
                   "installs"},
        {"name": f"daemon: CPU s per GiB moved, sender + receiver, {label_s}",
         "value": round(a.cpu_s / gib, 2), "unit": "s/GiB",
         "detail": "cpu_times of both daemons from distribute to operational"},
        {"name": "daemon: primitives CPU s per GiB (AES-GCM both ways + BLAKE3 + write+fsync)",
         "value": round(prim_s / gib, 2), "unit": "s/GiB",
         "detail": f"same run: AES-GCM {prim['aes'] / gib:.2f}, BLAKE3 "
                   f"{prim['blake3'] / gib:.2f}, write+fsync {prim['write'] / gib:.2f}"},
        {"name": "daemon: CPU per GiB / primitives", "value": round(a.cpu_s / prim_s, 2),
         "unit": "ratio", "detail": "aim <= 2"},
        {"name": "daemon: CPU s per GiB of the TCP copy into a file + fsync",
         "value": round(raw_disk_cpu / gib, 2), "unit": "s/GiB",
         "detail": "both processes of that copy, same run: the kernel's socket and page-cache "
                   "copies, which the primitives above leave out"},
        {"name": "daemon: CPU per GiB / the TCP copy into a file", "value":
            round(a.cpu_s / raw_disk_cpu, 2), "unit": "ratio",
         "detail": "reported (no aim): what the daemon costs above a bare durable copy"},
        {"name": f"daemon: receiver disk after install / model bytes, {label_s}",
         "value": round(a.disk / small, 4), "unit": "x",
         "detail": "aim <= 1.02; st_blocks of the receiver's models/ and store/"},
        {"name": f"daemon: agent-to-agent transfer {label_l}",
         "value": round(large / 1e6 / b.seconds, 1), "unit": "MB/s",
         "detail": f"{b.seconds:.2f} s from distribute to operational, fresh 2-daemon fleet"},
        {"name": f"daemon: receiver peak RSS, {label_s} model", "value":
            round(a.peak / MiB, 1), "unit": "MiB",
         "detail": f"RSS before the transfer {a.start / MiB:.1f} MiB"},
        {"name": f"daemon: receiver peak RSS, {label_l} model", "value":
            round(b.peak / MiB, 1), "unit": "MiB",
         "detail": f"RSS before the transfer {b.start / MiB:.1f} MiB"},
        {"name": "daemon: receiver peak RSS large / small", "value":
            round(b.peak / a.peak, 3), "unit": "ratio",
         "detail": f"aim <= 1.1; model {large // small}x larger; 1.0 = memory does not grow "
                   "with size"},
        {"name": f"daemon: idle CPU, fleet of {n_idle} (mean)",
         "value": round(sum(idle) / len(idle), 2), "unit": "% of one core",
         "detail": f"cpu_times over {window:g} s after convergence (reached in "
                   f"{settle:.1f} s), default gossip interval; max {max(idle):.2f}%"},
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_daemon")
    parser.add_argument("--rss", action="store_true", help="the receiver's RSS alone (b)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    for row in (run_rss if args.rss else run)(quick=args.quick):
        print(f"  {row['name']:<58} {row['value']:>10} {row['unit']}  ({row.get('detail', '')})",
              flush=True)
