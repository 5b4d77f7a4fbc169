"""The peer-assisted bound over connected periods (``sim/_bound.py``) and its report in
``shoal-sim run`` (``rollouts`` in the ``--json`` output)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol._swarm import make_piece
from sim._bound import ClassRate, Timeline, reach_times, transfer_bound
from sim._loop import EventLoop, derive_rng
from sim._network import LinkProfile, Network

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000


def _line(n: int, cls: str = "radio") -> list[dict[str, frozenset[int]]]:
    """Nodes 0..n-1 in a line on one class."""
    peers: list[dict[str, frozenset[int]]] = []
    for i in range(n):
        peers.append({cls: frozenset(j for j in (i - 1, i + 1) if 0 <= j < n)})
    return peers


def test_an_always_up_link_gives_bytes_over_rate() -> None:
    tl = Timeline({"radio": ClassRate(up=MB, down=MB)}, _line(2))
    assert transfer_bound(tl, 5.0, [1], 3 * MB) == pytest.approx(3.0)
    assert transfer_bound(tl, 5.0, [0, 1], 3 * MB, upload=True) == pytest.approx(1.5)
    assert transfer_bound(tl, 5.0, [1], 0) == 0.0


def test_only_the_periods_a_link_is_up_count() -> None:
    tl = Timeline({"radio": ClassRate(up=MB, down=MB, payload=0.5)}, _line(2))
    tl.link(0.0, "radio", False)
    for k in range(10):                       # up 10 s in every 60, from t=30
        tl.link(30.0 + 60 * k, "radio", True)
        tl.link(40.0 + 60 * k, "radio", False)
    # 12 MB at 0.5 MB/s of payload = 24 s up: 10 + 10 + 4 -> ends at 154 s
    assert transfer_bound(tl, 0.0, [1], 12 * MB) == pytest.approx(154.0)
    # a node that is down, or cut off by a partition, takes nothing in meanwhile
    tl.node(30.0, 1, False)
    tl.node(60.0, 1, True)
    assert transfer_bound(tl, 0.0, [1], 12 * MB) == pytest.approx(214.0)
    tl.split(80.0, [0, 1])
    tl.split(150.0, None)
    assert transfer_bound(tl, 0.0, [1], 12 * MB) == pytest.approx(274.0)


def test_a_link_that_never_comes_back_has_no_finite_bound() -> None:
    tl = Timeline({"radio": ClassRate(up=MB, down=MB)}, _line(2))
    tl.link(1.0, "radio", False)
    assert transfer_bound(tl, 0.0, [1], 3 * MB) == math.inf


def test_an_order_reaches_a_node_once_a_path_of_up_links_joins_them() -> None:
    peers = _line(3, "near")                  # 0 - 1 - 2 on "near" ...
    peers[2] = {"near": frozenset({1}), "far": frozenset({3})}
    peers.append({"far": frozenset({2})})     # ... and 2 - 3 on "far"
    tl = Timeline({"near": ClassRate(MB, MB), "far": ClassRate(MB, MB)}, peers)
    tl.link(0.0, "far", False)
    tl.link(100.0, "far", True)
    tl.node(0.0, 1, False)                    # the relay is down until 50 s
    tl.node(50.0, 1, True)
    assert reach_times(tl, 10.0, 0) == [10.0, 50.0, 50.0, 100.0]
    tl.node(5.0, 0, False)                    # a source that is down reaches nobody
    assert reach_times(tl, 10.0, 0) == [math.inf] * 4


def test_a_piece_of_a_small_chunk_is_reported_sent_too() -> None:
    """The network reported only bulk messages (> 16 KiB) as sent, so with upload
    reports on, a node that served a small chunk never had its upload window freed."""
    loop = EventLoop()
    net = Network(loop, derive_rng(1, "net"), LinkProfile(latency=0.0),
                  deliver=lambda dst, src, msg: None)
    for n in ("a", "b"):
        net.add_node(n, up=MB, down=MB)
    sent: list[object] = []
    net.on_sent = lambda src, dst, msg: sent.append(msg)
    piece = make_piece(b"\x01" * 32, b"x" * 15, 2)
    net.sent_small = (type(piece),)
    net.send("a", "b", piece, 100)
    net.send("a", "b", "small control message", 100)
    loop.run()
    assert sent == [piece]


def test_shoal_sim_run_reports_each_rollout_against_its_bound(tmp_path: Path) -> None:
    png, page = tmp_path / "radio.png", tmp_path / "radio.html"
    out = subprocess.run([sys.executable, "-m", "sim", "run",
                          str(ROOT / "benchmarks/fleets/radio.toml"), "--json",
                          "--plot", str(png), "--html", str(page)],
                         capture_output=True, text=True, check=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    result = json.loads(out.stdout)
    (rollout,) = result["rollouts"]
    assert rollout["action"] == "distribute" and rollout["targets"] == 13
    assert rollout["bytes_missing_max"] == 16 * 2**20
    # the links each node needs are up only part of the time: the bound counts those
    # periods, and no run can beat it
    assert rollout["bound_s"] > 16 * 2**20 * 8 / 2e6
    assert rollout["measured_s"] >= rollout["bound_s"]
    assert rollout["ratio"] == pytest.approx(rollout["measured_s"] / rollout["bound_s"],
                                             abs=1e-3)
    # the radio-ab class is up 2 minutes in every 6, from 1 minute on (the run stops
    # once every node converged, which ends the last period)
    start, stop = result["links_up"]["radio-ab"][0]
    assert start == 60.0 and stop == min(180.0, result["sim_seconds"])
    # and the plot and the page of the same run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "Rollouts against their bound" in text and "data:image/png;base64," in text
    for name in ("radio-a", "radio-ab", "radio-b", "ground", "distribute"):
        assert name in text
