"""Real daemons on loopback (mDNS) with a small overlay degree: every daemon holds at
most ``degree + slack`` sessions, sessions beyond it are declined with "full, try
these" (not refused and redialled in a storm), and a rollout still reaches every node
through the overlay, with ``convergence_status`` answered at any node."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package

N = 8
DEGREE, SLACK = 3, 1
# (8 daemons would be a full mesh by ``mesh_up_to``: off, so that the degree rule is seen)
OVERLAY = f"[overlay]\ndegree = {DEGREE}\nslack = {SLACK}\nmesh_up_to = 0\n"


async def _stats(fleet: LocalFleet, i: int) -> dict[str, object]:
    st = await fleet.call(i, lambda c: c.status())
    return dict(json.loads(st.statistics_json)["overlay"])


async def _scenario(fleet: LocalFleet, pkg: Path) -> None:
    for i in range(N):
        await fleet.wait_ready(i, timeout=60)
    most = 0
    # every daemon finds its peers: ``degree`` of them, or one fewer while it holds a
    # slot after a peer trimmed it (see protocol/_overlay.py, "Hold"), so the fleet is
    # never all at ``degree`` at one instant by design
    deadline = trio.current_time() + 60
    while True:
        stats = [await _stats(fleet, i) for i in range(N)]
        most = max(most, *(int(s["active"]) for s in stats))  # type: ignore[call-overload]
        if all(int(s["active"]) >= DEGREE - 1 for s in stats):  # type: ignore[call-overload]
            break
        assert trio.current_time() < deadline, stats    # (the figures, should it fail)
        await trio.sleep(0.3)
    await fleet.call(0, lambda c: c.publish(str(pkg), "m", "1.0.0"))
    await fleet.call(0, lambda c: c.distribute_model("m", "1.0.0"))
    await fleet.wait_converged(0, "m", "1.0.0", timeout=90)
    # a node far from the publisher comes to the same answer (records travel the overlay)
    far = await fleet.wait_converged(N - 1, "m", "1.0.0", timeout=30)
    assert (far.total_platforms, far.converged, far.failed) == (N, N, 0)
    stats = [await _stats(fleet, i) for i in range(N)]
    most = max(most, *(int(s["active"]) for s in stats))  # type: ignore[call-overload]
    assert most <= DEGREE + SLACK, stats      # sessions kept (one being declined aside)
    # every daemon discovered all the others, but keeps only a few sessions
    assert all(int(s["known"]) == N - 1 for s in stats), stats  # type: ignore[call-overload]
    # no redial storm: dials stay within a small multiple of the sessions made
    dials = sum(int(s["dials"]) for s in stats)  # type: ignore[call-overload]
    assert dials <= 6 * N * DEGREE, stats


def test_daemons_keep_a_bounded_overlay_and_converge(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg", 256 * 1024)
    fleet = LocalFleet(tmp_path / "fleet", N, extra_config=FAST_GOSSIP + OVERLAY)
    try:
        fleet.start_all()
        trio.run(_scenario, fleet, pkg)
    finally:
        fleet.stop_all()
