"""The scale path of the simulator (issue 18) at a small N: the benchmark that runs the
10,000-node gossip and the 1,000-node swarm (``benchmarks/bench_sim_scale.py``) measures
a child ``python -m sim`` process, and the CLI flags it relies on work. Nothing here
asserts wall-clock time (the machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_sim_scale import measure
from sim.__main__ import main


def test_measure_reports_time_memory_and_speed_of_a_child_run() -> None:
    g = measure(["gossip", "--nodes", "12", "--seed", "1", "--settle-rounds", "4",
                 "--quiet-rounds", "2"], limit_s=300)
    assert "error" not in g, g
    assert g["result"]["known"] == 12 and g["result"]["rounds_to_100"] is not None
    assert g["cpu_s"] > 0 and g["peak_rss_mb"] > 0
    assert g["sim_seconds"] == g["result"]["sim_seconds"] > 6
    assert g["node_seconds_per_second"] > 0
    s = measure(["swarm", "--nodes", "6", "--size", "2M", "--seed", "1", "--no-hub"],
                limit_s=300)
    assert "error" not in s, s
    assert s["result"]["complete"]
    assert s["sim_seconds"] >= s["result"]["t_measured"] > 0
    assert s["node_seconds_per_second"] > 0


def test_measure_reports_a_run_that_did_not_finish() -> None:
    bad = measure(["gossip", "--nodes", "0", "--seed", "1"], limit_s=300)
    assert "error" in bad and "result" not in bad


def test_gossip_settle_and_quiet_rounds_flags(tmp_path: Path, capsys: object) -> None:
    out = tmp_path / "g.json"
    assert main(["gossip", "--nodes", "10", "--seed", "1", "--settle-rounds", "3",
                 "--quiet-rounds", "0", "--json", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["quiet_bytes_per_node_round"] is None and r["quiet_bytes_by_type"] == {}
    assert r["known"] == 10
    # 3 settle rounds, no quiet rounds: the intent was issued at 3 s
    assert 3.0 <= r["sim_seconds"] < 10.0
