"""Small enums shared by the ledger, the swarm, convergence and the API."""

from __future__ import annotations

import enum

from ._errors import InvalidValue

__all__ = ["TransferPriority", "ModelOperationalStatus", "BlockerReason"]


class TransferPriority(enum.IntEnum):
    """Higher value wins: a critical transfer pre-empts a low one under a cap."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, text: str) -> TransferPriority:
        try:
            return cls[text.upper()]
        except KeyError:
            raise InvalidValue(f"priority must be one of critical, high, normal, low; "
                               f"not {text!r}") from None


class ModelOperationalStatus(enum.StrEnum):
    NOT_DEPLOYED = "not_deployed"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    OPERATIONAL = "operational"
    DEGRADED = "degraded"
    FAILED = "failed"


class BlockerReason(enum.StrEnum):
    NETWORK_PARTITION = "network_partition"
    INSUFFICIENT_STORAGE = "insufficient_storage"
    INSUFFICIENT_GPU_MEMORY = "insufficient_gpu_memory"
    TRANSFER_FAILED = "transfer_failed"
    DEPLOYMENT_FAILED = "deployment_failed"
    INCOMPATIBLE_CAPABILITIES = "incompatible_capabilities"
    NODE_BUSY = "node_busy"
    UNHEALTHY = "unhealthy"          # degraded: the variant's health check fails
    UNKNOWN = "unknown"
