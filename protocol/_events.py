"""What the node state machine asks its driver (agent/ or sim/) to do.

The machine never performs I/O. Each input method (``receive``, ``on_timer``,
``chunk_stored``...) appends zero or more of these frozen outputs; the driver
takes them with ``NodeMachine.take_outputs()`` and carries them out in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._bans import BANS
from ._types import BlockerReason

if TYPE_CHECKING:
    from ._wire import WireMessage

__all__ = [
    "Output",
    "SendMessage",
    "ServeChunk",
    "StoreChunk",
    "InstallVariant",
    "ActivateVersion",
    "PersistLedger",
    "DropPeer",
    "DialPeer",
    "ClosePeer",
    "Notice",
    "NoticeKind",
]


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send ``message`` to connected peer ``peer``."""

    peer: str
    message: WireMessage


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
    ``chunk_store_failed``. ``data`` may be a view into a larger buffer (a run of
    pieces received together)."""

    chunk_hash: bytes
    data: bytes | memoryview


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
class RemoveVersions:
    """Delete these installed versions of ``model_id`` from disk: neither active, nor the
    rollback, nor named by a live intent (``LedgerConfig.keep_versions``). The machine
    no longer reports them and no longer serves their chunks (those no kept version
    shares)."""

    model_id: str
    versions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PersistLedger:
    """Make the ledger durable now, before carrying out the outputs that follow.

    Emitted whenever the machine appended an entry of its own (its counter is
    ``counter``): once a peer has seen an own entry, a node that crashed before
    saving it would come back and sign a different entry under a counter the fleet
    already knows. The outputs after this one may carry the entry, so the driver
    saves first; a save that already covers ``counter`` (the driver saves the whole
    ledger) answers every ``PersistLedger`` up to it. Changes that are not the
    node's own (entries merged from peers) are no such hazard: a driver saves them
    when it likes (periodically, on shutdown)."""

    counter: int


@dataclass(frozen=True, slots=True)
class DropPeer:
    """Close the session with ``peer`` and neither redial it nor accept it for
    ``ban_for`` seconds (``math.inf``: while this node runs). The machine decides
    ``ban_for`` from why it drops the peer (:mod:`._bans`); drivers obey it."""

    peer: str
    reason: str
    ban_for: float = BANS.misbehaved


@dataclass(frozen=True, slots=True)
class DialPeer:
    """Open a session to ``peer`` at ``address`` (``host:port``, as discovery reported
    it), pinned to that node id; answer with ``peer_connected`` or ``dial_failed``.
    The overlay (``_overlay``) decides whom to dial."""

    peer: str
    address: str


@dataclass(frozen=True, slots=True)
class ClosePeer:
    """Close the session with ``peer`` once what is queued for it has been sent (an
    ``OverlayFull``, say), without a ban: the overlay declined or rotated it."""

    peer: str
    reason: str


class NoticeKind(enum.StrEnum):
    """What a :class:`Notice` is about."""

    TRANSFER_CANCELLED = "transfer_cancelled"    # no standing intent: back to what runs
    UNEXPECTED_MESSAGE = "unexpected_message"    # a message no engine handles
    STORE_FAILED = "store_failed"                # a chunk no transfer wants failed to store
    PEER_DROPPED = "swarm.peer_dropped"          # the swarm dropped a peer (see DropPeer)
    POLICY_ACTED = "policy_acted"                # this node enacted a rollout policy
    TRANSFER_RESTARTED = "transfer_restarted"    # an install found held chunks bad: refetch


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator may want in the log or a status stream."""

    kind: NoticeKind
    detail: str
    model_id: str | None = None
    intent_id: str | None = None
    reason: BlockerReason | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not NoticeKind:    # its value names it as well
            object.__setattr__(self, "kind", NoticeKind(self.kind))


Output = (
    SendMessage | ServeChunk | StoreChunk | InstallVariant | ActivateVersion | RemoveVersions
    | PersistLedger | DropPeer | DialPeer | ClosePeer | Notice
)
