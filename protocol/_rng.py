"""The randomness a state machine is given: an injected, seedable source.

``protocol/`` never creates randomness of its own. Drivers pass a
``random.Random`` (seeded in ``sim/`` and tests, so runs replay), and the
machines see it only through this structural type, which names exactly what
they draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Rng"]

T = TypeVar("T")


class Rng(Protocol):
    def random(self) -> float: ...

    def uniform(self, a: float, b: float) -> float: ...

    def randrange(self, start: int, stop: int | None = ..., step: int = ...) -> int: ...

    def choice(self, seq: Sequence[T]) -> T: ...

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...
