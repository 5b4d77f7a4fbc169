"""What the node state machine asks its driver (agent/ or sim/) to do.

The machine never performs I/O. Each input method (``receive``, ``on_timer``,
``chunk_stored``...) appends zero or more of these frozen outputs; the driver
takes them with ``NodeMachine.take_outputs()`` and carries them out in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._types import BlockerReason

__all__ = [
    "Output",
    "SendMessage",
    "ServeChunk",
    "StoreChunk",
    "InstallVariant",
    "ActivateVersion",
    "DropPeer",
    "Notice",
]


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send ``message`` (a registered codec message) to connected peer ``peer``."""

    peer: str
    message: Any


@dataclass(frozen=True, slots=True)
class ServeChunk:
    """Read chunk ``chunk_hash`` from the local store and send it to ``peer`` as a piece.

    Kept out of the machine so chunk bytes go store -> socket without a copy. If the
    chunk cannot be read the driver calls ``chunk_missing(chunk_hash)``.
    """

    peer: str
    chunk_hash: bytes
    priority: int


@dataclass(frozen=True, slots=True)
class StoreChunk:
    """Write verified chunk bytes to the store; answer with ``chunk_stored`` or
    ``chunk_store_failed``."""

    chunk_hash: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class InstallVariant:
    """Every chunk of the variant is stored: assemble, verify, switch ``current``.

    Answer with ``install_finished``. ``previous_version`` names the version the
    node runs now (a migrator may need it), or None.
    """

    model_id: str
    version: str
    manifest_id: str
    variant_id: str
    previous_version: str | None


@dataclass(frozen=True, slots=True)
class ActivateVersion:
    """Switch ``current`` back to a version already installed on disk (no transfer)."""

    model_id: str
    version: str
    variant_id: str


@dataclass(frozen=True, slots=True)
class DropPeer:
    """Close the session with ``peer`` (it lied, or sent garbage) and do not redial soon."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator may want in the log or a status stream."""

    kind: str
    detail: str
    model_id: str | None = None
    intent_id: str | None = None
    reason: BlockerReason | None = None


Output = (
    SendMessage | ServeChunk | StoreChunk | InstallVariant | ActivateVersion | DropPeer | Notice
)
