"""A TEST BUILD of the shoal daemon run by a captured node (tests/test_reliability_byzantine.py).

``python -m tests._byzantine_daemon --config FILE --victim NODE_ID`` runs the real daemon
(``agent._cli daemon``: the real :class:`agent._daemon.runtime.NodeRuntime`, transport,
gossip and swarm) with one patch: the runtime's ``_carry_out`` rewrites the gossip it
sends. The node holds only what a captured node holds -- its node key and the publisher
key every provisioned node gets -- and with them it

* forges vector claims: every :class:`GossipDelta` and :class:`GossipPush` it sends claims
  ``{victim: (0, 2**62)}`` (and ``(0, 2**64 - 1)`` to the victim itself), with no entry
  of the victim's to vouch for them;
* re-wraps in bulk: at most once a second it stamps every intent, manifest and
  certificate its ledger holds again under fresh counters of its own, ``--rewraps``
  entries in all (at most 3 MiB), and sends that batch to each peer, at most once a
  second each, in a delta, in a push of its own, and with the pushes it passes on
  (an oversized :class:`GossipPush`: under the 8 MiB frame);
* pushes large valid manifests: ``--big`` manifests it signs with its publisher key
  (``--chunks`` chunk references each, valid Merkle roots, chunks that exist nowhere),
  with its publisher certificate, in its first BIG_ROUNDS batches only: re-wrapping them
  every second as well costs the honest nodes far more (each fresh stamp replaces the
  held one, is decoded in full and travels on between honest nodes; see the test);
* claims another node's name: that is its config (``node_name``), which the test sets to
  the victim's name, so its own :class:`NodeRecord` carries the victim's name.

Everything else (its own records, downloads, sessions) is the honest daemon. Not for
production: it exists only so the reliability suite can run a captured node as a real
process next to honest daemons.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import agent._daemon.runtime as runtime_mod
from agent._cli.main import main as cli_main
from protocol._capabilities import Requirements
from protocol._entries import Entry
from protocol._events import SendMessage
from protocol._gossip import GossipDelta, GossipPush, GossipSummary
from protocol._identity import Role
from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root

FORGED_UPTO = 1 << 62
BATCH_EVERY = 1.0          # seconds between fresh batches of re-wraps
BIG_ROUNDS = int(os.environ.get("SHOAL_TEST_BIG_ROUNDS", "3"))  # batches with the big ones
PUSH_BYTES = 3 << 20       # an oversized push, still under the 8 MiB frame


class _Byzantine:
    def __init__(self, victim: str, rewraps: int, big: int, chunks: int) -> None:
        self.victim = victim
        self.victim_b = bytes.fromhex(victim)
        self.rewraps = rewraps
        self.big_count = big
        self.chunks = chunks
        self.big: list[Manifest] = []
        self.big_rounds = 0
        self.counter = 0
        self.batch: tuple[Entry, ...] = ()
        self.batch_at = -1e9
        self.push_at: dict[str, float] = {}
        self.sent_entries = 0
        self.sent_pushes = 0

    def _make_big(self, rt: Any) -> None:
        pub = rt.publisher
        if pub is None or self.big or not self.big_count:
            return
        now_ms = int(time.time() * 1000)
        for k in range(self.big_count):
            refs = tuple(ChunkRef(os.urandom(32), 1 << 20) for _ in range(self.chunks))
            f = FileEntry("weights.bin", sum(r.size for r in refs), refs,
                          merkle_root([r.hash for r in refs]))
            v = Variant("junk", Requirements(), (f,))
            self.big.append(Manifest.sign(pub, f"junk-{k}", "9.0.0", (v,), now_ms))

    def entries(self, rt: Any) -> tuple[Entry, ...]:
        """The current batch of re-wraps (fresh counters, rebuilt at most once a second)."""
        now = time.monotonic()
        if now - self.batch_at < BATCH_EVERY:
            return self.batch
        self.batch_at = now
        self._make_big(rt)
        ledger = rt.machine.ledger
        contents: list[object] = []
        own = rt.trust.certificate(rt.publisher.public_key, Role.PUBLISHER) if self.big else None
        if own is not None:    # its publisher certificate vouches for the manifests it signs
            contents.append(own)
        for e in ledger.entries():
            payload = e.intent or e.manifest or e.certificate
            if payload is not None and not (e.manifest is not None
                                            and e.manifest.model_id.startswith("junk-")):
                contents.append(payload)
        if self.counter == 0:     # far above its own counters, well under the clock bound
            self.counter = int(time.time() * 1000) + 10**9
        out: list[Entry] = []
        size = 0
        # its certificate and each big manifest once, then the ledger's contents over and over
        first = [own, *self.big] if own is not None and self.big_rounds < BIG_ROUNDS else []
        self.big_rounds += bool(first)
        todo = [*first, *(contents[i % len(contents)] for i in range(self.rewraps)
                          if contents)]
        for payload in todo:
            self.counter += 1
            e = Entry.create(rt.identity, self.counter, payload)
            size += len(e.encoded())
            if size > PUSH_BYTES:
                break
            out.append(e)
        self.batch = tuple(out)
        return self.batch

    def forged(self, peer: str, ranges: dict[bytes, tuple[int, int]]
               ) -> dict[bytes, tuple[int, int]]:
        out = dict(ranges)
        out[self.victim_b] = (0, (1 << 64) - 1 if peer == self.victim else FORGED_UPTO)
        return out


_STATE: _Byzantine | None = None


def install(victim: str, rewraps: int, big: int, chunks: int) -> None:
    """Patch this process's runtime so its outgoing gossip lies (module docstring)."""
    global _STATE
    _STATE = state = _Byzantine(victim, rewraps, big, chunks)
    honest = runtime_mod.NodeRuntime._carry_out

    async def carry_out(self: Any, out: Any) -> None:
        if isinstance(out, SendMessage):
            msg = out.message
            if isinstance(msg, GossipDelta | GossipPush):
                now = time.monotonic()      # a batch rides one delta or push a second
                key = f"{out.peer}/{type(msg).__name__}"
                batch: tuple[Entry, ...] = ()
                if now - state.push_at.get(key, -1e9) >= BATCH_EVERY:
                    state.push_at[key] = now
                    batch = state.entries(self)
                kind = type(msg)
                await honest(self, SendMessage(out.peer, kind(
                    msg.entries + batch, state.forged(out.peer, dict(msg.ranges)))))
                state.sent_entries += len(batch)
                return
            if isinstance(msg, GossipSummary):
                await honest(self, out)
                now = time.monotonic()
                if now - state.push_at.get(out.peer, -1e9) >= BATCH_EVERY:
                    state.push_at[out.peer] = now
                    batch = state.entries(self)
                    if batch:
                        await honest(self, SendMessage(out.peer, GossipPush(
                            batch, state.forged(out.peer, {}))))
                        state.sent_pushes += 1
                        state.sent_entries += len(batch)
                return
        await honest(self, out)

    runtime_mod.NodeRuntime._carry_out = carry_out  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests._byzantine_daemon")
    ap.add_argument("--config", required=True)
    ap.add_argument("--victim", required=True, help="node id whose vector claims it forges")
    ap.add_argument("--rewraps", type=int, default=2000)
    ap.add_argument("--big", type=int, default=2,
                    help="large manifests it signs")
    ap.add_argument("--chunks", type=int, default=4000, help="chunk references in each")
    args = ap.parse_args(argv)
    install(args.victim, args.rewraps, args.big, args.chunks)
    return cli_main(["daemon", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
