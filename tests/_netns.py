"""Hosts in network namespaces on one bridge, for the multi-host tests (NOTES.md): a
:class:`Segment` makes and removes them; a :class:`NamespaceFleet` runs a daemon in
each, listening and advertising (mDNS) at its host's address."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent._demo.fleet import LocalFleet

__all__ = ["NamespaceFleet", "Segment", "why_not"]


def why_not(need_tc: bool = False) -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None or (need_tc and shutil.which("tc") is None):
        return "the `ip`/`tc` commands (package iproute2) are not installed"
    return None


class Segment:
    """``n`` namespaces on a bridge, host ``i`` at ``subnet.(10 + i)``. ``name`` (a
    letter or two) keeps each test's namespaces, veths and bridge apart, with the pid
    (one run's leftovers are removed by the next run with the same pid)."""

    def __init__(self, n: int, name: str, subnet: str) -> None:
        self.n = n
        self.tag = f"{os.getpid() % 100000}"
        self.name = name
        self.subnet = subnet
        self.bridge = f"sh{name}b{self.tag}"

    def ns(self, i: int) -> str:
        return f"shoal-{self.name}{self.tag}-{i}"

    def addr(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def outer(self, i: int) -> str:
        """Host ``i``'s veth end on the bridge (down: the host is cut off)."""
        return f"sh{self.name}{self.tag}o{i}"

    def inner(self, i: int) -> str:
        return f"sh{self.name}{self.tag}i{i}"

    @staticmethod
    def run(*args: str, ns: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)

    def teardown(self) -> None:
        for i in range(self.n):
            self.run("ip", "netns", "del", self.ns(i), check=False)
        self.run("ip", "link", "del", self.bridge, check=False)

    def setup(self, shape: Callable[[int], None] | None = None) -> None:
        """Make the bridge and the hosts; ``shape(i)`` then shapes host ``i``'s link."""
        run, bridge = self.run, self.bridge
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "link", "set", bridge, "type", "bridge", "mcast_snooping", "0", check=False)
        run("ip", "link", "set", bridge, "up")
        for i in range(self.n):
            ns, outer, inner = self.ns(i), self.outer(i), self.inner(i)
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            run("ip", "link", "set", inner, "netns", ns)
            run("ip", "link", "set", outer, "master", bridge)
            run("ip", "link", "set", outer, "up")
            run("ip", "link", "set", "lo", "up", ns=ns)
            run("ip", "addr", "add", f"{self.addr(i)}/24", "dev", inner, ns=ns)
            run("ip", "link", "set", inner, "up", ns=ns)
            run("ip", "route", "add", "224.0.0.0/4", "dev", inner, ns=ns)
            if shape is not None:
                shape(i)


class NamespaceFleet(LocalFleet):
    """A :class:`LocalFleet` whose node ``i`` runs in ``segment.ns(i)`` and listens and
    advertises at ``segment.addr(i)``; ``mdns_only``: no static peers (asserted)."""

    def __init__(self, base: Path, segment: Segment, extra_config: str,
                 mdns_only: bool = False) -> None:
        super().__init__(base, segment.n, extra_config=extra_config)
        self.segment = segment
        for i, node in enumerate(self.nodes):
            addr = segment.addr(i)
            text = node.config_path.read_text()
            text = text.replace('listen_address = "127.0.0.1"', f'listen_address = "{addr}"')
            text = text.replace('interfaces = ["127.0.0.1"]', f'interfaces = ["{addr}"]')
            assert addr in text and (not mdns_only or "static_peers = []" in text)
            node.config_path.write_text(text)

    def start(self, i: int) -> None:
        node = self.nodes[i]
        log = open(node.data_dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.procs[i] = subprocess.Popen(
            ["ip", "netns", "exec", self.segment.ns(i), sys.executable, "-m", "agent._cli",
             "daemon", "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
