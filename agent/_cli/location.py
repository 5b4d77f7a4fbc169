"""Where a command's node lives: one rule for every ``shoal`` command.

Offline commands (``keys``, ``publish``, ``models``, ...) need the data directory;
online ones (``status``, ``distribute``, ...) need the control socket of the daemon
that owns it. Both are found the same way, first match wins:

1. ``--data-dir DIR``
2. ``--config FILE`` (its ``data_dir`` and ``control_socket``)
3. ``$SHOAL_DATA_DIR``
4. ``$SHOAL_CONFIG``
5. ``/etc/shoal/shoal.toml``, if it exists
6. ``$XDG_DATA_HOME/shoal``, else ``~/.local/share/shoal``

The control socket is ``--socket`` if given, else the socket of the daemon that
holds the data directory's lock (it writes its socket there), else the config's
``control_socket``, else ``<data_dir>/control.sock``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from agent._config import AgentConfig, load_config
from agent._daemon.lock import holder
from agent._storage.paths import DataDir

__all__ = ["DEFAULT_CONFIG", "Location", "config_path", "control_socket", "locate"]

DEFAULT_CONFIG = "/etc/shoal/shoal.toml"
ENV_CONFIG = "SHOAL_CONFIG"
ENV_DATA_DIR = "SHOAL_DATA_DIR"


@dataclass(frozen=True, slots=True)
class Location:
    data: DataDir
    config: AgentConfig | None      # the config that named the data directory, if any
    source: str                     # how it was found, for messages: "--data-dir", ...

    @property
    def control_socket(self) -> str:
        held = holder(self.data.root)
        if held is not None and held.control_socket:
            return held.control_socket
        if self.config is not None:
            return self.config.control_socket
        return str(self.data.root / "control.sock")


def config_path(args: argparse.Namespace) -> str | None:
    """The config file a command names: ``--config``, ``$SHOAL_CONFIG``, or the system
    default when it exists; None when there is none."""
    given = getattr(args, "config", None)
    if given:
        return str(given)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return env
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def _xdg_default() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "shoal"


def locate(args: argparse.Namespace) -> Location:
    """The data directory (and config) a command acts on, by the rule above."""
    if getattr(args, "data_dir", None):
        return Location(DataDir(Path(args.data_dir)), None, "--data-dir")
    if getattr(args, "config", None):
        cfg = load_config(str(args.config))
        return Location(DataDir(Path(cfg.data_dir)), cfg, "--config")
    env_data = os.environ.get(ENV_DATA_DIR)
    if env_data:
        return Location(DataDir(Path(env_data)), None, f"${ENV_DATA_DIR}")
    env_cfg = os.environ.get(ENV_CONFIG)
    if env_cfg:
        cfg = load_config(env_cfg)
        return Location(DataDir(Path(cfg.data_dir)), cfg, f"${ENV_CONFIG}")
    if os.path.exists(DEFAULT_CONFIG):
        cfg = load_config(DEFAULT_CONFIG)
        return Location(DataDir(Path(cfg.data_dir)), cfg, DEFAULT_CONFIG)
    return Location(DataDir(_xdg_default()), None, "the default")


def control_socket(args: argparse.Namespace) -> str:
    """The control socket an online command talks to."""
    if getattr(args, "socket", None):
        return str(args.socket)
    return locate(args).control_socket
