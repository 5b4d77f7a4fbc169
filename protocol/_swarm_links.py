"""Link measurement: how deep to pipeline requests to a peer, how long its answers take.

Theory of operation
-------------------
Each requested piece that arrives tells the engine two things about the link from
that peer (the download direction):

* ``rtt``: the smallest request-to-piece time seen, one round trip plus one piece's
  service;
* ``service``: the time one piece takes on the link while the pipeline is full,
  measured only from a piece asked for before the previous one arrived (the gap
  between the two arrivals is then its serialisation, not a round trip the pipeline
  left idle), smoothed 3:1 towards the old value.

From those the picker gets

* the pipeline *depth*: the requests to keep outstanding so that the next one reaches
  the peer before it runs dry, ``ceil(rtt / service)`` (bandwidth x delay, in chunks)
  within ``[min_requests_per_peer, max_requests_per_peer]``. An unmeasured peer gets
  the floor (slow start); service is measured from two pieces asked back to back, so
  a floor of 1 would never grow (hence the default of 2);
* the *expected answer* time of a request, ``rtt + service x outstanding``: endgame
  duplicates a request only once it is ``endgame_age`` times older than that (an
  unmeasured peer is expected to answer in 0.5 s).

The depth is also *capped* by what the peer will queue. A peer whose upload queue for
us is full (``max_queued_per_peer`` on its side, which we do not know) answers the
request that overflowed it "busy" while it still holds the others; the engine then
caps the depth at the requests still outstanding there, for ``interest_retry``
seconds, so the pipeline refills as the peer serves instead of overflowing again. (A
peer that answers "busy" holding none of ours has choked us: the engine asks it
nothing for a while, :mod:`._swarm_requests`.)

Estimates belong to one connection and are forgotten when the peer leaves.
"""

from __future__ import annotations

import math

from ._config import SwarmConfig

__all__ = ["LinkEstimates"]

_UNMEASURED_ANSWER = 0.5   # seconds a request to a peer not measured yet should take


class LinkEstimates:
    """Per-peer download-link estimates (see the module docstring)."""

    __slots__ = ("_config", "_rtt_min", "_service", "_last_arrival", "_depth_of", "_cap")

    def __init__(self, config: SwarmConfig) -> None:
        self._config = config
        self._rtt_min: dict[str, float] = {}
        self._service: dict[str, float] = {}
        self._last_arrival: dict[str, float] = {}
        self._depth_of: dict[str, int] = {}   # cache of _compute_depth
        self._cap: dict[str, tuple[int, float]] = {}   # peer -> (most requests, until)

    def cap(self, peer: str, requests: int, until: float) -> None:
        """Keep at most ``requests`` (≥ 1) outstanding to ``peer`` until ``until``: it
        answered "busy" while holding that many of ours."""
        self._cap[peer] = (max(1, requests), until)
        self._depth_of.pop(peer, None)

    def capped(self, peer: str) -> int | None:
        """The cap on ``peer``'s depth, if one holds."""
        cap = self._cap.get(peer)
        return None if cap is None else cap[0]

    def expire(self, now: float) -> None:
        """Lift the caps that have run out."""
        for peer in [p for p, (_, until) in self._cap.items() if until <= now]:
            del self._cap[peer]
            self._depth_of.pop(peer, None)

    def deadlines(self) -> list[float]:
        """When a cap runs out."""
        return [until for _, until in self._cap.values()]

    def depth(self, peer: str) -> int:
        """Requests to keep outstanding to ``peer``."""
        depth = self._depth_of.get(peer)
        if depth is None:
            depth = self._depth_of[peer] = self._compute_depth(peer)
        return depth

    def _compute_depth(self, peer: str) -> int:
        cfg = self._config
        lo = max(1, min(cfg.min_requests_per_peer, cfg.max_requests_per_peer))
        service = self._service.get(peer)
        rtt = self._rtt_min.get(peer)
        depth = lo if not service or rtt is None else max(
            lo, min(cfg.max_requests_per_peer, math.ceil(rtt / service)))
        cap = self._cap.get(peer)
        return depth if cap is None else min(depth, cap[0])

    def expected_answer(self, peer: str, outstanding: int) -> float:
        """Seconds a request to ``peer`` should take with ``outstanding`` requests in
        its pipeline."""
        service = self._service.get(peer)
        rtt = self._rtt_min.get(peer)
        if not service or rtt is None:
            return _UNMEASURED_ANSWER
        return rtt + service * max(1, outstanding)

    def measure(self, peer: str, sent_at: float, now: float) -> None:
        """A piece asked for at ``sent_at`` arrived from ``peer`` at ``now``."""
        took = now - sent_at
        if took >= 0 and took < self._rtt_min.get(peer, math.inf):
            self._rtt_min[peer] = took
        self._depth_of.pop(peer, None)
        last = self._last_arrival.get(peer)
        self._last_arrival[peer] = now
        gap = now - last if last is not None and sent_at < last else 0.0
        if gap > 0:
            old = self._service.get(peer)
            self._service[peer] = gap if old is None else 0.75 * old + 0.25 * gap

    def forget(self, peer: str) -> None:
        self._cap.pop(peer, None)
        self._rtt_min.pop(peer, None)
        self._depth_of.pop(peer, None)
        self._service.pop(peer, None)
        self._last_arrival.pop(peer, None)

    def shift_time(self, delta: float) -> None:
        """The clock stepped by ``delta``: move the arrival stamps with it."""
        last = self._last_arrival
        for peer in last:
            last[peer] += delta
        for peer, (requests, until) in self._cap.items():
            self._cap[peer] = (requests, until + delta)
