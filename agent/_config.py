"""The daemon's configuration: one TOML file -> a frozen :class:`AgentConfig`.

Every key is documented in ``docs/CONFIG.md``. Parsing is strict: an unknown
key, a missing required key or a bad value raises :class:`ConfigError` whose
message starts with the key's dotted name (``swarm.fanout: ...``), so an
operator can find the line. ``[gossip]``, ``[swarm]``, ``[overlay]`` and ``[ledger]`` accept
exactly the fields of :class:`protocol.GossipConfig` / :class:`protocol.SwarmConfig`
/ :class:`protocol.OverlayConfig` / :class:`protocol.LedgerConfig` (typed by their
annotations), except the swarm's rates, which come from ``[bandwidth]``.

Relative paths are taken relative to the directory of the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os.path
import re
import string
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent._daemon.health import HealthSettings
from agent._daemon.probe import ProbeOverrides, overrides_from_mapping
from agent._daemon.transport import TransportSettings
from agent._errors import ConfigError
from protocol import Config, GossipConfig, LedgerConfig, OverlayConfig, SwarmConfig

__all__ = [
    "DEFAULT_PORT",
    "DAEMON_SWARM",
    "AgentConfig",
    "ConfigError",
    "load_config",
    "parse_config",
    "parse_rate",
    "parse_peer",
]

DEFAULT_PORT = 7411

_TOP_KEYS = {"data_dir", "fleet_id", "fleet_root_key", "node_name", "formation",
             "listen_address", "listen_port", "static_peers", "control_socket",
             "migrator_timeout", "migrator_allow_remote", "bandwidth", "gossip", "swarm",
             "overlay", "ledger", "transport", "mdns", "probe", "metrics", "health"}
_REQUIRED = ("data_dir", "fleet_id", "fleet_root_key")
_FLEET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
_SWARM_RATES = ("upload_rate", "download_rate")

#: The daemon's swarm settings where they differ from the protocol's defaults (which the
#: simulator runs): between real hosts a piece's round trip is mostly the two daemons'
#: own processing, which the link estimate (rtt / service, ``protocol/_swarm_links.py``)
#: cannot see: a pipeline of 2 left both daemons waiting on each other, and an upload
#: window of 1 cost a worker-thread hop and a write per 128 KiB piece. Since the writer
#: sends a peer's queued pieces as one run (``Pieces``, up to 32 chunks / 4 MiB:
#: agent/_daemon/writer.py), the floor and the window are 16, the ceiling 32. Not
#: deeper: a request times out after ``request_timeout`` (30 s) however long its queue
#: at the peer, and 16 x 128 KiB take 17 s at 1 Mbit/s (32 would take 34 s)
#: (docs/JOURNAL.md, 2026-12-06). A request overtaken by later pieces is not taken as
#: lost (``lost_after_overtaken = 0``): TCP loses nothing, and the upload window lets a
#: peer serve its queue out of order (first copies first), so it would only duplicate.
DAEMON_SWARM = SwarmConfig(min_requests_per_peer=16, max_requests_per_peer=32,
                           upload_window=16, lost_after_overtaken=0)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    data_dir: str
    fleet_id: str
    fleet_root_key: bytes
    node_name: str = ""
    formation: str = ""
    listen_address: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    static_peers: tuple[tuple[str, int], ...] = ()
    control_socket: str = ""          # "" -> <data_dir>/control.sock
    migrator_timeout: int = 120       # seconds a model's migrator may run
    migrator_allow_remote: bool = False  # may a variant's migrator_address be off this host
    upload_rate: float = 0.0          # bytes/s, 0 = unlimited
    download_rate: float = 0.0
    gossip: GossipConfig = field(default_factory=GossipConfig)
    swarm: SwarmConfig = field(default_factory=lambda: DAEMON_SWARM)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    transport: TransportSettings = field(default_factory=TransportSettings)
    mdns_enabled: bool = True
    mdns_interfaces: tuple[str, ...] = ()   # IPv4 addresses; () = every interface
    probe: ProbeOverrides = field(default_factory=ProbeOverrides)
    metrics_listen: tuple[str, int] | None = None   # [metrics] listen; None = no endpoint
    health: HealthSettings = field(default_factory=HealthSettings)

    def protocol_config(self) -> Config:
        """The node state machine's :class:`protocol.Config` (rates folded into swarm)."""
        swarm = dataclasses.replace(self.swarm, upload_rate=self.upload_rate,
                                    download_rate=self.download_rate)
        return Config(fleet_id=self.fleet_id, gossip=self.gossip, swarm=swarm,
                      overlay=self.overlay, ledger=self.ledger)


def load_config(path: str) -> AgentConfig:
    """Read and parse the TOML file at ``path``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_config(data: Mapping[str, Any] | str, base_dir: str = ".") -> AgentConfig:
    """Parse a TOML document (text or already-loaded mapping)."""
    if isinstance(data, str):
        try:
            data = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}") from None
    _no_unknown(data, _TOP_KEYS, "")
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"{key}: required key is missing")
    out: dict[str, Any] = {}
    out["data_dir"] = _path(data["data_dir"], "data_dir", base_dir)
    fleet_id = _str(data["fleet_id"], "fleet_id")
    if not _FLEET_RE.match(fleet_id):
        raise ConfigError(f"fleet_id: {fleet_id!r} must be 1-128 of A-Z a-z 0-9 . _ - "
                          f"(starting with a letter or digit)")
    out["fleet_id"] = fleet_id
    out["fleet_root_key"] = _hex_key(data["fleet_root_key"], "fleet_root_key")
    for key in ("node_name", "formation"):
        if key in data:
            value = _str(data[key], key, allow_empty=True)
            if value and not _NAME_RE.match(value):
                raise ConfigError(f"{key}: {value!r} must be 1-128 of letters, digits, "
                                  f"space . _ -")
            out[key] = value
    if "listen_address" in data:
        out["listen_address"] = _ip(data["listen_address"], "listen_address")
    if "listen_port" in data:
        out["listen_port"] = _int(data["listen_port"], "listen_port", 0, 65535)
    if "static_peers" in data:
        peers = data["static_peers"]
        if not isinstance(peers, list):
            raise ConfigError("static_peers: expected an array of \"host:port\" strings")
        out["static_peers"] = tuple(parse_peer(p, f"static_peers[{i}]")
                                    for i, p in enumerate(peers))
    out["control_socket"] = (_path(data["control_socket"], "control_socket", base_dir)
                             if "control_socket" in data
                             else os.path.join(out["data_dir"], "control.sock"))
    if "migrator_timeout" in data:
        out["migrator_timeout"] = _int(data["migrator_timeout"], "migrator_timeout", 1, 86400)
    if "migrator_allow_remote" in data:
        if not isinstance(data["migrator_allow_remote"], bool):
            raise ConfigError("migrator_allow_remote: expected true or false")
        out["migrator_allow_remote"] = data["migrator_allow_remote"]
    if "bandwidth" in data:
        bw = _table(data["bandwidth"], "bandwidth")
        _no_unknown(bw, {"upload", "download"}, "bandwidth.")
        if "upload" in bw:
            out["upload_rate"] = parse_rate(bw["upload"], "bandwidth.upload")
        if "download" in bw:
            out["download_rate"] = parse_rate(bw["download"], "bandwidth.download")
    if "gossip" in data:
        out["gossip"] = _dataclass_table(GossipConfig, data["gossip"], "gossip")
    if "swarm" in data:
        out["swarm"] = _dataclass_table(SwarmConfig, data["swarm"], "swarm",
                                        exclude=_SWARM_RATES, base=DAEMON_SWARM)
    if "health" in data:
        out["health"] = _dataclass_table(HealthSettings, data["health"], "health")
    if "overlay" in data:
        table = _table(data["overlay"], "overlay")
        if "degree" in table:   # a daemon always runs the overlay (0 = off is the sim's)
            _int(table["degree"], "overlay.degree", 2, 1024)
        out["overlay"] = _dataclass_table(OverlayConfig, table, "overlay")
    if "ledger" in data:
        out["ledger"] = _dataclass_table(LedgerConfig, data["ledger"], "ledger")
    if "transport" in data:
        out["transport"] = _dataclass_table(TransportSettings, data["transport"],
                                            "transport")
        if out["transport"].max_frame < 64 * 1024:
            raise ConfigError("transport.max_frame: must be at least 65536 bytes")
    if "mdns" in data:
        mdns = _table(data["mdns"], "mdns")
        _no_unknown(mdns, {"enabled", "interfaces"}, "mdns.")
        if "enabled" in mdns:
            if not isinstance(mdns["enabled"], bool):
                raise ConfigError(f"mdns.enabled: expected true or false, "
                                  f"got {mdns['enabled']!r}")
            out["mdns_enabled"] = mdns["enabled"]
        if "interfaces" in mdns:
            ifs = mdns["interfaces"]
            if not isinstance(ifs, list):
                raise ConfigError("mdns.interfaces: expected an array of IPv4 addresses")
            out["mdns_interfaces"] = tuple(_ip(a, f"mdns.interfaces[{i}]", v4_only=True)
                                           for i, a in enumerate(ifs))
    if "probe" in data:
        out["probe"] = overrides_from_mapping(_table(data["probe"], "probe"), "probe")
    if "metrics" in data:
        met = _table(data["metrics"], "metrics")
        _no_unknown(met, {"listen"}, "metrics.")
        if "listen" in met and met["listen"] != "":
            host, port = parse_peer(met["listen"], "metrics.listen")
            out["metrics_listen"] = (_ip(host, "metrics.listen"), port)
    return AgentConfig(**out)


# ---------------------------------------------------------------------------- values

_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*(?:/s)?\s*$", re.IGNORECASE)
_PREFIX = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
           "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_rate(value: Any, key: str = "rate") -> float:
    """A bandwidth: bytes/s as a number, or text like ``"8mbit"``, ``"500kbps"``, ``"2MiB"``.

    ``bit``/``bps`` units are bits per second (SI prefixes k, m, g); ``B``,
    ``KB``/``MB``/``GB`` (SI) and ``KiB``/``MiB``/``GiB`` (binary) are bytes per
    second; a trailing ``/s`` is allowed. ``0`` or ``"unlimited"`` means no cap.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a rate like \"8mbit\" or bytes/s, got {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != value or value == float("inf"):
            raise ConfigError(f"{key}: a rate must be >= 0 bytes/s, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a rate like \"8mbit\", got {value!r}")
    if value.strip().lower() in ("unlimited", "none", "0"):
        return 0.0
    m = _RATE_RE.match(value)
    if not m:
        raise ConfigError(f"{key}: cannot read rate {value!r} (examples: \"8mbit\", "
                          f"\"500kbps\", \"2MiB\", 1000000)")
    number, unit = float(m.group(1)), m.group(2).lower()
    for suffix, per in (("bits", 1 / 8), ("bit", 1 / 8), ("bps", 1 / 8), ("bytes", 1.0),
                        ("byte", 1.0), ("b", 1.0)):
        if unit.endswith(suffix):
            prefix = unit[: -len(suffix)]
            if prefix in _PREFIX:
                return number * _PREFIX[prefix] * per
            break
    raise ConfigError(f"{key}: unknown unit {m.group(2)!r} in {value!r} (use bit, kbit, "
                      f"mbit, gbit, kbps, B, KB, MB, KiB, MiB)")


def parse_peer(value: Any, key: str = "peer") -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` -> (host, port)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range 1-65535")
    allowed = set(string.ascii_letters + string.digits + ".-:_")
    if not set(host) <= allowed:
        raise ConfigError(f"{key}: {host!r} is not a host name or address")
    return host, port


def _no_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key (known: "
                              f"{', '.join(sorted(known))})")


def _table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table ([{key}])")
    return value


def _str(value: Any, key: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ConfigError(f"{key}: expected a {'' if allow_empty else 'non-empty '}string, "
                          f"got {value!r}")
    return value


def _int(value: Any, key: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or \
            (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{key}: expected an integer {rng}, got {value!r}")
    return value


def _path(value: Any, key: str, base_dir: str) -> str:
    text = _str(value, key)
    if "\x00" in text:
        raise ConfigError(f"{key}: a path cannot contain NUL")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(text)))


def _ip(value: Any, key: str, v4_only: bool = False) -> str:
    text = _str(value, key)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not an IP address") from None
    if v4_only and addr.version != 4:
        raise ConfigError(f"{key}: {text!r} is not an IPv4 address (mDNS here is IPv4)")
    return text


def _hex_key(value: Any, key: str) -> bytes:
    text = _str(value, key).strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{key}: not hex") from None
    if len(raw) != 32:
        raise ConfigError(f"{key}: an Ed25519 public key is 32 bytes (64 hex digits), "
                          f"got {len(raw)} bytes")
    return raw


def _dataclass_table(cls: type[Any], value: Any, where: str,
                     exclude: tuple[str, ...] = (), base: Any = None) -> Any:
    """``cls`` from a TOML table: its keys over ``base`` (``cls()`` when None)."""
    table = _table(value, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)
              if f.init and f.name not in exclude}
    for key in table:
        if key in exclude:
            raise ConfigError(f"{where}.{key}: set this in [bandwidth] "
                              f"({'upload' if 'upload' in key else 'download'} = \"8mbit\")")
    _no_unknown(table, set(fields), f"{where}.")
    kwargs: dict[str, Any] = {}
    for key, raw in table.items():
        tp = fields[key]
        name = f"{where}.{key}"
        if tp is bool:
            if not isinstance(raw, bool):
                raise ConfigError(f"{name}: expected true or false, got {raw!r}")
            kwargs[key] = raw
        elif tp is int:
            kwargs[key] = _int(raw, name, 0)
        elif tp is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0 \
                    or raw != raw or raw == float("inf"):
                raise ConfigError(f"{name}: expected a number >= 0, got {raw!r}")
            kwargs[key] = float(raw)
        elif tp is str:
            kwargs[key] = _str(raw, name, allow_empty=True)
        else:  # pragma: no cover - a field type this parser does not know yet
            raise ConfigError(f"{name}: this setting cannot be set from the config file")
    try:
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
