"""CLI subcommands of the daemon: ``daemon``, ``fleet``, ``peers``, ``status``,
``distribute``, ``rollback``, ``cancel``. The client ones are thin: one request
over the control socket (``--socket``, else the config's ``control_socket``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from protocol._codec import encode_value
from protocol._intents import Scope
from protocol._types import TransferPriority

from ._config import load_config
from ._control import ControlClient, ConvergenceReport
from ._errors import ConfigError
from ._fleet_admin import admit, fleet_init, systemd_unit
from ._persist import write_cert

__all__ = ["register"]

DEFAULT_CONFIG = "/etc/shoal/shoal.toml"


def _config_path(args: argparse.Namespace) -> str:
    return str(getattr(args, "config", None) or os.environ.get("SHOAL_CONFIG")
               or DEFAULT_CONFIG)


def _socket(args: argparse.Namespace) -> str:
    if getattr(args, "socket", None):
        return str(args.socket)
    return load_config(_config_path(args)).control_socket


def _keys_dir(args: argparse.Namespace) -> Path:
    from ._paths import default_data_dir

    return Path(getattr(args, "data_dir", None) or default_data_dir()) / "keys"


# ---------------------------------------------------------------------- daemon


def _cmd_daemon(args: argparse.Namespace) -> tuple[Any, str]:
    from ._runtime import NodeRuntime

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(_config_path(args))
    runtime = NodeRuntime(cfg)
    trio.run(lambda: runtime.run(handle_signals=True))
    return {"stopped": runtime.node_id}, ""


def _cmd_daemon_install(args: argparse.Namespace) -> tuple[Any, str]:
    exe = shutil.which("shoal") or f"{sys.executable} -m agent._cli"
    unit = systemd_unit(exe, os.path.abspath(_config_path(args)))
    if args.print:
        return {"unit": unit}, unit.rstrip()
    path = Path(args.unit_dir) / "shoal.service"
    try:
        path.write_text(unit)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc} (run as root, or "
                          f"use --print)") from None
    return {"unit_path": str(path)}, (f"wrote {path}; enable it with `systemctl daemon-reload "
                                      f"&& systemctl enable --now shoal`")


# ---------------------------------------------------------------------- fleet


def _cmd_fleet_init(args: argparse.Namespace) -> tuple[Any, str]:
    root = fleet_init(_keys_dir(args))
    return ({"root_public_key": root.public_key.hex(), "root_key_id": root.key_id},
            f"created fleet root key {root.key_id}\nfleet_root_key = "
            f"\"{root.public_key.hex()}\"   # put this in every node's shoal.toml")


def _cmd_fleet_admit(args: argparse.Namespace) -> tuple[Any, str]:
    cert = admit(_keys_dir(args), args.fleet, args.role, args.key, args.name)
    raw = encode_value(cert)
    if args.out:
        write_cert(Path(args.out), cert)
    obj = {"subject_id": cert.subject_id, "role": cert.role.value, "name": cert.name,
           "fleet_id": cert.fleet_id, "certificate_hex": raw.hex(), "written_to": args.out}
    text = (f"admitted {cert.subject_id} as {cert.role.value} {cert.name!r} in fleet "
            f"{cert.fleet_id}" + (f"; wrote {args.out}" if args.out else f"\n{raw.hex()}"))
    return obj, text


# ---------------------------------------------------------------------- client commands


def _client(args: argparse.Namespace,
            fn: Callable[[ControlClient], Awaitable[Any]]) -> Any:
    path = _socket(args)

    async def go() -> Any:
        async with ControlClient(path) as c:
            return await fn(c)
    return trio.run(go)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


def _cmd_peers(args: argparse.Namespace) -> tuple[Any, str]:
    r = _client(args, lambda c: c.peers())
    lines = [f"{p.node_id}  {p.name:<16} {p.address:<22} "
             f"{'out' if p.initiated_by_us else 'in '}  {p.connected_for:7.1f} s  "
             f"sent {p.bytes_sent}  recv {p.bytes_received}" for p in r.peers]
    return _plain(r), "\n".join(lines) or "no peers connected"


def _report_text(r: ConvergenceReport) -> str:
    lines = [f"{r.model_id} {r.target_version}: {r.converged}/{r.total_platforms} converged, "
             f"{r.in_progress} in progress, {r.pending} pending, {r.failed} failed"]
    lines += [f"  blocker {b.node_id}: {b.reason} {b.details}" for b in r.blockers]
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> tuple[Any, str]:
    if args.model:
        if not args.version:
            raise ConfigError("status MODEL VERSION: give the version too")
        rep = _client(args, lambda c: c.convergence_status(args.model, args.version))
        return _plain(rep), _report_text(rep)
    r = _client(args, lambda c: c.status())
    lines = [f"node {r.node_id} ({r.name}) fleet {r.fleet_id} port {r.listen_port}, "
             f"{len(r.peers)} peers"]
    if r.record is not None:
        for m in r.record.models:
            lines.append(f"  {m.model_id} {m.version or '-'} [{m.variant_id or '-'}] "
                         f"{m.status.value} {m.bytes_done}/{m.bytes_total} B"
                         + (f" blocker {m.blocker.value}: {m.blocker_detail}"
                            if m.blocker else ""))
    obj = _plain(r)
    obj["statistics"] = json.loads(r.statistics_json)
    del obj["statistics_json"]
    return obj, "\n".join(lines)


def _scope(text: str) -> Scope:
    if text == "all":
        return Scope()
    kind, _, value = text.partition("=")
    if kind == "formation" and value:
        return Scope.of_formation(value)
    if kind == "nodes" and value:
        return Scope.of_nodes(*[v for v in value.split(",") if v])
    raise ConfigError(f"--scope: expected all, formation=NAME or nodes=a,b; got {text!r}")


def _cmd_distribute(args: argparse.Namespace) -> tuple[Any, str]:
    scope = _scope(args.scope)
    prio = TransferPriority.parse(args.priority)

    async def go(c: ControlClient) -> Any:
        if args.variant:
            return await c.distribute_model_variant(args.model, args.version, args.variant,
                                                    scope, prio)
        if args.delta_from:
            return await c.distribute_model_delta(args.model, args.version, args.delta_from,
                                                  scope, prio)
        return await c.distribute_model(args.model, args.version, scope, prio)
    r = _client(args, go)
    return _plain(r), f"intent {r.intent_id}: distribute {r.model_id} {r.version}"


def _cmd_rollback(args: argparse.Namespace) -> tuple[Any, str]:
    r = _client(args, lambda c: c.rollback(args.model, args.version, _scope(args.scope)))
    return _plain(r), f"intent {r.intent_id}: roll {r.model_id} back to {r.version}"


def _cmd_cancel(args: argparse.Namespace) -> tuple[Any, str]:
    r = _client(args, lambda c: c.cancel(args.model, args.intent))
    return _plain(r), f"intent {r.intent_id}: cancelled {r.model_id} {r.version}"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    cfg = argparse.ArgumentParser(add_help=False)
    cfg.add_argument("--config", help=f"daemon config (default: $SHOAL_CONFIG or "
                                      f"{DEFAULT_CONFIG})")
    cli = argparse.ArgumentParser(add_help=False, parents=[cfg])
    cli.add_argument("--socket", help="control socket (default: from the config)")

    p = sub.add_parser("daemon", parents=[common, cfg], help="run the node daemon")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_daemon)
    dsub = p.add_subparsers(dest="daemon_command", required=False, metavar="COMMAND")
    inst = dsub.add_parser("install", parents=[common, cfg],
                           help="write a systemd unit for the daemon")
    inst.add_argument("--print", action="store_true", help="print the unit, write nothing")
    inst.add_argument("--unit-dir", default="/etc/systemd/system")
    inst.set_defaults(func=_cmd_daemon_install)

    p = sub.add_parser("fleet", help="fleet root key and certificates")
    fsub = p.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    q = fsub.add_parser("init", parents=[common], help="create the fleet root key")
    q.set_defaults(func=_cmd_fleet_init)
    q = fsub.add_parser("admit", parents=[common],
                        help="sign a node, publisher or operator key with the root key")
    q.add_argument("--role", required=True, choices=["node", "publisher", "operator"])
    q.add_argument("--key", required=True, help="the subject's public key, hex")
    q.add_argument("--name", required=True)
    q.add_argument("--fleet", required=True, help="fleet id")
    q.add_argument("--out", help="write the certificate here (e.g. keys/node.cert)")
    q.set_defaults(func=_cmd_fleet_admit)

    p = sub.add_parser("peers", parents=[common, cli], help="connected peers")
    p.set_defaults(func=_cmd_peers)
    p = sub.add_parser("status", parents=[common, cli],
                       help="this node, or a rollout's convergence (MODEL VERSION)")
    p.add_argument("model", nargs="?")
    p.add_argument("version", nargs="?")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("distribute", parents=[common, cli], help="roll out a version")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--scope", default="all")
    p.add_argument("--priority", default="normal")
    p.add_argument("--variant")
    p.add_argument("--from", dest="delta_from")
    p.set_defaults(func=_cmd_distribute)
    p = sub.add_parser("rollback", parents=[common, cli],
                       help="switch back to an earlier version")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--scope", default="all")
    p.set_defaults(func=_cmd_rollback)
    p = sub.add_parser("cancel", parents=[common, cli], help="cancel a rollout")
    p.add_argument("model")
    p.add_argument("--intent", help="intent id (default: the one this node follows)")
    p.set_defaults(func=_cmd_cancel)
