"""CLI subcommands of a node's keys: ``keys init``, ``keys show``, ``keys add-cert``.

A node holds up to three Ed25519 keys — ``node`` (its identity), ``publisher`` and
``operator`` — each admitted by a certificate the fleet root signs offline
(``shoal fleet admit``). ``keys init`` creates the keys a node needs, ``keys show``
prints their public keys ready for ``fleet admit --key``, and ``keys add-cert``
puts a signed certificate where the daemon looks for it.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from agent._admin.fleet import read_trust_file
from agent._cli.location import locate
from agent._errors import ConfigError
from agent._storage.keys import KEY_NAMES, ROLES, key_path, load_key
from agent._storage.keys import init_keys as _init_keys
from agent._storage.persist import cert_path, load_cert, write_cert
from protocol import Certificate

__all__ = ["register"]


def _cert_state(cert: Certificate | None) -> str:
    if cert is None:
        return "no certificate"
    return f"admitted as {cert.role.value} {cert.name!r} in fleet {cert.fleet_id}"


def _cmd_init(args: argparse.Namespace) -> tuple[Any, str]:
    loc = locate(args)
    roles = args.role or list(KEY_NAMES)
    keys = _init_keys(loc.data.keys, roles)
    lines = [f"{k.name:<10} {'created' if k.created else 'kept   '} {k.public_key}"
             for k in keys]
    missing = [k.name for k in keys if load_cert(loc.data.keys, k.name, required=False) is None]
    if missing:
        lines.append("next: have the fleet root admit "
                     + ", ".join(missing)
                     + " (`shoal fleet admit --role ROLE --key HEX ...`), then "
                       "`shoal keys add-cert FILE` here")
    return ({"data_dir": str(loc.data.root), "keys": [dataclasses.asdict(k) for k in keys]},
            "\n".join(lines))


def _cmd_show(args: argparse.Namespace) -> tuple[Any, str]:
    loc = locate(args)
    roles = [args.role] if args.role else [r for r in ROLES
                                           if key_path(loc.data.keys, r).exists()]
    if not roles:
        raise ConfigError(f"no keys in {loc.data.keys}; create them with `shoal keys init`")
    out: list[dict[str, Any]] = []
    for role in roles:
        key = load_key(loc.data.keys, role)
        cert = load_cert(loc.data.keys, role, required=False)
        out.append({"role": role, "key_id": key.key_id, "public_key": key.public_key.hex(),
                    "certificate": None if cert is None else {
                        "name": cert.name, "fleet_id": cert.fleet_id,
                        "role": cert.role.value, "issued_at": cert.issued_at}})
    if args.role:   # just the key, for `fleet admit --key "$(shoal keys show node)"`
        return out[0], str(out[0]["public_key"])
    lines = [f"{o['role']:<10} {o['public_key']}  "
             f"{_cert_state(load_cert(loc.data.keys, str(o['role']), required=False))}"
             for o in out]
    return {"data_dir": str(loc.data.root), "keys": out}, "\n".join(lines)


def _cmd_add_cert(args: argparse.Namespace) -> tuple[Any, str]:
    from pathlib import Path

    loc = locate(args)
    item = read_trust_file(Path(args.file))
    if not isinstance(item, Certificate):
        raise ConfigError(f"{args.file} is a revocation, not a certificate; hand it to the "
                          f"daemon with `shoal fleet announce {args.file}`")
    role = item.role.value
    if not key_path(loc.data.keys, role).exists():
        raise ConfigError(f"{args.file} admits a {role} key, but this node has none in "
                          f"{loc.data.keys} (`shoal keys init --role {role}`)")
    key = load_key(loc.data.keys, role)
    if key.public_key != item.subject_key:
        raise ConfigError(f"{args.file} admits key {item.subject_id}, not this node's "
                          f"{role} key {key.key_id}; was it signed for another node?")
    cfg = loc.config
    if cfg is not None:
        if item.fleet_id != cfg.fleet_id:
            raise ConfigError(f"{args.file} is for fleet {item.fleet_id!r}, this node's "
                              f"config says {cfg.fleet_id!r}")
        try:
            item.verify(cfg.fleet_root_key, cfg.fleet_id)
        except Exception as exc:   # SignatureError / UntrustedKey: one line, not a trace
            raise ConfigError(f"{args.file} is not signed by this fleet's root key: "
                              f"{exc}") from None
    path = cert_path(loc.data.keys, role)
    write_cert(path, item)
    return ({"role": role, "path": str(path), "name": item.name, "fleet_id": item.fleet_id,
             "key_id": item.subject_id},
            f"installed {role} certificate {item.name!r} (fleet {item.fleet_id}) at {path}"
            + ("; restart the daemon to use it" if role != "node" else ""))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keys", help="this node's keys and certificates")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    q = ksub.add_parser("init", parents=[common],
                        help="create this node's keys (the missing ones; never overwrites)")
    q.add_argument("--role", action="append", choices=list(ROLES),
                   help="a key to create; repeat for several (default: node and publisher)")
    q.set_defaults(func=_cmd_init)
    q = ksub.add_parser("show", parents=[common],
                        help="print public keys (with ROLE: just that key, in hex)")
    q.add_argument("role", nargs="?", choices=[*ROLES, "root"],
                   help="node, publisher, operator, or root (on the fleet's admin machine)")
    q.set_defaults(func=_cmd_show)
    q = ksub.add_parser("add-cert", parents=[common],
                        help="install a certificate from `shoal fleet admit --out` here")
    q.add_argument("file")
    q.set_defaults(func=_cmd_add_cert)
