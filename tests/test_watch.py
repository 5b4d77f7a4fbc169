"""The live fleet view renders into a fixed-size terminal (and plainly off one)."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from agent._cli.watch import (
    NodeRow,
    RateTracker,
    fleet_view,
    human_eta,
    node_rows,
    plain_rows,
)
from agent.client import ConvergenceBlocker, ModelConvergenceStatus
from protocol._ledger import ModelState, NodeRecord
from protocol._types import BlockerReason, ModelOperationalStatus

S = ModelOperationalStatus


def _rec(name: str, formation: str, *models: ModelState) -> NodeRecord:
    return NodeRecord(name, formation, None, "", tuple(models), (), 0.0)


def _fleet() -> tuple[ModelConvergenceStatus, list[tuple[str, NodeRecord]]]:
    records = [
        ("a" * 32, _rec("truck-1", "alpha",
                        ModelState("det", "2.0.0", "gpu", S.OPERATIONAL, 100, 100,
                                   active_version="2.0.0"))),
        ("b" * 32, _rec("truck-2", "alpha",
                        ModelState("det", "2.0.0", "cpu", S.DOWNLOADING, 25, 100))),
        ("c" * 32, _rec("drone-9", "bravo",
                        ModelState("det", "2.0.0", "", S.FAILED, 0, 0,
                                   blocker=BlockerReason.INSUFFICIENT_STORAGE,
                                   blocker_detail="needs 900 MB"))),
        ("d" * 32, _rec("sensor-4", "bravo",
                        ModelState("other", "1.0.0", "x", S.OPERATIONAL))),  # not in view
    ]
    status = ModelConvergenceStatus(
        "det", "2.0.0", total_platforms=3, converged=1, in_progress=1, pending=0, failed=1,
        version_distribution={"2.0.0": 1, "none": 2},
        blockers=(ConvergenceBlocker("c" * 32, BlockerReason.INSUFFICIENT_STORAGE, 1.0,
                                     "needs 900 MB"),),
        estimated_completion=75.0, bytes_done=125, bytes_total=200)
    return status, records


def _render(renderable: object, *, terminal: bool, width: int = 100) -> str:
    console = Console(width=width, height=30, record=True, force_terminal=terminal,
                      file=io.StringIO(),
                      color_system="truecolor" if terminal else None)
    console.print(renderable)
    return console.export_text()


def test_rows_select_the_target_version_and_sort_by_name() -> None:
    status, records = _fleet()
    rows = node_rows(status, records, {"b" * 32: 2048.0})
    assert [r.name for r in rows] == ["drone-9", "truck-1", "truck-2"]
    by = {r.name: r for r in rows}
    assert by["truck-2"].fraction == 0.25 and by["truck-2"].rate == 2048.0
    assert by["truck-1"].fraction == 1.0
    assert by["drone-9"].blocker == "insufficient_storage: needs 900 MB"


def test_view_renders_into_a_100_column_terminal() -> None:
    status, records = _fleet()
    text = _render(fleet_view(status, node_rows(status, records, {"b" * 32: 2048.0})),
                   terminal=True)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("det 2.0.0")
    for expected in ("node", "formation", "variant", "state", "progress", "rate", "blocker",
                     "truck-1", "truck-2", "drone-9", "operational", "downloading", "failed",
                     " 25%", "100%", "2.0 KiB/s", "insufficient_s", "900 MB"):
        assert expected in text, expected
    assert "sensor-4" not in text
    row = next(line for line in lines if "truck-2" in line)
    assert row.index("alpha") < row.index("cpu") < row.index("downloading") < row.index("25%")
    assert lines[-1] == ("1/3 converged (33%), 1 in progress, 0 pending, 1 failed | "
                         "125 B / 200 B | 2.0 KiB/s | eta 1m15s")


def test_terminal_output_has_colour_and_plain_output_has_none() -> None:
    status, records = _fleet()
    rows = node_rows(status, records)
    out = io.StringIO()
    Console(width=100, force_terminal=True, color_system="truecolor", file=out).print(
        fleet_view(status, rows))
    assert "\x1b[" in out.getvalue()
    out = io.StringIO()
    Console(width=100, force_terminal=False, file=out).print(fleet_view(status, rows))
    assert "\x1b" not in out.getvalue() and "truck-2" in out.getvalue()
    text = plain_rows(status, rows)
    assert "\x1b" not in text
    assert text.splitlines()[0].startswith("det 2.0.0: 1/3 converged")
    assert any(line.split()[:4] == ["truck-2", "alpha", "cpu", "downloading"]
               for line in text.splitlines())


def test_max_rows_keeps_trouble_visible() -> None:
    status, records = _fleet()
    text = _render(fleet_view(status, node_rows(status, records), max_rows=1), terminal=False)
    assert "drone-9" in text and "truck-1" not in text
    assert "... 2 more nodes" in text


def test_rate_tracker_is_an_ewma_of_byte_deltas() -> None:
    rt = RateTracker(alpha=0.5)
    assert rt.observe("n", 0, 0.0) is None
    assert rt.observe("n", 1000, 1.0) == 1000.0
    assert rt.observe("n", 1000, 2.0) == 500.0       # half old, half new (0)
    assert rt.observe("n", 1000, 2.0) == 500.0       # no time passed: unchanged


@given(st.floats(min_value=0, max_value=10 * 86400))
def test_eta_is_compact(seconds: float) -> None:
    text = human_eta(seconds)
    assert 2 <= len(text) <= 7 and text[-1] in "sm"


@given(st.integers(0, 10), st.integers(0, 10**12), st.integers(0, 10**12))
def test_fraction_is_bounded(n: int, done: int, total: int) -> None:
    row = NodeRow(str(n), "", "", "", "downloading", done, total, None, "")
    assert 0.0 <= row.fraction <= 1.0
