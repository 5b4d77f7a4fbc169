"""The simulator's nodes: what a node is made of (its spec, its disk that survives a
crash, its statistics), and the sizes the virtual network charges for messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import blake3

from protocol import (
    SWARM_MESSAGES,
    Capabilities,
    Certificate,
    Piece,
    SigningIdentity,
    encode,
    wire_size,
)

__all__ = ["DEFAULT_CAPABILITIES", "PIECE_TYPE", "PIECE_OVERHEAD", "NodeSpec", "Disk",
           "FleetStatistics", "SimNode", "message_size", "seeded_identity"]

DEFAULT_CAPABILITIES = Capabilities(cpu_arch="x86_64", cpu_cores=8, ram_mb=16_384,
                                    storage_free_mb=1_000_000, gpus=(),
                                    execution_providers=("CPUExecutionProvider",))
PIECE_TYPE = Piece
PIECE_OVERHEAD = len(encode(Piece(b"\x00" * 32, b"", 0)))
# Small swarm messages (Request, Have, Cancel...) repeat by value across the fleet: their
# encoded size is remembered per value (frozen dataclasses compare and hash by value, and
# equal values encode to equal bytes), so each distinct message is encoded once per run.
_SMALL_SWARM = frozenset(t for t in SWARM_MESSAGES if t is not PIECE_TYPE)
_SIZE_BY_VALUE: dict[Any, int] = {}
_SIZE_BY_VALUE_LIMIT = 1_000_000


def message_size(msg: Any) -> int:
    """Bytes ``msg`` takes on the wire (``len(encode(msg))``), memoised."""
    if type(msg) in _SMALL_SWARM:
        size = _SIZE_BY_VALUE.get(msg)
        if size is None:
            size = len(encode(msg))
            if len(_SIZE_BY_VALUE) >= _SIZE_BY_VALUE_LIMIT:
                _SIZE_BY_VALUE.clear()
            _SIZE_BY_VALUE[msg] = size
        return size
    return wire_size(msg)


def seeded_identity(seed: int | str, label: str) -> SigningIdentity:
    return SigningIdentity(blake3.blake3(f"shoal-sim/{seed}/{label}".encode()).digest())


@dataclass(frozen=True, slots=True)
class NodeSpec:
    up: float                      # bytes/s
    down: float                    # bytes/s
    liar: bool = False             # serves wrong bytes for every chunk
    join_at: float = 0.0           # virtual time the node first comes up
    capabilities: Capabilities = field(default_factory=lambda: DEFAULT_CAPABILITIES)
    formation: str = ""
    name: str = ""                 # its certificate name (default ``n<index>``)
    # with ``Fleet(disk_limits=True)``: a chunk store that would take more than the
    # capabilities' ``storage_free_mb`` of new bytes fails with insufficient_storage
    # (what the agent's store reports on a full disk)


@dataclass(slots=True)
class Disk:
    """What survives a crash."""

    held: set[bytes] = field(default_factory=set)
    installed: set[tuple[str, str, str]] = field(default_factory=set)
    active: dict[str, str] = field(default_factory=dict)
    ledger: Any = None
    stored_bytes: int = 0      # bytes written by chunk stores (Fleet(disk_limits=True))


@dataclass(frozen=True, slots=True)
class FleetStatistics:
    nodes: int
    up: int
    sessions: int
    messages: int
    bytes_sent: int
    piece_bytes_sent: int
    pieces_received: int
    drops: int
    protocol_errors: int
    notices: dict[str, int]


class SimNode:
    __slots__ = ("index", "spec", "identity", "certificate", "node_id", "machine", "disk",
                 "peers", "timer_at", "timer_gen", "piece_bytes_in", "alive", "name", "life")

    def __init__(self, index: int, spec: NodeSpec, identity: SigningIdentity,
                 certificate: Certificate) -> None:
        self.index = index
        self.spec = spec
        self.identity = identity
        self.certificate = certificate
        self.node_id = identity.key_id
        self.name = spec.name or f"n{index}"
        self.machine: Any = None
        self.disk = Disk()
        self.peers: set[str] = set()
        self.timer_at: float | None = None
        self.timer_gen = 0
        self.piece_bytes_in = 0
        self.alive = False
        self.life = 0  # bumped at every start: events of an earlier life are stale
