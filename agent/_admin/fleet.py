"""Fleet administration on disk: the root key, certificates, provisioning a data dir.

``shoal fleet init`` creates ``keys/root.key`` (keep it offline in a real
fleet); ``shoal fleet admit`` signs a node, publisher or operator key with it;
``shoal fleet revoke`` signs a revocation of a key with it. Either file is handed
to any running daemon with ``shoal fleet announce FILE``, which writes it to the
ledger so that gossip carries it to the whole fleet.
:func:`provision` builds a complete node data directory (keys, certificates,
config file) - what the demo and the multi-process tests use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from agent._errors import ConfigError
from agent._storage.keys import init_keys, load_key
from agent._storage.persist import cert_path, write_cert, write_seed
from protocol import Certificate, MalformedMessage, Revocation, Role, SigningIdentity, decode_value

__all__ = ["fleet_init", "admit", "revoke", "read_trust_file", "provision", "Provisioned"]


def fleet_init(keys_dir: Path) -> SigningIdentity:
    """Create the fleet root key (never overwrites)."""
    root = SigningIdentity.generate()
    write_seed(keys_dir / "root.key", root)
    return root


def _public_key(public_key_hex: str) -> bytes:
    try:
        key = bytes.fromhex(public_key_hex)
    except ValueError:
        raise ConfigError("--key: not hex") from None
    if len(key) != 32:
        raise ConfigError("--key: an Ed25519 public key is 64 hex digits")
    return key


#: ``fleet admit``'s certificate lifetime unless ``--valid-for`` says otherwise.
DEFAULT_VALID_FOR_DAYS = 365
#: ``provision``'s (tests and demos): long enough never to matter.
PROVISION_VALID_FOR_DAYS = 36_500
_DAY_MS = 86_400_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def admit(keys_dir: Path, fleet_id: str, role: str, public_key_hex: str, name: str,
          valid_for_days: float = DEFAULT_VALID_FOR_DAYS) -> Certificate:
    """Sign ``public_key_hex`` for ``role`` with the root key in ``keys_dir``, valid for
    ``valid_for_days`` from now."""
    root = load_key(keys_dir, "root")
    key = _public_key(public_key_hex)
    try:
        r = Role(role)
    except ValueError:
        raise ConfigError(f"--role: one of {', '.join(x.value for x in Role)}") from None
    if key == root.public_key and r is Role.NODE:
        raise ConfigError("--key: the fleet root key is never a node key; generate a "
                          "node key (`shoal keys init`) and admit that")
    if not valid_for_days > 0:
        raise ConfigError("--valid-for: a positive number of days")
    now = _now_ms()
    return Certificate.issue(root, fleet_id, key, r, name, now,
                             now + int(valid_for_days * _DAY_MS))


def revoke(keys_dir: Path, fleet_id: str, public_key_hex: str) -> Revocation:
    """Sign a revocation of every certificate of ``public_key_hex`` issued up to now."""
    root = load_key(keys_dir, "root")
    key = _public_key(public_key_hex)
    if key == root.public_key:
        raise ConfigError("--key: the fleet root cannot revoke itself; start a new fleet")
    return Revocation.issue(root, fleet_id, key, _now_ms())


def read_trust_file(path: Path) -> Certificate | Revocation:
    """A certificate (``fleet admit --out``) or revocation (``fleet revoke --out``) file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_value(Certificate, raw)
    except (MalformedMessage, ValueError):
        pass
    try:
        return decode_value(Revocation, raw)
    except (MalformedMessage, ValueError):
        pass
    raise ConfigError(f"{path} is neither a shoal certificate nor a revocation (files "
                      f"written by `shoal fleet admit --out` / `shoal fleet revoke --out`)")


@dataclass(frozen=True, slots=True)
class Provisioned:
    data_dir: Path
    config_path: Path
    node_id: str
    control_socket: Path


def provision(data_dir: Path, *, root: SigningIdentity, fleet_id: str, name: str,
              operator: bool = False, extra_config: str = "", listen_port: int = 0,
              mdns_interface: str = "127.0.0.1", static_peers: tuple[str, ...] = (),
              formation: str = "", valid_for_days: float = PROVISION_VALID_FOR_DAYS
              ) -> Provisioned:
    """A ready-to-run node data directory: keys, certificates (valid for
    ``valid_for_days``) and ``shoal.toml``."""
    keys = data_dir / "keys"
    if not (keys / "node.key").exists():
        init_keys(keys)
    now = _now_ms()
    until = now + int(valid_for_days * _DAY_MS)
    node = load_key(keys, "node")
    write_cert(cert_path(keys, "node"),
               Certificate.issue(root, fleet_id, node.public_key, Role.NODE, name, now, until))
    pub = load_key(keys, "publisher")
    write_cert(cert_path(keys, "publisher"),
               Certificate.issue(root, fleet_id, pub.public_key, Role.PUBLISHER,
                                 f"{name}-publisher", now, until))
    if operator:
        if not (keys / "operator.key").exists():
            write_seed(keys / "operator.key", SigningIdentity.generate())
        op = load_key(keys, "operator")
        write_cert(cert_path(keys, "operator"),
                   Certificate.issue(root, fleet_id, op.public_key, Role.OPERATOR,
                                     f"{name}-operator", now, until))
    sock = data_dir / "run" / "control.sock"
    peers = ", ".join(f'"{p}"' for p in static_peers)
    text = (f'data_dir = "{data_dir}"\nfleet_id = "{fleet_id}"\n'
            f'fleet_root_key = "{root.public_key.hex()}"\nnode_name = "{name}"\n'
            f'listen_address = "127.0.0.1"\nlisten_port = {listen_port}\n'
            f'control_socket = "{sock}"\nstatic_peers = [{peers}]\n'
            + (f'formation = "{formation}"\n' if formation else '')
            + f'[mdns]\nenabled = {"true" if mdns_interface else "false"}\n'
            f'interfaces = [{f"{chr(34)}{mdns_interface}{chr(34)}" if mdns_interface else ""}]\n'
            f'{extra_config}')
    cfg = data_dir / "shoal.toml"
    cfg.write_text(text)
    return Provisioned(data_dir, cfg, node.key_id, sock)

