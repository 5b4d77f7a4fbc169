"""A reply digest only when needed (``protocol/_gossip.py``): the side that opened a
round answers the peer's digest with the delta the peer lacks, and with its own digest
only when the peer's vector shows something it lacks itself (or the peer is behind on
its own origin, a restart gap) -- otherwise the peer could only send an empty delta."""

from __future__ import annotations

import random

from protocol._config import GossipConfig
from protocol._events import SendMessage
from protocol._gossip import GossipDelta, GossipDigest, GossipEngine
from protocol._ledger import Ledger

from ._fleet import admitted_ledger, node_key, record

A, B = node_key(0).key_id, node_key(1).key_id


def _pair(n: int = 4) -> tuple[Ledger, Ledger, GossipEngine, GossipEngine]:
    """Two ledgers that hold the same record of each of ``n`` nodes; engines of
    nodes 0 (x) and 1 (y), connected."""
    a, b = admitted_ledger(n), admitted_ledger(n)
    for i in range(n):
        e = a.append(node_key(i), record(name=f"n{i}"))
        b.merge_entries([e], {node_key(i).key_id: (0, e.counter)})
    cfg = GossipConfig()
    x = GossipEngine(node_id=A, config=cfg, rng=random.Random(1), ledger=a, now=0.0)
    y = GossipEngine(node_id=B, config=cfg, rng=random.Random(2), ledger=b, now=0.0)
    x.peers.add(B)
    y.peers.add(A)
    return a, b, x, y


def _round(x: GossipEngine, y: GossipEngine) -> list[tuple[str, object]]:
    """One round opened by x (its summary to y) run to completion: (sender, message)."""
    engines = {A: x, B: y}
    sent: list[tuple[str, object]] = []
    queue: list[tuple[str, str, object]] = [(A, B, x._summary())]
    while queue:
        src, dst, msg = queue.pop(0)
        sent.append((src, msg))
        engines[dst].receive(src, msg, 1.0)
        for out in engines[dst].take_outputs():
            assert isinstance(out, SendMessage)
            queue.append((dst, out.peer, out.message))
    return sent


def _kinds(sent: list[tuple[str, object]]) -> list[tuple[str, str]]:
    return [("x" if src == A else "y", type(m).__name__
             + (f"({m.reply})" if isinstance(m, GossipDigest) else "")) for src, m in sent]


def test_a_round_whose_opener_holds_all_the_peer_has_ends_with_the_delta() -> None:
    a, b, x, y = _pair()
    a.append(node_key(2), record(name="n2-new"))    # x is ahead; y holds nothing new
    sent = _round(x, y)
    assert _kinds(sent) == [("x", "GossipSummary"), ("y", "GossipDigest(True)"),
                            ("x", "GossipDelta")]
    assert a.state_key() == b.state_key()


def test_a_round_where_both_sides_lack_something_still_goes_both_ways() -> None:
    a, b, x, y = _pair()
    a.append(node_key(2), record(name="n2-new"))
    b.append(node_key(3), record(name="n3-new"))
    sent = _round(x, y)
    assert _kinds(sent) == [("x", "GossipSummary"), ("y", "GossipDigest(True)"),
                            ("x", "GossipDelta"), ("x", "GossipDigest(False)"),
                            ("y", "GossipDelta")]
    assert a.state_key() == b.state_key()
    # and only the opener's lack: its digest goes, the peer answers with the delta
    a2, b2, x2, y2 = _pair()
    b2.append(node_key(3), record(name="n3-new"))
    assert _kinds(_round(x2, y2)) == [("x", "GossipSummary"), ("y", "GossipDigest(True)"),
                                      ("x", "GossipDigest(False)"), ("y", "GossipDelta")]
    assert a2.state_key() == b2.state_key()


def test_a_peer_behind_on_its_own_origin_still_gets_the_digest() -> None:
    # y is behind on its own entries (what a node that lost its ledger looks like):
    # the digest that closes its restart gap is sent although x lacks nothing of y's
    a, b, x, y = _pair()
    a.append(node_key(1), record(name="n1-later"))     # y's own newer entry, held by x
    sent = _round(x, y)
    assert ("x", "GossipDigest(False)") in _kinds(sent)
    assert any(isinstance(m, GossipDelta) and m.entries for _, m in sent)
    assert a.state_key() == b.state_key()
