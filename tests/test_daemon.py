"""Multi-process tests: real ``shoal daemon`` processes on loopback (TCP + mDNS).

One fleet of 5 daemons is shared by the tests of this module, in order:
discovery, a model published on one node reaching all, a delta update that
moves only changed chunks, a daemon SIGKILLed mid-transfer that resumes without
refetching stored chunks, an unadmitted node refused, and the control socket's
mode and peer-credential check. Every wait is bounded; every process is killed
in the fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent._admin.fleet import provision
from agent._daemon.control_client import ControlClient
from agent._daemon.transport import dial
from agent._demo.fleet import LocalFleet, make_package, mutate_package
from agent._storage.store import ChunkStore
from protocol._errors import ProtocolError
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity
from protocol._intents import Scope

from ._helpers import call

pytestmark = pytest.mark.slow

N = 5
MiB = 1024 * 1024
SLOW = 4  # this node downloads at 4 MiB/s, so a transfer can be interrupted


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    base = tmp_path_factory.mktemp("fleet")
    with LocalFleet(base, N, per_node={SLOW: '[bandwidth]\ndownload = "4MiB"\n'}).running() as f:
        yield f


def store_stats(f: LocalFleet, i: int) -> dict[str, int]:
    st = call(f, i, lambda c: c.status())
    return dict(json.loads(st.statistics_json)["store"])


def test_daemons_discover_each_other_over_mdns(fleet: LocalFleet) -> None:
    async def go() -> None:
        for i in range(N):
            await fleet.wait_peers(i, N - 1, timeout=30)
    trio.run(go)
    peers = call(fleet, 0, lambda c: c.peers()).peers
    assert sorted(p.node_id for p in peers) == sorted(n.node_id for n in fleet.nodes[1:])


def test_published_model_reaches_every_node_then_delta_moves_only_changes(
        fleet: LocalFleet, tmp_path: Path) -> None:
    pkg1 = make_package(tmp_path / "p1", 4 * MiB, seed=11)
    pkg2 = mutate_package(pkg1, tmp_path / "p2", 0.02, seed=12)
    pub = call(fleet, 0, lambda c: c.publish(str(pkg1), "det", "1.0.0"))
    call(fleet, 0, lambda c: c.distribute_model("det", "1.0.0"))
    rep = trio.run(fleet.wait_converged, 0, "det", "1.0.0", 60)
    assert rep.converged == N and rep.failed == 0
    for i in range(N):
        current = fleet.nodes[i].data_dir / "models" / "det" / "current"
        assert current.resolve().name == "1.0.0"
        # node 0 saw convergence; node i agrees once gossip has brought it every record
        everyone = tuple(sorted(n.node_id for n in fleet.nodes))
        deadline = time.monotonic() + 30
        while (seen := call(fleet, i, lambda c: c.nodes_with_version("det", "1.0.0"))) \
                != everyone and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen == everyone
    before = [store_stats(fleet, i)["bytes"] for i in range(N)]
    pub2 = call(fleet, 0, lambda c: c.publish(str(pkg2), "det", "1.1.0"))
    assert 0 < pub2.bytes_new < pub.bytes_total * 0.35   # 8 edited spots, ~1-2 chunks each
    call(fleet, 0, lambda c: c.distribute_model_delta("det", "1.1.0", "1.0.0"))
    trio.run(fleet.wait_converged, 0, "det", "1.1.0", 60)
    # every node runs the CPU variant (no GPU here): it fetched only the changed chunks
    # of that variant, never more than the publisher stored new for both variants
    for i in range(1, N):
        moved = store_stats(fleet, i)["bytes"] - before[i]
        assert 0 < moved <= pub2.bytes_new
        rec = call(fleet, i, lambda c: c.node_model_status("")).record
        assert rec.model("det").active_version == "1.1.0"
    # rollback: no transfer, every node switches back
    call(fleet, 0, lambda c: c.rollback("det", "1.0.0"))
    trio.run(fleet.wait_converged, 0, "det", "1.0.0", 30)
    assert (fleet.nodes[2].data_dir / "models" / "det" / "current").resolve().name == "1.0.0"


def test_sigkill_mid_transfer_resumes_without_refetching(fleet: LocalFleet,
                                                         tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "big", 24 * MiB, seed=21)   # int8-cpu variant: 12 MiB
    node = fleet.nodes[SLOW]
    call(fleet, 0, lambda c: c.publish(str(pkg), "big", "1.0.0"))
    held_at_start = store_stats(fleet, SLOW)["bytes"]
    call(fleet, 0, lambda c: c.distribute_model("big", "1.0.0",
                                                Scope.of_nodes(node.node_id)))

    async def partly() -> None:
        with trio.fail_after(30):
            while store_stats_async_bytes(await fleet.call(SLOW, lambda c: c.status())) \
                    < held_at_start + 2 * MiB:
                await trio.sleep(0.1)
    trio.run(partly)
    fleet.kill(SLOW, signal.SIGKILL)
    held_before_restart = _chunk_bytes_on_disk(node.data_dir) - held_at_start
    assert 0 < held_before_restart < 12 * MiB
    fleet.start(SLOW)

    async def done() -> Any:
        await fleet.wait_ready(SLOW, timeout=30)
        with trio.fail_after(60):
            while True:
                rec = (await fleet.call(SLOW, lambda c: c.node_model_status(""))).record
                st = rec.model("big") if rec is not None else None
                if st is not None and st.active_version == "1.0.0":
                    return st
                await trio.sleep(0.2)
    st = trio.run(done)
    assert st.bytes_reused >= held_before_restart      # found on disk, not fetched again
    after = store_stats(fleet, SLOW)
    assert after["puts_duplicate"] == 0                # no held chunk arrived a second time
    # all of it is on disk now (config.json is a chunk the "det" model already shared)
    assert _chunk_bytes_on_disk(node.data_dir) - held_at_start >= st.bytes_total - 1024


def store_stats_async_bytes(status: Any) -> int:
    return int(json.loads(status.statistics_json)["store"]["bytes"])


def _chunk_bytes_on_disk(data_dir: Path) -> int:
    """Bytes of the distinct chunks a node holds on disk, verified: what its store
    finds when it opens (a staged version's progress log is re-read and hashed)."""
    store = ChunkStore(data_dir / "store", fsync=False)
    try:
        return store.statistics().bytes
    finally:
        store.close()


def test_unadmitted_node_cannot_join(fleet: LocalFleet, tmp_path: Path) -> None:
    rogue_root = SigningIdentity.generate()
    rogue = SigningIdentity.generate()
    cert = Certificate.issue(rogue_root, fleet.fleet_id, rogue.public_key, Role.NODE,
                             "rogue", 1)
    trust = FleetTrust(fleet.fleet_id, rogue_root.public_key)
    port = call(fleet, 1, lambda c: c.status()).listen_port

    async def go() -> None:
        with trio.fail_after(10), pytest.raises(ProtocolError, match="not admitted"):
            await dial("127.0.0.1", port, identity=rogue, certificate=cert, trust=trust)
    trio.run(go)
    peers = call(fleet, 1, lambda c: c.peers()).peers
    assert rogue.key_id not in {p.node_id for p in peers}


def test_control_socket_is_private_and_checks_peer_credentials(fleet: LocalFleet) -> None:
    path = Path(fleet.socket(0))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    if os.getuid() != 0:
        pytest.skip("running a client as another uid needs root (os.setuid)")
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o666)          # even if someone loosens the modes, SO_PEERCRED refuses
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 3
            try:
                os.chdir(path.parent)          # the pytest tmp ancestors are 0700
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(path.name)
                from agent._daemon.control_messages import StatusRequest
                from protocol._codec import encode, frame
                try:
                    s.sendall(frame(encode(StatusRequest())))
                    code = 0 if s.recv(4096) == b"" else 1   # closed without an answer
                except (BrokenPipeError, ConnectionResetError):
                    code = 0
            except OSError:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o600)
    # the owner still gets answers
    assert call(fleet, 0, lambda c: c.status()).node_id == fleet.nodes[0].node_id


async def test_client_reports_missing_daemon(tmp_path: Path) -> None:
    from agent._daemon.control_client import ControlRefused

    with pytest.raises(ControlRefused, match="is `shoal daemon` running"):
        async with ControlClient(tmp_path / "nope.sock"):
            pass


def test_provision_writes_a_loadable_config(tmp_path: Path) -> None:
    from agent._config import load_config

    root = SigningIdentity.generate()
    p = provision(tmp_path / "n", root=root, fleet_id="f1", name="n1", operator=True)
    cfg = load_config(str(p.config_path))
    assert cfg.fleet_root_key == root.public_key and cfg.node_name == "n1"
    assert (tmp_path / "n" / "keys" / "operator.cert").exists()
