"""What a node can run (its probe result) and what a model variant needs.

An accelerator is a :class:`GpuInfo` of one *kind* (:data:`ACCELERATOR_KINDS`):
``cuda`` (an NVIDIA GPU, a MIG instance of one, or a Jetson's integrated GPU),
``rocm`` (an AMD GPU), ``intel-gpu`` and ``npu`` (OpenVINO devices). Its memory is
what a model may use on it; ``unified_memory`` says that memory is the system's RAM
shared with the CPU (a Jetson), so it is counted once as RAM and once as GPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ._codec import appended, struct
from ._errors import InvalidValue

__all__ = ["ACCELERATOR_KINDS", "normalise_arch", "GpuInfo", "Capabilities", "Requirements"]

ACCELERATOR_KINDS = ("cuda", "rocm", "intel-gpu", "npu")


@struct
@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    total_memory_mb: int
    free_memory_mb: int
    driver: str
    compute_capability: str  # "9.0"; "" when unknown
    kind: str = appended("cuda")          # one of ACCELERATOR_KINDS
    unified_memory: bool = appended(False)  # its memory is the system RAM (the CPU's too)


@struct
@dataclass(frozen=True, slots=True)
class Capabilities:
    """A node's hardware as its probe (or its config overrides) saw it."""

    cpu_arch: str  # normalised: "x86_64", "aarch64", ...
    cpu_cores: int
    ram_mb: int
    storage_free_mb: int
    gpus: tuple[GpuInfo, ...]
    execution_providers: tuple[str, ...]  # e.g. ("CUDAExecutionProvider", "CPUExecutionProvider")

    @property
    def max_gpu_memory_gb(self) -> float:
        """Total memory of the largest GPU in GiB (0.0 with no GPU)."""
        return max((g.total_memory_mb for g in self.gpus), default=0) / 1024.0

    @property
    def accelerator_kinds(self) -> frozenset[str]:
        return frozenset(g.kind for g in self.gpus)


@struct
@dataclass(frozen=True, slots=True)
class Requirements:
    """What a variant needs. Empty tuples / zeros mean "no requirement"."""

    cpu_arch: tuple[str, ...] = ()
    min_gpu_mem_gb: float = 0.0
    execution_providers: tuple[str, ...] = ()  # at least one of these must be usable
    precision: str = "fp32"
    min_ram_gb: float = 0.0
    min_storage_mb: int = 0
    accelerators: tuple[str, ...] = appended(())  # a device of one of these kinds

    def __post_init__(self) -> None:
        if self.min_gpu_mem_gb < 0 or self.min_ram_gb < 0 or self.min_storage_mb < 0:
            raise InvalidValue("requirements cannot be negative")
        for kind in self.accelerators:
            if kind not in ACCELERATOR_KINDS:
                raise InvalidValue(f"unknown accelerator kind {kind!r} (known: "
                                   f"{', '.join(ACCELERATOR_KINDS)})")
        if self.precision not in ("fp32", "fp16", "bf16", "int8", "int4", "fp8"):
            raise InvalidValue(f"unknown precision {self.precision!r}")


_ARCH = MappingProxyType({
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "em64t": "x86_64",
    "aarch64": "aarch64", "arm64": "aarch64", "armv8": "aarch64", "armv8l": "aarch64",
    "armv7l": "armv7l", "armv7": "armv7l", "armhf": "armv7l",
    "i386": "x86", "i686": "x86", "x86": "x86",
    "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x",
})


def normalise_arch(machine: str) -> str:
    """``platform.machine()`` -> shoal's arch name (x86_64, aarch64, ...)."""
    key = machine.strip().lower()
    return _ARCH.get(key, key)
