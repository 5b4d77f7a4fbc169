"""Keeping one dialled peer connected: :class:`Redialer`, with exponential backoff and
jitter between attempts (the channels: ``agent/_daemon/transport.py``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from agent._daemon.transport import ChannelHandler, SecureChannel, TransportError
from protocol import ProtocolError

if TYPE_CHECKING:
    import random


__all__ = ["Redialer", "RedialerStatistics", "backoff_delay"]

log = logging.getLogger("shoal.transport")


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (0-based): "equal jitter" exponential backoff.

    Uniform in ``[d/2, d]`` with ``d = min(cap, base * 2**attempt)``, so retries from
    many nodes spread out yet never wait less than half the nominal delay.
    """
    nominal = cap if attempt > 60 else min(cap, base * math.pow(2.0, attempt))
    return rng.uniform(nominal / 2.0, nominal)


@dataclass(frozen=True, slots=True)
class RedialerStatistics:
    attempts: int
    failures: int
    connections: int
    consecutive_failures: int
    last_error: str
    last_delay: float


class Redialer:
    """Keeps a session to one dialled peer: connect, run ``on_channel``, retry with backoff.

    ``connect`` returns a fresh channel (normally a :func:`dial` partial);
    ``on_channel`` runs for as long as the session lives. Cancel the task running
    :meth:`run` to stop.
    """

    def __init__(self, connect: Callable[[], Awaitable[SecureChannel]],
                 on_channel: ChannelHandler, *, rng: random.Random,
                 base_delay: float = 0.5, max_delay: float = 60.0,
                 target: str = "peer") -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.target = target               # what the log lines name (e.g. "host:port")
        self._connect = connect
        self._on_channel = on_channel
        self._rng = rng
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._attempts = 0
        self._failures = 0
        self._connections = 0
        self._streak = 0
        self._last_error = ""
        self._last_delay = 0.0

    async def run(self) -> None:
        while True:
            self._attempts += 1
            try:
                channel = await self._connect()
            except (ProtocolError, TransportError, OSError) as exc:
                self._failures += 1
                self._last_error = str(exc)
                delay = backoff_delay(self._streak, self._rng, base=self.base_delay,
                                      cap=self.max_delay)
                self._streak += 1
                self._last_delay = delay
                log.info("dial %s failed (%s); retrying in %.1f s", self.target, exc, delay)
                await trio.sleep(delay)
                continue
            self._streak = 0
            self._connections += 1
            async with channel:
                try:
                    await self._on_channel(channel)
                except (ProtocolError, TransportError) as exc:
                    self._last_error = str(exc)
            # a session that ended: come back soon, but never in a hot loop
            self._last_delay = backoff_delay(0, self._rng, base=self.base_delay,
                                             cap=self.max_delay)
            await trio.sleep(self._last_delay)

    def statistics(self) -> RedialerStatistics:
        return RedialerStatistics(self._attempts, self._failures, self._connections,
                                  self._streak, self._last_error, self._last_delay)
