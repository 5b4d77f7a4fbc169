"""A deterministic discrete-event loop over virtual time.

Theory of operation
-------------------
Events are ``(time, seq, callback, args)`` tuples in a binary heap. ``seq`` is a
counter that breaks ties between events scheduled for the same instant in the
order they were scheduled, so a run is a pure function of its inputs: no
wall clock, no hash-order dependence, no threads. Every random choice the
simulator makes comes from ``random.Random`` instances derived from one seed
with :func:`derive_rng` (``random.Random(f"{seed}/{label}")``), so adding a
consumer of randomness in one place does not shift the draws seen elsewhere.

The loop also keeps an optional *trace*: a running BLAKE3 hash over the events
the simulator chooses to log (:meth:`EventLoop.log`). Two runs with the same
seed must produce the same trace digest; the tests check exactly that.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3

__all__ = ["EventLoop", "LoopStatistics", "derive_rng"]


def derive_rng(seed: int | str, label: str) -> random.Random:
    """An independent, replayable stream for one consumer (a node, the network...)."""
    return random.Random(f"{seed}/{label}")


@dataclass(frozen=True, slots=True)
class LoopStatistics:
    now: float
    events_run: int
    pending: int
    logged: int


class EventLoop:
    """A heap of timed callbacks. ``now`` only moves forward."""

    __slots__ = ("now", "_heap", "_seq", "_events_run", "_trace", "_logged", "_stopped")

    def __init__(self, *, trace: bool = True) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._events_run = 0
        self._trace = blake3.blake3() if trace else None
        self._logged = 0
        self._stopped = False

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` at virtual time ``when`` (never earlier than now)."""
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, callback, args))

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.call_at(self.now + max(0.0, delay), callback, *args)

    def log(self, *fields: object) -> None:
        """Fold one event description into the trace digest."""
        if self._trace is not None:
            self._trace.update(repr((round(self.now, 9), *fields)).encode())
            self._logged += 1

    def trace_digest(self) -> str:
        return self._trace.hexdigest() if self._trace is not None else ""

    def stop(self) -> None:
        """Make the current :meth:`run` return after the event being run."""
        self._stopped = True

    def run(self, until: float | None = None, *, max_events: int | None = None,
            stop_when: Callable[[], bool] | None = None) -> None:
        """Run events in time order until the heap is empty, ``until`` is reached,
        ``max_events`` ran, ``stop()`` was called or ``stop_when()`` is true (checked
        after each event)."""
        heap = self._heap
        pop = heapq.heappop
        ran = 0
        self._stopped = False
        if max_events is None and stop_when is None:
            # the common case, without the per-event checks it does not need
            horizon = math.inf if until is None else until
            try:
                while heap:
                    when = heap[0][0]
                    if when > horizon:
                        self.now = max(self.now, horizon)
                        return
                    _, _, callback, args = pop(heap)
                    self.now = when
                    callback(*args)
                    ran += 1
                    if self._stopped:
                        return
            finally:
                self._events_run += ran
            if until is not None:
                self.now = max(self.now, until)
            return
        while heap:
            when = heap[0][0]
            if until is not None and when > until:
                self.now = max(self.now, until)
                return
            _, _, callback, args = pop(heap)
            self.now = when
            callback(*args)
            ran += 1
            self._events_run += 1
            if self._stopped or (max_events is not None and ran >= max_events):
                return
            if stop_when is not None and stop_when():
                return
        if until is not None:
            self.now = max(self.now, until)

    def statistics(self) -> LoopStatistics:
        return LoopStatistics(self.now, self._events_run, len(self._heap), self._logged)
