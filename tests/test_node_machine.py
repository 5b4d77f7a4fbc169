"""A few NodeMachines on a network that loses, duplicates and reorders messages, with
partitions and nodes that crash and come back from what they saved.

The harness is a driver like agent/ and sim/: it carries out every output of a
machine, and it keeps a *disk* per node that survives a crash -- the ledger as it
was last saved, the chunk store, the installed versions and the active one. A
crash loses everything else: the machine, its sessions, the messages in flight
to and from it, and whatever it changed since its last save. A restart builds a
new machine from the disk (the saved ledger decoded and merged back, as the
daemon's ``load_ledger`` does).

The ledger is saved when the machine asks (``PersistLedger``, before the outputs
that follow it) -- or, with a machine that does not ask, whenever its own counter
moved, before any of its outputs leave (the daemon's rule). A crash can also
strike half-way through a batch of outputs (:meth:`NodeFleet.crash_midway`).

Invariants after every step:

* a ledger's version vector never claims an entry it lacks (unless a newer
  record of the same origin replaced it, the ledger's own invariant, or the ledger
  forgot it as void history by its own rule);
* a counter is never reused: no two different entries under one
  ``(origin, counter)`` ever left a node or reached a disk, across crashes.

At the end every node comes back, the partition heals, the network stops losing,
and within bounded virtual time every node holds the same live ledger (its intents,
records, manifests and vector: void history is forgotten by each node at its own pace,
``protocol/_settle.py``) and computes the same desired state and convergence for
every node and model.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protocol import _events
from protocol._codec import decode, decode_value, encode
from protocol._config import Config
from protocol._events import (
    ActivateVersion,
    DropPeer,
    InstallVariant,
    SendMessage,
    ServeChunk,
    StoreChunk,
)
from protocol._gossip import GossipDelta, GossipPush
from protocol._intents import Intent, IntentKind, resolve
from protocol._ledger import Entry, Ledger, content_key, encoded_entry
from protocol._node import NodeMachine
from protocol._settle import manifests_to_retire, void_intents
from protocol._swarm import make_piece

from ._fleet import FLEET, caps, intent, make_trust, manifest, node_cert, node_key

N = 4
MODEL = "m"
VERSIONS = ("1.0.0", "2.0.0")
PUBLISHED = {v: manifest(version=v, seed=v, size=3000) for v in VERSIONS}
CONFIG = Config(fleet_id=FLEET)
#: The machine's request to save, where the machine makes it (see the module doc).
PERSIST: type | None = getattr(_events, "PersistLedger", None)


def _chunks(version: str) -> dict[bytes, bytes]:
    man, data = PUBLISHED[version]
    out, off = {}, 0
    for f in man.variants[0].files:
        for c in f.chunks:
            out[c.hash] = data[off:off + c.size]
            off += c.size
    return out


@dataclass
class Disk:
    """What survives a crash."""

    saved: tuple[tuple[bytes, ...], dict[str, int]] | None = None   # encoded entries, vv
    saved_own: int = 0                    # own counter the save covers
    store: dict[bytes, bytes] = field(default_factory=dict)
    installed: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> ver -> variant
    active: dict[str, str] = field(default_factory=dict)


@dataclass
class Wire:
    src: int
    dst: int
    session: int      # the session it was sent on: lost when that session closes
    message: object


class NodeFleet(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.disks = [Disk() for _ in range(N)]
        self.disks[0].store = {**_chunks("1.0.0"), **_chunks("2.0.0")}   # the publisher's
        self.machines: list[NodeMachine | None] = [None] * N
        self.lives = [0] * N
        self.ids = [node_key(i).key_id for i in range(N)]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        self.sessions: dict[frozenset[int], int] = {}   # open session -> its number
        self.opened = 0
        self.side = [0] * N                             # partition: reachable iff equal
        self.wire: list[Wire] = []
        self.issued: list[Intent] = []
        # every entry that left its node or reached a disk: (origin, counter) ->
        # (signature, is a record); such a counter is taken for good
        self.seen: dict[tuple[str, int], tuple[bytes, bool]] = {}
        self.relayed: dict[tuple[str, int], Entry] = {}   # the non-record entries seen
        # per node: the relay entries its ledger held after the last step (None: it
        # restarted since, from its disk), and those it dropped by its own rule
        self.holding: list[set[tuple[str, int]] | None] = [None] * N
        self.forgot: list[set[tuple[str, int]]] = [set() for _ in range(N)]
        self.crash_after: dict[int, int] = {}           # node -> outputs left before it dies

    # ------------------------------------------------------------------ lifecycle
    @initialize()
    def start(self) -> None:
        for i in range(N):
            self._start(i)
        m = self.machines[0]
        assert m is not None
        for man, _ in PUBLISHED.values():
            m.publish_manifest(man, self.now)
        self._drain(0)

    def _start(self, i: int) -> None:
        disk, ident = self.disks[i], node_key(i)
        trust = make_trust()
        ledger = Ledger(trust)
        if disk.saved is not None:   # as the daemon's load_ledger
            raw, vv = disk.saved
            ledger.merge_entries([decode_value(Entry, e) for e in raw],
                                 {o: (0, c) for o, c in vv.items()})
        installed = []
        for model, versions in sorted(disk.installed.items()):
            active = disk.active.get(model)
            installed += [(model, v, var) for v, var in sorted(versions.items()) if v != active]
            if active in versions:      # the active version is listed last
                installed.append((model, active, versions[active]))
        self.lives[i] += 1
        self.machines[i] = NodeMachine(
            config=CONFIG, identity=ident, certificate=node_cert(ident, f"n{i}"), trust=trust,
            rng=random.Random(1000 * i + self.lives[i]), now=self.now, name=f"n{i}",
            capabilities=caps(), held_chunks=disk.store.keys(), ledger=ledger,
            installed=installed)
        self._drain(i)
        for j in range(N):
            self._connect(i, j)

    def _crash(self, i: int) -> None:
        self.machines[i] = None
        self.holding[i] = None      # what it drops from now on is what it did not save
        self.crash_after.pop(i, None)
        for j in range(N):
            self._disconnect(i, j)

    def _up(self, i: int) -> NodeMachine | None:
        return self.machines[i]

    # ------------------------------------------------------------------ sessions
    def _connect(self, a: int, b: int) -> None:
        pair = frozenset((a, b))
        ma, mb = self.machines[a], self.machines[b]
        if a == b or ma is None or mb is None or pair in self.sessions \
                or self.side[a] != self.side[b]:
            return
        self.opened += 1
        self.sessions[pair] = self.opened
        ma.peer_connected(self.ids[b], self.now)
        mb.peer_connected(self.ids[a], self.now)
        self._drain(a)
        self._drain(b)

    def _disconnect(self, a: int, b: int) -> None:
        if self.sessions.pop(frozenset((a, b)), None) is None:
            return
        for x, y in ((a, b), (b, a)):
            m = self.machines[x]
            if m is not None:
                m.peer_disconnected(self.ids[y], self.now)
                self._drain(x)

    # ------------------------------------------------------------------ outputs
    def _save(self, i: int) -> None:
        m = self.machines[i]
        assert m is not None
        entries = list(m.ledger.entries())
        for e in entries:
            self._saw(e)
        self.disks[i].saved = (tuple(encoded_entry(e) for e in entries),
                               m.ledger.version_vector)
        self.disks[i].saved_own = m.ledger.top_counter(self.ids[i])

    def _saw(self, e: Entry) -> None:
        """``e`` left its node or reached a disk: its counter is taken for good."""
        key = (e.origin, e.counter)
        held = self.seen.setdefault(key, (e.signature, e.record is not None))
        assert held[0] == e.signature, f"counter {key} reused for a different entry"
        if e.record is None:
            self.relayed.setdefault(key, e)

    def _drain(self, i: int) -> None:
        """Carry out node ``i``'s outputs (and those they cause) in order."""
        while (m := self.machines[i]) is not None:
            outputs = m.take_outputs()
            if not outputs:
                return
            if PERSIST is None and m.ledger.top_counter(self.ids[i]) != self.disks[i].saved_own:
                self._save(i)
            for out in outputs:
                if i in self.crash_after:
                    if self.crash_after[i] == 0:
                        self._crash(i)
                        return
                    self.crash_after[i] -= 1
                self._carry_out(i, m, out)
                if self.machines[i] is not m:
                    return

    def _carry_out(self, i: int, m: NodeMachine, out: object) -> None:
        now, disk = self.now, self.disks[i]
        if PERSIST is not None and isinstance(out, PERSIST):
            self._save(i)
        elif isinstance(out, SendMessage):
            self._send(i, self.index[out.peer], out.message)
        elif isinstance(out, ServeChunk):
            data = disk.store.get(out.chunk_hash)
            if data is None:
                m.chunk_missing(out.chunk_hash, now)
            else:
                self._send(i, self.index[out.peer],
                           make_piece(out.chunk_hash, data, out.priority))
        elif isinstance(out, StoreChunk):
            disk.store[out.chunk_hash] = out.data
            m.chunk_stored(out.chunk_hash, now)
        elif isinstance(out, InstallVariant):
            disk.installed.setdefault(out.model_id, {})[out.version] = out.variant_id
            disk.active[out.model_id] = out.version
            m.install_finished(out.model_id, out.version, out.variant_id, True, None, "", now)
        elif isinstance(out, ActivateVersion):
            disk.active[out.model_id] = out.version
        elif isinstance(out, DropPeer):
            self._disconnect(i, self.index[out.peer])

    def _send(self, src: int, dst: int, message: object) -> None:
        session = self.sessions.get(frozenset((src, dst)))
        if session is None:
            return
        if isinstance(message, (GossipDelta, GossipPush)):
            for e in message.entries:
                self._saw(e)
        self.wire.append(Wire(src, dst, session, message))

    def _deliver(self, w: Wire) -> None:
        m = self.machines[w.dst]
        if m is None or self.sessions.get(frozenset((w.src, w.dst))) != w.session:
            return   # the session it travelled on is gone, and the message with it
        # through the codec: every node decodes its own copy, as over a real link
        m.receive(self.ids[w.src], decode(encode(w.message)), self.now)
        self._drain(w.dst)

    def _advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing every timer due on the way."""
        end = self.now + seconds
        for _ in range(100_000):
            due = [(d, i) for i, m in enumerate(self.machines)
                   if m is not None and (d := m.next_deadline()) is not None and d <= end]
            if not due:
                break
            t, i = min(due)
            self.now = max(self.now, t)
            m = self.machines[i]
            assert m is not None
            m.on_timer(self.now)
            self._drain(i)
            d = m.next_deadline() if self.machines[i] is m else None
            if d is not None and d <= self.now:
                self.now += 1e-3     # a machine asking for "now" again must not stall time
        else:
            raise AssertionError("timers did not settle: busy loop")
        self.now = max(self.now, end)

    # ------------------------------------------------------------------ rules: network
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver_any(self, data: st.DataObject, duplicate: bool) -> None:
        """Deliver one message in flight, in any order; maybe keep a copy to deliver again."""
        if self.wire:
            k = data.draw(st.integers(0, len(self.wire) - 1))
            w = self.wire[k] if duplicate else self.wire.pop(k)
            self._deliver(w)

    @rule(count=st.integers(1, 40))
    def deliver_in_order(self, count: int) -> None:
        for _ in range(count):
            if not self.wire:
                return
            self._deliver(self.wire.pop(0))

    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        if self.wire:
            self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    @rule(data=st.data())
    def shuffle(self, data: st.DataObject) -> None:
        order = data.draw(st.permutations(range(len(self.wire))))
        self.wire = [self.wire[k] for k in order]

    @rule(seconds=st.sampled_from([0.2, 1.0, 3.0, 12.0, 35.0]))
    def wait(self, seconds: float) -> None:
        self._advance(seconds)

    @rule(sides=st.lists(st.integers(0, 1), min_size=N, max_size=N))
    def partition(self, sides: list[int]) -> None:
        self.side = sides
        for pair in list(self.sessions):
            a, b = sorted(pair)
            if sides[a] != sides[b]:
                self._disconnect(a, b)

    @rule()
    def heal(self) -> None:
        self.side = [0] * N
        for a in range(N):
            for b in range(a + 1, N):
                self._connect(a, b)

    # ------------------------------------------------------------------ rules: nodes
    @rule(node=st.integers(0, N - 1))
    def crash(self, node: int) -> None:
        if self.machines[node] is not None:
            self._crash(node)

    @rule(node=st.integers(0, N - 1), outputs=st.integers(0, 8))
    def crash_midway(self, node: int, outputs: int) -> None:
        """The node will die after carrying out ``outputs`` more outputs, in the middle
        of whatever input comes next (a message, a timer, an intent)."""
        if self.machines[node] is not None:
            self.crash_after[node] = outputs

    @rule(node=st.integers(0, N - 1))
    def restart(self, node: int) -> None:
        if self.machines[node] is None:
            self._start(node)

    # ------------------------------------------------------------------ rules: operator
    def _issue(self, node: int, it: Intent) -> None:
        m = self.machines[node]
        if m is not None:
            self.issued.append(it)
            m.issue_intent(it, self.now)
            self._drain(node)

    @rule(node=st.integers(0, N - 1), version=st.sampled_from(VERSIONS),
          kind=st.sampled_from([IntentKind.DISTRIBUTE, IntentKind.ROLLBACK]))
    def issue(self, node: int, version: str, kind: IntentKind) -> None:
        self._issue(node, intent(version, model=MODEL, kind=kind, wall=len(self.issued) + 1))

    @precondition(lambda self: any(it.kind is not IntentKind.CANCEL for it in self.issued))
    @rule(node=st.integers(0, N - 1), data=st.data())
    def cancel(self, node: int, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(
            [it for it in self.issued if it.kind is not IntentKind.CANCEL]))
        self._issue(node, intent(target.version, model=MODEL, kind=IntentKind.CANCEL,
                                 cancels=target.intent_id, wall=len(self.issued) + 1))

    # ------------------------------------------------------------------ invariants
    def _live(self) -> Iterator[tuple[int, NodeMachine]]:
        for i, m in enumerate(self.machines):
            if m is not None:
                yield i, m

    @invariant()
    def counters_are_never_reused(self) -> None:
        for _, m in self._live():
            for e in m.ledger.entries():
                held = self.seen.get((e.origin, e.counter))
                assert held is None or held[0] == e.signature, (
                    f"{e.origin[:8]}:{e.counter} names two different entries")

    def _note_forgotten(self) -> None:
        """Relay entries a ledger dropped since the last step: each by the ledger's own
        rule (void, or a manifest nothing live needs); the node is excused for them."""
        for i, m in self._live():
            led = m.ledger
            now = {(e.origin, e.counter) for e in led.entries() if e.record is None}
            before = self.holding[i]
            self.holding[i] = now
            if before is None:
                continue
            # (an entry replaced by a newer stamp of the same content is not dropped)
            stamped = {(e.origin, content_key(e)) for e in led.entries() if e.record is None}
            gone = [e for e in (self.relayed[k] for k in before - now)
                    if (e.origin, content_key(e)) not in stamped]
            also = [e.intent for e in gone if e.intent is not None]   # (dropped together)
            for e in gone:
                assert _forgotten(led, e, also), (
                    f"node {i} dropped {e.origin[:8]}:{e.counter} ({e.kind.value}), "
                    "which its rule does not retire")
                self.forgot[i].add((e.origin, e.counter))

    @invariant()
    def vector_never_claims_what_is_missing(self) -> None:
        everything = {k: is_record for k, (_, is_record) in self.seen.items()}
        for _, m in self._live():
            for e in m.ledger.entries():
                everything[(e.origin, e.counter)] = e.record is not None
        newest: dict[str, int] = {}     # origin -> its newest record anywhere
        for (origin, counter), is_record in everything.items():
            if is_record:
                newest[origin] = max(newest.get(origin, 0), counter)
        self._note_forgotten()
        for i, m in self._live():
            led = m.ledger
            held = {(e.origin, e.counter) for e in led.entries()}
            vv = led.version_vector
            for (origin, counter), is_record in everything.items():
                if counter > vv.get(origin, 0) or (origin, counter) in held:
                    continue
                relayed = self.relayed.get((origin, counter))
                if relayed is not None and ((origin, counter) in self.forgot[i]
                                            or _forgotten(led, relayed)):
                    continue
                # otherwise only a record may be missing, and only because a newer record
                # of its origin replaced it: held here, or on its way (the vector is below)
                assert is_record and newest.get(origin, 0) > counter and (
                    led.record_counter(origin) > counter
                    or vv.get(origin, 0) < newest[origin]), (
                    f"vector claims {origin[:8]}:{counter} but it is missing")

    # ------------------------------------------------------------------ the end
    def teardown(self) -> None:
        self.crash_after.clear()         # no more crashes...
        for i in range(N):
            if self.machines[i] is None:
                self._start(i)
        self.heal()
        for a in range(N):               # sessions a drop closed come back too
            for b in range(a + 1, N):
                self._connect(a, b)
        for _ in range(120):             # lossless, in order, until every ledger agrees
            while self.wire:
                self._deliver(self.wire.pop(0))
            if len({_live_key(m.ledger) for _, m in self._live()}) == 1:
                break
            self._advance(1.0)
        machines = [m for _, m in self._live()]
        assert len(machines) == N
        keys = {_live_key(m.ledger) for m in machines}
        assert len(keys) == 1, f"ledgers did not converge by t={self.now:.0f}"
        for nid in self.ids:             # the same answer for every node, at every node
            answers = {_desired(m.ledger, nid) for m in machines}
            assert len(answers) == 1, f"desired state of {nid[:8]} differs: {answers}"
        for m in machines:
            it = m.desired(MODEL)
            assert (None if it is None else it.intent_id) == _desired(m.ledger, m.node_id)
        for version in VERSIONS:
            status = [m.convergence(MODEL, version, self.now) for m in machines]
            assert all(s == status[0] for s in status)


def _forgotten(led: Ledger, e: Entry, also: list[Intent] | None = None) -> bool:
    """Could ``led``'s own rule retire ``e`` (``protocol/_settle.py``)? An intent void
    among those it holds (and ``also``: intents dropped with it), or a manifest no live
    intent names of a version below a settled one (the records half of that rule moves
    with time, so it is left out here)."""
    if e.intent is not None:
        return e.intent.intent_id in void_intents([*led.all_intents(), *(also or ()),
                                                   e.intent])
    if e.manifest is not None:
        return bool(manifests_to_retire([e.manifest], led.intents(), ()))
    return False


def _live_key(led: Ledger) -> object:
    """What every reader of ``led`` sees: its live intents, records, manifests and
    vector (``state_key`` but for void history, which nodes forget at their own pace,
    and a cancel, policy or settle naming an intent forgotten before it arrived)."""
    return (tuple(i.intent_id for i in led.intents()),
            tuple(sorted((o, led.record_counter(o)) for o in led.records())),
            tuple(sorted(m.manifest_id for m in led.manifests())),
            tuple(sorted((o, c) for o, c in led.version_vector.items() if c > 0)))


def _desired(led: Ledger, node_id: str) -> str | None:
    it = resolve(led.intents(), MODEL, node_id, led.records(), led.trust)
    return None if it is None else it.intent_id


NodeFleet.TestCase.settings = settings(settings(), stateful_step_count=40, deadline=None)
TestNodeFleet = NodeFleet.TestCase
