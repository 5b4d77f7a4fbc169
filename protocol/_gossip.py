"""Push-pull anti-entropy gossip of the ledger, and failure detection.

Theory of operation
-------------------
Every ``interval`` (plus up to ``jitter`` x interval drawn from the injected
rng) the engine picks ``fanout`` random connected peers and sends each a
:class:`GossipSummary`: a 16-byte hash of its version vector. That is the
whole cost of a quiet fleet: a peer whose vector hashes the same stays silent.
When the hashes differ the peer answers with its full :class:`GossipDigest`
(node ids as 16 raw bytes, ``reply=True``); we answer with the
:class:`GossipDelta` pieces it lacks (each at most ``max_delta_bytes`` of
entries) plus our own digest (``reply=False``), and it sends back what we lack.
So one round is push-pull (Karp et al.): information spreads in about
``log3 N + ln ln N`` rounds.

Failure detection is indirect and slow on purpose. Each round the engine
notes, for every node in the ledger, when that node's record counter last
advanced (nodes write a heartbeat into their record every ``heartbeat_every``
rounds, and records travel by gossip through any path, so one flaky link does
not matter). A node silent for ``unreachable_after`` seconds is listed in our
own record's ``suspects``; it counts as unreachable only once
``min_suspecting_peers`` records list it (see ``_convergence``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._codec import encode, message
from ._config import GossipConfig
from ._errors import InvalidValue, MalformedMessage
from ._events import Output, SendMessage
from ._hlc import vv_from_wire, vv_hash, vv_to_wire
from ._ledger import Entry, Ledger, MergeResult

if TYPE_CHECKING:
    import random

__all__ = ["GossipSummary", "GossipDigest", "GossipDelta", "GossipStatistics", "GossipEngine"]


@message(20)
@dataclass(frozen=True, slots=True)
class GossipSummary:
    vv_hash: bytes
    origins: int


@message(21)
@dataclass(frozen=True, slots=True)
class GossipDigest:
    vv: dict[bytes, int]
    reply: bool


@message(22)
@dataclass(frozen=True, slots=True)
class GossipDelta:
    entries: tuple[Entry, ...]
    ranges: dict[bytes, tuple[int, int]]


_TYPES = (GossipSummary, GossipDigest, GossipDelta)


@dataclass(frozen=True, slots=True)
class GossipStatistics:
    rounds: int
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    summaries_in_sync: int
    entries_received: int
    entries_added: int
    entries_rejected: int


class GossipEngine:
    def __init__(self, *, node_id: str, config: GossipConfig, rng: random.Random,
                 ledger: Ledger, now: float) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self.ledger = ledger
        self.peers: set[str] = set()
        self._outputs: list[Output] = []
        self._next_round = now + self._rng.uniform(0, config.interval)
        self._rounds = 0
        self._heard: dict[str, tuple[int, float]] = {}   # node -> (record counter, when)
        self._sent = self._recv = self._bytes_sent = self._bytes_recv = 0
        self._in_sync = self._entries_recv = self._entries_added = self._rejected = 0

    # ------------------------------------------------------------------ peers
    def peer_connected(self, peer: str, now: float) -> None:
        self.peers.add(peer)
        self._send(peer, GossipSummary(vv_hash(self.ledger.version_vector),
                                       len(self.ledger.version_vector)))

    def peer_disconnected(self, peer: str, now: float) -> None:
        self.peers.discard(peer)

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float:
        return self._next_round

    def round_due(self, now: float) -> bool:
        return now >= self._next_round

    def on_timer(self, now: float) -> bool:
        """Run a round if one is due. Returns True when a round ran."""
        if now < self._next_round:
            return False
        self._rounds += 1
        jitter = self._rng.uniform(0, self.config.jitter * self.config.interval)
        self._next_round = now + self.config.interval + jitter
        self.observe(now)
        peers = sorted(self.peers)
        chosen = self._rng.sample(peers, min(self.config.fanout, len(peers)))
        vv = self.ledger.version_vector
        summary = GossipSummary(vv_hash(vv), len(vv))
        for p in chosen:
            self._send(p, summary)
        return True

    @property
    def rounds(self) -> int:
        return self._rounds

    def heartbeat_due(self) -> bool:
        return self._rounds % max(1, self.config.heartbeat_every) == 0

    # ------------------------------------------------------------------ failure detection
    def observe(self, now: float) -> None:
        for node in self.ledger.records():
            c = self.ledger.record_counter(node)
            seen = self._heard.get(node)
            if seen is None or seen[0] != c:
                self._heard[node] = (c, now)

    def suspects(self, now: float) -> tuple[str, ...]:
        limit = self.config.unreachable_after
        return tuple(sorted(n for n, (_, t) in self._heard.items()
                            if n != self.node_id and now - t > limit))

    # ------------------------------------------------------------------ messages
    def handles(self, msg: object) -> bool:
        return isinstance(msg, _TYPES)

    def receive(self, peer: str, msg: object, now: float) -> MergeResult | None:
        """Handle a gossip message; returns the merge result when entries arrived."""
        self._recv += 1
        if isinstance(msg, _TYPES):
            self._bytes_recv += len(encode(msg))   # what the message costs on the wire
        if isinstance(msg, GossipSummary):
            vv = self.ledger.version_vector
            if msg.vv_hash == vv_hash(vv):
                self._in_sync += 1
            else:
                self._send(peer, GossipDigest(vv_to_wire(vv), True))
            return None
        if isinstance(msg, GossipDigest):
            try:
                their = vv_from_wire(msg.vv)
            except InvalidValue as exc:
                raise MalformedMessage(f"bad digest: {exc}") from None
            self._send_delta(peer, their)
            if msg.reply:
                self._send(peer, GossipDigest(vv_to_wire(self.ledger.version_vector), False))
            return None
        if isinstance(msg, GossipDelta):
            ranges: dict[str, tuple[int, int]] = {}
            for k, r in msg.ranges.items():
                if len(k) != 16:
                    raise MalformedMessage("a delta range origin is 16 bytes")
                ranges[k.hex()] = r
            result = self.ledger.merge_entries(msg.entries, ranges)
            self._entries_recv += len(msg.entries)
            self._entries_added += len(result.added)
            self._rejected += sum(result.rejected.values())
            return result
        raise MalformedMessage(f"not a gossip message: {type(msg).__name__}")

    def _send_delta(self, peer: str, their: Mapping[str, int]) -> None:
        if not self.ledger.missing_for(their):
            return
        for piece in self.ledger.delta_since(their, self.config.max_delta_bytes):
            ranges = {bytes.fromhex(o): r for o, r in piece.ranges.items()}
            self._send(peer, GossipDelta(piece.entries, ranges))

    def _send(self, peer: str, msg: GossipSummary | GossipDigest | GossipDelta) -> None:
        self._outputs.append(SendMessage(peer, msg))
        self._sent += 1
        self._bytes_sent += len(encode(msg))

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def statistics(self) -> GossipStatistics:
        return GossipStatistics(self._rounds, self._sent, self._recv, self._bytes_sent,
                                self._bytes_recv, self._in_sync, self._entries_recv,
                                self._entries_added, self._rejected)
