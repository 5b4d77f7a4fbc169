"""``shoal export MODEL [--version NEW]``: publish a model's learned state as a version.

The command runs the *active* version's migrator (export mode) against the
node's data directory, stages a package — the base variant's files, hard-linked
from the installed version (so unchanged: the same chunks), plus a snapshot of
the state paths and the :data:`~agent._migrator.EXPORT_MARKER` file — and asks
the running daemon to publish it over the control socket (``--socket``, else the
config's ``control_socket``). The daemon chunks it (only the state is new),
signs it with its publisher key and announces it by gossip; distribute it like
any other version (``shoal distribute MODEL NEW``), and a node that holds the
base fetches only the state.

The publish request names the running version as ``base_version``, so the
derived manifest says what it is layered on; the marker file carries the same
base inside the version directory (an installed derived version never runs
ingest, whichever of the two says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import trio

from agent._cli.location import control_socket, locate
from agent._daemon.export import (
    collect_state_files,
    default_derived_version,
)
from agent._daemon.migrator import (
    DEFAULT_TIMEOUT,
    EXPORT_MARKER,
    MigratorError,
    run_export,
)
from agent._errors import NotFound
from agent._storage.install import RECORD_NAME
from agent._storage.paths import DataDir, confine
from protocol import Manifest, ProtocolError, SemVer, Variant, decode_value

__all__ = ["register", "stage_export"]

def _data(args: argparse.Namespace) -> DataDir:
    return locate(args).data


def _socket(args: argparse.Namespace) -> str:
    return control_socket(args)


def _active(data: DataDir, model_id: str) -> tuple[str, Path, Manifest, str]:
    """(version, directory, manifest, variant id) of the active version, read-only."""
    model_dir = data.model_dir(model_id)
    try:
        version = os.path.basename(os.readlink(model_dir / "current"))
    except OSError:
        raise NotFound(f"{model_id} has no active version in {data.models}; install or "
                       "distribute it first") from None
    vdir = data.version_dir(model_id, version)
    try:
        with open(vdir / RECORD_NAME, encoding="utf-8") as f:
            rec = json.load(f)
        raw = (data.store / "manifests" / rec["manifest_id"]).read_bytes()
        manifest = decode_value(Manifest, raw)
    except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
        raise NotFound(f"{model_id} {version}: cannot read its install record or manifest "
                       f"({exc})") from None
    return version, vdir, manifest, str(rec["variant_id"])


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _package_toml(v: Variant) -> str:
    r = v.requirements
    lines = ["[[variant]]", f"id = {json.dumps(v.variant_id)}",
             f"precision = {json.dumps(r.precision)}"]
    if r.cpu_arch:
        lines.append(f"cpu_arch = {_toml_list(r.cpu_arch)}")
    if r.execution_providers:
        lines.append(f"execution_providers = {_toml_list(r.execution_providers)}")
    if r.min_gpu_mem_gb:
        lines.append(f"min_gpu_mem_gb = {r.min_gpu_mem_gb!r}")
    if r.min_ram_gb:
        lines.append(f"min_ram_gb = {r.min_ram_gb!r}")
    if r.min_storage_mb:
        lines.append(f"min_storage_mb = {r.min_storage_mb}")
    if v.migrator is not None:
        lines.append(f"migrator = {json.dumps(v.migrator)}")
    if v.migrator_address is not None:
        lines.append(f"migrator_address = {json.dumps(v.migrator_address)}")
    return "\n".join(lines) + "\n"


def stage_export(vdir: Path, base: Manifest, variant_id: str, state_paths: tuple[str, ...],
                 stage: Path) -> tuple[int, int]:
    """Build the derived package under ``stage``; (state files, state bytes)."""
    variant = base.variant(variant_id)
    root = stage / variant_id
    root.mkdir(parents=True)
    (stage / "shoal-model.toml").write_text(_package_toml(variant), encoding="utf-8")
    state = collect_state_files(vdir, state_paths)
    state_names = {rel for rel, _, _ in state}
    for entry in variant.files:
        if entry.path in state_names or entry.path == EXPORT_MARKER:
            continue
        src = confine(vdir, entry.path)
        dst = root / entry.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)
    nbytes = 0
    for rel, read_path, executable in state:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(read_path, dst)          # a snapshot: the model may keep learning
        os.chmod(dst, 0o755 if executable else 0o644)
        nbytes += dst.stat().st_size
    marker = {"base_version": base.version, "variant_id": variant_id,
              "state_paths": list(state_paths)}
    (root / EXPORT_MARKER).write_text(json.dumps(marker, sort_keys=True), encoding="utf-8")
    return len(state), nbytes


def _cmd_export(args: argparse.Namespace) -> tuple[Any, str]:
    from agent._daemon.control_client import ControlClient

    data = _data(args)
    version, vdir, base, variant_id = _active(data, args.model)
    migrator = base.variant(variant_id).migrator
    address = base.variant(variant_id).migrator_address
    if migrator is None and address is None:
        raise MigratorError(f"{args.model} {version} (variant {variant_id}) declares no "
                            "migrator; nothing to export")
    new_version = args.version or default_derived_version(version, time.time())
    if SemVer.parse(new_version) == SemVer.parse(version):
        raise MigratorError(f"the derived version must differ from {version}")
    cfg = locate(args).config
    allow_remote = bool(cfg is not None and cfg.migrator_allow_remote)
    paths = trio.run(lambda: run_export(vdir, migrator, address=address, timeout=args.timeout,
                                        allow_remote=allow_remote))
    stage = data.root / f".tmp-export-{secrets.token_hex(4)}"
    try:
        files, nbytes = stage_export(vdir, base, variant_id, paths, stage)
        sock = _socket(args)

        async def go() -> Any:
            async with ControlClient(sock) as c:
                return await c.publish(str(stage.resolve()), args.model, new_version,
                                       base_version=version)
        res = trio.run(go)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
    obj = {"model_id": args.model, "base_version": version, "version": new_version,
           "variant_id": variant_id, "state_paths": list(paths), "state_files": files,
           "state_bytes": nbytes, "manifest_id": res.manifest_id,
           "bytes_total": res.bytes_total, "bytes_new": res.bytes_new,
           "chunks_new": res.chunks_new}
    text = (f"exported {args.model} {version} state ({', '.join(paths) or 'nothing'}: "
            f"{files} files, {nbytes} bytes) as {new_version}; new in the store: "
            f"{res.chunks_new} chunks, {res.bytes_new} bytes\nmanifest {res.manifest_id}\n"
            f"distribute it with: shoal distribute {args.model} {new_version}")
    return obj, text


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common],
                       help="publish the active version's learned state as a derived version")
    p.add_argument("model", help="model id")
    p.add_argument("--version", help="version of the derived release (default: "
                   "the next patch with a -state.<time> pre-release tag)")
    p.add_argument("--socket", help="the daemon's control socket (default: the config's)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds the migrator may run (default %(default)s)")
    p.set_defaults(func=_cmd_export)
