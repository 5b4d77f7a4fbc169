"""Urgent entries (intents, manifests, revocations, operator and publisher certificates)
are pushed at once and flood the overlay in hops, without waiting for anti-entropy
rounds (``protocol/_gossip.py``, "Urgent entries are pushed"). Real node state
machines over random connected graphs; no timers run after the order, so whatever
arrives came by push."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._config import Config, GossipConfig
from protocol._events import SendMessage
from protocol._gossip import GossipDelta, GossipPush, urgent
from protocol._identity import Role
from protocol._ledger import Entry
from protocol._node import NodeMachine
from sim._fleet import SimNode
from sim._network import LinkProfile

from ._fleet import FLEET, InProcessFleet, intent, manifest, node_cert, node_key, record
from .swarm_sim import random_connected_graph


class Overlay(InProcessFleet):
    """Node machines joined along ``edges`` (per-link FIFO, jittered latency, so
    deliveries interleave across links in a seeded order); it counts what each directed
    link pushed and which entries anti-entropy deltas carried, and lists drops."""

    def __init__(self, n: int, edges: set[tuple[int, int]], seed: int,
                 push: bool = True) -> None:
        self.pushed: dict[tuple[int, int, str, int], int] = {}  # (src, dst, entry) -> copies
        self.in_deltas: set[tuple[str, int]] = set()   # entries sent by anti-entropy
        super().__init__(n, seed=seed, edges=edges, strict=False,
                         config=Config(fleet_id=FLEET, gossip=GossipConfig(push=push)),
                         profile=LinkProfile(latency=0.005, jitter=0.01))

    @property
    def machines(self) -> list[NodeMachine]:
        return [self.m(i) for i in range(len(self.nodes))]

    def observe(self, node: SimNode, out: Any) -> None:
        super().observe(node, out)
        if isinstance(out, SendMessage):
            dst = self.by_id[out.peer].index
            if isinstance(out.message, GossipDelta):
                self.in_deltas.update((e.origin, e.counter) for e in out.message.entries)
            if isinstance(out.message, GossipPush):
                for e in out.message.entries:
                    k = (node.index, dst, e.origin, e.counter)
                    self.pushed[k] = self.pushed.get(k, 0) + 1

    def lose_in_flight(self, i: int) -> None:
        """What node ``i`` just asked to send is lost (counted, never delivered)."""
        node = self.nodes[i]
        for out in node.machine.take_outputs():
            self.observe(node, out)

    def rounds(self, seconds: float) -> None:
        """Anti-entropy rounds (timers) for ``seconds``, then deliver what is in flight."""
        self.advance(seconds)
        self.drain()


def vector_claims_only_what_is_held(fleet: Overlay) -> None:
    """The ledger's invariant for entries that are never replaced: one whose counter
    a node's vector covers is held there (claims travelling with pushes were true)."""
    relay = {(e.origin, e.counter) for m in fleet.machines for e in m.ledger.entries()
             if e.record is None}
    for i, m in enumerate(fleet.machines):
        held = {(e.origin, e.counter) for e in m.ledger.entries()}
        vv = m.ledger.version_vector
        for origin, counter in relay:
            assert counter > vv.get(origin, 0) or (origin, counter) in held, (
                f"node {i}'s vector covers {origin[:8]}:{counter} but does not hold it")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 9), extra=st.integers(0, 8))
def test_an_order_floods_every_node_without_a_round(seed: int, n: int, extra: int) -> None:
    """After the fleet is in sync (but for one lost manifest), a manifest published at
    one node and an intent issued at another reach every node by push alone (no timer
    runs); each directed link carries each entry at most once, and the vectors stay
    sound: no claim covers the lost manifest where it is missing."""
    rng = random.Random(seed)
    fleet = Overlay(n, random_connected_graph(rng, list(range(n)), extra), seed)
    fleet.rounds(12.0)
    # an earlier manifest whose pushes are lost: nodes then lack an entry below the
    # order's, and no claim may cover it
    lost, _ = manifest(version="0.9.0", seed=f"lost{seed}")
    at = rng.randrange(n)
    fleet.m(at).publish_manifest(lost, fleet.now)
    fleet.lose_in_flight(at)
    man, _ = manifest(seed=str(seed))
    it = intent("1.0.0", wall=int(fleet.now * 1000) + 1)
    at = rng.randrange(n)
    fleet.m(at).publish_manifest(man, fleet.now)
    fleet.pump(at)
    fleet.issue(rng.randrange(n), it)
    fleet.drain()
    for m in fleet.machines:
        assert m.ledger.head_by_id(man.manifest_id) == man.head()   # (the ledger's part)
        assert m.ledger.intent(it.intent_id) == it
    assert fleet.pushed and max(fleet.pushed.values()) == 1
    assert not fleet.drops
    vector_claims_only_what_is_held(fleet)
    fleet.rounds(6.0)                 # the rounds afterwards change nothing of that
    vector_claims_only_what_is_held(fleet)


def test_a_line_carries_the_order_once_per_hop_and_claims_advance_vectors() -> None:
    """On a line 0-1-2-3-4 in sync, an intent written at 0 crosses each hop once,
    never comes back, and every node's vector moves up to it (the writer's claim
    travels with it), so later rounds do not send it again."""
    n = 5
    fleet = Overlay(n, {(i, i + 1) for i in range(n - 1)}, seed=3)
    fleet.rounds(15.0)
    it = intent("1.0.0", wall=int(fleet.now * 1000) + 1)
    fleet.issue(0, it)
    written = next(e for e in fleet.m(0).ledger.entries() if e.intent == it)
    fleet.drain()
    hops = {(s, d) for (s, d, o, c) in fleet.pushed if (o, c) == (written.origin,
                                                                   written.counter)}
    assert hops == {(i, i + 1) for i in range(n - 1)}
    for m in fleet.machines:
        assert m.ledger.version_of(written.origin) >= written.counter
    fleet.rounds(8.0)
    assert (written.origin, written.counter) not in fleet.in_deltas
    assert sum(m.gossip.statistics().entries_pushed for m in fleet.machines) == \
        sum(fleet.pushed.values())


def test_without_push_nothing_moves_until_a_round() -> None:
    fleet = Overlay(3, {(0, 1), (1, 2)}, seed=5, push=False)
    fleet.rounds(12.0)
    it = intent("1.0.0", wall=int(fleet.now * 1000) + 1)
    fleet.issue(0, it)
    fleet.drain()
    assert fleet.m(2).ledger.intent(it.intent_id) is None
    assert not fleet.pushed
    fleet.rounds(5.0)
    assert fleet.m(2).ledger.intent(it.intent_id) == it


def test_a_forged_push_gets_its_sender_dropped_and_goes_no_further() -> None:
    """Nodes verify before they pass anything on: a push carrying an intent entry whose
    signature does not verify drops the sender, and no node forwards it."""
    fleet = Overlay(3, {(0, 1), (1, 2)}, seed=7)
    fleet.rounds(12.0)
    real = Entry.create(node_key(0), 10**13, intent("9.9.9", wall=10**12))
    forged = replace(real, signature=bytes(64))
    fleet.m(1).receive(fleet.m(0).node_id, GossipPush((forged,), {}), fleet.now)
    fleet.pump(1)
    assert [(i, d.peer) for i, d in fleet.drops] == [(1, fleet.m(0).node_id)]
    assert not fleet.pushed
    fleet.drain()
    assert all(m.ledger.intent(real.intent.intent_id) is None  # type: ignore[union-attr]
               for m in fleet.machines)


def test_entries_learned_from_a_round_are_not_forwarded() -> None:
    """Only a push is passed on: an intent that arrives in an anti-entropy delta is old
    news, and the rounds carry it on."""
    fleet = Overlay(3, {(0, 1), (1, 2)}, seed=9)
    fleet.rounds(12.0)
    e = Entry.create(node_key(0), 10**13, intent("2.0.0", wall=10**12))
    fleet.m(1).receive(fleet.m(0).node_id, GossipDelta((e,), {}), fleet.now)
    fleet.pump(1)
    assert fleet.m(1).ledger.intent(e.intent.intent_id) is not None  # type: ignore[union-attr]
    assert not fleet.pushed


def test_what_is_urgent() -> None:
    it = Entry.create(node_key(0), 1, intent("1.0.0"))
    man = Entry.create(node_key(0), 2, manifest()[0])
    rec = Entry.create(node_key(0), 3, record())
    node = Entry.create(node_key(0), 4, node_cert(node_key(5)))
    assert node.certificate is not None and node.certificate.role is Role.NODE
    assert urgent(it) and urgent(man)
    assert not urgent(rec) and not urgent(node)
