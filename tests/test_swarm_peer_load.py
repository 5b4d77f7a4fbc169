"""SwarmEngine.peer_load: the chunk transfers under way with a peer, which the overlay
reads to close the least loaded session (protocol/_overlay.py, "Trim", "Rotation")."""

from __future__ import annotations

from protocol._config import SwarmConfig
from protocol._swarm_messages import HaveSet, Interested, Request, make_bitfield
from protocol._types import TransferPriority
from tests.swarm_sim import KEY, lone_engine, make_key, node_id


def test_peer_load_counts_requests_both_ways_and_a_recent_ask() -> None:
    refs = make_key("load", 12)[0]
    eng = lone_engine(refs, SwarmConfig(redirect_window=0.0, upload_window=1), seed=5,
                      held={r.hash for r in refs[:6]})
    src, asker, idle = node_id(1), node_id(2), node_id(3)
    eng.want(KEY, TransferPriority.NORMAL, 0.0)
    for p in (src, asker, idle):
        eng.peer_connected(p, 0.0)
        eng.receive(p, Interested(KEY), 0.0)
    eng.receive(src, HaveSet(KEY, 12, make_bitfield([True] * 12)), 0.0)
    out = eng.request_times()
    asked_of_src = sum(1 for peer, _h in out if peer == src)
    assert asked_of_src > 0
    assert eng.peer_load(src, 0.0) == asked_of_src
    assert eng.peer_load(idle, 0.0) == 0
    # ``asker`` is served one piece, reported sent at 0.5: the upload window is on
    normal = int(TransferPriority.NORMAL)
    eng.receive(asker, Request(KEY, refs[0].hash, normal), 0.2)
    eng.upload_done(asker, refs[0].hash, 0.5)
    # it asks for two more at 1.0: one is handed out (unreported), one waits, and it
    # asked just now
    for r in refs[1:3]:
        eng.receive(asker, Request(KEY, r.hash, normal), 1.0)
    assert eng.peer_load(asker, 1.0) == 2 + 1
    eng.upload_done(asker, refs[1].hash, 2.0)    # the second goes out
    assert eng.peer_load(asker, 2.0) == 1 + 1
    eng.upload_done(asker, refs[2].hash, 3.0)
    assert eng.peer_load(asker, 3.0) == 1        # only the recent ask: it fades after 10 s
    assert eng.peer_load(asker, 11.5) == 0
    assert eng.peer_load(idle, 11.5) == 0
    eng.peer_disconnected(asker, 12.0)
    assert eng.peer_load(asker, 12.0) == 0
