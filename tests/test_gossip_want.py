"""``GossipWant``: a node asks its peers for the manifests a live intent names and it
lacks (one it forgot by ``protocol/_settle.py``'s rule, or one still on its way), and a
peer answers with the signed entries -- at a rate per asking peer, since an answer can
be a large manifest. (The whole story, with retirement: tests/test_settle.py.)"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from protocol._codec import decode, encode
from protocol._config import GossipConfig
from protocol._errors import InvalidValue, MalformedMessage
from protocol._events import SendMessage
from protocol._gossip import (
    WANT_AFTER,
    WANT_BURST,
    WANT_EVERY,
    WANT_RATE,
    GossipDelta,
    GossipEngine,
    GossipWant,
)
from protocol._ledger import Entry, Ledger

from ._fleet import admitted_ledger, intent, manifest, node_key

ME, PEER_A, PEER_B = (node_key(i).key_id for i in range(3))


def _engine(ledger: Ledger, peers: tuple[str, ...]) -> GossipEngine:
    g = GossipEngine(node_id=ME, config=GossipConfig(), rng=random.Random(1), ledger=ledger,
                     now=0.0)
    for p in peers:
        g.peer_connected(p, 0.0)
    g.take_outputs()
    return g


def _sent(g: GossipEngine, kind: type) -> list[SendMessage]:
    return [o for o in g.take_outputs() if isinstance(o, SendMessage)
            and isinstance(o.message, kind)]


def test_a_missing_manifest_is_asked_for_after_a_while_of_each_peer_in_turn() -> None:
    led = admitted_ledger(6)
    assert not led.merge_entries([Entry.create(node_key(5), 1, intent("2.0.0"))]).errors
    g = _engine(led, (PEER_A, PEER_B))
    t = 0.0
    asked: list[tuple[float, str]] = []
    while t < WANT_AFTER + 3 * WANT_EVERY:
        t += 1.0
        if g.on_timer(t):
            asked += [(t, o.peer) for o in _sent(g, GossipWant)]
    assert asked, "never asked"
    assert asked[0][0] >= WANT_AFTER              # not at once: it may be on its way
    times = [a for a, _ in asked]
    assert all(b - a >= WANT_EVERY - 1 for a, b in pairwise(times))
    assert {p for _, p in asked} == {PEER_A, PEER_B}   # not always the same peer
    # once it arrives, no more asking
    man, _ = manifest(version="2.0.0")
    assert not led.merge_entries([Entry.create(node_key(4), 1, man)]).errors
    for _ in range(3 * int(WANT_EVERY)):
        t += 1.0
        g.on_timer(t)
        assert not _sent(g, GossipWant)
    assert g.statistics().wants_sent == len(asked)


def test_a_want_is_answered_with_the_signed_entry_at_a_rate_per_peer() -> None:
    led = admitted_ledger(6)
    man, _ = manifest(version="1.0.0")
    entry = Entry.create(node_key(4), 1, man)
    assert not led.merge_entries([entry]).errors
    g = _engine(led, (PEER_A, PEER_B))
    want = GossipWant((("m", "1.0.0"), ("m", "9.9.9")))   # one held, one not
    answers = []
    for _ in range(int(WANT_BURST) + 5):                    # at one instant
        g.receive(PEER_A, want, 1.0)
        answers += _sent(g, GossipDelta)
    assert len(answers) == WANT_BURST                       # the rest are not answered
    assert all(a.message.entries == (entry,) and not a.message.ranges for a in answers)
    g.receive(PEER_B, want, 1.0)                            # another peer: its own bucket
    assert len(_sent(g, GossipDelta)) == 1
    g.receive(PEER_A, want, 1.0 + 1 / WANT_RATE)                  # PEER_A, later: one more token
    assert len(_sent(g, GossipDelta)) == 1
    # and the asking ledger takes the entry back
    other = admitted_ledger(6)
    assert other.merge_entries(answers[0].message.entries).added == (entry,)
    assert other.head_for("m", "1.0.0") == man.head()


def test_bad_wants_are_typed_errors() -> None:
    with pytest.raises(InvalidValue):
        GossipWant(())
    with pytest.raises(InvalidValue):
        GossipWant(tuple(("m", f"1.0.{i}") for i in range(9)))
    with pytest.raises(InvalidValue):
        GossipWant((("m", "not-a-version"),))
    with pytest.raises(InvalidValue):
        GossipWant((("../etc", "1.0.0"),))
    raw = encode(GossipWant((("m", "1.0.0"),))).replace(b"1.0.0", b"1.0.x")
    with pytest.raises(MalformedMessage):
        decode(raw)


def test_a_clock_that_steps_back_does_not_stall_the_want() -> None:
    """A want timed by the old clock is asked again within WANT_EVERY of the new one."""
    led = admitted_ledger(6)
    led.append(node_key(5), intent("2.0.0"))          # a live intent names it; not held
    g = _engine(led, (PEER_A,))
    t = 10_000.0
    g.on_timer(t)                                     # the want is noted (asked later)
    g.take_outputs()
    g.clock_stepped_back(t - 3600.0)
    back = t - 3600.0
    asked = False
    for k in range(int(WANT_EVERY) * 2 + 4):
        g.on_timer(back + k + 1.0)
        asked = asked or bool(_sent(g, GossipWant))
    assert asked
