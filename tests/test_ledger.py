from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._errors import InvalidValue
from protocol._intents import IntentKind, Scope, resolve
from protocol._ledger import Entry, Ledger

from ._fleet import (
    OPERATOR,
    ROGUE,
    admitted_ledger,
    intent,
    key,
    manifest,
    node_cert,
    node_key,
    record,
)

N = 3
INTENTS = [intent(f"1.{i}.0", wall=i + 1) for i in range(4)]
MANIFESTS = [manifest(version=f"1.{i}.0", seed=str(i), size=2048)[0] for i in range(2)]

# an op: (writer node, what) with what 0..3 an intent, 4..5 a manifest, 6+ a record
ops = st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, 9)), max_size=8)


def build(history: list[tuple[int, int]]) -> Ledger:
    led = admitted_ledger(N)
    for who, what in history:
        ident = node_key(who)
        if what < 4:
            led.append(ident, INTENTS[what])
        elif what < 6:
            led.append(ident, MANIFESTS[what - 4])
        else:
            led.append(ident, record(name=f"n{who}", written_at=float(what)))
    return led


def joined(*ledgers: Ledger) -> Ledger:
    out = admitted_ledger(N)
    for led in ledgers:
        out.merge(led)
    return out


# Each replica writes as its own origin (a node only stamps its own counters).
def replica(i: int, history: list[tuple[int, int]]) -> Ledger:
    return build([(i, what) for _, what in history])


@given(ops, ops)
def test_merge_is_commutative(h1: list[tuple[int, int]], h2: list[tuple[int, int]]) -> None:
    a, b = replica(0, h1), replica(1, h2)
    assert joined(a, b).state_key() == joined(b, a).state_key()


@given(ops, ops, ops)
@settings(max_examples=30)
def test_merge_is_associative(h1: list[tuple[int, int]], h2: list[tuple[int, int]],
                              h3: list[tuple[int, int]]) -> None:
    a, b, c = replica(0, h1), replica(1, h2), replica(2, h3)
    left = joined(joined(a, b), c)
    right = joined(a, joined(b, c))
    assert left.state_key() == right.state_key()


@given(ops)
def test_merge_is_idempotent(h: list[tuple[int, int]]) -> None:
    a = replica(0, h)
    before = a.state_key()
    a.merge(a)
    assert a.state_key() == before
    assert joined(a, a).state_key() == before


@given(ops, ops, st.integers(1, 4000), st.booleans())
def test_delta_merge_equals_full_merge(h1: list[tuple[int, int]], h2: list[tuple[int, int]],
                                       max_bytes: int, reverse: bool) -> None:
    """b's history grows on top of a shared past; the pieces of the delta, applied in any
    order (twice when reversed), give what a full merge gives."""
    base = replica(0, h1)
    b = joined(base)
    for _, what in h2:
        b.append(node_key(1), record(name="b", written_at=float(what)))
    a_full, a_delta = joined(base), joined(base)
    a_full.merge(b)
    pieces = b.delta_since(a_delta.version_vector, max_bytes)
    assert all(p.size <= max_bytes or len(p.entries) == 1 for p in pieces)
    order = list(reversed(pieces)) + pieces if reverse else pieces
    for p in order:
        a_delta.merge_entries(p.entries, p.ranges)
    assert a_delta.state_key() == a_full.state_key()
    assert not b.delta_since(a_delta.version_vector)  # nothing left to send


def test_delta_since_is_exactly_what_is_missing() -> None:
    a = admitted_ledger(N)
    for i in range(3):
        a.append(node_key(0), INTENTS[i])
    b = joined(a)
    b.append(node_key(1), INTENTS[3])
    b.append(node_key(0), record(name="x"))   # node 0 writes on b's copy too? no: origin 0
    pieces = b.delta_since(a.version_vector)
    sent = {(e.origin, e.counter) for p in pieces for e in p.entries}
    assert sent == {(node_key(1).key_id, 1), (node_key(0).key_id, 4)}


def test_newer_record_replaces_older() -> None:
    a = admitted_ledger(1)
    me = node_key(0)
    a.append(me, record(name="old"))
    a.append(me, INTENTS[0])
    a.append(me, record(name="new"))
    rec = a.record(me.key_id)
    assert rec is not None and rec.name == "new"
    assert a.statistics().records == 1 and a.statistics().intents == 1
    # an old copy of the record arriving late changes nothing
    stale = Entry.create(me, 1, record(name="old"))
    before = a.state_key()
    a.merge_entries([stale])
    assert a.state_key() == before


def _desired(led: Ledger, node: int = 0) -> str | None:
    it = resolve(led.intents(), "m", node_key(node).key_id, led.records(), led.trust)
    return None if it is None else it.version


def test_forged_intents_never_change_desired_state() -> None:
    led = admitted_ledger(N)
    relay = node_key(1)
    led.append(node_key(0), record(name="n0"))
    led.append(relay, INTENTS[0])
    assert _desired(led) == "1.0.0"
    newer = intent("9.9.9", wall=1000)
    forgeries = [
        replace(newer, version="6.6.6"),                        # tampered field
        replace(newer, scope=Scope.of_nodes("nobody")),          # tampered scope
        intent("9.9.9", wall=1000, issuer=ROGUE),                # unknown operator
        replace(intent("9.9.9", wall=1000, issuer=ROGUE),        # someone else's signature
                issuer_key=OPERATOR.public_key),
    ]
    counter = 10
    for forged in forgeries:
        counter += 1
        entry = Entry.create(relay, counter, forged)    # relayed by an honest-looking node
        result = led.merge_entries([entry], {relay.key_id: (counter - 1, counter)})
        assert result.rejected == {"intent": 1}
        assert _desired(led) == "1.0.0"
    assert led.statistics().rejected == {"intent": len(forgeries)}
    # a cancel by a rogue key cancels nothing
    rogue_cancel = intent("1.0.0", kind=IntentKind.CANCEL, cancels=INTENTS[0].intent_id,
                          issuer=ROGUE)
    led.merge_entries([Entry.create(relay, 50, rogue_cancel)])
    assert _desired(led) == "1.0.0"


def test_entries_need_an_admitted_origin_and_its_own_signature() -> None:
    led = admitted_ledger(N)
    stranger = key("stranger")
    r = led.merge_entries([Entry.create(stranger, 1, INTENTS[0])],
                          {stranger.key_id: (0, 1)})
    assert r.rejected == {"intent": 1} and not led.intents()
    assert r.forged == 0      # an unknown key is not proof of forgery: its cert may be late
    assert led.version_vector.get(stranger.key_id, 0) == 0
    # a record "for node 0" signed by node 1's key
    real = Entry.create(node_key(0), 1, record(name="n0"))
    forged = replace(real, signature=Entry.create(node_key(1), 1, record(name="n0")).signature)
    r = led.merge_entries([forged])
    assert r.rejected == {"record": 1} and r.forged == 1
    assert led.record(node_key(0).key_id) is None


def test_certificate_travels_with_the_entries_it_admits() -> None:
    src = admitted_ledger(N)
    newcomer = key("newcomer")
    src.trust.add_certificate(node_cert(newcomer))
    src.append(newcomer, node_cert(newcomer))
    src.append(newcomer, record(name="newcomer"))
    dst = admitted_ledger(N)     # does not know the newcomer's certificate yet
    for p in src.delta_since(dst.version_vector):
        dst.merge_entries(p.entries, p.ranges)
    assert dst.state_key() == src.state_key()
    assert dst.record(newcomer.key_id) is not None


def test_local_write_of_unverifiable_payload_is_refused() -> None:
    led = admitted_ledger(N)
    with pytest.raises(InvalidValue):
        led.append(node_key(0), intent(issuer=ROGUE))


def test_a_lost_piece_never_lets_the_vector_skip_its_entries() -> None:
    src = admitted_ledger(N)
    for i in range(4):
        src.append(node_key(0), INTENTS[i])
    dst = admitted_ledger(N)
    pieces = src.delta_since(dst.version_vector, max_bytes=1)   # one entry per piece
    assert len(pieces) == 4
    for p in pieces[1:]:            # the first piece is lost, the rest arrive
        dst.merge_entries(p.entries, p.ranges)
    assert dst.version_vector.get(node_key(0).key_id, 0) == 0
    assert len(dst.intents()) == 3
    for p in src.delta_since(dst.version_vector):   # the next round repairs it
        dst.merge_entries(p.entries, p.ranges)
    assert dst.state_key() == src.state_key()
