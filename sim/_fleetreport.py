"""Reports of a scenario-file run: ``shoal-sim run FLEET.toml --plot out.png --html out.html``.

:func:`plot_png` draws two panels over the run's simulated time. The upper one is, per
formation, the fraction of the nodes the final orders target that have converged (a
step curve, each node at the time its active version last changed to its target),
with the operator's commands as vertical lines and, for each rollout, its bound over
the connected periods (``sim/_bound.py``) as a dotted line at ``at + bound``. The lower
one shows when each link class was up and when each node was down (crashed). :func:`html`
writes one self-contained page: the plot, each rollout against its bound, each formation
(converged, last, what blocked it), bytes per link class and the commands.

The input is the result dict of :func:`sim._fleetfile.simulate`; matplotlib is the
``sim`` extra (:func:`sim._report.require_matplotlib`).
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._report import figure_png, page_html, require_matplotlib, table_html

__all__ = ["html", "plot_png"]


def _converged_steps(rows: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    targeted = [r for r in rows if r["target"] is not None]
    times = sorted(r["converged_at"] for r in targeted if r.get("converged_at") is not None)
    xs, ys = [0.0], [0.0]
    for k, t in enumerate(times, start=1):
        xs += [t, t]
        ys += [ys[-1], k / len(targeted)]
    return xs, ys


def _down_periods(result: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per node that crashed, ``(start, length)``: from when it was first seen down,
    for as long as it was seen down in all (two crashes of one node draw as one)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for f in result["formations"].values():
        for row in f["node_rows"]:
            first = row["first_blocked_at"].get("node_down")
            if first is not None:
                out[row["node"]] = [(first, row["blocked_seconds"]["node_down"])]
    return out


def plot_png(result: dict[str, Any]) -> bytes:
    """The two-panel figure of one run, as PNG bytes."""
    require_matplotlib()
    from matplotlib import pyplot as plt

    links = result.get("links_up", {})
    down = _down_periods(result)
    lanes = [*links, *down]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(12, 5 + 0.3 * len(lanes)), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1 + 0.3 * len(lanes)]})
    try:
        for k, (name, f) in enumerate(result["formations"].items()):
            if not f["targeted"]:
                continue
            xs, ys = _converged_steps(f["node_rows"])
            xs.append(result["sim_seconds"])
            ys.append(ys[-1])
            ax.plot(xs, ys, color=f"C{k % 10}", label=f"{name} ({f['targeted']} targeted)")
        for a in result["actions"]:
            if a["event"] in ("distribute", "rollback", "cancel") and "error" not in a:
                ax.axvline(a["t"], color="grey", linewidth=0.8)
                ax.annotate(f"{a['event']} {a.get('version', '')}".strip(), (a["t"], 1.02),
                            fontsize="x-small", rotation=30)
        for r in result.get("rollouts", []):
            if r["bound_s"] is not None:
                ax.axvline(r["at"] + r["bound_s"], color="black", linestyle=":",
                           linewidth=0.8)
        ax.set_ylabel("fraction of targeted nodes converged")
        ax.set_ylim(0, 1.15)
        ax.set_title(f"fleet {result['name']}, seed {result['seed']} (dotted: each "
                     "rollout's bound over its connected periods)")
        ax.legend(fontsize="x-small", loc="lower right")
        for y, name in enumerate(lanes):
            if name in links:
                spans = [(a, b - a) for a, b in links[name]]
                bx.broken_barh(spans, (y - 0.35, 0.7), color="C2")
            else:
                bx.broken_barh(down[name], (y - 0.35, 0.7), color="C3")
        bx.set_yticks(range(len(lanes)),
                      [f"link {n} up" if n in links else f"{n} down" for n in lanes],
                      fontsize="x-small")
        bx.set_xlabel("simulated seconds")
        bx.set_xlim(0, result["sim_seconds"])
        return figure_png(fig)
    finally:
        plt.close(fig)


def html(result: dict[str, Any], path: Path | str, png: bytes | None = None) -> Path:
    """One self-contained page of the run (see the module doc)."""
    png = plot_png(result) if png is None else png
    rollouts = table_html(
        ["command", "model", "version", "at (s)", "at node", "targets", "carried out",
         "took (s)", "bound (s)", "took / bound", "last node"],
        [[r["action"], r["model"], r["version"], r["at"], r["node"], r["targets"],
          r["carried_out"], r["measured_s"], r["bound_s"], r["ratio"], r["last_node"]]
         for r in result.get("rollouts", [])])
    formations = table_html(
        ["formation", "nodes", "targeted", "converged", "first (s)", "median (s)",
         "last (s)", "blocked by (nodes)"],
        [[name, f["nodes"], f["targeted"], f["converged"], f["first_converged_at"],
          f["median_converged_at"], f["last_converged_at"],
          ", ".join(f"{k} ({n})" for k, n in f["nodes_blocked_by"].items()) or "nothing"]
         for name, f in result["formations"].items()])
    links = table_html(["link class", "MB sent"],
                       [[k, v / 1e6] for k, v in result["bytes_by_link"].items()])
    actions = table_html(["t (s)", "command", "node", "model", "version", "result"],
                         [[a["t"], a["event"], a.get("node"), a.get("model"),
                           a.get("version"), a.get("error", "ok")] for a in result["actions"]])
    page = page_html(
        f"shoal simulator: fleet {result['name']}, seed {result['seed']}",
        f"{result['nodes']} nodes, {result['sim_seconds']:.1f} simulated seconds, "
        f"converged: {result['converged']}. Trace {_html.escape(result['trace'])} (the same "
        "seed replays it).", png, "convergence per formation, links and nodes over time",
        f"""<h2>Rollouts against their bound over the connected periods</h2>
{rollouts}
<h2>Formations</h2>
{formations}
<h2>Bytes per link class</h2>
{links}
<h2>Commands</h2>
{actions}""")
    out = Path(path)
    out.write_text(page)
    return out
