"""The operator's path through the ``shoal`` command: one daemon per data directory,
one-line errors at start-up, one rule for finding the node, and publishing that
reaches the fleet with one manifest per version. Everything runs as subprocesses;
the data directories are provisioned with the same keys and certificates the
walkthrough in docs/OPERATING.md makes by hand (tests/test_docs_fleet.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent._admin.fleet import Provisioned, provision
from protocol._identity import SigningIdentity

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def shoal(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run([sys.executable, "-m", "agent._cli", *args], cwd=cwd or ROOT,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The error: one line, the last on stderr (a daemon may have logged its start)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("shoal: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert not any(ln.startswith(" ") for ln in lines), proc.stderr   # no indented dump
    return errors[0]


class Daemon:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent._cli", "daemon", "--config", str(config)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.DEVNULL, stderr=err, text=True)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def wait_status(config: Path, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        proc = shoal("status", "--json", "--config", str(config))
        if proc.returncode == 0:
            obj: dict[str, object] = json.loads(proc.stdout)
            return obj
        if time.monotonic() > deadline:
            pytest.fail(f"daemon did not answer: {proc.stderr}")
        time.sleep(0.2)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Provisioned]:
    root = SigningIdentity.generate()
    yield provision(tmp_path / "n1", root=root, fleet_id=f"ops-{os.getpid()}", name="n1",
                    operator=True, mdns_interface="")


def package(where: Path, content: bytes) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "weights.bin").write_bytes(content)
    return where


def test_a_second_daemon_on_the_same_data_directory_is_refused(node: Provisioned,
                                                                tmp_path: Path) -> None:
    first = Daemon(node.config_path, tmp_path / "first.log")
    try:
        wait_status(node.config_path)
        # a copy of the config with another port, same data directory
        copy = tmp_path / "copy.toml"
        copy.write_text(node.config_path.read_text().replace("listen_port = 0",
                                                             "listen_port = 0\n# copy"))
        second = shoal("daemon", "--config", str(copy), timeout=30)
        line = one_line_error(second)
        assert "in use by a shoal daemon" in line and f"pid {first.proc.pid}" in line
        # the first daemon still owns its socket and answers
        assert node.control_socket.exists()
        assert wait_status(node.config_path, timeout=5)["node_id"] == node.node_id

        # another data directory, but the same control socket: refused, socket kept
        other = provision(tmp_path / "n2", root=SigningIdentity.generate(),
                          fleet_id="other", name="n2", mdns_interface="")
        text = other.config_path.read_text().replace(str(other.control_socket),
                                                     str(node.control_socket))
        other.config_path.write_text(text)
        line = one_line_error(shoal("daemon", "--config", str(other.config_path),
                                    timeout=30))
        assert "served by another running daemon" in line
        assert wait_status(node.config_path, timeout=5)["node_id"] == node.node_id
    finally:
        assert first.stop() == 0
    assert not node.control_socket.exists()           # the owner removed its own socket
    # and the lock went with the daemon: a new one starts
    again = Daemon(node.config_path, tmp_path / "again.log")
    try:
        wait_status(node.config_path)
    finally:
        assert again.stop() == 0


def test_start_up_mistakes_are_one_line(node: Provisioned, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cfg = tmp_path / "busy.toml"
    cfg.write_text(node.config_path.read_text().replace("listen_port = 0",
                                                        f"listen_port = {port}"))
    try:
        line = one_line_error(shoal("daemon", "--config", str(cfg), timeout=30))
    finally:
        busy.close()
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line

    line = one_line_error(shoal("daemon", "--config", str(node.config_path),
                                env={"SHOAL_MALLOC_TRIM": "2s"}))   # docs/CONFIG.md
    assert "SHOAL_MALLOC_TRIM" in line and "'2s'" in line

    line = one_line_error(shoal("daemon", "--config", str(tmp_path / "nope.toml")))
    assert "nope.toml" in line and "does not exist" in line
    line = one_line_error(shoal("daemon", "--config", str(tmp_path)))     # a directory
    assert "cannot read config file" in line

    (node.data_dir / "keys" / "node.cert").unlink()
    line = one_line_error(shoal("daemon", "--config", str(node.config_path)))
    assert "no node certificate" in line and "shoal fleet admit" in line


def test_every_command_finds_the_node_by_one_rule(tmp_path: Path) -> None:
    """--data-dir, then --config, then $SHOAL_DATA_DIR, then $SHOAL_CONFIG, then the
    XDG default (the /etc step is tested in-process: tests must not write /etc)."""
    def config(name: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'data_dir = "{tmp_path / name}"\nfleet_id = "f"\n'
                        f'fleet_root_key = "{"00" * 32}"\n')
        return path

    def where(*args: str, env: dict[str, str] | None = None) -> str:
        proc = shoal("keys", "init", "--json", *args,
                     env={"HOME": str(tmp_path / "home"), **(env or {})})
        assert proc.returncode == 0, proc.stderr
        return str(Path(json.loads(proc.stdout)["data_dir"]).relative_to(tmp_path))

    a, b = config("by-config"), config("by-env-config")
    both = {"SHOAL_DATA_DIR": str(tmp_path / "by-env-dir"), "SHOAL_CONFIG": str(b)}
    assert where("--data-dir", str(tmp_path / "by-flag"), "--config", str(a),
                 env=both) == "by-flag"
    assert where("--config", str(a), env=both) == "by-config"
    assert where(env=both) == "by-env-dir"
    assert where(env={"SHOAL_CONFIG": str(b)}) == "by-env-config"
    assert where() == "home/.local/share/shoal"
    assert where(env={"XDG_DATA_HOME": str(tmp_path / "xdg")}) == "xdg/shoal"
    # offline and online commands agree: `models` reads the config's data directory
    proc = shoal("models", "--json", env={"SHOAL_CONFIG": str(b)})
    assert proc.returncode == 0 and json.loads(proc.stdout)["manifests"] == []
    # a config that does not parse is one line, for offline commands too
    (tmp_path / "bad.toml").write_text("data_dir = \n")
    line = one_line_error(shoal("models", "--config", str(tmp_path / "bad.toml")))
    assert "not valid TOML" in line


def test_the_system_config_comes_after_the_environment(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    import argparse

    from agent._cli import location as _location

    system = tmp_path / "shoal.toml"
    system.write_text(f'data_dir = "{tmp_path / "sys"}"\nfleet_id = "f"\n'
                      f'fleet_root_key = "{"00" * 32}"\n')
    monkeypatch.setattr(_location, "DEFAULT_CONFIG", str(system))
    for var in ("SHOAL_CONFIG", "SHOAL_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(data_dir=None, config=None)
    assert _location.locate(args).data.root == tmp_path / "sys"
    monkeypatch.setenv("SHOAL_DATA_DIR", str(tmp_path / "env"))
    assert _location.locate(args).data.root == tmp_path / "env"


def test_publish_reaches_the_fleet_with_one_manifest_per_version(node: Provisioned,
                                                                 tmp_path: Path) -> None:
    cfg = str(node.config_path)
    pkg = package(tmp_path / "pkg", os.urandom(300_000))
    # published while no daemon runs: stored, announced when the daemon starts
    first = shoal("publish", str(pkg), "--model", "det", "--version", "1.0.0",
                  "--config", cfg)
    assert first.returncode == 0 and "announces it to the fleet when it starts" in first.stdout
    daemon = Daemon(node.config_path, tmp_path / "d.log")
    try:
        wait_status(node.config_path)
        dist = shoal("distribute", "det", "1.0.0", "--json", "--config", cfg)
        assert dist.returncode == 0, dist.stderr
        assert json.loads(dist.stdout)["targets"] == 1
        # the same bytes again, now through the daemon: a no-op that says so
        again = shoal("publish", str(pkg), "--model", "det", "--version", "1.0.0",
                      "--config", cfg)
        assert again.returncode == 0 and "already published with these bytes" in again.stdout
        # other bytes under a published version: refused
        (pkg / "weights.bin").write_bytes(os.urandom(300_000))
        line = one_line_error(shoal("publish", str(pkg), "--model", "det", "--version",
                                    "1.0.0", "--config", cfg))
        assert "already published with different content" in line
        # ... and under a new version, published through the running daemon
        new = shoal("publish", str(pkg), "--model", "det", "--version", "1.1.0",
                    "--json", "--config", cfg)
        assert new.returncode == 0, new.stderr
        dist = shoal("distribute", "det", "1.1.0", "--config", cfg)
        assert dist.returncode == 0, dist.stderr
    finally:
        assert daemon.stop() == 0
    models = json.loads(shoal("models", "--json", "--config", cfg).stdout)
    assert sorted(m["version"] for m in models["manifests"]) == ["1.0.0", "1.1.0"]
    # a restart announces nothing twice
    daemon = Daemon(node.config_path, tmp_path / "d2.log")
    try:
        wait_status(node.config_path)
        handles = json.loads(shoal("handles", "det", "--json", "--config", cfg).stdout)
        # 1.1.0, carried out everywhere (here: one node), settled, and the distribute of
        # 1.0.0 it covers is history no answer depends on (docs/LEDGER.md)
        assert {(h["kind"], h["version"]) for h in handles} <= {
            ("distribute", "1.0.0"), ("distribute", "1.1.0"), ("settle", "1.1.0")}
        assert ("distribute", "1.1.0") in {(h["kind"], h["version"]) for h in handles}
    finally:
        assert daemon.stop() == 0
    assert "announced det" not in (tmp_path / "d2.log").read_text()
    models = json.loads(shoal("models", "--json", "--config", cfg).stdout)
    assert len(models["manifests"]) == 2


def test_a_daemon_started_during_an_offline_publish_announces_it(node: Provisioned,
                                                                  tmp_path: Path) -> None:
    """`shoal publish` with no daemon running writes the store holding the data
    directory's lock as a publish; a daemon started meanwhile waits for it and then
    announces the version, no restart needed. First the overlap made certain (this test
    holds the lock as the command does and writes the store with the same function),
    then the race as an operator meets it: the daemon started and `shoal publish` run
    at once."""
    from agent._daemon.lock import PUBLISH, DataDirLock, holder
    from agent._storage.keys import load_key
    from agent._storage.paths import DataDir
    from agent._storage.publish import publish
    from agent._storage.store import ChunkStore

    cfg = str(node.config_path)
    data = DataDir(node.data_dir)
    lock = DataDirLock(node.data_dir, "", role=PUBLISH)
    daemon = Daemon(node.config_path, tmp_path / "d.log")
    try:
        deadline = time.monotonic() + 30
        while "waiting for `shoal publish`" not in daemon.log.read_text():
            assert daemon.proc.poll() is None, daemon.log.read_text()
            assert time.monotonic() < deadline, daemon.log.read_text()
            time.sleep(0.1)
        assert not node.control_socket.exists()        # not started: waiting
        publish(ChunkStore(data.store), package(tmp_path / "p1", os.urandom(200_000)),
                "det", "1.0.0", load_key(data.keys, "publisher"))
        lock.release()
        wait_status(node.config_path)
        held = holder(node.data_dir)
        assert held is not None and held.role == "daemon" and held.pid == daemon.proc.pid
        dist = shoal("distribute", "det", "1.0.0", "--json", "--config", cfg)
        assert dist.returncode == 0, dist.stderr
        assert json.loads(dist.stdout)["targets"] == 1
    finally:
        lock.release()
        assert daemon.stop() == 0
    # the race itself: whichever takes the lock first, the running daemon knows 1.1.0
    daemon = Daemon(node.config_path, tmp_path / "d2.log")
    try:
        pub = shoal("publish", str(package(tmp_path / "p2", os.urandom(200_000))),
                    "--model", "det", "--version", "1.1.0", "--config", cfg)
        assert pub.returncode == 0, pub.stderr
        wait_status(node.config_path)
        dist = shoal("distribute", "det", "1.1.0", "--json", "--config", cfg)
        assert dist.returncode == 0, dist.stderr
    finally:
        assert daemon.stop() == 0


def test_unknown_things_are_one_line_and_non_zero(node: Provisioned, tmp_path: Path) -> None:
    cfg = str(node.config_path)
    pkg = package(tmp_path / "pkg", os.urandom(50_000))
    assert shoal("publish", str(pkg), "--model", "det", "--version", "1.0.0",
                 "--config", cfg).returncode == 0
    daemon = Daemon(node.config_path, tmp_path / "d.log")
    try:
        wait_status(node.config_path)
        cases = [
            (["status", "nosuchmodel", "1.0.0"], "no model 'nosuchmodel'"),
            (["status", "det", "9.9.9"], "no version '9.9.9'"),
            (["node", "det", "nosuchnode"], "no node 'nosuchnode'"),
            (["nodes", "nosuchmodel", "1.0.0"], "no model 'nosuchmodel'"),
            (["distribute", "det", "1.0.0", "--priority", "urgent"], "priority must be"),
            (["distribute", "det", "1.0.0", "--scope", "capable:min-gpu-mem-gb=lots"],
             "min-gpu-mem-gb must be a number"),
            (["distribute", "det", "1.0.0", "--scope", "capable:arch=arm64"],
             "capable:arch=aarch64 matches none"),
            (["cancel", "ab" * 32], "no intent"),
        ]
        for args, expected in cases:
            proc = shoal(*args, "--config", cfg)
            assert expected in one_line_error(proc), (args, proc.stderr)
            js = shoal(*args, "--json", "--config", cfg)
            assert js.returncode == 2 and expected in json.loads(js.stdout)["error"]
        # x64 is x86_64, as in the config: this scope matches this machine
        ok = shoal("distribute", "det", "1.0.0", "--scope", "capable:arch=x64", "--config",
                   cfg)
        if os.uname().machine == "x86_64":
            assert ok.returncode == 0, ok.stderr
        # a node that reports nothing about a model: exit 1, one answer
        proc = shoal("node", "other", "n1", "--config", cfg)
        assert proc.returncode == 1 and "reports nothing about other" in proc.stdout
    finally:
        assert daemon.stop() == 0
