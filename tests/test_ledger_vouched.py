"""What one admitted node cannot do to the ledger of another (issue 25, items 1 and 2).

A version vector moves only over counters the origin vouches for (an entry it signed
and this ledger holds), counters far above the clock are refused, ``append`` stops
cleanly at the counter's limit; re-wrapped relay content is deduplicated before it
is verified or stored and is not passed on, and each origin has a relay quota and a
push rate. Each test replays an attack with the project's own functions."""

from __future__ import annotations

import random

import pytest

import protocol._gossip as gossip_module
from protocol._config import GossipConfig
from protocol._errors import LocalProtocolError
from protocol._events import SendMessage
from protocol._gossip import GossipDelta, GossipEngine, GossipPush
from protocol._ledger import MAX_COUNTER, CounterExhausted, Entry, Ledger
from protocol._manifest_head import ManifestHead

from ._fleet import admitted_ledger, intent, manifest, node_key, record

X = node_key(1)          # the origin whose vector the liar attacks
LIAR = node_key(2)       # an admitted (captured) node


def _engine(ledger: Ledger, node_id: str, peers: tuple[str, ...] = ()) -> GossipEngine:
    g = GossipEngine(node_id=node_id, config=GossipConfig(), rng=random.Random(1),
                     ledger=ledger, now=0.0)
    for p in peers:
        g.peer_connected(p, 0.0)
    g.take_outputs()
    return g


def test_a_claim_with_no_entries_moves_no_vector_and_x_is_still_heard() -> None:
    """``GossipDelta((), {X: (0, 2**62)})``: the receiver's vector for X stays put, it
    still takes X's entries, and it claims nothing of X to its own peers."""
    victim, xs = admitted_ledger(3), admitted_ledger(3)
    g = _engine(victim, node_key(0).key_id)
    g.receive(LIAR.key_id, GossipDelta((), {bytes.fromhex(X.key_id): (0, 2**62)}), 1.0)
    assert victim.version_of(X.key_id) == 0
    assert victim.statistics().refused.get("claim") == 1
    xs.append(X, record("x"), floor=1000)
    for piece in xs.delta_since(victim.version_vector):
        victim.merge_entries(piece.entries, piece.ranges, 2.0)
    assert victim.record(X.key_id) is not None
    assert victim.version_of(X.key_id) == xs.version_of(X.key_id) == 1000


def test_a_claim_is_cut_to_the_newest_entry_of_its_origin_held() -> None:
    victim, xs = admitted_ledger(3), admitted_ledger(3)
    e = xs.append(X, record("x"), floor=50)
    victim.merge_entries([e], {X.key_id: (0, 2**62)})
    assert victim.version_of(X.key_id) == 50
    assert victim.top_counter(X.key_id) == 50


def test_a_forged_claim_cannot_exhaust_the_origins_own_counter() -> None:
    """Sent to X itself with 2**64 - 1: X can still write its record and relay intents."""
    xs = admitted_ledger(3)
    g = _engine(xs, X.key_id)
    g.receive(LIAR.key_id, GossipDelta((), {bytes.fromhex(X.key_id): (0, MAX_COUNTER)}), 1.0)
    assert xs.version_of(X.key_id) == 0
    e = xs.append(X, record("x"), floor=1000)
    assert e.counter == 1000
    assert xs.append(X, intent("1.0.0")).counter == 1001


def test_append_at_the_counters_limit_fails_cleanly() -> None:
    led = admitted_ledger(3)
    led.merge_entries([Entry.create(X, MAX_COUNTER, record("x"))])
    with pytest.raises(LocalProtocolError) as raised:   # not an OverflowError
        led.append(X, record("x2"))
    assert isinstance(raised.value, CounterExhausted)


def test_counters_far_above_the_clock_are_refused() -> None:
    led = admitted_ledger(3)
    far = Entry.create(X, 2**62, record("x"))
    result = led.merge_entries([far], {X.key_id: (0, 2**62)}, now=1.7e9)
    assert not result.added and led.record(X.key_id) is None
    assert led.version_of(X.key_id) == 0
    assert led.statistics().refused.get("ahead") == 1


def _counting_verify(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the checks of manifest heads (what ledger entries carry)."""
    calls: list[str] = []
    real = ManifestHead.verify

    def counted(self: ManifestHead, *args: object, **kwargs: object) -> None:
        calls.append(self.manifest_id)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ManifestHead, "verify", counted)
    return calls


def test_a_rewrapped_manifest_is_stored_and_verified_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One node re-wraps one manifest under many counters: the receiver holds it once,
    verifies the manifest once, and reports only the first copy as added."""
    m, _ = manifest(size=64 * 1024)
    liar = admitted_ledger(3)
    copies = [liar.append(LIAR, m) for _ in range(200)]
    assert len(liar.manifests()) == 1
    calls = _counting_verify(monkeypatch)
    victim = admitted_ledger(3)
    first = victim.merge_entries(copies[:100])
    second = victim.merge_entries(copies[100:])
    third = victim.merge_entries(copies)
    assert len(first.added) == 1 and not second.added and not third.added
    stats = victim.statistics()
    assert stats.manifests == 1 and stats.entries == 1
    assert calls == [m.manifest_id]
    # the vector still covers every counter of the liar that was stamped (the newest
    # stamp vouches for the ones it replaced), so anti-entropy settles
    for piece in liar.delta_since(victim.version_vector):
        victim.merge_entries(piece.entries, piece.ranges)
    assert victim.version_of(LIAR.key_id) == liar.version_of(LIAR.key_id)
    assert not liar.missing_for(victim.version_vector)


def test_only_new_content_is_forwarded() -> None:
    """A push of a re-wrap of content already held goes no further."""
    m, _ = manifest()
    liar = admitted_ledger(3)
    a, b = liar.append(LIAR, m), liar.append(LIAR, m)
    relay = admitted_ledger(3)
    g = _engine(relay, node_key(0).key_id, peers=(LIAR.key_id, X.key_id))
    g.receive(LIAR.key_id, GossipPush((a,), {}), 1.0)
    sent = [o for o in g.take_outputs() if isinstance(o, SendMessage)
            and isinstance(o.message, GossipPush)]
    assert [o.peer for o in sent] == [X.key_id]
    g.receive(LIAR.key_id, GossipPush((b,), {}), 1.1)
    assert not [o for o in g.take_outputs() if isinstance(o, SendMessage)
                and isinstance(o.message, GossipPush)]
    assert relay.statistics().entries == 1


def test_relay_entries_over_an_origins_quota_are_refused_and_counted() -> None:
    liar = admitted_ledger(3)
    wrapped = [liar.append(LIAR, intent(f"1.0.{i}", wall=i + 1)) for i in range(5)]
    victim = Ledger(admitted_ledger(3).trust, relay_quota=3)
    result = victim.merge_entries(wrapped, None, 1.0)
    assert len(result.added) == 3 and len(victim.intents()) == 3
    assert victim.statistics().refused.get("quota") == 2
    # records are not relays: the origin can still write its own
    assert victim.merge_entries([liar.append(LIAR, record("l"))], None, 1.0).added


def test_pushes_over_an_origins_rate_are_refused_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gossip_module, "PUSH_BURST", 4.0)
    monkeypatch.setattr(gossip_module, "PUSH_RATE", 2.0)
    liar = admitted_ledger(3)
    wrapped = tuple(liar.append(LIAR, intent(f"1.0.{i}", wall=i + 1)) for i in range(8))
    victim = admitted_ledger(3)
    g = _engine(victim, node_key(0).key_id, peers=(LIAR.key_id,))
    result = g.receive(LIAR.key_id, GossipPush(wrapped[:6], {}), 10.0)
    assert result is not None and len(result.added) == 4
    assert g.statistics().pushes_refused == 2
    # the bucket refills at the rate: one second later two more go in
    result = g.receive(LIAR.key_id, GossipPush(wrapped[6:], {}), 11.0)
    assert result is not None and len(result.added) == 2
    assert g.statistics().pushes_refused == 2


def test_another_origins_stamp_of_held_content_is_not_news(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A second origin wrapping a manifest held already: its stamp is kept (it vouches
    for that origin's counter) but the manifest is not verified again nor reported
    added, so a push of it goes no further."""
    m, _ = manifest(size=64 * 1024)
    first = admitted_ledger(3).append(X, m)
    again = admitted_ledger(3).append(LIAR, m)
    calls = _counting_verify(monkeypatch)
    victim = admitted_ledger(3)
    assert victim.merge_entries([first]).added == (first,)
    result = victim.merge_entries([again], {LIAR.key_id: (0, again.counter)})
    assert not result.added and not result.errors
    assert calls == [m.manifest_id]
    assert victim.statistics().entries == 2
    assert victim.version_of(LIAR.key_id) == again.counter


def test_replacing_entries_over_an_origins_byte_rate_are_dropped_new_content_never() -> None:
    """An origin that re-stamps a large manifest again and again (each stamp would
    replace the held one and travel on) is rated in bytes: stamps over its bucket are
    dropped and counted, the vector still moves with the origin's next entry held (so
    no peer resends them round after round), its new content is never rated, and other
    origins are not slowed."""
    m, _ = manifest(size=1 << 20)
    liar = admitted_ledger(3)
    stamps = [liar.append(LIAR, m) for _ in range(4)]
    size = len(stamps[0].encoded())
    news = [liar.append(LIAR, intent(f"2.0.{i}", wall=i + 1)) for i in range(3)]
    honest = admitted_ledger(3)
    mine = honest.append(X, record("x"))
    victim = Ledger(admitted_ledger(3).trust, rate=size, burst=1.5 * size)
    victim.merge_entries([stamps[0]], None, 10.0)            # new content: free
    victim.merge_entries([stamps[1]], None, 10.0)            # replaces: takes the burst
    result = victim.merge_entries([stamps[2], mine], {X.key_id: (0, mine.counter)}, 10.0)
    assert victim.statistics().refused.get("rate") == 1      # over: dropped
    assert result.added == (mine,) and victim.version_of(X.key_id) == mine.counter
    # new content of the same origin goes in whatever its bucket holds
    result = victim.merge_entries(news, {LIAR.key_id: (0, news[-1].counter)}, 10.0)
    assert len(result.added) == 3
    assert victim.version_of(LIAR.key_id) == news[-1].counter   # past the dropped stamp
    assert victim.statistics().manifests == 1 and len(victim.intents()) == 3
    # a second later the bucket holds one stamp again
    victim.merge_entries([stamps[3]], None, 11.0)
    assert victim.statistics().refused.get("rate") == 1
    # records that replace a record are rated too; the first one is not
    recs = [liar.append(LIAR, record("l", written_at=i)) for i in range(4)]
    small = Ledger(admitted_ledger(3).trust, rate=1.0, burst=len(recs[0].encoded()) + 1)
    for r in recs:
        small.merge_entries([r], None, 20.0)
    assert small.statistics().refused.get("rate") == 2      # the 3rd and 4th
    assert small.record_counter(LIAR.key_id) == recs[1].counter
