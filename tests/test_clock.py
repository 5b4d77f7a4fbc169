"""Wall-clock jumps mid-rollout (sans-IO).

An in-process fleet (``tests/_fleet.py``'s :class:`InProcessFleet`) where every node
reads its own wall clock: ``local now = true time + BASE + offset[i]``. Mid-rollout
one node's clock steps forward by an hour and another's backward by an hour (what
an NTP step after a long suspend, or a bad RTC, does). What must hold:

* nothing raises; the rollout completes on every node;
* the HLC of the node that issues intents stays monotone across the step;
* intents resolve identically at every node, and an intent issued *after* seeing
  another (causally later) wins, even from the node whose clock went back;
* timers re-arm sanely: after a step, a node's ``next_deadline`` is never more
  than a few gossip intervals after its own ``now`` (a deadline an hour ahead
  means the node sleeps for an hour), and ``on_timer`` is not called in a busy
  loop (counted over a simulated interval);
* no node is *unreachable* (``network_partition``) only because of a clock step.
"""

from __future__ import annotations

from protocol._hlc import HLC
from protocol._intents import Intent, IntentKind
from protocol._types import BlockerReason, ModelOperationalStatus

from ._fleet import OPERATOR, InProcessFleet

S = ModelOperationalStatus
BASE = 1_800_000_000.0      # local clocks read like real wall clocks
HOUR = 3600.0
SANE_AHEAD = 70.0           # longest legitimate timer: swarm request timeout (30 s) x 2 + slack


class SkewedFleet(InProcessFleet):
    """A fleet whose node ``i`` sees ``now = fleet time + BASE + offset``."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.timer_calls = [0] * n
        self.worst_ahead = [0.0] * n     # max of next_deadline - local now, after inputs
        super().__init__(n, seed=seed, offsets=[BASE] * n)

    def step(self, i: int, seconds: float) -> None:
        """Step node ``i``'s wall clock by ``seconds``."""
        self.offset[i] += seconds

    def after_input(self, i: int, timer: bool) -> None:
        """How far ahead of its own clock is node ``i``'s next timer?"""
        self.timer_calls[i] += timer
        d = self.m(i).next_deadline()
        if d is not None:
            self.worst_ahead[i] = max(self.worst_ahead[i], d - self.local(i))


def _issue(fleet: SkewedFleet, i: int, version: str) -> Intent:
    """As the control socket does: stamp the intent with the node's own HLC."""
    m, now = fleet.m(i), fleet.local(i)
    it = Intent.create(OPERATOR, IntentKind.DISTRIBUTE, "m", version, m.clock.tick(now))
    m.issue_intent(it, now)
    fleet.pump(i)
    return it


def _partitioned(fleet: SkewedFleet, version: str) -> set[str]:
    out: set[str] = set()
    for i in range(len(fleet.nodes)):
        st = fleet.m(i).convergence("m", version, fleet.local(i))
        out |= {b.node_id for b in st.blockers if b.reason is BlockerReason.NETWORK_PARTITION}
    return out


def test_clock_steps_mid_rollout() -> None:
    fleet = SkewedFleet(4, seed=7)
    FWD, BACK = 1, 2
    fleet.publish_files(size=2_000_000)
    fleet.advance(5)
    first = _issue(fleet, 0, "1.0.0")
    # mid-rollout: issued at node 0, not yet delivered anywhere (the steps land between
    # the issue and the first hop: its push, in flight for the link's latency)
    assert all(fleet.m(i).model_state("m") is None for i in range(1, 4))
    stamps_before = fleet.m(BACK).clock.peek()
    fleet.step(FWD, +HOUR)
    fleet.step(BACK, -HOUR)
    calls_before = list(fleet.timer_calls)
    fleet.worst_ahead = [0.0] * 4
    seen_partitioned: set[str] = set()
    for _ in range(60):
        fleet.advance(1)
        seen_partitioned |= _partitioned(fleet, "1.0.0")
    # the node stepped forward hears the order's push (and every peer passing it on)
    # before its next timer, so no peer looks silent; nobody is ever unreachable
    assert fleet.m(FWD).statistics().gossip.suspects == 0
    assert seen_partitioned == set()

    # timers re-armed sanely: no deadline an hour away, no busy loop
    for i in range(4):
        assert fleet.worst_ahead[i] < SANE_AHEAD, (i, fleet.worst_ahead[i])
        calls = fleet.timer_calls[i] - calls_before[i]
        assert 30 <= calls <= 60 * 10, (i, calls)   # about one per gossip interval (1 s)

    # the rollout completed everywhere, and every node gives the same answer
    for i in range(4):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.status is S.OPERATIONAL and st.active_version == "1.0.0"
    answers = [fleet.m(i).convergence("m", "1.0.0", fleet.local(i)) for i in range(4)]
    assert all(a.is_success and a.total_platforms == 4 for a in answers)
    assert all(fleet.m(i).desired("m") == first for i in range(4))
    assert _partitioned(fleet, "1.0.0") == set()

    # a step forward while the fleet is quiet: the node's next timer finds every peer
    # silent for an hour and suspects them for a moment (one record); the next message
    # from each clears it. One node's suspicion is below min_suspecting_peers (2), so
    # nobody is ever unreachable.
    changes = fleet.m(FWD).statistics().gossip.suspicion_changes
    fleet.step(FWD, +HOUR)
    for _ in range(20):
        fleet.advance(1)
        seen_partitioned |= _partitioned(fleet, "1.0.0")
    assert fleet.m(FWD).statistics().gossip.suspicion_changes >= changes + 2
    assert fleet.m(FWD).statistics().gossip.suspects == 0
    assert seen_partitioned == set()

    # the node whose clock went back: its HLC never went backwards, and an intent it
    # issues now (having seen the first one) sorts after it and wins everywhere
    assert fleet.m(BACK).clock.peek() >= stamps_before
    fleet.publish_files(version="2.0.0", seed="b", size=300_000)
    second = _issue(fleet, BACK, "2.0.0")
    assert second.stamp > first.stamp
    assert second.stamp.wall_ms > int(fleet.local(BACK) * 1000)   # ahead of its own wall
    fleet.advance(40)
    for i in range(4):
        assert fleet.m(i).desired("m") == second
        st = fleet.m(i).model_state("m")
        assert st is not None and st.active_version == "2.0.0"
    assert _partitioned(fleet, "2.0.0") == set()


def test_hlc_stays_monotone_through_steps() -> None:
    fleet = SkewedFleet(3, seed=3)
    seen: list[HLC] = []
    for k, step in enumerate([0.0, -HOUR, +2 * HOUR, -HOUR, -30.0, 0.0]):
        fleet.step(0, step)
        fleet.advance(3)
        seen.append(_issue(fleet, 0, f"1.0.{k}").stamp)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    fleet.advance(10)
    for i in range(3):     # the last-issued intent wins everywhere
        assert fleet.m(i).desired("m") is not None
        assert fleet.m(i).desired("m").stamp == seen[-1]  # type: ignore[union-attr]


def test_a_request_lost_before_a_backward_clock_step_is_reissued_on_the_new_clock() -> None:
    """The wall clock steps back an hour while a request is unanswered: the swarm's timers
    move with it, so the request times out after ``request_timeout`` on the new clock and
    goes to another provider — not an hour later, when the old clock would catch up."""

    from protocol._config import SwarmConfig
    from protocol._events import SendMessage as Send
    from protocol._swarm_messages import Request

    from .swarm_sim import fetch_from, lone_engine, token_chunk

    refs = [token_chunk(f"c{i}", 1000)[0] for i in range(4)]
    cfg = SwarmConfig(request_timeout=5.0)
    eng = lone_engine(refs, cfg, seed=3)
    t0 = 10_000.0
    fetch_from(eng, [1, 2], 4, now=t0)
    first = [o for o in eng.take_outputs()
             if isinstance(o, Send) and isinstance(o.message, Request)]
    assert first                          # requests went out; every one of them is lost

    eng.clock_stepped_back(3600.0)        # what NodeMachine does when `now` goes back
    t1 = t0 - 3600.0
    deadline = eng.next_deadline()
    assert deadline is not None and deadline <= t1 + cfg.request_timeout + 1.0
    eng.on_timer(t1 + cfg.request_timeout + 0.5)
    again = [o for o in eng.take_outputs()
             if isinstance(o, Send) and isinstance(o.message, Request)]
    assert again                          # re-issued within the timeout on the new clock
    assert eng.statistics().requests_timed_out >= len(first)
