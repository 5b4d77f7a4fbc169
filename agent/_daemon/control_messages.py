"""The control socket's messages (codec type ids 100-149): requests, their answers,
and :class:`ErrorResponse`.

They travel only between a daemon and a local client (the CLI, ``ShoalClient``),
never on the network, framed by the codec like the wire messages (4-byte length
+ message). Each request gets one answer, or an :class:`ErrorResponse` naming the
error class and an operator-readable message; :class:`Subscribe` gets a stream of
:class:`ConvergenceReport`. Fields are appended with defaults, never renumbered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from protocol import (
    Certificate,
    IntentKind,
    ModelConvergenceStatus,
    NodeRecord,
    Revocation,
    RolloutPolicy,
    Scope,
    TransferPriority,
    message,
    struct,
)

__all__ = [
    "MAX_CONTROL_FRAME",
    "StatusRequest", "StatusResponse", "PeersRequest", "PeersResponse", "PeerEntry",
    "PublishRequest", "PublishResponse", "DistributeRequest", "CancelRequest",
    "IntentResponse", "ConvergenceRequest", "ConvergenceReport",
    "NodeStatusRequest", "NodeStatusResponse", "NodesWithVersionRequest", "NodeListResponse",
    "Subscribe", "ErrorResponse", "IntentsRequest", "IntentListResponse",
    "RecordsRequest", "RecordsResponse", "RecordEntry",
    "AnnounceTrustRequest", "AnnounceTrustResponse",
]

MAX_CONTROL_FRAME = 16 * 1024 * 1024   # bytes of one control frame, either way


@message(100)
@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@message(101)
@dataclass(frozen=True, slots=True)
class StatusResponse:
    node_id: str
    name: str
    fleet_id: str
    formation: str
    listen_port: int
    peers: tuple[str, ...]
    record: NodeRecord | None
    statistics_json: str


@struct
@dataclass(frozen=True, slots=True)
class PeerEntry:
    node_id: str
    name: str
    address: str
    initiated_by_us: bool
    connected_for: float
    bytes_sent: int
    bytes_received: int


@message(102)
@dataclass(frozen=True, slots=True)
class PeersRequest:
    pass


@message(103)
@dataclass(frozen=True, slots=True)
class PeersResponse:
    peers: tuple[PeerEntry, ...]


@message(104)
@dataclass(frozen=True, slots=True)
class PublishRequest:
    path: str
    model_id: str
    version: str
    base_version: str | None = None  # set for a derived version (`shoal export`)


@message(105)
@dataclass(frozen=True, slots=True)
class PublishResponse:
    manifest_id: str
    model_id: str
    version: str
    variants: tuple[str, ...]
    bytes_total: int
    chunks_total: int
    chunks_new: int
    bytes_new: int
    files: int = 0
    already_published: bool = False


@message(106)
@dataclass(frozen=True, slots=True)
class DistributeRequest:
    kind: IntentKind                 # distribute or rollback
    model_id: str
    version: str
    variant_id: str | None = None
    delta_from: str | None = None
    scope: Scope = dataclasses.field(default_factory=Scope)
    priority: TransferPriority = TransferPriority.NORMAL
    policy: RolloutPolicy | None = None   # a distribute's rollout policy


@message(107)
@dataclass(frozen=True, slots=True)
class IntentResponse:
    """An intent as the client sees it (the handle of an operation)."""

    intent_id: str
    model_id: str
    version: str
    kind: IntentKind = IntentKind.DISTRIBUTE
    variant_id: str | None = None
    delta_from: str | None = None
    scope: Scope = dataclasses.field(default_factory=Scope)
    priority: TransferPriority = TransferPriority.NORMAL
    issued_at: float = 0.0           # the intent's HLC wall time (seconds)
    issuer_id: str = ""              # operator key id that signed it
    targets: int = 0                 # nodes the scope matched when answered, at this node
    cancels: str | None = None       # for a cancel: the intent it cancels
    cancelled_by: str | None = None  # for a distribute/rollback: its cancel, if any


@message(108)
@dataclass(frozen=True, slots=True)
class CancelRequest:
    model_id: str                    # "" when intent_id is given
    intent_id: str | None = None     # None: the intent this node follows for the model


@message(110)
@dataclass(frozen=True, slots=True)
class ConvergenceRequest:
    model_id: str
    version: str


@message(111)
@dataclass(frozen=True, slots=True)
class ConvergenceReport:
    """The answer to a ConvergenceRequest, and each item of a Subscribe stream."""

    status: ModelConvergenceStatus


@message(112)
@dataclass(frozen=True, slots=True)
class NodeStatusRequest:
    node_id: str                     # id or name; "" = this node


@message(113)
@dataclass(frozen=True, slots=True)
class NodeStatusResponse:
    node_id: str
    record: NodeRecord | None


@message(114)
@dataclass(frozen=True, slots=True)
class NodesWithVersionRequest:
    model_id: str
    version: str


@message(115)
@dataclass(frozen=True, slots=True)
class NodeListResponse:
    node_ids: tuple[str, ...]


@message(116)
@dataclass(frozen=True, slots=True)
class Subscribe:
    model_id: str
    version: str
    until_complete: bool = True


@message(117)
@dataclass(frozen=True, slots=True)
class IntentsRequest:
    model_id: str = ""               # "" = every model


@message(118)
@dataclass(frozen=True, slots=True)
class IntentListResponse:
    intents: tuple[IntentResponse, ...]


@message(119)
@dataclass(frozen=True, slots=True)
class RecordsRequest:
    """Every node record this node's ledger holds (for fleet views: ``status --watch``)."""


@struct
@dataclass(frozen=True, slots=True)
class RecordEntry:
    node_id: str
    record: NodeRecord


@message(120)
@dataclass(frozen=True, slots=True)
class RecordsResponse:
    records: tuple[RecordEntry, ...]


@message(121)
@dataclass(frozen=True, slots=True)
class AnnounceTrustRequest:
    """Hand a root-signed certificate or revocation (exactly one) to the daemon: it
    verifies it against the fleet root and writes it to the ledger, so gossip spreads it."""

    certificate: Certificate | None = None
    revocation: Revocation | None = None


@message(122)
@dataclass(frozen=True, slots=True)
class AnnounceTrustResponse:
    kind: str                        # "certificate" or "revocation"
    subject_id: str                  # key id the certificate admits / the revocation revokes
    added: bool                      # False: the ledger already held it
    revoked_keys: tuple[str, ...]    # every key id this node's trust now holds revoked


@message(149)
@dataclass(frozen=True, slots=True)
class ErrorResponse:
    kind: str
    message: str
