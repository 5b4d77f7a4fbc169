"""Several NodeMachines wired together in-process (h11's ConnectionPair idea)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from protocol._config import Config
from protocol._events import (
    ActivateVersion,
    DropPeer,
    InstallVariant,
    SendMessage,
    ServeChunk,
    StoreChunk,
)
from protocol._intents import IntentKind, Scope
from protocol._node import NodeMachine
from protocol._swarm import make_piece
from protocol._types import ModelOperationalStatus

from ._fleet import caps, intent, make_trust, manifest, node_cert, node_key

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

    def _pump(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for i, h in enumerate(self.hosts):
                for out in h.machine.take_outputs():
                    progressed = True
                    self._carry_out(i, h, out)
            while self.queue:
                progressed = True
                dst, src, msg = self.queue.popleft()
                self.hosts[dst].machine.receive(src, msg, self.now)

    def _carry_out(self, i: int, h: _Host, out: object) -> None:
        m = h.machine
        if isinstance(out, SendMessage):
            self.queue.append((self.index[out.peer], m.node_id, out.message))
        elif isinstance(out, ServeChunk):
            data = h.store.get(out.chunk_hash)
            if data is None:
                m.chunk_missing(out.chunk_hash, self.now)
            else:
                h.served += 1
                self.queue.append((self.index[out.peer], m.node_id,
                                   make_piece(out.chunk_hash, data, out.priority)))
        elif isinstance(out, StoreChunk):
            h.store[out.chunk_hash] = out.data
            m.chunk_stored(out.chunk_hash, self.now)
        elif isinstance(out, InstallVariant):
            h.installs.append(out)
            m.install_finished(out.model_id, out.version, out.variant_id, True, None, "",
                               self.now)
        elif isinstance(out, ActivateVersion):
            h.activations.append(out)
        elif isinstance(out, DropPeer):
            raise AssertionError(f"unexpected drop: {out}")

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        self._pump()
        while True:
            deadlines = [d for h in self.hosts if (d := h.machine.next_deadline()) is not None]
            t = min(deadlines, default=end)
            if t > end:
                break
            self.now = max(self.now, t)
            for h in self.hosts:
                d = h.machine.next_deadline()
                if d is not None and d <= self.now:
                    h.machine.on_timer(self.now)
            self._pump()
        self.now = end

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
        assert len(fleet.m(i).ledger.records()) == 5     # heartbeats keep records moving
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
