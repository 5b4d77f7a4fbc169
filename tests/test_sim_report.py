"""Simulator reports: the plot file is written and non-empty; the page holds both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim import _report
from sim import _scenarios as sc
from sim.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_writes_plot_and_html_for_a_small_run(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    png, page = tmp_path / "out.png", tmp_path / "out.html"
    assert main(["swarm", "--nodes", "6", "--size", "2M", "--seed", "3", "--json",
                 "--plot", str(png), "--html", str(page)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "timeline" not in result and result["complete"] is True   # --json unchanged
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    text = page.read_text()
    assert "data:image/png;base64," in text and "<table>" in text
    assert f"<td>{result['t_min']:.4g}</td>" in text


def test_timeline_matches_the_run() -> None:
    r = sc.swarm(nodes=5, size=2 * sc.MiB, seed=2, timeline=True)
    tl = r["timeline"]
    assert tl["targets"] == 4 and len(tl["swarm"]) == 4 and len(tl["hub"]) == 4
    assert max(tl["swarm"]) == pytest.approx(r["t_measured"])
    assert max(tl["hub"]) == pytest.approx(r["t_hub"])
    assert max(tl["swarm"]) >= r["t_min"]             # the lower bound holds
    assert len(tl["bytes_per_node"]) == 4 and min(tl["bytes_per_node"]) >= r["size"]
    rows = _report.summary_rows([r, r])
    assert rows[0][0] == "run" and [row[0] for row in rows[1:]] == ["1", "2"]


def test_results_without_a_timeline_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no timeline"):
        _report.plot([{"scenario": "delta"}], tmp_path / "x.png")
