"""AMD GPUs through ``amdsmi`` (ROCm), when it is installed: ``rocm`` accelerators
with their VRAM; the graphics target (``gfx90a``) stands where NVIDIA has a compute
capability."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from protocol import GpuInfo

from ._report import BackendReport

__all__ = ["probe_amdsmi"]

MiB = 1024 * 1024


def _load() -> Any | None:
    try:
        return importlib.import_module("amdsmi")
    except ImportError:
        return None
    except Exception:
        return None


def probe_amdsmi(amdsmi: Any | None = None) -> BackendReport:
    """Every AMD GPU amdsmi sees (``amdsmi``: the module, or a stand-in in tests)."""
    smi = amdsmi if amdsmi is not None else _load()
    if smi is None:
        return BackendReport("amdsmi", "absent: amdsmi is not installed")
    try:
        smi.amdsmi_init()
    except Exception as exc:
        return BackendReport("amdsmi", f"absent: no AMD GPU driver ({exc})")
    try:
        vram = smi.AmdSmiMemoryType.VRAM
        gpus: list[GpuInfo] = []
        for h in smi.amdsmi_get_processor_handles():
            asic = smi.amdsmi_get_gpu_asic_info(h)
            total = int(smi.amdsmi_get_gpu_memory_total(h, vram))
            used = int(smi.amdsmi_get_gpu_memory_usage(h, vram))
            try:
                driver = str(smi.amdsmi_get_gpu_driver_info(h).get("driver_version", ""))
            except Exception:
                driver = ""
            gpus.append(GpuInfo(str(asic.get("market_name", "AMD GPU")), total // MiB,
                                max(0, total - used) // MiB, driver,
                                str(asic.get("target_graphics_version", "")), "rocm"))
        return BackendReport("amdsmi", "ok" if gpus else "absent: no AMD GPU",
                             tuple(gpus))
    except Exception as exc:
        return BackendReport("amdsmi", f"error: {exc}")
    finally:
        with contextlib.suppress(Exception):
            smi.amdsmi_shut_down()
