"""The picker: which missing chunk to request next, from whom, and when to duplicate.

Theory of operation
-------------------
The picker keeps the download side's state: the wanted keys (:class:`Download`) and
what each connected peer holds (per peer a :class:`~._swarm_keys.PeerHas`: it answers
as a set of chunk hashes, so a chunk shared by two keys is counted once, but is kept as
a flag per position of each known key); the requests in flight are in the request
table it is given. Per download, the missing chunks, the availability of each chunk
(connected peers holding it), its random rank and its queue marker are kept by position.

:meth:`Picker.schedule` runs after every input that can change its answer. It walks
the wanted keys from the highest priority down (FIFO at equal priority) and requests
their missing chunks *rarest first* (fewest connected providers; ties broken by a
per-chunk random rank drawn from the injected rng), each from the spare provider with
the fewest outstanding requests (a random one among equals), so that a download spreads
over many providers. A peer is spare while its pipeline is below the depth
:class:`~._swarm_links.LinkEstimates` gives it and it has not just answered "busy";
``max_requests_total`` bounds all requests. Outside endgame a chunk has at most one
outstanding request.

Endgame is for the true tail only: once at most ``min(endgame_chunks, max(1,
endgame_fraction x chunks))`` chunks of a key are left and all are requested, a chunk
whose request is older than ``endgame_age`` times its peer's expected answer time is
asked of another peer too, up to ``endgame_fanout`` in all; the first verified copy
wins and the others are cancelled.

A request unanswered after ``request_timeout`` is given up and the chunk is asked
elsewhere; what keeps a chunk away from a peer for a while after that (or after a
redirect, a "busy" answer or a refused store) is kept in the request table
(:mod:`._swarm_requests`), which the picker consults. A request for a lower-priority
key is cancelled when a higher-priority key is wanted from the same peer
(pre-emption); a piece for it that still arrives is accepted.

A download cap is enforced on the *requests*: each request spends its chunk size from
the download token bucket; since keys are served in priority order, a critical key gets
the budget before a low one.

Picker cost: each download keeps a lazy min-heap of its idle missing chunks keyed by
(availability, rank), kept in step by :meth:`Picker.requeue` whenever a chunk's
availability or request/store state changes; the picker pops from it instead of
scanning every missing chunk, so its work follows the requests it issues (see
:meth:`Picker._schedule_download` for why the picks are the same as a full scan). On a
long queue a call first counts the queued chunks some spare peer holds (the peers'
flags ORed, ANDed with ``Download.qflag``) and stops popping once all have come off:
the rest would only be parked and pushed back.
"""

from __future__ import annotations

import heapq
import math
import struct
from array import array
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._config import SwarmConfig
from ._rng import Rng
from ._swarm_keys import KeyCatalog, KeyInfo, PeerHas, PositionSet
from ._swarm_links import LinkEstimates
from ._swarm_messages import Request
from ._swarm_requests import RequestTable
from ._swarm_stats import Counters
from ._swarm_uploads import TokenBucket
from ._types import TransferPriority

if TYPE_CHECKING:
    from ._wire import SwarmMessage

__all__ = ["Download", "Picker"]

_AVAIL_BITS = 24                      # availability (peers holding a chunk) < 2**24
_AVAIL_MASK = (1 << _AVAIL_BITS) - 1
# A queue entry is one int that orders as the tuple (availability, rank, hash, seq) did:
# from the top, the availability, the rank's IEEE-754 bits (which order as the float
# does for ranks >= 0), the chunk's place in the key's chunks sorted by hash (which
# orders as the hash does among one download's chunks; ``Download.by_hash`` maps it
# back to the position) and a 40-bit sequence number. 160 bits: a 48 B int (the 256-bit
# hash made it 80 B; the tuple, its seq and its live marker cost ~180 B).
_SEQ_BITS = 40
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_HRANK_BITS = 32
_HRANK_MASK = (1 << _HRANK_BITS) - 1
_RANK_SHIFT = _SEQ_BITS + _HRANK_BITS
_AVAIL_SHIFT = _RANK_SHIFT + 64
_ENDGAME_FLOOR = 1.0   # s: endgame never duplicates a request younger than this
_COUNT_FROM = 64    # entries on a download's heap from which a call counts its candidates
_NO_RANK = -1.0                       # a position with no rank drawn (never missing yet)


def _live(avail: int, seq: int) -> int:
    """A picker-queue entry's identity, packed: its sequence number and availability."""
    return (seq << _AVAIL_BITS) | min(avail, _AVAIL_MASK)


def _rank_bits(rank: float) -> int:
    return int.from_bytes(struct.pack(">d", rank), "big")


def _entry(avail: int, rank: float, hrank: int, seq: int) -> int:
    return (avail << _AVAIL_SHIFT) | (_rank_bits(rank) << _RANK_SHIFT) | (
        hrank << _SEQ_BITS) | seq


@dataclass(slots=True)
class Download:
    key: str
    priority: TransferPriority
    order: int
    info: KeyInfo | None = None
    missing: PositionSet = field(default_factory=PositionSet)   # bits over positions
    # per position: the connected peers that hold the chunk (4 bytes a chunk)
    avail: array[int] = field(default_factory=lambda: array("I"))
    # per position of the key's chunk list (``info.index_of``): the random tie-break
    # (``_NO_RANK`` until drawn), 8 bytes a chunk
    rank: array[float] = field(default_factory=lambda: array("d"))
    # the picker's queue ("Picker cost" in the module docstring): a lazy min-heap of
    # packed entries (:func:`_entry`: availability, rank, hash, seq); per position,
    # ``queued[i] == _live(availability, seq)`` marks the chunk's one live entry (0: none),
    # any other entry for it is stale and skipped when popped; ``n_queued`` counts the
    # live ones. Arrays, not dicts: they cover every missing chunk at the start.
    heap: list[int] = field(default_factory=list)
    queued: array[int] = field(default_factory=lambda: array("Q"))
    qflag: bytearray = field(default_factory=bytearray)   # per position: queued[i] != 0
    # the key's distinct positions sorted by hash, and per position its place there
    by_hash: array[int] = field(default_factory=lambda: array("I"))
    hrank: array[int] = field(default_factory=lambda: array("I"))
    n_queued: int = 0
    bytes_total: int = 0
    bytes_reused: int = 0
    bytes_fetched: int = 0
    bytes_duplicate: int = 0
    completed: bool = False
    # peer -> when it was asked (Interested) and has not sent its HaveSet yet, or when it
    # answered CannotHelp: asked again ``interest_retry`` later
    cannot_help: dict[str, float] = field(default_factory=dict)
    lookup_retry_at: float = 0.0
    last_problem: str = ""


class Picker:
    """The download side of a swarm engine (see the module docstring).

    ``held`` (chunks stored here) and ``connected`` (peers) are the engine's, read
    here; ``send`` is the engine's way out for a message to a peer."""

    def __init__(self, *, config: SwarmConfig, rng: Rng, held: Container[bytes],
                 connected: set[str], table: RequestTable, links: LinkEstimates,
                 counters: Counters, send: Callable[[str, SwarmMessage], None],
                 keys: KeyCatalog) -> None:
        self._config = config
        self._rng = rng
        self._held = held
        self._connected = connected
        self._table = table
        table.on_idle = self.requeue
        self._links = links
        self._c = counters
        self._send = send
        self.downloads: dict[str, Download] = {}
        self._keys = keys
        # per peer, what it holds: by position over the known keys (:class:`PeerHas`)
        self.peer_has: dict[str, PeerHas] = keys.have_sets
        self.endgame_wake: float | None = None   # when endgame should look again
        self.blocked_on_tokens = False   # the download cap stopped the last schedule
        self._queue_seq = 0
        self._want_seq = 0

    def shift_time(self, shift: float) -> None:
        """The clock stepped by ``shift``: move the times kept here with it."""
        for d in self.downloads.values():
            cannot_help = d.cannot_help
            for peer in cannot_help:
                cannot_help[peer] += shift
            d.lookup_retry_at += shift
        if self.endgame_wake is not None:
            self.endgame_wake += shift

    # ================================================================== downloads

    def add(self, key: str, priority: TransferPriority) -> Download:
        self._want_seq += 1
        d = Download(key, priority, self._want_seq)
        self.downloads[key] = d
        return d

    def init_download(self, d: Download, info: KeyInfo) -> None:
        d.info = info
        d.bytes_total = sum(info.size_of.values())
        n = len(info.refs)
        index_of, held, sizes = info.index_of, self._held, info.refs.chunks
        d.missing = missing = PositionSet(info)
        d.avail = avail = array("I", [0]) * n
        reused = 0
        for h, i in index_of.items():
            if h in held:
                reused += sizes.size(i)
            else:
                missing.add_pos(i)
        for has in self.peer_has.values():
            bits = has.by_key[d.key]      # (complete for a known key: see PeerHas)
            for i in range(n):
                if bits[i]:
                    avail[i] += 1
        d.bytes_reused = reused
        self._c.bytes_reused += d.bytes_reused
        d.rank = array("d", [_NO_RANK]) * n
        for h in sorted(missing):
            d.rank[index_of[h]] = self._rng.random()
        d.heap = []
        d.queued = array("Q", [0]) * n
        d.qflag = bytearray(n)
        d.n_queued = 0
        hashes = info.refs.hashes
        d.by_hash = array("I", sorted(index_of.values(), key=hashes.__getitem__))
        d.hrank = array("I", [0]) * n
        for r, i in enumerate(d.by_hash):
            d.hrank[i] = r
        self._rebuild_queue(d)

    def drop(self, key: str, now: float) -> Download | None:
        """Stop fetching ``key``: cancel the requests only it needed, and the endgame
        copies asked for it (the oldest request stays)."""
        d = self.downloads.pop(key, None)
        if d is None:
            return None
        table = self._table
        for h in sorted(d.missing):
            if h in table.by_chunk and not self.needed(h):
                table.cancel_all(h, now)
            elif len(table.by_chunk.get(h, {})) > 1:
                extra = sorted(table.by_chunk[h].values(), key=lambda r: (r.sent_at, r.peer))
                for rec in extra[1:]:
                    table.cancel(rec.peer, h, now)
        return d

    def refetch(self, chunk_hash: bytes) -> list[Download]:
        """A chunk went missing from the store: it is missing again for every download
        that has it; returns the downloads that had completed (now reopened)."""
        reopened = []
        for d in self.downloads.values():
            if d.info is not None and chunk_hash in d.info.size_of:
                d.missing.add(chunk_hash)
                i = d.info.index_of[chunk_hash]
                rank = self._rng.random()      # (drawn whether or not it is kept)
                if d.rank[i] == _NO_RANK:
                    d.rank[i] = rank
                self._requeue_in(d, chunk_hash)
                if d.completed:
                    d.completed = False
                    reopened.append(d)
        return reopened

    def needed(self, chunk_hash: bytes) -> bool:
        return any(chunk_hash in d.missing for d in self.downloads.values())

    def needing(self, chunk_hash: bytes) -> Download | None:
        """The highest-priority download missing ``chunk_hash``."""
        best: Download | None = None
        for d in self.downloads.values():
            if chunk_hash in d.missing and (best is None or d.priority > best.priority):
                best = d
        return best

    def seeding(self, key: str) -> bool:
        """Whether this node serves ``key`` as a seed (holds it, is not fetching it)."""
        d = self.downloads.get(key)
        return d is None or d.completed

    def endgame_limit(self, d: Download) -> int:
        cfg = self._config
        n = len(d.info.size_of) if d.info is not None else 0
        return min(cfg.endgame_chunks, max(1, math.ceil(cfg.endgame_fraction * n)))

    # ================================================================== peers

    def add_peer(self, peer: str) -> None:
        self._keys.new_have_set(peer)

    def forget_peer(self, peer: str) -> None:
        """``peer`` left (its requests are gone already): its holdings go."""
        for h in self.peer_has.pop(peer, ()):
            self._count(h, -1)

    def has_add(self, peer: str, chunk_hash: bytes) -> None:
        if self.peer_has[peer].add(chunk_hash):
            self._count(chunk_hash, 1)

    def has_discard(self, peer: str, chunk_hash: bytes) -> None:
        has = self.peer_has.get(peer)
        if has is not None and has.discard(chunk_hash):
            self._count(chunk_hash, -1)

    def _count(self, h: bytes, change: int) -> None:
        """One more (or one fewer) connected peer holds ``h``: every download that has
        the chunk counts it (``Download.avail``), and its queue follows."""
        for d in self.downloads.values():
            if d.info is not None:
                i = d.info.index_of.get(h)
                if i is not None:
                    d.avail[i] += change
                    if d.missing.has_pos(i):
                        self._requeue_in(d, h)

    def available(self, d: Download, h: bytes) -> int:
        """How many connected peers hold ``h``, a chunk of ``d``."""
        assert d.info is not None
        return d.avail[d.info.index_of[h]]

    # ================================================================== the queue

    def requeue(self, chunk_hash: bytes) -> None:
        """Keep every download's queue in step after ``chunk_hash`` changed (availability,
        request or store state). Cheap: a dict probe per wanted key."""
        for d in self.downloads.values():
            if chunk_hash in d.missing:
                self._requeue_in(d, chunk_hash)

    def _requeue_in(self, d: Download, h: bytes) -> None:
        # Invariant: every chunk of d.missing that is idle (not requested, not waiting
        # for the store) and that some connected peer holds has one live entry, keyed by
        # its current availability. Requested / pending / unavailable chunks need none.
        table = self._table
        if h in table.by_chunk or h in table.pending_store or h in self._held:
            return
        assert d.info is not None
        i = d.info.index_of[h]
        avail = d.avail[i]
        live = d.queued[i]
        if avail == 0:
            if live:
                d.queued[i] = 0
                d.qflag[i] = 0
                d.n_queued -= 1
            return
        if live and live & _AVAIL_MASK == avail:
            return
        self._queue_seq += 1
        seq = self._queue_seq
        if not live:
            d.n_queued += 1
        d.queued[i] = _live(avail, seq)
        d.qflag[i] = 1
        heapq.heappush(d.heap, _entry(avail, d.rank[i], d.hrank[i], seq))
        if len(d.heap) > 4 * d.n_queued + 1024:
            self._rebuild_queue(d)   # mostly stale entries (availability churn): compact

    def _rebuild_queue(self, d: Download) -> None:
        requests, pending, avail_of = self._table.by_chunk, self._table.pending_store, d.avail
        assert d.info is not None
        hash_bytes = d.info.refs.chunks.hash_bytes   # position i: [32 i, 32 i + 32)
        entries: list[int] = []
        queued = array("Q", [0]) * len(d.queued)
        qflag = bytearray(len(d.queued))
        for i in d.missing.positions():
            avail = avail_of[i]
            if avail == 0:
                continue
            h = hash_bytes[i << 5:(i << 5) + 32]
            if h in requests or h in pending:
                continue
            self._queue_seq += 1
            queued[i] = _live(avail, self._queue_seq)
            qflag[i] = 1
            entries.append(_entry(avail, d.rank[i], d.hrank[i], self._queue_seq))
        heapq.heapify(entries)
        d.heap = entries
        d.queued = queued
        d.qflag = qflag
        d.n_queued = len(entries)

    # ================================================================== requests

    def follow_hints(self, peer: str, info: KeyInfo, hints: tuple[int, ...], now: float,
                     bucket: TokenBucket) -> None:
        """A redirect's hints: positions of ``info`` the redirector holds and has never
        uploaded. Ask it for those we need (its pipeline allowing) before anyone else."""
        table = self._table
        for i in hints:
            if i >= len(info.refs):
                self._c.bad_have_messages += 1
                continue
            hint = info.refs[i].hash
            self.has_add(peer, hint)
            d = self.needing(hint)
            if (d is None or d.info is None or hint in table.by_chunk
                    or hint in table.pending_store or hint in table.retry_after):
                continue
            if len(table.by_peer[peer]) >= self._links.depth(peer):
                break
            if self._issue(d, hint, {peer}, now, bucket) is None:
                break

    def preempt(self, d: Download, now: float) -> None:
        """Cancel requests in flight for lower-priority keys to the peers that can serve
        ``d``, so their pipelines carry ``d`` next. A cancelled piece that still arrives
        is accepted (it is still needed) and the chunk is asked again later."""
        if d.info is None or not d.missing:
            return
        table = self._table
        for peer, out in table.by_peer.items():
            has = self.peer_has[peer].by_key[d.key]
            if not any(has[i] for i in d.missing.positions()):
                continue
            for h, rec in list(out.items()):
                low = self.downloads.get(rec.key)
                if low is None or low.priority >= d.priority or h in d.missing:
                    continue
                table.cancel(peer, h, now)
                self._c.preempted_requests += 1

    def store_failed(self, chunk_hash: bytes, now: float) -> None:
        """The store refused ``chunk_hash``: ask for it again after ``request_timeout``."""
        self._table.pending_store.pop(chunk_hash, None)
        self.requeue(chunk_hash)
        self._c.store_failures += 1
        self._table.retry_after[chunk_hash] = now + self._config.request_timeout
        for d in self.downloads.values():
            if chunk_hash in d.missing:
                d.last_problem = (f"the local store refused chunk {chunk_hash.hex()[:16]}; "
                                  f"retrying in {self._config.request_timeout:g}s")

    # ================================================================== scheduling

    def schedule(self, now: float, bucket: TokenBucket) -> None:
        self.blocked_on_tokens = False
        cfg = self._config
        if self._table.n_out >= cfg.max_requests_total:
            return
        self.endgame_wake = None
        active = [d for d in self.downloads.values() if d.info is not None and d.missing]
        if not active:
            return   # a seed, or every wanted key is complete: nothing to pick
        peer_out = self._table.by_peer
        busy = self._table.busy_until
        depth = self._links.depth
        spare = {p for p in self._connected
                 if len(peer_out[p]) < depth(p) and busy.get(p, now) <= now}
        if not spare:
            return
        if len(active) > 1:
            active.sort(key=lambda d: (-d.priority, d.order))
        for d in active:
            if not self._schedule_download(d, spare, now, bucket):
                return

    def _schedule_download(self, d: Download, spare: set[str], now: float,
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
        heap, queued, qflag = d.heap, d.queued, d.qflag
        table = self._table
        requests, pending, retry = table.by_chunk, table.pending_store, table.retry_after
        peer_has, peer_out, missing = self.peer_has, table.by_peer, d.missing
        mbits = missing.bits
        depth = self._links.depth
        c = self._c
        assert d.info is not None
        index_of, by_hash = d.info.index_of, d.by_hash
        hash_bytes = d.info.refs.chunks.hash_bytes   # position i: [32 i, 32 i + 32)
        key = d.key
        parked: list[int] = []
        aside: list[int] = []
        # ``n_maybe``: the queued chunks a spare peer holds whose live entry is still on the
        # heap (-1: not counted). Once none is left, every entry still on the heap would
        # only be parked or dropped as stale: the pass stops popping there.
        n_maybe, maybe = -1, b""
        if len(heap) > _COUNT_FROM:
            held = 0
            for p in spare:
                held |= int.from_bytes(peer_has[p].by_key[key], "big")
            flags = held & int.from_bytes(qflag, "big")
            n_maybe, maybe = flags.bit_count(), flags.to_bytes(len(qflag), "big")
        try:
            while spare:
                pass_spare = [peer_has[p].by_key[key] for p in spare]
                # candidates set aside by earlier passes that a spare peer still holds
                # (they find no provider again: spare and back-off only shrink)
                still = []
                for e in aside:
                    i = by_hash[(e >> _SEQ_BITS) & _HRANK_MASK]
                    for has in pass_spare:
                        if has[i]:
                            still.append(e)
                            break
                    else:
                        parked.append(e)
                aside = still
                room = min(cfg.max_requests_total - table.n_out,
                           sum(depth(p) - len(peer_out[p]) for p in spare))
                window = 2 * room + 4
                seen = len(aside)
                issued = 0
                while seen < window and heap and n_maybe:
                    e = heapq.heappop(heap)
                    c.picker_pops += 1
                    i = by_hash[(e >> _SEQ_BITS) & _HRANK_MASK]
                    live = queued[i]
                    if not live or live >> _AVAIL_BITS != e & _SEQ_MASK:
                        continue   # stale: superseded or consumed
                    if n_maybe > 0 and maybe[i]:
                        n_maybe -= 1
                    h = hash_bytes[i << 5:(i << 5) + 32] if mbits[i] else b""  # (per pop)
                    if not h or h in requests or h in pending:
                        queued[i] = 0   # requeued when it becomes idle again
                        qflag[i] = 0
                        d.n_queued -= 1
                        continue
                    if retry and retry.get(h, now) > now:
                        parked.append(e)
                        continue
                    for has in pass_spare:   # (a loop, not any(): this runs per pop)
                        if has[i]:
                            break
                    else:
                        parked.append(e)
                        continue
                    seen += 1
                    result = self._issue(d, h, spare, now, bucket)
                    if result is None:
                        if h in requests:
                            queued[i] = 0
                            qflag[i] = 0
                            d.n_queued -= 1
                        else:
                            parked.append(e)   # the download cap: ask again later
                        return False
                    if result:
                        issued += 1
                        queued[i] = 0
                        qflag[i] = 0
                        d.n_queued -= 1
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
        limit = self.endgame_limit(d)
        if len(d.missing) <= limit + len(pending):
            left = [h for h in d.missing if h not in pending]
            if left and len(left) <= limit and all(h in requests for h in left):
                expected = self._links.expected_answer
                for h in sorted(left, key=lambda h: d.rank[index_of[h]]):
                    recs = requests[h]
                    if len(recs) >= cfg.endgame_fanout:
                        continue
                    due = min(r.sent_at + max(_ENDGAME_FLOOR, cfg.endgame_age
                                              * expected(r.peer, len(peer_out.get(r.peer, ()))))
                              for r in recs.values())
                    if due > now:
                        if self.endgame_wake is None or due < self.endgame_wake:
                            self.endgame_wake = due
                        continue
                    if self._issue(d, h, spare, now, bucket, endgame=True) is None:
                        return False
        return bool(spare) and table.n_out < cfg.max_requests_total

    def _issue(self, d: Download, h: bytes, spare: set[str], now: float,
               bucket: TokenBucket, *, endgame: bool = False) -> int | None:
        """Request ``h`` from the best spare provider: 1 if sent, 0 if no provider is
        free, None when no more requests can go out at all (limits, cap)."""
        cfg = self._config
        table = self._table
        asked = table.by_chunk.get(h, {})
        avoid = table.avoid
        peer_out = table.by_peer
        providers = [p for p in spare if h in self.peer_has[p] and p not in asked
                     and (p not in avoid or avoid[p].get(h, now) <= now)]
        if not providers:
            return 0
        if not bucket.ready(now):
            self.blocked_on_tokens = True
            return None
        fewest = min(len(peer_out[p]) for p in providers)
        peer = self._rng.choice(sorted(p for p in providers if len(peer_out[p]) == fewest))
        assert d.info is not None
        size = d.info.size_of[h]
        table.add(peer, d.key, h, size, now)
        bucket.spend(size, now)
        self._send(peer, Request(d.key, h, int(d.priority)))
        self._c.requests_sent += 1
        if endgame:
            self._c.endgame_requests += 1
        if len(peer_out[peer]) >= self._links.depth(peer):
            spare.discard(peer)
        if not spare or table.n_out >= cfg.max_requests_total:
            return None
        return 1

    # ================================================================== test hooks

    def in_endgame(self, key: str) -> bool:
        d = self.downloads.get(key)
        if d is None:
            return False
        left = [h for h in d.missing if h not in self._table.pending_store]
        return len(left) <= self.endgame_limit(d)
