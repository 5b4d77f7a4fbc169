"""Issue 21 end to end: three real daemons, three rollouts through the ``shoal``
command. Each rollout settles once it runs healthy everywhere; every daemon then keeps
the active version and one to roll back to on disk (``[ledger] keep_versions``),
forgets the intents and manifests of what it no longer keeps, and still rolls back
from disk."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from agent._demo.fleet import FAST_GOSSIP, LocalFleet

from ._helpers import shoal_cli, wait_for

N = 3


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
        for k, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
            pkg = _package(tmp_path / f"v{k}", k)
            r = shoal_cli("publish", str(pkg), "--model", "det", "--version", version,
                          *cfg[0])
            assert r.returncode == 0, r.stderr
            r = shoal_cli("distribute", "det", version, *cfg[0])
            assert r.returncode == 0, r.stderr

            async def all_on(c: Any, v: str = version) -> bool:
                return len(await c.nodes_with_version("det", v)) == N
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
        while not all(on_disk(i) == ["1.1.0", "1.2.0"] for i in range(N)):
            assert time.monotonic() < deadline, [on_disk(i) for i in range(N)]
            time.sleep(0.3)
        # ... and the command line says the same
        handles = {(h["kind"], h["version"]) for h in _json("handles", "det", *cfg[2])}
        assert ("distribute", "1.0.0") not in handles and ("settle", "1.2.0") in handles
        assert _json("status", *cfg[2])["statistics"]["ledger"]["retired"] > 0
        models = _json("models", *cfg[2])
        assert "1.0.0" not in {m["version"] for m in models["installed"]}
        # the version kept to roll back to is still one command away, from disk
        r = shoal_cli("rollback", "det", "1.1.0", *cfg[0])
        assert r.returncode == 0, r.stderr

        async def back(c: Any) -> bool:
            return len(await c.nodes_with_version("det", "1.1.0")) == N
        wait_for(f, 0, back, timeout=60)
    finally:
        f.stop_all()
