"""The swarm engine: content-addressed, multi-source chunk transfer (sans-IO).

Theory of operation
-------------------
A *swarm* is keyed by a content key ``f"{manifest_id}/{variant_id}"``; its chunk
list comes from ``lookup(key)`` (the signed manifest), so every peer agrees on
it. ``want(key)`` sends :class:`Interested` to every connected peer; a peer that
knows the key answers with a :class:`HaveSet` bitfield computed from its local
store (``held``) — so a chunk held because of *another* version counts — and
from then on sends a :class:`Have` each time it stores another chunk of that
key. A peer that lacks the manifest answers :class:`CannotHelp` and is asked
again every ``interest_retry`` seconds; it also remembers who asked, and answers them
with a :class:`HaveSet` as soon as it learns the manifest (during a rollout's
start-up, waiting for the re-ask left uplinks idle for seconds).

What each peer holds is kept per peer as a set of chunk hashes (not per key),
so availability of a chunk shared by two keys is counted once. The picker
(:meth:`SwarmEngine._schedule`) runs after every input that can change its
answer. It walks the wanted keys from the highest priority down (FIFO at equal
priority) and requests their missing chunks *rarest first* (fewest connected
providers; ties broken by a per-chunk random rank drawn from the injected rng),
each from the provider with the fewest outstanding requests, within
``max_requests_per_peer`` and ``max_requests_total``. Outside endgame a chunk has
at most one outstanding request. Once every remaining chunk of a key is
requested and at most ``endgame_chunks`` remain, a chunk may be requested from
up to ``endgame_fanout`` peers; the first verified copy wins and the others get
:class:`Cancel`. A request unanswered after ``request_timeout`` is re-issued
elsewhere; that peer is not asked for that chunk again for a while, and after
``max_peer_failures`` consecutive failures (timeouts, or "missing" answers for
chunks it advertised) it is dropped as a liar.

A download cap is enforced on the *requests*: each request spends its chunk
size from a token bucket refilled at ``download_rate``; since keys are served in
priority order, a critical key gets the budget before a low one. The upload
side lives in :mod:`._swarm_uploads`.

Every :class:`Piece` is checked with ``verifier(hash, size, data)`` before
anything else. A bad one drops the peer (``DropPeer``), bans it for good and is
reported; a good one that we asked for and still need becomes a ``StoreChunk``;
a good one no longer needed is a counted duplicate; one we never asked for is
ignored and counted. ``held`` grows only in :meth:`chunk_stored`.

Picker cost: each download keeps a lazy min-heap of its idle missing chunks keyed by
(availability, rank), kept in step by :meth:`SwarmEngine._requeue` whenever a chunk's
availability or request/store state changes; the picker pops from it instead of
scanning every missing chunk, so its work follows the requests it issues (see
:meth:`SwarmEngine._schedule_download` for why the picks are the same as a full scan).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._config import SwarmConfig
from ._events import DropPeer, Notice, Output, SendMessage, ServeChunk, StoreChunk
from ._manifest import ChunkRef
from ._rng import Rng
from ._swarm_messages import (
    SWARM_MESSAGES,
    Cancel,
    CannotHelp,
    Have,
    HaveSet,
    Interested,
    NotInterested,
    Piece,
    Redirect,
    Reject,
    Request,
    bitfield_indices,
    make_bitfield,
)
from ._swarm_uploads import TokenBucket, UploadScheduler
from ._types import BlockerReason, TransferPriority

__all__ = [
    "ContentKey",
    "SwarmEngine",
    "TransferProgress",
    "SwarmStatistics",
    "make_piece",
    "Piece",
]

ContentKey = str

_MAX_ASKED_EARLY = 64   # keys remembered as asked for before we knew their manifest


def make_piece(chunk_hash: bytes, data: bytes, priority: int) -> object:
    """The message a driver sends when it carries out ``ServeChunk(peer, hash, priority)``."""
    return Piece(chunk_hash, data, int(priority))


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """Where one wanted key stands. Byte counts are over the key's *distinct* chunks.

    ``bytes_reused``: already held at ``want()`` (the delta saving);
    ``bytes_fetched``: accepted from peers; ``bytes_duplicate``: verified bytes that
    arrived but were not needed (endgame duplicates, late or unrequested pieces).
    """

    bytes_total: int
    bytes_held: int
    bytes_reused: int
    bytes_fetched: int
    bytes_duplicate: int
    stalled: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SwarmStatistics:
    keys_wanted: int
    keys_completed: int
    peers_connected: int
    requests_sent: int
    requests_outstanding: int
    endgame_requests: int
    requests_timed_out: int
    requests_rejected: int
    cancels_sent: int
    pieces_received: int
    pieces_accepted: int
    corrupt_pieces: int
    unsolicited_pieces: int
    duplicate_pieces: int
    bytes_fetched: int
    bytes_duplicate: int
    bytes_reused: int
    uploads_served: int
    bytes_uploaded: int
    uploads_queued: int
    uploads_refused: int
    upload_preemptions: int
    uploads_stalled: int   # pieces that waited on their own connection past the window
    bad_have_messages: int
    store_failures: int
    redirects_sent: int
    redirects_received: int
    preempted_requests: int
    picker_pops: int   # picker queue entries examined (live or stale): cost, not wall time
    dropped_peers: tuple[tuple[str, str], ...]   # (peer, reason)


@dataclass(slots=True)
class _KeyInfo:
    refs: tuple[ChunkRef, ...]
    index_of: dict[bytes, int]     # first position of each hash
    size_of: dict[bytes, int]


_AVAIL_BITS = 24                      # availability (peers holding a chunk) < 2**24
_AVAIL_MASK = (1 << _AVAIL_BITS) - 1


def _live(avail: int, seq: int) -> int:
    """A picker-queue entry's identity, packed: its sequence number and availability."""
    return (seq << _AVAIL_BITS) | min(avail, _AVAIL_MASK)


@dataclass(slots=True)
class _Download:
    key: str
    priority: TransferPriority
    order: int
    info: _KeyInfo | None = None
    missing: set[bytes] = field(default_factory=set)
    rank: dict[bytes, float] = field(default_factory=dict)   # random tie-break
    # the picker's queue ("Picker cost" in the module docstring): a lazy min-heap of
    # (availability, rank, hash, seq); ``queued[h] == _live(availability, seq)`` marks h's
    # one live entry, any other entry for h is stale and skipped when popped (one int, not
    # a tuple: this dict holds every missing chunk at the start of a download)
    heap: list[tuple[int, float, bytes, int]] = field(default_factory=list)
    queued: dict[bytes, int] = field(default_factory=dict)
    bytes_total: int = 0
    bytes_reused: int = 0
    bytes_fetched: int = 0
    bytes_duplicate: int = 0
    completed: bool = False
    cannot_help: dict[str, float] = field(default_factory=dict)   # peer -> answered at
    lookup_retry_at: float = 0.0
    last_problem: str = ""


@dataclass(slots=True)
class _Outstanding:
    peer: str
    key: str
    size: int
    sent_at: float


class SwarmEngine:
    """See the module docstring. Inputs append outputs; take them with :meth:`take_outputs`."""

    def __init__(self, *, node_id: str, config: SwarmConfig, rng: Rng,
                 held: set[bytes], lookup: Callable[[str], Sequence[ChunkRef] | None],
                 verifier: Callable[[bytes, int, bytes], bool]) -> None:
        self.node_id = node_id
        self._config = config
        self._rng = rng
        self._held = held
        self._lookup = lookup
        self._verifier = verifier
        self._outputs: list[Output] = []
        self._completed: list[str] = []
        self._connected: set[str] = set()
        self._banned: dict[str, str] = {}
        self._peer_has: dict[str, set[bytes]] = {}
        self._avail: dict[bytes, int] = {}   # hash -> connected peers that have it
        self._peer_out: dict[str, dict[bytes, _Outstanding]] = {}
        self._requests: dict[bytes, dict[str, _Outstanding]] = {}
        self._stale: dict[str, dict[bytes, float]] = {}   # peer -> hash -> given up at
        self._pending_store: dict[bytes, str] = {}
        self._retry_after: dict[bytes, float] = {}
        self._busy_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._downloads: dict[str, _Download] = {}
        self._infos: dict[str, _KeyInfo] = {}
        # chunk hash -> the wanted/served key holding it: the key itself, a set only when
        # several keys share the chunk (one set per chunk cost ~220 B of RSS per chunk)
        self._hash_keys: dict[bytes, str | set[str]] = {}
        self._remote_interest: dict[str, set[str]] = {}
        self._uploads: UploadScheduler | None = None
        self._down_bucket: TokenBucket | None = None
        self._blocked_on_tokens = False
        self._want_seq = 0
        self._n_out = 0
        # every outstanding request in the order it was sent (so in sent_at order, since
        # ``now`` never goes back): the first one is the next to time out
        self._by_age: dict[tuple[str, bytes], _Outstanding] = {}
        self._c: dict[str, int] = dict.fromkeys(
            ("requests_sent", "endgame_requests", "requests_timed_out", "requests_rejected",
             "cancels_sent", "pieces_received", "pieces_accepted", "corrupt_pieces",
             "unsolicited_pieces", "duplicate_pieces", "bytes_fetched", "bytes_duplicate",
             "bytes_reused", "uploads_served", "bytes_uploaded", "uploads_refused",
             "bad_have_messages", "store_failures", "keys_completed", "redirects_sent",
             "redirects_received", "preempted_requests", "picker_pops"), 0)
        self._queue_seq = 0
        # link estimates per peer (download side): smallest request->piece time seen,
        # smoothed time per piece while pipelined, last piece arrival
        self._rtt_min: dict[str, float] = {}
        self._service: dict[str, float] = {}
        self._last_arrival: dict[str, float] = {}
        self._depth_of: dict[str, int] = {}   # cache of _compute_depth
        self._avoid: dict[str, dict[bytes, float]] = {}   # peer -> hash -> do not ask before
        self._endgame_wake: float | None = None
        # upload side: never-uploaded positions per key
        # key -> peers that asked for it (Interested) before we knew it (answered later)
        self._asked_early: dict[str, set[str]] = {}
        self._unsent: dict[str, list[int]] = {}

    def clock_stepped_back(self, delta: float) -> None:
        """The wall clock went back by ``delta`` seconds. Every time kept here (request
        stamps, deadlines, link estimates, buckets, slots) moves back with it, so each
        timer keeps its remaining duration instead of waiting for the clock to catch up
        (an unanswered request would otherwise be re-issued only ``delta`` later)."""
        shift = -delta
        for rec in self._by_age.values():
            rec.sent_at += shift
        maps: list[dict[Any, float]] = [self._retry_after, self._busy_until,
                                        self._last_arrival,
                                        *self._stale.values(), *self._avoid.values()]
        for d in self._downloads.values():
            maps.append(d.cannot_help)
            d.lookup_retry_at += shift
        for times in maps:
            for key in times:
                times[key] += shift
        if self._endgame_wake is not None:
            self._endgame_wake += shift
        if self._uploads is not None:
            self._uploads.shift_time(shift)
        if self._down_bucket is not None:
            self._down_bucket.shift_time(shift)

    # ================================================================== helpers

    def _buckets(self, now: float) -> tuple[UploadScheduler, TokenBucket]:
        # Created lazily so that the first `now` the engine sees starts the buckets.
        if self._uploads is None or self._down_bucket is None:
            self._uploads = UploadScheduler(self._config, self._rng, now)
            if self._config.laggard_patience > 0:
                # laggards first: the requester we know to hold the fewest chunks
                has = self._peer_has
                self._uploads.progress_of = lambda p: len(has.get(p, ()))
            self._down_bucket = TokenBucket(self._config.download_rate,
                                            self._config.rate_burst, now)
        return self._uploads, self._down_bucket

    def _send(self, peer: str, message: object) -> None:
        if peer in self._connected:
            self._outputs.append(SendMessage(peer, message))

    def _info(self, key: str) -> _KeyInfo | None:
        info = self._infos.get(key)
        if info is not None:
            return info
        refs = self._lookup(key)
        if refs is None:
            return None
        index_of: dict[bytes, int] = {}
        size_of: dict[bytes, int] = {}
        for i, ref in enumerate(refs):
            if ref.hash not in index_of:
                index_of[ref.hash] = i
                size_of[ref.hash] = ref.size
        info = _KeyInfo(tuple(refs), index_of, size_of)
        self._infos[key] = info
        hash_keys = self._hash_keys
        for h in index_of:
            held_by = hash_keys.get(h)
            if held_by is None:
                hash_keys[h] = key
            elif isinstance(held_by, str):
                if held_by != key:
                    hash_keys[h] = {held_by, key}
            else:
                held_by.add(key)
        waiting = self._asked_early.pop(key, None)
        if waiting:
            # Peers we told CannotHelp: answer them now rather than when they re-ask
            # (``interest_retry`` later). During a rollout's start-up this is the
            # difference between peers spreading chunks at once and 5 s of idle uplinks.
            for peer in sorted(waiting):
                if peer in self._connected:
                    self._on_interested(peer, Interested(key))
        return info

    def _forget_info(self, key: str) -> None:
        if key in self._downloads or any(key in s for s in self._remote_interest.values()):
            return
        self._unsent.pop(key, None)
        info = self._infos.pop(key, None)
        if info is None:
            return
        hash_keys = self._hash_keys
        for h in info.index_of:
            keys = hash_keys.get(h)
            if keys is None:
                continue
            if isinstance(keys, str):
                if keys == key:
                    del hash_keys[h]
                continue
            keys.discard(key)
            if len(keys) == 1:
                hash_keys[h] = next(iter(keys))
            elif not keys:
                del hash_keys[h]

    def _keys_of(self, chunk_hash: bytes) -> tuple[str, ...] | set[str]:
        """The keys (wanted or served) that hold ``chunk_hash``."""
        keys = self._hash_keys.get(chunk_hash)
        if keys is None:
            return ()
        return (keys,) if isinstance(keys, str) else keys

    def _known(self, chunk_hash: bytes) -> tuple[bytes, int] | None:
        """``(the manifest's own bytes object for this hash, the chunk's size)``, or None
        for a chunk of no key we know. Keeping the manifest's object (not the copy each
        message decodes) keeps one 32-byte object per chunk in every set that holds it."""
        for key in self._keys_of(chunk_hash):
            info = self._infos[key]
            return info.refs[info.index_of[chunk_hash]].hash, info.size_of[chunk_hash]
        return None

    def _needed(self, chunk_hash: bytes) -> bool:
        return any(chunk_hash in d.missing for d in self._downloads.values())

    def _needing(self, chunk_hash: bytes) -> _Download | None:
        best: _Download | None = None
        for d in self._downloads.values():
            if chunk_hash in d.missing and (best is None or d.priority > best.priority):
                best = d
        return best

    def _has_add(self, peer: str, chunk_hash: bytes) -> None:
        has = self._peer_has[peer]
        if chunk_hash not in has:
            has.add(chunk_hash)
            self._avail[chunk_hash] = self._avail.get(chunk_hash, 0) + 1
            self._requeue(chunk_hash)

    def _has_discard(self, peer: str, chunk_hash: bytes) -> None:
        has = self._peer_has.get(peer)
        if has is not None and chunk_hash in has:
            has.discard(chunk_hash)
            n = self._avail[chunk_hash] - 1
            if n:
                self._avail[chunk_hash] = n
            else:
                del self._avail[chunk_hash]
            self._requeue(chunk_hash)

    # ------------------------------------------------------------------ picker queue

    def _requeue(self, chunk_hash: bytes) -> None:
        """Keep every download's queue in step after ``chunk_hash`` changed (availability,
        request or store state). Cheap: a dict probe per wanted key."""
        for d in self._downloads.values():
            if chunk_hash in d.missing:
                self._requeue_in(d, chunk_hash)

    def _requeue_in(self, d: _Download, h: bytes) -> None:
        # Invariant: every chunk of d.missing that is idle (not requested, not waiting
        # for the store) and that some connected peer holds has one live entry, keyed by
        # its current availability. Requested / pending / unavailable chunks need none.
        if h in self._requests or h in self._pending_store or h in self._held:
            return
        avail = self._avail.get(h, 0)
        live = d.queued.get(h)
        if avail == 0:
            if live is not None:
                del d.queued[h]
            return
        if live is not None and live & _AVAIL_MASK == avail:
            return
        self._queue_seq += 1
        seq = self._queue_seq
        d.queued[h] = _live(avail, seq)
        heapq.heappush(d.heap, (avail, d.rank[h], h, seq))
        if len(d.heap) > 4 * len(d.queued) + 1024:
            self._rebuild_queue(d)   # mostly stale entries (availability churn): compact

    def _rebuild_queue(self, d: _Download) -> None:
        requests, pending, avail_of = self._requests, self._pending_store, self._avail
        entries: list[tuple[int, float, bytes, int]] = []
        queued: dict[bytes, int] = {}
        for h in d.missing:
            avail = avail_of.get(h, 0)
            if avail == 0 or h in requests or h in pending:
                continue
            self._queue_seq += 1
            queued[h] = _live(avail, self._queue_seq)
            entries.append((avail, d.rank[h], h, self._queue_seq))
        heapq.heapify(entries)
        d.heap = entries
        d.queued = queued

    def _init_download(self, d: _Download, info: _KeyInfo) -> None:
        d.info = info
        d.bytes_total = sum(info.size_of.values())
        d.missing = {h for h in info.size_of if h not in self._held}
        d.bytes_reused = d.bytes_total - sum(info.size_of[h] for h in d.missing)
        self._c["bytes_reused"] += d.bytes_reused
        d.rank = {h: self._rng.random() for h in sorted(d.missing)}
        d.heap = []
        d.queued = {}
        self._rebuild_queue(d)

    def _check_complete(self, d: _Download) -> None:
        if d.info is not None and not d.missing and not d.completed:
            d.completed = True
            self._completed.append(d.key)
            self._c["keys_completed"] += 1
            for peer in sorted(self._connected):
                self._send(peer, NotInterested(d.key))

    def _remove_request(self, peer: str, chunk_hash: bytes, *, stale_at: float | None) -> None:
        rec = self._peer_out.get(peer, {}).pop(chunk_hash, None)
        if rec is None:
            return
        self._n_out -= 1
        del self._by_age[(peer, chunk_hash)]
        by_peer = self._requests.get(chunk_hash)
        if by_peer is not None:
            by_peer.pop(peer, None)
            if not by_peer:
                del self._requests[chunk_hash]
                self._requeue(chunk_hash)
        if stale_at is not None:
            stale = self._stale.setdefault(peer, {})
            stale.pop(chunk_hash, None)   # re-insert: each table stays in time order
            stale[chunk_hash] = stale_at

    def _cancel_requests(self, chunk_hash: bytes, now: float) -> None:
        for peer in sorted(self._requests.get(chunk_hash, {})):
            self._remove_request(peer, chunk_hash, stale_at=now)
            self._send(peer, Cancel(chunk_hash))
            self._c["cancels_sent"] += 1

    def _forget_peer(self, peer: str) -> None:
        for h in list(self._peer_out.get(peer, {})):
            self._remove_request(peer, h, stale_at=None)
        self._peer_out.pop(peer, None)
        for h in self._peer_has.pop(peer, ()):
            n = self._avail[h] - 1
            if n:
                self._avail[h] = n
            else:
                del self._avail[h]
            self._requeue(h)
        self._stale.pop(peer, None)
        self._avoid.pop(peer, None)
        self._rtt_min.pop(peer, None)
        self._depth_of.pop(peer, None)
        self._service.pop(peer, None)
        self._last_arrival.pop(peer, None)
        self._busy_until.pop(peer, None)
        interest = self._remote_interest.pop(peer, set())
        for key in interest:
            self._forget_info(key)
        for d in self._downloads.values():
            d.cannot_help.pop(peer, None)
        if self._uploads is not None:
            self._uploads.remove_peer(peer)

    def _drop_peer(self, peer: str, reason: str, now: float) -> None:
        self._banned[peer] = reason
        self._outputs.append(DropPeer(peer, reason))
        self._outputs.append(Notice("swarm.peer_dropped", f"peer {peer}: {reason}",
                                    reason=BlockerReason.TRANSFER_FAILED))
        self._connected.discard(peer)
        self._forget_peer(peer)

    def _depth(self, peer: str) -> int:
        depth = self._depth_of.get(peer)
        if depth is None:
            depth = self._depth_of[peer] = self._compute_depth(peer)
        return depth

    def _compute_depth(self, peer: str) -> int:
        """Requests to keep outstanding to ``peer``: its bandwidth x delay in chunks, i.e.
        enough that the next request reaches it before it runs dry: ``rtt / service``
        (the smallest request-to-piece time already includes one piece's service),
        within ``[min_requests_per_peer, max_requests_per_peer]``. Unmeasured peers get
        the floor (slow start); the service time is measured from two pieces asked back
        to back, so a floor of 1 would never grow (hence the default of 2)."""
        cfg = self._config
        lo = max(1, min(cfg.min_requests_per_peer, cfg.max_requests_per_peer))
        service = self._service.get(peer)
        rtt = self._rtt_min.get(peer)
        if not service or rtt is None:
            return lo
        return max(lo, min(cfg.max_requests_per_peer, math.ceil(rtt / service)))

    def _expected_answer(self, peer: str) -> float:
        """Seconds a request to ``peer`` should take with its pipeline full."""
        service = self._service.get(peer)
        rtt = self._rtt_min.get(peer)
        if not service or rtt is None:
            return 0.5
        return rtt + service * max(1, len(self._peer_out.get(peer, ())))

    def _avoid_until(self, peer: str, chunk_hash: bytes, until: float) -> None:
        table = self._avoid.setdefault(peer, {})
        table[chunk_hash] = max(until, table.get(chunk_hash, until))

    def _failure(self, peer: str, now: float, what: str) -> None:
        n = self._failures.get(peer, 0) + 1
        self._failures[peer] = n
        if n >= self._config.max_peer_failures and peer in self._connected:
            self._drop_peer(peer, f"{n} requests in a row for chunks it advertised went "
                                  f"unserved (last: {what}); it advertises chunks it lacks "
                                  "or has stopped serving", now)

    # ================================================================== local inputs

    def want(self, key: str, priority: TransferPriority, now: float) -> None:
        """Start fetching ``key`` or change its priority."""
        d = self._downloads.get(key)
        if d is not None:
            d.priority = TransferPriority(priority)
        else:
            self._want_seq += 1
            d = _Download(key, TransferPriority(priority), self._want_seq)
            self._downloads[key] = d
            info = self._info(key)
            if info is not None:
                self._init_download(d, info)
            else:
                d.lookup_retry_at = now + self._config.interest_retry
            if d.missing or info is None:
                for peer in sorted(self._connected):
                    self._send(peer, Interested(key))
            self._check_complete(d)
        self._preempt(d, now)
        self._schedule(now)

    def _preempt(self, d: _Download, now: float) -> None:
        """Cancel requests in flight for lower-priority keys to the peers that can serve
        ``d``, so their pipelines carry ``d`` next. A cancelled piece that still arrives
        is accepted (it is still needed) and the chunk is asked again later."""
        if d.info is None or not d.missing:
            return
        for peer, out in self._peer_out.items():
            if not (self._peer_has[peer] & d.missing):
                continue
            for h, rec in list(out.items()):
                low = self._downloads.get(rec.key)
                if low is None or low.priority >= d.priority or h in d.missing:
                    continue
                self._remove_request(peer, h, stale_at=now)
                self._send(peer, Cancel(h))
                self._c["cancels_sent"] += 1
                self._c["preempted_requests"] += 1

    def drop(self, key: str, now: float) -> None:
        """Stop fetching ``key``: cancel its requests; chunks already stored stay."""
        d = self._downloads.pop(key, None)
        if d is None:
            return
        for h in sorted(d.missing):
            if h in self._requests and not self._needed(h):
                self._cancel_requests(h, now)
            elif len(self._requests.get(h, {})) > 1:
                # Endgame copies asked for this key: keep only the oldest request.
                extra = sorted(self._requests[h].values(), key=lambda r: (r.sent_at, r.peer))
                for rec in extra[1:]:
                    self._remove_request(rec.peer, h, stale_at=now)
                    self._send(rec.peer, Cancel(h))
                    self._c["cancels_sent"] += 1
        if not d.completed:
            for peer in sorted(self._connected):
                self._send(peer, NotInterested(key))
        self._completed = [k for k in self._completed if k != key]
        self._forget_info(key)
        self._schedule(now)

    def chunk_stored(self, chunk_hash: bytes, now: float) -> None:
        self._held.add(chunk_hash)
        self._pending_store.pop(chunk_hash, None)
        self._retry_after.pop(chunk_hash, None)
        if chunk_hash in self._requests:
            self._cancel_requests(chunk_hash, now)
        for d in list(self._downloads.values()):
            if chunk_hash in d.missing:
                d.missing.discard(chunk_hash)
                self._check_complete(d)
        for key in sorted(self._keys_of(chunk_hash)):
            index = self._infos[key].index_of[chunk_hash]
            for peer in sorted(self._connected):
                if key in self._remote_interest.get(peer, ()):
                    self._send(peer, Have(key, index))
        self._schedule(now)

    def chunk_store_failed(self, chunk_hash: bytes, now: float) -> None:
        self._pending_store.pop(chunk_hash, None)
        self._requeue(chunk_hash)
        self._c["store_failures"] += 1
        self._retry_after[chunk_hash] = now + self._config.request_timeout
        for d in self._downloads.values():
            if chunk_hash in d.missing:
                d.last_problem = (f"the local store refused chunk {chunk_hash.hex()[:16]}; "
                                  f"retrying in {self._config.request_timeout:g}s")
        self._schedule(now)

    def chunk_missing(self, chunk_hash: bytes, now: float) -> None:
        """The store lost (or never had) a chunk we advertised: tell askers, fetch it again."""
        self._held.discard(chunk_hash)
        uploads, _ = self._buckets(now)
        uploads.not_sent(chunk_hash=chunk_hash)
        told = set(uploads.forget_chunk(chunk_hash))
        for key in self._keys_of(chunk_hash):
            told.update(p for p, keys in self._remote_interest.items() if key in keys)
        for peer in sorted(told):
            self._send(peer, Reject(chunk_hash, True))
        self._pump_uploads(now)   # that piece will never be reported sent
        for d in self._downloads.values():
            if d.info is not None and chunk_hash in d.info.size_of:
                d.missing.add(chunk_hash)
                d.rank.setdefault(chunk_hash, self._rng.random())
                self._requeue_in(d, chunk_hash)
                if d.completed:
                    d.completed = False
                    for peer in sorted(self._connected):
                        self._send(peer, Interested(d.key))
        self._schedule(now)

    def upload_done(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """The driver has finished sending the piece of ``ServeChunk(peer, chunk_hash)``
        (its bytes have left for the link).

        A driver that reports this turns on the *upload window*: from then on at most
        ``upload_window`` pieces are handed out unreported, so requests wait in this
        engine, where the scheduler orders them (laggards first, first copies first),
        instead of in the link's FIFO. A driver that never calls this keeps the old
        behaviour (every queued request is handed out at once)."""
        uploads, _ = self._buckets(now)
        uploads.sent(peer, chunk_hash, now)
        self._pump_uploads(now)

    # ================================================================== peers

    def peer_connected(self, peer: str, now: float) -> None:
        if peer in self._banned or peer in self._connected:
            return
        self._connected.add(peer)
        self._peer_has[peer] = set()
        self._peer_out[peer] = {}
        self._failures[peer] = 0
        for d in sorted(self._downloads.values(), key=lambda d: d.order):
            if not d.completed:
                self._send(peer, Interested(d.key))

    def peer_disconnected(self, peer: str, now: float) -> None:
        if peer not in self._connected:
            return
        self._connected.discard(peer)
        self._forget_peer(peer)
        if self._uploads is not None:
            self._pump_uploads(now)   # its unreported pieces no longer hold the window
        self._schedule(now)

    def handles(self, message: object) -> bool:
        return isinstance(message, SWARM_MESSAGES)

    def receive(self, peer: str, message: object, now: float) -> None:
        if peer not in self._connected:
            return   # a dropped or unknown peer: ignore whatever it still sends
        if isinstance(message, Piece):
            self._on_piece(peer, message, now)
        elif isinstance(message, Request):
            self._on_request(peer, message, now)
        elif isinstance(message, Have):
            info = self._info(message.key)
            if info is None or message.index >= len(info.refs):
                self._c["bad_have_messages"] += 1
                return
            self._has_add(peer, info.refs[message.index].hash)
            self._schedule(now)
        elif isinstance(message, HaveSet):
            self._on_have_set(peer, message, now)
        elif isinstance(message, Interested):
            self._on_interested(peer, message)
        elif isinstance(message, NotInterested):
            self._remote_interest.get(peer, set()).discard(message.key)
            self._asked_early.get(message.key, set()).discard(peer)
            self._forget_info(message.key)
        elif isinstance(message, CannotHelp):
            d = self._downloads.get(message.key)
            if d is not None:
                d.cannot_help[peer] = now
        elif isinstance(message, Cancel):
            if self._uploads is not None:
                self._uploads.cancel(peer, message.chunk_hash)
        elif isinstance(message, Reject):
            self._on_reject(peer, message, now)
        elif isinstance(message, Redirect):
            self._on_redirect(peer, message, now)

    def _on_interested(self, peer: str, message: Interested) -> None:
        info = self._info(message.key)
        if info is None:
            self._send(peer, CannotHelp(message.key))
            early = self._asked_early.get(message.key)
            if early is None:
                if len(self._asked_early) >= _MAX_ASKED_EARLY:   # bounded: forget the oldest
                    del self._asked_early[next(iter(self._asked_early))]
                early = self._asked_early[message.key] = set()
            early.add(peer)
            return
        self._remote_interest.setdefault(peer, set()).add(message.key)
        bits = make_bitfield([r.hash in self._held for r in info.refs])
        self._send(peer, HaveSet(message.key, len(info.refs), bits))

    def _on_have_set(self, peer: str, message: HaveSet, now: float) -> None:
        info = self._info(message.key)
        if info is None or message.count != len(info.refs):
            self._c["bad_have_messages"] += 1
            return
        for i in bitfield_indices(message.bitfield, message.count):
            self._has_add(peer, info.refs[i].hash)
        d = self._downloads.get(message.key)
        if d is not None:
            d.cannot_help.pop(peer, None)
        self._schedule(now)

    def _on_request(self, peer: str, message: Request, now: float) -> None:
        uploads, _ = self._buckets(now)
        h = message.chunk_hash
        info = self._info(message.key)
        size = info.size_of.get(h) if info is not None else None
        if h not in self._held or size is None:
            self._send(peer, Reject(h, True))
            self._c["uploads_refused"] += 1
            return
        cfg = self._config
        if (cfg.redirect_window > 0 and info is not None and uploads.copies(h) > 0
                and uploads.uploaded_since(h, now - cfg.redirect_window)
                and self._seeding(message.key)):
            hints = self._hints(message.key, info, uploads)
            if hints:
                # Super-seeding: this chunk left here moments ago and is spreading; spend
                # the uplink on chunks nobody else has instead. Asked again once
                # ``redirect_window`` has passed since, we serve it.
                self._send(peer, Redirect(message.key, h, hints))
                self._c["redirects_sent"] += 1
                return
        priority = min(max(message.priority, int(TransferPriority.LOW)),
                       int(TransferPriority.CRITICAL))
        if not uploads.enqueue(peer, h, size, priority, now):
            self._send(peer, Reject(h, False))
            self._c["uploads_refused"] += 1
            return
        self._pump_uploads(now)

    def _hints(self, key: str, info: _KeyInfo, uploads: UploadScheduler,
               count: int = 4) -> tuple[int, ...]:
        """Up to ``count`` random positions of ``key`` we hold and never uploaded."""
        pool = self._unsent.get(key)
        if pool is None:
            pool = [i for i, ref in enumerate(info.refs)
                    if info.index_of[ref.hash] == i and ref.hash in self._held
                    and uploads.copies(ref.hash) == 0]
            self._unsent[key] = pool
        out: list[int] = []
        tries = 0
        while pool and len(out) < count and tries < 4 * count:
            j = self._rng.randrange(len(pool))
            i = pool[j]
            h = info.refs[i].hash
            if uploads.copies(h) or h not in self._held:
                pool[j] = pool[-1]
                pool.pop()
                continue
            tries += 1
            if i not in out:
                out.append(i)
        return tuple(sorted(out))

    def _on_redirect(self, peer: str, message: Redirect, now: float) -> None:
        h = message.chunk_hash
        if h not in self._peer_out[peer]:
            return
        self._c["redirects_received"] += 1
        self._remove_request(peer, h, stale_at=None)
        self._avoid_until(peer, h, now + self._config.redirect_backoff)
        info = self._info(message.key)
        if info is not None:
            _, bucket = self._buckets(now)
            for i in message.hints:
                if i >= len(info.refs):
                    self._c["bad_have_messages"] += 1
                    continue
                hint = info.refs[i].hash
                self._has_add(peer, hint)
                d = self._needing(hint)
                if (d is None or d.info is None or hint in self._requests
                        or hint in self._pending_store or hint in self._retry_after):
                    continue
                if len(self._peer_out[peer]) >= self._depth(peer):
                    break
                if self._issue(d, hint, {peer}, now, bucket) is None:
                    break
        self._schedule(now)

    def _on_reject(self, peer: str, message: Reject, now: float) -> None:
        h = message.chunk_hash
        if message.missing:
            self._has_discard(peer, h)
        if h not in self._peer_out[peer]:
            return
        self._c["requests_rejected"] += 1
        self._remove_request(peer, h, stale_at=None)
        if message.missing:
            self._failure(peer, now, f"it answered 'missing' for chunk {h.hex()[:16]}")
        else:
            self._busy_until[peer] = now + self._config.interest_retry
        self._schedule(now)

    def _on_piece(self, peer: str, message: Piece, now: float) -> None:
        known = self._known(message.chunk_hash)
        if known is None:
            self._c["unsolicited_pieces"] += 1   # a chunk of no key we know: never asked
            return
        h, size = known
        self._c["pieces_received"] += 1
        if not self._verifier(h, size, message.data):
            self._c["corrupt_pieces"] += 1
            self._drop_peer(peer, f"sent bytes that do not match chunk {h.hex()[:16]} "
                                  "(corrupt or forged); banned from this node's swarms", now)
            self._schedule(now)
            return
        asked = self._peer_out[peer].get(h)
        late = self._stale.get(peer, {}).pop(h, None)
        if asked is None and late is None:
            self._c["unsolicited_pieces"] += 1
            self._count_duplicate(h, size)
            return
        key = asked.key if asked is not None else None
        if asked is not None:
            self._measure(peer, asked.sent_at, now)
        self._remove_request(peer, h, stale_at=None)
        self._failures[peer] = 0
        d = self._needing(h)
        if d is None or h in self._held or h in self._pending_store:
            self._c["duplicate_pieces"] += 1
            self._count_duplicate(h, size, key)
            self._schedule(now)
            return
        if key is not None and key in self._downloads and h in self._downloads[key].missing:
            d = self._downloads[key]
        self._pending_store[h] = d.key
        d.bytes_fetched += size
        self._c["bytes_fetched"] += size
        self._c["pieces_accepted"] += 1
        self._outputs.append(StoreChunk(h, message.data))
        self._cancel_requests(h, now)   # endgame: the other copies are no longer needed
        self._schedule(now)

    def _measure(self, peer: str, sent_at: float, now: float) -> None:
        """Update ``peer``'s link estimate from a piece asked at ``sent_at``."""
        took = now - sent_at
        if took >= 0 and took < self._rtt_min.get(peer, math.inf):
            self._rtt_min[peer] = took
        self._depth_of.pop(peer, None)
        last = self._last_arrival.get(peer)
        self._last_arrival[peer] = now
        # Only a piece asked for before the previous one arrived measures the link: the
        # gap is then its serialisation, not a round trip the pipeline left idle.
        gap = now - last if last is not None and sent_at < last else 0.0
        if gap > 0:
            old = self._service.get(peer)
            self._service[peer] = gap if old is None else 0.75 * old + 0.25 * gap

    def _count_duplicate(self, chunk_hash: bytes, size: int, key: str | None = None) -> None:
        self._c["bytes_duplicate"] += size
        d = self._downloads.get(key) if key is not None else None
        if d is None:
            for cand in self._downloads.values():
                if cand.info is not None and chunk_hash in cand.info.size_of:
                    d = cand
                    break
        if d is not None:
            d.bytes_duplicate += size

    # ================================================================== time

    def on_timer(self, now: float) -> None:
        timeout = self._config.request_timeout
        expired = [(rec.sent_at, h, peer) for peer, out in self._peer_out.items()
                   for h, rec in out.items() if rec.sent_at + timeout <= now]
        for _, h, peer in sorted(expired):
            if peer not in self._connected or h not in self._peer_out.get(peer, {}):
                continue
            self._remove_request(peer, h, stale_at=now)
            self._avoid_until(peer, h, now + 2 * timeout)
            self._c["requests_timed_out"] += 1
            self._failure(peer, now, f"chunk {h.hex()[:16]} unanswered after {timeout:g}s")
        for stale in self._stale.values():
            for h in [h for h, t in stale.items() if t + 2 * timeout <= now]:
                del stale[h]
        for avoid in self._avoid.values():
            for h in [h for h, t in avoid.items() if t <= now]:
                del avoid[h]
        for h in [h for h, t in self._retry_after.items() if t <= now]:
            del self._retry_after[h]
        for peer in [p for p, t in self._busy_until.items() if t <= now]:
            del self._busy_until[peer]
        for d in sorted(self._downloads.values(), key=lambda d: d.order):
            if d.info is None and d.lookup_retry_at <= now:
                info = self._info(d.key)
                if info is None:
                    d.lookup_retry_at = now + self._config.interest_retry
                else:
                    self._init_download(d, info)
                    self._check_complete(d)
            if d.completed:
                continue
            for peer, t in sorted(d.cannot_help.items()):
                if t + self._config.interest_retry <= now:
                    d.cannot_help[peer] = now
                    self._send(peer, Interested(d.key))
        uploads, _ = self._buckets(now)
        uploads.on_timer(now)
        for peer, h in uploads.take_rejected():
            self._send(peer, Reject(h, False))
            self._c["uploads_refused"] += 1
        self._pump_uploads(now)
        self._schedule(now)

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        timeout = self._config.request_timeout
        if self._by_age:
            deadlines.append(next(iter(self._by_age.values())).sent_at + timeout)
        for stale in self._stale.values():
            if stale:   # kept in time order: the first entry is the oldest
                deadlines.append(next(iter(stale.values())) + 2 * timeout)
        for avoid in self._avoid.values():
            if avoid:
                deadlines.append(min(avoid.values()))
        if self._endgame_wake is not None:
            deadlines.append(self._endgame_wake)
        deadlines.extend(self._retry_after.values())
        deadlines.extend(self._busy_until.values())
        for d in self._downloads.values():
            if d.info is None:
                deadlines.append(d.lookup_retry_at)
            elif not d.completed and d.cannot_help:
                deadlines.append(min(d.cannot_help.values()) + self._config.interest_retry)
        if self._blocked_on_tokens and self._down_bucket is not None:
            deadlines.append(self._down_bucket.ready_at())
        if self._uploads is not None:
            up = self._uploads.next_deadline()
            if up is not None:
                deadlines.append(up)
        return min(deadlines) if deadlines else None

    # ================================================================== uploads

    def _pump_uploads(self, now: float) -> None:
        uploads, _ = self._buckets(now)
        firsts: list[bytes] = []
        for serve in uploads.pump(now):
            self._outputs.append(ServeChunk(serve.peer, serve.chunk_hash, serve.priority))
            self._c["uploads_served"] += 1
            self._c["bytes_uploaded"] += serve.size
            if uploads.copies(serve.chunk_hash) == 1:
                firsts.append(serve.chunk_hash)
        if firsts and self._config.redirect_window > 0:
            for h in firsts:
                self._redirect_queued(h, uploads)

    def _seeding(self, key: str) -> bool:
        """Whether this node serves ``key`` as a seed (holds it, is not fetching it)."""
        d = self._downloads.get(key)
        return d is None or d.completed

    def _redirect_queued(self, h: bytes, uploads: UploadScheduler) -> None:
        """A chunk just left here for the first time: other peers' requests for it that
        wait in the queue would be repeats. As a seed that still holds chunks nobody got
        from it, answer them ``Redirect`` now, as :meth:`_on_request` does for a request
        that arrives after the upload."""
        keys = self._keys_of(h)
        for peer in uploads.queued_for(h):
            key = next((k for k in sorted(self._remote_interest.get(peer, ()))
                        if k in keys and k in self._infos and self._seeding(k)), None)
            if key is None:
                continue
            hints = self._hints(key, self._infos[key], uploads)
            if not hints:
                return
            uploads.cancel(peer, h)
            self._send(peer, Redirect(key, h, hints))
            self._c["redirects_sent"] += 1

    # ================================================================== the picker

    def _schedule(self, now: float) -> None:
        _, bucket = self._buckets(now)
        self._blocked_on_tokens = False
        cfg = self._config
        if self._n_out >= cfg.max_requests_total:
            return
        self._endgame_wake = None
        active = [d for d in self._downloads.values() if d.info is not None and d.missing]
        if not active:
            return   # a seed, or every wanted key is complete: nothing to pick
        peer_out = self._peer_out
        busy = self._busy_until
        spare = {p for p in self._connected
                 if len(peer_out[p]) < self._depth(p) and busy.get(p, now) <= now}
        if not spare:
            return
        if len(active) > 1:
            active.sort(key=lambda d: (-d.priority, d.order))
        for d in active:
            if not self._schedule_download(d, spare, now, bucket):
                return

    def _schedule_download(self, d: _Download, spare: set[str], now: float,
                           bucket: TokenBucket) -> bool:
        """Request ``d``'s chunks; False when no more requests can go out at all.

        Equivalent, pick for pick, to this reference loop (which cost O(missing) per
        call): in passes, take the ``2 x room + 4`` rarest *candidates* (missing chunks
        a spare peer holds at the start of the pass, not requested, not waiting for the
        store, not in store back-off; ``room`` = free request slots of the spare
        peers), try to request each in turn; stop after a pass that issued nothing or
        saw every candidate. Here candidates come off ``d.heap`` in (availability,
        rank) order; a chunk no spare peer holds, or in back-off, is parked (it cannot
        become a candidate again during this call: spare only shrinks); a candidate
        that found no provider (its spare holders all back off from it, or filled up
        meanwhile) is kept aside and counted again in later passes while a spare peer
        holds it, exactly as the reference loop re-sees it. Parked and aside entries go
        back on the heap at the end. So the work is proportional to the requests issued
        plus the chunks skipped, not to the chunks missing."""
        cfg = self._config
        heap, queued = d.heap, d.queued
        requests, pending, retry = self._requests, self._pending_store, self._retry_after
        peer_has, peer_out, missing = self._peer_has, self._peer_out, d.missing
        c = self._c
        parked: list[tuple[int, float, bytes, int]] = []
        aside: list[tuple[int, float, bytes, int]] = []
        try:
            while spare:
                pass_spare = [peer_has[p] for p in spare]
                # candidates set aside by earlier passes that a spare peer still holds
                # (they find no provider again: spare and back-off only shrink)
                still = []
                for e in aside:
                    if any(e[2] in has for has in pass_spare):
                        still.append(e)
                    else:
                        parked.append(e)
                aside = still
                room = min(cfg.max_requests_total - self._n_out,
                           sum(self._depth(p) - len(peer_out[p]) for p in spare))
                window = 2 * room + 4
                seen = len(aside)
                issued = 0
                while seen < window and heap:
                    e = heapq.heappop(heap)
                    c["picker_pops"] += 1
                    _, _, h, seq = e
                    live = queued.get(h)
                    if live is None or live >> _AVAIL_BITS != seq:
                        continue   # stale: superseded or consumed
                    if h not in missing or h in requests or h in pending:
                        del queued[h]   # requeued when it becomes idle again
                        continue
                    if (retry and retry.get(h, now) > now) or not any(
                            h in has for has in pass_spare):
                        parked.append(e)
                        continue
                    seen += 1
                    result = self._issue(d, h, spare, now, bucket)
                    if result is None:
                        if h in requests:
                            del queued[h]
                        else:
                            parked.append(e)   # the download cap: ask again later
                        return False
                    if result:
                        issued += 1
                        del queued[h]
                    else:
                        aside.append(e)
                if issued == 0 or seen < window:
                    break   # nothing issued, or every candidate was seen
        finally:
            for e in parked:
                heapq.heappush(heap, e)
            for e in aside:
                heapq.heappush(heap, e)
        # Endgame, only for the true tail: the last few chunks, all asked for, whose
        # request is overdue (older than endgame_age x its peer's expected answer time).
        limit = self._endgame_limit(d)
        if len(d.missing) <= limit + len(self._pending_store):
            left = [h for h in d.missing if h not in self._pending_store]
            if left and len(left) <= limit and all(h in self._requests for h in left):
                for h in sorted(left, key=lambda h: d.rank[h]):
                    recs = self._requests[h]
                    if len(recs) >= cfg.endgame_fanout:
                        continue
                    due = min(r.sent_at + cfg.endgame_age * self._expected_answer(r.peer)
                              for r in recs.values())
                    if due > now:
                        if self._endgame_wake is None or due < self._endgame_wake:
                            self._endgame_wake = due
                        continue
                    if self._issue(d, h, spare, now, bucket, endgame=True) is None:
                        return False
        return bool(spare) and self._n_out < cfg.max_requests_total

    def _endgame_limit(self, d: _Download) -> int:
        cfg = self._config
        n = len(d.info.size_of) if d.info is not None else 0
        return min(cfg.endgame_chunks, max(1, math.ceil(cfg.endgame_fraction * n)))

    def _issue(self, d: _Download, h: bytes, spare: set[str], now: float,
               bucket: TokenBucket, *, endgame: bool = False) -> int | None:
        """Request ``h`` from the best spare provider: 1 if sent, 0 if no provider is
        free, None when no more requests can go out at all (limits, cap)."""
        cfg = self._config
        asked = self._requests.get(h, {})
        avoid = self._avoid
        providers = [p for p in spare if h in self._peer_has[p] and p not in asked
                     and (p not in avoid or avoid[p].get(h, now) <= now)]
        if not providers:
            return 0
        if not bucket.ready(now):
            self._blocked_on_tokens = True
            return None
        fewest = min(len(self._peer_out[p]) for p in providers)
        peer = self._rng.choice(sorted(p for p in providers
                                       if len(self._peer_out[p]) == fewest))
        assert d.info is not None
        size = d.info.size_of[h]
        rec = _Outstanding(peer, d.key, size, now)
        self._peer_out[peer][h] = rec
        self._requests.setdefault(h, {})[peer] = rec
        self._by_age[(peer, h)] = rec
        self._n_out += 1
        bucket.spend(size, now)
        self._send(peer, Request(d.key, h, int(d.priority)))
        self._c["requests_sent"] += 1
        if endgame:
            self._c["endgame_requests"] += 1
        if len(self._peer_out[peer]) >= self._depth(peer):
            spare.discard(peer)
        if not spare or self._n_out >= cfg.max_requests_total:
            return None
        return 1

    # ================================================================== queries

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def take_completed(self) -> list[str]:
        """Keys whose every chunk is now stored, each reported once (again only if a
        chunk later goes missing and is fetched back)."""
        out, self._completed = self._completed, []
        return out

    def wanted(self) -> Iterable[str]:
        return tuple(self._downloads)

    def progress(self, key: str) -> TransferProgress:
        d = self._downloads.get(key)
        if d is None:
            return TransferProgress(0, 0, 0, 0, 0, False, f"{key} is not wanted")
        if d.info is None:
            return TransferProgress(0, 0, 0, 0, 0, True,
                                    f"the manifest for {key} is not known yet")
        missing_bytes = sum(d.info.size_of[h] for h in d.missing)
        held = d.bytes_total - missing_bytes
        if not d.missing:
            return TransferProgress(d.bytes_total, held, d.bytes_reused, d.bytes_fetched,
                                    d.bytes_duplicate, False, "complete")
        in_flight = sum(1 for h in d.missing if h in self._requests or h in self._pending_store)
        available = sum(1 for h in d.missing if h in self._avail)
        stalled = in_flight == 0 and available == 0
        parts = [f"{len(d.missing)} of {len(d.info.size_of)} chunks missing",
                 f"{in_flight} in flight", f"{available} available from "
                 f"{len(self._connected)} connected peers"]
        if stalled:
            parts.insert(0, "stalled: no connected peer holds any missing chunk")
        if not self._connected:
            parts.append("no peer connected")
        if self._banned:
            parts.append("dropped peers: " + "; ".join(
                f"{p[:12]} ({r})" for p, r in sorted(self._banned.items())))
        if d.last_problem:
            parts.append(d.last_problem)
        return TransferProgress(d.bytes_total, held, d.bytes_reused, d.bytes_fetched,
                                d.bytes_duplicate, stalled, "; ".join(parts))

    def statistics(self) -> SwarmStatistics:
        c = self._c
        uploads = self._uploads
        return SwarmStatistics(
            redirects_sent=c["redirects_sent"],
            redirects_received=c["redirects_received"],
            preempted_requests=c["preempted_requests"],
            picker_pops=c["picker_pops"],
            keys_wanted=len(self._downloads),
            keys_completed=c["keys_completed"],
            peers_connected=len(self._connected),
            requests_sent=c["requests_sent"],
            requests_outstanding=self._n_out,
            endgame_requests=c["endgame_requests"],
            requests_timed_out=c["requests_timed_out"],
            requests_rejected=c["requests_rejected"],
            cancels_sent=c["cancels_sent"],
            pieces_received=c["pieces_received"],
            pieces_accepted=c["pieces_accepted"],
            corrupt_pieces=c["corrupt_pieces"],
            unsolicited_pieces=c["unsolicited_pieces"],
            duplicate_pieces=c["duplicate_pieces"],
            bytes_fetched=c["bytes_fetched"],
            bytes_duplicate=c["bytes_duplicate"],
            bytes_reused=c["bytes_reused"],
            uploads_served=c["uploads_served"],
            bytes_uploaded=c["bytes_uploaded"],
            uploads_queued=uploads.queued if uploads is not None else 0,
            uploads_refused=c["uploads_refused"],
            upload_preemptions=uploads.preemptions if uploads is not None else 0,
            uploads_stalled=uploads.stalled_pieces if uploads is not None else 0,
            bad_have_messages=c["bad_have_messages"],
            store_failures=c["store_failures"],
            dropped_peers=tuple(sorted(self._banned.items())),
        )

    # ------------------------------------------------------------------ test hooks

    def outstanding(self) -> dict[bytes, frozenset[str]]:
        """Snapshot: chunk hash -> peers asked for it (for invariant checks)."""
        return {h: frozenset(by_peer) for h, by_peer in self._requests.items()}

    def request_times(self) -> dict[tuple[str, bytes], float]:
        """Snapshot: (peer, chunk hash) -> when that outstanding request was sent."""
        return {(peer, h): rec.sent_at for peer, out in self._peer_out.items()
                for h, rec in out.items()}

    def in_endgame(self, key: str) -> bool:
        d = self._downloads.get(key)
        if d is None:
            return False
        left = [h for h in d.missing if h not in self._pending_store]
        return len(left) <= self._endgame_limit(d)
