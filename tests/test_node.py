"""Several NodeMachines wired together in-process (h11's ConnectionPair idea)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace

from protocol._capabilities import Requirements
from protocol._chunking import chunk_bytes
from protocol._config import Config
from protocol._convergence import compute_convergence
from protocol._events import (
    ActivateVersion,
    DropPeer,
    InstallVariant,
    SendMessage,
    ServeChunk,
    StoreChunk,
)
from protocol._intents import IntentKind, Scope
from protocol._manifest import FileEntry, Manifest, Variant, merkle_root
from protocol._node import NodeMachine
from protocol._swarm import make_piece
from protocol._types import ModelOperationalStatus

from ._fleet import (
    PUBLISHER,
    caps,
    intent,
    make_trust,
    manifest,
    model_files,
    node_cert,
    node_key,
    record,
    running,
)

S = ModelOperationalStatus


@dataclass
class _Host:
    machine: NodeMachine
    store: dict[bytes, bytes] = field(default_factory=dict)
    installs: list[InstallVariant] = field(default_factory=list)
    activations: list[ActivateVersion] = field(default_factory=list)
    served: int = 0


class LocalFleet:
    """Delivers SendMessage directly; carries out chunk and install outputs in memory."""

    def __init__(self, n: int, seed: int = 1, formations: list[str] | None = None,
                 installed: dict[int, list[tuple[str, str, str]]] | None = None,
                 stores: dict[int, dict[bytes, bytes]] | None = None) -> None:
        self.now = 0.0
        self.hosts: list[_Host] = []
        self.queue: deque[tuple[int, str, object]] = deque()
        for i in range(n):
            ident = node_key(i)
            m = NodeMachine(config=Config(fleet_id="test-fleet"), identity=ident,
                            certificate=node_cert(ident, f"n{i}"), trust=make_trust(),
                            rng=random.Random(seed * 1000 + i), now=self.now, name=f"n{i}",
                            formation=(formations or [""] * n)[i], capabilities=caps(),
                            held_chunks=(stores or {}).get(i, {}).keys(),
                            installed=(installed or {}).get(i, []))
            self.hosts.append(_Host(m, dict((stores or {}).get(i, {}))))
        self.index = {h.machine.node_id: i for i, h in enumerate(self.hosts)}
        for a in range(n):
            for b in range(n):
                if a != b:
                    self.hosts[a].machine.peer_connected(self.hosts[b].machine.node_id,
                                                         self.now)

    # hooks for fleets with skewed clocks (test_clock) or cut links (test_liveness)
    def local(self, i: int) -> float:
        """Node ``i``'s wall clock."""
        return self.now

    def up(self, i: int) -> bool:
        """Is node ``i`` running (a down node's outputs and timers are lost)?"""
        return True

    def delivers(self, src: int, dst: int) -> bool:
        """Does a message from node ``src`` reach node ``dst``?"""
        return True

    def _after_input(self, i: int) -> None:
        """Called after each message or timer node ``i`` handles."""

    def _pump(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for i, h in enumerate(self.hosts):
                for out in h.machine.take_outputs():
                    progressed = True
                    if self.up(i):
                        self._carry_out(i, h, out)
            while self.queue:
                progressed = True
                dst, src, msg = self.queue.popleft()
                if self.delivers(self.index[src], dst):
                    self.hosts[dst].machine.receive(src, msg, self.local(dst))
                    self._after_input(dst)

    def _carry_out(self, i: int, h: _Host, out: object) -> None:
        m, now = h.machine, self.local(i)
        if isinstance(out, SendMessage):
            self.queue.append((self.index[out.peer], m.node_id, out.message))
        elif isinstance(out, ServeChunk):
            data = h.store.get(out.chunk_hash)
            if data is None:
                m.chunk_missing(out.chunk_hash, now)
            else:
                h.served += 1
                self.queue.append((self.index[out.peer], m.node_id,
                                   make_piece(out.chunk_hash, data, out.priority)))
        elif isinstance(out, StoreChunk):
            h.store[out.chunk_hash] = out.data
            m.chunk_stored(out.chunk_hash, now)
        elif isinstance(out, InstallVariant):
            h.installs.append(out)
            m.install_finished(out.model_id, out.version, out.variant_id, True, None, "", now)
        elif isinstance(out, ActivateVersion):
            h.activations.append(out)
        elif isinstance(out, DropPeer):
            raise AssertionError(f"unexpected drop: {out}")

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        self._pump()
        for _ in range(1_000_000):       # bounded: a busy loop fails instead of hanging
            # each deadline is in its node's clock: convert to the fleet's
            due = [d - (self.local(i) - self.now) for i, h in enumerate(self.hosts)
                   if self.up(i) and (d := h.machine.next_deadline()) is not None]
            t = min(due, default=end)
            if t > end:
                break
            self.now = max(self.now, t)
            for i, h in enumerate(self.hosts):
                d = h.machine.next_deadline()
                if self.up(i) and d is not None and d <= self.local(i):
                    self._timer(i)
            self._pump()
        else:
            raise AssertionError("timer loop did not settle: busy loop")
        self.now = end

    def _timer(self, i: int) -> None:
        self.hosts[i].machine.on_timer(self.local(i))
        self._after_input(i)

    def m(self, i: int) -> NodeMachine:
        return self.hosts[i].machine


def _publish(fleet: LocalFleet, version: str = "1.0.0", seed: str = "a",
             size: int = 600_000) -> tuple[str, bytes]:
    man, data = manifest(version=version, seed=seed, size=size)
    host = fleet.hosts[0]
    for f in man.variants[0].files:
        off = 0
        for c in f.chunks:
            host.store[c.hash] = data[off:off + c.size]
            off += c.size
            host.machine.chunk_stored(c.hash, fleet.now)
    host.machine.publish_manifest(man, fleet.now)
    return man.manifest_id, data


def test_intent_issued_at_one_node_reaches_all() -> None:
    fleet = LocalFleet(5)
    it = intent("1.0.0", wall=1)
    fleet.m(3).issue_intent(it, fleet.now)
    fleet.run(15)
    for i in range(5):
        assert fleet.m(i).ledger.intent(it.intent_id) == it
        assert len(fleet.m(i).ledger.records()) == 5     # every node's record spread
        assert fleet.m(i).desired("m") == it


def test_small_model_distributes_and_installs_everywhere() -> None:
    fleet = LocalFleet(4)
    manifest_id, _ = _publish(fleet)
    fleet.m(2).issue_intent(intent("1.0.0"), fleet.now)
    fleet.run(40)
    for i in range(4):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.status is S.OPERATIONAL and st.active_version == "1.0.0"
    for h in fleet.hosts[1:]:
        assert [x.manifest_id for x in h.installs] == [manifest_id]
    statuses = [fleet.m(i).convergence("m", "1.0.0", fleet.now) for i in range(4)]
    assert all(x == statuses[0] for x in statuses)     # the same answer at every node
    s = statuses[0]
    assert s.is_success and s.total_platforms == 4 and s.version_distribution == {"1.0.0": 4}


def test_rollback_with_old_version_on_disk_activates_without_transfer() -> None:
    installed = {i: [("m", "1.0.0", "cpu"), ("m", "2.0.0", "cpu")] for i in range(3)}
    fleet = LocalFleet(3, installed=installed)
    fleet.m(0).issue_intent(intent("1.0.0", kind=IntentKind.ROLLBACK, wall=5), fleet.now)
    fleet.run(20)
    for h in fleet.hosts:
        assert h.activations == [ActivateVersion("m", "1.0.0", "cpu")]
        assert h.installs == [] and h.served == 0
        st = h.machine.model_state("m")
        assert st is not None and st.active_version == "1.0.0"
    assert fleet.m(1).convergence("m", "1.0.0", fleet.now).is_success


def test_cancel_stops_the_transfer_and_returns_to_the_running_version() -> None:
    installed = {i: [("m", "1.0.0", "cpu")] for i in range(3)}
    fleet = LocalFleet(3, installed=installed)
    it = intent("2.0.0", wall=5)
    fleet.m(1).issue_intent(it, fleet.now)     # no manifest for 2.0.0 anywhere: stays pending
    fleet.run(10)
    for i in range(3):
        st = fleet.m(i).model_state("m")
        assert st is not None and st.version == "2.0.0" and st.status is S.NOT_DEPLOYED
    fleet.m(2).issue_intent(intent("2.0.0", kind=IntentKind.CANCEL, cancels=it.intent_id,
                                   wall=6), fleet.now)
    fleet.run(10)
    _publish(fleet, version="2.0.0")           # arrives after the cancel: nothing happens
    fleet.run(20)
    for h in fleet.hosts:
        st = h.machine.model_state("m")
        assert st is not None and st.version == "1.0.0" and st.status is S.OPERATIONAL
        assert h.installs == []
        assert h.machine.desired("m") is None


def test_formation_scope_installs_only_inside_the_formation() -> None:
    fleet = LocalFleet(4, formations=["a", "a", "b", "b"])
    _publish(fleet)
    fleet.m(3).issue_intent(intent("1.0.0", scope=Scope.of_formation("a")), fleet.now)
    fleet.run(40)
    assert [len(h.installs) for h in fleet.hosts] == [1, 1, 0, 0]
    s = fleet.m(2).convergence("m", "1.0.0", fleet.now)
    assert s.total_platforms == 2 and s.is_success


def test_quiet_fleet_gossip_is_small_and_statistics_add_up() -> None:
    fleet = LocalFleet(3)
    fleet.run(10)
    before = [fleet.m(i).statistics().gossip for i in range(3)]
    fleet.run(20)
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


def _publish_variants(fleet: LocalFleet, version: str,
                      variants: list[tuple[str, bytes]]) -> Manifest:
    """Sign a manifest of ``variants`` (all runnable anywhere, preference order) and
    publish it at node 0, whose store holds every chunk."""
    man = Manifest.sign(PUBLISHER, "m", version,
                        tuple(_variant(vid, data) for vid, data in variants), 1)
    host = fleet.hosts[0]
    for v, (_, data) in zip(man.variants, variants, strict=True):
        off = 0
        for c in v.files[0].chunks:
            host.store[c.hash] = data[off:off + c.size]
            off += c.size
            host.machine.chunk_stored(c.hash, fleet.now)
    host.machine.publish_manifest(man, fleet.now)
    return man


def test_explicit_variant_replaces_another_variant_of_the_running_version() -> None:
    installed = {i: [("m", "1.0.0", "fp32")] for i in range(3)}
    fleet = LocalFleet(3, installed=installed)
    _, fp32 = model_files("fp32", 300_000)
    _, int8 = model_files("int8", 150_000)
    man = _publish_variants(fleet, "1.0.0", [("fp32", fp32), ("int8", int8)])
    explicit = intent("1.0.0", variant="int8", wall=5)
    fleet.m(1).issue_intent(explicit, fleet.now)
    fleet.run(40)
    for h in fleet.hosts:
        assert [(x.manifest_id, x.variant_id, x.previous_version) for x in h.installs] == [
            (man.manifest_id, "int8", "1.0.0")]
        st = h.machine.model_state("m")
        assert st is not None and st.status is S.OPERATIONAL
        assert (st.version, st.variant_id, st.active_version) == ("1.0.0", "int8", "1.0.0")
        assert st.intent_id == explicit.intent_id
    s = fleet.m(2).convergence("m", "1.0.0", fleet.now)
    assert s.is_success and s.total_platforms == 3
    # Auto selection would pick fp32 (first in preference order), but a node that
    # runs the version is left alone whatever variant it runs.
    auto = intent("1.0.0", wall=6)
    fleet.m(0).issue_intent(auto, fleet.now)
    fleet.run(20)
    for h in fleet.hosts:
        assert len(h.installs) == 1 and h.activations == []
        st = h.machine.model_state("m")
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
    fleet = LocalFleet(3)
    _, base = model_files("base", 600_000)
    changed = base[:300_000] + model_files("patch", 40_000)[1] + base[340_000:]
    _publish_variants(fleet, "1.0.0", [("cpu", base)])
    fleet.m(0).issue_intent(intent("1.0.0", wall=1), fleet.now)
    fleet.run(30)
    m2 = _publish_variants(fleet, "1.1.0", [("cpu", changed)])
    fleet.m(0).issue_intent(intent("1.1.0", wall=2), fleet.now)
    fleet.run(30)
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
    fleet = LocalFleet(4, installed=installed)        # node 3 never ran the model
    _publish(fleet, version="1.0.0")                  # node 3 could fetch it
    rb = intent("1.0.0", kind=IntentKind.ROLLBACK, wall=5)
    fleet.m(3).issue_intent(rb, fleet.now)            # issued at the untargeted node
    fleet.run(30)
    for h in fleet.hosts[:3]:
        assert h.activations == [ActivateVersion("m", "1.0.0", "cpu")]
        assert h.installs == [] and h.machine.desired("m") == rb
    n3 = fleet.hosts[3]
    assert n3.installs == [] and n3.activations == [] and n3.machine.desired("m") is None
    assert n3.machine.model_state("m") is None
    assert all(c not in n3.store for c in fleet.hosts[0].store)
    for i in range(4):
        s = fleet.m(i).convergence("m", "1.0.0", fleet.now)
        assert s.total_platforms == 3 and s.is_success
        assert s.version_distribution == {"1.0.0": 3}
    # a distribute (not a rollback) does reach node 3
    fleet.m(0).issue_intent(intent("1.0.0", wall=6), fleet.now)
    fleet.run(30)
    assert [x.version for x in n3.installs] == ["1.0.0"]
    assert fleet.m(3).convergence("m", "1.0.0", fleet.now).total_platforms == 4


def test_a_peer_relaying_a_tampered_entry_is_dropped_and_honest_entries_kept() -> None:
    """Honest nodes verify before they relay, so a delta carrying an entry whose signature
    does not verify proves its sender lied: the node keeps the good entries, drops the peer."""
    from protocol._events import DropPeer
    from protocol._gossip import GossipDelta
    from protocol._ledger import Entry

    from ._fleet import node_key, record

    fleet = LocalFleet(3)
    fleet.run(5.0)                     # gossip: every node learns the others' certificates
    target, liar = fleet.hosts[0].machine, fleet.hosts[2].machine
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
