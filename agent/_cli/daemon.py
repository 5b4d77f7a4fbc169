"""CLI subcommands of the daemon: ``daemon``, ``fleet``, ``peers``, ``status``,
``distribute``, ``rollback``, ``cancel``, ``node``, ``nodes``, ``handles``. The
client ones are thin layers over :class:`agent.client.ShoalClient` on the control
socket (``--socket``, else the config's ``control_socket``); see docs/API.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from agent._admin.fleet import (
    DEFAULT_VALID_FOR_DAYS,
    admit,
    fleet_init,
    read_trust_file,
    revoke,
)
from agent._cli.location import DEFAULT_CONFIG, config_path, control_socket, locate
from agent._cli.result import Answered
from agent._config import load_config
from agent._errors import ConfigError
from agent._storage.persist import atomic_write, write_cert
from agent.client import (
    ControlRefused,
    DistributionScope,
    ModelConvergenceStatus,
    ModelDistributionHandle,
    RolloutState,
    ShoalClient,
)
from protocol import InvalidValue, OnDegraded, RolloutPolicy, TransferPriority, encode_value

__all__ = ["register"]

def _config_path(args: argparse.Namespace) -> str:
    path = config_path(args)
    if path is None:
        raise ConfigError(f"no config file: give --config FILE, set $SHOAL_CONFIG, or write "
                          f"{DEFAULT_CONFIG} (docs/CONFIG.md)")
    return path


def _socket(args: argparse.Namespace) -> str:
    return control_socket(args)


def _keys_dir(args: argparse.Namespace) -> Path:
    return locate(args).data.keys


# ---------------------------------------------------------------------- daemon


def _cmd_daemon(args: argparse.Namespace) -> tuple[Any, str]:
    from agent._daemon.heap import HeapTrimmer, keep_large_buffers
    from agent._daemon.log import configure_logging
    from agent._daemon.runtime import NodeRuntime
    from agent._daemon.serve import serve

    keep_large_buffers()

    ctx = configure_logging(args.log_format or os.environ.get("SHOAL_LOG_FORMAT") or "text",
                            level=logging.DEBUG if args.verbose else logging.INFO)
    cfg = load_config(_config_path(args))
    runtime = NodeRuntime(cfg)
    runtime.heap_trimmer = HeapTrimmer.from_environment(dict(os.environ))
    ctx.node_id = runtime.node_id

    def intent_of(model_id: str) -> str | None:
        rec = runtime.machine.ledger.record(runtime.node_id)
        st = rec.model(model_id) if rec is not None else None
        return st.intent_id if st is not None and st.intent_id else None
    ctx.intent_of = intent_of
    trio.run(lambda: serve(runtime, handle_signals=True))
    return {"stopped": runtime.node_id}, ""


def _cmd_daemon_install(args: argparse.Namespace) -> tuple[Any, str]:
    from agent._admin.systemd import install, unit_for

    if args.print:
        unit = unit_for(_config_path(args))
        return {"unit": unit}, unit.rstrip()
    r = install(_config_path(args), Path(args.unit_dir), create_user=args.create_user)
    text = [f"wrote {r.unit_path} (runs as user {r.user})"]
    if r.user_created:
        text.append(f"created the system user {r.user}")
    text += [f"{d} now belongs to {r.user}" for d in r.owned]
    text += [f"note: {n}" for n in r.notes]
    text.append("enable it with `systemctl daemon-reload && systemctl enable --now shoal`")
    return dataclasses.asdict(r), "\n".join(text)


def _cmd_daemon_uninstall(args: argparse.Namespace) -> tuple[Any, str]:
    from agent._admin.systemd import uninstall

    r = uninstall(Path(args.unit_dir), systemctl=args.systemctl)
    text = ([f"stopped and disabled {Path(r.unit_path).name}"] if r.stopped else [])
    text += [f"removed {r.unit_path}"] if r.removed else []
    text += [f"note: {n}" for n in r.notes]
    text.append("data and keys left in place" + (f": {', '.join(r.kept)}" if r.kept else "")
                + " (delete them yourself if the node is gone for good; `pip uninstall "
                  "shoal` removes the program)")
    return dataclasses.asdict(r), "\n".join(text)


# ---------------------------------------------------------------------- fleet


def _cmd_fleet_init(args: argparse.Namespace) -> tuple[Any, str]:
    root = fleet_init(_keys_dir(args))
    return ({"root_public_key": root.public_key.hex(), "root_key_id": root.key_id},
            f"created fleet root key {root.key_id}\nfleet_root_key = "
            f"\"{root.public_key.hex()}\"   # put this in every node's shoal.toml")


def _cmd_fleet_admit(args: argparse.Namespace) -> tuple[Any, str]:
    cert = admit(_keys_dir(args), args.fleet, args.role, args.key, args.name,
                 args.valid_for)
    raw = encode_value(cert)
    if args.out:
        write_cert(Path(args.out), cert)
    obj = {"subject_id": cert.subject_id, "role": cert.role.value, "name": cert.name,
           "fleet_id": cert.fleet_id, "expires_at": cert.expires_at,
           "certificate_hex": raw.hex(), "written_to": args.out}
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert.expires_at / 1000))
    text = (f"admitted {cert.subject_id} as {cert.role.value} {cert.name!r} in fleet "
            f"{cert.fleet_id} until {until}"
            + (f"; wrote {args.out}" if args.out else f"\n{raw.hex()}"))
    return obj, text


def _cmd_fleet_revoke(args: argparse.Namespace) -> tuple[Any, str]:
    rev = revoke(_keys_dir(args), args.fleet, args.key)
    raw = encode_value(rev)
    if args.out:
        atomic_write(Path(args.out), raw, 0o600)
    subject = rev.subject_key.hex()
    obj = {"revoked_key": subject, "fleet_id": rev.fleet_id, "issued_at": rev.issued_at,
           "revocation_hex": raw.hex(), "written_to": args.out}
    text = (f"revoked every certificate of {subject} in fleet {rev.fleet_id}"
            + (f"; wrote {args.out}\nhand it to any daemon: shoal fleet announce {args.out}"
               if args.out else f"\n{raw.hex()}"))
    return obj, text


def _cmd_fleet_announce(args: argparse.Namespace) -> tuple[Any, str]:
    item = read_trust_file(Path(args.file))
    r = _client(args, lambda c: c.control.announce_trust(item))
    text = (f"{r.kind} for key {r.subject_id} "
            + ("written to the ledger; gossip carries it to the fleet" if r.added
               else "was already in the ledger"))
    return _plain(r), text


# ---------------------------------------------------------------------- client commands


def _client(args: argparse.Namespace, fn: Callable[[ShoalClient], Awaitable[Any]], *,
            wait_for_daemon: float = 0.0) -> Any:
    """Run ``fn`` against the daemon; with ``wait_for_daemon``, first wait that many
    seconds at most for a daemon that is still starting to open its socket."""
    path = _socket(args)

    async def go() -> Any:
        deadline = trio.current_time() + wait_for_daemon
        while True:
            try:
                async with ShoalClient.connect(path) as c:
                    return await fn(c)
            except ControlRefused:
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.2)
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
    r = _client(args, lambda c: c.control.peers())
    lines = [f"{p.node_id}  {p.name:<16} {p.address:<22} "
             f"{'out' if p.initiated_by_us else 'in '}  {p.connected_for:7.1f} s  "
             f"sent {p.bytes_sent}  recv {p.bytes_received}" for p in r.peers]
    return _plain(r), "\n".join(lines) or "no peers connected"


def _eta_text(r: ModelConvergenceStatus, unit: str = " s") -> str:
    if r.state.is_final and r.state is not RolloutState.COMPLETE:
        return "-"                    # it ended without completing: no eta to give
    if r.estimated_completion is None:
        return "unknown"
    return f"{r.estimated_completion:.0f}{unit}"


def _status_text(r: ModelConvergenceStatus) -> str:
    head = f"{r.model_id} {r.target_version}: "
    if r.state in (RolloutState.ACTIVE, RolloutState.COMPLETE) and r.total_platforms:
        degraded = f" ({r.degraded} degraded)" if r.degraded else ""
        lines = [head + f"{r.state.value}, {r.converged}/{r.total_platforms} converged"
                 f"{degraded} ({100 * r.progress:.0f}%), {r.in_progress} in progress, {r.pending} "
                 f"pending, {r.failed} failed; eta {_eta_text(r)}"]
    elif r.state.is_final:      # cancelled, superseded, rolled back: the detail says so
        lines = [head + (r.state_detail or r.state.value)]
    else:                       # unknown, or no node in scope yet
        lines = [head + r.state.value + (f" ({r.state_detail})" if r.state_detail else "")]
    if r.version_distribution:
        lines.append("  running: " + ", ".join(f"{v}={n}" for v, n in
                                               sorted(r.version_distribution.items())))
    lines += [f"  blocker {b.node_id}: {b.reason.value} {b.details}" for b in r.blockers]
    return "\n".join(lines)


def _ended_text(r: ModelConvergenceStatus) -> str:
    """The last line of ``status --watch``: why it stopped."""
    if r.state is RolloutState.COMPLETE:
        failed = f", {r.failed} failed" if r.failed else ""
        return (f"rollout ended: complete, {r.converged}/{r.total_platforms} converged"
                f"{failed}")
    return f"rollout ended: {r.state_detail or r.state.value}"


_WATCH_HEADER = (f"{'time':<9}{'converged':>10}{'in-prog':>9}{'pending':>9}{'failed':>8}"
                 f"{'bytes':>8}{'eta':>8}  blockers")


def _watch_row(r: ModelConvergenceStatus) -> str:
    pct = f"{100 * r.bytes_done / r.bytes_total:.0f}%" if r.bytes_total else "-"
    blockers = ", ".join(f"{b.node_id[:8]}:{b.reason.value}" for b in r.blockers)
    if r.state not in (RolloutState.ACTIVE, RolloutState.COMPLETE):
        blockers = r.state.value    # e.g. cancelled: the counts alone would read "0/0"
    return (f"{time.strftime('%H:%M:%S'):<9}{f'{r.converged}/{r.total_platforms}':>10}"
            f"{r.in_progress:>9}{r.pending:>9}{r.failed:>8}{pct:>8}{_eta_text(r, 's'):>8}"
            f"  {blockers}")


def _status_obj(r: ModelConvergenceStatus) -> dict[str, Any]:
    obj: dict[str, Any] = _plain(r)
    obj.update(is_complete=r.is_complete, is_success=r.is_success, progress=r.progress,
               is_final=r.is_final)
    return obj


def _cmd_status(args: argparse.Namespace) -> tuple[Any, str]:
    if args.model:
        if not args.version:
            raise ConfigError("status MODEL VERSION: give the version too")
        if args.watch:
            return _watch(args)
        rep = _client(args, lambda c: c.convergence_status(args.model, args.version))
        return _status_obj(rep), _status_text(rep)
    if args.watch:
        raise ConfigError("--watch needs MODEL VERSION")
    r = _client(args, lambda c: c.control.status())
    lines = [f"node {r.node_id} ({r.name}) fleet {r.fleet_id} port {r.listen_port}, "
             f"{len(r.peers)} peers"]
    if r.record is not None:
        c = r.record.capabilities
        if c is not None:
            gpus = ", ".join(f"{g.name} ({g.kind}, {g.total_memory_mb} MiB)"
                             for g in c.gpus) or "no accelerator"
            probe = json.loads(r.statistics_json).get("probe", {}).get("backends", {})
            seen = ", ".join(f"{name} {b['status'].split(':')[0]}"
                             for name, b in probe.items())
            lines.append(f"  hardware: {c.cpu_arch} x{c.cpu_cores}, {gpus}; providers "
                         f"{', '.join(c.execution_providers)}"
                         + (f" (probe: {seen})" if seen else ""))
        for m in r.record.models:
            lines.append(f"  {m.model_id} {m.version or '-'} [{m.variant_id or '-'}] "
                         f"{m.status.value} {m.bytes_done}/{m.bytes_total} B"
                         + (f" blocker {m.blocker.value}: {m.blocker_detail}"
                            if m.blocker else ""))
    obj = _plain(r)
    obj["statistics"] = json.loads(r.statistics_json)
    del obj["statistics_json"]
    return obj, "\n".join(lines)


def _watch_end(args: argparse.Namespace, final: ModelConvergenceStatus) -> tuple[Any, str]:
    """How ``status --watch`` ends: exit status 0 when the rollout completed with every
    node converged, else 1 (superseded, cancelled, rolled back, or nodes failed). With
    --json the final status is the last one-line object; in text, the final status
    and a line saying why it ended."""
    ok = final.state is RolloutState.COMPLETE and final.is_success
    if args.json:
        if ok:
            print(json.dumps(_status_obj(final), sort_keys=True), flush=True)
            return None, ""                     # main() prints nothing more
        raise Answered(_status_obj(final), "", 1)    # main() prints it as one line
    text = _status_text(final) + "\n" + _ended_text(final)
    if ok:
        return None, text
    raise Answered(None, text, 1)


def _watch(args: argparse.Namespace) -> tuple[Any, str]:
    """Print a row (or, with --json, a one-line JSON object) per change until the
    rollout ends (complete, superseded, cancelled or rolled back); in text, then the
    final status and a line saying why it ended. Prints everything itself."""
    if not args.json and sys.stdout.isatty():
        return _watch_live(args)
    last: list[ModelConvergenceStatus] = []

    async def go(c: ShoalClient) -> None:
        if not args.json:
            print(_WATCH_HEADER, flush=True)
        async with c.subscribe_convergence(args.model, args.version,
                                           until_complete=not args.forever) as updates:
            async for status in updates:
                last[:] = [status]
                if not args.json:
                    print(_watch_row(status), flush=True)
                elif not (status.is_final and not args.forever):   # the last: _watch_end
                    print(json.dumps(_status_obj(status), sort_keys=True), flush=True)
    _client(args, go)
    if not last:
        raise ConfigError("the daemon closed the subscription before any report")
    return _watch_end(args, last[-1])


def _watch_live(args: argparse.Namespace) -> tuple[Any, str]:
    """On a terminal: the fleet table (agent/_cli/watch.py), redrawn in place per change."""
    from rich.console import Console
    from rich.live import Live

    from agent._cli.watch import RateTracker, fleet_view, node_rows

    last: list[ModelConvergenceStatus] = []
    rates = RateTracker()
    console = Console()

    async def go(c: ShoalClient) -> None:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            async with c.subscribe_convergence(args.model, args.version,
                                               until_complete=not args.forever) as updates:
                async for status in updates:
                    last[:] = [status]
                    records = [(e.node_id, e.record) for e in await c.control.records()]
                    now = time.monotonic()
                    for nid, rec in records:
                        st = rec.model(args.model)
                        if st is not None and st.version == args.version:
                            rates.observe(nid, st.bytes_done, now)
                    rows = node_rows(status, records, rates.rates())
                    live.update(fleet_view(status, rows,
                                           max_rows=max(5, console.size.height - 8)),
                                refresh=True)
    _client(args, go)
    if not last:
        raise ConfigError("the daemon closed the subscription before any report")
    return _watch_end(args, last[-1])


def _handle_text(verb: str, h: ModelDistributionHandle) -> str:
    extra = []
    if h.variant_id:
        extra.append(f"variant {h.variant_id}")
    if h.delta_from:
        extra.append(f"delta from {h.delta_from}")
    more = f" ({', '.join(extra)})" if extra else ""
    return (f"handle {h.handle_id}\n{verb} {h.model_id} {h.version}{more} to scope {h.scope} "
            f"({h.targets} node{'' if h.targets == 1 else 's'} now), "
            f"priority {h.priority.name.lower()}")


def _handle_obj(h: ModelDistributionHandle) -> dict[str, Any]:
    obj: dict[str, Any] = _plain(h)
    obj["scope"] = str(h.scope)
    obj["priority"] = h.priority.name.lower()
    return obj


def _scope(text: str) -> DistributionScope:
    return DistributionScope.parse(text)


def _policy(args: argparse.Namespace) -> RolloutPolicy | None:
    """``--max-degraded N%`` and ``--on-degraded MODE``: a rollout policy, or None."""
    if args.max_degraded is None and args.on_degraded is None:
        return None
    mode = args.on_degraded or "rollback"
    try:
        action = OnDegraded(mode)
    except ValueError:
        raise ConfigError(f"--on-degraded {mode!r}: expected rollback, halt or "
                          "ignore") from None
    text = (args.max_degraded or "0%").strip()
    try:
        pct = float(text[:-1] if text.endswith("%") else text)
        return RolloutPolicy(pct, action)
    except (ValueError, InvalidValue):
        raise ConfigError(f"--max-degraded {text!r}: expected a percentage 0..100, "
                          "e.g. 20%") from None


def _cmd_distribute(args: argparse.Namespace) -> tuple[Any, str]:
    scope = _scope(args.scope)
    prio = TransferPriority.parse(args.priority)
    policy = _policy(args)
    if args.variant and args.delta_from:
        raise ConfigError("--variant and --from cannot be combined: a delta rollout picks "
                          "each node's variant itself")

    async def go(c: ShoalClient) -> ModelDistributionHandle:
        if args.variant:
            return await c.distribute_model_variant(args.model, args.version, args.variant,
                                                    scope, prio, policy=policy)
        if args.delta_from:
            return await c.distribute_model_delta(args.model, args.delta_from, args.version,
                                                  scope, prio, policy=policy)
        return await c.distribute_model(args.model, args.version, scope, prio,
                                        policy=policy)
    h = _client(args, go)
    return _handle_obj(h), h.handle_id if args.quiet else _handle_text("distribute", h)


def _cmd_rollback(args: argparse.Namespace) -> tuple[Any, str]:
    h = _client(args, lambda c: c.rollback(args.model, args.version, _scope(args.scope)))
    return _handle_obj(h), _handle_text("roll back", h)


def _cmd_cancel(args: argparse.Namespace) -> tuple[Any, str]:
    h = _client(args, lambda c: c.cancel(args.handle))
    return _handle_obj(h), f"handle {h.handle_id}\ncancelled {h.cancels} ({h.model_id} {h.version})"


def _cmd_node(args: argparse.Namespace) -> tuple[Any, str]:
    st = _client(args, lambda c: c.node_model_status(args.model, args.node))
    if st is None:
        raise Answered({"node": args.node, "model_id": args.model, "status": None},
                       f"node {args.node} reports nothing about {args.model}")
    obj = _plain(st)
    text = (f"{st.node_id} ({st.node_name}) {st.model_id}: {st.status.value} "
            f"{st.version or '-'} [{st.variant_id or '-'}], running {st.active_version or '-'}, "
            f"on disk {', '.join(st.installed) or '-'}; {st.bytes_done}/{st.bytes_total} B "
            f"({st.bytes_fetched} fetched, {st.bytes_reused} reused)"
            + (f"\n  blocker {st.blocker.value}: {st.blocker_detail}" if st.blocker else ""))
    return obj, text


def _cmd_nodes(args: argparse.Namespace) -> tuple[Any, str]:
    """Every node this node knows (or, with MODEL VERSION, those running it), by name."""
    if args.model and not args.version:
        raise ConfigError("nodes MODEL VERSION: give the version too")

    async def go(c: ShoalClient) -> tuple[list[str] | None, Any]:
        deadline = time.monotonic() + args.timeout
        while True:
            records = await c.control.records()
            if len(records) >= args.wait:
                break
            if time.monotonic() >= deadline:
                raise ConfigError(f"{len(records)} of {args.wait} nodes known after "
                                  f"{args.timeout:g} s (check discovery: `shoal peers`)")
            await trio.sleep(0.2)
        ids = (await c.nodes_with_version(args.model, args.version) if args.model
               else None)
        return ids, records
    ids, records = _client(args, go, wait_for_daemon=args.timeout if args.wait else 0.0)
    rows = []
    for e in records:
        if ids is not None and e.node_id not in ids:
            continue
        models = {st.model_id: f"{st.active_version or '-'}" for st in e.record.models}
        rows.append({"node_id": e.node_id, "name": e.record.name,
                     "formation": e.record.formation, "active": models})
    text = "\n".join(f"{r['node_id']}  {r['name'] or '-':<16} {r['formation'] or '-':<12} "
                     + " ".join(f"{k}={v}" for k, v in sorted(r["active"].items()))
                     for r in rows)
    if ids is not None:
        return ({"model_id": args.model, "version": args.version,
                 "node_ids": [r["node_id"] for r in rows], "nodes": rows},
                text or f"no node runs {args.model} {args.version}")
    return {"nodes": rows}, text


def _cmd_handles(args: argparse.Namespace) -> tuple[Any, str]:
    hs = _client(args, lambda c: c.handles(args.model or ""))
    lines = [f"{h.handle_id}  {h.kind.value:<10} {h.model_id} {h.version}  scope {h.scope}"
             + (f"  cancels {h.cancels}" if h.cancels else "")
             + (f"  CANCELLED by {h.cancelled_by}" if h.cancelled_by else "") for h in hs]
    return [_handle_obj(h) for h in hs], "\n".join(lines) or "no intents"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    cfg = argparse.ArgumentParser(add_help=False)   # --config is in `common`
    cli = argparse.ArgumentParser(add_help=False, parents=[cfg])
    cli.add_argument("--socket", help="control socket (default: the daemon's that owns the "
                                      "data directory; see `shoal --help`)")

    p = sub.add_parser("daemon", parents=[common, cfg], help="run the node daemon")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="one event per line on stderr: text (default) or json "
                        "(default from $SHOAL_LOG_FORMAT)")
    p.set_defaults(func=_cmd_daemon)
    dsub = p.add_subparsers(dest="daemon_command", required=False, metavar="COMMAND")
    inst = dsub.add_parser("install", parents=[common, cfg],
                           help="write a systemd unit for the daemon (runs as user shoal)")
    inst.add_argument("--print", action="store_true", help="print the unit, write nothing")
    inst.add_argument("--unit-dir", default="/etc/systemd/system")
    users = inst.add_mutually_exclusive_group()
    users.add_argument("--create-user", dest="create_user", action="store_const", const=True,
                       default=None, help="create the shoal user and chown the data directory "
                                          "to it (default: only with the default --unit-dir)")
    users.add_argument("--no-user", dest="create_user", action="store_const", const=False,
                       help="never create a user or change ownership")
    inst.set_defaults(func=_cmd_daemon_install)
    uninst = dsub.add_parser("uninstall", parents=[common],
                             help="remove the systemd unit; data and keys stay")
    uninst.add_argument("--unit-dir", default="/etc/systemd/system")
    uninst.add_argument("--no-systemctl", dest="systemctl", action="store_const", const=False,
                        default=None, help="do not run `systemctl disable --now shoal` "
                                           "(default: run it for the default --unit-dir "
                                           "where systemd runs)")
    uninst.set_defaults(func=_cmd_daemon_uninstall)

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
    q.add_argument("--valid-for", type=float, default=DEFAULT_VALID_FOR_DAYS, metavar="DAYS",
                   help=f"days until the certificate expires (default "
                        f"{DEFAULT_VALID_FOR_DAYS}); renew by admitting the key again")
    q.set_defaults(func=_cmd_fleet_admit)
    q = fsub.add_parser("revoke", parents=[common],
                        help="sign a revocation of a key with the root key (offline)")
    q.add_argument("--key", required=True, help="the public key to revoke, hex")
    q.add_argument("--fleet", required=True, help="fleet id")
    q.add_argument("--out", help="write the revocation here (mode 0600)")
    q.set_defaults(func=_cmd_fleet_revoke)
    q = fsub.add_parser("announce", parents=[common, cli],
                        help="hand a certificate or revocation file to the local daemon, "
                             "which writes it to the ledger (gossip spreads it)")
    q.add_argument("file", help="written by `fleet admit --out` or `fleet revoke --out`")
    q.set_defaults(func=_cmd_fleet_announce)

    p = sub.add_parser("peers", parents=[common, cli], help="connected peers")
    p.set_defaults(func=_cmd_peers)
    p = sub.add_parser("status", parents=[common, cli],
                       help="this node, or a rollout's convergence (MODEL VERSION)")
    p.add_argument("model", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--watch", action="store_true",
                   help="follow the rollout until it completes: a live fleet table on a "
                        "terminal, a plain row per change otherwise")
    p.add_argument("--forever", action="store_true",
                   help="with --watch: keep watching after completion (Ctrl-C stops)")
    p.set_defaults(func=_cmd_status)
    scope_help = ("all | formation=NAME | nodes=ID,ID | "
                  "capable:min-gpu-mem-gb=N,arch=NAME,min-storage-mb=N (default: all)")
    p = sub.add_parser("distribute", parents=[common, cli], help="roll out a version")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--scope", default="all", help=scope_help)
    p.add_argument("--priority", default="normal", help="critical | high | normal | low")
    p.add_argument("--variant", help="one explicit variant (default: each node picks)")
    p.add_argument("--max-degraded", metavar="N%", help="rollout policy: act when more "
                   "than N%% of the targeted nodes report this version degraded")
    p.add_argument("--on-degraded", metavar="MODE", help="rollback (default with "
                   "--max-degraded) | halt | ignore")
    p.add_argument("--from", dest="delta_from", metavar="VERSION",
                   help="delta update from this version")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the handle id (for `shoal cancel`)")
    p.set_defaults(func=_cmd_distribute)
    p = sub.add_parser("rollback", parents=[common, cli],
                       help="switch back to an earlier version")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--scope", default="all", help=scope_help)
    p.set_defaults(func=_cmd_rollback)
    p = sub.add_parser("cancel", parents=[common, cli], help="cancel a rollout fleet-wide")
    p.add_argument("handle", metavar="HANDLE_ID", help="the handle id distribute printed")
    p.set_defaults(func=_cmd_cancel)
    p = sub.add_parser("node", parents=[common, cli], help="one node's status on a model")
    p.add_argument("model")
    p.add_argument("node", help="node id or name")
    p.set_defaults(func=_cmd_node)
    p = sub.add_parser("nodes", parents=[common, cli],
                       help="the nodes this node knows (MODEL VERSION: those running it)")
    p.add_argument("model", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--wait", type=int, default=0, metavar="N",
                   help="first wait until N nodes are known (this one included)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds --wait waits at most (default %(default)s)")
    p.set_defaults(func=_cmd_nodes)
    p = sub.add_parser("handles", parents=[common, cli], help="intents known to this node")
    p.add_argument("model", nargs="?")
    p.set_defaults(func=_cmd_handles)
