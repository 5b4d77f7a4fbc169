"""How a CLI handler ends other than with ``(json_obj, text)`` and exit status 0."""

from __future__ import annotations

from typing import Any

__all__ = ["Answered"]


class Answered(Exception):
    """A command that ran to the end with an answer that is not a success (a rollout
    that ended otherwise, a node that reports nothing): its result is printed like
    any other (``result`` with ``--json``, ``text`` otherwise; None / "" print
    nothing), and the exit status is ``status`` (1 by default)."""

    def __init__(self, result: Any, text: str, status: int = 1) -> None:
        super().__init__(text)
        self.result = result
        self.text = text
        self.status = status
