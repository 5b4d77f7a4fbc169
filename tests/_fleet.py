"""Deterministic keys, ledgers, manifests and intents shared by the tests, and
:class:`InProcessFleet`: whole NodeMachines wired together in-process on the
simulator's loop and network (``sim._fleet.Fleet``), the one in-process driver
the tests use.

Every key is :func:`sim._fleet.seeded_identity` of ``SEED`` and a label, the labels
the simulator uses, so ``node_key(i)`` *is* node ``i`` of an :class:`InProcessFleet`,
and ``ROOT``/``OPERATOR``/``PUBLISHER`` are its root, operator and publisher.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import blake3
from hypothesis import strategies as st

from protocol._capabilities import Capabilities, GpuInfo, Requirements
from protocol._chunking import chunk_bytes
from protocol._config import Config
from protocol._convergence import ModelConvergenceStatus, compute_convergence
from protocol._events import ActivateVersion, DropPeer, InstallVariant, ServeChunk
from protocol._hlc import HLC
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity
from protocol._intents import Intent, IntentKind, Scope
from protocol._ledger import DeltaPiece, Ledger, ModelState, NodeRecord, Suspicion
from protocol._manifest import FileEntry, Manifest, Variant, merkle_root
from protocol._node import NodeMachine
from protocol._types import ModelOperationalStatus, TransferPriority
from sim._fleet import Fleet, NodeSpec, SimNode, seeded_identity
from sim._network import LinkProfile

FLEET = "test-fleet"
SEED = "tests"                # the seed every test key derives from


def key(label: str) -> SigningIdentity:
    """The tests' key named ``label``: the simulator's ``seeded_identity`` of ``SEED``."""
    return seeded_identity(SEED, label)


ROOT = key("root")
OPERATOR = key("operator")
PUBLISHER = key("publisher")
ROGUE = key("rogue")          # never admitted


def make_trust() -> FleetTrust:
    trust = FleetTrust(FLEET, ROOT.public_key)
    trust.add_certificate(Certificate.issue(ROOT, FLEET, OPERATOR.public_key, Role.OPERATOR,
                                            "ops", 1))
    trust.add_certificate(Certificate.issue(ROOT, FLEET, PUBLISHER.public_key,
                                            Role.PUBLISHER, "pub", 1))
    return trust


def node_key(i: int) -> SigningIdentity:
    return key(f"node/{i}")


def node_cert(ident: SigningIdentity, name: str = "node") -> Certificate:
    return Certificate.issue(ROOT, FLEET, ident.public_key, Role.NODE, name, 1)


def admitted_ledger(n_nodes: int) -> Ledger:
    """An empty ledger whose trust already admits nodes 0..n-1."""
    trust = make_trust()
    for i in range(n_nodes):
        trust.add_certificate(node_cert(node_key(i)))
    return Ledger(trust)


def anti_entropy(ledgers: Sequence[Ledger], rounds: int) -> None:
    """Every ledger sends every other what it lacks, ``rounds`` times over."""
    for _ in range(rounds):
        for a, la in enumerate(ledgers):
            for b, lb in enumerate(ledgers):
                if a != b:
                    for p in la.delta_since(lb.version_vector):
                        lb.merge_entries(p.entries, p.ranges)


def deliver_piece(ledgers: Sequence[Ledger], wire: list[tuple[int, DeltaPiece]],
                  data: st.DataObject, keep: bool) -> None:
    """Deliver any one delta piece in flight (``wire``: ``(destination, piece)``), in any
    order; ``keep`` leaves it there to be delivered again (a duplicate)."""
    if wire:
        i = data.draw(st.integers(0, len(wire) - 1))
        dst, piece = wire[i] if keep else wire.pop(i)
        ledgers[dst].merge_entries(piece.entries, piece.ranges)


def convergence_of(led: Ledger, version: str, model: str = "m") -> ModelConvergenceStatus:
    """``compute_convergence`` of ``model`` ``version`` as ``led`` holds it (no one
    unreachable, at time 100)."""
    return compute_convergence(model, version, led.intents(), led.records(), led.trust,
                               set(), 100.0)


def caps(gpu_gb: int = 0, arch: str = "x86_64", storage_mb: int = 100_000) -> Capabilities:
    gpus = (GpuInfo("gpu", gpu_gb * 1024, gpu_gb * 1024, "550", "9.0"),) if gpu_gb else ()
    eps = ("CUDAExecutionProvider", "CPUExecutionProvider") if gpu_gb else (
        "CPUExecutionProvider",)
    return Capabilities(arch, 8, 16_384, storage_mb, gpus, eps)


def record(name: str = "n", formation: str = "", capabilities: Capabilities | None = None,
           models: tuple[ModelState, ...] = (), written_at: float = 0.0,
           suspects: tuple[Suspicion, ...] = ()) -> NodeRecord:
    return NodeRecord(name, formation, capabilities, "", models, suspects, written_at)


def running(model_id: str, version: str, status: ModelOperationalStatus
            = ModelOperationalStatus.OPERATIONAL, **kw: object) -> ModelState:
    return ModelState(model_id, version, "v", status,
                      active_version=version if status is ModelOperationalStatus.OPERATIONAL
                      else "", **kw)  # type: ignore[arg-type]


def intent(version: str = "1.0.0", *, model: str = "m", wall: int = 1,
           kind: IntentKind = IntentKind.DISTRIBUTE, scope: Scope | None = None,
           cancels: str | None = None, issuer: SigningIdentity = OPERATOR,
           variant: str | None = None,
           priority: TransferPriority = TransferPriority.NORMAL) -> Intent:
    return Intent.create(issuer, kind, model, version, HLC(wall, 0, "op"), scope=scope,
                         cancels=cancels, variant_id=variant, priority=priority)


def model_files(seed: str, size: int) -> tuple[FileEntry, bytes]:
    data = b"".join(blake3.blake3(f"{seed}{i}".encode()).digest(1024)
                    for i in range((size + 1023) // 1024))[:size]
    refs = tuple(chunk_bytes(data))
    return FileEntry("model.bin", size, refs, merkle_root([r.hash for r in refs])), data


def manifest(model: str = "m", version: str = "1.0.0", seed: str = "a", size: int = 4096,
             requirements: Requirements | None = None,
             publisher: SigningIdentity = PUBLISHER) -> tuple[Manifest, bytes]:
    f, data = model_files(seed, size)
    variant = Variant("cpu", requirements or Requirements(), (f,))
    return Manifest.sign(publisher, model, version, (variant,), 1), data


def lone_machine(i: int = 0, *, now: float = 0.0, name: str = "", seed: int = 1,
                 config: Config | None = None, **kw: Any) -> NodeMachine:
    """Node ``i``'s machine on its own, with no driver: key ``node_key(i)``, a fresh
    ``make_trust()``, ``caps()`` unless ``capabilities`` is given."""
    ident = node_key(i)
    kw.setdefault("capabilities", caps())
    return NodeMachine(config=config or Config(fleet_id=FLEET), identity=ident,
                       certificate=node_cert(ident, name or "node"), trust=make_trust(),
                       rng=random.Random(seed), now=now, name=name, **kw)


# ------------------------------------------------------------------ the in-process fleet


_INPUTS = frozenset({"receive", "on_timer", "peer_connected", "peer_disconnected",
                     "peer_known", "peer_lost", "dial_failed",
                     "chunk_stored", "chunk_missing", "upload_done", "install_finished",
                     "publish_manifest", "issue_intent"})


class _Clocked:
    """Node ``index``'s machine as the fleet drives it. The fleet passes its own time
    (always the last argument of an input); the machine reads its wall clock, fleet
    time + ``fleet.offset[index]`` (0 unless a test skews or steps it), and its
    deadlines are turned back into fleet time."""

    def __init__(self, fleet: InProcessFleet, index: int, machine: NodeMachine) -> None:
        self.fleet = fleet
        self.index = index
        self.machine = machine

    def next_deadline(self) -> float | None:
        d = self.machine.next_deadline()
        if d is None or self.fleet.timers_held:
            return None
        return d - self.fleet.offset[self.index]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.machine, name)
        if name not in _INPUTS:
            return attr

        def at_local_time(*args: Any, **kw: Any) -> Any:
            if name == "on_timer" and self.fleet.timers_held:
                return None
            *rest, now = args
            out = attr(*rest, now + self.fleet.offset[self.index], **kw)
            self.fleet.after_input(self.index, name == "on_timer")
            return out
        return at_local_time


class InProcessFleet(Fleet):
    """``n`` whole NodeMachines on the simulator's loop and network — the tests' one
    in-process driver (h11's ConnectionPair idea, grown to a fleet).

    Node ``i`` has key ``node_key(i)``, capabilities ``caps()`` (or ``capabilities[i]``)
    and, if given, formation
    ``formations[i]``, the versions ``installed[i]`` on disk and, if given, a wall clock
    ``offsets[i]`` ahead of the fleet's time. The links form a full mesh (or the overlay
    ``edges``), unlimited in bandwidth, with the simulator's default latency (or
    ``profile``); every message goes through the codec; installs succeed at once. Every
    node is up and connected to its neighbours when the constructor returns (virtual
    time 0); :meth:`advance` runs it, :meth:`drain` delivers with no timer running.

    Strict unless told otherwise: a ``DropPeer`` or a protocol error fails the test (no
    honest fleet makes one); not strict, drops are listed in ``drops``. It records, per
    node, the installs and activations the machine asked for and the pieces it served;
    ``offset[i]`` skews node ``i``'s wall clock (see :class:`_Clocked`). Hooks for
    subclasses: :meth:`observe` (each output) and :meth:`after_input` (each input).
    """

    def __init__(self, n: int, *, seed: int = 1, formations: Sequence[str] | None = None,
                 installed: Mapping[int, Sequence[tuple[str, str, str]]] | None = None,
                 offsets: Sequence[float] | None = None, config: Config | None = None,
                 edges: Iterable[tuple[int, int]] | None = None,
                 profile: LinkProfile | None = None, strict: bool = True,
                 capabilities: Sequence[Capabilities] | None = None) -> None:
        self.offset = list(offsets) if offsets else [0.0] * n
        self.strict = strict
        self.timers_held = False
        self.drops: list[tuple[int, DropPeer]] = []
        self.installs: list[list[InstallVariant]] = [[] for _ in range(n)]
        self.activations: list[list[ActivateVersion]] = [[] for _ in range(n)]
        self.served = [0] * n
        specs = [NodeSpec(up=0, down=0,
                          capabilities=capabilities[i] if capabilities else caps(),
                          formation=formations[i] if formations else "") for i in range(n)]
        super().__init__(specs, seed=seed, identity_seed=SEED,
                         config=config or Config(fleet_id=FLEET), topology="full",
                         install_delay=0.0, wire_check=True, profile=profile,
                         machine_factory=self._machine)
        if edges is not None:       # the overlay, before any node starts
            self.edges = {(min(a, b), max(a, b)) for a, b in edges}
            self.neighbours = {i: set() for i in range(n)}
            for a, b in self.edges:
                self.neighbours[a].add(b)
                self.neighbours[b].add(a)
        for i, versions in (installed or {}).items():
            disk = self.nodes[i].disk
            for model_id, version, variant_id in versions:   # the last one listed is active
                disk.installed.add((model_id, version, variant_id))
                disk.active[model_id] = version
        self.on_output.append(lambda node, out: self.observe(node, out))
        self.advance(0.0)

    def _machine(self, **kw: Any) -> _Clocked:
        index = self.by_id[kw["identity"].key_id].index
        kw["now"] += self.offset[index]
        return _Clocked(self, index, NodeMachine(**kw))

    def observe(self, node: SimNode, out: Any) -> None:
        """Called with every output of every machine before it is carried out (from
        start-up on): records installs, activations and pieces served; fails on a drop."""
        i = node.index
        if isinstance(out, InstallVariant):
            self.installs[i].append(out)
        elif isinstance(out, ActivateVersion):
            self.activations[i].append(out)
        elif isinstance(out, ServeChunk) and out.chunk_hash in node.disk.held:
            self.served[i] += 1
        elif isinstance(out, DropPeer):
            if self.strict:
                raise AssertionError(f"unexpected drop at node {i}: {out}")
            self.drops.append((i, out))

    def after_input(self, i: int, timer: bool) -> None:
        """Called after node ``i`` handled an input (``timer``: its timer fired)."""

    # ------------------------------------------------------------------ driving

    @property
    def now(self) -> float:
        return self.loop.now

    def local(self, i: int) -> float:
        """Node ``i``'s wall clock."""
        return self.loop.now + self.offset[i]

    def advance(self, seconds: float) -> None:
        """Run the fleet for ``seconds`` of virtual time."""
        self.run(until=self.loop.now + seconds)
        assert self.statistics().protocol_errors == 0, "a machine raised a protocol error"

    def drain(self, window: float = 1.0) -> None:
        """Deliver every message in flight, and what it causes, with no timer running:
        timers are held for ``window`` seconds (long enough for any flood on these
        links), then re-armed."""
        self.timers_held = True
        try:
            self.advance(window)
        finally:
            self.timers_held = False
        for node in self.nodes:
            if node.alive:
                self.pump(node.index)

    def m(self, i: int) -> NodeMachine:
        """Node ``i``'s machine. A call made on it directly leaves its outputs to
        :meth:`pump` (or to the next input the fleet gives it)."""
        machine: NodeMachine = self.nodes[i].machine.machine
        return machine

    def restart(self, i: int, *, name: str | None = None, forget_ledger: bool = False) -> None:
        """Crash node ``i`` and start it again (its disk kept; its ledger too unless
        ``forget_ledger``), as ``name`` if given."""
        self.crash(i)
        node = self.nodes[i]
        if forget_ledger:
            node.disk.ledger = None
        if name is not None:
            node.name = name
        self.start(i)

    def hang(self, i: int) -> None:
        """Node ``i`` hangs: its sessions stay open, but nothing reaches it or leaves it."""
        ids = [n.node_id for n in self.nodes]
        self.net.split([[ids[i]], ids[:i] + ids[i + 1:]])

    # ------------------------------------------------------------------ content

    def publish_files(self, version: str = "1.0.0", seed: str = "a", size: int = 600_000,
                      at: int = 0) -> tuple[str, bytes]:
        """Publish ``manifest(version, seed, size)`` at node ``at``, which holds its chunks."""
        man, data = manifest(version=version, seed=seed, size=size)
        self.publish_variants(version, [(man.variants[0], data)], at, man)
        return man.manifest_id, data

    def publish_variants(self, version: str, variants: Sequence[tuple[Variant, bytes]],
                         at: int = 0, signed: Manifest | None = None) -> Manifest:
        """Sign a manifest of ``variants`` (each with its one file's bytes) and publish it
        at node ``at``, whose disk holds every chunk."""
        man = signed or Manifest.sign(PUBLISHER, "m", version,
                                      tuple(v for v, _ in variants), 1)
        chunks: dict[bytes, bytes] = {}
        for v, data in variants:
            off = 0
            for c in v.files[0].chunks:
                chunks[c.hash] = data[off:off + c.size]
                off += c.size
        self.add_chunks(chunks, [at])
        self.nodes[at].machine.publish_manifest(man, self.loop.now)
        self.pump(at)
        return man
