"""``python -m agent._demo.fleet``: a real local fleet of shoal daemons.

Starts N (default 5) ``shoal daemon`` processes on 127.0.0.1 - real TCP, real
mDNS on the loopback interface - publishes a generated two-variant model on
node 0, distributes it and prints convergence live, publishes a second
version that changes a few percent of the bytes and rolls it out as a delta,
rolls back to the first, prints a summary (times, bytes moved against the
full size) and stops every process it started, also on Ctrl-C or failure.

:class:`LocalFleet` is also what ``tests/test_daemon.py`` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from agent._admin.fleet import Provisioned, provision
from agent._daemon.control_client import ControlClient
from protocol import ModelConvergenceStatus, OverlayConfig, SigningIdentity

__all__ = ["LocalFleet", "make_package", "mutate_package", "main"]

MiB = 1024 * 1024
FAST_GOSSIP = "[gossip]\ninterval = 0.3\nrecord_min_interval = 0.3\n"


def make_package(root: Path, size: int, seed: int = 1) -> Path:
    """A two-variant package (``fp16-gpu`` needs a GPU, ``int8-cpu`` does not)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "shoal-model.toml").write_text(
        '[[variant]]\nid = "fp16-gpu"\nprecision = "fp16"\nmin_gpu_mem_gb = 4\n'
        'execution_providers = ["CUDAExecutionProvider"]\n\n'
        '[[variant]]\nid = "int8-cpu"\nprecision = "int8"\n')
    for variant, share in (("fp16-gpu", 1.0), ("int8-cpu", 0.5)):
        d = root / variant
        d.mkdir(exist_ok=True)
        (d / "model.bin").write_bytes(rng.randbytes(int(size * share)))
        (d / "config.json").write_text('{"layers": 12}\n')
    return root


def mutate_package(src: Path, dst: Path, fraction: float, seed: int = 2) -> Path:
    """A copy of ``src`` with ``fraction`` of each model.bin rewritten in a few places."""
    import shutil

    shutil.copytree(src, dst)
    rng = random.Random(seed)
    for f in dst.glob("*/model.bin"):
        data = bytearray(f.read_bytes())
        spots = 4
        span = int(len(data) * fraction / spots)
        for _ in range(spots):
            at = rng.randrange(0, max(1, len(data) - span))
            data[at:at + span] = rng.randbytes(span)
        f.write_bytes(bytes(data))
    return dst


class LocalFleet:
    """N daemon processes under ``base`` (one data dir each); node 0 holds the operator key."""

    def __init__(self, base: Path, n: int, *, fleet_id: str | None = None,
                 extra_config: str = FAST_GOSSIP, mdns: bool = True,
                 per_node: dict[int, str] | None = None,
                 formations: dict[int, str] | None = None) -> None:
        self.base = base
        # a fleet id of its own: fleets started side by side on loopback mDNS (parallel
        # test runs, a demo next to a benchmark) then ignore each other instead of dialling
        # and being refused
        self.fleet_id = fleet_id or f"local-{secrets.token_hex(4)}"
        fleet_id = self.fleet_id
        self.root = SigningIdentity.generate()
        self.nodes: list[Provisioned] = []
        self.procs: list[subprocess.Popen[bytes] | None] = []
        for i in range(n):
            self.nodes.append(provision(base / f"node{i}", root=self.root, fleet_id=fleet_id,
                                        name=f"node{i}", operator=(i == 0),
                                        extra_config=(per_node or {}).get(i, "")
                                        + extra_config,
                                        mdns_interface="127.0.0.1" if mdns else "",
                                        formation=(formations or {}).get(i, "")))
            self.procs.append(None)

    def start(self, i: int) -> None:
        node = self.nodes[i]
        log = open(node.data_dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "agent._cli", "daemon", "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def start_all(self) -> None:
        for i in range(len(self.nodes)):
            self.start(i)

    @contextlib.contextmanager
    def running(self, timeout: float = 30.0) -> Iterator[LocalFleet]:
        """Start every daemon, wait until they are meshed (:meth:`wait_meshed`), and
        stop them all when the block ends, however it ends."""
        try:
            self.start_all()
            trio.run(self.wait_meshed, timeout)
            yield self
        finally:
            self.stop_all()

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(timeout=20)
        self.procs[i] = None

    def stop_all(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for i, p in enumerate(self.procs):
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.procs[i] = None

    def socket(self, i: int) -> str:
        return str(self.nodes[i].control_socket)

    async def call(self, i: int, fn: Callable[[ControlClient], Any]) -> Any:
        async with ControlClient(self.socket(i)) as c:
            return await fn(c)

    async def wait_ready(self, i: int, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while True:
                with contextlib.suppress(Exception):
                    await self.call(i, lambda c: c.status())
                    return
                await trio.sleep(0.2)

    async def wait_peers(self, i: int, count: int, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while len((await self.call(i, lambda c: c.status())).peers) < count:
                await trio.sleep(0.2)

    async def wait_meshed(self, timeout: float = 30.0) -> None:
        """Every daemon answers its control socket and sees every other one as a peer
        (in a fleet larger than the overlay's degree + 1: the degree's worth of them)."""
        n = len(self.nodes)
        for i in range(n):
            await self.wait_ready(i, timeout=timeout)
        for i in range(n):
            await self.wait_peers(i, min(n - 1, OverlayConfig().degree), timeout=timeout)

    async def wait_converged(self, i: int, model: str, version: str, timeout: float,
                             show: Callable[[ModelConvergenceStatus], None] | None = None,
                             poll: float = 0.3) -> ModelConvergenceStatus:
        """Ask node ``i`` every ``poll`` seconds until every node runs ``version``."""
        with trio.fail_after(timeout):
            last = None
            while True:
                rep: ModelConvergenceStatus = await self.call(
                    i, lambda c: c.convergence_status(model, version))
                if show is not None and rep != last:
                    show(rep)
                last = rep
                if rep.is_success and rep.total_platforms == len(self.nodes):
                    return rep
                await trio.sleep(poll)




def _show(rep: ModelConvergenceStatus) -> None:
    pct = 100.0 * rep.bytes_done / rep.bytes_total if rep.bytes_total else 0.0
    print(f"  {rep.model_id} {rep.target_version}: {rep.converged}/{rep.total_platforms} "
          f"operational, {rep.in_progress} in progress, {rep.pending} pending, "
          f"{rep.failed} failed; bytes {pct:5.1f}%", flush=True)


async def _scenario(fleet: LocalFleet, pkg1: Path, pkg2: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(n):
        await fleet.wait_ready(i)
    t = time.monotonic()
    want = min(n - 1, OverlayConfig().degree)    # (a larger fleet: the overlay's degree)
    await fleet.wait_peers(0, want, timeout=30)
    out["discovery_s"] = time.monotonic() - t
    print(f"node0 sees {want} peers after {out['discovery_s']:.1f} s (mDNS)")
    pub = await fleet.call(0, lambda c: c.publish(str(pkg1), "detector", "1.0.0"))
    out["v1_bytes"] = pub.bytes_total
    print(f"published detector 1.0.0: {pub.bytes_total / MiB:.1f} MiB, variants "
          f"{', '.join(pub.variants)}")
    t = time.monotonic()
    await fleet.call(0, lambda c: c.distribute_model("detector", "1.0.0"))
    await fleet.wait_converged(0, "detector", "1.0.0", 120, _show)
    out["v1_s"] = time.monotonic() - t
    store_before = [await _store_bytes(fleet, i) for i in range(n)]
    pub2 = await fleet.call(0, lambda c: c.publish(str(pkg2), "detector", "1.1.0"))
    out["v2_new_bytes_at_publisher"] = pub2.bytes_new
    print(f"published detector 1.1.0: {pub2.bytes_new / MiB:.2f} MiB new of "
          f"{pub2.bytes_total / MiB:.1f} MiB")
    t = time.monotonic()
    await fleet.call(0, lambda c: c.distribute_model_delta("detector", "1.1.0", "1.0.0"))
    await fleet.wait_converged(0, "detector", "1.1.0", 120, _show)
    out["v2_s"] = time.monotonic() - t
    store_after = [await _store_bytes(fleet, i) for i in range(n)]
    out["v2_fetched_per_node"] = [a - b for a, b in zip(store_after, store_before,
                                                        strict=True)][1:]
    t = time.monotonic()
    await fleet.call(0, lambda c: c.rollback("detector", "1.0.0"))
    await fleet.wait_converged(0, "detector", "1.0.0", 60, _show)
    out["rollback_s"] = time.monotonic() - t
    return out


async def _store_bytes(fleet: LocalFleet, i: int) -> int:
    import json

    st = await fleet.call(i, lambda c: c.status())
    return int(json.loads(st.statistics_json)["store"]["bytes"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent._demo.fleet")
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--size-mib", type=float, default=48.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="shoal-fleet-"))
    fleet = LocalFleet(base, args.nodes)
    try:
        pkg1 = make_package(base / "pkg-1.0.0", int(args.size_mib * MiB))
        pkg2 = mutate_package(pkg1, base / "pkg-1.1.0", 0.03)
        print(f"starting {args.nodes} daemons under {base}")
        fleet.start_all()
        res = trio.run(_scenario, fleet, pkg1, pkg2, args.nodes)
        fetched = res["v2_fetched_per_node"]
        print("\nsummary")
        print(f"  mDNS discovery (node0 sees all): {res['discovery_s']:.1f} s")
        print(f"  1.0.0 to {args.nodes} nodes: {res['v1_s']:.1f} s "
              f"({res['v1_bytes'] / MiB:.1f} MiB published, 2 variants)")
        print(f"  1.1.0 delta: {res['v2_s']:.1f} s; new bytes at the publisher "
              f"{res['v2_new_bytes_at_publisher'] / MiB:.2f} MiB; fetched per node "
              f"{', '.join(f'{b / MiB:.2f}' for b in fetched)} MiB")
        print(f"  rollback to 1.0.0: {res['rollback_s']:.1f} s (no transfer)")
        return 0
    except BaseException as exc:
        print(f"demo failed: {exc!r}; logs under {base}/node*/daemon.log", file=sys.stderr)
        args.keep = True
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
    finally:
        fleet.stop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
