"""The daemon's heap: large transfer buffers are reused rather than mapped afresh.

A run of pieces travels in buffers of a few MiB (the record being received, its
plaintext, the buffer a run is read into, the sealed record). glibc's malloc serves
blocks that large with a fresh ``mmap`` each time (above its mmap threshold) or trims
them from the heap when freed, so every buffer's pages were faulted in and zeroed by
the kernel again: measured ~10 % of the two daemons' CPU per GiB moved (docs/JOURNAL.md,
2026-12-06). :func:`keep_large_buffers` raises the mmap threshold above the largest
frame and the trim threshold above that, so freed buffers stay in the heap and are
reused. Only glibc has ``mallopt``; elsewhere this does nothing.

:class:`HeapTrimmer` (off unless ``$SHOAL_MALLOC_TRIM`` names an interval in seconds)
calls glibc's ``malloc_trim(0)`` at that interval while a transfer runs: the free
pages inside the heap, not only at its top, go back to the system, so the receiver's
peak RSS follows what it holds rather than what it once held (issue 16's RSS aim;
docs/JOURNAL.md, 2026-12-07). The pooled record buffers are in use, not free, so they
stay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import time
from collections.abc import Callable

from agent._errors import ConfigError

__all__ = ["keep_large_buffers", "HeapTrimmer", "TRIM_ENV"]

TRIM_ENV = "SHOAL_MALLOC_TRIM"      # seconds between malloc_trim(0) calls in a transfer

log = logging.getLogger("shoal.daemon")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024   # above DEFAULT_MAX_FRAME (8 MiB): records stay in the heap
TRIM_THRESHOLD = 64 * 1024 * 1024   # free heap kept before it is given back to the system


def keep_large_buffers() -> bool:
    """Tune glibc's malloc for the transfer buffers (module doc); False where it cannot."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the heap settings; large buffers are mapped afresh")
    return ok


def _libc_function(name: str) -> Callable[..., int] | None:
    lib = ctypes.util.find_library("c")
    if lib is None:
        return None
    try:
        fn: Callable[..., int] = getattr(ctypes.CDLL(lib), name)
    except (OSError, AttributeError):
        return None
    return fn


class HeapTrimmer:
    """``malloc_trim(0)`` every ``interval`` seconds while a transfer runs (module doc);
    0 is off. Counts its calls and the CPU seconds they took (``thread_time``)."""

    def __init__(self, interval: float = 0.0) -> None:
        if not math.isfinite(interval) or interval < 0:
            raise ConfigError(f"${TRIM_ENV} must be a number of seconds >= 0 (0: off), "
                              f"not {interval!r}")
        self.interval = interval
        self._trim = _libc_function("malloc_trim") if interval > 0 else None
        self.calls = 0
        self.cpu_s = 0.0
        self.released = 0      # calls that gave memory back

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> HeapTrimmer:
        text = environ.get(TRIM_ENV, "").strip()
        if not text:
            return cls()
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"${TRIM_ENV} must be a number of seconds >= 0 (0: off), "
                              f"not {text!r}") from None
        return cls(value)

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def trim(self) -> bool:
        """One ``malloc_trim(0)``; True if it gave memory back (False where off)."""
        if self._trim is None:
            return False
        t = time.thread_time()
        released = bool(self._trim(0))
        self.cpu_s += time.thread_time() - t
        self.calls += 1
        self.released += released
        return released
