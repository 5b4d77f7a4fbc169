"""Stateful property test: a few SwarmEngines under random connects, disconnects,
wants, drops, out-of-order deliveries, timer jumps and forged pieces.

Invariants checked after every step:
* ``held`` only grows, and only by chunks whose bytes hash to their name;
* outside endgame a chunk has at most one outstanding request (in endgame at most
  ``endgame_fanout``), and never for a chunk already held or to a dropped peer;
* per-peer / total request limits hold;
* the upload and download token buckets are respected.
"""

from __future__ import annotations

import random

import blake3
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protocol._config import SwarmConfig
from protocol._events import DropPeer
from protocol._swarm_messages import Piece
from protocol._types import TransferPriority
from tests.swarm_sim import Net, token_chunk

N = 4
SIZE = 1000
UPLOAD_RATE = 3000.0
DOWNLOAD_RATE = 2000.0
BURST = 1.0
CONFIG = SwarmConfig(max_requests_per_peer=2, max_requests_total=4, endgame_chunks=2,
                     endgame_fanout=2, request_timeout=3.0, upload_slots=2,
                     optimistic_slots=1, upload_rate=UPLOAD_RATE, rate_burst=BURST,
                     interest_retry=1.0, max_peer_failures=3)
CAPPED = 3   # this node also has a download cap
SHORT_QUEUE = 2   # this node queues one request per peer and uploads slowly: the others'
#                   pipelines overflow its queue while it still holds their first request

_CHUNKS = [token_chunk(f"m-{i}", SIZE) for i in range(12)]
KEYS = {"a/v": [r for r, _ in _CHUNKS[:8]], "b/v": [r for r, _ in _CHUNKS[4:]]}
DATA = {r.hash: d for r, d in _CHUNKS}


class SwarmMachine(RuleBasedStateMachine):
    net: Net

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        rng = random.Random(seed)
        holdings = [{h for h in DATA if rng.random() < 0.4} for _ in range(N)]
        holdings[SHORT_QUEUE] |= {h for h in DATA if rng.random() < 0.5}   # asked often
        fields = {f: getattr(CONFIG, f) for f in CONFIG.__slots__}
        capped = SwarmConfig(**{**fields, "download_rate": DOWNLOAD_RATE})
        short = SwarmConfig(**{**fields, "max_queued_per_peer": 1, "upload_rate": 500.0})
        self.net = Net(seed=seed, n=N, keys=KEYS, data=DATA, holdings=holdings,
                       config=CONFIG, configs={CAPPED: capped, SHORT_QUEUE: short})
        self.before = [set(h) for h in self.net.held]
        self.forged = 0

    @rule(a=st.integers(0, N - 1), b=st.integers(0, N - 1))
    def connect(self, a: int, b: int) -> None:
        banned = {(i, p) for i, p, _ in self.net.drops}
        if (a, self.net.ids[b]) in banned or (b, self.net.ids[a]) in banned:
            return
        self.net.connect(a, b)

    @rule(a=st.integers(0, N - 1), b=st.integers(0, N - 1))
    def disconnect(self, a: int, b: int) -> None:
        self.net.disconnect(a, b)

    @rule(i=st.integers(0, N - 1), key=st.sampled_from(sorted(KEYS)),
          priority=st.sampled_from(list(TransferPriority)))
    def want(self, i: int, key: str, priority: TransferPriority) -> None:
        self.net.want(i, key, priority)

    @rule(i=st.integers(0, N - 1), key=st.sampled_from(sorted(KEYS)))
    def drop(self, i: int, key: str) -> None:
        self.net.engines[i].drop(key, self.net.now)
        self.net.flush(i)

    @precondition(lambda self: bool(self.net.events))
    @rule(k=st.integers(0, 10_000))
    def deliver_any(self, k: int) -> None:
        """Deliver one in-flight message, chosen at random (any order)."""
        event = self.net.events.pop(k % len(self.net.events))
        self.net.events.sort()
        _, _, _, dst, (src, message) = event
        self.net.deliver(dst, src, message)

    @rule(steps=st.integers(1, 60))
    def flow(self, steps: int) -> None:
        """Let the network run in time order for a while (deliveries and timers)."""
        for _ in range(steps):
            if not self.net.step():
                break
            self.check_all()

    @rule(dt=st.floats(0.01, 4.0))
    def advance(self, dt: float) -> None:
        self.net.now += dt
        for i in sorted(self.net.engines):
            d = self.net.engines[i].next_deadline()
            if d is not None and d <= self.net.now:
                self.net.engines[i].on_timer(self.net.now)
                self.net.flush(i)

    @rule(k=st.integers(0, 10_000))
    def forge_piece(self, k: int) -> None:
        """A peer we asked for a chunk answers with forged bytes: it must be dropped."""
        asks = sorted((i, h, p) for i, e in self.net.engines.items()
                      for h, peers in e.outstanding().items() for p in peers)
        if not asks:
            return
        i, h, peer = asks[k % len(asks)]
        engine = self.net.engines[i]
        engine.receive(peer, Piece(h, b"forged", 1), self.net.now)
        outs = engine.take_outputs()
        assert DropPeer in {type(o) for o in outs}
        assert h not in self.net.held[i]
        engine._outputs[:0] = outs   # let the network carry them out (disconnect)
        self.net.flush(i)
        assert frozenset((i, self.net.index[peer])) not in self.net.links
        self.forged += 1

    # ------------------------------------------------------------------ invariants

    @invariant()
    def swarm_invariants(self) -> None:
        self.check_all()

    def check_all(self) -> None:
        self.held_grows_only_by_verified_chunks()
        self.requests_are_bounded_and_unique()
        self.caps_hold()
        self.pipeline_caps_run_out()
        self.corrupt_pieces_are_counted()
        self.timeouts_are_scheduled()

    def held_grows_only_by_verified_chunks(self) -> None:
        for i in range(N):
            held = set(self.net.held[i])
            assert self.before[i] <= held
            for h in held - self.before[i]:
                assert blake3.blake3(self.net.stores[i][h]).digest() == h
            self.before[i] = set(held)

    def requests_are_bounded_and_unique(self) -> None:
        for i, engine in self.net.engines.items():
            out = engine.outstanding()
            per_peer: dict[str, int] = {}
            for h, peers in out.items():
                assert h not in self.net.held[i], "outstanding request for a held chunk"
                for p in peers:
                    per_peer[p] = per_peer.get(p, 0) + 1
                    assert frozenset((i, self.net.index[p])) in self.net.links
                if len(peers) > 1:
                    assert len(peers) <= CONFIG.endgame_fanout
                    assert any(engine.in_endgame(key) and h in {r.hash for r in KEYS[key]}
                               for key in engine.wanted()), "duplicate request outside endgame"
            assert all(n <= CONFIG.max_requests_per_peer for n in per_peer.values())
            assert sum(per_peer.values()) <= CONFIG.max_requests_total
            assert engine.statistics().requests_outstanding == sum(per_peer.values())

    def timeouts_are_scheduled(self) -> None:
        # next_deadline() reads the oldest request from an age-ordered table; check it
        # against a scan of every outstanding request
        for engine in self.net.engines.values():
            times = engine.request_times()
            if times:
                deadline = engine.next_deadline()
                assert deadline is not None
                assert deadline <= min(times.values()) + CONFIG.request_timeout

    def caps_hold(self) -> None:
        for i, engine in self.net.engines.items():
            stats = engine.statistics()
            assert stats.bytes_uploaded <= UPLOAD_RATE * (BURST + self.net.now) + SIZE
            if i == CAPPED:
                requested = stats.requests_sent * SIZE
                assert requested <= DOWNLOAD_RATE * (BURST + self.net.now) + SIZE

    def pipeline_caps_run_out(self) -> None:
        # a peer that answered "busy" holding some of ours caps our pipeline to it: within
        # 1..max_requests_per_peer, and the engine has a timer to lift it
        for engine in self.net.engines.values():
            links = engine._links
            caps = [c for p in self.net.ids if (c := links.capped(p)) is not None]
            assert all(1 <= c <= CONFIG.max_requests_per_peer for c in caps)
            if caps:
                deadline = engine.next_deadline()
                assert deadline is not None
                assert deadline <= min(links.deadlines())

    def corrupt_pieces_are_counted(self) -> None:
        total = sum(e.statistics().corrupt_pieces for e in self.net.engines.values())
        assert total == self.forged


SwarmMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50,
                                          deadline=None)
TestSwarmMachine = SwarmMachine.TestCase
