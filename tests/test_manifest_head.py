"""Manifests as content (issue 21): the ledger carries a manifest's signed head; the
chunk lists travel by id, only to the nodes that need them.

What must hold: a head verifies by the publisher's own signature and says nothing its
manifest does not; a body is kept only for a head held and only if the head describes
it; a node fetches the body from peers (those that hold the version first) only when
a live intent makes the version its target, answers at a rate per asking peer, and
drops bodies it did not ask for; nodes out of scope never hold a chunk list."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import Scope, ScopeKind
from protocol._codec import decode, decode_value, encode, encode_value
from protocol._entries import Entry
from protocol._errors import InvalidValue, SignatureError
from protocol._events import SendMessage
from protocol._identity import SigningIdentity
from protocol._manifest import Manifest
from protocol._manifest_fetch import (
    ANSWER_BURST,
    ASK_EVERY,
    RELAY_FOR,
    BodyAnswer,
    BodyCancel,
    BodyWant,
    ManifestFetch,
)
from protocol._manifest_head import ManifestHead
from protocol._types import ModelOperationalStatus as S

from ._fleet import (
    PUBLISHER,
    InProcessFleet,
    admitted_ledger,
    intent,
    manifest,
    node_key,
    record,
    running,
)

PEER_A, PEER_B, PEER_C = (node_key(i).key_id for i in (1, 2, 3))


# ------------------------------------------------------------------ the head


def test_a_head_is_signed_by_the_publisher_and_names_its_manifest() -> None:
    m, _ = manifest(size=4_000_000)
    head = m.head()
    head.verify(admitted_ledger(1).trust)
    assert head.manifest_id == m.manifest_id and head.describes(m)
    assert [(v.variant_id, v.size) for v in head.variants] == [("cpu", 4_000_000)]
    assert decode_value(ManifestHead, encode_value(head)) == head
    # a few hundred bytes, whatever the model's size; the manifest grows with its chunks
    small, _ = manifest(size=1_000_000)
    assert abs(len(encode_value(head)) - len(encode_value(small.head()))) <= 8
    assert len(encode_value(head)) < 400
    assert len(encode_value(m)) - len(encode_value(small)) > 900    # ~41 B a chunk
    # signing again gives the same bytes (Ed25519 is deterministic): a publisher that
    # re-signs a stored manifest's head announces the very same content
    assert m.with_head_signature(PUBLISHER).head() == head


def test_a_tampered_head_or_a_foreign_signer_does_not_verify() -> None:
    m, _ = manifest()
    trust = admitted_ledger(1).trust
    bigger = dataclasses.replace(m.head(), variants=(dataclasses.replace(
        m.head().variants[0], size=1),))
    with pytest.raises(SignatureError):
        bigger.verify(trust)
    with pytest.raises(InvalidValue, match="publisher signs its head"):
        ManifestHead.signature_for(SigningIdentity.generate(), m)
    other, _ = manifest(version="2.0.0")
    assert not m.head().describes(other)


def test_a_manifest_stored_before_heads_has_none_until_its_publisher_signs() -> None:
    m, _ = manifest()
    old = dataclasses.replace(m, head_signature=None)
    assert old.manifest_id == m.manifest_id           # the id and signature are unchanged
    old.verify(admitted_ledger(1).trust)
    with pytest.raises(InvalidValue, match="no head signature"):
        old.head()
    assert old.with_head_signature(PUBLISHER).head() == m.head()


def test_the_ledger_keeps_a_body_only_for_its_head() -> None:
    led = admitted_ledger(3)
    m, _ = manifest()
    other, _ = manifest(version="2.0.0")
    entry = Entry.create(node_key(1), 1, m)
    assert entry.manifest == m.head()                 # the entry carries the head
    assert not led.merge_entries([entry]).errors
    assert led.head_for("m", "1.0.0") == m.head() and led.manifest_for("m", "1.0.0") is None
    assert not led.add_body(other)                    # no head held for it
    assert led.add_body(m) and led.manifest_for("m", "1.0.0") == m
    assert not led.add_body(m)                        # held already
    assert led.bodies() == [m]


# ------------------------------------------------------------------ the fetch engine


def _sent(f: ManifestFetch) -> list[tuple[str, object]]:
    return [(o.peer, o.message) for o in f.take_outputs() if isinstance(o, SendMessage)]


def test_a_body_is_asked_of_holders_first_then_in_turn_until_it_arrives() -> None:
    led = admitted_ledger(4)
    m, _ = manifest()
    assert not led.merge_entries([Entry.create(node_key(1), 1, m)]).errors
    # PEER_A wrote the head's entry; PEER_C runs 1.0.0 (it has the body); PEER_A's
    # record only waits for it
    for i, (peer_idx, status) in enumerate(((3, S.OPERATIONAL), (1, S.NOT_DEPLOYED))):
        rec = record(models=(running("m", "1.0.0", status),))
        assert not led.merge_entries([Entry.create(node_key(peer_idx), 10 + i, rec)]).errors
    f = ManifestFetch(led)
    f.want({m.manifest_id}, 0.0)
    assert f.next_deadline() == 0.0
    peers = [PEER_A, PEER_B, PEER_C]
    f.on_timer(0.0, peers)
    assert _sent(f) == [(PEER_C, BodyWant((bytes.fromhex(m.manifest_id),)))]
    f.on_timer(0.5, peers)                            # not due again yet
    assert _sent(f) == []
    f.on_timer(ASK_EVERY, [PEER_A, PEER_B])           # the holder left: the head's writer
    assert [p for p, _ in _sent(f)] == [PEER_A]
    assert f.next_deadline() == 3 * ASK_EVERY         # the spacing doubles
    others = sorted([PEER_B, "0" * 32])
    f.on_timer(3 * ASK_EVERY, others)                 # none of them: anyone, in turn
    assert f.next_deadline() == 7 * ASK_EVERY
    f.on_timer(7 * ASK_EVERY, others)
    assert sorted(p for p, _ in _sent(f)) == others
    # a body nobody asked for is dropped; the wanted one is kept and the asking stops
    stray, _ = manifest(version="3.0.0")
    assert not f.receive(PEER_A, BodyAnswer(stray), 8.0)
    assert f.receive(PEER_B, BodyAnswer(m), 8.0)
    assert led.manifest_for("m", "1.0.0") == m
    # every other peer asked is told not to send it (a relay among them stops)
    cancel = BodyCancel((bytes.fromhex(m.manifest_id),))
    assert _sent(f) == [(p, cancel) for p in sorted({PEER_C, PEER_A, "0" * 32})]
    f.want(set(), 9.0)
    f.on_timer(20.0, peers)
    assert _sent(f) == [] and f.next_deadline() is None
    st = f.statistics()
    assert (st.bodies_added, st.unsolicited, st.asks_sent, st.cancels) == (1, 1, 4, 3)


def test_a_relay_whose_askers_all_cancel_stops_and_cancels_its_own_ask() -> None:
    """PEER_A and PEER_B ask this node, which holds only the head: it relays to PEER_C.
    One asker cancelling leaves the relay on for the other; the last one cancelling
    stops it, and the ask to PEER_C is cancelled in turn; a copy still on its way is
    dropped as unsolicited and passed to nobody."""
    led = admitted_ledger(4)
    m, _ = manifest()
    assert not led.merge_entries([Entry.create(node_key(3), 1, m)]).errors
    f = ManifestFetch(led)
    ids = (bytes.fromhex(m.manifest_id),)
    f.receive(PEER_A, BodyWant(ids), 0.0)
    f.receive(PEER_B, BodyWant(ids), 0.0)
    f.on_timer(0.0, [PEER_A, PEER_B, PEER_C])
    assert _sent(f) == [(PEER_C, BodyWant(ids))]
    f.receive(PEER_A, BodyCancel(ids), 0.1)
    assert _sent(f) == [] and f.statistics().wanted == 1    # still relaying for PEER_B
    f.receive(PEER_C, BodyCancel(ids), 0.1)                 # not an asker: changes nothing
    assert f.statistics().wanted == 1
    f.receive(PEER_B, BodyCancel(ids), 0.2)
    assert _sent(f) == [(PEER_C, BodyCancel(ids))]
    assert f.statistics().wanted == 0 and f.next_deadline() is None
    assert not f.receive(PEER_C, BodyAnswer(m), 0.3)
    assert _sent(f) == [] and f.statistics().unsolicited == 1
    assert led.manifest_for("m", "1.0.0") is None


def test_a_node_that_wants_the_body_itself_keeps_asking_after_its_askers_cancel() -> None:
    led = admitted_ledger(4)
    m, _ = manifest()
    assert not led.merge_entries([Entry.create(node_key(3), 1, m)]).errors
    f = ManifestFetch(led)
    ids = (bytes.fromhex(m.manifest_id),)
    f.want({m.manifest_id}, 0.0)
    f.receive(PEER_A, BodyWant(ids), 0.0)
    f.on_timer(0.0, [PEER_A, PEER_B])
    assert _sent(f) == [(PEER_B, BodyWant(ids))]
    f.receive(PEER_A, BodyCancel(ids), 0.1)
    assert _sent(f) == [] and f.statistics().wanted == 1
    assert f.receive(PEER_B, BodyAnswer(m), 0.2)
    assert _sent(f) == []                                   # nobody else asked, nobody to serve


def test_a_node_with_no_peer_to_ask_waits_instead_of_spinning() -> None:
    """With nobody connected the ask cannot go out; its time moves on (a driver that
    fires the timer at the deadline must not be asked again at the same instant), and
    the first ask leaves once a peer is there, still counted as the first."""
    led = admitted_ledger(4)
    m, _ = manifest()
    assert not led.merge_entries([Entry.create(node_key(1), 1, m)]).errors
    f = ManifestFetch(led)
    f.want({m.manifest_id}, 0.0)
    f.on_timer(0.0, [])
    assert _sent(f) == [] and f.next_deadline() == ASK_EVERY
    f.on_timer(ASK_EVERY, [PEER_B])
    assert _sent(f) == [(PEER_B, BodyWant((bytes.fromhex(m.manifest_id),)))]
    assert f.next_deadline() == 2 * ASK_EVERY         # first ask: the first spacing


def test_wants_are_answered_with_the_body_at_a_rate_per_peer() -> None:
    led = admitted_ledger(4)
    m, _ = manifest()
    led.append(node_key(0), m)                        # this node published it
    f = ManifestFetch(led)
    want = BodyWant((bytes.fromhex(m.manifest_id), b"\x07" * 32))   # one held, one not
    answers = []
    for _ in range(int(ANSWER_BURST) + 3):
        f.receive(PEER_A, want, 1.0)
        answers += _sent(f)
    assert answers == [(PEER_A, BodyAnswer(m))] * int(ANSWER_BURST)
    f.receive(PEER_B, want, 1.0)                      # another peer: its own bucket
    assert _sent(f) == [(PEER_B, BodyAnswer(m))]
    assert f.statistics().answers_refused == 3
    # on the wire and back, the answer is the same manifest (the head signature too)
    back = decode(encode(BodyAnswer(m)))
    assert isinstance(back, BodyAnswer) and back.manifest.head() == m.head()


def test_a_body_that_its_head_does_not_describe_is_rejected_and_asked_again() -> None:
    led = admitted_ledger(4)
    m, _ = manifest()
    assert not led.merge_entries([Entry.create(node_key(1), 1, m)]).errors
    f = ManifestFetch(led)
    f.want({m.manifest_id}, 0.0)
    # a body with a broken Merkle root but the same content id cannot exist; one with
    # the publisher's signature torn off does: the id matches, its check fails
    torn = dataclasses.replace(m, signature=b"\x00" * 64)
    assert torn.manifest_id == m.manifest_id
    assert not f.receive(PEER_A, BodyAnswer(torn), 0.5)
    assert f.statistics().rejected == 1 and led.manifest_for("m", "1.0.0") is None
    assert f.next_deadline() is not None              # still wanted


def test_a_peer_without_the_body_relays_the_want_and_passes_the_body_on() -> None:
    """PEER_A asks this node, which holds the head but not the body: it asks on (not
    back to PEER_A), and once the body comes, sends it to PEER_A and keeps it. The
    relay ends after RELAY_FOR seconds if nothing comes."""
    led = admitted_ledger(4)
    m, _ = manifest()
    other, _ = manifest(version="2.0.0")
    for k, man in enumerate((m, other), start=1):
        assert not led.merge_entries([Entry.create(node_key(3), k, man)]).errors
    f = ManifestFetch(led)
    ids = (bytes.fromhex(m.manifest_id), bytes.fromhex(other.manifest_id))
    assert not f.receive(PEER_A, BodyWant(ids), 0.0)
    assert _sent(f) == []                             # nothing to answer with yet
    f.on_timer(0.0, [PEER_A, PEER_B])
    assert _sent(f) == [(PEER_B, BodyWant(ids))]      # on, never back to the asker
    assert not f.receive(PEER_B, BodyAnswer(m), 0.2)  # kept, passed on; not this node's want
    assert _sent(f) == [(PEER_A, BodyAnswer(m))]
    assert led.manifest_for("m", "1.0.0") == m
    assert f.statistics().relayed == 1
    f.on_timer(RELAY_FOR, [PEER_A, PEER_B])           # the other never came: given up,
    assert _sent(f) == [(PEER_B, BodyCancel(ids[1:]))]  # and the ask of it taken back
    f.on_timer(RELAY_FOR + 100, [PEER_A, PEER_B])
    assert _sent(f) == [] and f.next_deadline() is None


def test_bad_wants_are_typed_errors() -> None:
    with pytest.raises(InvalidValue):
        BodyWant(())
    with pytest.raises(InvalidValue):
        BodyWant((b"\x01" * 31,))
    with pytest.raises(InvalidValue):
        BodyWant(tuple(bytes([i]) * 32 for i in range(9)))
    with pytest.raises(InvalidValue):
        BodyCancel(())
    with pytest.raises(InvalidValue):
        BodyCancel((b"\x01" * 33,))


# ------------------------------------------------------------------ whole machines


def test_only_nodes_in_scope_fetch_the_chunk_list() -> None:
    """Four nodes; a rollout to n0 and n1, published at n3. Every node holds the head
    (it can name the version, answer convergence); only n0, n1 (and the publisher)
    hold the chunk list, and the two targets run the version."""
    fleet = InProcessFleet(4)
    mid, _ = fleet.publish_files("1.0.0", at=3)
    fleet.issue(3, intent("1.0.0", wall=1, scope=Scope(ScopeKind.NODES, nodes=("n0", "n1"))))
    fleet.advance(30)
    for n in range(4):
        assert fleet.m(n).ledger.head_by_id(mid) is not None
    held = [fleet.m(n).ledger.manifest_by_id(mid) is not None for n in range(4)]
    assert held == [True, True, False, True]
    for n in (0, 1):
        st = fleet.m(n).model_state("m")
        assert st is not None and st.active_version == "1.0.0"
        fetch = fleet.m(n).statistics().fetch
        assert fetch is not None and fetch.bodies_added == 1
    assert fleet.m(2).model_state("m") is None


def test_a_manifest_body_is_not_published_without_its_head() -> None:
    """A machine refuses a manifest whose head its publisher never signed: the ledger
    could not carry it."""
    fleet = InProcessFleet(1)
    m, _ = manifest()
    with pytest.raises(InvalidValue, match="no head signature"):
        fleet.m(0).publish_manifest(dataclasses.replace(m, head_signature=None),
                                    fleet.now)


def test_manifest_is_still_a_manifest() -> None:
    m, _ = manifest()
    assert isinstance(m, Manifest) and m.head_signature is not None


def test_a_clock_that_steps_back_does_not_stall_the_asks() -> None:
    """Asks spaced by the old clock would wait an hour after the wall clock stepped an
    hour back; they come due within the longest spacing of the new one."""
    led = admitted_ledger(4)
    m, _ = manifest()
    assert not led.merge_entries([Entry.create(node_key(1), 1, m)]).errors
    f = ManifestFetch(led)
    t0 = 10_000.0
    f.want({m.manifest_id}, t0)
    f.on_timer(t0, [PEER_A])
    _sent(f)
    f.clock_stepped_back(t0 - 3600.0)
    deadline = f.next_deadline()
    assert deadline is not None and deadline <= t0 - 3600.0 + 8 * ASK_EVERY
