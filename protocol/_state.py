"""A model's operational status on this node: the transitions allowed, in one table.

After h11's ``_state.py``: the node machine never assigns a status directly; it
asks :func:`change_state` for the model's next :class:`~._records.ModelState`, and
a status change the table does not list raises :class:`LocalProtocolError` (a bug
in the machine, never a peer's doing).

The table (the self-loops -- a change of progress, blocker or intent without a
change of status -- are always allowed):

* ``loading`` is entered only from ``downloading`` (every chunk is stored; the
  install runs) and left only when the install finishes: ``operational``,
  ``degraded`` or ``failed``. A cancel or a newer intent waits for it.
* every other status may move to ``downloading`` (a transfer starts),
  ``operational`` (a version already on disk is activated, or a cancel returns to
  the one that runs), ``not_deployed`` (the wanted version's manifest has not
  arrived yet, or a cancel leaves nothing running) and ``failed`` (no variant
  fits this node).
* ``degraded`` is a running model that works impaired: it is entered from
  ``operational`` or at the end of an install, and leaves like ``operational``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TypedDict, Unpack

from ._errors import LocalProtocolError
from ._records import ModelState
from ._types import BlockerReason, ModelOperationalStatus

__all__ = ["TRANSITIONS", "StateChange", "change_state", "check_transition"]

_S = ModelOperationalStatus

_LEAVE_TO = frozenset({_S.DOWNLOADING, _S.OPERATIONAL, _S.NOT_DEPLOYED, _S.FAILED})

TRANSITIONS: Mapping[ModelOperationalStatus, frozenset[ModelOperationalStatus]] = \
    MappingProxyType({
        _S.NOT_DEPLOYED: _LEAVE_TO,
        _S.DOWNLOADING: _LEAVE_TO | {_S.LOADING},
        # (back to downloading: an install found chunks it held bad or gone)
        _S.LOADING: frozenset({_S.LOADING, _S.OPERATIONAL, _S.DEGRADED, _S.FAILED,
                               _S.DOWNLOADING}),
        _S.OPERATIONAL: _LEAVE_TO | {_S.DEGRADED},
        _S.DEGRADED: _LEAVE_TO | {_S.DEGRADED},
        _S.FAILED: _LEAVE_TO,
    })
"""status -> the statuses it may change to (itself included)."""


class StateChange(TypedDict, total=False):
    """The fields of a :class:`ModelState` one change may set (``updated_at`` is
    stamped by the machine, ``model_id`` never changes)."""

    version: str
    variant_id: str
    status: ModelOperationalStatus
    bytes_done: int
    bytes_total: int
    bytes_reused: int
    bytes_fetched: int
    blocker: BlockerReason | None
    blocker_detail: str
    blocker_since: float
    started_at: float
    intent_id: str
    installed: tuple[str, ...]
    active_version: str


def check_transition(model_id: str, old: ModelOperationalStatus,
                     new: ModelOperationalStatus) -> None:
    """Raise :class:`LocalProtocolError` unless the table allows ``old -> new``."""
    if new not in TRANSITIONS[old]:
        raise LocalProtocolError(f"{model_id}: a model cannot go from {old.value} to "
                                 f"{new.value}")


def change_state(state: ModelState, **changes: Unpack[StateChange]) -> ModelState:
    """``state`` with ``changes`` applied, once the table allows its status change."""
    status = changes.get("status")
    if status is not None and status is not state.status:
        check_transition(state.model_id, state.status, status)
    return replace(state, **changes)
