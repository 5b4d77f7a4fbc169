"""Ledgers gossiping over a network that loses, duplicates and reorders deliveries."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from protocol._intents import IntentKind, Scope, resolve
from protocol._ledger import DeltaPiece, Entry, content_key

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

N = 3
POOL = [intent("1.0.0", wall=1), intent("2.0.0", wall=2, scope=Scope.of_formation("a")),
        intent("3.0.0", wall=3, scope=Scope.capable(min_gpu_mem_gb=8))]
POOL.append(intent("2.0.0", wall=4, kind=IntentKind.CANCEL, cancels=POOL[1].intent_id))
MANIFESTS = [manifest(version="1.0.0", size=2048)[0]]


def _key(x: Entry) -> object:
    """What a newer entry of the same origin replaces: its record, or its stamp of the
    same content (``Ledger``: "Re-wraps and quotas")."""
    return "record" if x.record is not None else content_key(x)


class GossipingLedgers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledgers = [admitted_ledger(N) for _ in range(N)]
        self.wire: list[tuple[int, DeltaPiece]] = []
        self.writes = [0] * N

    @rule(node=st.integers(0, N - 1), formation=st.sampled_from(["a", "b"]),
          gpu=st.sampled_from([0, 16]), version=st.sampled_from(["1.0.0", "2.0.0"]))
    def write_record(self, node: int, formation: str, gpu: int, version: str) -> None:
        self.writes[node] += 1
        self.ledgers[node].append(node_key(node), record(
            name=f"n{node}", formation=formation, capabilities=caps(gpu_gb=gpu),
            models=(running("m", version),), written_at=float(self.writes[node])))

    @rule(node=st.integers(0, N - 1), which=st.integers(0, len(POOL)))
    def relay_intent_or_manifest(self, node: int, which: int) -> None:
        led = self.ledgers[node]
        payload = POOL[which] if which < len(POOL) else MANIFESTS[0]
        led.append(node_key(node), payload)

    @rule(src=st.integers(0, N - 1), dst=st.integers(0, N - 1),
          max_bytes=st.sampled_from([200, 1500, 1 << 20]))
    def send_delta(self, src: int, dst: int, max_bytes: int) -> None:
        if src != dst:
            for p in self.ledgers[src].delta_since(self.ledgers[dst].version_vector, max_bytes):
                self.wire.append((dst, p))

    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        deliver_piece(self.ledgers, self.wire, data, keep)

    @rule(node=st.integers(0, N - 1), which=st.integers(0, len(POOL)))
    def burst(self, node: int, which: int) -> None:
        """Several entries of one origin in a row: relays plus a record."""
        self.relay_intent_or_manifest(node, which)
        self.relay_intent_or_manifest(node, (which + 1) % (len(POOL) + 1))
        self.write_record(node, "a", 0, "1.0.0")

    @rule(src=st.integers(0, N - 1), dst=st.integers(0, N - 1), data=st.data())
    def split_delta_partly_delivered_out_of_order(self, src: int, dst: int,
                                                  data: st.DataObject) -> None:
        """One entry per piece; deliver a random subset in a random order, now."""
        if src == dst:
            return
        pieces = self.ledgers[src].delta_since(self.ledgers[dst].version_vector, 1)
        order = data.draw(st.permutations(range(len(pieces))))
        keep = data.draw(st.integers(0, len(pieces)))
        for i in order[:keep]:
            self.ledgers[dst].merge_entries(pieces[i].entries, pieces[i].ranges)

    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        if self.wire:
            self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    @invariant()
    def vector_never_claims_what_is_missing(self) -> None:
        everything = self._everything()
        newest: dict[tuple[str, object], int] = {}   # (origin, key) -> newest stamp anywhere
        for (origin, counter), key in everything.items():
            newest[(origin, key)] = max(newest.get((origin, key), 0), counter)
        for led in self.ledgers:
            held = {(x.origin, x.counter) for x in led.entries()}
            mine: dict[tuple[str, object], int] = {}   # (origin, key) -> newest stamp here
            for x in led.entries():
                k = (x.origin, _key(x))
                mine[k] = max(mine.get(k, 0), x.counter)
            vv = led.version_vector
            for (origin, counter), key in everything.items():
                if counter <= vv.get(origin, 0) and (origin, counter) not in held:
                    # only an entry a newer one of the same key replaced may be missing (the
                    # module's invariant: a node's record, or an origin's stamp of one
                    # content): a piece's claim covers an entry its sender replaced, so the
                    # newer one may still be on its way here; then this ledger's vector
                    # must be below it, so gossip fetches it
                    top = newest[(origin, key)]
                    assert top > counter and (
                        mine.get((origin, key), 0) > counter
                        or vv.get(origin, 0) < top), (
                        f"vector claims {origin[:8]}:{counter} but it is missing")

    def _everything(self) -> dict[tuple[str, int], object]:
        """Every entry ever written (origin, counter) -> what replaces it (its key)."""
        out: dict[tuple[str, int], object] = {}
        for led in self.ledgers:
            for x in led.entries():
                out[(x.origin, x.counter)] = _key(x)
        for _dst, piece in self.wire:
            for x in piece.entries:
                out[(x.origin, x.counter)] = _key(x)
        return out

    def teardown(self) -> None:
        for dst, piece in self.wire:            # everything still in flight arrives...
            self.ledgers[dst].merge_entries(piece.entries, piece.ranges)
        anti_entropy(self.ledgers, 2 * N)      # ...and anti-entropy keeps running
        keys = {led.state_key() for led in self.ledgers}
        assert len(keys) == 1, "ledgers did not converge"
        for node in range(N):
            answers = set()
            for led in self.ledgers:
                it = resolve(led.intents(), "m", node_key(node).key_id, led.records(), led.trust)
                answers.add(None if it is None else it.intent_id)
            assert len(answers) == 1
        for version in ("1.0.0", "2.0.0", "3.0.0"):
            status = [convergence_of(led, version) for led in self.ledgers]
            assert all(s == status[0] for s in status)


GossipingLedgers.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                              deadline=None)
TestGossipingLedgers = GossipingLedgers.TestCase
