"""Variant selection: which variant of a manifest this node should run."""

from __future__ import annotations

from dataclasses import dataclass

from ._capabilities import Capabilities, Requirements
from ._manifest import Manifest
from ._manifest_head import ManifestHead
from ._types import BlockerReason

__all__ = ["VariantChoice", "select_variant", "unmet_requirements"]


@dataclass(frozen=True, slots=True)
class VariantChoice:
    variant_id: str | None
    reason: BlockerReason | None
    detail: str


def unmet_requirements(req: Requirements, caps: Capabilities) -> dict[str, str]:
    """What ``caps`` lacks for ``req``: requirement name -> human explanation."""
    unmet: dict[str, str] = {}
    if req.cpu_arch and caps.cpu_arch not in req.cpu_arch:
        unmet["cpu_arch"] = f"needs cpu {'/'.join(req.cpu_arch)}, node is {caps.cpu_arch}"
    if req.accelerators and not set(req.accelerators) & caps.accelerator_kinds:
        unmet["accelerator"] = (f"needs a {' or '.join(req.accelerators)} device, node has "
                                f"{', '.join(sorted(caps.accelerator_kinds)) or 'none'}")
    if req.min_gpu_mem_gb > 0 and caps.max_gpu_memory_gb < req.min_gpu_mem_gb:
        unmet["gpu"] = (f"needs {req.min_gpu_mem_gb:g} GiB of GPU memory, node has "
                        f"{caps.max_gpu_memory_gb:g} GiB")
    if req.execution_providers and not set(req.execution_providers) & set(
            caps.execution_providers):
        unmet["execution_providers"] = (f"needs one of {', '.join(req.execution_providers)}; "
                                        f"node has {', '.join(caps.execution_providers) or 'none'}")
    if req.min_ram_gb > 0 and caps.ram_mb / 1024.0 < req.min_ram_gb:
        unmet["ram"] = f"needs {req.min_ram_gb:g} GiB of RAM, node has {caps.ram_mb / 1024:g} GiB"
    if caps.storage_free_mb < req.min_storage_mb:
        unmet["storage"] = (f"needs {req.min_storage_mb} MB free, node has "
                            f"{caps.storage_free_mb} MB")
    return unmet


def select_variant(manifest: Manifest | ManifestHead, capabilities: Capabilities | None,
                   explicit: str | None) -> VariantChoice:
    """The best variant (manifest preference order) whose requirements ``capabilities``
    meet; with ``explicit``, that variant or a blocker saying why not.

    The blocker is ``insufficient_gpu_memory`` / ``insufficient_storage`` when that
    is the only thing missing (for the explicit variant, or for every variant),
    else ``incompatible_capabilities``.
    """
    if explicit is not None:
        candidates = [v for v in manifest.variants if v.variant_id == explicit]
        if not candidates:
            return VariantChoice(None, BlockerReason.INCOMPATIBLE_CAPABILITIES,
                                 f"{manifest.model_id} {manifest.version} has no variant "
                                 f"{explicit!r}")
    else:
        candidates = list(manifest.variants)
    if capabilities is None:
        if explicit is not None:
            return VariantChoice(explicit, None, "explicit variant; capabilities unknown")
        return VariantChoice(None, BlockerReason.UNKNOWN, "capabilities not probed yet")
    misses: list[tuple[str, dict[str, str]]] = []
    for v in candidates:
        unmet = unmet_requirements(v.requirements, capabilities)
        if not unmet:
            return VariantChoice(v.variant_id, None, "")
        misses.append((v.variant_id, unmet))
    kinds = {k for _, unmet in misses for k in unmet}
    reason = BlockerReason.INCOMPATIBLE_CAPABILITIES
    if kinds == {"gpu"}:
        reason = BlockerReason.INSUFFICIENT_GPU_MEMORY
    elif kinds == {"storage"}:
        reason = BlockerReason.INSUFFICIENT_STORAGE
    detail = "; ".join(f"{vid}: {', '.join(u.values())}" for vid, u in misses)
    return VariantChoice(None, reason, detail)
