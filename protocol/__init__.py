"""shoal's protocol: everything that decides, and no I/O.

The node state machine (:class:`NodeMachine`) takes time, randomness and
messages as inputs and returns outputs (messages to send, chunks to store,
versions to install); ``agent/`` drives it with real sockets and disks,
``sim/`` with a virtual network. The names below are the public surface; the
``_modules`` behind them are private.
"""

from ._capabilities import Capabilities, GpuInfo, Requirements
from ._chunking import DEFAULT_PARAMS, ChunkParams, chunk_bytes, chunk_matches, chunk_stream
from ._codec import PROTOCOL_VERSION, FrameDecoder, decode, encode, frame
from ._config import Config, GossipConfig, SwarmConfig
from ._convergence import ConvergenceBlocker, ModelConvergenceStatus, RolloutState
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
    DropPeer,
    InstallVariant,
    Notice,
    Output,
    SendMessage,
    ServeChunk,
    StoreChunk,
)
from ._identity import Certificate, FleetTrust, Revocation, Role, SigningIdentity, fingerprint
from ._intents import Intent, IntentKind, Scope, ScopeKind
from ._ledger import Ledger, ModelState, NodeRecord
from ._manifest import ChunkRef, FileEntry, Manifest, SemVer, Variant
from ._node import NodeMachine, NodeStatistics
from ._selection import VariantChoice, select_variant
from ._swarm import SwarmEngine, TransferProgress, make_piece
from ._types import BlockerReason, ModelOperationalStatus, TransferPriority

__all__ = [
    "ActivateVersion", "BlockerReason", "Capabilities", "Certificate", "ChunkIntegrityError",
    "ChunkParams", "ChunkRef", "Config", "ConvergenceBlocker", "DEFAULT_PARAMS", "DropPeer",
    "EmptyScope", "FileEntry", "FleetTrust", "FrameDecoder", "FrameTooLarge", "GossipConfig",
    "GpuInfo",
    "HostilePath", "InstallVariant", "Intent", "IntentKind", "InvalidValue", "Ledger",
    "LocalProtocolError", "MalformedMessage", "ManifestConflict", "Manifest",
    "ModelConvergenceStatus",
    "ModelOperationalStatus", "ModelState", "NodeMachine", "NodeRecord", "NodeStatistics",
    "Notice", "Output", "PROTOCOL_VERSION", "ProtocolError", "RemoteProtocolError",
    "RequestRejected", "Requirements", "Revocation", "Role", "RolloutState", "Scope",
    "ScopeKind", "SemVer",
    "SendMessage",
    "ServeChunk", "ShoalError", "SignatureError", "SigningIdentity", "StoreChunk", "SwarmConfig",
    "SwarmEngine", "TransferPriority", "TransferProgress",
    "UnknownIntent", "UnknownModel", "UnknownNode", "UnknownVariant", "UnknownVersion",
    "UntrustedKey", "Variant",
    "VariantChoice", "chunk_bytes", "chunk_matches", "chunk_stream", "decode", "encode",
    "fingerprint", "frame", "make_piece", "select_variant",
]
