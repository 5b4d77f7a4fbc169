"""``shoal probe``: what this machine (or a recorded one) can run, and through what."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent._cli.location import locate
from agent._daemon.probe import ProbeReport, probe_machine, record_tree
from agent._errors import ConfigError
from agent._storage.publish import load_package
from protocol import unmet_requirements

__all__ = ["register"]


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (free space is measured there)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def _variant(report: ProbeReport, package: str) -> dict[str, Any]:
    """The variant of ``package`` this machine picks (preference order), and why the
    ones before it do not fit."""
    skipped: dict[str, list[str]] = {}
    for spec in load_package(package):
        unmet = unmet_requirements(spec.requirements, report.capabilities)
        if not unmet:
            return {"variant": spec.variant_id, "skipped": skipped}
        skipped[spec.variant_id] = list(unmet.values())
    return {"variant": None, "skipped": skipped}


def _cmd_probe(args: argparse.Namespace) -> tuple[Any, str]:
    root = Path(args.root) if args.root else Path("/")
    if args.root and not root.is_dir():
        raise ConfigError(f"--root {args.root}: not a directory")
    data_dir = _existing(locate(args).data.root)
    report = probe_machine(str(data_dir), root=root)
    c = report.capabilities
    obj: dict[str, Any] = {
        "root": str(root),
        "capabilities": {"cpu_arch": c.cpu_arch, "cpu_cores": c.cpu_cores,
                         "ram_mb": c.ram_mb, "storage_free_mb": c.storage_free_mb,
                         "gpus": [{"name": g.name, "kind": g.kind,
                                   "total_memory_mb": g.total_memory_mb,
                                   "free_memory_mb": g.free_memory_mb,
                                   "unified_memory": g.unified_memory,
                                   "compute_capability": g.compute_capability,
                                   "driver": g.driver} for g in c.gpus],
                         "execution_providers": list(c.execution_providers)},
        **report.as_dict()}
    lines = report.summary()
    if args.package:
        choice = _variant(report, args.package)
        obj["package"] = choice
        lines.append(f"variant of {args.package}: {choice['variant'] or 'none fits'}")
        lines += [f"  {vid} skipped: {'; '.join(why)}"
                  for vid, why in choice["skipped"].items()]
    if args.record:
        if args.root:
            raise ConfigError("--record records this machine: leave --root out")
        obj["recorded"] = record_tree(args.record, report)
        lines.append(f"recorded {len(obj['recorded'])} files into {args.record}")
    return obj, "\n".join(lines)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("probe", parents=[common],
                       help="show what this machine can run (accelerators, providers) "
                            "and through what the probe saw it")
    p.add_argument("--root", help="probe a recorded machine tree instead of this one "
                   "(see --record)")
    p.add_argument("--package", help="also say which variant of this model package "
                   "the machine picks")
    p.add_argument("--record", metavar="DIR", help="record this machine into DIR, so "
                   "`shoal probe --root DIR` answers the same elsewhere")
    p.set_defaults(func=_cmd_probe)
