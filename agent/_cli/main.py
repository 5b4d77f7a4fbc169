"""The ``shoal`` command line.

Every subcommand takes ``--data-dir``, ``--config`` and ``--json``; the node a
command acts on is found by one rule for all of them (:mod:`agent._cli.location`).
A user's mistake — a :class:`~protocol.ShoalError`, an OS error, a bad argument —
becomes one line on stderr and exit status 2, never a traceback; with ``--json``
stdout carries exactly one JSON document, errors included. Exit status 1 means
the command ran but the answer is "no" (a rollout that ended without success,
a store that failed verification).

Other modules add subcommands by appending a ``register(subparsers, common)``
function to :data:`REGISTRARS` (or passing ``registrars=`` to :func:`build_parser`);
each subparser sets ``func`` to a callable ``(args) -> (json_obj, text)``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from agent._cli.location import control_socket, locate
from agent._cli.result import Answered
from agent._daemon.lock import DAEMON, PUBLISH, DataDirBusy, DataDirLock, holder
from agent._errors import InstallError
from agent._storage.install import Installer
from agent._storage.keys import load_key
from agent._storage.paths import DataDir
from agent._storage.publish import PublishResult, publish
from agent._storage.store import ChunkStore
from protocol import Manifest, ShoalError, Variant

__all__ = ["REGISTRARS", "Answered", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], tuple[Any, str]]
Registrar = Callable[[Any, argparse.ArgumentParser], None]

EXIT_ERROR = 2


def _data(args: argparse.Namespace) -> DataDir:
    return locate(args).data


def _store(args: argparse.Namespace) -> ChunkStore:
    return ChunkStore(_data(args).store)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


# ---------------------------------------------------------------------- publish / models


@contextlib.contextmanager
def progress_bar(args: argparse.Namespace, label: str
                 ) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr when it is a terminal (and not ``--json``);
    otherwise no callback at all, so pipes and logs get plain output only."""
    if getattr(args, "json", False) or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        yield update


def _cmd_publish(args: argparse.Namespace) -> tuple[Any, str]:
    """Through the daemon when one owns the data directory (it stores, signs and
    announces); else straight into the store, and the daemon announces it when it
    starts."""
    data = _data(args)
    running = holder(data.root)
    lock = None
    if running is None or running.role != DAEMON:
        try:        # (a daemon that starts meanwhile waits until the store holds it)
            lock = DataDirLock(data.root, "", role=PUBLISH)
        except DataDirBusy:
            running = holder(data.root)           # a daemon took it first: through it
    if lock is None:
        sock = running.control_socket if running is not None else ""
        res = _publish_via_daemon(args, sock or control_socket(args))
        where = "; announced to the fleet"
    else:
        try:
            publisher = load_key(data.keys, "publisher")
            store = ChunkStore(data.store)
            with progress_bar(args, f"publish {args.model} {args.version}") as update:
                res = publish(store, args.path, args.model, args.version, publisher,
                              progress=update)
        finally:
            lock.release()
        where = "; the daemon announces it to the fleet when it starts"
    if res.already_published:
        text = (f"{res.model_id} {res.version} is already published with these bytes "
                f"(manifest {res.manifest_id}); nothing to do")
    else:
        text = (f"published {res.model_id} {res.version} ({', '.join(res.variants)}): "
                f"{res.files} files, {_mib(res.bytes_total)}, {res.chunks_total} chunks; "
                f"new: {res.chunks_new} chunks, {_mib(res.bytes_new)}\n"
                f"manifest {res.manifest_id}{where}")
    return dataclasses.asdict(res), text


_SOCKET_WAIT_S = 15.0     # how long publish waits for a starting daemon's control socket


def _publish_via_daemon(args: argparse.Namespace, socket_path: str) -> PublishResult:
    import os

    import trio

    from agent._daemon.control_client import ControlClient

    path = os.path.abspath(args.path)

    async def go() -> PublishResult:
        # a daemon holds the data directory but may still be starting: its control
        # socket appears once it has opened its store and ledger
        with trio.move_on_after(_SOCKET_WAIT_S):
            while not os.path.exists(socket_path) and holder(_data(args).root) is not None:
                await trio.sleep(0.1)
        async with ControlClient(socket_path) as c:
            r = await c.publish(path, args.model, args.version)
        return PublishResult(r.manifest_id, r.model_id, r.version, r.variants, r.files,
                             r.bytes_total, r.chunks_total, r.chunks_new, r.bytes_new,
                             r.already_published)
    return trio.run(go)


def _manifest_json(m: Manifest, store: ChunkStore) -> dict[str, Any]:
    return {
        "manifest_id": m.manifest_id,
        "model_id": m.model_id,
        "version": m.version,
        "publisher": m.publisher_id,
        "created_at_ms": m.created_at,
        "pinned": store.is_pinned(m.manifest_id),
        "variants": [_variant_json(v) for v in m.variants],
    }


def _variant_json(v: Variant) -> dict[str, Any]:
    return {"variant_id": v.variant_id, "files": len(v.files), "bytes": v.size,
            "chunks": len(v.chunk_refs()),
            "requirements": dataclasses.asdict(v.requirements), "migrator": v.migrator,
             "migrator_address": v.migrator_address}


def _cmd_models(args: argparse.Namespace) -> tuple[Any, str]:
    data = _data(args)
    store = ChunkStore(data.store)
    installer = Installer(data, store)
    installed = installer.installed()
    manifests = [_manifest_json(m, store) for m in store.manifests()]
    lines = []
    for m in manifests:
        here = [i for i in installed if i.model_id == m["model_id"] and i.version == m["version"]]
        state = ""
        if here:
            state = f"  installed ({here[0].variant_id}{', active' if here[0].active else ''})"
        variants = ", ".join(f"{v['variant_id']} {_mib(v['bytes'])}" for v in m["variants"])
        lines.append(f"{m['model_id']} {m['version']}  [{variants}]{state}")
    return ({"manifests": manifests, "installed": [dataclasses.asdict(i) for i in installed]},
            "\n".join(lines) or "no models in the store")


def _cmd_verify(args: argparse.Namespace) -> tuple[Any, str]:
    store = _store(args)
    m = store.find_manifest(args.model, args.version)
    m.verify()
    problems = store.verify_manifest(m)
    out = {"manifest_id": m.manifest_id, "model_id": m.model_id, "version": m.version,
           "publisher": m.publisher_id, "signature": "ok",
           "chunks_checked": len({c.hash for c in m.iter_chunks()}),
           "problems": [dataclasses.asdict(p) for p in problems], "ok": not problems}
    if problems:
        detail = "; ".join(f"{p.problem} chunk {p.chunk_hash[:16]}…" for p in problems[:5])
        raise _VerifyFailed(out, f"{m.model_id} {m.version}: {len(problems)} of "
                                 f"{out['chunks_checked']} chunks failed verification "
                                 f"({detail}); corrupt chunks were quarantined")
    return out, (f"{m.model_id} {m.version} ok: signature by {m.publisher_id} verifies, "
                 f"{out['chunks_checked']} chunks verified")


class _VerifyFailed(ShoalError):
    def __init__(self, result: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.result = result


def _pick_variant(m: Manifest, data: DataDir) -> str:
    """The best variant (preference order) this machine's probe satisfies."""
    from agent._daemon.probe import probe
    from protocol import select_variant

    data.root.mkdir(parents=True, exist_ok=True)
    choice = select_variant(m, probe(str(data.root)), None)
    if choice.variant_id is None:
        raise InstallError(f"no variant of {m.model_id} {m.version} fits this machine "
                           f"({choice.detail}); choose one with --variant")
    return choice.variant_id


def _cmd_install(args: argparse.Namespace) -> tuple[Any, str]:
    data = _data(args)
    store = ChunkStore(data.store)
    m = store.find_manifest(args.model, args.version)
    m.verify()
    variant_id = args.variant or _pick_variant(m, data)
    with progress_bar(args, f"install {args.model} {args.version} ({variant_id})") as update:
        res = Installer(data, store).install(m, variant_id, progress=update)
    verb = "already installed" if res.already_installed else "installed"
    prev = f" (previous: {res.previous}, kept)" if res.previous else ""
    return dataclasses.asdict(res), (f"{verb} {res.model_id} {res.version} variant "
                                     f"{res.variant_id} at {res.path}; active{prev}")


def _cmd_activate(args: argparse.Namespace) -> tuple[Any, str]:
    data = _data(args)
    iv = Installer(data, ChunkStore(data.store)).activate(args.model, args.version)
    return dataclasses.asdict(iv), f"{iv.model_id} {iv.version} ({iv.variant_id}) is active"


def _cmd_gc(args: argparse.Namespace) -> tuple[Any, str]:
    res = _store(args).gc()
    return dataclasses.asdict(res), (f"removed {len(res.versions_removed)} versions, freed "
                                     f"{res.chunks_freed} chunks ({_mib(res.bytes_freed)});"
                                     f" kept {res.chunks_kept} ({_mib(res.bytes_kept)})")


def _register_models(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("publish", parents=[common],
                       help="chunk, store and sign a model package")
    p.add_argument("path", help="a package directory (with shoal-model.toml) or a file")
    p.add_argument("--model", required=True, help="model id, e.g. detector")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.set_defaults(func=_cmd_publish)
    p = sub.add_parser("models", parents=[common], help="list stored and installed models")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("verify", parents=[common],
                       help="check a stored version's signature and re-verify every chunk")
    p.add_argument("model")
    p.add_argument("version")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("install", parents=[common],
                       help="install a stored version and make it active")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--variant", help="variant id, installed whatever the probe says "
                   "(default: the best variant this machine's probe satisfies)")
    p.set_defaults(func=_cmd_install)
    p = sub.add_parser("activate", parents=[common],
                       help="switch back to an installed version (no transfer)")
    p.add_argument("model")
    p.add_argument("version")
    p.set_defaults(func=_cmd_activate)
    p = sub.add_parser("gc", parents=[common],
                       help="delete versions nothing keeps (not pinned, "
                       "not current, not the rollback)")
    p.set_defaults(func=_cmd_gc)


#: Functions that add subcommands.
REGISTRARS: list[Registrar] = [_register_models]

from agent._cli.keys import register as _register_keys  # noqa: E402  (keys)

REGISTRARS.insert(0, _register_keys)

from agent._cli.daemon import register as _register_daemon  # noqa: E402  (daemon, fleet, peers...)

REGISTRARS.append(_register_daemon)

from agent._cli.migrate import register as _register_migrate  # noqa: E402  (export)

REGISTRARS.append(_register_migrate)

from agent._cli.probe import register as _register_probe  # noqa: E402  (probe)

REGISTRARS.append(_register_probe)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error with ``--json`` prints one JSON document too."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            print(json.dumps({"error": f"{self.prog}: {message}"}, sort_keys=True))
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shoal")
    except PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown"


def build_parser(registrars: Sequence[Registrar] | None = None) -> argparse.ArgumentParser:
    # the shared options work before or after the subcommand: the subparsers'
    # copies default to SUPPRESS so they never overwrite a value given earlier
    common = _Parser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="data directory (default: from --config, $SHOAL_DATA_DIR, "
                             "$SHOAL_CONFIG, /etc/shoal/shoal.toml, ~/.local/share/shoal)")
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="daemon config file (default: $SHOAL_CONFIG, "
                             "/etc/shoal/shoal.toml)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document")
    parser = _Parser(prog="shoal", description="peer-to-peer model distribution agent")
    parser.add_argument("--version", action="version", version=f"shoal {_version()}")
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (REGISTRARS if registrars is None else registrars):
        register(sub, common)
    return parser


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):   # a path that is not UTF-8 prints as its bytes
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    args_list = list(sys.argv[1:] if argv is None else argv)
    options = args_list[:args_list.index("--")] if "--" in args_list else args_list
    _Parser.json_errors = "--json" in options
    parser = build_parser()
    args = parser.parse_args(args_list)
    func: Handler = args.func
    try:
        try:
            obj, text = func(args)
        except BaseExceptionGroup as group:   # from a trio nursery: report the cause
            leaves = _leaves(group)
            first = next((e for e in leaves if isinstance(e, ShoalError | OSError)), None)
            if first is None:
                raise
            raise first from None
    except _VerifyFailed as exc:
        return _fail(args, str(exc), exc.result)
    except Answered as exc:
        if args.json:
            if exc.result is not None:
                print(json.dumps(exc.result, sort_keys=True))
        elif exc.text:
            print(exc.text)
        return exc.status
    except ShoalError as exc:
        return _fail(args, str(exc), None)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}", None)
    except UnicodeEncodeError as exc:   # argv bytes that are not UTF-8 (surrogateescape)
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
        return _fail(args, f"an argument is not valid UTF-8 text "
                           f"({bad.encode('utf-8', 'surrogateescape')!r})", None)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", None, 130)
    if args.json:
        if obj is not None:
            print(json.dumps(obj, indent=2, sort_keys=True))
    elif text:
        print(text)
    return 0


def _fail(args: argparse.Namespace, message: str, result: dict[str, Any] | None,
          status: int = EXIT_ERROR) -> int:
    if args.json:
        print(json.dumps({**(result or {}), "error": message}, sort_keys=True))
    print(f"shoal: error: {message}", file=sys.stderr)
    return status
