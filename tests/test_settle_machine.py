"""Issue 21: ledgers that forget void history, gossiping over a network that loses,
duplicates and reorders deliveries, with partitions (pairs that do not talk for a
while), crashes (a restart from the saved ledger) and a late joiner, against a
reference ledger that never forgets anything. After healing, every ledger gives every
node the same desired state and every version the same convergence status as the
reference does: retiring history changes no answer."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from protocol._intents import IntentKind, Scope, resolve
from protocol._ledger import DeltaPiece

from ._fleet import (
    admitted_ledger,
    anti_entropy,
    caps,
    convergence_of,
    deliver_piece,
    intent,
    manifest,
    node_key,
    record,
    running,
)

N = 4                   # nodes; the last joins late
D1 = intent("1.0.0", wall=1)
D2 = intent("2.0.0", wall=2, scope=Scope.of_formation("a"))
D3 = intent("3.0.0", wall=3)
R1 = intent("1.0.0", wall=4, kind=IntentKind.ROLLBACK)
D4 = intent("4.0.0", wall=6, scope=Scope.of_formation("a"))
C3 = intent("3.0.0", wall=5, kind=IntentKind.CANCEL, cancels=D3.intent_id)
C4 = intent("4.0.0", wall=7, kind=IntentKind.CANCEL, cancels=D4.intent_id)
INTENTS = [D1, D2, D3, R1, D4, C3, C4]
SETTLES = [intent(j.version, wall=20 + k, kind=IntentKind.SETTLE, cancels=j.intent_id,
                  issuer=node_key(k % N)) for k, j in enumerate([D2, D3, R1, D4])]
MANIFESTS = [manifest(version=v, seed=v, size=2048)[0] for v in ("1.0.0", "3.0.0")]
POOL: list[object] = [*INTENTS, *SETTLES, *MANIFESTS]
VERSIONS = ("1.0.0", "2.0.0", "3.0.0", "4.0.0")


class RetiringLedgers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledgers = [admitted_ledger(N) for _ in range(N - 1)]
        self.reference = admitted_ledger(N)     # every entry ever written, nothing forgotten
        self.wire: list[tuple[int, DeltaPiece]] = []
        self.cut: set[tuple[int, int]] = set()  # pairs partitioned from each other
        self.clock = 0

    def _write(self, node: int, payload: object) -> None:
        self.clock += 1    # (a wall clock in ms: a node's counters never repeat)
        e = self.ledgers[node].append(node_key(node), payload, floor=self.clock)
        self.reference.merge_entries([e], {}, limits=False)

    @rule(node=st.integers(0, N - 1), formation=st.sampled_from(["a", "b"]),
          version=st.sampled_from(VERSIONS), installed=st.booleans())
    def write_record(self, node: int, formation: str, version: str, installed: bool) -> None:
        if node < len(self.ledgers):
            self._write(node, record(
                name=f"n{node}", formation=formation, capabilities=caps(),
                models=(running("m", version, installed=("1.0.0",) if installed else ()),),
                written_at=float(self.clock)))

    @rule(node=st.integers(0, N - 1), which=st.integers(0, len(POOL) - 1))
    def relay(self, node: int, which: int) -> None:
        if node < len(self.ledgers):
            self._write(node, POOL[which])

    @rule(node=st.integers(0, N - 1), which=st.integers(0, len(SETTLES) - 1))
    def settled_rollout(self, node: int, which: int) -> None:
        """An older intent, the one that settles over it, and its settle, at one node."""
        if node < len(self.ledgers):
            for payload in (D1, INTENTS[[1, 2, 3, 4][which]], SETTLES[which]):
                self._write(node, payload)

    @rule(node=st.integers(0, N - 1))
    def retire(self, node: int) -> None:
        if node < len(self.ledgers):
            self.ledgers[node].retire()

    @rule(node=st.integers(0, N - 1))
    def crash(self, node: int) -> None:
        """The node restarts from what it saved (entries and vector, as ``save_ledger``
        writes them): what was in flight to it is lost."""
        if node < len(self.ledgers):
            old = self.ledgers[node]
            fresh = admitted_ledger(N)
            fresh.merge_entries(list(old.entries()),
                                {o: (0, c) for o, c in old.version_vector.items()})
            assert fresh.version_vector == old.version_vector   # nothing claimed is lost
            self.ledgers[node] = fresh
            self.wire = [(d, p) for d, p in self.wire if d != node]

    @rule()
    def late_joiner(self) -> None:
        if len(self.ledgers) < N:
            self.ledgers.append(admitted_ledger(N))

    @rule(a=st.integers(0, N - 1), b=st.integers(0, N - 1), cut=st.booleans())
    def partition(self, a: int, b: int, cut: bool) -> None:
        pair = (min(a, b), max(a, b))
        if cut:
            self.cut.add(pair)
        else:
            self.cut.discard(pair)

    @rule(src=st.integers(0, N - 1), dst=st.integers(0, N - 1),
          max_bytes=st.sampled_from([300, 1 << 20]))
    def send_delta(self, src: int, dst: int, max_bytes: int) -> None:
        n = len(self.ledgers)
        if src != dst and src < n and dst < n and (min(src, dst), max(src, dst)) not in self.cut:
            for p in self.ledgers[src].delta_since(self.ledgers[dst].version_vector, max_bytes):
                self.wire.append((dst, p))

    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        deliver_piece(self.ledgers, self.wire, data, keep)

    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        if self.wire:
            self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    def _anti_entropy(self) -> None:
        anti_entropy(self.ledgers, 2 * N)

    def teardown(self) -> None:
        while len(self.ledgers) < N:              # the late joiner joins at the latest now
            self.ledgers.append(admitted_ledger(N))
        for dst, piece in self.wire:              # in flight arrives, partitions heal
            self.ledgers[dst].merge_entries(piece.entries, piece.ranges)
        self._anti_entropy()
        for node in range(N):       # (as a node does on each change of state: its record
            self.write_record(node, "a", "1.0.0", True)   # is then its newest entry)
        self._anti_entropy()
        for led in self.ledgers:
            led.retire()
        self._anti_entropy()
        ref = self.reference
        for led in self.ledgers:
            assert [i.intent_id for i in led.intents()] == \
                [i.intent_id for i in ref.intents()], "live intents differ"
            assert led.records() == ref.records()
            for node in range(N):
                nid = node_key(node).key_id
                mine = resolve(led.intents(), "m", nid, led.records(), led.trust)
                theirs = resolve(ref.intents(), "m", nid, ref.records(), ref.trust)
                assert mine == theirs, f"node {node}: desired state differs"
            for version in VERSIONS:
                assert convergence_of(led, version) == convergence_of(ref, version)
        # what was forgotten is what no reader sees: never a live intent
        live = {i.intent_id for i in ref.intents()}
        for led in self.ledgers:
            assert live <= {i.intent_id for i in led.all_intents()}


RetiringLedgers.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                             deadline=None)
TestRetiringLedgers = RetiringLedgers.TestCase
