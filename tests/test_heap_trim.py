"""``$SHOAL_MALLOC_TRIM``: the daemon's optional ``malloc_trim(0)`` while a transfer runs
(agent/_daemon/heap.py): parsed strictly, off by default, and on glibc it gives the
free pages inside the heap back (this process's resident size, data not time)."""

from __future__ import annotations

import os
import platform

import pytest

from agent._daemon.heap import TRIM_ENV, HeapTrimmer
from agent._errors import ConfigError

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("text", ["", "  ", "0", "0.0"])
def test_off_unless_an_interval_is_named(text: str) -> None:
    trimmer = HeapTrimmer.from_environment({TRIM_ENV: text} if text else {})
    assert not trimmer.enabled and trimmer.interval == 0
    assert trimmer.trim() is False and trimmer.calls == 0


@pytest.mark.parametrize("text", ["-1", "abc", "nan", "inf", "2s"])
def test_a_bad_interval_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=TRIM_ENV):
        HeapTrimmer.from_environment({TRIM_ENV: text})


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_trim_gives_back_the_free_pages_inside_the_heap() -> None:
    trimmer = HeapTrimmer.from_environment({TRIM_ENV: "2.5"})
    assert trimmer.enabled and trimmer.interval == 2.5
    # 64 MiB in 32 KiB blocks (malloc's heap, below its mmap threshold), every other one
    # freed: holes in the middle of the heap, which freeing alone does not give back
    blocks = [bytearray(b"\x01" * 32 * 1024) for _ in range(2048)]
    del blocks[::2]
    before = _resident()
    assert trimmer.trim() is True
    after = _resident()
    assert before - after >= 16 * 1024 * 1024
    assert trimmer.calls == 1 and trimmer.released == 1 and trimmer.cpu_s >= 0
    assert sum(len(b) for b in blocks) == 1024 * 32 * 1024     # the live ones stay
