"""What this node can run: CPU, memory, storage, GPUs and execution providers.

The probe reads psutil (CPU, RAM, free space under the data directory) and
NVML through ``pynvml`` (the ``nvidia-ml-py`` package) for GPUs. No GPU, no
driver or no library is a normal answer (``gpus == ()``), never an error;
``nvmlShutdown`` is only called after a successful ``nvmlInit``.

Execution providers are the ones really usable here: ``CPUExecutionProvider``
always, ``CUDAExecutionProvider`` when NVML saw a GPU, plus whatever
``onnxruntime.get_available_providers()`` reports when onnxruntime is
installed.

Any field can be overridden from the config (``[probe]`` table), for hardware
the probe cannot see and for tests; an override of ``gpus`` replaces the GPU
list (and, unless providers are overridden too, decides whether CUDA is listed).
"""

from __future__ import annotations

import importlib
import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from agent._errors import ConfigError
from protocol import Capabilities, GpuInfo, normalise_arch

__all__ = [
    "ProbeOverrides",
    "GpuProbe",
    "normalise_arch",
    "probe_gpus",
    "probe_providers",
    "probe",
]

log = logging.getLogger("shoal.probe")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"



@dataclass(frozen=True, slots=True)
class ProbeOverrides:
    """Values that replace what the probe measured (``None``: keep the probe's)."""

    cpu_arch: str | None = None
    cpu_cores: int | None = None
    ram_mb: int | None = None
    storage_free_mb: int | None = None
    gpus: tuple[GpuInfo, ...] | None = None
    execution_providers: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class GpuProbe:
    """What NVML said: the GPUs, and why there are none when there are none."""

    gpus: tuple[GpuInfo, ...] = ()
    status: str = "ok"   # "ok" | "no-library" | "no-driver" | "error: ..."
    driver: str = ""
    details: tuple[str, ...] = field(default=())


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def probe_gpus() -> GpuProbe:
    """Enumerate NVIDIA GPUs through NVML; never raises."""
    try:
        pynvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return GpuProbe(status="no-library")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        # NVMLError_LibraryNotFound / DriverNotLoaded: a machine without a GPU
        return GpuProbe(status=f"no-driver: {exc}")
    except OSError as exc:
        return GpuProbe(status=f"no-driver: {exc}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus: list[GpuInfo] = []
        notes: list[str] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc = f"{major}.{minor}"
            except pynvml.NVMLError as exc:
                cc = ""
                notes.append(f"GPU {index}: no compute capability ({exc})")
            gpus.append(GpuInfo(name=name, total_memory_mb=int(mem.total) // (1024 * 1024),
                                free_memory_mb=int(mem.free) // (1024 * 1024),
                                driver=driver, compute_capability=cc))
        return GpuProbe(tuple(gpus), "ok", driver, tuple(notes))
    except pynvml.NVMLError as exc:
        log.warning("NVML initialised but could not list GPUs: %s", exc)
        return GpuProbe(status=f"error: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.warning("nvmlShutdown failed: %s", exc)


def probe_providers(has_gpu: bool) -> tuple[str, ...]:
    """Execution providers usable here, preferred first, CPU always last."""
    found: list[str] = []
    try:
        ort: Any = importlib.import_module("onnxruntime")
        found = [str(p) for p in ort.get_available_providers()]
    except ImportError:
        pass
    except Exception as exc:  # a broken install must not stop the daemon
        log.warning("onnxruntime is installed but get_available_providers() failed: %s", exc)
    if has_gpu and CUDA_PROVIDER not in found:
        found.insert(0, CUDA_PROVIDER)
    found = [p for p in found if p != CPU_PROVIDER]
    return (*dict.fromkeys(found), CPU_PROVIDER)


def probe(data_dir: str, overrides: ProbeOverrides = ProbeOverrides(),
          gpu_probe: GpuProbe | None = None) -> Capabilities:
    """Probe this machine. ``data_dir`` must exist (free space is measured there)."""
    gpus_seen = gpu_probe if gpu_probe is not None else (
        GpuProbe() if overrides.gpus is not None else probe_gpus())
    gpus = overrides.gpus if overrides.gpus is not None else gpus_seen.gpus
    try:
        free_mb = int(psutil.disk_usage(data_dir).free) // (1024 * 1024)
    except OSError as exc:
        raise ConfigError(f"data_dir {data_dir!r}: cannot measure free space "
                          f"({exc.strerror or exc})") from None
    caps = Capabilities(
        cpu_arch=normalise_arch(platform.machine()),
        cpu_cores=int(psutil.cpu_count(logical=True) or 1),
        ram_mb=int(psutil.virtual_memory().total) // (1024 * 1024),
        storage_free_mb=free_mb,
        gpus=gpus,
        execution_providers=probe_providers(bool(gpus)),
    )
    return apply_overrides(caps, overrides)


def apply_overrides(caps: Capabilities, overrides: ProbeOverrides) -> Capabilities:
    changes: dict[str, Any] = {}
    if overrides.cpu_arch is not None:
        changes["cpu_arch"] = normalise_arch(overrides.cpu_arch)
    for name in ("cpu_cores", "ram_mb", "storage_free_mb", "gpus", "execution_providers"):
        value = getattr(overrides, name)
        if value is not None:
            changes[name] = value
    return replace(caps, **changes) if changes else caps


def overrides_from_mapping(table: Mapping[str, Any], where: str = "probe") -> ProbeOverrides:
    """Build overrides from a config table; bad keys/values raise ConfigError naming them."""
    known = {"cpu_arch", "cpu_cores", "ram_mb", "storage_free_mb", "gpus",
             "execution_providers"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    if "cpu_arch" in table:
        out["cpu_arch"] = _str(table["cpu_arch"], f"{where}.cpu_arch")
    for key in ("cpu_cores", "ram_mb", "storage_free_mb"):
        if key in table:
            out[key] = _nonneg_int(table[key], f"{where}.{key}", minimum=1 if key ==
                                   "cpu_cores" else 0)
    if "execution_providers" in table:
        eps = table["execution_providers"]
        if not isinstance(eps, list) or not all(isinstance(e, str) and e for e in eps):
            raise ConfigError(f"{where}.execution_providers: expected a list of provider "
                              f"names, got {eps!r}")
        out["execution_providers"] = tuple(eps)
    if "gpus" in table:
        gpus = table["gpus"]
        if not isinstance(gpus, list):
            raise ConfigError(f"{where}.gpus: expected an array of tables ([[probe.gpus]])")
        out["gpus"] = tuple(_gpu(g, f"{where}.gpus[{i}]") for i, g in enumerate(gpus))
    return ProbeOverrides(**out)


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _nonneg_int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _gpu(table: Any, key: str) -> GpuInfo:
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table")
    known = {"name", "total_memory_mb", "free_memory_mb", "driver", "compute_capability"}
    for k in table:
        if k not in known:
            raise ConfigError(f"{key}.{k}: unknown key (known: {', '.join(sorted(known))})")
    if "name" not in table or "total_memory_mb" not in table:
        raise ConfigError(f"{key}: name and total_memory_mb are required")
    total = _nonneg_int(table["total_memory_mb"], f"{key}.total_memory_mb", minimum=1)
    free = _nonneg_int(table.get("free_memory_mb", total), f"{key}.free_memory_mb")
    if free > total:
        raise ConfigError(f"{key}.free_memory_mb: {free} exceeds total_memory_mb {total}")
    driver = table.get("driver", "")
    cc = table.get("compute_capability", "")
    if not isinstance(driver, str):
        raise ConfigError(f"{key}.driver: expected a string, got {driver!r}")
    if not isinstance(cc, str):
        raise ConfigError(f"{key}.compute_capability: expected a string like \"8.7\", "
                          f"got {cc!r}")
    return GpuInfo(_str(table["name"], f"{key}.name"), total, free, driver, cc)
