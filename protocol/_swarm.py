"""The swarm engine: content-addressed, multi-source chunk transfer (sans-IO).

Theory of operation
-------------------
A *swarm* is keyed by a content key ``f"{manifest_id}/{variant_id}"``; its chunk
list comes from ``lookup(key)`` (the signed manifest), so every peer agrees on it
(:mod:`._swarm_keys`). ``want(key)`` sends :class:`Interested` to every connected
peer; a peer that knows the key answers with a :class:`HaveSet` bitfield computed from
its local store (``held``) -- so a chunk held because of *another* version counts --
and from then on tells it of each chunk of that key it stores: a :class:`Have`, or a
:class:`Haves` for the chunks stored within one ``have_interval`` (:mod:`._swarm_haves`).
A peer that lacks the manifest answers :class:`CannotHelp` and is asked again every
``interest_retry`` seconds; it also remembers who asked, and answers them with a
:class:`HaveSet` as soon as it learns the manifest (during a rollout's start-up,
waiting for the re-ask left uplinks idle for seconds).

:class:`SwarmEngine` owns the parts and routes inputs to them; it decides little
itself:

* the picker (:mod:`._swarm_picker`): what each peer holds, rarest-first
  scheduling, endgame and pre-emption;
* the request table (:mod:`._swarm_requests`): the requests in flight, their
  timeouts, and the back-offs that keep a chunk away from a peer for a while;
* link measurement (:mod:`._swarm_links`): per-peer pipeline depth and expected
  answer time;
* uploads (:mod:`._swarm_serving` over :mod:`._swarm_uploads`): answering requests,
  super-seeding, fair prioritised upload slots and the upload cap.

What the engine keeps is the peers (connected, dropped, consecutive failures), who is
interested in what, and the verdict on every :class:`Piece`: it is checked with
``verifier(hash, size, data)`` before anything else. A bad one drops the peer
(``DropPeer``), bans it from this engine for good and is reported; a good one that we
asked for and still need becomes a ``StoreChunk``; a good one no longer needed is a
counted duplicate; one we never asked for is ignored and counted. ``held`` grows only
in :meth:`SwarmEngine.chunk_stored`. After ``max_peer_failures`` consecutive failures
(timeouts, or "missing" answers for chunks it advertised) a peer is dropped as a liar.

Every input appends outputs (messages to send, chunks to serve or store, peers to
drop, notices); the driver takes them with :meth:`SwarmEngine.take_outputs` and asks
:meth:`SwarmEngine.next_deadline` when to call :meth:`SwarmEngine.on_timer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from ._bans import BANS, DropCause
from ._config import SwarmConfig
from ._events import DropPeer, Notice, NoticeKind, Output, SendMessage, StoreChunk
from ._manifest import ChunkRef
from ._rng import Rng
from ._swarm_haves import BUSY_BACKLOG, HaveBatcher
from ._swarm_keys import KeyCatalog, KeyInfo
from ._swarm_links import LinkEstimates
from ._swarm_messages import (
    SWARM_MESSAGES,
    Cancel,
    CannotHelp,
    Have,
    Haves,
    HaveSet,
    Interested,
    NotInterested,
    Piece,
    Pieces,
    Redirect,
    Reject,
    Request,
    Requests,
    bitfield_indices,
    make_bitfield,
)
from ._swarm_picker import Download, Picker
from ._swarm_requests import RequestTable
from ._swarm_serving import Uploader
from ._swarm_stats import Counters, SwarmStatistics, TransferProgress
from ._swarm_uploads import TokenBucket, UploadScheduler
from ._types import BlockerReason, TransferPriority

if TYPE_CHECKING:
    from ._wire import SwarmMessage

__all__ = ["ContentKey", "SwarmEngine", "TransferProgress", "SwarmStatistics", "make_piece",
           "Piece"]

ContentKey = str

_MAX_ASKED_EARLY = 64   # keys remembered as asked for before we knew their manifest
_RECENT_ASK = 10.0      # s: a peer that asked for a chunk this recently may have one coming


def make_piece(chunk_hash: bytes, data: bytes, priority: int) -> Piece:
    """The message a driver sends when it carries out ``ServeChunk(peer, hash, priority)``."""
    return Piece(chunk_hash, data, int(priority))


class SwarmEngine:
    """See the module docstring. Inputs append outputs; take them with :meth:`take_outputs`."""

    def __init__(self, *, node_id: str, config: SwarmConfig, rng: Rng,
                 held: Iterable[bytes], lookup: Callable[[str], Sequence[ChunkRef] | None],
                 verifier: Callable[[bytes, int, bytes | memoryview], bool]) -> None:
        self.node_id = node_id
        self._config = config
        self._rng = rng
        self._lookup = lookup
        self._verifier = verifier
        self._outputs: list[Output] = []
        self._completed: list[str] = []
        self._connected: set[str] = set()
        self._banned: dict[str, str] = {}          # peer -> why it was last dropped
        self._banned_until: dict[str, float] = {}  # peer -> when its ban ends (DropPeer)
        self._failures: dict[str, int] = {}
        self._remote_interest: dict[str, set[str]] = {}   # peer -> keys it wants from us
        self._asked_at: dict[str, float] = {}   # peer -> when it last asked us for a chunk
        # key -> peers that asked for it (Interested) before we knew it (answered later)
        self._asked_early: dict[str, set[str]] = {}
        self._c = Counters()
        self._keys = KeyCatalog()
        self._infos = self._keys.infos
        held = self._held = self._keys.held_set(held)   # by position over the known keys
        self._links = LinkEstimates(config)
        self._table = RequestTable(config=config, counters=self._c, send=self._send)
        self._picker = Picker(config=config, rng=rng, held=held, connected=self._connected,
                              table=self._table, links=self._links, counters=self._c,
                              send=self._send, keys=self._keys)
        self._downloads = self._picker.downloads
        self._uploader = Uploader(config=config, rng=rng, held=held, keys=self._keys,
                                  remote_interest=self._remote_interest,
                                  peer_has=self._picker.peer_has, seeding=self._picker.seeding,
                                  counters=self._c, send=self._send, emit=self._emit)
        self._down_bucket: TokenBucket | None = None
        self._haves = HaveBatcher(config.have_interval, self._send, self._serving,
                                  config.have_busy_interval)

    def clock_stepped_back(self, delta: float) -> None:
        """The wall clock went back by ``delta`` seconds. Every time kept here (request
        stamps, deadlines, link estimates, buckets, slots) moves back with it, so each
        timer keeps its remaining duration instead of waiting for the clock to catch up
        (an unanswered request would otherwise be re-issued only ``delta`` later)."""
        shift = -delta
        for times in (self._banned_until, self._asked_at):
            for peer in times:
                times[peer] += shift
        self._table.shift_time(shift)
        self._picker.shift_time(shift)
        self._links.shift_time(shift)
        if self._uploader.scheduler is not None:
            self._uploader.scheduler.shift_time(shift)
        if self._down_bucket is not None:
            self._down_bucket.shift_time(shift)
        self._haves.shift_time(shift)

    # ================================================================== helpers

    def _serving(self, peer: str) -> bool:
        """Whether ``peer`` is busy for the HaveBatcher: a request of it is queued or in
        flight here, or it has work it could ask of this node (``BUSY_BACKLOG``)."""
        scheduler = self._uploader.scheduler
        if scheduler is not None and scheduler.serving(peer):
            return True
        has = self._picker.peer_has.get(peer)
        return self._haves.backlog(peer, None if has is None else has.by_key.get) >= BUSY_BACKLOG

    def _buckets(self, now: float) -> tuple[UploadScheduler, TokenBucket]:
        # Created lazily so that the first `now` the engine sees starts the buckets.
        uploads = self._uploader.start(now)
        if self._down_bucket is None:
            self._down_bucket = TokenBucket(self._config.download_rate,
                                            self._config.rate_burst, now)
        return uploads, self._down_bucket

    def _send(self, peer: str, message: SwarmMessage) -> None:
        if peer in self._connected:
            self._outputs.append(SendMessage(peer, message))

    def _emit(self, out: Output) -> None:
        self._outputs.append(out)

    def _schedule(self, now: float) -> None:
        bucket = self._down_bucket
        if bucket is None:
            _, bucket = self._buckets(now)
        self._picker.schedule(now, bucket)

    def _pump_uploads(self, now: float) -> None:
        self._buckets(now)
        self._uploader.pump(now)

    def _info(self, key: str) -> KeyInfo | None:
        info = self._infos.get(key)
        if info is not None:
            return info
        refs = self._lookup(key)
        if refs is None:
            return None
        info = self._keys.add(key, refs)
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
        self._uploader.forget_key(key)
        self._keys.forget(key)

    def _ask(self, d: Download, peer: str, now: float) -> None:
        """Send ``peer`` :class:`Interested` in ``d``; until its :class:`HaveSet` comes it
        is asked again every ``interest_retry`` (as one that answered :class:`CannotHelp`
        is), so a lost question or answer costs seconds, not the peer's chunks."""
        d.cannot_help[peer] = now
        self._send(peer, Interested(d.key))

    def _check_complete(self, d: Download) -> None:
        if d.info is not None and not d.missing and not d.completed:
            d.completed = True
            self._completed.append(d.key)
            self._c.keys_completed += 1
            for peer in sorted(self._connected):
                self._send(peer, NotInterested(d.key))

    def _forget_peer(self, peer: str) -> None:
        self._haves.drop(peer)
        self._asked_at.pop(peer, None)
        self._table.forget_peer(peer)
        self._picker.forget_peer(peer)
        self._links.forget(peer)
        interest = self._remote_interest.pop(peer, set())
        for key in interest:
            self._forget_info(key)
        for d in self._downloads.values():
            d.cannot_help.pop(peer, None)
        if self._uploader.scheduler is not None:
            self._uploader.scheduler.remove_peer(peer)

    def _drop_peer(self, peer: str, reason: str, cause: DropCause, now: float) -> None:
        ban_for = BANS.ban_for(cause)
        self._banned[peer] = reason
        self._banned_until[peer] = now + ban_for
        self._outputs.append(DropPeer(peer, reason, ban_for))
        self._outputs.append(Notice(NoticeKind.PEER_DROPPED, f"peer {peer}: {reason}",
                                    reason=BlockerReason.TRANSFER_FAILED))
        self._connected.discard(peer)
        self._forget_peer(peer)

    def _failure(self, peer: str, now: float, what: str) -> None:
        n = self._failures.get(peer, 0) + 1
        self._failures[peer] = n
        if n >= self._config.max_peer_failures and peer in self._connected:
            self._drop_peer(peer, f"{n} requests in a row for chunks it advertised went "
                                  f"unserved (last: {what}); it advertises chunks it lacks "
                                  "or has stopped serving", DropCause.UNRESPONSIVE, now)

    # ================================================================== local inputs

    def want(self, key: str, priority: TransferPriority, now: float) -> None:
        """Start fetching ``key`` or change its priority."""
        d = self._downloads.get(key)
        if d is not None:
            d.priority = TransferPriority(priority)
        else:
            d = self._picker.add(key, TransferPriority(priority))
            info = self._info(key)
            if info is not None:
                self._picker.init_download(d, info)
            else:
                d.lookup_retry_at = now + self._config.interest_retry
            if d.missing or info is None:
                for peer in sorted(self._connected):
                    self._ask(d, peer, now)
            self._check_complete(d)
        self._picker.preempt(d, now)
        self._schedule(now)

    def drop(self, key: str, now: float) -> None:
        """Stop fetching ``key``: cancel its requests; chunks already stored stay."""
        d = self._picker.drop(key, now)
        if d is None:
            return
        if not d.completed:
            for peer in sorted(self._connected):
                self._send(peer, NotInterested(key))
        self._completed = [k for k in self._completed if k != key]
        self._forget_info(key)
        self._schedule(now)

    def chunk_stored(self, chunk_hash: bytes, now: float) -> None:
        self._stored(chunk_hash, now)
        self._haves.release(now)
        self._schedule(now)

    def chunks_stored(self, chunk_hashes: Iterable[bytes], now: float) -> None:
        """:meth:`chunk_stored` for each of several chunks; one scheduling pass."""
        for h in chunk_hashes:
            self._stored(h, now)
        self._haves.release(now)
        self._schedule(now)

    def _stored(self, chunk_hash: bytes, now: float) -> None:
        self._held.add(chunk_hash)
        self._table.stored(chunk_hash, now)
        for d in list(self._downloads.values()):
            if chunk_hash in d.missing:
                d.missing.discard(chunk_hash)
                self._check_complete(d)
        for key in sorted(self._keys.keys_of(chunk_hash)):
            index = self._infos[key].index_of[chunk_hash]
            for peer in sorted(self._connected):
                if key in self._remote_interest.get(peer, ()):
                    self._haves.add(peer, key, index)

    def chunk_store_failed(self, chunk_hash: bytes, now: float) -> None:
        self._picker.store_failed(chunk_hash, now)
        self._schedule(now)

    def chunks_removed(self, chunk_hashes: Iterable[bytes], now: float) -> None:
        """The driver deleted chunks on purpose (an old version removed): forget them;
        a transfer that still wants one fetches it again."""
        gone = [h for h in chunk_hashes if h in self._held]
        if not gone:
            return
        for h in gone:
            self._held.discard(h)
            self._uploader.chunk_lost(h, now)
        self._buckets(now)
        for h in gone:
            for d in self._picker.refetch(h):
                for peer in sorted(self._connected):
                    self._send(peer, Interested(d.key))
        self._schedule(now)

    def chunk_missing(self, chunk_hash: bytes, now: float) -> None:
        """The store lost (or never had) a chunk we advertised: tell askers, fetch it again."""
        self._held.discard(chunk_hash)
        self._buckets(now)
        self._uploader.chunk_lost(chunk_hash, now)
        for d in self._picker.refetch(chunk_hash):
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
        self._buckets(now)
        self._uploader.sent(peer, chunk_hash, now)

    def uploads_done(self, peer: str, chunk_hashes: Iterable[bytes], now: float) -> None:
        """:meth:`upload_done` for a run of pieces sent together."""
        self._buckets(now)
        self._uploader.sent_many(peer, chunk_hashes, now)

    # ================================================================== peers

    def peer_connected(self, peer: str, now: float) -> None:
        if self._banned_until.get(peer, -math.inf) > now or peer in self._connected:
            return
        self._connected.add(peer)
        self._table.add_peer(peer)
        self._picker.add_peer(peer)
        self._failures[peer] = 0
        for d in sorted(self._downloads.values(), key=lambda d: d.order):
            if not d.completed:
                self._ask(d, peer, now)

    def peer_disconnected(self, peer: str, now: float) -> None:
        if peer not in self._connected:
            return
        self._connected.discard(peer)
        self._forget_peer(peer)
        if self._uploader.scheduler is not None:
            self._pump_uploads(now)   # its unreported pieces no longer hold the window
        self._schedule(now)

    def peer_load(self, peer: str, now: float) -> int:
        """Chunk transfers under way with ``peer`` (ours asked of it, its own queued here,
        one more if it asked within ``_RECENT_ASK`` s): the overlay closes the least loaded."""
        sched = self._uploader.scheduler
        recent = now - self._asked_at.get(peer, -math.inf) < _RECENT_ASK
        return (len(self._table.by_peer.get(peer, ())) + int(recent)
                + (sched.queued_by(peer) if sched is not None else 0))

    def handles(self, message: object) -> bool:
        return isinstance(message, SWARM_MESSAGES)

    def receive(self, peer: str, message: object, now: float) -> None:
        if peer not in self._connected:
            return   # a dropped or unknown peer: ignore whatever it still sends
        if isinstance(message, Piece):
            if self._on_piece(peer, message.chunk_hash, message.data, now):
                self._schedule(now)
        elif isinstance(message, Request):
            self._on_request(peer, message, now)
        elif isinstance(message, Pieces):
            self._on_pieces(peer, message, now)
        elif isinstance(message, Requests):
            for request in message.split():
                self._on_request(peer, request, now, pump=False)
            self._uploader.pump(now)
        elif isinstance(message, Have | Haves):
            self._on_haves(peer, message, now)
        elif isinstance(message, HaveSet):
            self._on_have_set(peer, message, now)
        elif isinstance(message, Interested):
            self._on_interested(peer, message)
        elif isinstance(message, NotInterested):
            self._remote_interest.get(peer, set()).discard(message.key)
            self._haves.drop(peer, message.key)
            self._asked_early.get(message.key, set()).discard(peer)
            self._forget_info(message.key)
        elif isinstance(message, CannotHelp):
            d = self._downloads.get(message.key)
            if d is not None:
                d.cannot_help[peer] = now
        elif isinstance(message, Cancel):
            if self._uploader.scheduler is not None:
                self._uploader.scheduler.cancel(peer, message.chunk_hash)
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

    def _on_haves(self, peer: str, message: Have | Haves, now: float) -> None:
        info = self._info(message.key)
        indices = (message.index,) if isinstance(message, Have) else message.indices
        if info is None or indices[-1] >= len(info.refs):   # Haves: indices increase
            self._c.bad_have_messages += 1
            return
        refs, has_add = info.refs, self._picker.has_add
        for i in indices:
            has_add(peer, refs[i].hash)
        self._schedule(now)

    def _on_have_set(self, peer: str, message: HaveSet, now: float) -> None:
        info = self._info(message.key)
        if info is None or message.count != len(info.refs):
            self._c.bad_have_messages += 1
            return
        has_add, hashes = self._picker.has_add, info.refs.hashes   # (no ChunkRef each)
        for i in bitfield_indices(message.bitfield, message.count):
            has_add(peer, hashes[i])
        d = self._downloads.get(message.key)
        if d is not None:
            d.cannot_help.pop(peer, None)
        self._schedule(now)

    def _on_request(self, peer: str, message: Request, now: float, pump: bool = True) -> None:
        self._buckets(now)
        self._asked_at[peer] = now
        self._uploader.request(peer, message, self._info(message.key), now, pump)

    def _on_redirect(self, peer: str, message: Redirect, now: float) -> None:
        if not self._table.redirected(peer, message.chunk_hash, now):
            return
        info = self._info(message.key)
        if info is not None:
            _, bucket = self._buckets(now)
            self._picker.follow_hints(peer, info, message.hints, now, bucket)
        self._schedule(now)

    def _on_reject(self, peer: str, message: Reject, now: float) -> None:
        table = self._table
        h = message.chunk_hash
        if message.missing:
            self._picker.has_discard(peer, h)
        if h not in table.by_peer[peer]:
            return
        self._c.requests_rejected += 1
        table.remove(peer, h, stale_at=None)
        if message.missing:
            self._failure(peer, now, f"it answered 'missing' for chunk {h.hex()[:16]}")
        elif table.by_peer[peer]:   # its queue for us is full: ask only what it holds
            self._links.cap(peer, len(table.by_peer[peer]), now + self._config.interest_retry)
        else:                       # it holds none of ours: it choked us
            table.busy_until[peer] = now + self._config.interest_retry
        self._schedule(now)

    def _on_pieces(self, peer: str, message: Pieces, now: float) -> None:
        """A run of pieces: each good one is taken as a ``Piece`` would be, whatever
        else the run holds; then a bad one (if any) drops the peer as a bad ``Piece``
        does, and the chunks it still owed are asked of others. One scheduling pass."""
        bad: list[tuple[bytes, memoryview]] = []
        for h, data in message.runs():
            known = self._keys.known(h)
            if known is not None and not self._verifier(known[0], known[1], data):
                bad.append((h, data))
            else:
                self._on_piece(peer, h, data, now, verified=True)
        for h, data in bad[:1]:
            self._on_piece(peer, h, data, now, verified=False)
        self._schedule(now)

    def _on_piece(self, peer: str, chunk_hash: bytes, data: bytes | memoryview, now: float,
                  verified: bool | None = None) -> bool:
        """Take one piece (``verified``: its bytes were already checked, with that
        result); True when the engine should then schedule."""
        known = self._keys.known(chunk_hash)
        if known is None:
            self._c.unsolicited_pieces += 1   # a chunk of no key we know: never asked
            return False
        h, size = known
        self._c.pieces_received += 1
        if not (self._verifier(h, size, data) if verified is None else verified):
            self._c.corrupt_pieces += 1
            self._drop_peer(peer, f"sent bytes that do not match chunk {h.hex()[:16]} "
                                  "(corrupt or forged); banned from this node's swarms",
                            DropCause.MISBEHAVED, now)
            return True
        table = self._table
        asked, late = table.answered(peer, h)
        if asked is None and late is None:
            self._c.unsolicited_pieces += 1
            self._count_duplicate(h, size)
            return False
        key = asked.key if asked is not None else None
        if asked is not None:
            self._links.measure(peer, asked.sent_at, now)
        table.remove(peer, h, stale_at=None)
        if asked is not None:
            table.overtaken(peer, asked.seq, now)
        self._failures[peer] = 0
        d = self._picker.needing(h)
        if d is None or h in self._held or h in table.pending_store:
            self._c.duplicate_pieces += 1
            self._count_duplicate(h, size, key)
            return True
        if key is not None and key in self._downloads and h in self._downloads[key].missing:
            d = self._downloads[key]
        table.pending_store[h] = d.key
        d.bytes_fetched += size
        self._c.bytes_fetched += size
        self._c.pieces_accepted += 1
        self._outputs.append(StoreChunk(h, data))
        table.cancel_all(h, now)   # endgame: the other copies are no longer needed
        return True

    def _count_duplicate(self, chunk_hash: bytes, size: int, key: str | None = None) -> None:
        self._c.bytes_duplicate += size
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
        table = self._table
        timeout = self._config.request_timeout
        for h, peer in table.overdue(now):
            if peer not in self._connected or h not in table.by_peer.get(peer, {}):
                continue
            table.time_out(peer, h, now)
            self._failure(peer, now, f"chunk {h.hex()[:16]} unanswered after {timeout:g}s")
        table.expire(now)
        self._links.expire(now)
        for d in sorted(self._downloads.values(), key=lambda d: d.order):
            if d.info is None and d.lookup_retry_at <= now:
                info = self._info(d.key)
                if info is None:
                    d.lookup_retry_at = now + self._config.interest_retry
                else:
                    self._picker.init_download(d, info)
                    self._check_complete(d)
            if d.completed:
                continue
            for peer, t in sorted(d.cannot_help.items()):
                if t + self._config.interest_retry <= now:
                    d.cannot_help[peer] = now
                    self._send(peer, Interested(d.key))
        self._buckets(now)
        self._uploader.on_timer(now)
        self._haves.release(now)
        self._schedule(now)

    def next_deadline(self) -> float | None:
        deadlines = self._table.deadlines() + self._links.deadlines()
        if self._haves.next_deadline() < math.inf:
            deadlines.append(self._haves.next_deadline())
        if self._picker.endgame_wake is not None:
            deadlines.append(self._picker.endgame_wake)
        for d in self._downloads.values():
            if d.info is None:
                deadlines.append(d.lookup_retry_at)
            elif not d.completed and d.cannot_help:
                deadlines.append(min(d.cannot_help.values()) + self._config.interest_retry)
        if self._picker.blocked_on_tokens and self._down_bucket is not None:
            deadlines.append(self._down_bucket.ready_at())
        up = None if (up_s := self._uploader.scheduler) is None else up_s.next_deadline()
        if up is not None:
            deadlines.append(up)
        return min(deadlines) if deadlines else None

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

    def progress(self, key: str, *, detail: bool = True) -> TransferProgress:
        """Where ``key`` stands; ``detail=False`` (the refresh on each timer) leaves
        ``detail`` empty and stops at the first missing chunk available or in flight."""
        d = self._downloads.get(key)
        if d is None:
            return TransferProgress(0, 0, 0, 0, 0, False, f"{key} is not wanted")
        if d.info is None:
            return TransferProgress(0, 0, 0, 0, 0, True,
                                    f"the manifest for {key} is not known yet")
        done = partial(TransferProgress, d.bytes_total, d.bytes_total - d.missing.size_sum,
                       d.bytes_reused, d.bytes_fetched, d.bytes_duplicate)
        if not d.missing:
            return done(False, "complete")
        requests, pending = self._table.by_chunk, self._table.pending_store
        if not detail:
            return done(not any(d.avail[i] for i in d.missing.positions()) and
                        not any(h in requests or h in pending for h in d.missing), "")
        in_flight = sum(1 for h in d.missing if h in requests or h in pending)
        available = sum(1 for i in d.missing.positions() if d.avail[i])
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
        return done(stalled, "; ".join(parts))

    def statistics(self) -> SwarmStatistics:
        uploads = self._uploader.scheduler
        return self._c.snapshot(
            keys_wanted=len(self._downloads),
            peers_connected=len(self._connected),
            requests_outstanding=self._table.n_out,
            uploads_queued=uploads.queued if uploads is not None else 0,
            upload_preemptions=uploads.preemptions if uploads is not None else 0,
            uploads_stalled=uploads.stalled_pieces if uploads is not None else 0,
            dropped_peers=tuple(sorted(self._banned.items())),
        )

    # ------------------------------------------------------------------ test hooks

    def outstanding(self) -> dict[bytes, frozenset[str]]:
        """Snapshot: chunk hash -> peers asked for it (for invariant checks)."""
        return self._table.outstanding()

    def request_times(self) -> dict[tuple[str, bytes], float]:
        """Snapshot: (peer, chunk hash) -> when that outstanding request was sent."""
        return self._table.request_times()

    def in_endgame(self, key: str) -> bool:
        return self._picker.in_endgame(key)
