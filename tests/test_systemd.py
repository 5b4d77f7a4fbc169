"""``shoal daemon install`` / ``uninstall``: a hardened unit running as user ``shoal``,
refused without a valid config, removable. No test here creates a user or writes to
/etc/systemd/system: the user set-up runs against stand-ins for useradd and systemctl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent._admin import systemd as _systemd
from agent._config import parse_config
from agent._errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
KEY = "ab" * 32

HARDENING = ("User=shoal", "Group=shoal", "NoNewPrivileges=true", "ProtectSystem=strict",
             "ProtectHome=true", "ProtectKernelTunables=true", "ProtectKernelModules=true",
             "ProtectControlGroups=true", "RestrictSUIDSGID=true", "LockPersonality=true",
             "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "UMask=0077",
             "CapabilityBoundingSet=")


def _config(path: Path, data_dir: Path | str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'data_dir = "{data_dir}"\nfleet_id = "f"\nfleet_root_key = "{KEY}"\n'
                    + extra)
    return path


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run([sys.executable, "-m", "agent._cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _directives(unit: str) -> list[str]:
    return [line for line in unit.splitlines() if line and not line.startswith(("#", "["))]


def test_install_writes_a_hardened_unit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = _config(tmp_path / "etc" / "shoal.toml", data)
    units = tmp_path / "units"
    units.mkdir()
    proc = _shoal("daemon", "install", "--config", str(cfg), "--unit-dir", str(units))
    assert proc.returncode == 0, proc.stderr
    unit = (units / "shoal.service").read_text()
    lines = _directives(unit)
    for directive in HARDENING:
        assert directive in lines, (directive, unit)
    assert f"ReadWritePaths={data}" in lines
    exec_start = next(x for x in lines if x.startswith("ExecStart="))
    assert exec_start.endswith(f" daemon --config {cfg}")
    assert not any(x.startswith("MemoryDenyWriteExecute") for x in lines)
    # the config lies under /tmp here, which a private /tmp would hide
    assert "PrivateTmp=true" not in lines and "# PrivateTmp= left out" in unit
    # another --unit-dir: no user created, nothing chowned or created, and it says so
    assert not data.exists()
    assert "no user or ownership changed" in proc.stdout
    assert oct((units / "shoal.service").stat().st_mode & 0o777) == "0o644"


def test_control_socket_outside_the_data_dir_is_writable_too(tmp_path: Path) -> None:
    data, sock = tmp_path / "data", tmp_path / "sock" / "control.sock"
    cfg = _config(tmp_path / "shoal.toml", data, f'control_socket = "{sock}"\n')
    proc = _shoal("daemon", "install", "--config", str(cfg), "--print")
    assert proc.returncode == 0, proc.stderr
    assert f"ReadWritePaths={data} {sock.parent}" in proc.stdout.splitlines()


def test_unit_for_a_system_layout() -> None:
    cfg = parse_config({"data_dir": "/var/lib/shoal", "fleet_id": "f", "fleet_root_key": KEY,
                        "control_socket": "/run/shoal/control.sock"})
    lines = _directives(_systemd.unit_text(cfg, "/etc/shoal/shoal.toml", "/usr/bin/shoal"))
    for directive in (*HARDENING, "PrivateTmp=true", "ReadWritePaths=/var/lib/shoal",
                      "StateDirectory=shoal", "StateDirectoryMode=0700",
                      "RuntimeDirectory=shoal",
                      "ExecStart=/usr/bin/shoal daemon --config /etc/shoal/shoal.toml"):
        assert directive in lines, directive
    assert not any(x.startswith("AmbientCapabilities") for x in lines)
    # a privileged port: that one capability, nothing else
    low = parse_config({"data_dir": "/srv/shoal", "fleet_id": "f", "fleet_root_key": KEY,
                        "listen_port": 443})
    lines = _directives(_systemd.unit_text(low, "/etc/shoal/shoal.toml", "/usr/bin/shoal"))
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in lines
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in lines
    assert not any(x.startswith("StateDirectory") for x in lines)
    # data under /home: home directories read-only rather than hidden (ReadWritePaths wins)
    home = parse_config({"data_dir": "/home/ops/shoal", "fleet_id": "f",
                         "fleet_root_key": KEY})
    lines = _directives(_systemd.unit_text(home, "/etc/shoal/shoal.toml", "/usr/bin/shoal"))
    assert "ProtectHome=read-only" in lines and "ReadWritePaths=/home/ops/shoal" in lines


def _bad_configs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-directory.toml").mkdir()
    (tmp_path / "broken.toml").write_text("data_dir = \n")
    (tmp_path / "no-fleet.toml").write_text('data_dir = "/srv/shoal"\n')
    return {"missing": tmp_path / "nope.toml", "unreadable": tmp_path / "a-directory.toml",
            "not TOML": tmp_path / "broken.toml", "invalid": tmp_path / "no-fleet.toml"}


@pytest.mark.parametrize("kind", ["missing", "unreadable", "not TOML", "invalid"])
@pytest.mark.parametrize("mode", ["--print", "--unit-dir"])
def test_install_refuses_without_a_valid_config(tmp_path: Path, kind: str, mode: str) -> None:
    cfg = _bad_configs(tmp_path)[kind]
    units = tmp_path / "units"
    units.mkdir()
    args = ["--print"] if mode == "--print" else ["--unit-dir", str(units)]
    proc = _shoal("daemon", "install", "--config", str(cfg), *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shoal: error: daemon install needs a readable, valid config")
    assert not (units / "shoal.service").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_install_refuses_an_unreadable_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "shoal.toml", tmp_path / "data")
    cfg.chmod(0)
    proc = _shoal("daemon", "install", "--config", str(cfg), "--print")
    assert proc.returncode == 2 and "cannot read config file" in proc.stderr


def test_uninstall_removes_the_unit_and_keeps_the_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "node.key").write_bytes(b"k" * 32)
    cfg = _config(tmp_path / "shoal.toml", data)
    units = tmp_path / "units"
    units.mkdir()
    assert _shoal("daemon", "install", "--config", str(cfg), "--unit-dir", str(units),
                  "--no-user").returncode == 0
    proc = _shoal("daemon", "uninstall", "--unit-dir", str(units))
    assert proc.returncode == 0, proc.stderr
    assert not (units / "shoal.service").exists()
    assert (data / "keys" / "node.key").read_bytes() == b"k" * 32
    assert "left in place" in proc.stdout and str(data) in proc.stdout
    assert "systemctl disable --now" in proc.stdout     # not run for another --unit-dir
    again = _shoal("daemon", "uninstall", "--unit-dir", str(units))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "shoal.toml", tmp_path / "data",
                  f'control_socket = "{tmp_path / "run" / "control.sock"}"\n')
    units = tmp_path / "units"
    units.mkdir()
    assert _shoal("daemon", "install", "--config", str(cfg), "--unit-dir",
                  str(units)).returncode == 0
    unit = units / "shoal.service"
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120)
    about_ours = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if "shoal.service" in line]
    assert proc.returncode == 0 and not about_ours, proc.stdout + proc.stderr


# ------------------------------------------------------------ user set-up, with stand-ins


class _Tools:
    """Stand-ins for useradd / systemctl and the user database."""

    def __init__(self, user_exists: bool = False, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.user_exists, self.fail = user_exists, fail

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if self.fail:
            return subprocess.CompletedProcess(argv, 1, "", "something went wrong\n")
        if os.path.basename(argv[0]) == "useradd":
            self.user_exists = True
        return subprocess.CompletedProcess(argv, 0, "", "")

    def lookup(self, name: str) -> tuple[int, int] | None:
        assert name == "shoal"
        return (os.getuid(), os.getgid()) if self.user_exists else None


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> _Tools:
    t = _Tools()
    monkeypatch.setattr(_systemd, "_run", t.run)
    monkeypatch.setattr(_systemd, "_lookup_user", t.lookup)
    return t


def test_create_user_makes_the_user_and_hands_it_the_data(tmp_path: Path, tools: _Tools,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(_systemd.os, "geteuid", lambda: 0)
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "node.key").write_bytes(b"k")
    cfg = _config(tmp_path / "shoal.toml", data)
    (tmp_path / "units").mkdir()
    r = _systemd.install(str(cfg), tmp_path / "units", create_user=True)
    assert r.user_created and r.owned == (str(data),)
    [useradd] = tools.calls
    assert os.path.basename(useradd[0]) == "useradd" and useradd[-1] == "shoal"
    assert useradd[1:4] == ["--system", "--no-create-home", "--shell"]
    assert useradd[4].endswith("nologin")
    assert (tmp_path / "units" / "shoal.service").exists()
    # an existing user is left as it is
    tools.calls.clear()
    r = _systemd.install(str(cfg), tmp_path / "units", create_user=True)
    assert not r.user_created and tools.calls == []


def test_another_unit_dir_touches_no_user(tmp_path: Path, tools: _Tools) -> None:
    cfg = _config(tmp_path / "shoal.toml", tmp_path / "data")
    (tmp_path / "units").mkdir()
    r = _systemd.install(str(cfg), tmp_path / "units")
    assert tools.calls == [] and not r.user_created and r.owned == ()
    assert not (tmp_path / "data").exists()


def test_user_setup_needs_root(tmp_path: Path, tools: _Tools,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_systemd.os, "geteuid", lambda: 1000)
    cfg = _config(tmp_path / "shoal.toml", tmp_path / "data")
    (tmp_path / "units").mkdir()
    with pytest.raises(ConfigError, match="needs root: run with sudo, or pass --no-user"):
        _systemd.install(str(cfg), tmp_path / "units", create_user=True)
    assert tools.calls == [] and not (tmp_path / "units" / "shoal.service").exists()


def test_failed_useradd_writes_no_unit(tmp_path: Path, tools: _Tools,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_systemd.os, "geteuid", lambda: 0)
    tools.fail = True
    cfg = _config(tmp_path / "shoal.toml", tmp_path / "data")
    (tmp_path / "units").mkdir()
    with pytest.raises(ConfigError, match="useradd could not create the shoal user: "
                                          "something went wrong"):
        _systemd.install(str(cfg), tmp_path / "units", create_user=True)
    assert not (tmp_path / "units" / "shoal.service").exists()


def test_uninstall_stops_the_service_first(tmp_path: Path, tools: _Tools,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_systemd.shutil, "which", lambda name: f"/usr/bin/{name}")
    unit = tmp_path / "shoal.service"
    unit.write_text("[Service]\nReadWritePaths=/srv/shoal\n")
    r = _systemd.uninstall(tmp_path, systemctl=True)
    assert tools.calls == [["/usr/bin/systemctl", "disable", "--now", "shoal.service"],
                           ["/usr/bin/systemctl", "daemon-reload"]]
    assert r.stopped and r.removed and r.kept == ("/srv/shoal",) and not unit.exists()
    # systemctl fails: nothing is removed
    unit.write_text("[Service]\n")
    tools.calls.clear()
    tools.fail = True
    with pytest.raises(ConfigError, match=r"systemctl disable --now shoal\.service failed"):
        _systemd.uninstall(tmp_path, systemctl=True)
    assert unit.exists()
