"""The daemon as a systemd service: the unit's text, ``shoal daemon install`` and
``shoal daemon uninstall``.

The unit runs ``shoal daemon --config FILE`` as the system user ``shoal`` (group
``shoal``) in a read-only view of the system: ``ProtectSystem=strict`` with only
the config's ``data_dir`` (and the control socket's directory, when it lies
outside) writable, a private ``/tmp``, no home directories, no new privileges, no
capabilities (``CAP_NET_BIND_SERVICE`` alone when a port below 1024 is
configured), and sockets limited to ``AF_UNIX``, ``AF_INET``, ``AF_INET6`` and
``AF_NETLINK`` (the interface list, ``getifaddrs``, that mDNS discovery and the
hardware probe read, is a netlink query). Left out, on purpose:

* ``MemoryDenyWriteExecute``: a model's migrator is a child of the daemon and
  inherits the filter, and model code (onnxruntime, PyTorch, any JIT) and
  libffi closures (ctypes, cffi callbacks) need writable-executable pages.
* ``PrivateDevices`` and ``ProtectClock`` (which implies a device allow-list on
  systemd < 253): the hardware probe opens ``/dev/nvidia*`` through NVML.

:func:`install` refuses without a readable, valid config (the unit needs its
``data_dir``). It creates the ``shoal`` user when missing (``useradd --system
--no-create-home --shell /usr/sbin/nologin``) and hands the data directory to it
(``chown -R``) only when the unit goes to the default directory
``/etc/systemd/system`` or ``create_user=True`` (``--create-user``);
``create_user=False`` (``--no-user``) never does. Writing elsewhere (``--unit-dir``:
staging an image, tests) touches no user and no ownership, and says what the
target needs. :func:`uninstall` removes the unit file (after ``systemctl disable
--now shoal`` where systemd runs and the unit is in the default directory) and
leaves the data directory, keys and user alone.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent._config import AgentConfig, load_config
from agent._errors import ConfigError
from agent._storage.persist import atomic_write

__all__ = ["DEFAULT_UNIT_DIR", "UNIT_NAME", "SERVICE_USER", "Installed", "Uninstalled",
           "service_exe", "unit_text", "unit_for", "install", "uninstall", "ensure_user"]

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
UNIT_NAME = "shoal.service"
SERVICE_USER = "shoal"
_HOMES = ("/home", "/root", "/run/user")
_TMPS = ("/tmp", "/var/tmp")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a system tool (useradd, systemctl); tests replace this."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _lookup_user(name: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``name``, or None; tests replace this."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _q(text: str) -> str:
    """A path as one word of a unit file (specifiers and variables escaped)."""
    if any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{text!r}: a path in a systemd unit cannot hold a line break or NUL")
    text = text.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _first_word(command: str) -> str:
    try:
        words = shlex.split(command.replace("%%", "%").replace("$$", "$"))
    except ValueError:
        words = command.split()
    return words[0] if words else command


def service_exe() -> str:
    """How the unit starts ``shoal``: the script beside this interpreter, else on
    ``$PATH``, else this interpreter with ``-m agent._cli``."""
    beside = Path(sys.executable).parent / "shoal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("shoal")
    if found:
        return os.path.abspath(found)
    return f"{_q(os.path.abspath(sys.executable))} -m agent._cli"


def _socket_dir(cfg: AgentConfig) -> str | None:
    """The control socket's directory when it lies outside ``data_dir``."""
    parent = os.path.dirname(os.path.abspath(cfg.control_socket))
    return None if _under(parent, (cfg.data_dir,)) else parent


def unit_text(cfg: AgentConfig, config_path: str, exe: str) -> str:
    """The unit for ``cfg`` (loaded from ``config_path``), started with ``exe``."""
    config_path = os.path.abspath(config_path)
    data = cfg.data_dir
    writable = [data]
    extra: list[str] = []
    if data.startswith("/var/lib/") and len(data) > len("/var/lib/"):
        extra += [f"StateDirectory={_q(data.removeprefix('/var/lib/'))}",
                  "StateDirectoryMode=0700"]
    sock_dir = _socket_dir(cfg)
    if sock_dir is not None and sock_dir.startswith("/run/") and not _under(sock_dir,
                                                                             _HOMES):
        extra += [f"RuntimeDirectory={_q(sock_dir.removeprefix('/run/'))}",
                  "RuntimeDirectoryMode=0700"]
    elif sock_dir is not None:
        writable.append(sock_dir)
    needed = [*writable, config_path, _first_word(exe)]
    home = "read-only" if any(_under(p, _HOMES) for p in needed) else "true"
    ports = [cfg.listen_port] + ([cfg.metrics_listen[1]] if cfg.metrics_listen else [])
    caps = "CAP_NET_BIND_SERVICE" if any(0 < p < 1024 for p in ports) else ""
    lines = [
        "# written by `shoal daemon install`; remove with `shoal daemon uninstall`",
        "[Unit]",
        "Description=shoal model distribution daemon",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exe} daemon --config {_q(config_path)}",
        f"User={SERVICE_USER}",
        f"Group={SERVICE_USER}",
        "Restart=on-failure",
        "RestartSec=2",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=20",
        "UMask=0077",
        *extra,
        "# a read-only system; only the data (and control socket) directories are writable",
        "ProtectSystem=strict",
        "ReadWritePaths=" + " ".join(_q(p) for p in writable),
        f"ProtectHome={home}",
    ]
    if any(_under(p, _TMPS) for p in needed):
        lines.append("# PrivateTmp= left out: a path the daemon needs lies under /tmp")
    else:
        lines.append("PrivateTmp=true")
    lines += [
        "NoNewPrivileges=true",
        f"CapabilityBoundingSet={caps}",
        *([f"AmbientCapabilities={caps}"] if caps else []),
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
        "ProtectControlGroups=true",
        "RestrictSUIDSGID=true",
        "RestrictRealtime=true",
        "RestrictNamespaces=true",
        "LockPersonality=true",
        "SystemCallArchitectures=native",
        "# AF_NETLINK: interface addresses (getifaddrs) for mDNS and the hardware probe",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "# no MemoryDenyWriteExecute=: migrators (model code, JITs, libffi) inherit it",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    if home == "read-only":
        lines.insert(lines.index("ProtectHome=read-only"),
                     "# a path the daemon needs lies under /home, /root or /run/user")
    return "\n".join(lines) + "\n"


def _load(config_path: str) -> AgentConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise ConfigError(f"daemon install needs a readable, valid config: {exc}") from None


def unit_for(config_path: str, exe: str | None = None) -> str:
    """The unit for the config at ``config_path`` (refused unless it loads)."""
    return unit_text(_load(config_path), config_path, exe or service_exe())


def _nologin() -> str:
    for path in ("/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/nologin"):
        if os.path.exists(path):
            return path
    return "/usr/sbin/nologin"


def ensure_user(name: str = SERVICE_USER) -> tuple[int, int, bool]:
    """``(uid, gid, created)`` of the system user ``name``, created when missing."""
    found = _lookup_user(name)
    if found is not None:
        return (*found, False)
    try:
        grp.getgrnam(name)
        group = ["--gid", name]          # the group exists already: join it
    except KeyError:
        group = ["--user-group"]
    argv = [shutil.which("useradd") or "/usr/sbin/useradd", "--system", "--no-create-home",
            "--shell", _nologin(), *group, name]
    try:
        proc = _run(argv)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run useradd to create the {name} user: {exc}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ConfigError(f"useradd could not create the {name} user: {why} (or pass "
                          f"--no-user and create it yourself)")
    found = _lookup_user(name)
    if found is None:
        raise ConfigError(f"useradd ran, yet there is no {name} user")
    return (*found, True)


def _own(path: str, uid: int, gid: int) -> None:
    """``mkdir -p`` (0700) and ``chown -R`` without following symlinks."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chown(path, uid, gid, follow_symlinks=False)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


def _readable_by(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    return bool((st.st_uid == uid and st.st_mode & 0o400)
                or (st.st_gid == gid and st.st_mode & 0o040) or st.st_mode & 0o004)


@dataclass(frozen=True, slots=True)
class Installed:
    unit_path: str
    unit: str
    user: str
    user_created: bool
    owned: tuple[str, ...]          # directories chowned -R to the user
    notes: tuple[str, ...] = field(default=())


def install(config_path: str, unit_dir: Path = DEFAULT_UNIT_DIR, *,
            create_user: bool | None = None, exe: str | None = None) -> Installed:
    """Write ``shoal.service`` for the config at ``config_path`` into ``unit_dir``.

    ``create_user=None`` sets up the ``shoal`` user and the data directory's owner
    only when ``unit_dir`` is :data:`DEFAULT_UNIT_DIR`.
    """
    cfg = _load(config_path)
    unit = unit_text(cfg, config_path, exe or service_exe())
    manage = (Path(os.path.abspath(unit_dir)) == DEFAULT_UNIT_DIR if create_user is None
              else create_user)
    dirs = [cfg.data_dir] + [d for d in (_socket_dir(cfg),)
                             if d is not None and not d.startswith("/run/")]
    notes: list[str] = []
    created = False
    owned: tuple[str, ...] = ()
    if manage:
        if os.geteuid() != 0:
            raise ConfigError(f"creating the {SERVICE_USER} user and handing it "
                              f"{cfg.data_dir} needs root: run with sudo, or pass --no-user")
        uid, gid, created = ensure_user()
        try:
            for d in dirs:
                _own(d, uid, gid)
        except OSError as exc:
            raise ConfigError(f"cannot hand {exc.filename or cfg.data_dir} to the "
                              f"{SERVICE_USER} user: {exc.strerror or exc}") from None
        owned = tuple(dirs)
        if not _readable_by(os.path.abspath(config_path), uid, gid):
            notes.append(f"the {SERVICE_USER} user cannot read {config_path}: "
                         f"chgrp {SERVICE_USER} {config_path} && chmod g+r {config_path}")
    else:
        notes.append(f"no user or ownership changed: the unit runs as {SERVICE_USER}, "
                     f"so the target needs `useradd --system --no-create-home --shell "
                     f"{_nologin()} {SERVICE_USER}` and `chown -R {SERVICE_USER}:"
                     f"{SERVICE_USER} {' '.join(dirs)}`")
    path = Path(unit_dir) / UNIT_NAME
    try:
        atomic_write(path, unit.encode(), 0o644)
        os.chmod(path, 0o644)
    except (OSError, ConfigError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot write {path}: {why} (run as root, or use --print)") \
            from None
    return Installed(str(path), unit, SERVICE_USER, created, owned, tuple(notes))


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")      # sd_booted()


@dataclass(frozen=True, slots=True)
class Uninstalled:
    unit_path: str
    removed: bool
    stopped: bool                    # ran `systemctl disable --now`
    kept: tuple[str, ...]            # data directories named in the unit, left in place
    notes: tuple[str, ...] = field(default=())


def _writable_paths(unit: str) -> tuple[str, ...]:
    for line in unit.splitlines():
        if line.startswith("ReadWritePaths="):
            return tuple(w.strip('"') for w in line.removeprefix("ReadWritePaths=").split())
    return ()


def uninstall(unit_dir: Path = DEFAULT_UNIT_DIR, *, systemctl: bool | None = None
              ) -> Uninstalled:
    """Remove ``shoal.service`` from ``unit_dir``; data, keys and the user stay.

    ``systemctl=None`` stops and disables the service first when the unit is in
    :data:`DEFAULT_UNIT_DIR` and systemd runs here.
    """
    path = Path(unit_dir) / UNIT_NAME
    try:
        unit = path.read_text()
    except FileNotFoundError:
        return Uninstalled(str(path), False, False, (),
                           (f"no unit at {path}: nothing to remove",))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    notes: list[str] = []
    tool = shutil.which("systemctl")
    use = (systemctl if systemctl is not None else
           Path(os.path.abspath(unit_dir)) == DEFAULT_UNIT_DIR and _systemd_running())
    stopped = False
    if use:
        if tool is None:
            raise ConfigError("systemctl is not installed: pass --no-systemctl, after "
                              "stopping the daemon yourself")
        proc = _run([tool, "disable", "--now", UNIT_NAME])
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise ConfigError(f"systemctl disable --now {UNIT_NAME} failed: {why}; nothing "
                              f"removed (stop it yourself, then pass --no-systemctl)")
        stopped = True
    else:
        notes.append(f"if the service is enabled, run `systemctl disable --now "
                     f"{UNIT_NAME}` (the file is gone, the running daemon is not)")
    try:
        path.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot remove {path}: {exc.strerror or exc} (run as root)") \
            from None
    if stopped and tool is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run([tool, "daemon-reload"])
    return Uninstalled(str(path), True, stopped, _writable_paths(unit), tuple(notes))
