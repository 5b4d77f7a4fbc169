"""One error hierarchy for shoal, split by who is at fault (after h11).

* :class:`LocalProtocolError` — *we* tried to do something the protocol forbids
  (build an invalid manifest, issue an intent with an empty scope, send an
  oversize message). Fix the caller. Its :class:`RequestRejected` branch is an
  operator's mistake a node refuses before signing anything (an unknown model,
  a scope that matches no node): the message says what to do instead.
* :class:`RemoteProtocolError` — a *peer* (or a file that came from one) sent
  something invalid: a malformed or oversize frame, a forged signature, a chunk
  whose bytes do not match its hash. Drop the input, count it, maybe the peer.

Every error carries a message a fleet operator can act on.
"""

from __future__ import annotations

__all__ = [
    "ShoalError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "MalformedMessage",
    "FrameTooLarge",
    "SignatureError",
    "UntrustedKey",
    "ChunkIntegrityError",
    "InvalidValue",
    "HostilePath",
    "ManifestConflict",
    "RequestRejected",
    "UnknownModel",
    "UnknownVersion",
    "UnknownVariant",
    "EmptyScope",
    "UnknownIntent",
    "UnknownNode",
]


class ShoalError(Exception):
    """Base of every error shoal raises on purpose."""


class ProtocolError(ShoalError):
    """Something violates the shoal protocol."""


class LocalProtocolError(ProtocolError):
    """The local side asked for something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """A peer, or data that came from one, violates the protocol."""


class MalformedMessage(RemoteProtocolError):
    """Bytes that do not decode to a valid message (unknown type, bad field, bad version)."""


class FrameTooLarge(RemoteProtocolError):
    """A length prefix announces a frame larger than the limit; the body is never read."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class SignatureError(RemoteProtocolError):
    """A signature does not verify (forged, tampered, or signed by another key)."""


class UntrustedKey(RemoteProtocolError):
    """A key that the fleet root has not admitted for this role (or has revoked)."""


class ChunkIntegrityError(RemoteProtocolError):
    """Chunk bytes whose BLAKE3 hash or size does not match the name they were given."""


class InvalidValue(LocalProtocolError, ValueError):
    """A value that fails validation (model id, version, scope, size...).

    Raised when such a value is *built*; the codec re-raises it as
    :class:`MalformedMessage` when the value arrived from a peer.
    """


class HostilePath(InvalidValue):
    """A file path that is absolute, escapes its root, or is otherwise unsafe."""


class ManifestConflict(LocalProtocolError):
    """A second, different content published under a version that already names one."""


class RequestRejected(LocalProtocolError):
    """An operator request this node refuses before anything is signed or sent."""


class UnknownModel(RequestRejected):
    """No manifest of this model is in the ledger (publish it first)."""


class UnknownVersion(RequestRejected):
    """The model is known but not this version (publish it, or check the spelling)."""


class UnknownVariant(RequestRejected):
    """The version has no variant of that id."""


class EmptyScope(RequestRejected):
    """The scope names no node the fleet knows (or some node it names is unknown)."""


class UnknownIntent(RequestRejected):
    """No distribute / rollback intent with that handle id (or model) is known here."""


class UnknownNode(RequestRejected):
    """No node with that id or name is known here."""
