"""The agent's errors: what went wrong on *this* node's disk, keys or config.

All of them are :class:`~protocol.ShoalError`, so the CLI turns any of them
into one line on stderr and exit status 2. Messages say what to do about it.
"""

from __future__ import annotations

from protocol import ChunkIntegrityError, ShoalError

__all__ = [
    "AgentError",
    "ConfigError",
    "StoreError",
    "ChunkCorrupted",
    "ChunkNotFound",
    "InsufficientStorage",
    "NotFound",
    "InstallError",
    "PublishError",
]


class AgentError(ShoalError):
    """Base of the errors raised by the agent (disk, keys, config, install).

    ``chunk_hashes``: chunks the error found bad or absent on this node (a store read,
    an install): they are no longer held, and the swarm should fetch them again."""

    def __init__(self, *args: object, chunk_hashes: tuple[bytes, ...] = ()) -> None:
        super().__init__(*args)
        self.chunk_hashes = chunk_hashes


class ConfigError(AgentError):
    """A configuration, key file or model package description is missing or invalid."""


class StoreError(AgentError):
    """The content store could not read or write a chunk or manifest."""


class ChunkCorrupted(StoreError, ChunkIntegrityError):
    """Bytes on disk (or offered to the store) do not match the chunk's BLAKE3 name.

    A corrupt chunk found on disk is moved to ``quarantine/`` and dropped from
    the index, so the swarm fetches it again.
    """


class InsufficientStorage(StoreError):
    """The disk is full (ENOSPC/EDQUOT); nothing partial was left behind."""


class NotFound(AgentError):
    """A model, version, variant or manifest this node does not have."""


class ChunkNotFound(NotFound, StoreError):
    """A chunk this node's store does not hold."""


class InstallError(AgentError):
    """A version could not be assembled, verified or activated."""


class PublishError(AgentError):
    """A model package could not be published (unsafe content, conflicting version...)."""
