"""Revoking a *node* key on a live fleet cuts the node off: once `shoal fleet announce`
hands the revocation to one daemon, every honest node closes its open session with the
revoked node (the announcing node at once, the others as soon as gossip brings the
revocation; how soon is printed, not asserted: a time on two shared cores is a figure,
not a property, and the wait gives up after CUT_WAIT seconds), and the revoked node
cannot come back: its handshakes are refused by every honest node's trust.

3 real daemons on loopback; every wait bounded; the fixture stops every process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent._demo.fleet import LocalFleet
from agent._storage.keys import load_key
from agent._storage.persist import write_seed

from ._helpers import peer_ids, shoal_cli

pytestmark = pytest.mark.slow

N = 3
CUT_WAIT = 30.0           # seconds the test waits for every honest session to close



@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(tmp_path_factory.mktemp("revokenode"), N)
    with f.running():
        yield f


def peers(f: LocalFleet, i: int) -> set[str]:
    return peer_ids(f.socket(i))


def test_a_revoked_nodes_sessions_are_closed_and_stay_closed(fleet: LocalFleet,
                                                              tmp_path: Path) -> None:
    f = fleet
    victim = N - 1
    key = load_key(f.nodes[victim].data_dir / "keys", "node")
    honest = [i for i in range(N) if i != victim]
    for i in honest:
        assert key.key_id in peers(f, i)          # its sessions are open

    admin = tmp_path / "admin"
    write_seed(admin / "keys" / "root.key", f.root)
    out = admin / "revoke-node.bin"
    r = shoal_cli("fleet", "revoke", "--data-dir", str(admin), "--fleet", f.fleet_id,
              "--key", key.public_key.hex(), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    r = shoal_cli("fleet", "announce", str(out), "--socket", f.socket(0), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["added"] is True

    cut: dict[int, float] = {}
    while len(cut) < len(honest) and time.monotonic() - t0 < CUT_WAIT:
        for i in honest:
            if i not in cut and key.key_id not in peers(f, i):
                cut[i] = time.monotonic() - t0
        time.sleep(0.1)
    assert sorted(cut) == honest, f"sessions still open after {CUT_WAIT} s: {cut}"
    print(f"revoked node cut off in {', '.join(f'{v:.2f}' for v in cut.values())} s")

    # it stays cut off: its redials are refused, the honest nodes keep each other
    time.sleep(2.0)
    for i in honest:
        now = peers(f, i)
        assert key.key_id not in now
        assert {f.nodes[j].node_id for j in honest if j != i} <= now
    assert not (peers(f, victim) & {f.nodes[j].node_id for j in honest})
