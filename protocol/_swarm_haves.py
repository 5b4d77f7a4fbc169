"""Have announcements, coalesced per peer (sans-IO).

A node that stores a chunk tells every peer interested in one of its keys. One
message per chunk per peer made ``Have`` the bulk of a rollout's messages (a node
with 8 interested peers that stores 128 chunks receives and sends ~1,000 of them),
and each costs both ends a record, a decode and a scheduling pass.

So the engine tells each peer at most once per ``interval`` seconds: what it
stored since it last told that peer goes out then, one message per key -- a lone
index as a :class:`Have`, several as one :class:`Haves` (sorted, at most
``MAX_HAVES`` each). The first announcement after a quiet spell goes out at once
(the interval counts from the previous one), so a peer learns of an isolated chunk
as early as before, and only a burst is delayed, by at most ``interval``. Chunks
stored in one input (a batch the driver reports together) always share a message.
``interval`` 0 sends every index at once, as before.

A *busy* peer is told at most once per ``busy_interval`` instead: one this node is
serving (a request of its queued or in flight here), or one that has work it could
ask of this node already -- at least ``BUSY_BACKLOG`` of the indices last announced
to it (``RECENT`` per key are remembered) are not yet known to be held by it (the
engine's ``busy`` callback decides, with :meth:`HaveBatcher.backlog`). News of
further chunks can wait without leaving it idle, and shares a message with what is
stored meanwhile: on capped links a node stores a chunk every few tenths of a
second, one ``Have`` per peer per store at ``interval`` alone (bench_overlay,
docs/JOURNAL.md, 2026-12-06). Nothing is lost, only delayed by at most
``busy_interval``: every stored index still reaches every interested peer.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from ._swarm_messages import MAX_HAVES, Have, Haves

__all__ = ["HaveBatcher", "BUSY_BACKLOG", "RECENT"]

BUSY_BACKLOG = 4     # announced indices a peer is not known to hold that make it busy
RECENT = 16          # indices last announced to a peer, remembered per key


class HaveBatcher:
    """Pending announcements per peer and key; :meth:`release` sends the due ones."""

    def __init__(self, interval: float, send: Callable[[str, Have | Haves], None],
                 busy: Callable[[str], bool] | None = None,
                 busy_interval: float = 0.0) -> None:
        self._interval = interval
        self._send = send
        self._busy = busy
        self._busy_interval = max(interval, busy_interval)
        self._pending: dict[str, dict[str, set[int]]] = {}   # peer -> key -> indices
        self._last: dict[str, float] = {}    # peer -> when its last announcement went out
        self._due = math.inf                 # the soonest a pending peer may be told
        self._recent: dict[str, dict[str, deque[int]]] = {}   # peer -> key -> last told
        self.batches = 0                     # Haves messages sent (several indices)

    def add(self, peer: str, key: str, index: int) -> None:
        """Announce chunk ``index`` of ``key`` to ``peer`` (at the next :meth:`release`)."""
        self._pending.setdefault(peer, {}).setdefault(key, set()).add(index)

    def drop(self, peer: str, key: str | None = None) -> None:
        """Forget what is pending for ``peer`` (for ``key`` only, when given): it left,
        or lost interest."""
        if key is None:
            self._pending.pop(peer, None)
            self._last.pop(peer, None)
            self._recent.pop(peer, None)
            return
        self._recent.get(peer, {}).pop(key, None)
        keys = self._pending.get(peer)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._pending[peer]

    def next_deadline(self) -> float:
        return self._due

    def backlog(self, peer: str,
                flags_of: Callable[[str], Sequence[int] | None] | None) -> int:
        """How many of the indices last announced to ``peer`` (at most ``RECENT`` per
        key) it is not known to hold -- ``flags_of(key)``: a flag per index of what it
        holds, None when unknown -- counted up to ``BUSY_BACKLOG``."""
        n = 0
        for key, told in self._recent.get(peer, {}).items():
            flags = None if flags_of is None else flags_of(key)
            for i in told:
                if flags is None or i >= len(flags) or not flags[i]:
                    n += 1
                    if n >= BUSY_BACKLOG:
                        return n
        return n

    def shift_time(self, shift: float) -> None:
        for peer in self._last:
            self._last[peer] += shift
        self._due += shift

    def release(self, now: float) -> None:
        """Send what is pending to every peer whose interval has passed; arm the
        deadline for the others."""
        due = math.inf
        busy, slow = self._busy, self._busy_interval
        for peer in sorted(self._pending):
            at = self._last.get(peer, -math.inf) + (
                slow if busy is not None and busy(peer) else self._interval)
            if at > now:
                due = min(due, at)
                continue
            self._last[peer] = now
            recent = self._recent.setdefault(peer, {})
            for key, indices in self._pending.pop(peer).items():
                ordered = sorted(indices)
                recent.setdefault(key, deque(maxlen=RECENT)).extend(ordered)
                for i in range(0, len(ordered), MAX_HAVES):
                    part = ordered[i:i + MAX_HAVES]
                    if len(part) == 1:
                        self._send(peer, Have(key, part[0]))
                    else:
                        self.batches += 1
                        self._send(peer, Haves(key, tuple(part)))
        self._due = due
