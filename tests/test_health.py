"""Issue 24 (first part): a variant's health check after install and while it runs.

The machine: ``loading`` -> ``degraded`` (blocker ``unhealthy``, the check's detail)
when the check fails through its settling window, ``operational`` <-> ``degraded``
as later checks fail or pass, and a report about a version that no longer runs
changes nothing. The check runner: exit status, last stderr line, timeout, refusals.
End to end: a real daemon whose check reads a file in its data directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from agent._daemon.health import (
    HealthSettings,
    HealthTarget,
    run_check,
    run_grpc_check,
    settle,
)
from protocol import BlockerReason, ModelOperationalStatus

from ._fleet import InProcessFleet, intent

S = ModelOperationalStatus


def _installed(fleet: InProcessFleet) -> None:
    fleet.publish_files("1.0.0")
    fleet.issue(0, intent("1.0.0", wall=1))


def test_the_machine_moves_between_operational_and_degraded() -> None:
    fleet = InProcessFleet(2)
    _installed(fleet)
    fleet.advance(20)
    m = fleet.m(1)
    st = m.model_state("m")
    assert st is not None and st.status is S.OPERATIONAL
    records_before = m.statistics().record_writes
    m.health_reported("m", "1.0.0", "accuracy 0.41 below 0.80", fleet.now)
    st = m.model_state("m")
    assert st is not None and st.status is S.DEGRADED
    assert st.blocker is BlockerReason.UNHEALTHY and st.blocker_detail.startswith("accuracy")
    assert m.statistics().record_writes == records_before + 1   # told at once
    m.health_reported("m", "1.0.0", "accuracy 0.41 below 0.80", fleet.now)   # same: nothing
    assert m.statistics().record_writes == records_before + 1
    fleet.advance(5)
    # every node sees it degraded (still counted as converged: it runs the version)
    other = fleet.m(0).ledger.record(m.node_id)
    assert other is not None and other.models[0].status is S.DEGRADED
    rep = fleet.m(0).convergence("m", "1.0.0", fleet.now)
    assert rep.converged == 2
    m.health_reported("m", "1.0.0", None, fleet.now)
    st = m.model_state("m")
    assert st is not None and st.status is S.OPERATIONAL and st.blocker is None
    # a report about another version than the one that runs changes nothing
    m.health_reported("m", "0.9.0", "old", fleet.now)
    st = m.model_state("m")
    assert st is not None and st.status is S.OPERATIONAL


def test_an_install_whose_check_never_passed_ends_degraded() -> None:
    """loading -> degraded: the driver reports the install with the check's detail."""
    fleet = InProcessFleet(2)
    m = fleet.m(1)
    real = m.install_finished

    def unhealthy_install(*args: object, **kw: object) -> None:
        real(*args, **{**kw, "unhealthy": "no GPU memory"})  # type: ignore[arg-type]

    m.install_finished = unhealthy_install  # type: ignore[method-assign]
    _installed(fleet)
    fleet.advance(20)
    st = m.model_state("m")
    assert st is not None and st.status is S.DEGRADED
    assert (st.active_version, st.blocker_detail) == ("1.0.0", "no GPU memory")
    assert fleet.m(0).convergence("m", "1.0.0", fleet.now).converged == 2


# ------------------------------------------------------------------ the check runner

def _script(tmp: Path, name: str, body: str, mode: int = 0o755) -> str:
    p = tmp / name
    p.write_text(body)
    p.chmod(mode)
    return name


async def test_a_check_is_its_exit_status_and_its_last_stderr_line(tmp_path: Path) -> None:
    ok = _script(tmp_path, "ok.py", "import sys; sys.exit(0)\n")
    bad = _script(tmp_path, "bad.py", "import sys\nprint('warming up', file=sys.stderr)\n"
                  "print('  sensor offline  ', file=sys.stderr)\nsys.exit(3)\n")
    quiet = _script(tmp_path, "quiet.sh", "#!/bin/sh\nexit 4\n")
    assert await run_check(tmp_path, ok, {}, 5.0) is None
    assert await run_check(tmp_path, bad, {}, 5.0) == "sensor offline"
    assert await run_check(tmp_path, quiet, {}, 5.0) == "health check exited with status 4"
    env = _script(tmp_path, "env.py", "import os, sys\n"
                  "sys.exit(0 if os.environ['SHOAL_MODEL_ID'] == 'det' else 1)\n")
    assert await run_check(tmp_path, env, {"SHOAL_MODEL_ID": "det"}, 5.0) is None


async def test_a_check_that_hangs_or_cannot_run_is_unhealthy(tmp_path: Path) -> None:
    slow = _script(tmp_path, "slow.py", "import time; time.sleep(30)\n")
    assert await run_check(tmp_path, slow, {}, 0.5) == "health check timed out after 0.5 s"
    noexec = _script(tmp_path, "noexec.sh", "#!/bin/sh\nexit 0\n", mode=0o644)
    assert "not executable" in (await run_check(tmp_path, noexec, {}, 5.0) or "")
    assert "cannot be started" in (await run_check(tmp_path, "missing.py", {}, 5.0) or "")
    assert "refused" in (await run_check(tmp_path, "../escape.py", {}, 5.0) or "")


async def test_settling_retries_until_the_check_passes(tmp_path: Path) -> None:
    flag, runs = tmp_path / "ready", tmp_path / "runs"
    check = _script(tmp_path, "c.py", f"import os, sys\nopen({str(runs)!r}, 'a').write('x')\n"
                    f"sys.exit(0 if os.path.exists({str(flag)!r}) else 1)\n")
    settings = HealthSettings(settle_window=60.0, settle_every=0.2, timeout=30.0)

    async def make_ready() -> None:          # only once a first try has failed
        while not runs.exists():
            await trio.sleep(0.05)
        flag.touch()

    async with trio.open_nursery() as n:
        n.start_soon(make_ready)
        detail, tries = await settle(HealthTarget(tmp_path, check), {}, settings)
    assert detail is None and tries >= 2
    flag.unlink()
    detail, tries = await settle(HealthTarget(tmp_path, check), {},
                                 HealthSettings(settle_window=0.6, settle_every=0.2,
                                                timeout=30.0))
    assert detail == "health check exited with status 1" and tries >= 1


class _HealthServer:
    """A model's grpc.health.v1.Health service, written against the generated stubs
    (any implementation of the standard protocol answers the same)."""

    def __init__(self, address: str) -> None:
        from concurrent import futures

        import grpc

        from agent._grpc import health_pb2, health_pb2_grpc

        self.pb = health_pb2
        self.status = health_pb2.HealthCheckResponse.SERVING
        outer = self

        class Servicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
            def Check(self, request: Any, context: Any) -> Any:
                return health_pb2.HealthCheckResponse(status=outer.status)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(address)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


async def test_the_grpc_health_protocol_at_the_models_address(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/model.sock"
    srv = _HealthServer(address)
    try:
        assert await run_grpc_check(address, 5.0) is None
        srv.status = srv.pb.HealthCheckResponse.NOT_SERVING
        assert await run_grpc_check(address, 5.0) == \
            f"health service at {address} says NOT_SERVING"
    finally:
        srv.stop()
    gone = await run_grpc_check(address, 2.0)
    assert gone is not None and "UNAVAILABLE" in gone
    refused = await run_grpc_check("192.0.2.7:50051", 2.0)
    assert refused is not None and "only loopback" in refused
    # a model that serves something else on that address, but no Health service
    from concurrent import futures

    import grpc
    other = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    other.add_insecure_port(f"unix://{tmp_path}/other.sock")
    other.start()
    try:
        none = await run_grpc_check(f"unix://{tmp_path}/other.sock", 5.0)
        assert none is not None and "UNIMPLEMENTED" in none
    finally:
        other.stop(None)


def test_health_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        HealthSettings(interval=0)


# ------------------------------------------------------------------ end to end

CHECK = '''import os, sys
flag = os.path.join(os.environ["SHOAL_DATA_DIR"], "unhealthy")
if os.path.exists(flag):
    print(open(flag).read().strip(), file=sys.stderr)
    sys.exit(1)
'''


def test_a_daemon_reports_its_model_degraded_and_recovered(tmp_path: Path) -> None:
    from agent._admin.fleet import provision
    from protocol._identity import SigningIdentity

    from .test_operator_cli import Daemon, shoal, wait_status

    node = provision(tmp_path / "n1", root=SigningIdentity.generate(),
                     fleet_id=f"health-{os.getpid()}", name="n1", operator=True,
                     mdns_interface="")
    node.config_path.write_text(node.config_path.read_text() + '''
[health]
settle_window = 1.5
settle_every = 0.3
interval = 0.5
timeout = 5.0
''')
    pkg = tmp_path / "pkg"
    (pkg / "cpu").mkdir(parents=True)
    (pkg / "cpu" / "weights.bin").write_bytes(os.urandom(50_000))
    (pkg / "cpu" / "health.py").write_text(CHECK)
    (pkg / "shoal-model.toml").write_text('[[variant]]\nid = "cpu"\n'
                                          'health_check = "health.py"\n')
    flag = node.data_dir / "unhealthy"
    flag.write_text("camera 2 returns black frames\n")
    d = Daemon(node.config_path, tmp_path / "daemon.log")
    cfg = ("--config", str(node.config_path))

    def model() -> dict[str, object]:
        models = wait_status(node.config_path)["record"]["models"]   # type: ignore[index]
        return models[0] if models else {}                         # type: ignore[no-any-return]

    def until(status: str) -> dict[str, object]:
        for _ in range(200):
            m = model()
            if m.get("status") == status:
                return m
            time.sleep(0.1)
        raise AssertionError(f"never {status}: {model()}")

    try:
        wait_status(node.config_path)
        assert shoal("publish", str(pkg), "--model", "det", "--version", "1.0.0",
                     *cfg).returncode == 0
        assert shoal("distribute", "det", "1.0.0", *cfg).returncode == 0
        m = until("degraded")
        assert m["blocker"] == "unhealthy"
        assert m["blocker_detail"] == "camera 2 returns black frames"
        text = shoal("status", *cfg).stdout
        assert "degraded" in text and "camera 2 returns black frames" in text, text
        r = shoal("status", "det", "1.0.0", "--json", *cfg)
        assert json.loads(r.stdout)["converged"] == 1          # it runs the version
        flag.unlink()                                        # the camera is fixed
        until("operational")
        stats = wait_status(node.config_path)["statistics"]["runtime"]  # type: ignore[index]
        assert stats["health_checks"] >= 3 and stats["health_failures"] >= 2, stats
        flag.write_text("camera 2 returns black frames again\n")       # and breaks again
        m = until("degraded")
        assert m["blocker_detail"] == "camera 2 returns black frames again"
    finally:
        d.stop()


def test_a_daemon_asks_the_models_grpc_health_service(tmp_path: Path) -> None:
    """A model that runs as a service (migrator_address) with health_check = "grpc":
    NOT_SERVING from its grpc.health.v1.Health makes the node degraded, SERVING
    operational again -- through a real daemon, the package published by `shoal`."""
    from agent._admin.fleet import provision
    from protocol._identity import SigningIdentity

    from .test_operator_cli import Daemon, shoal, wait_status

    address = f"unix://{tmp_path}/model.sock"
    srv = _HealthServer(address)
    srv.status = srv.pb.HealthCheckResponse.NOT_SERVING
    node = provision(tmp_path / "n1", root=SigningIdentity.generate(),
                     fleet_id=f"ghealth-{os.getpid()}", name="n1", operator=True,
                     mdns_interface="")
    node.config_path.write_text(node.config_path.read_text() + '''
[health]
settle_window = 1.0
settle_every = 0.3
interval = 0.5
''')
    pkg = tmp_path / "pkg"
    (pkg / "svc").mkdir(parents=True)
    (pkg / "svc" / "weights.bin").write_bytes(os.urandom(20_000))
    (pkg / "shoal-model.toml").write_text(
        f'[[variant]]\nid = "svc"\nmigrator_address = "{address}"\n'
        'health_check = "grpc"\n')
    d = Daemon(node.config_path, tmp_path / "daemon.log")
    cfg = ("--config", str(node.config_path))

    def until(status: str) -> dict[str, Any]:
        for _ in range(200):
            models = wait_status(node.config_path)["record"]["models"]  # type: ignore[index]
            if models and models[0]["status"] == status:
                return models[0]                                   # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"never {status}")

    try:
        wait_status(node.config_path)
        assert shoal("publish", str(pkg), "--model", "svc", "--version", "1.0.0",
                     *cfg).returncode == 0
        assert shoal("distribute", "svc", "1.0.0", *cfg).returncode == 0
        m = until("degraded")
        assert m["blocker_detail"] == f"health service at {address} says NOT_SERVING"
        srv.status = srv.pb.HealthCheckResponse.SERVING
        until("operational")
    finally:
        d.stop()
        srv.stop()
