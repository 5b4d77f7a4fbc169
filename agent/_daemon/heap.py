"""The daemon's heap: large transfer buffers are reused rather than mapped afresh.

A run of pieces travels in buffers of a few MiB (the record being received, its
plaintext, the buffer a run is read into, the sealed record). glibc's malloc serves
blocks that large with a fresh ``mmap`` each time (above its mmap threshold) or trims
them from the heap when freed, so every buffer's pages were faulted in and zeroed by
the kernel again: measured ~10 % of the two daemons' CPU per GiB moved (docs/JOURNAL.md,
2026-12-06). :func:`keep_large_buffers` raises the mmap threshold above the largest
frame and the trim threshold above that, so freed buffers stay in the heap and are
reused. Only glibc has ``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_large_buffers"]

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
