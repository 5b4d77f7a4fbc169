"""Simulator reports: ``shoal-sim swarm ... --plot out.png --html out.html``.

:func:`plot` draws, for each swarm run, the fraction of target nodes that hold the
whole model against simulated time (a step curve), the hub baseline run of the
same fleet (dashed) and the Kumar-Ross lower bound ``T_min`` (a vertical line: no
schedule can finish earlier), then a second panel of the bytes each node fetched
(sorted) against the model size (the least a node can fetch). :func:`html`
writes one self-contained page: the plot embedded as a PNG and the summary
table of every run. Inputs are the result dicts of :func:`sim._scenarios.swarm`
called with ``timeline=True``.

matplotlib is an extra (``pip install 'shoal[sim]'``), imported only when a plot
is drawn; :func:`require_matplotlib` raises :class:`MissingExtra` without it.
"""

from __future__ import annotations

import base64
import html as _html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MissingExtra", "figure_png", "html", "page_html", "plot", "plot_png",
           "require_matplotlib", "summary_rows", "table_html"]

_SUMMARY = ("nodes", "size", "chunk_size", "up_mbit", "down_mbit", "hetero", "seed",
            "topology", "complete", "t_measured", "t_min", "ratio", "t_hub", "hub_speedup",
            "duplicate_fraction", "seeder_copies")


class MissingExtra(RuntimeError):
    """A feature needs a package from an extra that is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package, self.extra = package, extra
        super().__init__(f"{package} is not installed: pip install 'shoal[{extra}]'")


def require_matplotlib() -> Any:
    """The ``matplotlib`` module (Agg backend), or :class:`MissingExtra`."""
    try:
        import matplotlib
    except ModuleNotFoundError as exc:       # matplotlib or one of its dependencies
        raise MissingExtra("matplotlib", "sim") from exc
    matplotlib.use("Agg")
    return matplotlib


def _timeline(result: dict[str, Any]) -> dict[str, Any]:
    tl = result.get("timeline")
    if not isinstance(tl, dict):
        raise ValueError(f"a {result.get('scenario', '?')} result has no timeline: run the "
                         f"swarm scenario with timeline=True (the CLI does with --plot/--html)")
    return tl


def _steps(times: Sequence[float], targets: int) -> tuple[list[float], list[float]]:
    xs, ys = [0.0], [0.0]
    for k, t in enumerate(sorted(times), start=1):
        xs += [t, t]
        ys += [ys[-1], k / targets if targets else 0.0]
    return xs, ys


def plot_png(results: Sequence[dict[str, Any]]) -> bytes:
    """The two-panel figure as PNG bytes."""
    require_matplotlib()
    from matplotlib import pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    try:
        for i, r in enumerate(results):
            tl = _timeline(r)
            colour = f"C{i % 10}"
            label = f"run {i + 1} (seed {r.get('seed')}, {r.get('nodes')} nodes)"
            xs, ys = _steps(tl["swarm"], tl["targets"])
            ax.plot(xs, ys, color=colour, label=f"{label}: swarm")
            if tl.get("hub"):
                hx, hy = _steps(tl["hub"], tl["targets"])
                ax.plot(hx, hy, color=colour, linestyle="--", label=f"{label}: hub")
            if r.get("t_min"):
                ax.axvline(r["t_min"], color=colour, linestyle=":",
                           label=f"{label}: Kumar-Ross T_min {r['t_min']:.3g} s")
            per_node = [b / (1024 * 1024) for b in tl["bytes_per_node"]]
            bx.plot(range(1, len(per_node) + 1), per_node, color=colour, marker=".",
                    label=label)
            bx.axhline(r["size"] / (1024 * 1024), color=colour, linestyle=":",
                       label=f"{label}: model size")
        ax.set_xlabel("simulated seconds since the order")
        ax.set_ylabel("fraction of nodes converged")
        ax.set_ylim(0, 1.05)
        ax.set_title("convergence over time")
        ax.legend(fontsize="x-small", loc="lower right")
        bx.set_xlabel("node (sorted by bytes fetched)")
        bx.set_ylabel("MiB fetched")
        bx.set_title("bytes per node")
        bx.set_ylim(bottom=0)
        bx.legend(fontsize="x-small", loc="lower right")
        return figure_png(fig)
    finally:
        plt.close(fig)


def figure_png(fig: Any) -> bytes:
    """A drawn matplotlib figure as PNG bytes (the caller closes it)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plot(results: Sequence[dict[str, Any]], path: Path | str) -> Path:
    """Write :func:`plot_png` to ``path``."""
    out = Path(path)
    out.write_bytes(plot_png(results))
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def summary_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Header row, then one row per run."""
    return [["run", *_SUMMARY]] + [[str(i + 1), *(_cell(r.get(k)) for k in _SUMMARY)]
                                   for i, r in enumerate(results)]


def table_html(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats to 4 significant digits, None as "-", all escaped."""
    def cell(v: Any) -> str:
        return _html.escape(_cell(v))
    head = "".join(f"<th>{cell(c)}</th>" for c in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>"
                     for row in rows)
    return f"<table><tr>{head}</tr>\n{body}\n</table>"


def page_html(title: str, intro: str, png: bytes, alt: str, body: str) -> str:
    """One self-contained page: ``title``, ``intro`` (HTML), the plot embedded, ``body``."""
    t = _html.escape(title)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:right}}</style></head>
<body><h1>{t}</h1>
<p>{intro}</p>
<img alt="{_html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">
{body}
</body></html>
"""


def html(results: Sequence[dict[str, Any]], path: Path | str,
         png: bytes | None = None) -> Path:
    """One self-contained page: the plot (embedded) and the summary table."""
    png = plot_png(results) if png is None else png
    rows = summary_rows(results)
    page = page_html(
        "shoal simulator report",
        "Fraction of nodes converged over time (solid: swarm, dashed: hub baseline, dotted:\n"
        "Kumar-Ross lower bound T_min) and bytes fetched per node. Times are simulated "
        "seconds.", png, "convergence and bytes per node",
        f"<h2>Summary</h2>\n{table_html(rows[0], rows[1:])}")
    out = Path(path)
    out.write_text(page)
    return out
