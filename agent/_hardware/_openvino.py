"""Intel devices (CPU, GPU, NPU) through OpenVINO, when the ``openvino`` package is
installed. Its GPUs are ``intel-gpu`` accelerators (memory from
``GPU_DEVICE_TOTAL_MEM_SIZE``; an integrated one shares system RAM), NPUs ``npu``
accelerators (no memory of their own). OpenVINO's CPU device is not an accelerator."""

from __future__ import annotations

import importlib
from typing import Any

from protocol import GpuInfo

from ._report import BackendReport

__all__ = ["probe_openvino"]

MiB = 1024 * 1024


def _load() -> Any | None:
    try:
        return importlib.import_module("openvino")
    except ImportError:
        return None
    except Exception:
        return None


def _prop(core: Any, device: str, name: str, default: Any) -> Any:
    try:
        return core.get_property(device, name)
    except Exception:
        return default


def probe_openvino(openvino: Any | None = None) -> BackendReport:
    """The OpenVINO devices here (``openvino``: the module, or a stand-in in tests)."""
    ov = openvino if openvino is not None else _load()
    if ov is None:
        return BackendReport("openvino", "absent: openvino is not installed")
    try:
        core = ov.Core()
        names = [str(d) for d in core.available_devices]
    except Exception as exc:
        return BackendReport("openvino", f"error: {exc}")
    devices: list[GpuInfo] = []
    notes: list[str] = []
    for dev in names:
        full = str(_prop(core, dev, "FULL_DEVICE_NAME", dev))
        notes.append(f"{dev}: {full}")
        if dev.split(".")[0] == "GPU":
            total = int(_prop(core, dev, "GPU_DEVICE_TOTAL_MEM_SIZE", 0)) // MiB
            integrated = str(_prop(core, dev, "DEVICE_TYPE", "")).upper().endswith(
                "INTEGRATED")
            devices.append(GpuInfo(full, total, total, "", "", "intel-gpu", integrated))
        elif dev.split(".")[0] == "NPU":
            devices.append(GpuInfo(full, 0, 0, "", "", "npu"))
    status = "ok" if names else "absent: OpenVINO sees no device"
    return BackendReport("openvino", status, tuple(devices), (), tuple(notes))
