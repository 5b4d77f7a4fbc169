"""Revoking an operator key on a live fleet: `shoal fleet revoke` (offline, root key)
writes a 0600 revocation file, `shoal fleet announce` hands it to one daemon, gossip
carries it to every node, and the revoked operator's daemon then refuses to issue
(nothing reaches the fleet: no intent, no desired state anywhere). A revocation not
signed by the fleet root is refused by the daemon.

3 real daemons on loopback; every wait bounded; the fixture stops every process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent._admin.fleet import provision
from agent._daemon.control_client import (
    ControlClient,
    ControlError,
    RequestRejected,
    UnknownVersion,
)
from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package
from agent._storage.keys import load_key
from agent._storage.persist import write_seed
from protocol._identity import Revocation, SigningIdentity, fingerprint

from ._helpers import call, until

pytestmark = pytest.mark.slow

N = 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    base = tmp_path_factory.mktemp("revokefleet")
    f = LocalFleet(base, N)
    f.nodes[1] = provision(base / "node1", root=f.root, fleet_id=f.fleet_id, name="node1",
                           operator=True, extra_config=FAST_GOSSIP)
    with f.running():
        yield f


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "agent._cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


async def _revoked(c: ControlClient) -> list[str]:
    return list(json.loads((await c.status()).statistics_json)["revoked_keys"])


def test_revoked_operator_cannot_issue_anywhere(fleet: LocalFleet, tmp_path: Path) -> None:
    f = fleet
    op = load_key(f.nodes[1].data_dir / "keys", "operator")
    pkg = make_package(tmp_path / "pkg", 64 * 1024)
    call(f, 0, lambda c: c.publish(str(pkg), "m", "1.0.0"))

    async def knows_model(c: ControlClient) -> bool:     # and the operator key still works
        try:
            await c.distribute_model("m", "9.9.9")
        except UnknownVersion:
            return True
        except RequestRejected:
            return False
        raise AssertionError("9.9.9 was never published")
    until(f, 1, knows_model)

    # offline, on the admin machine: the root key signs the revocation
    admin = tmp_path / "admin"
    write_seed(admin / "keys" / "root.key", f.root)
    out = admin / "revoke-op.bin"
    r = shoal("fleet", "revoke", "--data-dir", str(admin), "--fleet", f.fleet_id,
              "--key", op.public_key.hex(), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revoked_key"] == op.public_key.hex()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    # handed to node 0's daemon, which writes it to the ledger
    r = shoal("fleet", "announce", str(out), "--socket", f.socket(0), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    ans = json.loads(r.stdout)
    assert ans["kind"] == "revocation" and ans["added"] is True
    assert ans["revoked_keys"] == [op.key_id]
    r = shoal("fleet", "announce", str(out), "--socket", f.socket(0), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["added"] is False   # idempotent

    # gossip carries it to every node
    for i in range(N):
        assert until(f, i, _revoked) == [op.key_id]

    # node 1 now refuses to sign with its revoked key: nothing is sent
    async def distribute(c: ControlClient) -> str:
        try:
            await c.distribute_model("m", "1.0.0")
        except RequestRejected as exc:
            return str(exc)
        return ""
    refused = call(f, 1, distribute)
    assert "revoked by the fleet root" in refused and "nothing was sent" in refused

    async def cancel(c: ControlClient) -> str:
        try:
            await c.cancel("m")
        except ControlError as exc:
            return exc.kind
        return ""
    assert call(f, 1, cancel) == "RequestRejected"

    # ... and nothing changed anywhere, after time for gossip to have carried anything
    time.sleep(1.0)
    for i in range(N):
        assert call(f, i, lambda c: c.intents("m")) == ()
        assert call(f, i, lambda c: c.nodes_with_version("m", "1.0.0")) == ()
        rec = call(f, i, lambda c: c.node_model_status("")).record
        assert rec is None or rec.model("m") is None or not rec.model("m").version

    # a revocation not signed by the fleet root is refused, and changes nothing
    rogue = SigningIdentity.generate()
    node0 = load_key(f.nodes[0].data_dir / "keys", "node")
    forged = Revocation.issue(rogue, f.fleet_id, node0.public_key, int(time.time()))

    async def announce_forged(c: ControlClient) -> str:
        try:
            await c.announce_trust(forged)
        except ControlError as exc:
            return exc.kind
        return ""
    assert call(f, 2, announce_forged) == "SignatureError"
    assert call(f, 2, _revoked) == [op.key_id]
    assert fingerprint(node0.public_key) not in call(f, 0, _revoked)
