"""What the daemon's tasks hand the machine task: one small frozen class per event.

Sessions, store workers, installs and the control server never touch the
:class:`~protocol.NodeMachine`; they post one of these to the runtime's
inbox (``NodeRuntime.post``) and the machine task feeds it in
(``NodeRuntime._handle`` dispatches on the type).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import BlockerReason, NodeMachine, WireMessage

__all__ = ["InboxEvent", "PeerMessage", "PeerUp", "PeerDown", "PeerKnown", "PeerGone",
           "DialFailed", "ChunkStored", "ChunkStoreFailed", "ChunkMissing", "PiecesSent",
           "InstallDone", "HealthChecked", "ControlCall"]


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """``peer`` sent ``message`` (the reader took an inbox token for it)."""

    peer: str
    message: WireMessage


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A session with ``peer`` is open (``inbound``: the peer dialled us)."""

    peer: str
    inbound: bool = False


@dataclass(frozen=True, slots=True)
class PeerDown:
    """The session with ``peer`` has ended."""

    peer: str


@dataclass(frozen=True, slots=True)
class PeerKnown:
    """Discovery (or a static peer's handshake) says ``peer`` listens at ``address``."""

    peer: str
    address: str


@dataclass(frozen=True, slots=True)
class PeerGone:
    """Discovery saw ``peer`` leave."""

    peer: str


@dataclass(frozen=True, slots=True)
class DialFailed:
    """A dial the machine asked for (``DialPeer``) did not open a session."""

    peer: str


@dataclass(frozen=True, slots=True)
class ChunkStored:
    """A store worker made the chunks ``chunk_hashes`` durable (one batch)."""

    chunk_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ChunkStoreFailed:
    """A store worker could not write chunk ``chunk_hash``."""

    chunk_hash: bytes
    reason: BlockerReason
    detail: str


@dataclass(frozen=True, slots=True)
class ChunkMissing:
    """A writer could not read chunk ``chunk_hash`` to serve it."""

    chunk_hash: bytes


@dataclass(frozen=True, slots=True)
class ChunksGone:
    """Versions the machine let go were deleted; these chunks went with them."""

    chunk_hashes: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class PiecesSent:
    """The pieces of ``chunk_hashes`` have been written to ``peer``'s connection."""

    peer: str
    chunk_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class InstallDone:
    """An install the machine asked for has finished (``ok``) or failed."""

    model_id: str
    version: str
    variant_id: str
    ok: bool
    reason: BlockerReason | None
    detail: str
    unhealthy: str | None = None    # installed, but its health check failed: why
    refetch: bool = False           # failed on chunks held bad or gone: fetch, install again


@dataclass(frozen=True, slots=True)
class HealthChecked:
    """A health check of the running ``version`` passed (``unhealthy`` None) or failed."""

    model_id: str
    version: str
    unhealthy: str | None


@dataclass(frozen=True, slots=True)
class ControlCall:
    """Run ``fn(machine, now)`` in the machine task; hand ``done`` its result or
    exception."""

    fn: Callable[[NodeMachine, float], Any]
    done: Callable[[Any, BaseException | None], None]


InboxEvent = (PeerMessage | PeerUp | PeerDown | PeerKnown | PeerGone | DialFailed | ChunkStored
              | ChunkStoreFailed | ChunkMissing | ChunksGone | PiecesSent | InstallDone
              | HealthChecked | ControlCall)
