"""Library answers recorded with a machine's tree, replayed.

``shoal probe --record DIR`` writes, next to the files the probe read, what each
library back-end answered (``.shoal/nvml.json``, ``.shoal/openvino.json``). Probing
that tree later (``shoal probe --root DIR``, or a test) replays them through these
stand-ins, which answer the few calls the back-ends make exactly as recorded. The
back-ends' own code runs unchanged on them: only the library is stood in for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from protocol import GpuInfo

__all__ = ["RecordedNvml", "RecordedOpenVino", "record_nvml", "record_openvino"]


class _NvmlError(Exception):
    pass


class _Mem:
    def __init__(self, total: int, free: int) -> None:
        self.total, self.free = total, free


class RecordedNvml:
    """Stands in for ``pynvml`` from a recording::

        {"driver": "550.54", "devices": [{"name": ..., "memory": [total, free] | null,
          "cc": [8, 0] | null, "mig": [{"name": ..., "memory": [total, free]}] | null}]}
    """

    NVMLError = _NvmlError

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def nvmlInit(self) -> None:
        if self.data.get("init_error"):
            raise _NvmlError(self.data["init_error"])

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self.data.get("driver", ""))

    def nvmlDeviceGetCount(self) -> int:
        return len(self.data.get("devices", ()))

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Mapping[str, Any]:
        dev: Mapping[str, Any] = self.data["devices"][i]
        return dev

    def nvmlDeviceGetName(self, h: Mapping[str, Any]) -> str:
        return str(h["name"])

    def nvmlDeviceGetMemoryInfo(self, h: Mapping[str, Any]) -> _Mem:
        mem = h.get("memory")
        if mem is None:
            raise _NvmlError("Not Supported")
        return _Mem(int(mem[0]), int(mem[1]))

    def nvmlDeviceGetCudaComputeCapability(self, h: Mapping[str, Any]) -> tuple[int, int]:
        cc = h.get("cc")
        if cc is None:
            raise _NvmlError("Not Supported")
        return int(cc[0]), int(cc[1])

    def nvmlDeviceGetMigMode(self, h: Mapping[str, Any]) -> tuple[int, int]:
        if "mig" not in h or h["mig"] is None:
            raise _NvmlError("Not Supported")
        return 1, 1

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Mapping[str, Any]) -> int:
        return int(h.get("mig_slots", len(h["mig"])))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Mapping[str, Any],
                                            i: int) -> Mapping[str, Any]:
        if i >= len(h["mig"]):
            raise _NvmlError("Not Found")
        mig: Mapping[str, Any] = h["mig"][i]
        return mig


class RecordedOpenVino:
    """Stands in for ``openvino`` from a recording::

        {"devices": {"GPU": {"FULL_DEVICE_NAME": ..., "GPU_DEVICE_TOTAL_MEM_SIZE": ...,
                             "DEVICE_TYPE": "Type.INTEGRATED"}, "NPU": {...}, ...}}
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def Core(self) -> RecordedOpenVino:
        return self

    @property
    def available_devices(self) -> list[str]:
        return list(self.data.get("devices", {}))

    def get_property(self, device: str, name: str) -> Any:
        return self.data["devices"][device][name]


def record_nvml(gpus: tuple[GpuInfo, ...], driver: str) -> str:
    """A recording of what NVML answered (as the back-end listed it)."""
    def cc(g: GpuInfo) -> list[int] | None:
        return [int(x) for x in g.compute_capability.split(".")] if g.compute_capability \
            else None
    return json.dumps({"driver": driver, "devices": [
        {"name": g.name, "memory": [g.total_memory_mb << 20, g.free_memory_mb << 20],
         "cc": cc(g)} for g in gpus]}, indent=1)


def record_openvino(ov: Any) -> str:
    core = ov.Core()
    out: dict[str, dict[str, Any]] = {}
    for dev in core.available_devices:
        props: dict[str, Any] = {}
        for name in ("FULL_DEVICE_NAME", "GPU_DEVICE_TOTAL_MEM_SIZE", "DEVICE_TYPE"):
            try:
                props[name] = str(core.get_property(dev, name)) if name != \
                    "GPU_DEVICE_TOTAL_MEM_SIZE" else int(core.get_property(dev, name))
            except Exception:
                continue
        out[str(dev)] = props
    return json.dumps({"devices": out}, indent=1)
