"""shoal's protocol: everything that decides, and no I/O.

The node state machine (:class:`NodeMachine`) takes time, randomness and
messages as inputs and returns outputs (messages to send, chunks to store,
versions to install); ``agent/`` drives it with real sockets and disks,
``sim/`` with a virtual network. The names below are the public surface: the
drivers (agent/, sim/, benchmarks/) import from ``protocol`` only, never from the
``_modules`` behind it (``tests/test_layering.py`` holds them to it).
"""

from ._capabilities import (
    ACCELERATOR_KINDS,
    Capabilities,
    GpuInfo,
    Requirements,
    normalise_arch,
)
from ._chunking import (
    DEFAULT_PARAMS,
    DEFAULT_WINDOW,
    ChunkParams,
    chunk_bytes,
    chunk_matches,
    chunk_stream,
    chunk_view,
    cut_view,
    hash_chunk,
    hash_cuts,
)
from ._codec import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    decode,
    decode_value,
    encode,
    encode_value,
    frame,
    message,
    struct,
)
from ._config import Config, GossipConfig, LedgerConfig, OverlayConfig, SwarmConfig
from ._convergence import ConvergenceBlocker, ModelConvergenceStatus, RolloutState
from ._entries import Entry, EntryKind, encoded_entry
from ._errors import (
    ChunkIntegrityError,
    EmptyScope,
    FrameTooLarge,
    HostilePath,
    InvalidValue,
    LocalProtocolError,
    MalformedMessage,
    ManifestConflict,
    ProtocolError,
    RemoteProtocolError,
    RequestRejected,
    ShoalError,
    SignatureError,
    UnknownIntent,
    UnknownModel,
    UnknownNode,
    UnknownVariant,
    UnknownVersion,
    UntrustedKey,
)
from ._events import (
    ActivateVersion,
    ClosePeer,
    DialPeer,
    DropPeer,
    InstallVariant,
    Notice,
    NoticeKind,
    Output,
    PersistLedger,
    RemoveVersions,
    SendMessage,
    ServeChunk,
    StoreChunk,
)
from ._gossip import wire_size
from ._handshake import (
    DEFAULT_REKEY_BYTES,
    DEFAULT_REKEY_RECORDS,
    HANDSHAKE_MAX_FRAME,
    HANDSHAKE_VERSION,
    ConnectionRole,
    ConnectionStatistics,
    SecureConnection,
)
from ._hlc import HLC
from ._identity import (
    Certificate,
    FleetTrust,
    Revocation,
    Role,
    SigningIdentity,
    Verifier,
    fingerprint,
    verify_signature,
)
from ._intents import Intent, IntentKind, OnDegraded, RolloutPolicy, Scope, ScopeKind
from ._ledger import Ledger
from ._manifest import (
    GRPC_HEALTH_CHECK,
    HASH_SIZE,
    ChunkList,
    ChunkRef,
    FileEntry,
    Manifest,
    SemVer,
    Variant,
    check_migrator_path,
    merkle_root,
    validate_migrator_address,
    validate_model_id,
    validate_relative_path,
    validate_version,
)
from ._manifest_fetch import BodyAnswer, BodyCancel, BodyWant, FetchStatistics
from ._manifest_head import ManifestHead, VariantHead
from ._node import NodeMachine, NodeStatistics
from ._operator import (
    IntentView,
    check_known,
    count_targets,
    describe,
    find_node,
    intent_views,
    nodes_running,
)
from ._overlay import OverlayFull, OverlayStatistics, PeerHint
from ._records import ModelState, NodeRecord, Suspicion
from ._selection import VariantChoice, select_variant, unmet_requirements
from ._settle import manifests_to_retire
from ._swarm import SwarmEngine, TransferProgress, make_piece
from ._swarm_messages import (
    MAX_RUN,
    SWARM_MESSAGES,
    Piece,
    Pieces,
    Request,
    Requests,
    pieces_header,
)
from ._types import BlockerReason, ModelOperationalStatus, TransferPriority
from ._wire import WireMessage, is_wire_message

__all__ = [
    "manifests_to_retire",
    # the node state machine, its inputs' types and its outputs
    "NodeMachine", "NodeStatistics", "Config", "GossipConfig", "SwarmConfig",
    "Output", "SendMessage", "ServeChunk", "StoreChunk", "InstallVariant",
    "ActivateVersion", "RemoveVersions", "DropPeer", "PersistLedger", "Notice", "NoticeKind",
    "DialPeer", "ClosePeer",
    # the overlay: whom a node keeps sessions with
    "LedgerConfig", "OverlayConfig", "OverlayFull", "OverlayStatistics", "PeerHint",
    # the wire: messages, codec, the secure session
    "WireMessage", "is_wire_message", "Piece", "SWARM_MESSAGES", "make_piece", "wire_size",
    "Request", "Requests", "Pieces", "MAX_RUN", "pieces_header",
    "PROTOCOL_VERSION", "DEFAULT_MAX_FRAME", "FrameDecoder", "decode", "encode", "frame",
    "decode_value", "encode_value", "message", "struct",
    "HANDSHAKE_VERSION", "HANDSHAKE_MAX_FRAME", "ConnectionRole", "ConnectionStatistics",
    "SecureConnection", "DEFAULT_REKEY_RECORDS", "DEFAULT_REKEY_BYTES",
    # identity and trust
    "SigningIdentity", "Certificate", "Revocation", "Role", "FleetTrust", "Verifier",
    "fingerprint", "verify_signature",
    # the ledger and what it holds
    "Ledger", "Entry", "EntryKind", "encoded_entry", "NodeRecord", "ModelState",
    "Suspicion", "Intent", "IntentKind", "Scope", "ScopeKind",
    "OnDegraded", "RolloutPolicy", "HLC",
    # manifests, chunking, variant selection
    "Manifest", "ManifestHead", "VariantHead", "BodyWant", "BodyAnswer", "BodyCancel",
    "FetchStatistics",
    "Variant", "FileEntry", "ChunkRef", "ChunkList", "SemVer", "HASH_SIZE",
    "GRPC_HEALTH_CHECK",
    "merkle_root",
    "validate_model_id", "validate_relative_path", "validate_version",
    "ChunkParams", "DEFAULT_PARAMS", "DEFAULT_WINDOW", "chunk_bytes", "chunk_matches",
    "chunk_stream", "chunk_view", "cut_view", "hash_chunk", "hash_cuts",
    "ACCELERATOR_KINDS", "Capabilities", "GpuInfo", "Requirements", "normalise_arch",
    "VariantChoice", "select_variant", "unmet_requirements",
    # the swarm, convergence and the seed API's types
    "SwarmEngine", "TransferProgress",
    "ModelConvergenceStatus", "ConvergenceBlocker", "RolloutState",
    "BlockerReason", "ModelOperationalStatus", "TransferPriority",
    # operator decisions (answers of the control API)
    "IntentView", "check_known", "count_targets", "describe", "find_node", "intent_views",
    "nodes_running",
    # the paths a model's migrator names (its wire is gRPC: agent/_grpc)
    "check_migrator_path", "validate_migrator_address",
    # errors
    "ShoalError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
    "MalformedMessage", "FrameTooLarge", "SignatureError", "UntrustedKey", "InvalidValue",
    "HostilePath", "ChunkIntegrityError", "ManifestConflict", "RequestRejected",
    "EmptyScope", "UnknownIntent", "UnknownModel", "UnknownNode", "UnknownVariant",
    "UnknownVersion",
]
