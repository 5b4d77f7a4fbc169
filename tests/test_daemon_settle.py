"""Issue 21 end to end: three real daemons, three rollouts through the ``shoal``
command. Each rollout settles once it runs healthy everywhere; every daemon then keeps
the active version and one to roll back to on disk (``[ledger] keep_versions``),
forgets the intents and manifests of what it no longer keeps, and still rolls back
from disk."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet

from ._helpers import shoal_cli, wait_for

N = 3
TARGETS = (1, 2)
SCOPE = "nodes=node1,node2"


def _package(where: Path, seed: int) -> Path:
    (where / "cpu").mkdir(parents=True)
    (where / "cpu" / "weights.bin").write_bytes(random.Random(seed).randbytes(300_000))
    (where / "shoal-model.toml").write_text('[[variant]]\nid = "cpu"\n')
    return where


def _json(*args: str) -> Any:
    r = shoal_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_daemons_keep_two_versions_and_forget_settled_history(tmp_path: Path) -> None:
    f = LocalFleet(tmp_path / "fleet", N, extra_config=FAST_GOSSIP)
    try:
        for i in range(N):
            f.start(i)
        cfg = [("--config", str(f.nodes[i].config_path)) for i in range(N)]
        trio.run(f.wait_ready, 0)
        r = shoal_cli("nodes", "--wait", str(N), *cfg[0])     # node 0 knows them all
        assert r.returncode == 0, r.stderr
        for k, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
            pkg = _package(tmp_path / f"v{k}", k)
            r = shoal_cli("publish", str(pkg), "--model", "det", "--version", version,
                          *cfg[0])
            assert r.returncode == 0, r.stderr
            # (node 0 publishes but is not in scope: like a ground station, its store
            # keeps every version it published, pinned, and it runs none of them)
            r = shoal_cli("distribute", "det", version, "--scope", SCOPE, *cfg[0])
            assert r.returncode == 0, r.stderr

            async def all_on(c: Any, v: str = version) -> bool:
                return len(await c.nodes_with_version("det", v)) == len(TARGETS)
            wait_for(f, 0, all_on, timeout=60)

        def on_disk(i: int) -> list[str]:
            versions = f.nodes[i].data_dir / "models" / "det" / "versions"
            return sorted(p.name for p in versions.iterdir() if not p.name.startswith("."))

        async def settled(c: Any) -> bool:     # (the Python client, polled)
            handles = {(h.kind.value, h.version) for h in await c.handles("det")}
            stats = json.loads((await c.control.status()).statistics_json)
            return (("distribute", "1.0.0") not in handles and ("settle", "1.2.0") in handles
                    and stats["ledger"]["retired"] > 0)
        for i in range(N):
            wait_for(f, i, settled, timeout=60)
        deadline = time.monotonic() + 30
        while not all(on_disk(i) == ["1.1.0", "1.2.0"] for i in TARGETS):
            assert time.monotonic() < deadline, [on_disk(i) for i in TARGETS]
            time.sleep(0.3)
        # ... and the command line says the same
        handles = {(h["kind"], h["version"]) for h in _json("handles", "det", *cfg[2])}
        assert ("distribute", "1.0.0") not in handles and ("settle", "1.2.0") in handles
        assert _json("status", *cfg[2])["statistics"]["ledger"]["retired"] > 0
        models = _json("models", *cfg[2])
        assert "1.0.0" not in {m["version"] for m in models["installed"]}
        # the publisher's store still holds every version it published; restarted, it
        # does not announce again what the fleet forgot (it once re-sent every retired
        # manifest on each start)

        async def two_manifests(c: Any) -> bool:   # 1.1.0 and 1.2.0: what nodes keep
            stats = json.loads((await c.control.status()).statistics_json)
            return bool(stats["ledger"]["manifests"] == 2)
        wait_for(f, 0, two_manifests, timeout=40)        # 1.0.0's is forgotten
        # and on disk: a target's store drops the manifest file its ledger forgot (the
        # publisher's keeps it: its pinned pack of 1.0.0 is still there)

        def manifest_files(i: int) -> int:
            return len(list((f.nodes[i].data_dir / "store" / "manifests").iterdir()))
        deadline = time.monotonic() + 30
        while not all(manifest_files(i) == 2 for i in TARGETS):
            assert time.monotonic() < deadline, [manifest_files(i) for i in TARGETS]
            time.sleep(0.3)
        assert manifest_files(0) == 3
        log_path = f.nodes[0].data_dir / "daemon.log"
        before = len(log_path.read_bytes())
        f.kill(0, signal.SIGTERM)
        f.start(0)
        trio.run(f.wait_ready, 0)

        async def back_in_step(c: Any) -> bool:   # (its retired count starts again at 0)
            handles = {(h.kind.value, h.version) for h in await c.handles("det")}
            return ("settle", "1.2.0") in handles and ("distribute", "1.0.0") not in handles
        wait_for(f, 0, back_in_step, timeout=60)
        log = log_path.read_bytes()[before:].decode()     # (this start's lines)
        assert "listening on" in log and "announced det 1.0.0" not in log
        wait_for(f, 0, two_manifests, timeout=40)
        # the version kept to roll back to is still one command away, from disk
        r = shoal_cli("rollback", "det", "1.1.0", "--scope", SCOPE, *cfg[0])
        assert r.returncode == 0, r.stderr

        async def back(c: Any) -> bool:
            return len(await c.nodes_with_version("det", "1.1.0")) == len(TARGETS)
        wait_for(f, 0, back, timeout=60)
    finally:
        f.stop_all()
