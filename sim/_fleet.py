"""The fleet driver: real :class:`protocol._node.NodeMachine` objects on the
simulated network.

Theory of operation
-------------------
The driver plays the part ``agent/`` plays in a real node, with the network,
disk and clock replaced by :mod:`sim._network` and virtual time:

* every node gets a deterministic Ed25519 key (derived from the run's seed),
  a root-signed certificate, and one *shared* :class:`FleetTrust` (the same
  content every node would build; sharing it saves N^2 signature checks);
* the overlay decides which pairs hold a session. By default (``overlay``) it is
  the daemon's own rule, run by each machine (``protocol/_overlay.py``): every
  node is told of the others as mDNS would tell it (``peer_known``; a random
  ``known_max`` of them in a larger fleet), and the driver carries out the
  machine's ``DialPeer`` (a session one round trip later, or ``dial_failed`` a
  second later when the peer is down, unreachable or banned) and ``ClosePeer``
  (the session closes; an ``OverlayFull`` already sent still arrives). The fixed
  topologies turn the machines' overlay off (degree 0) and decide themselves:
  ``full``, a random ``degree``-regular-ish graph (``random``), or ``hub`` (every
  node connected only to the seeder); a session exists while both ends are up and
  reachable (partitions cut sessions and healing re-dials them, as discovery
  would);
* outputs are carried out as the agent would: ``SendMessage`` goes through the
  network with its encoded size; ``ServeChunk`` sends a ``Piece`` of the chunk's token
  charged at the chunk's declared size (a liar serves a wrong token);
  ``StoreChunk`` answers ``chunk_stored`` after ``disk_delay``;
  ``InstallVariant`` answers ``install_finished(ok=True)`` after
  ``install_delay``; ``DropPeer`` closes the session on both sides and the pair
  is not re-dialled for the ``ban_for`` seconds the machine decided (a finite ban
  re-dials when it ends, as the daemon's dialler does); ``PersistLedger`` needs
  nothing (the ledger object *is* the disk copy); timers follow ``next_deadline()``;
* a node's *disk* (held chunks, installed versions, its ledger object) survives
  a crash; everything else (the machine, its sessions, messages in flight) is
  lost and rebuilt on restart.

The tests drive whole machines in-process through this class too
(``tests/_fleet.InProcessFleet``): chunks with real bytes (:meth:`Fleet.add_chunks`),
``on_output`` hooks, sessions opened and closed by hand (:meth:`Fleet.connect`,
:meth:`Fleet.disconnect`), :meth:`Fleet.pump` after a call made on a machine
directly, and ``identity_seed`` to share one set of keys across seeds. None of them
changes a run that does not use it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from protocol import (
    ActivateVersion,
    BlockerReason,
    Certificate,
    ClosePeer,
    Config,
    DialPeer,
    DropPeer,
    FleetTrust,
    InstallVariant,
    Notice,
    OverlayFull,
    PersistLedger,
    Piece,
    ProtocolError,
    RemoveVersions,
    Role,
    SendMessage,
    ServeChunk,
    StoreChunk,
    decode,
    encode,
    verify_signature,
)

from ._content import SyntheticModel, verify_token
from ._loop import EventLoop, derive_rng
from ._network import LinkProfile, Network
from ._nodes import (
    DEFAULT_CAPABILITIES,
    PIECE_OVERHEAD,
    PIECE_TYPE,
    Disk,
    FleetStatistics,
    NodeSpec,
    SimNode,
    message_size,
    seeded_identity,
)
from ._speedups import SignatureMemo

__all__ = ["NodeSpec", "Fleet", "FleetStatistics", "SimNode", "Disk", "PIECE_TYPE",
           "DEFAULT_CAPABILITIES", "PIECE_OVERHEAD", "message_size", "seeded_identity"]

class Fleet:
    """N simulated nodes, one seed, one virtual clock."""

    def __init__(self, specs: list[NodeSpec], *, seed: int, config: Config | None = None,
                 profile: LinkProfile | None = None, topology: str = "overlay",
                 degree: int | None = None, seeder: int = 0, disk_delay: float = 0.0,
                 install_delay: float = 0.05, wire_check: bool = False,
                 machine_factory: Callable[..., Any] | None = None,
                 memo_signatures: bool = True, identity_seed: int | str | None = None,
                 disk_limits: bool = False) -> None:
        self.seed = seed
        # the keys (root, publisher, operator, nodes) derive from ``identity_seed`` when
        # given, so fleets that differ in their random draws can share one set of keys
        keys = seed if identity_seed is None else identity_seed
        config = config if config is not None else Config(fleet_id="sim")
        # the machines' own overlay runs only in "overlay"; the fixed topologies turn it off
        if topology == "overlay":
            if degree is not None:
                config = dataclasses.replace(config, overlay=dataclasses.replace(
                    config.overlay, degree=degree))
            degree = config.overlay.degree
        else:
            config = dataclasses.replace(config, overlay=dataclasses.replace(
                config.overlay, degree=0))
            degree = 8 if degree is None else degree
        self.config = config
        self.topology = topology
        self.degree = degree
        self.loop = EventLoop()
        self.net = Network(self.loop, derive_rng(seed, "network"),
                           profile if profile is not None else LinkProfile(), self._deliver)
        self.disk_delay = disk_delay
        self.disk_limits = disk_limits
        self.install_delay = install_delay
        self.wire_check = wire_check
        self.seeder = seeder
        fleet_id = self.config.fleet_id
        self.root = seeded_identity(keys, "root")
        self.publisher = seeded_identity(keys, "publisher")
        self.operator = seeded_identity(keys, "operator")
        # one signature check for the whole fleet: each distinct signature checked once
        self.trust = FleetTrust(fleet_id, self.root.public_key, verifier=(
            SignatureMemo() if memo_signatures else verify_signature))
        for ident, role, name in ((self.publisher, Role.PUBLISHER, "publisher"),
                                  (self.operator, Role.OPERATOR, "operator")):
            self.trust.add_certificate(Certificate.issue(self.root, fleet_id, ident.public_key,
                                                         role, name, 0))
        self.nodes: list[SimNode] = []
        for i, spec in enumerate(specs):
            ident = seeded_identity(keys, f"node/{i}")
            cert = Certificate.issue(self.root, fleet_id, ident.public_key, Role.NODE,
                                     spec.name or f"n{i}", 0)
            self.trust.add_certificate(cert)
            node = SimNode(i, spec, ident, cert)
            self.nodes.append(node)
            self.net.add_node(node.node_id, spec.up, spec.down)
        self.by_id = {n.node_id: n for n in self.nodes}
        self.tokens: dict[bytes, bytes] = {}
        self.sizes: dict[bytes, int] = {}
        self.edges = self._overlay(topology, degree, derive_rng(seed, "overlay"))
        self.neighbours: dict[int, set[int]] = {i: set() for i in range(len(specs))}
        for a, b in self.edges:
            self.neighbours[a].add(b)
            self.neighbours[b].add(a)
        self.banned: dict[frozenset[str], float] = {}   # pair -> virtual time the ban ends
        if machine_factory is None:
            from protocol import NodeMachine
            machine_factory = NodeMachine
        self._factory = machine_factory
        self.on_store: list[Callable[[SimNode, bytes], None]] = []
        self.on_receive: list[Callable[[SimNode, str, Any], None]] = []
        # called (node, output) for every output of a machine, before it is carried out
        self.on_output: list[Callable[[SimNode, Any], None]] = []
        self._messages = self._bytes = self._piece_bytes = self._pieces_in = 0
        self._drops = self._errors = 0
        self._notices: dict[str, int] = {}
        self.bytes_by_type: dict[str, int] = {}
        self.drop_log: list[tuple[float, str, str, str]] = []
        for node in self.nodes:
            self.loop.call_at(node.spec.join_at, self.start, node.index)

    # ------------------------------------------------------------------ setup

    def _overlay(self, topology: str, degree: int, rng: random.Random) -> set[tuple[int, int]]:
        n = len(self.nodes)
        edges: set[tuple[int, int]] = set()
        if topology == "overlay":
            pass                        # each machine decides (protocol/_overlay.py)
        elif topology == "hub":
            edges = {(min(self.seeder, i), max(self.seeder, i)) for i in range(n)
                     if i != self.seeder}
        elif topology == "full" or n <= degree + 1:
            edges = {(a, b) for a in range(n) for b in range(a + 1, n)}
        elif topology == "random":
            # a ring for connectivity plus degree - 2 random chords per node, paired like
            # the configuration model (each node's chord ends shuffled and matched), so
            # every node has about ``degree`` neighbours: uniformly random chords would
            # leave ~e^-(degree-2) of the nodes with only their two ring links
            for i in range(n):
                j = (i + 1) % n
                edges.add((min(i, j), max(i, j)))
            stubs = [i for i in range(n) for _ in range(max(0, degree - 2))]
            for _ in range(50):
                if len(stubs) < 2:
                    break
                rng.shuffle(stubs)
                paired = len(stubs) - len(stubs) % 2
                left = stubs[paired:]   # an odd one out waits for the next shuffle
                for a, b in zip(stubs[0:paired:2], stubs[1:paired:2], strict=True):
                    e = (min(a, b), max(a, b))
                    if a == b or e in edges:
                        left += (a, b)
                    else:
                        edges.add(e)
                stubs = left
        else:
            raise ValueError(f"unknown topology {topology!r}: use overlay, full, random or hub")
        return edges

    def add_content(self, model: SyntheticModel, holders: Iterable[int]) -> None:
        """Put every chunk of ``model`` on the disks of ``holders`` (before they start)."""
        self.tokens.update(model.tokens)
        self.sizes.update(model.sizes)
        hashes = model.chunk_hashes
        for i in holders:
            self.nodes[i].disk.held.update(hashes)

    def add_chunks(self, chunks: Mapping[bytes, bytes], holders: Iterable[int]) -> None:
        """Put chunks given by their real bytes (hash -> bytes) on the disks of ``holders``;
        a piece of one carries those bytes and is charged their length. A holder that is
        already running is told (``chunk_stored``)."""
        for h, data in chunks.items():
            self.tokens[h] = data
            self.sizes[h] = len(data)
        for i in holders:
            node = self.nodes[i]
            node.disk.held.update(chunks)
            if node.alive:
                for h in chunks:
                    node.machine.chunk_stored(h, self.loop.now)
                self._pump(node)

    def install(self, model: SyntheticModel, holders: Iterable[int]) -> None:
        """Mark ``model`` as installed and active on ``holders`` (before they start)."""
        m = model.manifest
        for i in holders:
            disk = self.nodes[i].disk
            disk.installed.add((m.model_id, m.version, m.variants[0].variant_id))
            disk.active[m.model_id] = m.version

    # ------------------------------------------------------------------ lifecycle

    def start(self, index: int) -> None:
        node = self.nodes[index]
        if node.alive:
            return
        now = self.loop.now
        if not self.net.is_up(node.node_id):
            self.net.restart(node.node_id)
        node.machine = self._factory(
            config=self.config, identity=node.identity, certificate=node.certificate,
            trust=self.trust, rng=derive_rng(self.seed, f"node/{index}/{now!r}"), now=now,
            name=node.name, formation=node.spec.formation,
            capabilities=node.spec.capabilities, held_chunks=set(node.disk.held),
            ledger=node.disk.ledger, installed=sorted(node.disk.installed),
            chunk_verifier=verify_token)
        node.disk.ledger = node.machine.ledger
        node.alive = True
        node.life += 1
        node.timer_at = None
        self.loop.log("start", index)
        for j in sorted(self.neighbours[index]):
            self._connect(node, self.nodes[j])
        if self.topology == "overlay":
            self._discover(node)
        self._pump(node)

    def _discover(self, node: SimNode) -> None:
        """Tell a starting node of the others, as mDNS on one segment would (a random
        ``known_max`` of them when there are more: what its known set keeps anyway)."""
        others = [j for j in range(len(self.nodes)) if j != node.index]
        if self.net.link_classes:   # only the nodes a link joins it to
            joined = self.net.joined
            others = [j for j in others if joined(node.node_id, self.nodes[j].node_id)]
        cap = self.config.overlay.known_max
        if len(others) > cap:
            others = sorted(derive_rng(self.seed, f"known/{node.index}/{node.life}")
                            .sample(others, cap))
        now = self.loop.now
        for j in others:
            node.machine.peer_known(self.nodes[j].node_id, f"sim:{j}", now)

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        if not node.alive:
            return
        node.alive = False
        node.timer_gen += 1
        node.timer_at = None
        self.net.crash(node.node_id)
        for peer_id in sorted(node.peers):
            other = self.by_id[peer_id]
            other.peers.discard(node.node_id)
            other.machine.peer_disconnected(node.node_id, self.loop.now)
            self._pump(other)
        node.peers.clear()
        node.machine = None

    def split(self, groups: list[list[int]]) -> None:
        """Partition the fleet; sessions across the cut close."""
        self.net.split([[self.nodes[i].node_id for i in g] for g in groups])
        for node in self.nodes:
            if not node.alive:
                continue
            for peer_id in sorted(node.peers):
                if not self.net.reachable(node.node_id, peer_id):
                    self._disconnect(node, self.by_id[peer_id])

    def connect(self, a: int, b: int) -> None:
        """Open a session between nodes ``a`` and ``b`` (if both are up and reachable)."""
        self._connect(self.nodes[a], self.nodes[b])

    def disconnect(self, a: int, b: int) -> None:
        """Close the session between ``a`` and ``b``; messages in flight on it are lost.
        Nothing re-dials it but :meth:`connect` or :meth:`heal`."""
        self._disconnect(self.nodes[a], self.nodes[b])

    def set_link_state(self, cls: str, up: bool) -> None:
        """Bring link class ``cls`` down (sessions over it close, as keepalive would) or
        up (fixed topologies re-dial their edges; the overlay is told of the peers the
        class joins again, as discovery would tell it)."""
        if self.net.class_is_up(cls) == up:
            return
        self.net.set_class_state(cls, up)
        now = self.loop.now
        if not up:
            for node in self.nodes:
                if not node.alive:
                    continue
                for peer_id in sorted(node.peers):
                    if self.net.link_class(node.node_id, peer_id) == cls:
                        self._disconnect(node, self.by_id[peer_id])
            return
        for a, b in sorted(self.edges):
            if self.net.link_class(self.nodes[a].node_id, self.nodes[b].node_id) == cls:
                self._connect(self.nodes[a], self.nodes[b])
        if self.topology == "overlay":
            for node in self.nodes:
                if not node.alive:
                    continue
                for other in self.nodes:
                    if (other is not node
                            and self.net.link_class(node.node_id, other.node_id) == cls):
                        node.machine.peer_known(other.node_id, f"sim:{other.index}", now)
                self._pump(node)

    def heal(self) -> None:
        self.net.heal()
        for a, b in sorted(self.edges):
            self._connect(self.nodes[a], self.nodes[b])

    def _dial(self, index: int, life: int, peer: str) -> None:
        """Carry out a ``DialPeer`` (a round trip after it was asked for)."""
        node = self.nodes[index]
        if not node.alive or node.life != life:
            return
        other = self.by_id.get(peer)
        if other is not None and peer not in node.peers and self._can_connect(node, other):
            self._connect(node, other)
            if peer in node.peers:
                return
        if peer in node.peers:
            node.machine.dial_failed(peer, self.loop.now)   # raced with its inbound
            self._pump(node)
        else:   # refused, down or unreachable: the connect fails after a while
            self.loop.call_at(self.loop.now + 1.0, self._dial_failed, index, life, peer)

    def _dial_failed(self, index: int, life: int, peer: str) -> None:
        node = self.nodes[index]
        if node.alive and node.life == life:
            node.machine.dial_failed(peer, self.loop.now)
            self._pump(node)

    def _can_connect(self, a: SimNode, b: SimNode) -> bool:
        return (a.alive and b.alive
                and self.banned.get(frozenset((a.node_id, b.node_id)), -math.inf)
                <= self.loop.now
                and self.net.reachable(a.node_id, b.node_id))

    def _connect(self, a: SimNode, b: SimNode) -> None:
        """Open a session ``a`` dialled (``b`` sees it inbound)."""
        if not (a.alive and b.alive) or b.node_id in a.peers:
            return
        if self.banned.get(frozenset((a.node_id, b.node_id)), -math.inf) > self.loop.now:
            return
        if not self.net.reachable(a.node_id, b.node_id):
            return
        now = self.loop.now
        a.peers.add(b.node_id)
        b.peers.add(a.node_id)
        a.machine.peer_connected(b.node_id, now)
        b.machine.peer_connected(a.node_id, now, inbound=True)
        self._pump(a)
        self._pump(b)

    def _disconnect(self, a: SimNode, b: SimNode) -> None:
        if b.node_id not in a.peers:
            return
        now = self.loop.now
        a.peers.discard(b.node_id)
        b.peers.discard(a.node_id)
        for x, y in ((a, b), (b, a)):
            if x.alive:
                x.machine.peer_disconnected(y.node_id, now)
                self._pump(x)

    # ------------------------------------------------------------------ driving

    def _pump(self, node: SimNode, not_before: float | None = None) -> None:
        """Carry out everything the machine asked for, then follow its next deadline."""
        machine = node.machine
        if machine is None:
            return
        while True:
            outputs = machine.take_outputs()
            if not outputs:
                break
            for out in outputs:
                self._carry_out(node, out)
                if node.machine is not machine:
                    return  # crashed meanwhile
        deadline = machine.next_deadline()
        if deadline is None:
            return
        if not_before is not None and deadline < not_before:
            deadline = not_before  # a machine asking for "now" again must not stall time
        if deadline != node.timer_at:
            node.timer_at = deadline
            node.timer_gen += 1
            self.loop.call_at(max(deadline, self.loop.now), self._timer, node.index,
                              node.timer_gen)

    def _timer(self, index: int, gen: int) -> None:
        node = self.nodes[index]
        if not node.alive or gen != node.timer_gen:
            return
        node.timer_at = None
        now = self.loop.now
        node.machine.on_timer(now)
        self._pump(node, not_before=now + 1e-3)

    def _carry_out(self, node: SimNode, out: Any) -> None:
        now = self.loop.now
        if self.on_output:
            for hook in self.on_output:
                hook(node, out)
        if isinstance(out, SendMessage):
            if out.peer in node.peers:
                msg = out.message
                size = message_size(msg)
                if self.wire_check:
                    msg = decode(encode(msg))
                self._messages += 1
                self._bytes += size
                kind = type(msg).__name__
                self.bytes_by_type[kind] = self.bytes_by_type.get(kind, 0) + size
                self.net.send(node.node_id, out.peer, msg, size)
        elif isinstance(out, ServeChunk):
            if out.peer not in node.peers:
                return
            if out.chunk_hash not in node.disk.held or out.chunk_hash not in self.tokens:
                node.machine.chunk_missing(out.chunk_hash, now)
                return
            token = self.tokens[out.chunk_hash]
            if node.spec.liar:
                token = b"lie/" + token
            size = self.sizes[out.chunk_hash] + PIECE_OVERHEAD
            self._messages += 1
            self._bytes += size
            self._piece_bytes += size
            self.net.send(node.node_id, out.peer, Piece(out.chunk_hash, token, int(out.priority)),
                          size)
        elif isinstance(out, StoreChunk):
            if self.disk_limits and out.chunk_hash not in node.disk.held:
                size = self.sizes.get(out.chunk_hash, 0)
                free = node.spec.capabilities.storage_free_mb * 1024 * 1024
                if node.disk.stored_bytes + size > free:
                    self.loop.call_at(now + self.disk_delay, self._store_failed, node.index,
                                      node.life, out.chunk_hash)
                    return
                node.disk.stored_bytes += size
            self.loop.call_at(now + self.disk_delay, self._stored, node.index, node.life,
                              out.chunk_hash)
        elif isinstance(out, InstallVariant):
            self.loop.call_at(now + self.install_delay, self._installed, node.index, node.life,
                              out.model_id, out.version, out.variant_id)
        elif isinstance(out, ActivateVersion):
            node.disk.active[out.model_id] = out.version
            self.loop.log("activate", node.index, out.model_id, out.version)
        elif isinstance(out, RemoveVersions):
            self._remove_versions(node, out)
        elif isinstance(out, DropPeer):
            self._drops += 1
            self.drop_log.append((now, node.node_id, out.peer, out.reason))
            pair = frozenset((node.node_id, out.peer))
            until = max(self.banned.get(pair, -math.inf), now + out.ban_for)
            self.banned[pair] = until
            other = self.by_id.get(out.peer)
            if other is not None:
                self._disconnect(node, other)
                if until < math.inf:
                    self.loop.call_at(until, self._redial, node.index, other.index)
        elif isinstance(out, DialPeer):
            self.loop.call_at(now + 2 * self.net.latency(node.node_id, out.peer), self._dial,
                              node.index, node.life, out.peer)
        elif isinstance(out, ClosePeer):
            other = self.by_id.get(out.peer)
            if other is not None:
                self._disconnect(node, other)
        elif isinstance(out, PersistLedger):
            pass   # the ledger object survives a crash as it is: nothing to save
        elif isinstance(out, Notice):
            kind = out.kind.value
            self._notices[kind] = self._notices.get(kind, 0) + 1

    def _redial(self, a: int, b: int) -> None:
        """A finite ban between ``a`` and ``b`` may have ended: reconnect the pair if it
        is an overlay edge (and both are up and reachable)."""
        if (min(a, b), max(a, b)) in self.edges:
            self._connect(self.nodes[a], self.nodes[b])

    def _remove_versions(self, node: SimNode, out: RemoveVersions) -> None:
        """Delete the versions from the node's disk, and the chunks no version it keeps
        shares (as the daemon does), then tell the machine which went."""
        ledger = node.machine.ledger

        def chunks(model_id: str, version: str, variant_id: str) -> set[bytes]:
            m = ledger.manifest_for(model_id, version)
            return set() if m is None else {c.hash for f in m.variant(variant_id).files
                                            for c in f.chunks}
        gone_v = {x for x in node.disk.installed
                  if x[0] == out.model_id and x[1] in out.versions}
        node.disk.installed -= gone_v
        kept: set[bytes] = set()
        for x in node.disk.installed:
            kept |= chunks(*x)
        gone: set[bytes] = set()
        for x in gone_v:
            gone |= chunks(*x) - kept
        gone &= node.disk.held
        if gone:
            node.disk.held -= gone
            node.machine.chunks_gone(gone, self.loop.now)

    def _stored(self, index: int, life: int, chunk_hash: bytes) -> None:
        node = self.nodes[index]
        if not node.alive or node.life != life:
            return  # the write was lost with the crash
        node.disk.held.add(chunk_hash)
        for hook in self.on_store:
            hook(node, chunk_hash)
        node.machine.chunk_stored(chunk_hash, self.loop.now)
        self._pump(node)

    def _store_failed(self, index: int, life: int, chunk_hash: bytes) -> None:
        node = self.nodes[index]
        if not node.alive or node.life != life:
            return
        free = node.spec.capabilities.storage_free_mb
        node.machine.chunk_store_failed(chunk_hash, BlockerReason.INSUFFICIENT_STORAGE,
                                        f"disk full ({free} MB free at start)", self.loop.now)
        self._pump(node)

    def _installed(self, index: int, life: int, model_id: str, version: str,
                   variant_id: str) -> None:
        node = self.nodes[index]
        if not node.alive or node.life != life:
            return
        node.disk.installed.add((model_id, version, variant_id))
        node.disk.active[model_id] = version
        self.loop.log("installed", index, model_id, version)
        node.machine.install_finished(model_id, version, variant_id, True, None, "",
                                      self.loop.now)
        self._pump(node)

    def _deliver(self, dst: str, src: str, message: Any) -> None:
        node = self.by_id[dst]
        if not node.alive or (src not in node.peers and type(message) is not OverlayFull):
            return   # (a decline arrives after its session closed)
        if type(message) is PIECE_TYPE:
            node.piece_bytes_in += self.sizes.get(message.chunk_hash, len(message.data))
            self._pieces_in += 1
        for hook in self.on_receive:
            hook(node, src, message)
        try:
            node.machine.receive(src, message, self.loop.now)
        except ProtocolError as exc:
            self._errors += 1
            node.machine.take_outputs()
            self.loop.log("protocol-error", node.index, type(exc).__name__)
            self.banned[frozenset((dst, src))] = math.inf   # a machine that raised: never
            self._disconnect(node, self.by_id[src])
            return
        self._pump(node)

    def report_uploads(self) -> None:
        """From now on, tell each node's machine when a piece it served has left its
        uplink (``NodeMachine.upload_done``), as a real driver learns when its ``send``
        returns: the machine then keeps its upload queue in the swarm engine
        (``SwarmConfig.upload_window``), where it is ordered, instead of in the link."""
        self.net.on_sent = self._piece_sent
        self.net.sent_small = (PIECE_TYPE,)    # a piece of a small chunk too

    def _piece_sent(self, src: str, dst: str, message: Any) -> None:
        if type(message) is not PIECE_TYPE:
            return
        node = self.by_id.get(src)
        if node is None or not node.alive or node.machine is None:
            return
        node.machine.upload_done(dst, message.chunk_hash, self.loop.now)
        self._pump(node)

    # ------------------------------------------------------------------ operator

    def pump(self, index: int) -> None:
        """Carry out what node ``index``'s machine asked for after a call made on it
        directly (not through the fleet), and follow its next deadline."""
        self._pump(self.nodes[index])

    def publish(self, index: int, model: SyntheticModel) -> None:
        node = self.nodes[index]
        node.machine.publish_manifest(model.manifest, self.loop.now)
        self._pump(node)

    def issue(self, index: int, intent: Any) -> None:
        node = self.nodes[index]
        node.machine.issue_intent(intent, self.loop.now)
        self._pump(node)

    def run(self, until: float | None = None, stop_when: Callable[[], bool] | None = None,
            check_every: int = 1) -> None:
        self.loop.run(until, stop_when=stop_when)

    def statistics(self) -> FleetStatistics:
        return FleetStatistics(
            nodes=len(self.nodes), up=sum(n.alive for n in self.nodes),
            sessions=sum(len(n.peers) for n in self.nodes) // 2, messages=self._messages,
            bytes_sent=self._bytes, piece_bytes_sent=self._piece_bytes,
            pieces_received=self._pieces_in, drops=self._drops, protocol_errors=self._errors,
            notices=dict(sorted(self._notices.items())))
