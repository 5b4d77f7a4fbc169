"""Large record buffers, reused rather than allocated per record (issue 16).

A run of pieces arrives as one record of a few MiB. Allocating its body and its
plaintext afresh for every record, and freeing them among the small long-lived
blocks a daemon keeps making, left the C heap higher the more bytes a transfer
moved (docs/PERFORMANCE.md, "receiving daemon RSS"). A :class:`BufferPool` hands
out ``bytearray`` s that are taken again once nothing refers to them: a record's
body is free as soon as it has been decrypted; its plaintext once every view of it
(the ``Pieces`` data, each chunk's view on its way to the disk) is gone.

"Nothing refers to it" is CPython's reference count: every ``memoryview`` of a
buffer, and every slice of one, holds a reference to it, so a buffer whose count is
the pool's own is seen by no one and may be overwritten. A buffer still referred to
is never handed out; a free one too short is replaced by a longer one (the pool's
buffers converge on the longest record seen); when every pooled buffer is in use and
the pool is full, a fresh one is allocated outside the pool, as before. The pool is
the agent's (CPython-specific, process state): ``protocol/`` only takes a callable,
``SecureConnection(buffers=pool.take)``.

Callers use the first ``size`` bytes of what :meth:`BufferPool.take` returns (the
buffer may be longer) and fill all of them before anything reads them, so bytes of
an earlier record are never seen through a later one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["BufferPool", "BufferPoolStatistics"]


@dataclass(frozen=True, slots=True)
class BufferPoolStatistics:
    taken: int        # buffers handed out
    reused: int       # ... that were pooled buffers taken again
    allocated: int    # pooled buffers allocated (or reallocated larger)
    overflow: int     # fresh buffers outside the pool: every pooled one was in use
    pooled: int       # buffers the pool holds now
    pooled_bytes: int


def _refs(bufs: list[bytearray], i: int) -> int:
    return sys.getrefcount(bufs[i])


# the count of a buffer that only the pool's list refers to, as _refs sees it
_IDLE = _refs([bytearray(1)], 0)


class BufferPool:
    """At most ``keep`` reusable buffers, their lengths rounded up to ``granule`` bytes.

    Not thread-safe for :meth:`take` (one event loop takes); the views it hands out
    may be dropped in any thread.
    """

    def __init__(self, keep: int = 16, granule: int = 256 * 1024) -> None:
        if keep < 1 or granule < 1:
            raise ValueError("keep and granule must be >= 1")
        self.keep = keep
        self.granule = granule
        self._bufs: list[bytearray] = []
        self._taken = self._reused = self._allocated = self._overflow = 0

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes that nothing else refers to. Its
        contents are whatever it held before: fill the first ``size`` bytes."""
        if size < 0:
            raise ValueError("size must be >= 0")
        self._taken += 1
        bufs = self._bufs
        fit = small = -1
        for i in range(len(bufs)):
            if _refs(bufs, i) > _IDLE:
                continue
            n = len(bufs[i])
            if n >= size:
                if fit < 0 or n < len(bufs[fit]):
                    fit = i
            elif small < 0 or n > len(bufs[small]):
                small = i
        if fit >= 0:
            self._reused += 1
            return bufs[fit]
        # as long as the longest held so far: records grow as a transfer ramps up, and
        # the pool's buffers converge on one length instead of piling up shorter ones
        cap = max(-(-size // self.granule) * self.granule, max(map(len, bufs), default=0))
        if small >= 0:            # free but too short: a longer one in its place
            bufs[small] = bytearray(cap)
        elif len(bufs) < self.keep:
            bufs.append(bytearray(cap))
            small = len(bufs) - 1
        else:
            self._overflow += 1
            return bytearray(size)
        self._allocated += 1
        return bufs[small]

    def exhausted(self) -> bool:
        """True when the pool is full and every buffer in it is in use: a new large
        record would be received into a fresh buffer (readers wait a little first)."""
        bufs = self._bufs
        return len(bufs) >= self.keep and all(_refs(bufs, i) > _IDLE
                                              for i in range(len(bufs)))

    def statistics(self) -> BufferPoolStatistics:
        return BufferPoolStatistics(self._taken, self._reused, self._allocated,
                                    self._overflow, len(self._bufs),
                                    sum(len(b) for b in self._bufs))
