"""A fleet larger than the overlay degree, in network namespaces, found by mDNS alone.

24 hosts, each a Linux network namespace on one private bridge (10.213.8.0/24, a
subnet that exists only there), each running a real ``shoal daemon`` with no static
peers: they find each other only by real multicast DNS across the bridge. Every
daemon learns of all 23 others (its known set) yet keeps at most ``degree + slack``
sessions (default 8 + 2) at every poll (a session being declined is open a moment
longer, until its "full, try these" has been written), and a model published and distributed on host
0 reaches all 24 through the overlay; hosts far from the publisher answer the same
convergence report.

Namespaces, veths and the bridge are deleted afterwards, also on failure. Skipped,
with the reason, where namespaces cannot be created (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package
from protocol import OverlayConfig

pytestmark = pytest.mark.slow

N = 24
SUBNET = "10.213.8"
_TAG = f"{os.getpid() % 100000}"
BRIDGE = f"shob{_TAG}"
LIMIT = OverlayConfig().degree + OverlayConfig().slack


def _ns(i: int) -> str:
    return f"shoal-o{_TAG}-{i}"


def _addr(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


def _run(*args: str, ns: str | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (package iproute2) is not installed"
    return None


def _teardown() -> None:
    for i in range(N):
        _run("ip", "netns", "del", _ns(i), check=False)
    _run("ip", "link", "del", BRIDGE, check=False)


def _setup() -> None:
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0", check=False)
    _run("ip", "link", "set", BRIDGE, "up")
    for i in range(N):
        ns, outer, inner = _ns(i), f"sho{_TAG}o{i}", f"sho{_TAG}i{i}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "master", BRIDGE)
        _run("ip", "link", "set", outer, "up")
        _run("ip", "link", "set", "lo", "up", ns=ns)
        _run("ip", "addr", "add", f"{_addr(i)}/24", "dev", inner, ns=ns)
        _run("ip", "link", "set", inner, "up", ns=ns)
        _run("ip", "route", "add", "224.0.0.0/4", "dev", inner, ns=ns)


class Hosts(LocalFleet):
    """Node ``i`` runs in namespace ``_ns(i)``, listening and advertising at ``_addr(i)``."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, N, extra_config=FAST_GOSSIP)
        for i, node in enumerate(self.nodes):
            text = node.config_path.read_text()
            text = text.replace('listen_address = "127.0.0.1"',
                                f'listen_address = "{_addr(i)}"')
            text = text.replace('interfaces = ["127.0.0.1"]', f'interfaces = ["{_addr(i)}"]')
            assert _addr(i) in text and "static_peers = []" in text   # mDNS alone
            node.config_path.write_text(text)

    def start(self, i: int) -> None:
        node = self.nodes[i]
        log = open(node.data_dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.procs[i] = subprocess.Popen(
            ["ip", "netns", "exec", _ns(i), sys.executable, "-m", "agent._cli", "daemon",
             "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()


@pytest.fixture()
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    _teardown()   # leftovers of a killed earlier run with the same pid
    try:
        _setup()
    except (subprocess.CalledProcessError, OSError) as exc:
        _teardown()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        pytest.skip(f"cannot create network namespaces here: {detail}")
    fleet = Hosts(tmp_path / "hosts")
    try:
        fleet.start_all()
        yield fleet
    finally:
        fleet.stop_all()
        _teardown()


async def _overlay(fleet: LocalFleet, i: int) -> dict[str, int]:
    st = await fleet.call(i, lambda c: c.status())
    return {k: int(v) for k, v in json.loads(st.statistics_json)["overlay"].items()}


def test_24_hosts_found_by_mdns_converge_over_a_bounded_overlay(hosts: Hosts,
                                                                tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg", 512 * 1024, seed=3)
    most = most_open = 0
    t0 = time.monotonic()

    async def poll() -> list[dict[str, int]]:
        nonlocal most, most_open
        stats = [await _overlay(hosts, i) for i in range(N)]
        most = max(most, *(s["active"] for s in stats))
        most_open = max(most_open, *(s["sessions"] for s in stats))
        return stats

    async def scenario() -> None:
        for i in range(N):
            await hosts.wait_ready(i, timeout=60)
        # mDNS alone: every host learns of all the others, and fills its active set (a
        # host whose session a peer trimmed holds that one slot for 10-20 s: degree - 1)
        with trio.fail_after(40):
            while True:
                stats = await poll()
                if all(s["known"] == N - 1 and s["active"] >= OverlayConfig().degree - 1
                       for s in stats):
                    break
                await trio.sleep(0.5)
        await hosts.call(0, lambda c: c.publish(str(pkg), "wide", "1.0.0"))
        await hosts.call(0, lambda c: c.distribute_model("wide", "1.0.0"))
        with trio.fail_after(45):
            while True:
                rep = await hosts.call(0, lambda c: c.convergence_status("wide", "1.0.0"))
                if rep.is_success and rep.total_platforms == N:
                    break
                await poll()
                await trio.sleep(0.5)
        for i in (N - 1, N // 2):       # hosts far from the publisher answer the same
            rep = await hosts.wait_converged(i, "wide", "1.0.0", timeout=20)
            assert (rep.total_platforms, rep.converged, rep.failed) == (N, N, 0)
        stats = await poll()
        print(f"netns overlay: {N} hosts, sessions kept per host at most {most} "
              f"(limit {LIMIT}; open, counting those being declined, {most_open}), "
              f"known {min(s['known'] for s in stats)}-"
              f"{max(s['known'] for s in stats)}, dials {sum(s['dials'] for s in stats)}, "
              f"declined {sum(s['declined'] for s in stats)}; "
              f"{time.monotonic() - t0:.1f} s")
        assert most <= LIMIT, stats
        # a session being declined is open for the moment its "full, try these" takes
        assert most_open <= LIMIT + 3, stats

    try:
        trio.run(scenario)
    except BaseException:
        for i, node in enumerate(hosts.nodes[:4]):
            log = node.data_dir / "daemon.log"
            tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else []
            print(f"--- host {i}\n" + "\n".join(tail))
        raise
    for i in range(N):
        current = hosts.nodes[i].data_dir / "models" / "wide" / "current"
        assert current.resolve().name == "1.0.0"
