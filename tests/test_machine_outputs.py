"""Driver policy as outputs of the node machine, and its typed core:

* ``PersistLedger`` comes before every output that carries an own entry, and a quiet
  node asks for no save;
* a dropped peer carries the protocol's ban (``DropPeer.ban_for``, ``protocol/_bans``);
* ``Notice.kind`` is a :class:`NoticeKind`;
* model-status changes follow the table of ``protocol/_state``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from protocol._bans import BANS, BanPolicy, DropCause
from protocol._errors import LocalProtocolError
from protocol._events import DropPeer, Notice, NoticeKind, PersistLedger, SendMessage
from protocol._gossip import GossipDelta, GossipPush
from protocol._ledger import Entry, ModelState
from protocol._node import NodeMachine
from protocol._state import TRANSITIONS, change_state, check_transition
from protocol._types import BlockerReason, ModelOperationalStatus
from sim._fleet import SimNode

from ._fleet import InProcessFleet, intent, node_key, record

S = ModelOperationalStatus


class CheckedFleet(InProcessFleet):
    """A fleet that checks, for every output a node's driver carries out, that an
    own entry never leaves before a ``PersistLedger`` covering its counter."""

    def __init__(self, n: int) -> None:
        self.persisted: dict[str, int] = {}
        self.saves = 0
        self.own_sent = 0
        super().__init__(n)

    def observe(self, node: SimNode, out: object) -> None:
        i, me = node.index, node.node_id
        if isinstance(out, PersistLedger):
            self.saves += 1
            self.persisted[me] = max(self.persisted.get(me, 0), out.counter)
        elif isinstance(out, SendMessage) and isinstance(out.message, GossipDelta | GossipPush):
            for e in out.message.entries:
                if e.origin == me:
                    self.own_sent += 1
                    assert e.counter <= self.persisted.get(me, 0), \
                        f"node {i} sent own entry {e.counter} before it was persisted"
        super().observe(node, out)


def test_own_entries_are_persisted_before_any_output_carries_them() -> None:
    fleet = CheckedFleet(4)
    fleet.publish_files()
    fleet.issue(2, intent("1.0.0"))
    fleet.advance(40)
    for i in range(4):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.status is S.OPERATIONAL
    assert fleet.own_sent > 0 and fleet.saves > 0
    for i in range(4):      # every own write was asked to be saved
        m = fleet.m(i)
        assert fleet.persisted[m.node_id] == m.ledger.top_counter(m.node_id)


def test_persist_ledger_comes_first_and_once_per_input() -> None:
    fleet = InProcessFleet(2)
    fleet.advance(5.0)
    m = fleet.m(0)
    m.take_outputs()
    m.issue_intent(intent("1.0.0"), fleet.now)   # operator certificate, intent, record
    outs = m.take_outputs()
    persists = [k for k, o in enumerate(outs) if isinstance(o, PersistLedger)]
    assert persists == [0]                       # coalesced: one save covers all three
    assert outs[0] == PersistLedger(m.ledger.top_counter(m.node_id))
    assert any(isinstance(o, SendMessage) and isinstance(o.message, GossipPush) for o in outs)


def test_a_quiet_node_asks_for_no_save() -> None:
    fleet = CheckedFleet(3)
    fleet.advance(5.0)                  # start-up: certificates and first records spread
    assert fleet.saves > 0
    fleet.saves = 0
    fleet.advance(30.0)                 # gossip rounds and keepalives, nothing new written
    assert fleet.saves == 0


def test_a_liar_is_dropped_with_the_protocols_ban() -> None:
    fleet = InProcessFleet(3)
    fleet.advance(5.0)
    target, liar = fleet.m(0), fleet.m(2)
    good = Entry.create(node_key(1), 10**13, record(name="n1-renamed"))
    real = Entry.create(node_key(1), 10**13 + 1, record(name="n1-again"))
    target.take_outputs()
    target.receive(liar.node_id, GossipDelta((good, replace(real, signature=good.signature)),
                                             {}), fleet.now)
    (drop,) = [o for o in target.take_outputs() if isinstance(o, DropPeer)]
    assert drop.peer == liar.node_id
    assert drop.ban_for == BANS.ban_for(DropCause.MISBEHAVED) == math.inf


def test_ban_policy_forgives_an_unresponsive_peer_but_not_a_liar() -> None:
    assert BANS.ban_for(DropCause.MISBEHAVED) == math.inf
    assert 0 < BANS.ban_for(DropCause.UNRESPONSIVE) < math.inf
    assert BanPolicy(unresponsive=5.0).ban_for(DropCause.UNRESPONSIVE) == 5.0
    assert DropPeer("p", "why").ban_for == BANS.misbehaved


def test_notice_kind_is_an_enum() -> None:
    m: NodeMachine = InProcessFleet(1).m(0)
    m.take_outputs()
    m.chunk_store_failed(b"\x01" * 32, BlockerReason.INSUFFICIENT_STORAGE, "full", 1.0)
    (notice,) = [o for o in m.take_outputs() if isinstance(o, Notice)]
    assert notice.kind is NoticeKind.STORE_FAILED
    assert Notice("swarm.peer_dropped", "x").kind is NoticeKind.PEER_DROPPED  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Notice("no_such_kind", "x")  # type: ignore[arg-type]


def test_transition_table() -> None:
    assert set(TRANSITIONS) == set(S)
    for status, allowed in TRANSITIONS.items():
        assert status in allowed                  # progress without a status change
    # an install is entered only from a finished transfer, and only its end leaves it
    assert {s for s in S if S.LOADING in TRANSITIONS[s]} == {S.DOWNLOADING, S.LOADING}
    # (or, when the install found chunks it held bad or gone, the transfer again)
    assert TRANSITIONS[S.LOADING] == {S.LOADING, S.OPERATIONAL, S.DEGRADED, S.FAILED,
                                      S.DOWNLOADING}
    assert {s for s in S if S.DEGRADED in TRANSITIONS[s]} == {S.OPERATIONAL, S.DEGRADED,
                                                              S.LOADING}
    with pytest.raises(LocalProtocolError):
        check_transition("m", S.NOT_DEPLOYED, S.LOADING)
    with pytest.raises(LocalProtocolError):
        check_transition("m", S.LOADING, S.NOT_DEPLOYED)
    st = ModelState("m", "1.0.0", "v", S.LOADING)
    with pytest.raises(LocalProtocolError):
        change_state(st, status=S.NOT_DEPLOYED)
    assert change_state(st, bytes_done=5) == replace(st, bytes_done=5)
    assert change_state(st, status=S.OPERATIONAL).status is S.OPERATIONAL
