"""The handshake's messages and a session's states (protocol/_handshake.py uses them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._codec import message
from ._identity import Certificate

__all__ = ["RejectCode", "Hello", "Auth", "HandshakeReject", "KeyUpdate", "ConnectionRole",
           "ConnectionState", "ConnectionStatistics"]


class RejectCode(enum.StrEnum):
    """Why a handshake was refused (sent to the peer in :class:`HandshakeReject`)."""

    UNTRUSTED_KEY = "untrusted_key"    # no valid node certificate, or revoked
    WRONG_FLEET = "wrong_fleet"
    BAD_VERSION = "bad_version"
    BAD_SIGNATURE = "bad_signature"
    UNEXPECTED_PEER = "unexpected_peer"  # authenticated, but not the node we dialled
    MALFORMED = "malformed"            # undecodable, oversize, or out-of-order message


@message(1)
@dataclass(frozen=True, slots=True)
class Hello:
    fleet_id: str
    version: int
    ephemeral_key: bytes  # X25519 public key, 32 bytes
    certificate: Certificate
    nonce: bytes  # 32 random bytes


@message(2)
@dataclass(frozen=True, slots=True)
class Auth:
    signature: bytes  # Ed25519 over "shoal/v1/handshake-auth\0" || role || transcript


@message(3)
@dataclass(frozen=True, slots=True)
class HandshakeReject:
    code: RejectCode
    detail: str


@message(4)
@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """Sealed as the last record under a direction's key: later records of that
    direction use the next key (epoch ``epoch``, counter from 0). Never a handshake
    message and never handed to the application."""
    epoch: int


class ConnectionRole(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    state: ConnectionState
    records_sent: int
    records_received: int
    plaintext_bytes_sent: int
    plaintext_bytes_received: int
    wire_bytes_sent: int
    wire_bytes_received: int
    send_epoch: int = 0   # key updates this end has made (its sending key's number)
    recv_epoch: int = 0   # key updates the peer has made (its sending key's number)
