"""Issue 25, items 3 and 7: a merged revocation cuts the revoked node's sessions at once
(and its later input is refused), and ``nodes=NAME`` scopes match the name the fleet root
signed into a node's certificate, never the name a node writes in its own record."""

from __future__ import annotations

import math
from typing import Any

from protocol._events import DropPeer, SendMessage, ServeChunk
from protocol._identity import Certificate, FleetTrust, Revocation, Role
from protocol._intents import Scope, scope_matches
from protocol._operator import find_node
from protocol._types import ModelOperationalStatus
from sim._fleet import SimNode

from ._fleet import (
    FLEET,
    ROOT,
    InProcessFleet,
    _Clocked,
    intent,
    lone_machine,
    make_trust,
    node_cert,
    node_key,
    record,
)

# ------------------------------------------------------------------ revocation


def test_a_peer_whose_certificate_expires_mid_session_is_dropped_until_renewed() -> None:
    """Expiry is re-checked while connected: the first input whose clock passes a
    connected peer's expiry drops it (cause *expired*, a short ban, not for ever); its
    in-flight input is refused; a renewed certificate admits it again."""
    m = lone_machine(0, now=100.0)
    a = node_key(1)
    m.trust.add_certificate(Certificate.issue(ROOT, FLEET, a.public_key, Role.NODE, "a",
                                              1, 200_000))        # expires at t = 200 s
    m.peer_connected(a.key_id, 100.0)
    m.take_outputs()
    m.on_timer(199.0)
    assert not [o for o in m.take_outputs() if isinstance(o, DropPeer)]
    m.on_timer(200.5)
    outs = m.take_outputs()
    drops = [o for o in outs if isinstance(o, DropPeer)]
    assert [d.peer for d in drops] == [a.key_id]
    assert "expired" in drops[0].reason and 0 < drops[0].ban_for < math.inf
    assert not any(isinstance(o, (SendMessage, ServeChunk)) and o.peer == a.key_id
                   for o in outs)
    before = len(list(m.ledger.entries()))
    m.receive(a.key_id, _any_gossip(m), 201.0)
    assert [o for o in m.take_outputs() if isinstance(o, DropPeer)] == [drops[0]]
    assert len(list(m.ledger.entries())) == before
    # the root renews it: the next session is kept
    assert m.trust.add_certificate(Certificate.issue(ROOT, FLEET, a.public_key, Role.NODE,
                                                     "a", 2, 10**9))
    m.peer_connected(a.key_id, 202.0)
    assert not [o for o in m.take_outputs() if isinstance(o, DropPeer)]
    m.on_timer(300.0)
    assert not [o for o in m.take_outputs() if isinstance(o, DropPeer)]


def _any_gossip(m: Any) -> Any:
    from protocol._gossip import GossipSummary
    return GossipSummary(bytes(16), 1)



def test_machine_drops_a_connected_peer_when_its_key_is_revoked_and_refuses_its_input() -> None:
    m = lone_machine(0, now=100.0)
    other = lone_machine(1, now=100.0)
    a = node_key(1)
    m.trust.add_certificate(node_cert(a))
    m.peer_connected(a.key_id, 100.0)
    m.take_outputs()

    assert m.announce_trust(Revocation.issue(ROOT, FLEET, a.public_key, 2), 101.0)
    outs = m.take_outputs()
    drops = [o for o in outs if isinstance(o, DropPeer)]
    assert [(d.peer, d.ban_for) for d in drops] == [(a.key_id, math.inf)]
    assert "revoked" in drops[0].reason
    assert not any(isinstance(o, (SendMessage, ServeChunk)) and o.peer == a.key_id
                   for o in outs)

    # whatever still arrives from it is refused (dropped again), never merged
    other.peer_connected(m.node_id, 100.0)
    sent = [o for o in other.take_outputs() if isinstance(o, SendMessage)]
    assert sent
    before = len(list(m.ledger.entries()))
    for s in sent:
        m.receive(a.key_id, s.message, 102.0)
        assert m.take_outputs() == [DropPeer(a.key_id, drops[0].reason, math.inf)]
    assert len(list(m.ledger.entries())) == before

    # a session the transport should have refused is dropped too
    m.peer_connected(a.key_id, 103.0)
    assert [type(o) for o in m.take_outputs()] == [DropPeer]

    # a later certificate admits the key again: no more drops
    m.announce_trust(Certificate.issue(ROOT, FLEET, a.public_key, Role.NODE, "node", 3), 104.0)
    m.take_outputs()
    m.peer_connected(a.key_id, 105.0)
    assert not any(isinstance(o, DropPeer) for o in m.take_outputs())


class _OwnTrust(InProcessFleet):
    """Each node with a trust store of its own (the simulator shares one): a node
    learns of a revocation only when gossip brings it."""

    def _machine(self, **kw: Any) -> _Clocked:
        shared: FleetTrust = kw["trust"]
        own = FleetTrust(shared.fleet_id, shared.root_key, verifier=shared.verifier)
        for c in shared.certificates():
            own.add_certificate(c)
        kw["trust"] = own
        return super()._machine(**kw)


def test_a_node_revoked_mid_run_is_cut_off_by_every_node_at_once() -> None:
    n, revoked = 5, 4
    fleet = _OwnTrust(n, strict=False)
    a_id = fleet.nodes[revoked].node_id
    a_key = node_key(revoked).public_key
    to_a: list[tuple[float, str]] = []                    # (when, from whom) A received

    def on_receive(node: SimNode, src: str, message: Any) -> None:
        if node.index == revoked:
            to_a.append((fleet.now, src))
    fleet.on_receive.append(on_receive)
    fleet.publish_files(size=4_000_000)
    fleet.issue(0, intent("1.0.0"))
    fleet.advance(0.03)                                   # the transfer is under way
    st = fleet.m(revoked).model_state("m")
    assert st is not None and st.status is ModelOperationalStatus.DOWNLOADING

    learned: dict[int, float] = {}                        # when each node merged it

    def after_input(i: int, timer: bool) -> None:
        if i not in learned and not fleet.m(i).trust.is_admitted(a_key, Role.NODE):
            learned[i] = fleet.now
    fleet.after_input = after_input                       # type: ignore[method-assign]

    t0 = fleet.now
    fleet.m(0).announce_trust(Revocation.issue(ROOT, FLEET, a_key, 1), t0)
    learned[0] = t0
    fleet.pump(0)
    fleet.advance(30.0)

    honest = [i for i in range(n) if i != revoked]
    for i in honest:
        me = fleet.nodes[i].node_id
        cut = [(t, reason) for t, node, peer, reason in fleet.drop_log
               if node == me and peer == a_id]
        assert cut, f"node {i} kept its session with the revoked node"
        assert cut[0][0] == learned[i], "not dropped at the moment the revocation merged"
        assert "revoked" in cut[0][1]
        assert a_id not in fleet.nodes[i].peers
        # nothing from this node reached the revoked one after it cut the session
        assert not [t for t, src in to_a if src == me and t > cut[0][0]]
    last_cut = max(learned[i] for i in honest)
    assert not [t for t, _ in to_a if t > last_cut]       # no more chunks, no more gossip
    assert all(d.ban_for == math.inf for i, d in fleet.drops if d.peer == a_id)
    st = fleet.m(revoked).model_state("m")               # cut off mid-transfer
    assert st is not None and st.status is not ModelOperationalStatus.OPERATIONAL
    for i in honest:                                      # the others carry on
        st = fleet.m(i).model_state("m")
        assert st is not None and st.status is ModelOperationalStatus.OPERATIONAL


# ------------------------------------------------------------------ certified names


def test_nodes_scope_matches_the_certified_name_not_the_record() -> None:
    trust = make_trust()
    trust.add_certificate(node_cert(node_key(0), "cam-1"))
    trust.add_certificate(node_cert(node_key(1), "cam-2"))
    id0, id1 = node_key(0).key_id, node_key(1).key_id
    liar = record(name="cam-1")                           # node 1 claims node 0's name
    assert not scope_matches(Scope.of_nodes("cam-1"), id1, liar, trust)
    assert scope_matches(Scope.of_nodes("cam-1"), id0, record(name="whatever"), trust)
    assert scope_matches(Scope.of_nodes("cam-2"), id1, liar, trust)
    assert scope_matches(Scope.of_nodes(id1), id1, liar, trust)   # ids keep working
    assert not scope_matches(Scope.of_nodes("cam-1"), id1, liar)  # no trust: ids only


def test_a_node_claiming_anothers_name_does_not_get_its_deployments() -> None:
    fleet = InProcessFleet(3)
    fleet.restart(2, name="n1")                           # node 2's record says "n1"
    fleet.publish_files()
    fleet.advance(5.0)
    id1, id2 = fleet.nodes[1].node_id, fleet.nodes[2].node_id
    records = fleet.m(0).ledger.records()
    assert records[id2].name == "n1" and records[id1].name == "n1"
    assert find_node(fleet.m(0).ledger, "n1") == id1
    assert find_node(fleet.m(0).ledger, "n2") == id2     # its certificate says n2
    fleet.issue(0, intent("1.0.0", scope=Scope.of_nodes("n1")))
    fleet.advance(40.0)
    assert [len(x) for x in fleet.installs] == [0, 1, 0]
    assert fleet.m(2).desired("m") is None
