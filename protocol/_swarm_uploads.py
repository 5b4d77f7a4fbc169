"""Upload side of the swarm: token buckets and fair, prioritised upload slots.

Theory of operation
-------------------
Requests from peers are queued per peer (bounded: a peer that queues more than
``max_queued_per_peer`` gets "busy"). Only peers holding an *upload slot* are
served. There are ``upload_slots`` slots: ``optimistic_slots`` of them go to a
random waiting peer, preferring peers we have served the fewest bytes (so a
newcomer with nothing to offer still bootstraps); the rest go to waiting peers
ranked by the highest priority they have queued, then by who was served least
recently (round-robin). Slots are work-conserving: a peer whose queue empties
gives its slot up at once. Every ``rechoke_interval`` seconds, while peers are
waiting, the regular slot held longest and the optimistic slot are rotated; a
peer still waiting after a whole interval has its old requests answered "busy"
so it re-asks elsewhere rather than time out here.
A waiting peer whose best queued priority beats the lowest slot holder's takes
that slot at once (pre-emption).

Among slot holders the next request served is the highest priority one; at
equal priority, with ``laggard_patience`` > 0 (the default), the requester this node knows
to hold the *fewest* chunks goes first (``progress_of``, set by the engine from the
peers' have-sets) unless another requester's oldest request has waited longer than
``laggard_patience``; then (or without it) the peer served least recently goes
first, and within a peer's
queue the chunk this node has uploaded the fewest times goes first (first-copy
priority: a scarce node spends its uplink on bytes nobody else can serve yet).
The scheduler counts uploads per chunk (:meth:`UploadScheduler.copies`,
:meth:`UploadScheduler.uploaded_since`) so the engine can redirect repeats. Serving stops when
the upload :class:`TokenBucket` is in debt; the bucket is refilled from ``now``
and the engine sets a timer for when it will be positive again. The scheduler
never touches chunk bytes: it yields ``(peer, hash, priority, size)`` and the
driver reads and sends the chunk.

Upload window. A driver that reports each piece sent (``SwarmEngine.upload_done`` ->
:meth:`UploadScheduler.sent`) turns on the window: from its first report on, at most
``upload_window`` pieces are handed out and unreported, so the queue stays *here*,
where the order above applies, instead of in the link's FIFO (where every request is
served in arrival order whatever this scheduler prefers). Without reports every
queued request is handed out at once, as before. A piece never reported (lost report)
leaves the window after ``request_timeout``; one whose peer left or whose chunk could
not be read leaves it at once (:meth:`UploadScheduler.not_sent`).

The window stands for the node's *uplink*, but a driver may have one connection per
peer (the daemon: one TCP stream each), and a piece can wait on its own connection --
a peer cut off, or behind a slow radio -- while the uplink is idle. So a piece still
unreported ``_STALL_FACTOR`` times longer than this node's pieces take to go
(an EWMA of seconds per byte over the reports, at least ``_STALL_FLOOR`` s) is
*stalled*: it stops counting toward the window and others may go. It still counts
for its peer: a peer holding ``upload_window`` unreported pieces is given no more,
so stalled pieces are bounded by ``upload_window`` per peer. When every piece goes
at the link's pace (the simulator's one FIFO uplink) nothing ever stalls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._config import SwarmConfig
from ._rng import Rng

__all__ = ["TokenBucket", "UploadScheduler", "Serve"]

_EPSILON = 1e-6  # bytes of float slack when deciding a bucket is no longer in debt
_STALL_FACTOR = 4.0   # unreported this many times longer than usual: the piece is stalled
_STALL_FLOOR = 0.05   # ... and never before this many seconds
_SEND_EWMA = 0.2      # weight of the newest report in the seconds-per-byte estimate


class TokenBucket:
    """A byte-rate limiter driven by ``now``; ``rate <= 0`` means unlimited.

    Spending may take the bucket into debt (a chunk is larger than the depth);
    nothing more is spent until the debt is paid back at ``rate``.
    """

    __slots__ = ("rate", "depth", "tokens", "stamp")

    def __init__(self, rate: float, burst_seconds: float, now: float) -> None:
        self.rate = rate
        self.depth = max(rate * burst_seconds, 1.0)
        self.tokens = self.depth
        self.stamp = now

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.depth, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def ready(self, now: float) -> bool:
        if self.unlimited:
            return True
        self._refill(now)
        return self.tokens > -_EPSILON

    def spend(self, amount: int, now: float) -> None:
        if not self.unlimited:
            self._refill(now)
            self.tokens -= amount

    def shift_time(self, delta: float) -> None:
        """The clock stepped by ``delta`` seconds: keep the bucket's state, move its stamp."""
        self.stamp += delta

    def ready_at(self) -> float:
        """When the bucket stops being in debt (``stamp`` if it is not)."""
        if self.unlimited or self.tokens > -_EPSILON:
            return self.stamp
        return self.stamp + (-self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Serve:
    peer: str
    chunk_hash: bytes
    priority: int
    size: int


@dataclass(slots=True)
class _Unreported:
    """A piece handed to the driver and not yet reported sent. Only ``counted`` ones
    (handed out after the driver's first report) take a place in the window."""
    since: float
    size: int
    counted: bool
    stalled: bool = False


@dataclass(slots=True)
class _Queued:
    priority: int
    seq: int
    chunk_hash: bytes
    size: int
    since: float


class UploadScheduler:
    def __init__(self, config: SwarmConfig, rng: Rng, now: float) -> None:
        self._config = config
        self._rng = rng
        self.bucket = TokenBucket(config.upload_rate, config.rate_burst, now)
        self._queues: dict[str, list[_Queued]] = {}
        self._regular: dict[str, float] = {}      # slot holder -> since
        self._optimistic: dict[str, float] = {}
        self._served_bytes: dict[str, int] = {}
        self._last_turn: dict[str, int] = {}       # round-robin stamp of last serve
        self._turn = 0
        self._seq = 0
        self._next_rechoke: float | None = None
        n_slots = max(1, config.upload_slots)
        self._n_optimistic = min(max(0, config.optimistic_slots), n_slots - 1)
        self._n_regular = n_slots - self._n_optimistic
        self.preemptions = 0
        self._rejected: list[tuple[str, bytes]] = []
        self.rechokes = 0
        self._copies: dict[bytes, int] = {}        # chunk -> times uploaded
        # Upload window (``upload_window`` > 0): pieces handed to the driver and not yet
        # reported sent, by (peer, chunk), oldest first (a connection reports in order).
        # ``_n_in_flight`` counts the ones in the window (handed out after the first
        # report, not stalled), ``_peer_unreported`` the counted ones per peer. A driver
        # that never reports must not stall: its pieces count for nothing and expire.
        self._in_flight: dict[tuple[str, bytes], list[_Unreported]] = {}
        self._n_in_flight = 0
        self._peer_unreported: dict[str, int] = {}
        self._reported = False
        self._send_spb: float | None = None   # EWMA of seconds per byte, from reports
        self.stalled_pieces = 0
        # requester -> how many chunks it holds, as the engine knows it (set by the engine
        # when ``laggard_patience`` > 0): the requester holding the fewest is served first
        self.progress_of: Callable[[str], int] | None = None
        self._last_upload: dict[bytes, float] = {}  # chunk -> when last uploaded

    def shift_time(self, delta: float) -> None:
        """The wall clock stepped by ``delta``: move every time kept here with it, so
        slots, rechokes and the bucket keep their remaining durations."""
        self.bucket.shift_time(delta)
        for peer in self._regular:
            self._regular[peer] += delta
        for peer in self._optimistic:
            self._optimistic[peer] += delta
        for chunk in self._last_upload:
            self._last_upload[chunk] += delta
        for pieces in self._in_flight.values():
            for piece in pieces:
                piece.since += delta
        for queue in self._queues.values():
            for q in queue:
                q.since += delta
        if self._next_rechoke is not None:
            self._next_rechoke += delta

    # ------------------------------------------------------------------ queue

    def enqueue(self, peer: str, chunk_hash: bytes, size: int, priority: int,
                now: float) -> bool:
        """Queue a request; False when the peer's queue is full (answer "busy")."""
        queue = self._queues.setdefault(peer, [])
        if any(q.chunk_hash == chunk_hash for q in queue):
            return True
        if len(queue) >= self._config.max_queued_per_peer:
            return False
        self._seq += 1
        queue.append(_Queued(priority, self._seq, chunk_hash, size, now))
        return True

    def queued_for(self, chunk_hash: bytes) -> list[str]:
        """The peers with a request for ``chunk_hash`` waiting here, sorted."""
        return sorted(p for p, queue in self._queues.items()
                      if any(q.chunk_hash == chunk_hash for q in queue))

    def cancel(self, peer: str, chunk_hash: bytes) -> bool:
        queue = self._queues.get(peer)
        if not queue:
            return False
        before = len(queue)
        queue[:] = [q for q in queue if q.chunk_hash != chunk_hash]
        return len(queue) != before

    def forget_chunk(self, chunk_hash: bytes) -> list[str]:
        """Remove every queued request for a chunk we lost; return the peers that asked."""
        peers = [p for p in self._queues if self.cancel(p, chunk_hash)]
        return sorted(peers)

    def remove_peer(self, peer: str) -> None:
        self.not_sent(peer=peer)
        self._queues.pop(peer, None)
        self._regular.pop(peer, None)
        self._optimistic.pop(peer, None)
        self._served_bytes.pop(peer, None)
        self._last_turn.pop(peer, None)

    def serving(self, peer: str) -> bool:
        """Whether a request of ``peer`` is queued here or a piece for it unreported."""
        return bool(self._queues.get(peer)) or self._peer_unreported.get(peer, 0) > 0

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued_by(self, peer: str) -> int:
        """``peer``'s requests waiting here or handed out and not reported sent."""
        return len(self._queues.get(peer, ())) + self._peer_unreported.get(peer, 0)

    def slot_holders(self) -> frozenset[str]:
        return frozenset(self._regular) | frozenset(self._optimistic)

    # ------------------------------------------------------------------ slots

    def _best_priority(self, peer: str) -> int:
        return max((q.priority for q in self._queues.get(peer, ())), default=-1)

    def _waiting(self) -> list[str]:
        return sorted(p for p, q in self._queues.items()
                      if q and p not in self._regular and p not in self._optimistic)

    def _rank(self, peer: str) -> tuple[int, int]:
        return (-self._best_priority(peer), self._last_turn.get(peer, -1))

    def _fill(self, now: float) -> None:
        for slots in (self._regular, self._optimistic):
            for peer in [p for p in slots if not self._queues.get(p)]:
                del slots[peer]
        waiting = self._waiting()
        while waiting and len(self._regular) < self._n_regular:
            best = min(waiting, key=self._rank)
            waiting.remove(best)
            self._regular[best] = now
        while waiting and len(self._optimistic) < self._n_optimistic:
            fewest = min(self._served_bytes.get(p, 0) for p in waiting)
            pick = self._rng.choice([p for p in waiting if self._served_bytes.get(p, 0) == fewest])
            waiting.remove(pick)
            self._optimistic[pick] = now
        # Pre-emption: a waiting higher priority takes the lowest regular slot.
        while waiting and self._regular:
            best = min(waiting, key=self._rank)
            lowest = min(self._regular, key=lambda p: (self._best_priority(p), p))
            if self._best_priority(best) <= self._best_priority(lowest):
                break
            del self._regular[lowest]
            waiting.remove(best)
            waiting.append(lowest)
            self._regular[best] = now
            self.preemptions += 1
        if waiting and self._next_rechoke is None:
            self._next_rechoke = now + self._config.rechoke_interval
        elif not waiting:
            self._next_rechoke = None

    def _rechoke(self, now: float) -> None:
        self._fill(now)   # releases the slots of peers whose queues emptied
        waiting = self._waiting()
        if not waiting:
            return
        self.rechokes += 1
        top = max(self._best_priority(p) for p in waiting)
        eligible = [p for p in self._regular if self._best_priority(p) <= top]
        if eligible:
            oldest = min(eligible, key=lambda p: (self._regular[p], p))
            del self._regular[oldest]
        self._optimistic.clear()
        self._next_rechoke = None
        # The peers just choked rank behind the ones that were waiting (round-robin).
        self._fill(now)
        # A peer left waiting a whole interval is told "busy" so it asks elsewhere
        # instead of letting its requests time out here.
        limit = now - self._config.rechoke_interval
        for peer in self._waiting():
            queue = self._queues[peer]
            for q in [q for q in queue if q.since <= limit]:
                queue.remove(q)
                self._rejected.append((peer, q.chunk_hash))

    def take_rejected(self) -> list[tuple[str, bytes]]:
        """Requests dropped by a rechoke: answer each with a "busy" reject."""
        out, self._rejected = self._rejected, []
        return out

    # ------------------------------------------------------------------ serving

    def pump(self, now: float) -> list[Serve]:
        """Requests to serve now, in order, within the upload cap."""
        out: list[Serve] = []
        while True:
            self._fill(now)
            active = self._servable(self._waiting_holders())
            if not active or not self.bucket.ready(now):
                return out
            if self._window_full():
                self._mark_stalled(now)
                if self._window_full():
                    return out
            if self.progress_of is not None:
                # laggards first, but a request waiting longer than ``laggard_patience``
                # goes before any laggard's (no requester starves behind laggards)
                pr, queues = self.progress_of, self._queues
                patient = now - self._config.laggard_patience
                peer = min(active, key=lambda p: (
                    -self._best_priority(p), min(q.since for q in queues[p]) > patient,
                    pr(p), self._last_turn.get(p, -1)))
            else:
                peer = min(active, key=self._rank)
            queue = self._queues[peer]
            copies = self._copies
            item = max(queue, key=lambda q: (q.priority, -copies.get(q.chunk_hash, 0), -q.seq))
            queue.remove(item)
            self._turn += 1
            self._last_turn[peer] = self._turn
            self._served_bytes[peer] = self._served_bytes.get(peer, 0) + item.size
            self.bucket.spend(item.size, now)
            copies[item.chunk_hash] = copies.get(item.chunk_hash, 0) + 1
            self._last_upload[item.chunk_hash] = now
            if self._config.upload_window > 0:
                self._in_flight.setdefault((peer, item.chunk_hash), []).append(
                    _Unreported(now, item.size, self._reported))
                if self._reported:
                    self._n_in_flight += 1
                    self._peer_unreported[peer] = self._peer_unreported.get(peer, 0) + 1
            out.append(Serve(peer, item.chunk_hash, item.priority, item.size))

    def sent(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """The driver finished sending that piece: another may go. The first report
        turns the window on."""
        self._reported = self._config.upload_window > 0
        pieces = self._in_flight.get((peer, chunk_hash))
        if not pieces:
            return
        piece = pieces[0]
        self._forget([piece], peer)
        del pieces[0]
        if not pieces:
            del self._in_flight[(peer, chunk_hash)]
        if piece.size > 0 and not piece.stalled:   # a stalled one timed its connection
            sample = max(0.0, now - piece.since) / piece.size
            spb = self._send_spb
            self._send_spb = sample if spb is None else spb + _SEND_EWMA * (sample - spb)

    def _forget(self, pieces: list[_Unreported], peer: str) -> None:
        self._n_in_flight -= sum(1 for p in pieces if p.counted and not p.stalled)
        left = self._peer_unreported.get(peer, 0) - sum(1 for p in pieces if p.counted)
        if left > 0:
            self._peer_unreported[peer] = left
        else:
            self._peer_unreported.pop(peer, None)

    def not_sent(self, chunk_hash: bytes | None = None, peer: str | None = None) -> None:
        """Pieces the driver will never report (the chunk could not be read, the peer
        left): free their places in the window."""
        for pair in [k for k in self._in_flight
                     if (chunk_hash is None or k[1] == chunk_hash)
                     and (peer is None or k[0] == peer)]:
            self._forget(self._in_flight.pop(pair), pair[0])

    def expire_in_flight(self, now: float) -> None:
        """Forget pieces unreported for ``request_timeout`` (liveness: a lost report must
        not close the window for good). The test is the one ``next_deadline`` uses, so
        a timer set for that moment always finds the piece expired."""
        timeout = self._config.request_timeout
        for pair in list(self._in_flight):
            pieces = self._in_flight[pair]
            keep = [p for p in pieces if p.since + timeout > now]
            if len(keep) == len(pieces):
                continue
            self._forget([p for p in pieces if p.since + timeout <= now], pair[0])
            if keep:
                self._in_flight[pair] = keep
            else:
                del self._in_flight[pair]

    def _stall_at(self, piece: _Unreported) -> float | None:
        """When ``piece`` counts as stalled (None: no estimate of the pace yet)."""
        if self._send_spb is None:
            return None
        return piece.since + max(_STALL_FLOOR, _STALL_FACTOR * piece.size * self._send_spb)

    def _mark_stalled(self, now: float) -> None:
        """Take pieces that wait on their own connection out of the window."""
        for pieces in self._in_flight.values():
            for piece in pieces:
                at = self._stall_at(piece)
                if piece.counted and not piece.stalled and at is not None and at <= now:
                    piece.stalled = True
                    self._n_in_flight -= 1
                    self.stalled_pieces += 1

    # (only pieces handed out after the first report are counted, so before it neither
    # the window nor a peer's share of it is ever full)
    def _peer_full(self, peer: str) -> bool:
        return self._peer_unreported.get(peer, 0) >= max(1, self._config.upload_window)

    def _window_full(self) -> bool:
        return self._n_in_flight >= max(1, self._config.upload_window)

    def _waiting_holders(self) -> list[str]:
        """Slot holders with requests queued."""
        return [p for p in (*self._regular, *self._optimistic) if self._queues.get(p)]

    def _servable(self, peers: list[str]) -> list[str]:
        """Those of ``peers`` not at their own limit of unreported pieces."""
        return [p for p in peers if not self._peer_full(p)] if self._peer_unreported else peers

    @property
    def in_flight(self) -> int:
        return self._n_in_flight

    def copies(self, chunk_hash: bytes) -> int:
        """How many times this node has uploaded ``chunk_hash``."""
        return self._copies.get(chunk_hash, 0)

    def uploaded_since(self, chunk_hash: bytes, since: float) -> bool:
        """Whether ``chunk_hash`` was uploaded at or after ``since``."""
        last = self._last_upload.get(chunk_hash)
        return last is not None and last >= since

    def on_timer(self, now: float) -> None:
        if self._in_flight:
            self.expire_in_flight(now)
            self._mark_stalled(now)
        if self._next_rechoke is not None and now >= self._next_rechoke:
            self._rechoke(now)

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._next_rechoke is not None:
            deadlines.append(self._next_rechoke)
        if self._in_flight and not self._reported:   # pieces of a driver not reporting
            deadlines.append(min(ps[0].since for ps in self._in_flight.values())
                             + self._config.request_timeout)
        waiting = self._waiting_holders()
        if not waiting:
            return min(deadlines) if deadlines else None
        timeout = self._config.request_timeout
        servable = self._servable(waiting)
        if servable and not self._window_full():
            deadlines.append(self.bucket.ready_at())
        else:
            # the next piece goes when the driver reports one sent, when one stalls or
            # when one expires (a lost report); when every waiting peer is at its own
            # limit, only a report or the expiry of those peers' pieces frees them
            for (peer, _), pieces in self._in_flight.items():
                if not servable and peer not in waiting:
                    continue
                for piece in pieces:
                    deadlines.append(piece.since + timeout)
                    at = (self._stall_at(piece)
                          if servable and piece.counted and not piece.stalled else None)
                    if at is not None:
                        deadlines.append(at)
        return min(deadlines) if deadlines else None
