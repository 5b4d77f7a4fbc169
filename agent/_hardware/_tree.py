"""Files the probe reads, under a root path (``/`` live; a recorded tree in tests)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

__all__ = ["SystemTree"]


class SystemTree:
    """Read-only access to system files below ``root``. A file that is missing or
    unreadable reads as ``None``: the probe treats absence as an answer."""

    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)
        self.live = os.path.realpath(self.root) == "/"

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read_bytes(self, rel: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with open(self.path(rel), "rb") as f:
                return f.read(limit)
        except OSError:
            return None

    def read_text(self, rel: str) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def strings(self, rel: str) -> tuple[str, ...]:
        """A device-tree property: NUL-separated strings."""
        data = self.read_bytes(rel)
        if data is None:
            return ()
        return tuple(s.decode("utf-8", errors="replace") for s in data.split(b"\0") if s)

    def glob(self, pattern: str) -> list[str]:
        """Paths (relative to the root) matching ``pattern``."""
        base = str(self.root).rstrip("/")
        return sorted(p[len(base):] for p in glob.glob(str(self.path(pattern))))

    def meminfo_mb(self, key: str) -> int | None:
        """A ``/proc/meminfo`` field in MiB."""
        text = self.read_text("proc/meminfo")
        for line in (text or "").splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == key:
                parts = rest.split()
                if parts and parts[0].isdigit():
                    return int(parts[0]) // 1024     # kB -> MiB
        return None

    def online_cpus(self) -> int | None:
        """CPUs in ``/sys/devices/system/cpu/online`` (``0-5,8``)."""
        text = (self.read_text("sys/devices/system/cpu/online") or "").strip()
        if not text:
            return None
        n = 0
        try:
            for part in text.split(","):
                lo, _, hi = part.partition("-")
                n += int(hi or lo) - int(lo) + 1
        except ValueError:
            return None
        return n or None
