"""Multi-host test: real ``shoal daemon`` processes in network namespaces on a bridge.

Four hosts, each a Linux network namespace with one veth into a private bridge
and an address in 10.213.7.0/24 (a subnet that exists only on that bridge, so
the test only ever talks to its own namespaces). Each host runs a real daemon
(``ip netns exec NS python -m agent._cli daemon``) listening on its namespace
address, with mDNS bound to that address: peers find each other by real
multicast across the bridge. One host sits behind a slow link (``tc tbf`` at
8 mbit/s, both directions). A model published on host 0 and distributed to
all must reach every host, and every host's control socket (a Unix socket,
reachable from the test's namespace) must report the rollout complete.

A second test cuts one host's link mid-rollout (``ip link set VETH down`` on
the bridge side): the others complete the rollout, the fleet's convergence
report shows the cut host with a ``network_partition`` blocker once the
(shortened) ``unreachable_after`` has passed, the cut host keeps answering its
control socket, and once the link is back the fleet converges 4/4 and every
host reports the same.

Namespaces, veths and the bridge are deleted afterwards, also on failure.
Skipped, with the reason, where namespaces cannot be created (not root, no
``ip`` from iproute2, or the kernel refuses).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package

from ._netns import NamespaceFleet, Segment, why_not

pytestmark = pytest.mark.slow

N = 4
SLOW = 3                       # this host's link is shaped to 8 mbit/s
SUBNET = "10.213.7"
MiB = 1024 * 1024
# liveness shortened so a partition shows within seconds (defaults: 10 s / 30 s)
SUSPECT_AFTER, UNREACHABLE_AFTER = 2.0, 4.0
LIVENESS = f"suspect_after = {SUSPECT_AFTER}\nunreachable_after = {UNREACHABLE_AFTER}\n"
SEG = Segment(N, "v", SUBNET)
_ns, _addr, _outer, _ip = SEG.ns, SEG.addr, SEG.outer, SEG.run


def _shape(i: int) -> None:
    """Host SLOW's link, both ways, at 8 mbit/s."""
    if i == SLOW:
        tbf = ["root", "tbf", "rate", "8mbit", "burst", "32kbit", "latency", "400ms"]
        _ip("tc", "qdisc", "add", "dev", SEG.inner(i), *tbf, ns=_ns(i))   # its upload
        _ip("tc", "qdisc", "add", "dev", SEG.outer(i), *tbf)              # its download


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceFleet]:
    reason = why_not(need_tc=True)
    if reason is not None:
        pytest.skip(reason)
    SEG.teardown()   # leftovers of a killed earlier run with the same pid
    try:
        SEG.setup(_shape)
    except (subprocess.CalledProcessError, OSError) as exc:
        SEG.teardown()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        pytest.skip(f"cannot create network namespaces here: {detail}")
    try:
        fleet = NamespaceFleet(tmp_path_factory.mktemp("netns"), SEG, FAST_GOSSIP + LIVENESS)
        with fleet.running():      # every test starts from a meshed fleet, alone or not
            yield fleet
    finally:
        SEG.teardown()


def _logs(fleet: LocalFleet) -> str:
    out = []
    for i, node in enumerate(fleet.nodes):
        log = node.data_dir / "daemon.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        out.append(f"--- host {i}\n" + "\n".join(tail))
    return "\n".join(out)


def test_rollout_across_namespaces_with_a_slow_link(hosts: NamespaceFleet,
                                                    tmp_path: Path) -> None:
    # the namespaces really are separate hosts: host 0 cannot reach 127.0.0.1 of host 1,
    # and the slow link is shaped
    qdisc = _ip("tc", "qdisc", "show", "dev", SEG.inner(SLOW), ns=_ns(SLOW)).stdout
    assert "tbf" in qdisc and "8Mbit" in qdisc
    pkg = make_package(tmp_path / "pkg", 16 * MiB, seed=5)   # int8-cpu variant: 8 MiB

    async def scenario() -> None:
        for i in range(N):
            await hosts.wait_ready(i, timeout=30)
        for i in range(N):   # real mDNS across the bridge: every host finds the others
            await hosts.wait_peers(i, N - 1, timeout=30)
        peers = await hosts.call(0, lambda c: c.peers())
        assert {p.address.split(":")[0] for p in peers.peers} == \
            {_addr(i) for i in range(1, N)}
        await hosts.call(0, lambda c: c.publish(str(pkg), "det", "1.0.0"))
        await hosts.call(0, lambda c: c.distribute_model("det", "1.0.0"))
        await hosts.wait_converged(0, "det", "1.0.0", timeout=60)
        # every host answers the same: all N operational on 1.0.0, none failed
        for i in range(N):
            rep = await hosts.wait_converged(i, "det", "1.0.0", timeout=20)
            assert (rep.total_platforms, rep.converged, rep.failed, rep.pending) == \
                (N, N, 0, 0)
            assert rep.is_complete and rep.is_success
            nodes = await hosts.call(i, lambda c: c.nodes_with_version("det", "1.0.0"))
            assert nodes == tuple(sorted(n.node_id for n in hosts.nodes))

    try:
        trio.run(scenario)
    except BaseException:
        print(_logs(hosts))
        raise
    for i in range(N):
        current = hosts.nodes[i].data_dir / "models" / "det" / "current"
        assert current.resolve().name == "1.0.0"


def test_partition_mid_rollout_then_heal(hosts: NamespaceFleet, tmp_path: Path) -> None:
    cut = SLOW                    # its 8 mbit/s link keeps the rollout in flight when cut
    rest = [i for i in range(N) if i != cut]
    pkg = make_package(tmp_path / "pkg", 16 * MiB, seed=11)   # a different model: "part"
    ids = [n.node_id for n in hosts.nodes]

    async def scenario() -> None:
        for i in range(N):
            await hosts.wait_peers(i, N - 1, timeout=30)
        await hosts.call(0, lambda c: c.publish(str(pkg), "part", "1.0.0"))
        await hosts.call(0, lambda c: c.distribute_model("part", "1.0.0"))
        await trio.sleep(0.5)     # the rollout has started everywhere ...
        _ip("ip", "link", "set", _outer(cut), "down")        # ... cut host 3 off
        t_cut = trio.current_time()
        # the other side goes on: 0-2 complete; host 3 is not converged
        with trio.fail_after(30):
            while True:
                nodes = await hosts.call(0, lambda c: c.nodes_with_version("part", "1.0.0"))
                if set(nodes) >= {ids[i] for i in rest}:
                    break
                await trio.sleep(0.3)
        assert ids[cut] not in nodes
        t_rest = trio.current_time() - t_cut
        # host 0 reports host 3 cut off, once it has been silent unreachable_after
        with trio.fail_after(SUSPECT_AFTER + UNREACHABLE_AFTER + 15):
            while True:
                rep = await hosts.call(0, lambda c: c.convergence_status("part", "1.0.0"))
                blocked = {b.node_id for b in rep.blockers if b.reason == "network_partition"}
                if blocked:
                    break
                await trio.sleep(0.3)
        assert blocked == {ids[cut]}
        t_blocked = trio.current_time() - t_cut
        assert (rep.total_platforms, rep.converged, rep.failed) == (N, N - 1, 0)
        assert not rep.is_success
        for i in rest[1:]:        # the connected side agrees
            rep_i = await hosts.call(i, lambda c: c.convergence_status("part", "1.0.0"))
            assert rep_i.converged == N - 1
        # the cut host is alive: its daemon answers its control socket
        proc = hosts.procs[cut]
        assert proc is not None and proc.poll() is None
        st = await hosts.call(cut, lambda c: c.status())
        assert st is not None
        # heal: every host converges 4/4 and reports the same
        _ip("ip", "link", "set", _outer(cut), "up")
        t_heal = trio.current_time()
        for i in range(N):
            rep = await hosts.wait_converged(i, "part", "1.0.0", timeout=40)
            assert (rep.total_platforms, rep.converged, rep.failed, rep.pending) == \
                (N, N, 0, 0)
            assert not any(b.reason == "network_partition" for b in rep.blockers)
            nodes = await hosts.call(i, lambda c: c.nodes_with_version("part", "1.0.0"))
            assert nodes == tuple(sorted(ids))
        stalled = 0     # pieces that waited on the cut connection past the upload window
        for i in rest:
            st = await hosts.call(i, lambda c: c.status())
            stalled += json.loads(st.statistics_json)["swarm"]["uploads_stalled"]
        print(f"reliability/partition: hosts 0-2 done {t_rest:.1f} s after the cut, "
              f"network_partition shown at {t_blocked:.1f} s, 4/4 everywhere "
              f"{trio.current_time() - t_heal:.1f} s after the heal; "
              f"{stalled} uploads stalled")

    try:
        trio.run(scenario)
    except BaseException:
        print(_logs(hosts))
        raise
    finally:
        _ip("ip", "link", "set", _outer(cut), "up", check=False)
    current = hosts.nodes[cut].data_dir / "models" / "part" / "current"
    assert current.resolve().name == "1.0.0"
