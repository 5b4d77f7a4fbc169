"""Push-pull anti-entropy gossip of the ledger, and failure detection.

Theory of operation
-------------------
Every ``interval`` (plus up to ``jitter`` x interval drawn from the injected
rng) the engine picks ``fanout`` random connected peers and sends each a
:class:`GossipSummary`: a 16-byte hash of its version vector. That is the
whole cost of a quiet fleet: a peer whose vector hashes the same stays silent.

When the hashes differ, the cost is kept proportional to the *difference*,
not to the fleet. In a small fleet (fewer than ``BUCKETS_FROM`` origins) the
peer answers with its whole :class:`GossipDigest` (node ids as 16 raw bytes,
``reply=True``). In a larger one it answers with :class:`GossipBuckets`: the
vector cut into ``2**bits`` buckets by the leading bits of the origin id
(about ``BUCKET_TARGET`` origins each), one 8-byte hash per bucket. The
initiator compares them with its own and sends a digest of only the
differing buckets; from then on both sides exchange vector entries and
deltas for those buckets only (``Ledger.delta_since(..., origins=...)``). We
answer a digest with the :class:`GossipDelta` pieces the peer lacks (each at
most ``max_delta_bytes`` of entries) plus our own digest (``reply=False``), and
the peer sends back what we lack. One round is push-pull (Karp et al.):
information spreads in about ``log3 N + ln ln N`` rounds.

While a node's vector moves (a rollout: records change every few seconds), a
summary is all but sure to differ and could only be answered by the peer's
digest, so under ``BUCKETS_FROM`` origins a round whose node's vector moved since
its previous round opens with the node's digest (``reply=True``) instead.

A reply digest only when needed: the side that opened the round sends its own
digest back only when the peer's shows something it lacks (or the peer is behind
on its own origin: a restart gap closes on digests). Otherwise the peer could only
answer with an empty delta; a round in which one side merely catches up (the
usual case while records change) is then three messages, not four. What a peer
holds above its vector (entries past a gap) comes back when it opens a round.

Urgent entries are pushed, not left to the rounds. An operator's intent, a
manifest, a revocation and the certificate of an operator or publisher
(:func:`urgent`) are written once, never replaced, and a rollout cannot start
anywhere before they arrive; at one round a second, ``log3 N`` rounds are
seconds at a thousand nodes. So with ``push`` on, the node that writes such an
entry sends it at once to every connected peer as a :class:`GossipPush`
(:meth:`GossipEngine.push`), and a node that *adds* an entry from a push passes
it on to its other peers the same way. It floods the overlay in hops, not
rounds; a node forwards an entry only the first time it adds it, so each link
carries it at most once each way. Entries learned from the rounds are not
forwarded (they are old news: a node that missed the flood catches up there, as
it always did). The claim ``(since, upto]`` travels with a push only where it is
still true: the writer's own (nothing of its own lies between its last counter
and the new one), or the incoming push's for an origin whose entries in it were
all added and are all forwarded. Records (progress, rewritten every second) and
nodes' certificates are not pushed: the rounds carry them.

A manifest forgotten here (``_settle``, "Wanted back") is covered by this node's
vector, so no round sends it again. When a live intent names a manifest the ledger
lacks for ``WANT_AFTER`` seconds (a manifest normally arrives with its intent), a
round also sends one peer a :class:`GossipWant` naming it, a different peer every
``WANT_EVERY`` seconds until it arrives; a peer that holds it answers with its
signed entry in a :class:`GossipDelta` (wants are rated per asking peer: an answer
can be a large manifest).

A push costs every receiver a decode and a verification, and one admitted node
could push without end, so pushes are rated per origin (the node that stamped the
entry): a token bucket of ``PUSH_RATE`` entries a second, ``PUSH_BURST`` deep. The
entries of a push beyond it are refused unmerged (counted in
``GossipStatistics.pushes_refused``; an honest entry so refused still arrives with
the rounds), with the push's claims for their origins. Copies of entries held
already (the flood brings one from each peer) cost no tokens. What the ledger takes in
from a push but does not report as added (a duplicate, a re-wrap of content it
holds) is not forwarded: only new content travels on.

Failure detection is local and event-driven: nothing is written while the
fleet is quiet. The engine remembers when it last *heard from* each direct
peer (session opened, or any message received). A peer silent for more than
``suspect_after`` seconds (disconnected, crashed, or hung) becomes a
:class:`~._records.Suspicion` — with the peer's record counter at that moment
and the time the silence began — and the node rewrites its own record only
when that set changes. So a link that drops and comes back within
``suspect_after`` changes nothing. To keep silence meaningful on a healthy
session, a round also sends a summary to every peer not contacted for
``suspect_after / 3`` seconds (25 bytes, no answer when in sync). Whether a
node counts as unreachable is decided by every reader from the records
(``_convergence.unreachable_nodes``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import blake3
import msgpack

from ._codec import encode, message
from ._config import GossipConfig
from ._entries import Entry, entry_size
from ._errors import InvalidValue, MalformedMessage
from ._events import Output, SendMessage
from ._hlc import vv_from_wire, vv_to_wire
from ._identity import Role
from ._ledger import Ledger, MergeResult
from ._manifest import validate_model_id, validate_version
from ._rate import TokenBuckets
from ._records import Suspicion
from ._rng import Rng
from ._settle import wanted_manifests

__all__ = ["GossipSummary", "GossipDigest", "GossipDelta", "GossipBuckets", "GossipPush",
           "GossipWant",
           "GossipStatistics", "GossipEngine", "bucket_bits", "bucket_of", "bucket_hashes",
           "wire_size"]


def _size_slot() -> Any:
    """A message's encoded size, filled in by :func:`wire_size` the first time it is
    asked for (not part of the encoding, equality or repr: messages are immutable)."""
    return field(default=None, init=False, repr=False, compare=False)


@message(20)
@dataclass(frozen=True, slots=True)
class GossipSummary:
    vv_hash: bytes
    origins: int
    _size: int | None = _size_slot()


@message(21)
@dataclass(frozen=True, slots=True)
class GossipDigest:
    """Vector entries: the whole vector (``bits == 0``, no buckets) or only the
    origins of ``buckets`` (bucket = leading ``bits`` bits of the origin id)."""

    vv: dict[bytes, int]
    reply: bool
    bits: int
    buckets: tuple[int, ...]
    _size: int | None = _size_slot()


@message(22)
@dataclass(frozen=True, slots=True)
class GossipDelta:
    entries: tuple[Entry, ...]
    ranges: dict[bytes, tuple[int, int]]
    _size: int | None = _size_slot()


@message(23)
@dataclass(frozen=True, slots=True)
class GossipBuckets:
    """The sender's vector as ``2**bits`` bucket hashes (8 bytes each, concatenated)."""

    bits: int
    hashes: bytes
    _size: int | None = _size_slot()


@message(24)
@dataclass(frozen=True, slots=True)
class GossipPush:
    """Urgent entries sent at once (see "Urgent entries are pushed"): merged like a
    :class:`GossipDelta`, and passed on to the receiver's other peers."""

    entries: tuple[Entry, ...]
    ranges: dict[bytes, tuple[int, int]]
    _size: int | None = _size_slot()


@message(25)
@dataclass(frozen=True, slots=True)
class GossipWant:
    """Send me the manifests of these ``(model_id, version)`` pairs: a live intent here
    names them and none is held (see "A manifest forgotten here")."""

    names: tuple[tuple[str, str], ...]
    _size: int | None = _size_slot()

    def __post_init__(self) -> None:
        if not 0 < len(self.names) <= WANT_NAMES:
            raise InvalidValue(f"a want names 1-{WANT_NAMES} manifests")
        for model_id, version in self.names:
            validate_model_id(model_id)
            validate_version(version)


_TYPES = (GossipSummary, GossipDigest, GossipDelta, GossipBuckets, GossipPush, GossipWant)
_Msg = GossipSummary | GossipDigest | GossipDelta | GossipBuckets | GossipPush | GossipWant

def urgent(entry: Entry) -> bool:
    """Whether ``entry`` is pushed: an intent, a manifest, a revocation, or the
    certificate of an operator or publisher (what a rollout waits for)."""
    if entry.intent is not None or entry.manifest is not None or entry.revocation is not None:
        return True
    cert = entry.certificate
    return cert is not None and cert.role is not Role.NODE


WANT_NAMES = 8          # manifests one want may name...
WANT_AFTER = 3.0        # ...missing this long (seconds) before they are asked for...
WANT_EVERY = 5.0        # ...and again this often, of another peer, until they arrive
WANT_RATE = 0.5         # wants answered a second per asking peer...
WANT_BURST = 4.0        # ...with a bucket this deep

PUSH_RATE = 32.0         # pushed entries a second accepted per origin...
PUSH_BURST = 256.0       # ...with a bucket this deep

BUCKETS_FROM = 64        # origins from which a mismatch goes through bucket hashes
BUCKET_TARGET = 16       # origins per bucket aimed at
MAX_BITS = 12


def bucket_bits(origins: int) -> int:
    """How many leading id bits pick the bucket for a vector of ``origins`` entries."""
    bits = 0
    while bits < MAX_BITS and (origins >> bits) > BUCKET_TARGET:
        bits += 1
    return bits


def bucket_of(origin: str, bits: int) -> int:
    """The bucket of ``origin``: the leading ``bits`` bits of its id."""
    return int(origin[:4], 16) >> (16 - bits)


def bucket_hashes(vv: Mapping[str, int], bits: int) -> bytes:
    """One 8-byte hash per bucket, concatenated in bucket order."""
    parts: list[list[str]] = [[] for _ in range(1 << bits)]
    for origin, c in vv.items():
        if c > 0:
            parts[bucket_of(origin, bits)].append(origin)
    out = bytearray()
    for part in parts:
        h = blake3.blake3()
        for origin in sorted(part):
            h.update(bytes.fromhex(origin) + vv[origin].to_bytes(8, "big"))
        out += h.digest(8)
    return bytes(out)


def wire_size(msg: object, entries_size: int | None = None) -> int:
    """``len(encode(msg))``; for a gossip message, computed once and kept on the message
    object (messages are immutable), or the length of the body a received one was
    decoded from (the codec fills it in: ``SIZE_SLOT``).

    A sender counts what it sends and a receiver what it receives; when both live
    in one process (the simulator) the same object is encoded once, not three
    times. ``entries_size``: for a :class:`GossipDelta`, the encoded size of its
    entries when the caller knows it already (``DeltaPiece.size``)."""
    if not isinstance(msg, _TYPES):
        return len(encode(msg))
    size = msg._size
    if size is None:
        size = _measure(msg, entries_size)
        object.__setattr__(msg, "_size", size)
    return size


def _measure(msg: _Msg, entries_size: int | None) -> int:
    if type(msg) is GossipDigest:
        # the vector map packs as msgpack packs it inside the message (the codec only
        # sorts its keys, which changes no length) once its types are the codec's
        body = _packed_map_size(msg.vv, _is_int)
        if body is not None:
            return len(encode(GossipDigest({}, msg.reply, msg.bits, msg.buckets))) - 1 + body
    elif type(msg) is GossipDelta:
        # the entries' encodings are known to the ledger: add them up instead of
        # encoding again (msgpack nests an array's items verbatim)
        body = _packed_map_size(msg.ranges, _is_range)
        if body is not None:
            n = len(msg.entries)
            return (len(encode(GossipDelta((), {}))) - 2 + body
                    + (1 if n < 16 else 3 if n < 65536 else 5)
                    + (sum(map(entry_size, msg.entries)) if entries_size is None
                       else entries_size))
    return len(encode(msg))


def _is_int(values: Collection[object]) -> bool:
    return set(map(type, values)) <= {int}


def _is_range(values: Collection[object]) -> bool:
    return (set(map(type, values)) <= {tuple}
            and set(map(len, values)) <= {2}   # type: ignore[arg-type]
            and set(map(type, chain.from_iterable(values))) <= {int})  # type: ignore[arg-type]


def _packed_map_size(value: Mapping[bytes, object],
                     values_ok: Callable[[Collection[object]], bool]) -> int | None:
    """``len(packb(value))`` when its keys are bytes and ``values_ok`` accepts its
    values (then the codec's encoding of the map has that length); else None."""
    if not (set(map(type, value)) <= {bytes} and values_ok(value.values())):
        return None
    try:
        return len(msgpack.packb(value, use_bin_type=True, buf_size=4096))  # not 256 KiB
    except (OverflowError, ValueError, TypeError):
        return None


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
    full_digests_sent: int         # whole-vector digests (small fleets)
    bucket_exchanges: int          # mismatches resolved through bucket hashes
    keepalives_sent: int           # summaries sent only so a peer hears from us
    suspects: int                  # direct peers suspected now
    suspicion_changes: int         # times the suspected set changed
    entries_pushed: int            # urgent entries sent at once (counted once per peer)
    pushes_refused: int = 0        # pushed entries refused over their origin's push rate
    wants_sent: int = 0            # asks for manifests a live intent names and none is held
    wants_answered: int = 0        # peers' asks answered with manifest entries


class GossipEngine:
    def __init__(self, *, node_id: str, config: GossipConfig, rng: Rng,
                 ledger: Ledger, now: float) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self.ledger = ledger
        self.peers: set[str] = set()
        self._outputs: list[Output] = []
        self._next_round = now + self._rng.uniform(0, config.interval)
        self._rounds = 0
        self._heard: dict[str, float] = {}          # direct peer -> last heard from
        self._last_sent: dict[str, float] = {}      # direct peer -> last message to it
        self._suspected: dict[str, Suspicion] = {}
        self._changes = 0
        self._own_seen = -1     # highest own counter a peer's digest showed (restart gap)
        self._hash_cache: tuple[int, bytes, int] = (-1, b"", 0)   # generation, hash, origins
        self._bucket_cache: dict[int, tuple[int, bytes]] = {}     # bits -> (generation, hashes)
        self._sent = self._recv = self._bytes_sent = self._bytes_recv = 0
        self._in_sync = self._entries_recv = self._entries_added = self._rejected = 0
        self._full = self._bucketed = self._keepalives = 0
        self._pushed = 0
        self._push_tokens = TokenBuckets(PUSH_RATE, PUSH_BURST)   # entries, per origin
        self._push_refused = 0
        self._asks: dict[tuple[str, str], float] = {}   # manifest wanted -> when to ask
        self._want_tokens = TokenBuckets(WANT_RATE, WANT_BURST)   # wants answered, per peer
        self._wants = self._wants_answered = 0
        self._round_gen = -1     # the ledger's vector generation at the last round

    # ------------------------------------------------------------------ peers
    def peer_connected(self, peer: str, now: float) -> None:
        self.peers.add(peer)
        self._heard[peer] = now
        self._send(peer, self._summary(), now)

    def peer_disconnected(self, peer: str, now: float) -> None:
        self.peers.discard(peer)
        self._last_sent.pop(peer, None)

    def forget(self, peer: str) -> None:
        """The node closed its session with ``peer`` on purpose (overlay rotation):
        its silence from now on is no sign of failure."""
        self._heard.pop(peer, None)
        self._suspected.pop(peer, None)

    def heard(self, peer: str, now: float) -> None:
        """Any message from ``peer`` (gossip or not) proves it alive."""
        if peer in self.peers and self._heard.get(peer, -1e18) < now:
            self._heard[peer] = now

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
        peers = sorted(self.peers)
        chosen = self._rng.sample(peers, min(self.config.fanout, len(peers)))
        summary = self._summary()
        gen, self._round_gen = self._round_gen, self.ledger.vv_generation
        opening: _Msg = summary
        if gen != self._round_gen and summary.origins < BUCKETS_FROM:
            # busy (the vector moved since the last round): a summary would only be
            # answered by the peer's digest, so open with ours (one message less)
            opening = GossipDigest(vv_to_wire(self.ledger.version_vector), True, 0, ())
        for p in chosen:
            self._send(p, opening, now)
        keepalive = self.config.suspect_after / 3
        for p in peers:
            if now - self._last_sent.get(p, -1e18) >= keepalive:
                self._keepalives += 1
                self._send(p, summary, now)
        self._ask_for_manifests(peers, now)
        return True

    def _ask_for_manifests(self, peers: list[str], now: float) -> None:
        """Ask one peer (each time another, in turn) for the manifests live intents
        name and the ledger lacks (see "A manifest forgotten here")."""
        missing = wanted_manifests(self.ledger.intents(), self.ledger.manifests())
        asks = self._asks
        for name in [n for n in asks if n not in missing]:
            del asks[name]
        due = [n for n in missing if asks.setdefault(n, now + WANT_AFTER) <= now]
        if not due or not peers:
            return
        due = due[:WANT_NAMES]
        for name in due:
            asks[name] = now + WANT_EVERY
        self._wants += 1
        self._send(peers[self._wants % len(peers)], GossipWant(tuple(due)), now)

    def clock_stepped_back(self, now: float) -> None:
        """The wall clock went back: no time kept here may lie after ``now``, or
        rounds stop and silent peers go unsuspected until the clock catches up."""
        period = self.config.interval * (1 + self.config.jitter)
        self._next_round = min(self._next_round, now + period)
        for name, t in self._asks.items():          # wanted manifests: ask again soon
            self._asks[name] = min(t, now + WANT_EVERY)
        for times in (self._heard, self._last_sent):
            for peer, t in times.items():
                if t > now:
                    times[peer] = now

    @property
    def rounds(self) -> int:
        return self._rounds

    # ------------------------------------------------------------------ failure detection
    def update_suspicions(self, now: float) -> bool:
        """Re-evaluate which direct peers are silent; True when the set changed."""
        limit = self.config.suspect_after
        changed = False
        for peer, t in self._heard.items():
            silent = now - t > limit
            if silent and peer not in self._suspected:
                self._suspected[peer] = Suspicion(peer, self.ledger.record_counter(peer), t)
                changed = True
            elif not silent and peer in self._suspected:
                del self._suspected[peer]
                changed = True
        if changed:
            self._changes += 1
        return changed

    def suspects(self) -> tuple[Suspicion, ...]:
        return tuple(self._suspected[p] for p in sorted(self._suspected))

    # ------------------------------------------------------------------ messages
    def handles(self, msg: object) -> bool:
        return isinstance(msg, _TYPES)

    def receive(self, peer: str, msg: object, now: float) -> MergeResult | None:
        """Handle a gossip message; returns the merge result when entries arrived."""
        self._recv += 1
        self.heard(peer, now)
        if isinstance(msg, _TYPES):
            self._bytes_recv += wire_size(msg)   # what the message costs on the wire
        if isinstance(msg, GossipSummary):
            own = self._summary()
            if msg.vv_hash == own.vv_hash:
                self._in_sync += 1
                return None
            origins = max(msg.origins, own.origins)
            if origins < BUCKETS_FROM:
                self._full += 1
                self._send(peer, GossipDigest(vv_to_wire(self.ledger.version_vector), True,
                                              0, ()), now)
            else:
                bits = bucket_bits(origins)
                self._send(peer, GossipBuckets(bits, self._buckets(bits)), now)
            return None
        if isinstance(msg, GossipBuckets):
            if not 0 <= msg.bits <= MAX_BITS or len(msg.hashes) != 8 << msg.bits:
                raise MalformedMessage("bucket hashes must be 8 bytes for each of 2**bits "
                                       f"buckets, bits <= {MAX_BITS}")
            mine = self._buckets(msg.bits)
            diff = tuple(i for i in range(1 << msg.bits)
                         if mine[8 * i:8 * i + 8] != msg.hashes[8 * i:8 * i + 8]
                         or (self.ledger.has_gap(self.node_id)
                             and i == bucket_of(self.node_id, msg.bits)))
            if diff:
                self._bucketed += 1
                self._send(peer, GossipDigest(self._partial_vv(msg.bits, diff), True,
                                              msg.bits, diff), now)
            return None
        if isinstance(msg, GossipDigest):
            try:
                their = vv_from_wire(msg.vv)
            except InvalidValue as exc:
                raise MalformedMessage(f"bad digest: {exc}") from None
            only = self._only(msg.bits, msg.buckets)
            self._learn_own(their, only is None or only(self.node_id))
            named = (None if only is None
                     else self.ledger.origins_in_buckets(msg.bits, msg.buckets))
            self._send_delta(peer, their, named, now)
            if msg.reply and self._lacks_from(peer, their, only, named):
                vv = (vv_to_wire(self.ledger.version_vector) if only is None
                      else self._partial_vv(msg.bits, msg.buckets))
                self._send(peer, GossipDigest(vv, False, msg.bits, msg.buckets), now)
            return None
        if isinstance(msg, GossipDelta):
            return self._merge(msg.entries, msg.ranges, now)
        if isinstance(msg, GossipWant):
            self._answer_want(peer, msg, now)
            return None
        if isinstance(msg, GossipPush):
            msg = self._rate_push(msg, now)
            result = self._merge(msg.entries, msg.ranges, now)
            if self.config.push and result.added:
                self._forward(peer, msg, result, now)
            return result
        raise MalformedMessage(f"not a gossip message: {type(msg).__name__}")

    def _lacks_from(self, peer: str, their: Mapping[str, int],
                    only: Callable[[str], bool] | None, origins: list[str] | None) -> bool:
        """Whether the reply digest to ``peer``'s digest ``their`` is worth sending: its
        vector is ahead of ours somewhere (in the buckets asked about), or behind on
        its own origin (a restart gap there closes on digests). Otherwise the peer could
        only answer it with an empty delta, and whatever it holds above its vector (rare:
        entries past a gap) comes back when it opens a round itself ("A reply digest
        only when needed")."""
        version_of = self.ledger.version_of
        if their.get(peer, 0) < version_of(peer) and (origins is None or peer in origins):
            return True
        return any(c > version_of(o) for o, c in their.items() if only is None or only(o))

    def _answer_want(self, peer: str, msg: GossipWant, now: float) -> None:
        """Send ``peer`` the manifest entries held for the names of its want, one
        entry a delta (a manifest can be large), at most ``WANT_NAMES`` entries."""
        if not self._want_tokens.take(peer, 1.0, now):
            return
        names = set(msg.names)
        found = [e for e in self.ledger.entries() if e.manifest is not None
                 and (e.manifest.model_id, e.manifest.version) in names]
        if found:
            self._wants_answered += 1
        for e in found[:WANT_NAMES]:
            self._send(peer, GossipDelta((e,), {}), now)

    def _rate_push(self, msg: GossipPush, now: float) -> GossipPush:
        """``msg`` less the entries over their origin's push rate (and the claims of
        those origins)."""
        over: set[str] = set()
        keep: list[Entry] = []
        holds = self.ledger.holds
        for e in msg.entries:
            origin = e.origin
            if holds(origin, e.counter):   # a copy from another peer costs nothing
                keep.append(e)
                continue
            if self._push_tokens.take(origin, 1.0, now):
                keep.append(e)
            else:
                over.add(origin)
                self._push_refused += 1
        if not over:
            return msg
        return GossipPush(tuple(keep), {o: r for o, r in msg.ranges.items()
                                        if o.hex() not in over})

    def _merge(self, entries: tuple[Entry, ...],
               raw_ranges: Mapping[bytes, tuple[int, int]], now: float) -> MergeResult:
        ranges: dict[str, tuple[int, int]] = {}
        for k, r in raw_ranges.items():
            if len(k) != 16:
                raise MalformedMessage("a delta range origin is 16 bytes")
            ranges[k.hex()] = r
        result = self.ledger.merge_entries(entries, ranges, now)
        self._learn_own({}, False)
        self._entries_recv += len(entries)
        self._entries_added += len(result.added)
        self._rejected += sum(result.rejected.values())
        return result

    # ------------------------------------------------------------------ push
    def push(self, entries: Sequence[Entry], ranges: Mapping[bytes, tuple[int, int]],
             exclude: str | None, now: float) -> None:
        """Send urgent ``entries`` to every connected peer but ``exclude`` at once, with
        the claims ``ranges`` (origin id bytes -> ``(since, upto)``), which the caller
        vouches for. Only :func:`urgent` entries are pushed; the claims of origins with
        none of them are dropped."""
        going = tuple(e for e in entries if urgent(e))
        if not self.config.push or not going or not self.peers:
            return
        origins = {bytes.fromhex(e.origin) for e in going}
        msg = GossipPush(going, {o: r for o, r in ranges.items() if o in origins})
        for p in sorted(self.peers):
            if p != exclude:
                self._pushed += len(going)
                self._send(p, msg, now)

    def _forward(self, peer: str, msg: GossipPush, result: MergeResult, now: float) -> None:
        """Pass on the urgent entries a push from ``peer`` added here, keeping the
        message's claim for an origin only if every entry of it in the message goes on."""
        added = {id(e) for e in result.added}
        fresh = [e for e in msg.entries if id(e) in added and urgent(e)]
        if not fresh:
            return
        going = {id(e) for e in fresh}
        whole: dict[str, bool] = {}      # origin -> all its entries in the message go on
        for e in msg.entries:
            whole[e.origin] = whole.get(e.origin, True) and id(e) in going
        ranges = {o: r for o, r in msg.ranges.items() if whole.get(o.hex(), True)}
        self.push(fresh, ranges, peer, now)

    def _only(self, bits: int, buckets: tuple[int, ...]) -> Callable[[str], bool] | None:
        if bits == 0 and not buckets:
            return None
        if not 0 < bits <= MAX_BITS or any(not 0 <= b < (1 << bits) for b in buckets):
            raise MalformedMessage(f"a partial digest names buckets of 1..{MAX_BITS} bits")
        wanted = frozenset(buckets)
        return lambda origin: bucket_of(origin, bits) in wanted

    def _partial_vv(self, bits: int, buckets: tuple[int, ...]) -> dict[bytes, int]:
        return self.ledger.vector_in_buckets(bits, buckets)

    def _summary(self) -> GossipSummary:
        gen = self.ledger.vv_generation
        if self._hash_cache[0] != gen:
            # the ledger keeps the digest of its vector up to date as it moves
            self._hash_cache = (gen, self.ledger.vv_hash(), self.ledger.origins_in_vector())
        h = self._hash_cache[1]
        if self.ledger.has_gap(self.node_id):   # never "in sync" before the gap closes
            h = blake3.blake3(b"restart-gap" + self.node_id.encode() + h).digest(16)
        return GossipSummary(h, self._hash_cache[2])

    def _learn_own(self, their: Mapping[str, int], covered: bool) -> None:
        """A peer showed its vector entry for us: once we hold all it knows of our
        own origin, close the restart gap (see ``Ledger.open_gap``)."""
        if covered and self.ledger.has_gap(self.node_id):
            self._own_seen = max(self._own_seen, their.get(self.node_id, 0))
        if (self._own_seen >= 0 and self.ledger.has_gap(self.node_id)
                and self.ledger.version_of(self.node_id) >= self._own_seen):
            self.ledger.close_gap(self.node_id)

    def _buckets(self, bits: int) -> bytes:
        gen = self.ledger.vv_generation
        cached = self._bucket_cache.get(bits)
        if cached is None or cached[0] != gen:
            # equal to bucket_hashes(version_vector, bits); the ledger rehashes only
            # the buckets that moved
            cached = self._bucket_cache[bits] = (gen, self.ledger.bucket_hashes(bits))
        return cached[1]

    def _send_delta(self, peer: str, their: Mapping[str, int],
                    origins: list[str] | None, now: float) -> None:
        # (delta_since is empty exactly when missing_for is False: no scan first)
        for piece in self.ledger.delta_since(their, self.config.max_delta_bytes,
                                             origins=origins):
            ranges = {bytes.fromhex(o): r for o, r in piece.ranges.items()}
            msg = GossipDelta(piece.entries, ranges)
            wire_size(msg, piece.size)   # remembered for _send: the ledger summed the entries
            self._send(peer, msg, now)

    def _send(self, peer: str, msg: _Msg, now: float) -> None:
        self._outputs.append(SendMessage(peer, msg))
        self._last_sent[peer] = now
        self._sent += 1
        self._bytes_sent += wire_size(msg)

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def statistics(self) -> GossipStatistics:
        return GossipStatistics(self._rounds, self._sent, self._recv, self._bytes_sent,
                                self._bytes_recv, self._in_sync, self._entries_recv,
                                self._entries_added, self._rejected, self._full,
                                self._bucketed, self._keepalives, len(self._suspected),
                                self._changes, self._pushed, self._push_refused,
                                self._wants, self._wants_answered)
