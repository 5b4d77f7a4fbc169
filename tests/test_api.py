"""The ModelDistribution API end to end: ``agent.ShoalClient`` and the CLI against a
real fleet of 4 ``shoal daemon`` processes on loopback (TCP + mDNS).

Probe values are overridden per node to give a mix (GPU 8 GiB / 2 GiB / none,
x86_64 / aarch64, formations alpha / bravo); node0 and node1 hold operator keys.
The tests share the fleet and run in order; every wait is bounded and every
process is stopped by the fixture.

    node   formation  arch     GPU     auto variant of "det"
    node0  alpha      x86_64   8 GiB   fp16-gpu
    node1  alpha      aarch64  2 GiB   int8-cpu
    node2  bravo      aarch64  8 GiB   fp16-gpu
    node3  bravo      x86_64   none    int8-cpu   (downloads at 2 MiB/s)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import (
    BlockerReason,
    DistributionScope,
    ModelConvergenceStatus,
    ModelOperationalStatus,
    ShoalClient,
    TransferPriority,
)
from agent._admin.fleet import provision
from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package, mutate_package
from agent.client import (
    ControlError,
    EmptyScope,
    UnknownIntent,
    UnknownModel,
    UnknownNode,
    UnknownVariant,
    UnknownVersion,
)
from protocol._errors import InvalidValue
from protocol._intents import ScopeKind

from ._helpers import api, wait_for

pytestmark = pytest.mark.slow

N = 4
MiB = 1024 * 1024
SLOW = 3
_GPU = '[[probe.gpus]]\nname = "sim"\ntotal_memory_mb = {mb}\n'
PROBES = {
    0: '[probe]\ncpu_arch = "x86_64"\n' + _GPU.format(mb=8192),
    1: '[probe]\ncpu_arch = "aarch64"\n' + _GPU.format(mb=2048),
    2: '[probe]\ncpu_arch = "aarch64"\n' + _GPU.format(mb=8192),
    # node 3 downloads at 2 MiB/s; a burst of 0.05 s makes the cap bite on these 1-2 MiB
    # variants (the default burst, 1 s of the rate, would let them through at once)
    3: '[probe]\ncpu_arch = "x86_64"\ngpus = []\n[bandwidth]\ndownload = "2MiB"\n'
       '[swarm]\nrate_burst = 0.05\n',
}
FORMATIONS = {0: "alpha", 1: "alpha", 2: "bravo", 3: "bravo"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    base = tmp_path_factory.mktemp("apifleet")
    f = LocalFleet(base, N, per_node=PROBES, formations=FORMATIONS)
    # a second operator, so operations can be issued (and cancelled) from another node
    f.nodes[1] = provision(base / "node1", root=f.root, fleet_id=f.fleet_id, name="node1",
                           operator=True, extra_config=PROBES[1] + FAST_GOSSIP,
                           formation=FORMATIONS[1])
    with f.running(60):
        trio.run(_records_known, f)
        yield f


async def _records_known(f: LocalFleet) -> None:
    ids = [n.node_id for n in f.nodes]
    with trio.fail_after(60):     # every node holds every record (with its probe)
        for i in range(N):
            for nid in ids:
                while (await f.call(i, _record_of(nid))).record is None:
                    await trio.sleep(0.2)


def _record_of(nid: str) -> Callable[[Any], Awaitable[Any]]:
    return lambda c: c.node_model_status(nid)


def model_of(model: str, node: str) -> Callable[[ShoalClient], Awaitable[Any]]:
    return lambda c: c.node_model_status(model, node)


def ids(f: LocalFleet, *which: int) -> list[str]:
    return sorted(f.nodes[i].node_id for i in which)


def store_bytes(f: LocalFleet, i: int) -> int:
    st = api(f, i, lambda c: c.control.status())
    return int(json.loads(st.statistics_json)["store"]["bytes"])


def settles(f: LocalFleet, i: int, fn: Callable[[ShoalClient], Awaitable[Any]],
            expected: Any, timeout: float = 30.0) -> None:
    """``fn`` at node ``i`` answers ``expected`` once gossip settles (bounded)."""
    async def probe(c: ShoalClient) -> bool:
        return bool(await fn(c) == expected)
    wait_for(f, i, probe, timeout)


def converged(f: LocalFleet, i: int, model: str, version: str, total: int,
              timeout: float = 90.0) -> ModelConvergenceStatus:
    async def probe(c: ShoalClient) -> ModelConvergenceStatus | None:
        s = await c.convergence_status(model, version)
        return s if s.is_success and s.total_platforms == total else None
    result: ModelConvergenceStatus = wait_for(f, i, probe, timeout)
    return result


# ---------------------------------------------------------------------------- pure parts


def test_scope_parse_and_render_round_trip() -> None:
    for text in ("all", "formation=alpha", "nodes=a,b",
                 "capable:min-gpu-mem-gb=4,arch=aarch64,min-storage-mb=2048"):
        assert str(DistributionScope.parse(text)) == text
    s = DistributionScope.parse("capable:min-gpu-mem-gb=4,arch=aarch64,min-storage-mb=2048")
    assert s == DistributionScope.capable(min_gpu_mem_gb=4, cpu_arch="aarch64",
                                          min_storage_mb=2048)
    assert s.kind is ScopeKind.CAPABLE
    assert DistributionScope.parse("nodes=x, y").scope.nodes == ("x", "y")
    for bad in ("", "some", "formation=", "nodes=", "capable:", "capable:gpu=4",
                "capable:min-gpu-mem-gb=lots", "capable:min-gpu-mem-gb=-1"):
        with pytest.raises(InvalidValue):
            DistributionScope.parse(bad)
    assert TransferPriority.parse("critical") is TransferPriority.CRITICAL


# ---------------------------------------------------------------------------- the fleet


def test_errors_are_refused_at_the_issuing_node(fleet: LocalFleet, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "det1", 2 * MiB, seed=31)
    pub = api(fleet, 0, lambda c: c.publish(pkg, "det", "1.0.0"))
    # one version, one content: the same bytes are a no-op, other bytes are refused
    again = api(fleet, 0, lambda c: c.publish(pkg, "det", "1.0.0"))
    assert again.already_published and again.manifest_id == pub.manifest_id
    other = make_package(tmp_path / "det1-other", 2 * MiB, seed=32)
    with pytest.raises(ControlError, match="already published with different content"):
        api(fleet, 0, lambda c: c.publish(other, "det", "1.0.0"))
    cases: list[tuple[type[Exception], str, Callable[[ShoalClient], Awaitable[Any]]]] = [
        (UnknownModel, "no published model 'nope'",
         lambda c: c.distribute_model("nope", "1.0.0")),
        (UnknownVersion, "known versions: 1.0.0",
         lambda c: c.distribute_model("det", "9.9.9")),
        (UnknownVariant, "has no variant 'tpu-int4'",
         lambda c: c.distribute_model_variant("det", "1.0.0", "tpu-int4")),
        (UnknownVersion, "delta base det '0.1.0'",
         lambda c: c.distribute_model_delta("det", "0.1.0", "1.0.0")),
        (UnknownVersion, "no published version '0.9.0'",
         lambda c: c.rollback("det", "0.9.0")),
        (EmptyScope, "matches none of the 4 known nodes",
         lambda c: c.distribute_model("det", "1.0.0", DistributionScope.formation("zulu"))),
        (EmptyScope, "matches none",
         lambda c: c.distribute_model("det", "1.0.0",
                                      DistributionScope.capable(min_gpu_mem_gb=64))),
        (EmptyScope, "ghost",
         lambda c: c.distribute_model("det", "1.0.0", DistributionScope.nodes("node2",
                                                                             "ghost"))),
        (UnknownIntent, "no intent " + "ab" * 32,
         lambda c: c.cancel("ab" * 32)),
    ]
    for exc, text, op in cases:
        with pytest.raises(exc, match=re.escape(text)):
            api(fleet, 0, op)
    # nothing was signed or sent: no node knows any intent for the model
    trio.run(trio.sleep, 1.0)
    for i in range(N):
        assert api(fleet, i, lambda c: c.handles("det")) == []
    # a node without an operator key refuses every intent
    with pytest.raises(Exception, match="no admitted operator key"):
        api(fleet, 2, lambda c: c.distribute_model("det", "1.0.0"))


def test_auto_variant_selection_and_subscription(fleet: LocalFleet) -> None:
    seen: list[ModelConvergenceStatus] = []

    async def go() -> Any:
        with trio.fail_after(120):
            async with ShoalClient.connect(fleet.socket(3)) as sub_c, \
                    ShoalClient.connect(fleet.socket(0)) as op:
                async with sub_c.subscribe_convergence("det", "1.0.0") as updates:
                    first = await updates.__anext__()      # before the intent exists
                    assert first.total_platforms == 0 and first.estimated_completion == 0.0
                    handle = await op.distribute_model("det", "1.0.0",
                                                       DistributionScope.all(),
                                                       TransferPriority.HIGH)
                    async for status in updates:
                        seen.append(status)
                return handle
    handle = trio.run(go)
    assert handle.targets == N and handle.priority is TransferPriority.HIGH
    assert len(handle.handle_id) == 64 and handle.scope == DistributionScope.all()
    # the subscription (at node3) saw the rollout move, then end on completion
    assert seen[-1].is_complete and seen[-1].is_success and seen[-1].converged == N
    assert seen[-1].progress == 1.0 and seen[-1].version_distribution == {"1.0.0": N}
    assert any(not s.is_complete for s in seen)
    assert [s.converged for s in seen] == sorted(s.converged for s in seen)
    variants = {i: api(fleet, i, model_of("det", fleet.nodes[i].node_id)).variant_id
                for i in range(N)}
    assert variants == {0: "fp16-gpu", 1: "int8-cpu", 2: "fp16-gpu", 3: "int8-cpu"}
    st = api(fleet, 3, lambda c: c.node_model_status("det", "node3"))   # by name
    assert st.status is ModelOperationalStatus.OPERATIONAL and st.intent_id == handle.handle_id
    assert st.model_id == "det" and st.active_version == "1.0.0" and st.node_name == "node3"
    for i in range(N):      # any node answers, and they agree once gossip settled
        settles(fleet, i, lambda c: c.nodes_with_version("det", "1.0.0"), ids(fleet, 0, 1, 2, 3))
        converged(fleet, i, "det", "1.0.0", N, timeout=30)
    assert api(fleet, 0, lambda c: c.node_model_status("nope", "node1")) is None
    with pytest.raises(UnknownNode, match="no-such-node"):
        api(fleet, 0, lambda c: c.node_model_status("det", "no-such-node"))


def test_delta_moves_only_changed_chunks(fleet: LocalFleet, tmp_path: Path) -> None:
    pkg1 = make_package(tmp_path / "d1", 2 * MiB, seed=31)
    pkg2 = mutate_package(pkg1, tmp_path / "d2", 0.02, seed=32)
    pub2 = api(fleet, 0, lambda c: c.control.publish(str(pkg2), "det", "1.1.0"))
    assert 0 < pub2.bytes_new < pub2.bytes_total * 0.5
    before = [store_bytes(fleet, i) for i in range(N)]
    # issued at node1 (the other operator), refused until gossip brought the manifest
    async def issue(c: ShoalClient) -> Any:
        try:
            return await c.distribute_model_delta("det", "1.0.0", "1.1.0")
        except UnknownVersion:
            return None
    h = wait_for(fleet, 1, issue, 30)
    assert h.delta_from == "1.0.0" and h.version == "1.1.0"
    converged(fleet, 3, "det", "1.1.0", N)
    for i in range(1, N):
        moved = store_bytes(fleet, i) - before[i]
        assert 0 < moved <= pub2.bytes_new, (i, moved, pub2.bytes_new)
        st = api(fleet, i, lambda c: c.node_model_status("det", ""))
        assert st.active_version == "1.1.0"
        assert set(st.installed) == {"1.0.0", "1.1.0"}
        # the node's final record says how many bytes were reused and fetched
        assert 0 < st.bytes_fetched <= pub2.bytes_new, (i, st)
        assert st.bytes_reused > 0 and st.bytes_reused + st.bytes_fetched == st.bytes_total


def test_rollback_with_capable_scope_moves_no_bytes(fleet: LocalFleet) -> None:
    before = [store_bytes(fleet, i) for i in range(N)]
    h = api(fleet, 1, lambda c: c.rollback("det", "1.0.0",
                                           DistributionScope.parse("capable:arch=aarch64")))
    assert h.targets == 2 and str(h.scope) == "capable:arch=aarch64"
    converged(fleet, 0, "det", "1.0.0", 2, timeout=60)
    for i in range(N):
        settles(fleet, i, lambda c: c.nodes_with_version("det", "1.0.0"), ids(fleet, 1, 2))
        settles(fleet, i, lambda c: c.nodes_with_version("det", "1.1.0"), ids(fleet, 0, 3))
    assert [store_bytes(fleet, i) for i in range(N)] == before     # no transfer at all
    for i in (1, 2):
        current = fleet.nodes[i].data_dir / "models" / "det" / "current"
        assert current.resolve().name == "1.0.0"


def test_explicit_variant_nodes_scope_and_blockers(fleet: LocalFleet, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "cam", 1 * MiB, seed=41)
    api(fleet, 0, lambda c: c.control.publish(str(pkg), "cam", "1.0.0"))
    h = api(fleet, 0, lambda c: c.distribute_model_variant(
        "cam", "1.0.0", "int8-cpu", DistributionScope.capable(min_gpu_mem_gb=4)))
    assert h.variant_id == "int8-cpu" and h.targets == 2
    converged(fleet, 0, "cam", "1.0.0", 2)
    for i in (0, 2):   # GPU nodes, but the operator asked for the CPU variant
        st = api(fleet, i, model_of("cam", fleet.nodes[i].node_id))
        assert st.variant_id == "int8-cpu"
    # node1's GPU (2 GiB) is too small for fp16-gpu: a failed node with a blocker
    api(fleet, 0, lambda c: c.distribute_model_variant(
        "cam", "1.0.0", "fp16-gpu", DistributionScope.nodes("node1")))

    async def blocked(c: ShoalClient) -> ModelConvergenceStatus | None:
        s = await c.convergence_status("cam", "1.0.0")
        return s if s.failed == 1 and s.is_complete else None
    s = wait_for(fleet, 3, blocked, 60)          # asked at a node outside both scopes
    assert (s.total_platforms, s.converged, s.failed) == (3, 2, 1)
    assert not s.is_success
    [b] = s.blockers
    assert b.node_id == fleet.nodes[1].node_id
    assert b.reason is BlockerReason.INSUFFICIENT_GPU_MEMORY and "GiB" in b.details
    # a rollback never installs a model where it was not: node3 never ran "cam"
    with pytest.raises(EmptyScope, match="matches none"):
        api(fleet, 0, lambda c: c.rollback("cam", "1.0.0", DistributionScope.nodes("node3")))


def test_cancel_mid_transfer_from_another_node(fleet: LocalFleet, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "big", 40 * MiB, seed=51)     # int8-cpu: 20 MiB at 2 MiB/s
    api(fleet, 0, lambda c: c.control.publish(str(pkg), "big", "1.0.0"))
    slow = fleet.nodes[SLOW].node_id
    h = api(fleet, 0, lambda c: c.distribute_model("big", "1.0.0",
                                                   DistributionScope.formation("bravo")))
    assert h.targets == 2

    async def moving(c: ShoalClient) -> ModelConvergenceStatus | None:
        try:
            st = await c.node_model_status("big", slow)
            s = await c.convergence_status("big", "1.0.0")
        except (UnknownModel, UnknownVersion):    # gossip has not brought it to node1 yet
            return None
        ok = (st is not None and st.status is ModelOperationalStatus.DOWNLOADING
              and st.bytes_done > 0 and s.estimated_completion is not None
              and s.estimated_completion > 0)
        return s if ok else None
    s = wait_for(fleet, 1, moving, 60, every=0.2)   # node1 is outside the scope
    assert s.total_platforms == 2 and s.in_progress >= 1
    # node1 knows the handle by gossip and cancels it
    wait_for(fleet, 1, lambda c: c.handles("big"), 30)
    c1 = api(fleet, 1, lambda c: c.cancel(h.handle_id))
    assert c1.cancels == h.handle_id and c1.kind.value == "cancel"
    assert api(fleet, 1, lambda c: c.cancel(h)).handle_id == c1.handle_id   # idempotent

    async def knows_cancel(c: ShoalClient) -> bool:
        return any(x.cancelled_by for x in await c.handles("big"))
    wait_for(fleet, 0, knows_cancel, 30)
    c2 = api(fleet, 0, lambda c: c.cancel(h))       # ... at another node too, once it knows
    assert c2.handle_id == c1.handle_id

    async def stopped(c: ShoalClient) -> bool:
        st = await c.node_model_status("big", slow)
        return st is not None and st.status is ModelOperationalStatus.NOT_DEPLOYED
    wait_for(fleet, SLOW, stopped, 30)
    st = api(fleet, SLOW, lambda c: c.node_model_status("big", slow))
    assert st.active_version == "" and st.version == "" and st.intent_id == ""
    held = store_bytes(fleet, SLOW)
    trio.run(trio.sleep, 2.0)
    assert store_bytes(fleet, SLOW) == held                # transfers stopped
    async def untargeted(c: ShoalClient) -> bool:
        return (await c.convergence_status("big", "1.0.0")).total_platforms == 0
    wait_for(fleet, 2, untargeted, 30)                     # no node targets it any more
    async def listed(c: ShoalClient) -> bool:
        return any(x.handle_id == h.handle_id and x.cancelled_by == c1.handle_id
                   for x in await c.handles("big"))
    wait_for(fleet, 3, listed, 30)
    with pytest.raises(UnknownIntent, match="itself a cancel"):
        api(fleet, 0, lambda c: c.cancel(c1.handle_id))


# ---------------------------------------------------------------------------- CLI + docs


def _shoal(f: LocalFleet, i: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "agent._cli", *args, "--socket",
                           f.socket(i)], capture_output=True, text=True, env=env, timeout=60)


def test_cli_commands(fleet: LocalFleet) -> None:
    r = _shoal(fleet, 2, "status", "det", "1.1.0", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["converged"] == obj["total_platforms"] == 2 and obj["is_success"]
    r = _shoal(fleet, 0, "nodes", "det", "1.0.0", "--json")
    assert json.loads(r.stdout)["node_ids"] == ids(fleet, 1, 2)
    r = _shoal(fleet, 0, "node", "cam", "node1")
    assert r.returncode == 0 and "insufficient_gpu_memory" in r.stdout
    r = _shoal(fleet, 0, "distribute", "det", "1.0.0", "--scope", "formation=zulu", "--json")
    assert r.returncode == 2 and "matches none" in json.loads(r.stdout)["error"]
    r = _shoal(fleet, 0, "distribute", "det", "1.0.0", "--scope", "capable:gpu=1")
    assert r.returncode == 2 and "min-gpu-mem-gb" in r.stderr
    r = _shoal(fleet, 3, "status", "det", "1.0.0", "--watch")   # complete: one row, ends
    assert r.returncode == 0 and "converged" in r.stdout and "2/2" in r.stdout, r.stderr
    r = _shoal(fleet, 0, "distribute", "cam", "1.0.0", "--scope", "nodes=node3",
               "--priority", "low", "--json")
    assert r.returncode == 0, r.stderr
    handle = json.loads(r.stdout)
    assert handle["priority"] == "low" and handle["scope"] == "nodes=node3"
    r = _shoal(fleet, 0, "cancel", handle["handle_id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cancels"] == handle["handle_id"]


def test_docs_python_example_runs(fleet: LocalFleet) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "API.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert blocks, "docs/API.md has no python example"
    ns: dict[str, Any] = {}
    exec(compile(blocks[0], "docs/API.md", "exec"), ns)   # defines example(socket_path)
    out = trio.run(ns["example"], fleet.socket(2))
    assert out["nodes_on_1.1.0"] == ids(fleet, 0, 3)
    assert out["final"].is_complete
