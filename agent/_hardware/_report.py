"""What one probe back-end saw."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import GpuInfo

__all__ = ["BackendReport"]


@dataclass(frozen=True, slots=True)
class BackendReport:
    """One back-end's answer: ``status`` is ``ok``, ``absent: WHY`` (library or device
    not there: a normal answer) or ``error: WHY`` (there, but it failed)."""

    name: str                       # "jetson" | "nvml" | "openvino" | "amdsmi" | ...
    status: str
    devices: tuple[GpuInfo, ...] = ()
    providers: tuple[str, ...] = ()  # execution providers this back-end makes usable
    details: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        """One line for ``shoal status`` / ``shoal probe``."""
        if not self.ok:
            return f"{self.name}: {self.status}"
        devs = ", ".join(f"{g.name} ({g.kind}, {g.total_memory_mb} MiB"
                         f"{' unified' if g.unified_memory else ''})" for g in self.devices)
        return f"{self.name}: {devs or 'no device'}"
