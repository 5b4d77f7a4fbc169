"""shoal's daemon side. The public Python API is :mod:`agent.client`."""

from agent.client import (
    BlockerReason,
    ConvergenceBlocker,
    DistributionScope,
    ModelConvergenceStatus,
    ModelDistributionHandle,
    ModelOperationalStatus,
    NodeModelStatus,
    RolloutState,
    ShoalClient,
    TransferPriority,
)

__all__ = [
    "ShoalClient", "DistributionScope", "TransferPriority", "ModelDistributionHandle",
    "ModelConvergenceStatus", "ConvergenceBlocker", "BlockerReason", "NodeModelStatus",
    "ModelOperationalStatus", "RolloutState",
]
