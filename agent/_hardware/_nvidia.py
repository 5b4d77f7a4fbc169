"""Discrete NVIDIA GPUs through NVML, MIG instances as devices of their own.

A GPU in MIG mode is not one device: each MIG instance has its own memory and is
what a process is given, so the probe lists the instances (with their memory)
instead of the card. A GPU whose memory NVML does not report (NOT_SUPPORTED: the
integrated GPU of a Jetson Thor) is listed with 0 MiB and a note; the Jetson
back-end supplies its memory. ``nvmlShutdown`` is only called after ``nvmlInit``
succeeded.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from protocol import GpuInfo

from ._report import BackendReport

__all__ = ["probe_nvml"]

MiB = 1024 * 1024
MIG_ENABLED = 1   # NVML_DEVICE_MIG_ENABLE


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _load() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _memory(nv: Any, handle: Any) -> tuple[int, int] | None:
    try:
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
    except nv.NVMLError:
        return None
    return int(mem.total) // MiB, int(mem.free) // MiB


def _cc(nv: Any, handle: Any) -> str:
    try:
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
    except nv.NVMLError:
        return ""
    return f"{major}.{minor}"


def _mig_instances(nv: Any, handle: Any, driver: str, cc: str,
                   notes: list[str], index: int) -> list[GpuInfo] | None:
    """The MIG instances of ``handle``; None when MIG is off (or not supported)."""
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(handle)
    except nv.NVMLError:
        return None
    if current != MIG_ENABLED:
        return None
    out: list[GpuInfo] = []
    for i in range(int(nv.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except nv.NVMLError:
            continue                    # an empty slot
        mem = _memory(nv, mig)
        if mem is None:
            notes.append(f"GPU {index} MIG {i}: memory not reported")
            continue
        out.append(GpuInfo(_text(nv.nvmlDeviceGetName(mig)), mem[0], mem[1], driver, cc,
                           "cuda"))
    if not out:
        notes.append(f"GPU {index}: MIG mode with no instances created (nothing usable)")
    return out


def probe_nvml(nvml: Any | None = None) -> BackendReport:
    """Every NVIDIA GPU NVML sees (``nvml``: the ``pynvml`` module, or a stand-in in
    tests); never raises."""
    nv = nvml if nvml is not None else _load()
    if nv is None:
        return BackendReport("nvml", "absent: pynvml (nvidia-ml-py) is not installed")
    try:
        nv.nvmlInit()
    except Exception as exc:
        # NVMLError_LibraryNotFound / DriverNotLoaded: a machine without an NVIDIA GPU
        return BackendReport("nvml", f"absent: no NVIDIA driver ({exc})")
    try:
        driver = _text(nv.nvmlSystemGetDriverVersion())
        gpus: list[GpuInfo] = []
        notes: list[str] = [f"driver {driver}"]
        for index in range(int(nv.nvmlDeviceGetCount())):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            cc = _cc(nv, handle)
            migs = _mig_instances(nv, handle, driver, cc, notes, index)
            if migs is not None:
                gpus.extend(migs)
                continue
            name = _text(nv.nvmlDeviceGetName(handle))
            mem = _memory(nv, handle)
            if mem is None:
                notes.append(f"GPU {index} ({name}): memory not reported by NVML "
                             "(an integrated GPU: see the jetson back-end)")
                mem = (0, 0)
            gpus.append(GpuInfo(name, mem[0], mem[1], driver, cc, "cuda"))
        providers = ("CUDAExecutionProvider",) if gpus else ()
        return BackendReport("nvml", "ok", tuple(gpus), providers, tuple(notes))
    except Exception as exc:
        return BackendReport("nvml", f"error: NVML initialised but could not list GPUs: "
                                     f"{exc}")
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
