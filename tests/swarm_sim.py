"""A tiny seeded network of SwarmEngines for tests (no I/O, virtual time).

Whole NodeMachines are driven in-process by ``tests/_fleet.InProcessFleet``, which is
the simulator's ``sim.Fleet``. :class:`Net` stays a driver of its own, one level down,
because the swarm tests need what that driver does not give:

* it drives a ``SwarmEngine`` alone -- content keys come from a lookup table, not from
  signed manifests in a ledger, and each engine may have its own ``SwarmConfig`` -- so
  a test of the scheduler is not also a test of gossip, intents and installs;
* its pending messages are a plain list (``events``, a heap) that the hypothesis state
  machine in ``test_swarm_machine`` reorders, delivers one by one and steps time over
  by hand; the simulator's event loop runs its heap in one fixed order by design;
* every output is checked as it is carried out (never a request to an unconnected
  peer or for a chunk already held, never a stored chunk that fails its hash), and
  liars are scripted per message (a corrupt server, a phantom that never serves).

:func:`lone_engine` and :func:`fetch_from` set up one engine with no driver at all.

Chunks are modelled cheaply: a chunk's bytes are a short token and its hash is
BLAKE3(token); the nominal ``ChunkRef.size`` drives rate limits and accounting.
Every ``StoreChunk`` is checked here against its hash, so a test fails if the
engine ever stores bytes it did not verify.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import blake3

from protocol._codec import decode, encode
from protocol._config import SwarmConfig
from protocol._events import DropPeer, SendMessage, ServeChunk, StoreChunk
from protocol._manifest import ChunkRef
from protocol._swarm import SwarmEngine, make_piece
from protocol._swarm_messages import Cancel, HaveSet, Interested, Piece, Request, make_bitfield
from protocol._types import TransferPriority


def token_chunk(label: str, size: int = 1000) -> tuple[ChunkRef, bytes]:
    data = label.encode()
    return ChunkRef(blake3.blake3(data).digest(), size), data


def make_key(label: str, n: int, size: int = 1000) -> tuple[list[ChunkRef], dict[bytes, bytes]]:
    """``n`` token chunks of ``size`` (the refs of one key) and the bytes of each."""
    refs, data = [], {}
    for i in range(n):
        ref, blob = token_chunk(f"{label}-{i}", size)
        refs.append(ref)
        data[ref.hash] = blob
    return refs, data


def cheap_verifier(chunk_hash: bytes, size: int, data: bytes) -> bool:
    return blake3.blake3(data).digest() == chunk_hash


def node_id(i: int) -> str:
    return f"{i:032x}"


KEY = "m1/v"      # the content key the single-engine tests fetch


def lone_engine(refs: Sequence[ChunkRef] | Mapping[str, Sequence[ChunkRef]],
                config: SwarmConfig | None = None, *, seed: int,
                held: Iterable[bytes] = ()) -> SwarmEngine:
    """Node 0's SwarmEngine on its own, no driver: it knows ``refs`` under ``KEY`` (or a
    table key -> refs), holds ``held``, and checks pieces with :func:`cheap_verifier`."""
    table = refs if isinstance(refs, Mapping) else {KEY: refs}   # live: a test may add keys
    return SwarmEngine(node_id=node_id(0), config=config or SwarmConfig(),
                       rng=random.Random(seed), held=held,
                       lookup=table.get, verifier=cheap_verifier)


def fetch_from(eng: SwarmEngine, peers: Iterable[int], n: int, key: str = KEY,
               now: float = 0.0, heard_at: float | None = None) -> None:
    """``eng`` connects to ``peers``, wants ``key`` (normal priority) and hears from each
    peer (at ``heard_at``, default ``now``) that it holds all ``n`` chunks."""
    ids = [node_id(p) for p in peers]
    for p in ids:
        eng.peer_connected(p, now)
    eng.want(key, TransferPriority.NORMAL, now)
    for p in ids:
        eng.receive(p, HaveSet(key, n, make_bitfield([True] * n)),
                    now if heard_at is None else heard_at)


@dataclass
class Liar:
    """A scripted peer: ``corrupt`` serves garbage, ``phantom`` advertises all and never serves."""

    kind: str
    asked_by: set[str] = field(default_factory=set)     # nodes that sent it a Request
    served_to: set[str] = field(default_factory=set)    # nodes that received its piece
    pending: dict[str, set[bytes]] = field(default_factory=dict)  # requests not cancelled


class Net:
    """``n`` SwarmEngines (or scripted liars) on links with a random latency of up to
    ``max_delay`` and FIFO order per link; see the module's docstring for why this is
    not ``sim.Fleet``."""

    def __init__(self, *, seed: int, n: int, keys: Mapping[str, Sequence[ChunkRef]],
                 data: dict[bytes, bytes], holdings: list[set[bytes]],
                 config: SwarmConfig | None = None, configs: dict[int, SwarmConfig] | None = None,
                 liars: dict[int, str] | None = None,
                 verifier: Callable[[bytes, int, bytes], bool] = cheap_verifier,
                 max_delay: float = 0.05, wire: bool = True,
                 upload_reports: bool = False) -> None:
        self.rng = random.Random(seed)
        # report each piece sent (SwarmEngine.upload_done) a random moment after it went
        self.upload_reports = upload_reports
        self.keys = dict(keys)
        self.data = data
        self.max_delay = max_delay
        self.wire = wire
        self.now = 0.0
        self.seq = 0
        self.events: list[tuple[float, int, str, int, tuple[int, object]]] = []
        self.last_at: dict[tuple[int, int], float] = {}
        self.ids = [node_id(i) for i in range(n)]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        self.liars = {i: Liar(kind) for i, kind in (liars or {}).items()}
        self.stores: list[dict[bytes, bytes]] = [
            {h: data[h] for h in held} for held in holdings]
        self._holdings: list[set[bytes]] = [set(held) for held in holdings]
        self.links: set[frozenset[int]] = set()
        self.engines: dict[int, SwarmEngine] = {}
        self.drops: list[tuple[int, str, str]] = []
        self.requests_seen = 0
        self.piece_bytes_in: list[int] = [0] * n
        self.completed_at: dict[tuple[int, str], float] = {}
        for i in range(n):
            if i in self.liars:
                continue
            cfg = (configs or {}).get(i, config or SwarmConfig())
            self.engines[i] = SwarmEngine(
                node_id=self.ids[i], config=cfg, rng=random.Random(seed * 1000 + i),
                held=self._holdings[i], lookup=self.keys.get, verifier=verifier)

    @property
    def held(self) -> list[Collection[bytes]]:
        """Each node's held chunks: its engine's own set (live; the engine keeps it by
        position), or a liar's holdings."""
        return [self.engines[i]._held if i in self.engines else self._holdings[i]
                for i in range(len(self._holdings))]

    # ---------------------------------------------------------------- topology

    def connect(self, a: int, b: int) -> None:
        self._link(a, b, up=True)

    def disconnect(self, a: int, b: int) -> None:
        self._link(a, b, up=False)

    def _link(self, a: int, b: int, *, up: bool) -> None:
        link = frozenset((a, b))
        if a == b or (link in self.links) == up:
            return
        if up:
            self.links.add(link)
        else:
            self.links.discard(link)
        for x, y in ((a, b), (b, a)):
            if x in self.engines:
                if up:
                    self.engines[x].peer_connected(self.ids[y], self.now)
                else:
                    self.engines[x].peer_disconnected(self.ids[y], self.now)
                self.flush(x)

    # ---------------------------------------------------------------- outputs

    def post(self, src: int, dst: int, message: object) -> None:
        if self.wire:
            message = decode(encode(message))
        self.seq += 1
        # random latency, but FIFO per link (sessions run over TCP)
        at = max(self.now + self.rng.uniform(0.0, self.max_delay),
                 self.last_at.get((src, dst), 0.0))
        self.last_at[(src, dst)] = at
        heapq.heappush(self.events, (at, self.seq, "msg", dst, (src, message)))

    def flush(self, i: int) -> None:
        engine = self.engines[i]
        for out in engine.take_outputs():
            if isinstance(out, SendMessage):
                dst = self.index[out.peer]
                assert frozenset((i, dst)) in self.links, "engine sent to an unconnected peer"
                if isinstance(out.message, Request):
                    assert out.message.chunk_hash not in self.held[i], \
                        "requested a chunk it already holds"
                    self.requests_seen += 1
                self.post(i, dst, out.message)
            elif isinstance(out, ServeChunk):
                dst = self.index[out.peer]
                chunk = self.stores[i].get(out.chunk_hash)
                if chunk is None:
                    engine.chunk_missing(out.chunk_hash, self.now)
                elif frozenset((i, dst)) in self.links:
                    self.post(i, dst, make_piece(out.chunk_hash, chunk, out.priority))
                    if self.upload_reports:
                        self.seq += 1
                        at = self.now + self.rng.uniform(0.0, self.max_delay)
                        heapq.heappush(self.events, (at, self.seq, "sent", i,
                                                     (dst, out.chunk_hash)))
            elif isinstance(out, StoreChunk):
                assert blake3.blake3(out.data).digest() == out.chunk_hash, "stored unverified"
                self.stores[i][out.chunk_hash] = out.data
                engine.chunk_stored(out.chunk_hash, self.now)
            elif isinstance(out, DropPeer):
                self.drops.append((i, out.peer, out.reason))
                self.disconnect(i, self.index[out.peer])
        for key in engine.take_completed():
            self.completed_at.setdefault((i, key), self.now)
        if engine._outputs:  # produced while carrying out the above (chunk_stored, ...)
            self.flush(i)

    # ---------------------------------------------------------------- delivery

    def deliver(self, dst: int, src: int, message: object) -> None:
        if frozenset((src, dst)) not in self.links:
            return  # the link went down while the message was in flight
        if dst in self.liars:
            self.liar_receive(dst, src, message)
            return
        if isinstance(message, Piece):
            self.piece_bytes_in[dst] += self._size_of(message.chunk_hash)
            if src in self.liars:
                self.liars[src].served_to.add(self.ids[dst])
        self.engines[dst].receive(self.ids[src], message, self.now)
        self.flush(dst)

    def _size_of(self, chunk_hash: bytes) -> int:
        for refs in self.keys.values():
            for r in refs:
                if r.hash == chunk_hash:
                    return r.size
        return 0

    def liar_receive(self, me: int, src: int, message: object) -> None:
        liar = self.liars[me]
        if isinstance(message, Interested):
            refs = self.keys.get(message.key)
            if refs is not None:
                self.post(me, src, HaveSet(message.key, len(refs),
                                           make_bitfield([True] * len(refs))))
        elif isinstance(message, Request):
            liar.asked_by.add(self.ids[src])
            liar.pending.setdefault(self.ids[src], set()).add(message.chunk_hash)
            if liar.kind == "corrupt":
                self.post(me, src, Piece(message.chunk_hash, b"forged " + bytes(8),
                                         message.priority))
        elif isinstance(message, Cancel):
            liar.pending.get(self.ids[src], set()).discard(message.chunk_hash)

    # ---------------------------------------------------------------- time

    def next_time(self) -> float | None:
        times = [self.events[0][0]] if self.events else []
        for e in self.engines.values():
            d = e.next_deadline()
            if d is not None:
                times.append(max(d, self.now))
        return min(times) if times else None

    def step(self) -> bool:
        t = self.next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        if self.events and self.events[0][0] <= self.now:
            _, _, kind, dst, payload = heapq.heappop(self.events)
            if kind == "sent":   # dst served a piece to payload[0]: it has left
                peer, chunk_hash = payload
                if dst in self.engines:
                    assert isinstance(chunk_hash, bytes)
                    self.engines[dst].upload_done(self.ids[peer], chunk_hash, self.now)
                    self.flush(dst)
                return True
            src, message = payload
            self.deliver(dst, src, message)
            return True
        for i in sorted(self.engines):
            d = self.engines[i].next_deadline()
            if d is not None and d <= self.now:
                self.engines[i].on_timer(self.now)
                self.flush(i)
        return True

    def run(self, until: Callable[[], bool], max_time: float = 1000.0,
            max_steps: int = 200_000) -> None:
        steps = 0
        while not until():
            assert steps < max_steps, "simulation did not settle"
            assert self.now <= max_time, f"not done by t={self.now:.1f}"
            if not self.step():
                break
            steps += 1

    def want(self, i: int, key: str, priority: TransferPriority = TransferPriority.NORMAL) -> None:
        self.engines[i].want(key, priority, self.now)
        self.flush(i)

    def holds_key(self, i: int, key: str) -> bool:
        return all(r.hash in self.held[i] for r in self.keys[key])


def random_connected_graph(rng: random.Random, nodes: list[int],
                           extra: int) -> set[tuple[int, int]]:
    """A random spanning tree over ``nodes`` plus ``extra`` random edges (seeded)."""
    order = nodes[:]
    rng.shuffle(order)
    edges = {(order[i], rng.choice(order[:i])) for i in range(1, len(order))}
    for _ in range(extra):
        a, b = rng.sample(nodes, 2)
        edges.add((a, b))
    return edges
