"""Small helpers the daemon tests share: one call over a node's control socket (the
operator's ``ShoalClient`` or the raw ``ControlClient``), its status, and bounded polls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from agent._demo.fleet import LocalFleet
from agent.client import ModelConvergenceStatus, ShoalClient


def call(f: LocalFleet, i: int, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """``fn(control client)`` at node ``i``."""
    return trio.run(f.call, i, fn)


def status(f: LocalFleet, i: int = 0) -> Any:
    """Node ``i``'s status over its control socket."""
    return call(f, i, lambda c: c.status())


def rollout(f: LocalFleet, i: int, pkg: Path, model: str, version: str = "1.0.0",
            timeout: float = 60.0) -> ModelConvergenceStatus:
    """Publish ``pkg`` as ``model`` ``version`` at node ``i``, distribute it, and wait
    until node ``i`` sees it converged."""
    call(f, i, lambda c: c.publish(str(pkg), model, version))
    call(f, i, lambda c: c.distribute_model(model, version))
    rep: ModelConvergenceStatus = trio.run(f.wait_converged, i, model, version, timeout)
    return rep


def until(f: LocalFleet, i: int, probe: Callable[[Any], Awaitable[Any]],
          timeout: float = 30.0, every: float = 0.2) -> Any:
    """Poll ``probe(control client)`` at node ``i`` until it is truthy (bounded)."""
    async def go() -> Any:
        with trio.fail_after(timeout):
            while True:
                value = await f.call(i, probe)
                if value:
                    return value
                await trio.sleep(every)
    return trio.run(go)


def api(f: LocalFleet, i: int, fn: Callable[[ShoalClient], Awaitable[Any]]) -> Any:
    """``fn(ShoalClient)`` at node ``i``."""
    async def go() -> Any:
        async with ShoalClient.connect(f.socket(i)) as c:
            return await fn(c)
    return trio.run(go)


def wait_for(f: LocalFleet, i: int, probe: Callable[[ShoalClient], Awaitable[Any]],
             timeout: float = 90.0, every: float = 0.3) -> Any:
    """Poll ``probe(ShoalClient)`` at node ``i`` until it is truthy (bounded)."""
    async def go() -> Any:
        with trio.fail_after(timeout):
            async with ShoalClient.connect(f.socket(i)) as c:
                while True:
                    value = await probe(c)
                    if value:
                        return value
                    await trio.sleep(every)
    return trio.run(go)


def shoal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``shoal`` command in a subprocess (this interpreter, this source tree)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "agent._cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def peer_ids(socket_path: str) -> set[str]:
    """Node ids of the peers ``shoal peers --json`` lists at the daemon on ``socket_path``."""
    r = shoal_cli("peers", "--socket", socket_path, "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    return {p["node_id"] for p in json.loads(r.stdout)["peers"]}
