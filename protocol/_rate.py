"""Token buckets per key (an origin, a peer): how fast a sender may cost us work.

Pure: the caller passes ``now``. A bucket holds at most ``burst`` tokens and refills
at ``rate`` a second; :meth:`TokenBuckets.take` takes ``amount`` when the bucket
holds that many and says whether it did. Buckets that have refilled to the brim are
forgotten once more than ``MAX_TRACKED`` keys are held, so memory stays bounded by the
senders that are actually spending.
"""

from __future__ import annotations

__all__ = ["MAX_TRACKED", "TokenBuckets"]

MAX_TRACKED = 4096


class TokenBuckets:
    __slots__ = ("rate", "burst", "_held")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._held: dict[str, tuple[float, float]] = {}   # key -> tokens, when

    def take(self, key: str, amount: float, now: float) -> bool:
        """Take ``amount`` from ``key``'s bucket; False (nothing taken) when it holds
        fewer."""
        held = self._held
        if len(held) > MAX_TRACKED:
            for k in [k for k, (have, at) in held.items()
                      if have + (now - at) * self.rate >= self.burst]:
                del held[k]
        have, at = held.get(key, (self.burst, now))
        have = min(self.burst, have + max(0.0, now - at) * self.rate)
        ok = have >= amount
        held[key] = (have - amount if ok else have, now)
        return ok
