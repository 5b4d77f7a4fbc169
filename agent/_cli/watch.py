"""Live terminal views of a rollout (``shoal status MODEL VERSION --watch``).

Everything here is a pure function of data the control socket returns — a
:class:`~agent.client.ModelConvergenceStatus` and the node records of the
answering node's ledger — so a view can be rendered into a fixed-size
``rich.console.Console(record=True)`` and checked as text. The CLI redraws
:func:`fleet_view` in place (``rich.live.Live``) on a terminal; elsewhere it
prints :func:`plain_rows`, one colourless line per node, so a log file or a pipe
gets stable, grep-able text.

Rates are the one thing the records do not carry: :class:`RateTracker` derives
them from successive ``bytes_done`` readings (an exponentially weighted mean, so
one slow poll does not make the column jump).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agent.client import ModelConvergenceStatus
from protocol import ModelOperationalStatus, NodeRecord

__all__ = ["NodeRow", "RateTracker", "fleet_view", "human_bytes", "human_eta", "node_rows",
           "plain_rows", "summary_line"]

_STATE_STYLE = {
    ModelOperationalStatus.OPERATIONAL: "green",
    ModelOperationalStatus.DEGRADED: "yellow",
    ModelOperationalStatus.DOWNLOADING: "cyan",
    ModelOperationalStatus.LOADING: "cyan",
    ModelOperationalStatus.FAILED: "bold red",
    ModelOperationalStatus.NOT_DEPLOYED: "dim",
}


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node's line in the fleet table."""

    node_id: str
    name: str
    formation: str
    variant_id: str
    state: str                 # ModelOperationalStatus value, or "pending"
    bytes_done: int
    bytes_total: int
    rate: float | None         # bytes/s, None: not measured yet
    blocker: str               # "" or "reason: detail"

    @property
    def fraction(self) -> float:
        if self.state in ("operational", "degraded"):
            return 1.0
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0


@dataclass
class RateTracker:
    """Per-node transfer rate from successive ``bytes_done`` readings (EWMA)."""

    alpha: float = 0.5
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)
    _rate: dict[str, float] = field(default_factory=dict)

    def observe(self, node_id: str, bytes_done: int, now: float) -> float | None:
        prev = self._last.get(node_id)
        self._last[node_id] = (now, bytes_done)
        if prev is None or now <= prev[0]:
            return self._rate.get(node_id)
        sample = max(0, bytes_done - prev[1]) / (now - prev[0])
        old = self._rate.get(node_id)
        self._rate[node_id] = sample if old is None else (
            self.alpha * sample + (1 - self.alpha) * old)
        return self._rate[node_id]

    def rates(self) -> dict[str, float]:
        return dict(self._rate)


def node_rows(status: ModelConvergenceStatus, records: Iterable[tuple[str, NodeRecord]],
              rates: Mapping[str, float] | None = None) -> list[NodeRow]:
    """The rows of the fleet table: every node working on (or running, or blocked on)
    ``status.target_version``, sorted by name then id."""
    rates = rates or {}
    blocked = {b.node_id: f"{b.reason.value}: {b.details}" if b.details else b.reason.value
               for b in status.blockers}
    rows = []
    for node_id, rec in records:
        st = rec.model(status.model_id)
        on_target = st is not None and (st.version == status.target_version
                                        or st.active_version == status.target_version)
        if not on_target and node_id not in blocked:
            continue
        if st is None:
            rows.append(NodeRow(node_id, rec.name, rec.formation, "", "pending", 0, 0, None,
                                blocked.get(node_id, "")))
            continue
        blocker = blocked.get(node_id, "")
        if not blocker and st.blocker is not None:
            blocker = f"{st.blocker.value}: {st.blocker_detail}" if st.blocker_detail \
                else st.blocker.value
        rows.append(NodeRow(node_id, rec.name, rec.formation, st.variant_id, st.status.value,
                            st.bytes_done, st.bytes_total, rates.get(node_id), blocker))
    rows.sort(key=lambda r: (r.name or "~", r.node_id))
    return rows


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def summary_line(status: ModelConvergenceStatus, rows: Iterable[NodeRow] = ()) -> str:
    """Totals: converged/in progress/pending/failed, bytes, aggregate rate, ETA."""
    rate = sum(r.rate or 0.0 for r in rows)
    done = (f"{human_bytes(status.bytes_done)} / {human_bytes(status.bytes_total)}"
            if status.bytes_total else "-")
    return (f"{status.converged}/{status.total_platforms} converged "
            f"({100 * status.progress:.0f}%), {status.in_progress} in progress, "
            f"{status.pending} pending, {status.failed} failed | {done} | "
            f"{human_bytes(rate)}/s | eta {human_eta(status.estimated_completion)}")


def fleet_view(status: ModelConvergenceStatus, rows: list[NodeRow], *,
               max_rows: int | None = None) -> RenderableType:
    """The fleet table (node, formation, variant, state, progress bar, rate, blocker)
    with a totals line. ``max_rows`` trims the table (failed and blocked nodes first,
    so trouble stays visible) and says how many were left out."""
    shown = rows
    if max_rows is not None and len(rows) > max_rows:
        shown = sorted(rows, key=lambda r: (r.state != "failed", not r.blocker))[:max_rows]
    table = Table(title=f"{status.model_id} {status.target_version}", expand=True,
                  title_justify="left")
    table.add_column("node", no_wrap=True)
    table.add_column("formation", no_wrap=True)
    table.add_column("variant", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("progress", no_wrap=True, width=21)
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("blocker", overflow="fold", ratio=1)
    for r in shown:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=r.fraction, width=16),
                    Text(f"{100 * r.fraction:3.0f}%"))
        table.add_row(r.name or r.node_id[:12], r.formation or "-", r.variant_id or "-",
                      Text(r.state, style=_style(r.state)),
                      bar, f"{human_bytes(r.rate)}/s" if r.rate is not None else "-",
                      Text(r.blocker, style="red") if r.blocker else "")
    parts: list[RenderableType] = [table]
    if len(shown) < len(rows):
        parts.append(Text(f"... {len(rows) - len(shown)} more nodes", style="dim"))
    parts.append(Text(summary_line(status, rows), style="bold"))
    return Group(*parts)


def _style(state: str) -> str:
    try:
        return _STATE_STYLE.get(ModelOperationalStatus(state), "")
    except ValueError:
        return "dim"


def plain_rows(status: ModelConvergenceStatus, rows: Iterable[NodeRow]) -> str:
    """The same content as :func:`fleet_view` as plain text (no colour, no bars)."""
    rows = list(rows)
    lines = [f"{status.model_id} {status.target_version}: {summary_line(status, rows)}"]
    for r in rows:
        rate = f"{human_bytes(r.rate)}/s" if r.rate is not None else "-"
        lines.append(f"  {r.name or r.node_id[:12]:<16} {r.formation or '-':<10} "
                     f"{r.variant_id or '-':<12} {r.state:<12} {100 * r.fraction:3.0f}% "
                     f"{rate:>12}  {r.blocker}".rstrip())
    return "\n".join(lines)
