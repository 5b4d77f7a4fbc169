"""The request table: every chunk request in flight, and the back-offs that follow one.

Theory of operation
-------------------
A request is outstanding from the moment the picker sends it until its piece arrives,
the peer rejects or redirects it, it is cancelled, it times out, or the peer leaves.
The table indexes each one three ways: by peer (the peer's pipeline), by chunk (the
peers asked for it: one outside endgame, up to ``endgame_fanout`` in it) and by age (in
the order sent, which is ``sent_at`` order since ``now`` never goes back, so the first
entry is the next to time out).

What happens after a request also lives here, because each entry decides when a chunk
may be asked of a peer again:

* ``stale``: a request given up (timed out, cancelled) is remembered for
  ``2 x request_timeout``, so that its piece, if it still arrives, is accepted and not
  counted as unsolicited;
* ``avoid``: a peer is not asked for a chunk it left unanswered for ``2 x
  request_timeout``, nor for one it redirected for ``redirect_backoff``;
* ``busy_until``: a peer that answered "busy" holding no other request of ours (it
  choked us) is asked nothing for ``interest_retry`` (one that still holds some caps
  its pipeline instead, :mod:`._swarm_links`);
* ``pending_store``: a piece accepted and handed to the store is not asked for again;
  if the store refuses it, the chunk waits ``request_timeout`` (``retry_after``).

When a chunk's last request goes, the table tells the picker (``on_idle``), which puts
the chunk back in its queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._config import SwarmConfig
from ._swarm_messages import Cancel
from ._swarm_stats import Counters

if TYPE_CHECKING:
    from ._wire import SwarmMessage

__all__ = ["Outstanding", "RequestTable"]


@dataclass(slots=True)
class Outstanding:
    peer: str
    key: str
    size: int
    sent_at: float
    seq: int = 0          # the order requests were sent in (several share one ``now``)
    overtaken: int = 0    # pieces asked of the same peer later that arrived before it


class RequestTable:
    """Outstanding requests and back-offs (see the module docstring). ``send`` is the
    engine's way out for a ``Cancel``; ``on_idle(chunk)`` is called when a chunk's
    last outstanding request goes."""

    def __init__(self, *, config: SwarmConfig, counters: Counters,
                 send: Callable[[str, SwarmMessage], None]) -> None:
        self._config = config
        self._c = counters
        self._send = send
        self.on_idle: Callable[[bytes], None] = lambda chunk_hash: None
        self.by_peer: dict[str, dict[bytes, Outstanding]] = {}
        self.by_chunk: dict[bytes, dict[str, Outstanding]] = {}
        self.by_age: dict[tuple[str, bytes], Outstanding] = {}
        self.n_out = 0
        self._seq = 0
        self.pending_store: dict[bytes, str] = {}   # accepted, not stored yet -> its key
        self.stale: dict[str, dict[bytes, float]] = {}   # peer -> hash -> given up at
        self.avoid: dict[str, dict[bytes, float]] = {}   # peer -> hash -> do not ask before
        self.retry_after: dict[bytes, float] = {}   # the store refused it: not before
        self.busy_until: dict[str, float] = {}      # the peer answered "busy"

    def shift_time(self, shift: float) -> None:
        """The clock stepped by ``shift``: move every time kept here with it."""
        for rec in self.by_age.values():
            rec.sent_at += shift
        maps: list[dict[Any, float]] = [self.retry_after, self.busy_until,
                                        *self.stale.values(), *self.avoid.values()]
        for times in maps:
            for key in times:
                times[key] += shift

    # ================================================================== peers

    def add_peer(self, peer: str) -> None:
        self.by_peer[peer] = {}

    def forget_peer(self, peer: str) -> None:
        for h in list(self.by_peer.get(peer, {})):
            self.remove(peer, h, stale_at=None)
        self.by_peer.pop(peer, None)
        self.stale.pop(peer, None)
        self.avoid.pop(peer, None)
        self.busy_until.pop(peer, None)

    # ================================================================== requests

    def add(self, peer: str, key: str, chunk_hash: bytes, size: int, now: float) -> None:
        self._seq += 1
        rec = Outstanding(peer, key, size, now, self._seq)
        self.by_peer[peer][chunk_hash] = rec
        self.by_chunk.setdefault(chunk_hash, {})[peer] = rec
        self.by_age[(peer, chunk_hash)] = rec
        self.n_out += 1

    def remove(self, peer: str, chunk_hash: bytes, *, stale_at: float | None) -> None:
        """Forget a request; with ``stale_at``, a piece that still arrives is accepted."""
        rec = self.by_peer.get(peer, {}).pop(chunk_hash, None)
        if rec is None:
            return
        self.n_out -= 1
        del self.by_age[(peer, chunk_hash)]
        by_peer = self.by_chunk.get(chunk_hash)
        if by_peer is not None:
            by_peer.pop(peer, None)
            if not by_peer:
                del self.by_chunk[chunk_hash]
                self.on_idle(chunk_hash)
        if stale_at is not None:
            stale = self.stale.setdefault(peer, {})
            stale.pop(chunk_hash, None)   # re-insert: each table stays in time order
            stale[chunk_hash] = stale_at

    def cancel(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """Withdraw one request (the peer is told; a piece still arriving is accepted)."""
        self.remove(peer, chunk_hash, stale_at=now)
        self._send(peer, Cancel(chunk_hash))
        self._c.cancels_sent += 1

    def cancel_all(self, chunk_hash: bytes, now: float) -> None:
        for peer in sorted(self.by_chunk.get(chunk_hash, {})):
            self.cancel(peer, chunk_hash, now)

    def answered(self, peer: str, chunk_hash: bytes) -> tuple[Outstanding | None, float | None]:
        """A piece of ``chunk_hash`` came from ``peer``: its outstanding request, and
        when a request for it was given up (either may be None)."""
        return (self.by_peer[peer].get(chunk_hash),
                self.stale.get(peer, {}).pop(chunk_hash, None))

    def overtaken(self, peer: str, seq: int, now: float) -> list[bytes]:
        """The piece of request ``seq`` arrived from ``peer``: every request to it sent
        earlier is overtaken once more; those overtaken ``lost_after_overtaken`` times
        are given up as lost (a piece that still arrives is accepted) and returned, so
        the chunk is asked again at once rather than after ``request_timeout``."""
        limit = self._config.lost_after_overtaken
        if limit <= 0:
            return []
        lost: list[bytes] = []
        for h, rec in self.by_peer[peer].items():
            if rec.seq < seq:
                rec.overtaken += 1
                if rec.overtaken >= limit:
                    lost.append(h)
        for h in lost:
            self.remove(peer, h, stale_at=now)
            self._c.requests_lost += 1
        return lost

    def avoid_until(self, peer: str, chunk_hash: bytes, until: float) -> None:
        table = self.avoid.setdefault(peer, {})
        table[chunk_hash] = max(until, table.get(chunk_hash, until))

    def redirected(self, peer: str, chunk_hash: bytes, now: float) -> bool:
        """``peer`` redirected our request for ``chunk_hash``: drop it, and do not ask
        that peer for it again for ``redirect_backoff``. False if we had not asked."""
        if chunk_hash not in self.by_peer[peer]:
            return False
        self._c.redirects_received += 1
        self.remove(peer, chunk_hash, stale_at=None)
        self.avoid_until(peer, chunk_hash, now + self._config.redirect_backoff)
        return True

    def stored(self, chunk_hash: bytes, now: float) -> None:
        """The store holds ``chunk_hash`` now: its requests (endgame copies) go."""
        self.pending_store.pop(chunk_hash, None)
        self.retry_after.pop(chunk_hash, None)
        if chunk_hash in self.by_chunk:
            self.cancel_all(chunk_hash, now)

    # ================================================================== time

    def overdue(self, now: float) -> list[tuple[bytes, str]]:
        """``(chunk, peer)`` of the requests older than ``request_timeout``, oldest first."""
        timeout = self._config.request_timeout
        expired = []
        for (peer, h), rec in self.by_age.items():   # sent_at order: the overdue come first
            if rec.sent_at + timeout > now:
                break
            expired.append((rec.sent_at, h, peer))
        return [(h, peer) for _, h, peer in sorted(expired)]

    def time_out(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """Give up a request (the engine counts it as the peer's failure)."""
        timeout = self._config.request_timeout
        self.remove(peer, chunk_hash, stale_at=now)
        self.avoid_until(peer, chunk_hash, now + 2 * timeout)
        self._c.requests_timed_out += 1

    def expire(self, now: float) -> None:
        """Forget the back-offs that have run out."""
        timeout = self._config.request_timeout
        for stale in self.stale.values():
            for h in [h for h, t in stale.items() if t + 2 * timeout <= now]:
                del stale[h]
        for avoid in self.avoid.values():
            for h in [h for h, t in avoid.items() if t <= now]:
                del avoid[h]
        for h in [h for h, t in self.retry_after.items() if t <= now]:
            del self.retry_after[h]
        for peer in [p for p, t in self.busy_until.items() if t <= now]:
            del self.busy_until[peer]

    def deadlines(self) -> list[float]:
        """When a request times out or a back-off ends."""
        deadlines: list[float] = []
        timeout = self._config.request_timeout
        if self.by_age:
            deadlines.append(next(iter(self.by_age.values())).sent_at + timeout)
        for stale in self.stale.values():
            if stale:   # kept in time order: the first entry is the oldest
                deadlines.append(next(iter(stale.values())) + 2 * timeout)
        for avoid in self.avoid.values():
            if avoid:
                deadlines.append(min(avoid.values()))
        deadlines.extend(self.retry_after.values())
        deadlines.extend(self.busy_until.values())
        return deadlines

    # ================================================================== snapshots

    def outstanding(self) -> dict[bytes, frozenset[str]]:
        """Chunk hash -> peers asked for it (for invariant checks)."""
        return {h: frozenset(by_peer) for h, by_peer in self.by_chunk.items()}

    def request_times(self) -> dict[tuple[str, bytes], float]:
        """(peer, chunk hash) -> when that outstanding request was sent."""
        return {(peer, h): rec.sent_at for peer, out in self.by_peer.items()
                for h, rec in out.items()}
