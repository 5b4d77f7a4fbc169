"""The daemon on virtual time: a real :class:`NodeRuntime` (keys, data directory,
listener on loopback, machine task, store workers) run under trio's ``MockClock``
with ``autojump_threshold=0``, its clock injected as ``trio.current_time()`` plus
a wall-clock epoch. An hour of the node's life passes in well under a minute, and
its timers follow virtual time: gossip rounds run once per interval, the clock the
machine is handed is the virtual one, and a ledger save asked for by the machine
(``PersistLedger``) writes what the node wrote at that virtual instant.

Autojump moves the clock whenever every task is blocked -- also while a worker
thread (a ledger save) runs in real time -- so the test waits for a save by its
effect (:func:`_until`), not by a virtual delay. A quiet node starts no thread
between saves, so the hour itself runs on virtual time alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from agent._admin.fleet import provision
from agent._config import load_config
from agent._daemon.runtime import NodeRuntime
from agent._storage.persist import load_ledger
from protocol._identity import SigningIdentity

HOUR = 3600.0


async def _until(done: Callable[[], bool]) -> None:
    """Let virtual time pass in small steps until ``done()`` (at most 10 real seconds)."""
    give_up = time.monotonic() + 10
    while not done():
        assert time.monotonic() < give_up, "a worker thread did not finish"
        await trio.sleep(0.01)


async def test_runtime_timers_run_on_virtual_time(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    prov = provision(tmp_path / "n0", root=SigningIdentity.generate(), fleet_id="mock",
                     name="n0", mdns_interface="")
    epoch = time.time() - trio.current_time()      # the node's clock reads like a wall clock
    rt = NodeRuntime(load_config(str(prov.config_path)),
                     clock=lambda: trio.current_time() + epoch)
    interval = rt.machine.config.gossip.interval
    jitter = rt.machine.config.gossip.jitter
    real_start = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await _until(lambda: rt.statistics().ledger_saves > 0)    # the first save
        start = trio.current_time()
        rounds_before = rt.machine.gossip.rounds

        await trio.sleep(HOUR)
        rounds = rt.machine.gossip.rounds - rounds_before
        # a round every interval plus up to ``jitter`` of it, on virtual time
        assert HOUR / (interval * (1 + jitter)) - 2 <= rounds <= HOUR / interval + 2

        # the machine is handed the injected clock, not the host's
        seen = await rt.call(lambda m, now: now)
        assert seen == pytest.approx(epoch + trio.current_time())
        assert seen - (epoch + start) == pytest.approx(HOUR, abs=1.0)

        # an own write (a new probe result makes the node rewrite its record) is
        # saved before anything else leaves; the saved record carries virtual time
        saves = rt.statistics().ledger_saves
        caps = rt.machine.capabilities
        assert caps is not None
        wrote_at = await rt.call(lambda m, now: (m.set_capabilities(caps, now), now)[1])
        await _until(lambda: rt.statistics().ledger_saves > saves)
        ledger, _ = load_ledger(rt.data.root, rt.trust)
        rec = ledger.record(rt.node_id)
        assert rec is not None and rec.written_at == wrote_at
        nursery.cancel_scope.cancel()
    assert time.monotonic() - real_start < 60      # an hour of timers, on virtual time
