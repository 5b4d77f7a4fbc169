"""Two real daemons whose swarm settings disagree: the seeder queues at most 4 requests
per peer (``[swarm] max_queued_per_peer``), the fetcher pipelines its default 16-32.

What must hold: the fetcher keeps the transfer moving at the seeder's queue depth.
Each request that overflows the seeder's queue is answered "busy"; the fetcher caps
its pipeline at what the seeder still holds and asks again as pieces arrive. Before,
each "busy" silenced the fetcher for ``interest_retry`` (5 s), so 16 MiB (128 chunks)
took about 80 s and 256 MiB never finished in 40 s (docs/JOURNAL.md, 2026-12-07).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import LocalFleet, make_package

from ._helpers import call

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def test_a_seeder_with_a_short_queue_still_serves_at_full_pipeline(tmp_path: Path) -> None:
    small_queue = '[swarm]\nmax_queued_per_peer = 4\nupload_window = 4\n'
    with LocalFleet(tmp_path / "fleet", 2, per_node={0: small_queue}).running(60) as fleet:
        pkg = make_package(tmp_path / "pkg", 16 * MiB, seed=3)
        call(fleet, 0, lambda c: c.publish(str(pkg), "det", "1.0.0"))
        call(fleet, 0, lambda c: c.distribute_model("det", "1.0.0"))
        # 30 s: the transfer takes about a second; before, 80 s
        rep = trio.run(fleet.wait_converged, 0, "det", "1.0.0", 30)
        assert rep.converged == 2 and rep.failed == 0
        stats = json.loads(call(fleet, 1, lambda c: c.status()).statistics_json)
        swarm = stats["swarm"]
        assert swarm["requests_rejected"] > 0          # the seeder's queue did overflow
        assert swarm["dropped_peers"] == []             # and nobody was blamed for it
