"""The daemon's TOML config (agent/_config.py): every key, and refusals naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent._config import (
    DAEMON_SWARM,
    AgentConfig,
    load_config,
    parse_config,
    parse_peer,
    parse_rate,
)
from agent._errors import ConfigError
from protocol._capabilities import GpuInfo
from protocol._config import GossipConfig, OverlayConfig, SwarmConfig

ROOT = "ab" * 32
MINIMAL = f'data_dir = "/var/lib/shoal"\nfleet_id = "acme"\nfleet_root_key = "{ROOT}"\n'

FULL = f"""
data_dir = "state"
fleet_id = "acme-fleet.1"
fleet_root_key = "{ROOT}"
node_name = "truck 7"
formation = "alpha"
listen_address = "10.0.0.5"
listen_port = 7500
static_peers = ["10.0.0.6:7411", "relay.example:7411", "[fd00::1]:7412"]
control_socket = "/run/shoal/control.sock"
migrator_timeout = 300
migrator_allow_remote = true

[bandwidth]
upload = "8mbit"
download = "2MiB"

[gossip]
interval = 0.5
fanout = 4
jitter = 0.2
max_delta_bytes = 65536
suspect_after = 5
unreachable_after = 20.0
min_suspecting_peers = 3
fleet_progress_rate = 20

[swarm]
max_requests_per_peer = 4
max_requests_total = 32
upload_slots = 6
endgame_chunks = 4
request_timeout = 15.0

[transport]
handshake_timeout = 5.0
idle_timeout = 60
connect_timeout = 3.0
max_connections = 16

[mdns]
enabled = false
interfaces = ["192.168.1.10"]

[probe]
cpu_arch = "arm64"
cpu_cores = 6
ram_mb = 8192
storage_free_mb = 20000
execution_providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                       "CPUExecutionProvider"]

[[probe.gpus]]
name = "Orin"
total_memory_mb = 16384
free_memory_mb = 12000
driver = "36.2"
compute_capability = "8.7"
"""


def test_minimal_config_uses_documented_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg == AgentConfig(data_dir="/var/lib/shoal", fleet_id="acme",
                              fleet_root_key=bytes.fromhex(ROOT),
                              control_socket="/var/lib/shoal/control.sock")
    assert cfg.listen_port == 7411 and cfg.mdns_enabled and cfg.listen_address == "0.0.0.0"
    assert cfg.migrator_allow_remote is False
    assert cfg.protocol_config().fleet_id == "acme"


def test_every_key_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text(FULL)
    cfg = load_config(str(path))
    assert cfg.data_dir == str(tmp_path / "state")  # relative to the config file
    assert cfg.fleet_id == "acme-fleet.1" and cfg.fleet_root_key == bytes.fromhex(ROOT)
    assert cfg.node_name == "truck 7" and cfg.formation == "alpha"
    assert (cfg.listen_address, cfg.listen_port) == ("10.0.0.5", 7500)
    assert cfg.static_peers == (("10.0.0.6", 7411), ("relay.example", 7411),
                                ("fd00::1", 7412))
    assert cfg.control_socket == "/run/shoal/control.sock" and cfg.migrator_timeout == 300
    assert cfg.migrator_allow_remote is True
    assert cfg.upload_rate == 1_000_000.0 and cfg.download_rate == 2 * 1024 * 1024
    assert cfg.gossip == dataclasses.replace(
        GossipConfig(), interval=0.5, fanout=4, jitter=0.2, max_delta_bytes=65536,
        suspect_after=5.0, unreachable_after=20.0, min_suspecting_peers=3,
        fleet_progress_rate=20.0)
    assert cfg.swarm == dataclasses.replace(
        DAEMON_SWARM, max_requests_per_peer=4, max_requests_total=32,
        upload_slots=6, endgame_chunks=4, request_timeout=15.0)
    assert cfg.transport.handshake_timeout == 5.0 and cfg.transport.idle_timeout == 60.0
    assert cfg.transport.connect_timeout == 3.0 and cfg.transport.max_connections == 16
    assert cfg.mdns_enabled is False and cfg.mdns_interfaces == ("192.168.1.10",)
    assert cfg.probe.cpu_arch == "arm64" and cfg.probe.cpu_cores == 6
    assert cfg.probe.ram_mb == 8192 and cfg.probe.storage_free_mb == 20000
    assert cfg.probe.gpus == (GpuInfo("Orin", 16384, 12000, "36.2", "8.7"),)
    assert cfg.probe.execution_providers is not None
    assert cfg.probe.execution_providers[0] == "TensorrtExecutionProvider"
    proto = cfg.protocol_config()
    assert proto.swarm.upload_rate == 1_000_000.0
    assert proto.swarm.download_rate == 2 * 1024 * 1024
    assert proto.gossip == cfg.gossip


def test_every_gossip_and_swarm_field_is_settable() -> None:
    # every field of the protocol configs is accepted, later ones included
    for section, cls in (("gossip", GossipConfig), ("swarm", SwarmConfig)):
        for f in dataclasses.fields(cls):
            if f.name in ("upload_rate", "download_rate"):
                continue
            value: object = 3 if isinstance(f.default, int) else 2.5
            text = str(value)
            if isinstance(f.default, bool):
                value = not f.default
                text = str(value).lower()
            cfg = parse_config(MINIMAL + f"[{section}]\n{f.name} = {text}\n")
            assert getattr(getattr(cfg, section), f.name) == value


@pytest.mark.parametrize(("text", "rate"), [
    ("8mbit", 1_000_000.0), ("500kbit", 62_500.0), ("1gbit", 125_000_000.0),
    ("500kbps", 62_500.0), ("10MB", 10_000_000.0), ("2MiB/s", 2 * 1024 * 1024),
    ("512 KiB", 512 * 1024), ("100B", 100.0), ("1.5mbit", 187_500.0),
    ("unlimited", 0.0), ("0", 0.0), (1_000_000, 1_000_000.0), (2.5, 2.5),
])
def test_rates(text: str | int, rate: float) -> None:
    assert parse_rate(text) == rate


def test_peers() -> None:
    assert parse_peer("host.example:1") == ("host.example", 1)
    assert parse_peer("[::1]:7411") == ("::1", 7411)
    for bad in ("nohost", ":7411", "h:0", "h:70000", "h:x", "a b:1", 7411):
        with pytest.raises(ConfigError, match="peer"):
            parse_peer(bad)


BAD = [
    ("colour = 1\n", "colour: unknown key"),
    ("[gossip]\nfanout = -1\n", "gossip.fanout: expected an integer"),
    ("[gossip]\nfanout = 2.5\n", "gossip.fanout: expected an integer"),
    ("[gossip]\ninterval = \"fast\"\n", "gossip.interval: expected a number"),
    ("[gossip]\ninterval = true\n", "gossip.interval: expected a number"),
    ("[gossip]\nperiod = 1\n", "gossip.period: unknown key"),
    ("[swarm]\nupload_slots = \"8\"\n", "swarm.upload_slots: expected an integer"),
    ("[swarm]\nupload_rate = 10\n", "swarm.upload_rate: set this in [bandwidth]"),
    ("[swarm]\nturbo = true\n", "swarm.turbo: unknown key"),
    ("[bandwidth]\nupload = \"8 parsecs\"\n", "bandwidth.upload: unknown unit"),
    ("[bandwidth]\ndownload = -5\n", "bandwidth.download: a rate must be >= 0"),
    ("[bandwidth]\nupload = \"fast\"\n", "bandwidth.upload: cannot read rate"),
    ("[bandwidth]\nsideways = 1\n", "bandwidth.sideways: unknown key"),
    ("[transport]\nmax_connections = 0.5\n", "transport.max_connections: expected an int"),
    ("[transport]\nmax_frame = 10\n", "transport.max_frame: must be at least"),
    ("[transport]\nretries = 1\n", "transport.retries: unknown key"),
    ("[mdns]\nenabled = \"yes\"\n", "mdns.enabled: expected true or false"),
    ("[mdns]\ninterfaces = [\"eth0\"]\n", "mdns.interfaces[0]: 'eth0' is not an IP"),
    ("[mdns]\ninterfaces = [\"::1\"]\n", "mdns.interfaces[0]: '::1' is not an IPv4"),
    ("[mdns]\ninterface = \"x\"\n", "mdns.interface: unknown key"),
    ("[probe]\ncpu_cores = 0\n", "probe.cpu_cores: expected an integer >= 1"),
    ("[probe]\nflops = 1\n", "probe.flops: unknown key"),
    ("listen_port = 70000\n", "listen_port: expected an integer 0..65535"),
    ("listen_address = \"localhost\"\n", "listen_address: 'localhost' is not an IP"),
    ("static_peers = \"a:1\"\n", "static_peers: expected an array"),
    ("static_peers = [\"a:1\", \"b\"]\n", "static_peers[1]: expected \"host:port\""),
    ("node_name = \"bad/name\"\n", "node_name: 'bad/name' must be"),
    ("migrator_timeout = 0\n", "migrator_timeout: expected an integer 1..86400"),
    ("migrator_allow_remote = 1\n", "migrator_allow_remote: expected true or false"),
    ("formation = 3\n", "formation: expected a string"),
    ("gossip = 3\n", "gossip: expected a table"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_values_and_unknown_keys_are_refused_naming_the_key(extra: str,
                                                                message: str) -> None:
    # top-level keys must come before the first table in TOML
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ('fleet_id = "a"\nfleet_root_key = "' + ROOT + '"\n', "data_dir: required"),
    ('data_dir = "/d"\nfleet_root_key = "' + ROOT + '"\n', "fleet_id: required"),
    ('data_dir = "/d"\nfleet_id = "a"\n', "fleet_root_key: required"),
    ('data_dir = "/d"\nfleet_id = "a b"\nfleet_root_key = "' + ROOT + '"\n',
     "fleet_id: 'a b' must be"),
    ('data_dir = "/d"\nfleet_id = "a"\nfleet_root_key = "abcd"\n',
     "fleet_root_key: an Ed25519 public key is 32 bytes"),
    ('data_dir = "/d"\nfleet_id = "a"\nfleet_root_key = "zz"\n', "fleet_root_key: not hex"),
    ('data_dir = ""\nfleet_id = "a"\nfleet_root_key = "' + ROOT + '"\n',
     "data_dir: expected a non-empty string"),
    ("data_dir = [\n", "not valid TOML"),
])
def test_required_keys_and_identity_values(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        parse_config(text)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("data_dir = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(str(broken))


def test_docs_mention_every_key() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "CONFIG.md").read_text()
    keys = ["data_dir", "migrator_timeout", "migrator_allow_remote", "fleet_id",
            "fleet_root_key", "node_name", "formation",
            "listen_address", "listen_port", "static_peers", "control_socket",
            "[bandwidth]", "upload", "download", "[gossip]", "[swarm]", "[overlay]",
            "[transport]",
            "[mdns]", "enabled", "interfaces", "[probe]", "[[probe.gpus]]",
            "[metrics]", "listen"]
    keys += [f.name for f in dataclasses.fields(GossipConfig)]
    keys += [f.name for f in dataclasses.fields(OverlayConfig)]
    keys += [f.name for f in dataclasses.fields(SwarmConfig)
             if f.name not in ("upload_rate", "download_rate")]
    keys += ["handshake_timeout", "idle_timeout", "connect_timeout", "max_frame",
             "max_connections", "read_size", "cpu_arch", "cpu_cores", "ram_mb",
             "storage_free_mb", "execution_providers", "total_memory_mb",
             "free_memory_mb", "compute_capability"]
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/CONFIG.md does not document {missing}"


def test_daemon_swarm_defaults() -> None:
    """The daemon runs the swarm engine's defaults except a deeper request pipeline and
    a wider upload window (``DAEMON_SWARM``: between real daemons a piece's round trip
    is mostly their own processing; a piece stalled on its own connection still leaves
    the window, see test_swarm_window.py and the partition test in test_netns.py); a
    ``[swarm]`` table changes only what it names."""
    assert parse_config(MINIMAL).swarm == DAEMON_SWARM
    assert dataclasses.replace(SwarmConfig(), min_requests_per_peer=16,
                               max_requests_per_peer=32, upload_window=16,
                               lost_after_overtaken=0) == DAEMON_SWARM
    assert SwarmConfig().upload_window == 1     # the protocol's (the simulator's) own
    assert parse_config(MINIMAL + "[swarm]\nlaggard_patience = 1.0\n").swarm == \
        dataclasses.replace(DAEMON_SWARM, laggard_patience=1.0)
    assert parse_config(MINIMAL + "[swarm]\nupload_window = 0\n").swarm == \
        dataclasses.replace(DAEMON_SWARM, upload_window=0)
    assert parse_config(MINIMAL + "[swarm]\nmin_requests_per_peer = 2\n").swarm.\
        min_requests_per_peer == 2


def test_overlay_settings_are_read_and_checked() -> None:
    assert parse_config(MINIMAL).overlay == OverlayConfig()
    cfg = parse_config(MINIMAL + "[overlay]\ndegree = 12\nrotate_interval = 0\n")
    assert cfg.overlay == dataclasses.replace(OverlayConfig(), degree=12, rotate_interval=0.0)
    assert cfg.protocol_config().overlay == cfg.overlay
    for bad, where in (("degree = 1", "overlay.degree"), ("degree = 0", "overlay.degree"),
                       ("degree = \"8\"", "overlay.degree"), ("slack = -1", "overlay.slack"),
                       ("hints = 40", "hints"), ("known_max = 4", "known_max"),
                       ("fanout = 3", "overlay.fanout")):
        with pytest.raises(ConfigError, match=where):
            parse_config(MINIMAL + f"[overlay]\n{bad}\n")
