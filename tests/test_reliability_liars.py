"""Lying peers: an admitted node that gossips forgeries to a live daemon.

The liar is a test build of a peer written here with the protocol's own types: it
authenticates with a certificate the fleet root really issued (so only what it
*says* is false), then sends ledger deltas holding

* an intent signed by a key the root never admitted,
* a manifest signed by an unadmitted publisher,
* a record forged in another node's name (its origin key, the liar's signature),
* an admitted operator's intent altered after signing,
* a replay of every entry the daemon itself gossiped to it,

each on a session of its own (a forgery whose signature fails gets the session dropped).

Must hold: nothing forged is merged or acted on, the rejections are counted in the
daemon's statistics (``rejected_entries`` of ``shoal status``), the daemon stays up
and the honest node still converges. Serving corrupt chunks and advertising
chunks a peer lacks are covered sans-IO in tests/test_swarm*.py (liar detection
drops the peer); see docs/RELIABILITY.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent._daemon.transport import dial
from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package
from agent._storage.keys import load_key
from protocol._gossip import GossipDelta, GossipDigest
from protocol._hlc import HLC
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity
from protocol._intents import Intent, IntentKind
from protocol._ledger import Entry

from ._chaos import MiB
from ._fleet import manifest, record
from ._helpers import rollout, status

pytestmark = pytest.mark.slow

TARGET, HONEST = 0, 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    with LocalFleet(tmp_path_factory.mktemp("liars"), 2,
                    extra_config=FAST_GOSSIP).running() as f:
        yield f


def forgeries(f: LocalFleet, liar: SigningIdentity, base: int) -> dict[str, list[Entry]]:
    rogue = SigningIdentity.generate()
    now_ms = int(time.time() * 1000)
    evil = Intent.create(rogue, IntentKind.DISTRIBUTE, "evil", "6.6.6",
                         HLC(now_ms + 10_000, 0, liar.key_id))
    m, _ = manifest(model="evil", version="6.6.6", publisher=rogue)
    operator = load_key(f.nodes[TARGET].data_dir / "keys", "operator")
    real = Intent.create(operator, IntentKind.DISTRIBUTE, "evil", "1.0.0",
                         HLC(now_ms + 20_000, 0, liar.key_id))
    tampered = dataclasses.replace(real, version="9.9.9")
    honest_key = load_key(f.nodes[HONEST].data_dir / "keys", "node")
    forged_record = Entry(honest_key.public_key, 2**50, record("hijacked"), None, None, None,
                          None, liar.sign(b"not the body"))
    return {
        "intent signed by an unadmitted key": [Entry.create(liar, base + 1, evil)],
        "manifest signed by an unadmitted publisher": [Entry.create(liar, base + 2, m)],
        "record forged in another node's name": [forged_record],
        "operator intent altered after signing": [Entry.create(liar, base + 3, tampered)],
    }


@pytest.mark.parametrize("rounds", [1, pytest.param(25, marks=pytest.mark.soak)])
def test_forged_gossip_is_rejected_and_counted(fleet: LocalFleet, tmp_path: Path,
                                               rounds: int) -> None:
    f = fleet
    port = status(f).listen_port
    trust = FleetTrust(f.fleet_id, f.root.public_key)
    before = json.loads(status(f).statistics_json).get("rejected_entries", {})

    async def connect(liar: SigningIdentity) -> Any:
        cert = Certificate.issue(f.root, f.fleet_id, liar.public_key, Role.NODE, "liar",
                                 int(time.time()))
        return await dial("127.0.0.1", port, identity=liar, certificate=cert, trust=trust)

    async def lie() -> int:
        # Each forgery goes on a connection of its own, from a liar of its own: one whose
        # signature fails (the forged record, the altered intent) proves its sender a
        # liar, and the node drops the session then, losing what it had not read yet.
        heard: list[Entry] = []
        liar = SigningIdentity.generate()
        async with await connect(liar) as ch:
            await ch.send(GossipDigest({}, True, 0, ()))      # "send me everything"
            with trio.move_on_after(2.0):
                async for msg in ch:
                    if isinstance(msg, GossipDelta):
                        heard.extend(msg.entries)
            await ch.send(GossipDelta(tuple(heard), {}))        # replay what it heard
            with trio.move_on_after(1.0):
                async for _ in ch:
                    pass
        for name in forgeries(f, liar, 0):
            liar = SigningIdentity.generate()
            entries = forgeries(f, liar, int(time.time() * 1000))[name]
            async with await connect(liar) as ch:
                await ch.send(GossipDelta(tuple(entries), {}))
                with trio.move_on_after(1.0):
                    async for _ in ch:
                        pass
        return len(heard)

    replayed = sum(trio.run(lie) for _ in range(rounds))
    p = f.procs[TARGET]
    assert p is not None and p.poll() is None
    # a liar hangs up at most 1 s after its forgery; a loaded node may still be reading
    # it then, so wait (bounded) until every kind sent is counted
    expected = {"intent": 2 * rounds, "manifest": rounds, "record": rounds}
    deadline = time.monotonic() + 15
    while True:
        after = json.loads(status(f).statistics_json)["rejected_entries"]
        if (all(int(after.get(k, 0)) - int(before.get(k, 0)) >= n
                for k, n in expected.items()) or time.monotonic() > deadline):
            break
        time.sleep(0.2)
    # nothing forged is merged or acted on
    intents = trio.run(f.call, TARGET, lambda c: c.intents("evil"))
    assert intents == ()
    rec = trio.run(f.call, TARGET, lambda c: c.node_model_status(f.nodes[HONEST].node_id))
    assert rec.record is not None and rec.record.name == "node1"
    # ... and every forgery is counted by kind
    def grew(kind: str) -> int:
        return int(after.get(kind, 0)) - int(before.get(kind, 0))
    assert grew("intent") == 2 * rounds and grew("manifest") == rounds \
        and grew("record") == rounds, after
    print(f"\nreliability/liars: {rounds} x 4 forgery kinds sent (each by a liar of its "
          f"own), all rejected "
          f"(rejected_entries {after}); {replayed} replayed entries changed nothing")
    # the honest node is still served
    pkg = make_package(tmp_path / "pkg", 2 * MiB, seed=71)
    model = f"honest-{rounds}"
    rep = rollout(f, TARGET, pkg, model)
    assert rep.converged == 2
