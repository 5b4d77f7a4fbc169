"""Lying peers that serve chunks, against LIVE daemons.

Three real daemons on loopback: node 0 the honest seeder (publishes a 32 MiB model),
node 1 an honest receiver, node 2 a liar: the test build ``python -m
tests._liar_daemon`` of the real daemon, patched to

* ``corrupt``: serve every piece with one byte flipped (its store really holds the
  model's chunks: they are copied into it from the seeder before it starts), or
* ``phantom``: claim every chunk of every manifest it knows and never serve one.

The version is distributed to node 1 only. Must hold: node 1 converges; every file it
installed re-hashes against the manifest; every chunk in its store hashes to its name;
node 1 dropped the liar (``peers_dropped`` in ``shoal status``, the reason in its log)
and the liar is not among its peers afterwards. The seeder's upload is capped so the
transfer lasts long enough for node 1 to ask the liar; ``request_timeout`` and
``max_peer_failures`` are small so a phantom is found out within the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import FAST_GOSSIP, LocalFleet, make_package
from agent._storage.store import ChunkStore
from protocol._intents import Scope

from ._chaos import MiB, log_lines, verify_installed, visible_partial_files

pytestmark = pytest.mark.slow

SEEDER, RECEIVER, LIAR = 0, 1, 2
SWARM = "[swarm]\nrequest_timeout = 1.0\nmax_peer_failures = 2\n"
# ~4 s per variant (128 chunks): longer than request_timeout even after the daemon's
# pipeline of 16 per peer has asked the liar and the seeder for 16 each, so the liar's
# requests time out before endgame could ask for them elsewhere
SEEDER_CAP = "[bandwidth]\nupload = \"4MiB\"\n"


def _start_liar(f: LocalFleet, mode: str) -> None:
    node = f.nodes[LIAR]
    log = open(node.data_dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    f.procs[LIAR] = subprocess.Popen(
        [sys.executable, "-m", "tests._liar_daemon", "--config", str(node.config_path),
         "--mode", mode], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()


@pytest.fixture(params=["corrupt", "phantom"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LocalFleet, str]]:
    f = LocalFleet(tmp_path / "fleet", 3, extra_config=FAST_GOSSIP + SWARM,
                   per_node={SEEDER: SEEDER_CAP})
    try:
        yield f, str(request.param)
    finally:
        f.stop_all()


async def _status(f: LocalFleet, i: int) -> object:
    return await f.call(i, lambda c: c.status())


async def _scenario(f: LocalFleet, mode: str, pkg: Path) -> dict[str, object]:
    for i in (SEEDER, RECEIVER):
        await f.wait_ready(i, timeout=30)
    pub = await f.call(SEEDER, lambda c: c.publish(str(pkg), "liar-test", "1.0.0"))
    # the liar must know the manifest's chunk list to lie about its chunks (out of
    # scope, it would fetch it only if asked): its store holds the manifest, and in
    # "corrupt" mode the chunks too, to be asked for them: copied from the seeder's
    src = ChunkStore(f.nodes[SEEDER].data_dir / "store", fsync=False)
    dst = ChunkStore(f.nodes[LIAR].data_dir / "store", fsync=False)
    for m in src.manifests():
        if mode == "corrupt":            # staged as a daemon stages what it fetches
            for v in m.variants:
                dst.stage(m, v.variant_id)
            dst.unpin(m.manifest_id)        # not published by the liar: not announced
        else:
            dst.put_manifest(m)
    if mode == "corrupt":
        for h in src.hashes():
            dst.put(h, src.get(h))
    src.close()
    dst.close()
    _start_liar(f, mode)
    await f.wait_ready(LIAR, timeout=30)
    await f.wait_peers(RECEIVER, 2, timeout=30)
    await f.wait_peers(LIAR, 2, timeout=30)
    # the liar must hold the manifest's head (by gossip) before node 1 asks around, or
    # it could not match its chunk list to the key and could only answer CannotHelp
    with trio.fail_after(20):
        while True:
            st = json.loads((await f.call(LIAR, lambda c: c.status())).statistics_json)
            if st["ledger"]["manifests"] >= 1:
                break
            await trio.sleep(0.2)
    receiver = f.nodes[RECEIVER].node_id
    await f.call(SEEDER, lambda c: c.distribute_model("liar-test", "1.0.0",
                                                      Scope.of_nodes(receiver)))
    with trio.fail_after(40):
        while True:
            rep = await f.call(SEEDER, lambda c: c.convergence_status("liar-test", "1.0.0"))
            if rep.converged >= 1 and rep.is_success:
                break
            await trio.sleep(0.3)
    st = await f.call(RECEIVER, lambda c: c.status())
    return {"bytes": pub.bytes_total, "report": rep, "status": st}


def test_lying_chunk_server_is_dropped_and_nothing_corrupt_is_kept(
        fleet: tuple[LocalFleet, str], tmp_path: Path) -> None:
    f, mode = fleet
    pkg = make_package(tmp_path / "pkg", 32 * MiB, seed=88)
    f.start(SEEDER)
    f.start(RECEIVER)
    out = trio.run(_scenario, f, mode, pkg)
    st = out["status"]
    liar_id = f.nodes[LIAR].node_id
    stats = json.loads(st.statistics_json)           # type: ignore[attr-defined]
    dropped = log_lines(f.nodes[RECEIVER].data_dir, f"dropping peer {liar_id}")
    liar_alive = f.procs[LIAR] is not None and f.procs[LIAR].poll() is None  # type: ignore[union-attr]
    f.stop_all()
    # node 1 converged with every installed file verified against the manifest
    checks, link_problems = verify_installed(f.nodes[RECEIVER].data_dir)
    assert [c.version for c in checks] == ["1.0.0"], checks
    assert all(not c.problems for c in checks), checks
    assert link_problems == []
    # nothing corrupt in node 1's store: every chunk hashes to its name
    assert visible_partial_files(f.nodes[RECEIVER].data_dir) == []
    # node 1 dropped the liar, for the right reason, and it is not among its peers
    assert liar_alive, "the liar daemon died; see its daemon.log"
    assert stats["runtime"]["peers_dropped"] >= 1, stats["runtime"]
    if mode == "corrupt":                # what was rejected is visible in `shoal status`
        assert stats["swarm"]["corrupt_pieces"] >= 1, stats["swarm"]
    assert dropped, "node 1 never dropped the liar"
    want = "do not match chunk" if mode == "corrupt" else "went unserved"
    assert any(want in line for line in dropped), dropped
    assert liar_id not in st.peers                   # type: ignore[attr-defined]
    print(f"\nreliability/live-liars: {mode}: node 1 converged ({out['bytes']} bytes "
          f"published), {len(checks)} version re-verified, 0 bad chunks, liar dropped: "
          f"{dropped[0].split('dropping peer ', 1)[1][:120]}")
