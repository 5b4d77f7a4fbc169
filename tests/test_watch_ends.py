"""``shoal status MODEL VERSION [--watch] [--json]`` and ``subscribe_convergence``
against a real one-node daemon: they say what became of a rollout and end when it
ended (complete, superseded, cancelled, rolled back); ``--watch --json`` prints one
JSON object per line, the final one included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import RolloutState, ShoalClient
from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package

from ._helpers import api

pytestmark = pytest.mark.slow

PROBE = '[probe]\ncpu_arch = "x86_64"\ngpus = []\n'


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    base = tmp_path_factory.mktemp("watchends")
    f = LocalFleet(base, 1, mdns=False, extra_config=PROBE + FAST_GOSSIP)
    with f.running(30):
        yield f


def shoal(f: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "agent._cli", *args, "--socket",
                           f.socket(0)], capture_output=True, text=True, env=env, timeout=30)


def rollout(f: LocalFleet, version: str, pkg: Path | None = None) -> str:
    """Publish (when ``pkg``) and distribute ``version``; wait until it runs."""
    if pkg is not None:
        api(f, 0, lambda c: c.control.publish(str(pkg), "det", version))
    h = api(f, 0, lambda c: c.distribute_model("det", version))

    async def wait(c: ShoalClient) -> None:
        with trio.fail_after(30):
            while (await c.convergence_status("det", version)).state \
                    is not RolloutState.COMPLETE:
                await trio.sleep(0.1)
    api(f, 0, wait)
    return str(h.handle_id)


def json_lines(out: str) -> list[dict[str, Any]]:
    lines = out.splitlines()
    assert lines
    return [json.loads(line) for line in lines]      # each line one whole object


def test_status_says_what_became_of_each_rollout(node: LocalFleet, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", 64 * 1024, seed=3)
    rollout(node, "1.0.0", pkg)
    # complete: --watch --json ends at once, one object per line, exit 0
    r = shoal(node, "status", "det", "1.0.0", "--watch", "--json")
    assert r.returncode == 0, r.stderr
    [final] = json_lines(r.stdout)
    assert final["state"] == "complete" and final["is_success"] and final["is_final"]
    r = shoal(node, "status", "det", "1.0.0", "--watch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "rollout ended: complete, 1/1 converged"

    # superseded by 1.1.0: watching 1.0.0 ends, saying why, exit 1
    pkg2 = make_package(tmp_path / "p2", 64 * 1024, seed=4)
    newer = rollout(node, "1.1.0", pkg2)
    r = shoal(node, "status", "det", "1.0.0", "--watch")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.splitlines()[-1] == (f"rollout ended: superseded by 1.1.0 "
                                         f"(intent {newer[:16]}\u2026)")
    r = shoal(node, "status", "det", "1.0.0", "--watch", "--json")
    assert r.returncode == 1
    objs = json_lines(r.stdout)
    assert objs[-1]["state"] == "superseded" and "1.1.0" in objs[-1]["state_detail"]

    # the subscription ends too (server and client)
    async def subscribe(c: ShoalClient) -> list[Any]:
        with trio.fail_after(20):
            async with c.subscribe_convergence("det", "1.0.0") as updates:
                return [s async for s in updates]
    seen = api(node, 0, subscribe)
    assert seen[-1].state is RolloutState.SUPERSEDED and seen[-1].is_final

    # rolled back: 1.1.0 gives way to a rollback to 1.0.0 (before the cancelled
    # distribute below: a node that installs 1.2.0 before the cancel reaches it keeps
    # 1.2.0 and 1.1.0 on disk, and 1.0.0 is then no longer a version to roll back to)
    back = api(node, 0, lambda c: c.rollback("det", "1.0.0"))
    r = shoal(node, "status", "det", "1.1.0", "--watch")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.splitlines()[-1] == (f"rollout ended: rolled back to 1.0.0 "
                                         f"(intent {back.handle_id[:16]}\u2026)")

    # cancelled: says "cancelled", never "0/0"
    pkg3 = make_package(tmp_path / "p3", 64 * 1024, seed=5)
    api(node, 0, lambda c: c.control.publish(str(pkg3), "det", "1.2.0"))
    h = api(node, 0, lambda c: c.distribute_model("det", "1.2.0"))
    cancel = api(node, 0, lambda c: c.cancel(h))
    r = shoal(node, "status", "det", "1.2.0")
    assert r.returncode == 0, r.stderr
    assert "cancelled" in r.stdout and "0/0" not in r.stdout
    assert f"cancelled by intent {cancel.handle_id[:16]}" in r.stdout
    r = shoal(node, "status", "det", "1.2.0", "--json")
    assert json.loads(r.stdout)["state"] == "cancelled"
    r = shoal(node, "status", "det", "1.2.0", "--watch")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1].startswith("rollout ended: cancelled by intent ")
