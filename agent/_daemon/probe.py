"""What this node can run: CPU, memory, storage, accelerators and execution providers.

Theory of operation
-------------------
The probe reads the machine through a :class:`~agent._hardware.SystemTree` (files
under a root: ``/`` on a live node) and the optional libraries of its back-ends
(``agent/_hardware``): the device tree of an NVIDIA Jetson, NVML for discrete
NVIDIA GPUs and their MIG instances, OpenVINO for Intel GPUs and NPUs, amdsmi for
AMD GPUs, and onnxruntime for the execution providers it was built with. Each
back-end answers a :class:`~agent._hardware.BackendReport`; a missing library or
device is a normal answer, never an error. CPU architecture, cores and RAM come from
the tree (``/proc/meminfo``, ``/sys/devices/system/cpu/online``), free storage from
the data directory.

Accelerators: the Jetson's integrated GPU (unified memory) replaces an NVML entry
that has no memory (Thor); otherwise every back-end's devices are listed.

Execution providers are the ones really usable here, preferred first, CPU last:
CUDA (and TensorRT) only with a CUDA device, ROCm / MIGraphX only with an AMD GPU,
OpenVINO only when onnxruntime lists it *and* the OpenVINO runtime loads and sees a
device; onnxruntime's other providers as it lists them. A CUDA device brings
``CUDAExecutionProvider`` even without onnxruntime installed (the model may bring
its own runtime), as a Jetson's ``libnvinfer`` brings TensorRT.

A tree other than ``/`` is a *recorded* machine (``shoal probe --record DIR``): its
library answers are replayed from ``.shoal/*.json`` where recorded, and the live
libraries of this machine are never asked.

Any field can be overridden from the config (``[probe]`` table), for hardware
the probe cannot see and for tests; an override of ``gpus`` replaces the GPU
list (and, unless providers are overridden too, decides whether CUDA is listed).
"""

from __future__ import annotations

import importlib
import json
import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from agent._errors import ConfigError
from agent._hardware import (
    BackendReport,
    JetsonInfo,
    SystemTree,
    probe_amdsmi,
    probe_jetson,
    probe_nvml,
    probe_openvino,
)
from agent._hardware._replay import RecordedNvml, RecordedOpenVino, record_nvml
from protocol import ACCELERATOR_KINDS, Capabilities, GpuInfo, normalise_arch

__all__ = [
    "Backends",
    "ProbeOverrides",
    "ProbeReport",
    "normalise_arch",
    "probe",
    "probe_machine",
    "record_tree",
    "usable_providers",
]

log = logging.getLogger("shoal.probe")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"
#: providers in the order they are preferred; any other comes after them, CPU last
PREFERENCE = ("TensorrtExecutionProvider", CUDA_PROVIDER, "MIGraphXExecutionProvider",
              "ROCMExecutionProvider", OPENVINO_PROVIDER)
NEEDS = {"TensorrtExecutionProvider": "cuda", CUDA_PROVIDER: "cuda",
         "MIGraphXExecutionProvider": "rocm", "ROCMExecutionProvider": "rocm"}
MACHINE_FILE = ".shoal/machine"      # ``uname -m`` of a recorded tree


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
class Backends:
    """The libraries the back-ends ask (each the module, a recorded stand-in, or None:
    absent). ``onnxruntime``: the providers it lists, or None when not installed."""

    nvml: Any | None = None
    openvino: Any | None = None
    amdsmi: Any | None = None
    onnxruntime: tuple[str, ...] | None = None
    why_absent: str = ""     # said for each absent library instead of "not installed"

    @classmethod
    def installed(cls) -> Backends:
        """The libraries installed here (a library that fails to import is absent)."""
        def load(name: str) -> Any | None:
            try:
                return importlib.import_module(name)
            except Exception:
                return None
        ort: tuple[str, ...] | None = None
        mod = load("onnxruntime")
        if mod is not None:
            try:
                ort = tuple(str(p) for p in mod.get_available_providers())
            except Exception as exc:
                log.warning("onnxruntime is installed but get_available_providers() "
                            "failed: %s", exc)
        return cls(load("pynvml"), load("openvino"), load("amdsmi"), ort)

    @classmethod
    def recorded(cls, tree: SystemTree) -> Backends:
        """The library answers recorded with ``tree`` (none recorded: absent)."""
        def rec(name: str) -> Any | None:
            text = tree.read_text(f".shoal/{name}.json")
            return None if text is None else json.loads(text)
        nv, ov, ort = rec("nvml"), rec("openvino"), rec("onnxruntime")
        return cls(RecordedNvml(nv) if nv is not None else None,
                   RecordedOpenVino(ov) if ov is not None else None, None,
                   tuple(ort) if ort is not None else None,
                   why_absent="not recorded with this tree")


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What the probe saw and through what (``shoal probe``, ``shoal status``)."""

    capabilities: Capabilities
    backends: tuple[BackendReport, ...]
    jetson: JetsonInfo | None = None
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> list[str]:
        c = self.capabilities
        gpus = "; ".join(f"{g.name} ({g.kind}, {g.total_memory_mb} MiB"
                         f"{', unified' if g.unified_memory else ''}"
                         f"{', cc ' + g.compute_capability if g.compute_capability else ''})"
                         for g in c.gpus) or "none"
        return [f"cpu {c.cpu_arch} x{c.cpu_cores}, ram {c.ram_mb} MiB, "
                f"storage free {c.storage_free_mb} MiB",
                f"accelerators: {gpus}",
                f"providers: {', '.join(c.execution_providers)}",
                *(f"  {b.summary()}" for b in self.backends), *self.notes]

    def as_dict(self) -> dict[str, Any]:
        return {"backends": {b.name: {"status": b.status, "devices": len(b.devices),
                                      "providers": list(b.providers),
                                      "details": list(b.details)}
                             for b in self.backends},
                "jetson": None if self.jetson is None else {
                    "model": self.jetson.model, "soc": self.jetson.soc,
                    "l4t": self.jetson.l4t, "jetpack": self.jetson.jetpack},
                "notes": list(self.notes)}


def usable_providers(ort: tuple[str, ...] | None, kinds: frozenset[str],
                     brought: tuple[str, ...], openvino_ok: bool
                     ) -> tuple[tuple[str, ...], list[str]]:
    """The providers really usable here (module doc), and notes on those dropped."""
    listed = list(dict.fromkeys([*brought, *(ort or ())]))
    notes: list[str] = []
    keep: list[str] = []
    for p in listed:
        need = NEEDS.get(p)
        if need is not None and need not in kinds:
            notes.append(f"{p} is listed by onnxruntime but there is no {need} device")
        elif p == OPENVINO_PROVIDER and not openvino_ok:
            notes.append(f"{p} is listed by onnxruntime but the OpenVINO runtime does "
                         "not load or sees no device")
        elif p != CPU_PROVIDER:
            keep.append(p)
    if "cuda" in kinds and CUDA_PROVIDER not in keep:
        keep.append(CUDA_PROVIDER)
    rank = {p: i for i, p in enumerate(PREFERENCE)}
    keep.sort(key=lambda p: rank.get(p, len(PREFERENCE)))
    return (*keep, CPU_PROVIDER), notes


def probe_machine(data_dir: str, overrides: ProbeOverrides = ProbeOverrides(), *,
                  root: str | Path = "/", backends: Backends | None = None) -> ProbeReport:
    """Probe the machine whose files are under ``root`` (``/``: this one). ``data_dir``
    must exist (free space is measured there)."""
    tree = SystemTree(root)
    libs = backends if backends is not None else (
        Backends.installed() if tree.live else Backends.recorded(tree))
    jetson_report, jetson = probe_jetson(tree)

    def absent(name: str, report: BackendReport) -> BackendReport:
        if libs.why_absent and report.status.startswith("absent"):
            return BackendReport(name, f"absent: {libs.why_absent}")
        return report

    reports = [jetson_report,
               absent("nvml", probe_nvml(libs.nvml) if libs.nvml is not None
                      else BackendReport("nvml", "absent: pynvml (nvidia-ml-py) is not "
                                                 "installed")),
               absent("openvino", probe_openvino(libs.openvino) if libs.openvino is not None
                      else BackendReport("openvino", "absent: openvino is not installed")),
               absent("amdsmi", probe_amdsmi(libs.amdsmi) if libs.amdsmi is not None
                      else BackendReport("amdsmi", "absent: amdsmi is not installed"))]
    devices: list[GpuInfo] = []
    for r in reports:
        for g in r.devices:
            if jetson is not None and r.name == "nvml" and g.total_memory_mb == 0:
                continue      # the Jetson back-end has this GPU, with its memory
            devices.append(g)
    gpus = overrides.gpus if overrides.gpus is not None else tuple(devices)
    kinds = frozenset(g.kind for g in gpus)
    brought = tuple(p for r in reports for p in r.providers)
    ov = next(r for r in reports if r.name == "openvino")
    providers, notes = usable_providers(libs.onnxruntime, kinds, brought, ov.ok)
    try:
        free_mb = int(psutil.disk_usage(data_dir).free) // (1024 * 1024)
    except OSError as exc:
        raise ConfigError(f"data_dir {data_dir!r}: cannot measure free space "
                          f"({exc.strerror or exc})") from None
    recorded_arch = (tree.read_text(MACHINE_FILE) or "").strip()
    arch = recorded_arch or (platform.machine() if tree.live else "unknown")
    cores = tree.online_cpus() or (int(psutil.cpu_count(logical=True) or 1)
                                   if tree.live else 1)
    ram = tree.meminfo_mb("MemTotal") or (
        int(psutil.virtual_memory().total) // (1024 * 1024) if tree.live else 0)
    caps = Capabilities(cpu_arch=normalise_arch(arch), cpu_cores=cores, ram_mb=ram,
                        storage_free_mb=free_mb, gpus=gpus, execution_providers=providers)
    if libs.onnxruntime is None:
        notes.append("onnxruntime: " + (libs.why_absent or "not installed"))
    return ProbeReport(apply_overrides(caps, overrides), tuple(reports), jetson,
                       tuple(notes))


def probe(data_dir: str, overrides: ProbeOverrides = ProbeOverrides(), *,
          root: str | Path = "/", backends: Backends | None = None) -> Capabilities:
    """This machine's capabilities (:func:`probe_machine`)."""
    return probe_machine(data_dir, overrides, root=root, backends=backends).capabilities


#: the files a recording copies (device tree, L4T release, memory, CPUs), and the
#: library paths it notes (as empty files: only their presence is read)
_RECORDED_FILES = ("proc/device-tree/model", "proc/device-tree/compatible",
                   "etc/nv_tegra_release", "proc/meminfo", "sys/devices/system/cpu/online")


def record_tree(dest: str | Path, report: ProbeReport,
                backends: Backends | None = None) -> list[str]:
    """Record this machine into ``dest`` so that probing ``dest`` later answers what
    probing it did (``shoal probe --record``). Returns the paths written."""
    from agent._hardware._jetson import CUDART, NVINFER
    tree = SystemTree("/")
    out = Path(dest)
    written: list[str] = []
    for rel in _RECORDED_FILES:
        data = tree.read_bytes(rel)
        if data is not None:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(rel)
    for pattern in (*CUDART, *NVINFER):
        for rel in tree.glob(pattern):
            target = out / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
            written.append(rel.lstrip("/"))
    meta = out / ".shoal"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "machine").write_text(platform.machine() + "\n")
    written.append(MACHINE_FILE)
    nvml = next((b for b in report.backends if b.name == "nvml"), None)
    if nvml is not None and nvml.ok:
        driver = next((d[len("driver "):] for d in nvml.details if d.startswith("driver ")),
                      "")
        (meta / "nvml.json").write_text(record_nvml(nvml.devices, driver))
        written.append(".shoal/nvml.json")
    libs = backends if backends is not None else Backends.installed()
    if libs.openvino is not None and next(
            (b.ok for b in report.backends if b.name == "openvino"), False):
        from agent._hardware._replay import record_openvino
        (meta / "openvino.json").write_text(record_openvino(libs.openvino))
        written.append(".shoal/openvino.json")
    if libs.onnxruntime is not None:
        (meta / "onnxruntime.json").write_text(json.dumps(list(libs.onnxruntime)))
        written.append(".shoal/onnxruntime.json")
    return written


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
    known = {"name", "total_memory_mb", "free_memory_mb", "driver", "compute_capability",
             "kind", "unified_memory"}
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
    kind = table.get("kind", "cuda")
    if kind not in ACCELERATOR_KINDS:
        raise ConfigError(f"{key}.kind: expected one of {', '.join(ACCELERATOR_KINDS)}, "
                          f"got {kind!r}")
    unified = table.get("unified_memory", False)
    if not isinstance(unified, bool):
        raise ConfigError(f"{key}.unified_memory: expected true or false, got {unified!r}")
    return GpuInfo(_str(table["name"], f"{key}.name"), total, free, driver, cc, kind,
                   unified)
