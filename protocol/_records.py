"""What one node says about itself: its :class:`NodeRecord`, one :class:`ModelState`
per model, and the :class:`Suspicion` s of its silent direct peers.

Only the node a record describes writes it (``_ledger``: a newer counter replaces
the older record). Intents read records to match scopes (``_intents``), the ledger
holds them, convergence counts them; none of them writes one but the node itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._capabilities import Capabilities
from ._codec import struct
from ._types import BlockerReason, ModelOperationalStatus

__all__ = ["ModelState", "Suspicion", "NodeRecord"]


@struct
@dataclass(frozen=True, slots=True)
class ModelState:
    """One model as its node reports it."""

    model_id: str
    version: str                       # "" when nothing is installed
    variant_id: str
    status: ModelOperationalStatus
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_reused: int = 0
    bytes_fetched: int = 0
    blocker: BlockerReason | None = None
    blocker_detail: str = ""
    blocker_since: float = 0.0
    started_at: float = 0.0            # when the current transfer began
    updated_at: float = 0.0
    intent_id: str = ""                # the intent being carried out
    installed: tuple[str, ...] = ()    # versions on disk (rollback targets)
    active_version: str = ""           # the version running now ("" when none)


@struct
@dataclass(frozen=True, slots=True)
class Suspicion:
    """A direct peer this node has not heard from for ``suspect_after`` seconds.

    ``counter`` is the peer's record counter this node held when the suspicion
    began: a newer record of the peer makes the suspicion stale (the peer spoke
    since). ``since`` is when the silence began (the suspecting node's ``now``)."""

    node_id: str
    counter: int
    since: float


@struct
@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node says about itself. Only its owner writes it."""

    name: str
    formation: str
    capabilities: Capabilities | None
    address: str
    models: tuple[ModelState, ...]     # sorted by model id
    suspects: tuple[Suspicion, ...]    # direct peers silent for long, by node id
    written_at: float

    def model(self, model_id: str) -> ModelState | None:
        for m in self.models:
            if m.model_id == model_id:
                return m
        return None

