"""Scenario files, parsed: the strict reader of ``FLEET.toml`` and the values it yields.

Every key is checked (an unknown one is refused with its dotted name, as the daemon's
config is); what ``simulate`` in ``_fleetfile`` runs is a :class:`FleetFile`. The keys
are documented in docs/SIMULATOR.md, "Scenario files".
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import (
    Capabilities,
    GpuInfo,
    InvalidValue,
    Requirements,
    Scope,
    TransferPriority,
    normalise_arch,
    validate_model_id,
    validate_version,
)

from ._network import LinkClass
from ._scenarios import mbit

__all__ = ["Action", "CrashEvent", "FleetFile", "FleetFileError", "Formation", "Link",
           "ModelSpec", "PartitionEvent", "VariantSpec", "VersionSpec", "load", "parse"]

MiB = 1024 * 1024


class FleetFileError(ValueError):
    """A scenario file that cannot be run; the message names the key."""


# ---------------------------------------------------------------------- values


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Table:
    """A TOML table read key by key; :meth:`done` refuses whatever was not read."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise FleetFileError(f"{path}: must be a table")
        self.raw = dict(raw)
        self.path = path

    def has(self, key: str) -> bool:
        return key in self.raw

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        where = _where(self.path, key)
        if key not in self.raw:
            if default is ...:
                raise FleetFileError(f"{where}: required")
            return default
        value = self.raw.pop(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise FleetFileError(f"{where}: expected {_names(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise FleetFileError(f"{where}: expected {_names(kinds)}, got {type(value).__name__}")
        return value

    def strings(self, key: str, default: Any = ...) -> list[str]:
        value = self.take(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise FleetFileError(f"{_where(self.path, key)}: expected a list of strings")
        return list(value)

    def number(self, key: str, default: Any = ..., lo: float = 0.0,
               hi: float = math.inf) -> float:
        value = self.take(key, float, default)
        if not lo <= value <= hi:
            raise FleetFileError(f"{_where(self.path, key)}: {value:g} is outside "
                                 f"[{lo:g}, {hi:g}]")
        return float(value)

    def seconds(self, key: str, default: Any = ...) -> float:
        value = self.take(key, (int, float, str), default)
        return _seconds(value, _where(self.path, key))

    def size(self, key: str, default: Any = ...) -> int:
        value = self.take(key, (int, str), default)
        return _bytes(value, _where(self.path, key))

    def table(self, key: str, optional: bool = False) -> _Table | None:
        if key not in self.raw and optional:
            return None
        return _Table(self.take(key, dict), _where(self.path, key))

    def tables(self, key: str) -> list[_Table]:
        value = self.take(key, list, [])
        return [_Table(v, f"{_where(self.path, key)}[{i}]") for i, v in enumerate(value)]

    def done(self) -> None:
        for key in self.raw:
            raise FleetFileError(f"{_where(self.path, key)}: unknown key "
                                 f"(docs/SIMULATOR.md, \"Scenario files\")")


def _names(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: int | float | str, where: str) -> float:
    if isinstance(value, str):
        t = value.strip().lower()
        unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if t.endswith(u)), "")
        try:
            out = float(t[: len(t) - len(unit)]) * _UNITS.get(unit, 1.0)
        except ValueError:
            out = math.nan
        if math.isnan(out):
            raise FleetFileError(f"{where}: {value!r} is not a duration (e.g. 90, \"90s\", "
                                 f"\"10m\", \"2h\")")
    else:
        out = float(value)
    if out < 0 or math.isinf(out):
        raise FleetFileError(f"{where}: {value!r} must be a finite duration >= 0")
    return out


def _bytes(value: int | str, where: str) -> int:
    if isinstance(value, int):
        out = value
    else:
        units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
        t = value.strip().lower().removesuffix("ib").removesuffix("b")
        try:
            out = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
        except (ValueError, KeyError):
            raise FleetFileError(f"{where}: {value!r} is not a size (e.g. 1048576, \"64M\", "
                                 f"\"4G\")") from None
    if out <= 0:
        raise FleetFileError(f"{where}: must be more than 0 bytes")
    return out


# ---------------------------------------------------------------------- the file


@dataclass(frozen=True, slots=True)
class Formation:
    name: str
    count: int
    capabilities: Capabilities
    # per-node hardware (index -> capabilities) where ``[[formation.node]]`` overrides it
    overrides: tuple[tuple[int, Capabilities], ...] = ()

    def capabilities_of(self, index: int) -> Capabilities:
        return dict(self.overrides).get(index, self.capabilities)


@dataclass(frozen=True, slots=True)
class Link:
    link: LinkClass
    within: tuple[str, ...]
    between: tuple[tuple[str, str], ...]
    every: float | None          # schedule period (None: always up)
    up_for: float
    offset: float
    mean_up: float | None = None     # random outages: exponential up and down times
    mean_down: float = 0.0


@dataclass(frozen=True, slots=True)
class PartitionEvent:
    at: float
    heal_at: float | None
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class CrashEvent:
    node: str
    at: float
    back_at: float | None


@dataclass(frozen=True, slots=True)
class VariantSpec:
    variant_id: str
    size: int
    requirements: Requirements


@dataclass(frozen=True, slots=True)
class VersionSpec:
    version: str
    changed: float
    installed: tuple[str, ...]
    files: tuple[tuple[str, Path], ...] = ()    # variant id -> a real file: its contents


@dataclass(frozen=True, slots=True)
class ModelSpec:
    model_id: str
    origin: str
    chunk_size: int
    variants: tuple[VariantSpec, ...]
    versions: tuple[VersionSpec, ...]


@dataclass(frozen=True, slots=True)
class Action:
    at: float
    node: str
    do: str
    model: str
    version: str = ""
    scope: Scope = field(default_factory=Scope)
    priority: TransferPriority = TransferPriority.NORMAL
    delta_from: str | None = None
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class FleetFile:
    name: str
    seed: int
    duration: float
    sample_every: float
    degree: int | None
    formations: tuple[Formation, ...]
    links: tuple[Link, ...]
    partitions: tuple[PartitionEvent, ...]
    crashes: tuple[CrashEvent, ...]
    models: tuple[ModelSpec, ...]
    actions: tuple[Action, ...]

    def node_names(self) -> list[str]:
        return [f"{f.name}-{i}" for f in self.formations for i in range(f.count)]


def load(path: str | Path) -> FleetFile:
    """Parse a scenario file (:class:`FleetFileError` names what is wrong)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise FleetFileError(f"{p}: {exc.strerror or exc}") from None
    return parse(text, default_name=p.stem, base=p.parent)


def parse(text: str, default_name: str = "fleet", base: Path | None = None) -> FleetFile:
    """``base``: the folder relative ``files`` paths are read from (the file's own by
    :func:`load`; the working directory by default)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetFileError(f"not valid TOML: {exc}") from None
    top = _Table(raw, "")
    run = top.table("run", optional=True) or _Table({}, "run")
    name = run.take("name", str, default_name)
    seed = run.take("seed", int, 1)
    duration = run.seconds("duration", "1h")
    sample_every = run.seconds("sample_every", 1.0)
    if sample_every <= 0:
        raise FleetFileError("run.sample_every: must be more than 0")
    degree = run.take("degree", int, None)
    if degree is not None and degree < 1:
        raise FleetFileError("run.degree: must be at least 1")
    run.done()

    formations = tuple(_formation(t) for t in top.tables("formation"))
    if not formations:
        raise FleetFileError("formation: at least one [[formation]] is required")
    fnames = [f.name for f in formations]
    if len(set(fnames)) != len(fnames):
        raise FleetFileError("formation: two formations have the same name")
    known = set(fnames)
    nodes = {f"{f.name}-{i}" for f in formations for i in range(f.count)}
    links = tuple(_link(t, known, nodes) for t in top.tables("link"))
    if len({lk.link.name for lk in links}) != len(links):
        raise FleetFileError("link: two links have the same name")
    partitions = tuple(_partition(t, known) for t in top.tables("partition"))
    spans = sorted((p.at, p.heal_at if p.heal_at is not None else math.inf) for p in partitions)
    for (_, end), (start, _) in itertools.pairwise(spans):
        if start < end:
            raise FleetFileError("partition: partitions overlap in time (one at a time)")
    crashes = tuple(_crash(t, nodes) for t in top.tables("crash"))
    models = tuple(_model(t, known, nodes, base or Path.cwd())
                   for t in top.tables("model"))
    if len({m.model_id for m in models}) != len(models):
        raise FleetFileError("model: two models have the same id")
    actions = tuple(_action(t, nodes, {m.model_id: m for m in models})
                    for t in top.tables("action"))
    top.done()
    return FleetFile(name, seed, duration, sample_every, degree, formations, links,
                     partitions, crashes, models, actions)


def _formation(t: _Table) -> Formation:
    name = t.take("name", str)
    if not name or "," in name or " " in name:
        raise FleetFileError(f"{t.path}.name: {name!r}: a non-empty word is needed")
    count = t.take("count", int)
    if count < 1:
        raise FleetFileError(f"{t.path}.count: must be at least 1")
    hw = t.table("hardware", optional=True) or _Table({}, f"{t.path}.hardware")
    base = _hardware(hw, _HARDWARE_DEFAULTS)
    overrides: dict[int, Capabilities] = {}
    for o in t.tables("node"):
        indices = o.take("index", (int, list))
        indices = indices if isinstance(indices, list) else [indices]
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count:
                raise FleetFileError(f"{o.path}.index: {i!r} is not a node index of "
                                     f"{name} (0 to {count - 1})")
            if i in overrides:
                raise FleetFileError(f"{o.path}.index: node {i} is overridden twice")
        node_hw = o.table("hardware")
        assert node_hw is not None
        node_caps = _capabilities(_hardware(node_hw, base))
        o.done()
        for i in indices:
            overrides[i] = node_caps
    t.done()
    return Formation(name, count, _capabilities(base), tuple(sorted(overrides.items())))


_HARDWARE_DEFAULTS: dict[str, Any] = {
    "cpu_arch": "x86_64", "gpu_mem_gb": 0.0, "gpu_kind": "cuda", "cpu_cores": 8,
    "ram_gb": 16.0, "storage_free_mb": 1_000_000,
    "execution_providers": ["CPUExecutionProvider"]}


def _hardware(hw: _Table, defaults: dict[str, Any]) -> dict[str, Any]:
    """A ``hardware`` table read over ``defaults`` (the formation's, for a node's)."""
    out = dict(defaults)
    arch = hw.take("cpu_arch", str, None)
    if arch is not None:
        try:
            out["cpu_arch"] = normalise_arch(arch)
        except (InvalidValue, ValueError) as exc:
            raise FleetFileError(f"{hw.path}.cpu_arch: {exc}") from None
    out["gpu_mem_gb"] = hw.number("gpu_mem_gb", out["gpu_mem_gb"])
    out["gpu_kind"] = hw.take("gpu_kind", str, out["gpu_kind"])
    out["cpu_cores"] = hw.take("cpu_cores", int, out["cpu_cores"])
    out["ram_gb"] = hw.number("ram_gb", out["ram_gb"])
    out["storage_free_mb"] = hw.take("storage_free_mb", int, out["storage_free_mb"])
    if out["storage_free_mb"] < 0:
        raise FleetFileError(f"{hw.path}.storage_free_mb: must be >= 0")
    out["execution_providers"] = hw.strings("execution_providers", out["execution_providers"])
    hw.done()
    return out


def _capabilities(hw: dict[str, Any]) -> Capabilities:
    gpu_mb = int(hw["gpu_mem_gb"] * 1024)
    gpus = (GpuInfo("sim-gpu", gpu_mb, gpu_mb, "sim", "", hw["gpu_kind"]),) if gpu_mb else ()
    return Capabilities(cpu_arch=hw["cpu_arch"], cpu_cores=hw["cpu_cores"],
                        ram_mb=int(hw["ram_gb"] * 1024), storage_free_mb=hw["storage_free_mb"],
                        gpus=gpus, execution_providers=tuple(hw["execution_providers"]))


def _link(t: _Table, formations: set[str], nodes: set[str]) -> Link:
    name = t.take("name", str)
    up = t.number("up_mbit", lo=1e-6)
    down = t.number("down_mbit", up, lo=1e-6)
    latency = t.number("latency_ms", 5.0) / 1000
    jitter = t.number("jitter_ms", 0.0) / 1000
    loss = t.number("loss", 0.0, hi=0.5)
    header_bytes = t.take("header_bytes", int, 0)
    mss = t.take("mss", int, 1448)
    if not 0 <= header_bytes <= 1000:
        raise FleetFileError(f"{t.path}.header_bytes: {header_bytes} is outside [0, 1000]")
    if not 64 <= mss <= 65536:
        raise FleetFileError(f"{t.path}.mss: {mss} is outside [64, 65536]")
    within = t.strings("within", [])
    between_raw = t.take("between", list, [])
    between: list[tuple[str, str]] = []
    for i, pair in enumerate(between_raw):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise FleetFileError(f"{t.path}.between[{i}]: expected [\"FORMATION or NODE\", "
                                 f"\"FORMATION or NODE\"]")
        between.append((pair[0], pair[1]))
    for i, f in enumerate(within):
        if f not in formations:
            raise FleetFileError(f"{t.path}.within[{i}]: no formation {f!r}")
    for i, pair in enumerate(between):
        for f in pair:
            if f not in formations and f not in nodes:
                raise FleetFileError(f"{t.path}.between[{i}]: no formation or node {f!r}")
    if not within and not between:
        raise FleetFileError(f"{t.path}: joins nothing (give within and/or between)")
    every = up_for = offset = None
    sched = t.table("schedule", optional=True)
    if sched is not None:
        every = sched.seconds("every")
        up_for = sched.seconds("up_for")
        offset = sched.seconds("offset", 0.0)
        if every <= 0 or not 0 < up_for <= every:
            raise FleetFileError(f"{sched.path}: needs 0 < up_for <= every")
        sched.done()
    mean_up = mean_down = None
    outages = t.table("outages", optional=True)
    if outages is not None:
        if sched is not None:
            raise FleetFileError(f"{outages.path}: a link takes a schedule or random "
                                 f"outages, not both")
        mean_up = outages.seconds("mean_up")
        mean_down = outages.seconds("mean_down")
        if mean_up <= 0 or mean_down <= 0:
            raise FleetFileError(f"{outages.path}: mean_up and mean_down must be more than 0")
        outages.done()
    t.done()
    return Link(LinkClass(name, mbit(up), mbit(down), latency, jitter, loss, header_bytes, mss),
                tuple(within), tuple(between), every, up_for or 0.0, offset or 0.0,
                mean_up, mean_down or 0.0)


def _partition(t: _Table, formations: set[str]) -> PartitionEvent:
    at = t.seconds("at")
    heal_at = t.seconds("heal_at", None) if t.has("heal_at") else None
    if heal_at is not None and heal_at <= at:
        raise FleetFileError(f"{t.path}.heal_at: must be after at")
    raw = t.take("groups", list)
    groups: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for i, g in enumerate(raw):
        if not isinstance(g, list) or not g or not all(isinstance(x, str) for x in g):
            raise FleetFileError(f"{t.path}.groups[{i}]: expected a list of formation names")
        for f in g:
            if f not in formations:
                raise FleetFileError(f"{t.path}.groups[{i}]: no formation {f!r}")
            if f in seen:
                raise FleetFileError(f"{t.path}.groups[{i}]: {f!r} is in two groups")
            seen.add(f)
        groups.append(tuple(g))
    if len(groups) < 2:
        raise FleetFileError(f"{t.path}.groups: at least two groups are needed")
    t.done()
    return PartitionEvent(at, heal_at, tuple(groups))


def _node(t: _Table, key: str, nodes: set[str]) -> str:
    name: str = t.take(key, str)
    if name not in nodes:
        raise FleetFileError(f"{t.path}.{key}: no node {name!r} (nodes are named "
                             f"FORMATION-INDEX, e.g. hq-0)")
    return name


def _crash(t: _Table, nodes: set[str]) -> CrashEvent:
    node = _node(t, "node", nodes)
    at = t.seconds("at")
    back_at = t.seconds("back_at", None) if t.has("back_at") else None
    if back_at is not None and back_at <= at:
        raise FleetFileError(f"{t.path}.back_at: must be after at")
    t.done()
    return CrashEvent(node, at, back_at)


_REQUIREMENTS = {"cpu_arch", "min_gpu_mem_gb", "execution_providers", "min_ram_gb",
                 "min_storage_mb", "accelerators"}


def _requirements(t: _Table | None) -> Requirements:
    if t is None:
        return Requirements()
    arch = tuple(normalise_arch(a) for a in t.strings("cpu_arch", []))
    req = Requirements(cpu_arch=arch, min_gpu_mem_gb=t.number("min_gpu_mem_gb", 0.0),
                       execution_providers=tuple(t.strings("execution_providers", [])),
                       min_ram_gb=t.number("min_ram_gb", 0.0),
                       min_storage_mb=t.take("min_storage_mb", int, 0),
                       accelerators=tuple(t.strings("accelerators", [])))
    t.done()
    return req


def _files(v: _Table, variant_ids: list[str], base: Path) -> tuple[tuple[str, Path], ...]:
    """``file = PATH`` (a model of one variant) or ``files = {VARIANT = PATH}``: real
    files whose contents are the version's variants."""
    if v.has("file") and v.has("files"):
        raise FleetFileError(f"{v.path}: give file or files, not both")
    if v.has("file"):
        if len(variant_ids) != 1:
            raise FleetFileError(f"{v.path}.file: the model has {len(variant_ids)} variants: "
                                 "name each in files = {{VARIANT = PATH}}")
        given = {variant_ids[0]: v.take("file", str)}
        where = f"{v.path}.file"
    else:
        table = v.table("files", optional=True)
        if table is None:
            return ()
        given = {k: table.take(k, str) for k in list(table.raw)}
        table.done()
        where = f"{v.path}.files"
    out: list[tuple[str, Path]] = []
    for vid, name in given.items():
        if vid not in variant_ids:
            raise FleetFileError(f"{where}.{vid}: no variant {vid!r} in this model")
        path = base / name
        if not path.is_file():
            raise FleetFileError(f"{where}: {str(path)!r} is not a file")
        out.append((vid, path))
    return tuple(out)


def _model(t: _Table, formations: set[str], nodes: set[str], base: Path) -> ModelSpec:
    model_id = t.take("id", str)
    try:
        validate_model_id(model_id)
    except InvalidValue as exc:
        raise FleetFileError(f"{t.path}.id: {exc}") from None
    origin = _node(t, "origin", nodes)
    chunk_size = t.size("chunk_size", MiB)
    variants: list[VariantSpec] = []
    for v in t.tables("variant"):
        vid = v.take("id", str)
        size = v.size("size") if v.has("size") else 0   # 0: every version gives a file
        req = _requirements(v.table("requirements", optional=True))
        v.done()
        variants.append(VariantSpec(vid, size, req))
    if not variants:
        raise FleetFileError(f"{t.path}.variant: at least one [[model.variant]] is required")
    if len({v.variant_id for v in variants}) != len(variants):
        raise FleetFileError(f"{t.path}.variant: two variants have the same id")
    versions: list[VersionSpec] = []
    for i, v in enumerate(t.tables("version")):
        version = v.take("version", str)
        try:
            validate_version(version)
        except InvalidValue as exc:
            raise FleetFileError(f"{v.path}.version: {exc}") from None
        files = _files(v, [x.variant_id for x in variants], base)
        if files and v.has("changed"):
            raise FleetFileError(f"{v.path}.changed: a version given as files changes what "
                                 "its files change; leave changed out")
        changed = v.number("changed", 1.0 if i == 0 else 0.1, hi=1.0)
        installed = v.strings("installed", [])
        for j, where in enumerate(installed):
            if where not in formations and where not in nodes:
                raise FleetFileError(f"{v.path}.installed[{j}]: no formation or node {where!r}")
        v.done()
        for x in variants:
            if x.size == 0 and x.variant_id not in dict(files):
                raise FleetFileError(f"{v.path}.files: no file for variant {x.variant_id!r}, "
                                     f"which has no size (model.variant.size)")
        versions.append(VersionSpec(version, changed, tuple(installed), files))
    if not versions:
        raise FleetFileError(f"{t.path}.version: at least one [[model.version]] is required")
    for x in variants:
        given = [x.variant_id in dict(ver.files) for ver in versions]
        if any(given) and not all(given):
            raise FleetFileError(f"{t.path}.version: variant {x.variant_id!r} is a file in "
                                 "some versions: give it as a file in every version")
    if len({v.version for v in versions}) != len(versions):
        raise FleetFileError(f"{t.path}.version: two versions are the same")
    t.done()
    return ModelSpec(model_id, origin, chunk_size, tuple(variants), tuple(versions))


_DOES = ("publish", "distribute", "rollback", "cancel")


def _action(t: _Table, nodes: set[str], models: dict[str, ModelSpec]) -> Action:
    at = t.seconds("at")
    node = _node(t, "node", nodes)
    do = t.take("do", str)
    if do not in _DOES:
        raise FleetFileError(f"{t.path}.do: {do!r}: expected one of {', '.join(_DOES)}")
    model_id = t.take("model", str)
    model = models.get(model_id)
    if model is None:
        raise FleetFileError(f"{t.path}.model: no [[model]] with id {model_id!r}")
    versions = {v.version for v in model.versions}
    version = ""
    if do != "cancel":
        version = t.take("version", str)
        if version not in versions:
            raise FleetFileError(f"{t.path}.version: {model_id} has no version {version!r}")
    scope = Scope()
    priority = TransferPriority.NORMAL
    delta_from = variant = None
    if do in ("distribute", "rollback"):
        try:
            scope = Scope.parse(t.take("scope", str, "all"))
        except InvalidValue as exc:
            raise FleetFileError(f"{t.path}.scope: {exc}") from None
        try:
            priority = TransferPriority.parse(t.take("priority", str, "normal"))
        except InvalidValue as exc:
            raise FleetFileError(f"{t.path}.priority: {exc}") from None
        variant = t.take("variant", str, None)
        if variant is not None and variant not in {v.variant_id for v in model.variants}:
            raise FleetFileError(f"{t.path}.variant: {model_id} has no variant {variant!r}")
    if do == "distribute":
        delta_from = t.take("delta_from", str, None)
        if delta_from is not None and delta_from not in versions:
            raise FleetFileError(f"{t.path}.delta_from: {model_id} has no version "
                                 f"{delta_from!r}")
    t.done()
    return Action(at, node, do, model_id, version, scope, priority, delta_from, variant)


