"""Whole NodeMachines wired together in-process (:class:`tests._fleet.InProcessFleet`)."""

from __future__ import annotations

from dataclasses import replace

from protocol._capabilities import Requirements
from protocol._chunking import chunk_bytes
from protocol._convergence import compute_convergence
from protocol._events import ActivateVersion
from protocol._intents import IntentKind, Scope
from protocol._manifest import FileEntry, Manifest, Variant, merkle_root
from protocol._types import ModelOperationalStatus

from ._fleet import InProcessFleet, intent, make_trust, model_files, node_key, record, running

S = ModelOperationalStatus


def test_intent_issued_at_one_node_reaches_all() -> None:
    fleet = InProcessFleet(5)
    it = intent("1.0.0", wall=1)
    fleet.issue(3, it)
    fleet.advance(15)
    for i in range(5):
        assert fleet.m(i).ledger.intent(it.intent_id) == it
        assert len(fleet.m(i).ledger.records()) == 5     # every node's record spread
        assert fleet.m(i).desired("m") == it


def test_small_model_distributes_and_installs_everywhere() -> None:
    fleet = InProcessFleet(4)
    manifest_id, _ = fleet.publish_files()
    fleet.issue(2, intent("1.0.0"))
    fleet.advance(40)
    for i in range(4):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.status is S.OPERATIONAL and st.active_version == "1.0.0"
    for installs in fleet.installs[1:]:
        assert [x.manifest_id for x in installs] == [manifest_id]
    statuses = [fleet.m(i).convergence("m", "1.0.0", fleet.now) for i in range(4)]
    assert all(x == statuses[0] for x in statuses)     # the same answer at every node
    s = statuses[0]
    assert s.is_success and s.total_platforms == 4 and s.version_distribution == {"1.0.0": 4}


def test_rollback_with_old_version_on_disk_activates_without_transfer() -> None:
    installed = {i: [("m", "1.0.0", "cpu"), ("m", "2.0.0", "cpu")] for i in range(3)}
    fleet = InProcessFleet(3, installed=installed)
    fleet.issue(0, intent("1.0.0", kind=IntentKind.ROLLBACK, wall=5))
    fleet.advance(20)
    for i in range(3):
        assert fleet.activations[i] == [ActivateVersion("m", "1.0.0", "cpu")]
        assert fleet.installs[i] == [] and fleet.served[i] == 0
        st = fleet.m(i).model_state("m")
        assert st is not None and st.active_version == "1.0.0"
    assert fleet.m(1).convergence("m", "1.0.0", fleet.now).is_success


def test_cancel_stops_the_transfer_and_returns_to_the_running_version() -> None:
    installed = {i: [("m", "1.0.0", "cpu")] for i in range(3)}
    fleet = InProcessFleet(3, installed=installed)
    it = intent("2.0.0", wall=5)
    fleet.issue(1, it)     # no manifest for 2.0.0 anywhere: stays pending
    fleet.advance(10)
    for i in range(3):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.version == "2.0.0" and st.status is S.NOT_DEPLOYED
    fleet.issue(2, intent("2.0.0", kind=IntentKind.CANCEL, cancels=it.intent_id,
                                   wall=6))
    fleet.advance(10)
    fleet.publish_files(version="2.0.0")           # arrives after the cancel: nothing happens
    fleet.advance(20)
    for i in range(3):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.version == "1.0.0" and st.status is S.OPERATIONAL
        assert fleet.installs[i] == []
        assert fleet.m(i).desired("m") is None


def test_formation_scope_installs_only_inside_the_formation() -> None:
    fleet = InProcessFleet(4, formations=["a", "a", "b", "b"])
    fleet.publish_files()
    fleet.issue(3, intent("1.0.0", scope=Scope.of_formation("a")))
    fleet.advance(40)
    assert [len(x) for x in fleet.installs] == [1, 1, 0, 0]
    s = fleet.m(2).convergence("m", "1.0.0", fleet.now)
    assert s.total_platforms == 2 and s.is_success


def test_quiet_fleet_gossip_is_small_and_statistics_add_up() -> None:
    fleet = InProcessFleet(3)
    fleet.advance(10)
    before = [fleet.m(i).statistics().gossip for i in range(3)]
    fleet.advance(20)
    after = [fleet.m(i).statistics().gossip for i in range(3)]
    for b, a in zip(before, after, strict=True):
        assert a.rounds > b.rounds
        assert a.summaries_in_sync > b.summaries_in_sync
    assert all(fleet.m(i).statistics().rejected_entries == {} for i in range(3))


# ------------------------------------ variants, final byte counts, rollback targets, relays


def _variant(variant_id: str, data: bytes) -> Variant:
    refs = tuple(chunk_bytes(data))
    f = FileEntry("model.bin", len(data), refs, merkle_root([r.hash for r in refs]))
    return Variant(variant_id, Requirements(), (f,))


def _publish_variants(fleet: InProcessFleet, version: str,
                      variants: list[tuple[str, bytes]]) -> Manifest:
    """Sign a manifest of ``variants`` (all runnable anywhere, preference order) and
    publish it at node 0, whose store holds every chunk."""
    return fleet.publish_variants(version, [(_variant(vid, data), data)
                                            for vid, data in variants])


def test_explicit_variant_replaces_another_variant_of_the_running_version() -> None:
    installed = {i: [("m", "1.0.0", "fp32")] for i in range(3)}
    fleet = InProcessFleet(3, installed=installed)
    _, fp32 = model_files("fp32", 300_000)
    _, int8 = model_files("int8", 150_000)
    man = _publish_variants(fleet, "1.0.0", [("fp32", fp32), ("int8", int8)])
    explicit = intent("1.0.0", variant="int8", wall=5)
    fleet.issue(1, explicit)
    fleet.advance(40)
    for i in range(3):
        assert [(x.manifest_id, x.variant_id, x.previous_version)
                for x in fleet.installs[i]] == [(man.manifest_id, "int8", "1.0.0")]
        st = fleet.m(i).model_state("m")
        assert st is not None and st.status is S.OPERATIONAL
        assert (st.version, st.variant_id, st.active_version) == ("1.0.0", "int8", "1.0.0")
        assert st.intent_id == explicit.intent_id
    s = fleet.m(2).convergence("m", "1.0.0", fleet.now)
    assert s.is_success and s.total_platforms == 3
    # Auto selection would pick fp32 (first in preference order), but a node that
    # runs the version is left alone whatever variant it runs.
    auto = intent("1.0.0", wall=6)
    fleet.issue(0, auto)
    fleet.advance(20)
    for i in range(3):
        assert len(fleet.installs[i]) == 1 and fleet.activations[i] == []
        st = fleet.m(i).model_state("m")
        assert st is not None and st.variant_id == "int8" and st.intent_id == auto.intent_id
    assert fleet.m(0).convergence("m", "1.0.0", fleet.now).is_success


def test_explicit_variant_counts_as_converged_only_on_that_variant() -> None:
    trust = make_trust()
    ids = [f"{i:032x}" for i in range(3)]
    it = intent("1.0.0", variant="w")
    records = {ids[0]: record("a", models=(running("m", "1.0.0"),)),    # variant "v"
               ids[1]: record("b", models=(replace(running("m", "1.0.0"), variant_id="w"),)),
               ids[2]: record("c", models=(replace(running("m", "1.0.0", S.FAILED),
                                                   variant_id=""),))}
    s = compute_convergence("m", "1.0.0", [it], records, trust, set(), 0.0)
    assert (s.total_platforms, s.converged, s.pending, s.failed) == (3, 1, 1, 1)
    s = compute_convergence("m", "1.0.0", [intent("1.0.0")], records, trust, set(), 0.0)
    assert (s.converged, s.pending, s.failed) == (2, 0, 1)


def test_final_record_reports_bytes_reused_and_fetched() -> None:
    fleet = InProcessFleet(3)
    _, base = model_files("base", 600_000)
    changed = base[:300_000] + model_files("patch", 40_000)[1] + base[340_000:]
    _publish_variants(fleet, "1.0.0", [("cpu", base)])
    fleet.issue(0, intent("1.0.0", wall=1))
    fleet.advance(30)
    m2 = _publish_variants(fleet, "1.1.0", [("cpu", changed)])
    fleet.issue(0, intent("1.1.0", wall=2))
    fleet.advance(30)
    total = m2.variants[0].size
    for i in range(3):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.active_version == "1.1.0" and st.status is S.OPERATIONAL
        assert st.bytes_total == st.bytes_done == total
        assert st.bytes_reused + st.bytes_fetched == total
        if i == 0:      # the publisher held every chunk
            assert (st.bytes_reused, st.bytes_fetched) == (total, 0)
        else:           # only the changed region moved
            assert 0 < st.bytes_fetched < total // 2 < st.bytes_reused
        for j in range(3):   # the record every node holds says the same
            rec = fleet.m(j).ledger.records()[fleet.m(i).node_id].model("m")
            assert rec is not None
            assert (rec.bytes_reused, rec.bytes_fetched) == (st.bytes_reused, st.bytes_fetched)


def test_rollback_targets_only_nodes_that_had_the_model() -> None:
    installed = {i: [("m", "1.0.0", "cpu"), ("m", "2.0.0", "cpu")] for i in range(3)}
    fleet = InProcessFleet(4, installed=installed)        # node 3 never ran the model
    fleet.publish_files(version="1.0.0")                  # node 3 could fetch it
    rb = intent("1.0.0", kind=IntentKind.ROLLBACK, wall=5)
    fleet.issue(3, rb)            # issued at the untargeted node
    fleet.advance(30)
    for i in range(3):
        assert fleet.activations[i] == [ActivateVersion("m", "1.0.0", "cpu")]
        assert fleet.installs[i] == [] and fleet.m(i).desired("m") == rb
    n3 = fleet.m(3)
    assert fleet.installs[3] == [] and fleet.activations[3] == [] and n3.desired("m") is None
    assert n3.model_state("m") is None
    assert fleet.nodes[3].disk.held.isdisjoint(fleet.nodes[0].disk.held)
    for i in range(4):
        s = fleet.m(i).convergence("m", "1.0.0", fleet.now)
        assert s.total_platforms == 3 and s.is_success
        assert s.version_distribution == {"1.0.0": 3}
    # a distribute (not a rollback) does reach node 3
    fleet.issue(0, intent("1.0.0", wall=6))
    fleet.advance(30)
    assert [x.version for x in fleet.installs[3]] == ["1.0.0"]
    assert fleet.m(3).convergence("m", "1.0.0", fleet.now).total_platforms == 4


def test_a_peer_relaying_a_tampered_entry_is_dropped_and_honest_entries_kept() -> None:
    """Honest nodes verify before they relay, so a delta carrying an entry whose signature
    does not verify proves its sender lied: the node keeps the good entries, drops the peer."""
    from protocol._events import DropPeer
    from protocol._gossip import GossipDelta
    from protocol._ledger import Entry

    fleet = InProcessFleet(3)
    fleet.advance(5.0)                     # gossip: every node learns the others' certificates
    target, liar = fleet.m(0), fleet.m(2)
    good = Entry.create(node_key(1), 10**13, record(name="n1-renamed"))
    real = Entry.create(node_key(1), 10**13 + 1, record(name="n1-again"))
    tampered = replace(real, signature=good.signature)
    target.take_outputs()
    target.receive(liar.node_id, GossipDelta((good, tampered), {}), fleet.now)
    outs = target.take_outputs()
    drops = [o for o in outs if isinstance(o, DropPeer)]
    assert [d.peer for d in drops] == [liar.node_id]
    assert "do not verify" in drops[0].reason
    rec = target.ledger.record(node_key(1).key_id)
    assert rec is not None and rec.name == "n1-renamed"      # the honest entry was merged
