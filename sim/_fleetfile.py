"""Scenario files: ``shoal-sim run FLEET.toml`` simulates an operator's own fleet.

Theory of operation
-------------------
:func:`load` parses a TOML file strictly into a :class:`FleetFile` (an unknown key,
a wrong type or a bad value raises :class:`FleetFileError` naming the key by its
dotted path, e.g. ``formation[1].hardware.gpu_mem_gb``); :func:`simulate` builds a
:class:`~sim._fleet.Fleet` from it and runs it:

* each ``[[formation]]`` becomes ``count`` nodes named ``<formation>-<i>`` whose
  :class:`~protocol.Capabilities` come from its ``hardware`` table, so the real
  variant selection and capability scopes see them; the fleet runs with
  ``disk_limits`` on, so a node whose free storage cannot take a model reports
  ``insufficient_storage`` as a real node with a full disk does;
* each ``[[link]]`` becomes a :class:`~sim._network.LinkClass` joining every pair
  inside the formations in ``within`` and every pair across the formation pairs in
  ``between``; pairs no link joins never reach each other (and discovery does not
  tell them of each other). A ``schedule`` brings the class up ``up_for`` in every
  ``every``; ``outages`` takes it down at random (exponential up and down times drawn
  from the seed); ``[[partition]]`` splits the fleet into groups of formations until it
  heals; ``[[crash]]`` takes a node down (its disk survives) and back up;
* each ``[[model]]`` is synthetic content (``sim/_content.py``'s tokens with declared
  sizes) with one or more variants and a list of versions, each a ``changed``
  fraction away from the previous one; the ``origin`` node holds every chunk of
  every version; versions ``installed`` somewhere are published at time 0;
* each ``[[action]]`` is an operator command carried out at a node's machine at its
  time (``publish``, ``distribute``, ``rollback``, ``cancel``), as ``shoal`` would ask
  the daemon: a command the machine refuses is reported, not fatal.

Every ``sample_every`` seconds of virtual time the run notes, per node and model,
the active version and the blocker the machine reports; a node *converged* at the
first sample from which its active version stayed the version its machine
resolves as desired (at the end) until the end. The run stops at ``duration`` or
once every scheduled operator action, crash and partition has happened and every
targeted node that is up has converged.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from protocol import (
    ChunkList,
    ChunkParams,
    ChunkRef,
    FileEntry,
    IntentKind,
    Manifest,
    ProtocolError,
    Variant,
    chunk_bytes,
    merkle_root,
    select_variant,
)

from ._bound import ClassRate, Timeline, reach_times, transfer_bound, up_periods
from ._fleet import Fleet, NodeSpec
from ._fleetspec import (
    Action,
    FleetFile,
    FleetFileError,
    ModelSpec,
    load,
    parse,
)
from ._loop import derive_rng
from ._network import LinkProfile
from ._scenarios import mbit

__all__ = ["FleetFile", "FleetFileError", "load", "parse", "simulate"]

# ---------------------------------------------------------------------- content


def _manifests(spec: ModelSpec, publisher: Any) -> tuple[dict[str, Manifest],
                                                          dict[bytes, bytes], dict[bytes, int]]:
    """Every version's signed manifest; chunk tokens and declared sizes of all of them."""
    tokens: dict[bytes, bytes] = {}
    sizes: dict[bytes, int] = {}
    out: dict[str, Manifest] = {}
    previous: dict[str, list[ChunkRef]] = {}
    prev_version: str | None = None
    for n, ver in enumerate(spec.versions):
        variants = []
        for v in spec.variants:
            path = dict(ver.files).get(v.variant_id)
            if path is not None:     # a real file: its real chunks, shared where equal
                data = path.read_bytes()
                cut = chunk_bytes(data, ChunkParams.around(spec.chunk_size))
                off = 0
                for ref in cut:
                    tokens[ref.hash] = data[off:off + ref.size]
                    sizes[ref.hash] = ref.size
                    off += ref.size
                entry = FileEntry(path.name, len(data), ChunkList(cut),
                                  merkle_root([r.hash for r in cut]))
                variants.append(Variant(v.variant_id, v.requirements, (entry,)))
                continue
            old = previous.get(v.variant_id)
            lengths = [spec.chunk_size] * (v.size // spec.chunk_size)
            if v.size % spec.chunk_size:
                lengths.append(v.size % spec.chunk_size)
            count = len(lengths) if old is None else round(len(lengths) * ver.changed)
            first = (len(lengths) - count) // 2
            refs: list[ChunkRef] = []
            for i, length in enumerate(lengths):
                if old is not None and not first <= i < first + count:
                    refs.append(old[i])
                    continue
                token = f"{spec.model_id}/{v.variant_id}/{ver.version}/{i}".encode()
                h = blake3.blake3(token).digest()
                tokens[h] = token
                sizes[h] = length
                refs.append(ChunkRef(h, length))
            previous[v.variant_id] = refs
            entry = FileEntry("model.bin", v.size, ChunkList(refs),
                              merkle_root([r.hash for r in refs]))
            variants.append(Variant(v.variant_id, v.requirements, (entry,)))
        out[ver.version] = Manifest.sign(publisher, spec.model_id, ver.version, tuple(variants),
                                         n, prev_version)
        prev_version = ver.version
    return out, tokens, sizes


# ---------------------------------------------------------------------- running


@dataclass(slots=True)
class _Track:
    """One node's view of one model over the run."""

    active: str | None = None
    initial: str | None = None              # ``active`` at the start
    changed_at: float = 0.0                 # the sample that first saw ``active``
    history: list[tuple[float, str | None]] = field(default_factory=list)
    blockers: dict[str, float] = field(default_factory=dict)   # reason -> seconds seen
    first_blocked: dict[str, float] = field(default_factory=dict)


def _timeline(ff: FleetFile, n: int, class_of: dict[tuple[int, int], str]) -> Timeline:
    classes = {lk.link.name: ClassRate(
        lk.link.up, lk.link.down,
        lk.link.mss / (lk.link.mss + lk.link.header_bytes)) for lk in ff.links}
    peers: list[dict[str, set[int]]] = [{} for _ in range(n)]
    for (a, b), name in class_of.items():
        peers[a].setdefault(name, set()).add(b)
        peers[b].setdefault(name, set()).add(a)
    return Timeline(classes, [{c: frozenset(p) for c, p in d.items()} for d in peers])


@dataclass
class _Rollout:
    """A distribute or rollback as issued: what each node lacked of it then."""

    action: Action
    intent_id: str
    at: float
    issuer: int                 # the node where it was issued
    origin: int
    missing: list[int]          # bytes node i lacked of the variant it would run
    origin_only: int            # bytes of those that no node but the origin held


def _rollout(fleet: Fleet, man: Manifest, a: Action, intent_id: str, issuer: int,
             origin: int, now: float) -> _Rollout:
    need: dict[bytes, int] = {}
    missing: list[int] = []
    for node in fleet.nodes:
        choice = select_variant(man, node.spec.capabilities, a.variant)
        lacks = {} if choice.variant_id is None else {
            c.hash: c.size for c in man.variant(choice.variant_id).chunk_refs()
            if c.hash not in node.disk.held}
        need.update(lacks)
        missing.append(sum(lacks.values()))
    others = [n.disk.held for k, n in enumerate(fleet.nodes) if k != origin]
    only = sum(size for h, size in need.items() if not any(h in held for held in others))
    return _Rollout(a, intent_id, now, issuer, origin, missing, only)


def _first_on(track: _Track, version: str, at: float) -> float | None:
    """When the node first ran ``version`` from ``at`` on (``at`` if it ran it then)."""
    before = [v for t, v in track.history if t <= at]
    if (before[-1] if before else track.initial) == version:
        return at
    return next((t for t, v in track.history if t > at and v == version), None)


def _against_bound(r: _Rollout, fleet: Fleet, timeline: Timeline,
                   tracks: dict[tuple[int, str], _Track], names: list[str]) -> dict[str, Any]:
    """The rollout's completion against its bound over the connected periods
    (``sim/_bound.py``): the nodes it decided at the end, when the last of them
    first ran its version (to the sample), and the bound: the latest of the targets' own
    (from the order's earliest possible arrival), the origin's and the fleet's uplinks'."""
    targets = [i for i, node in enumerate(fleet.nodes) if node.alive
               and (want := node.machine.desired(r.action.model)) is not None
               and want.intent_id == r.intent_id]
    first = {i: _first_on(tracks[(i, r.action.model)], r.action.version, r.at)
             for i in targets}
    done = [t for t in first.values() if t is not None]
    reach = reach_times(timeline, r.at, r.issuer)
    everyone = range(len(fleet.nodes))
    bound = max([reach[i] - r.at + transfer_bound(timeline, reach[i], [i], r.missing[i])
                 for i in targets if reach[i] < math.inf]
                + [transfer_bound(timeline, r.at, [r.origin], r.origin_only, upload=True),
                   transfer_bound(timeline, r.at, everyone,
                                  sum(r.missing[i] for i in targets), upload=True)])
    measured = max(done) - r.at if targets and len(done) == len(targets) else None
    return {
        "action": r.action.do, "model": r.action.model, "version": r.action.version,
        "at": round(r.at, 3), "node": r.action.node, "targets": len(targets),
        "carried_out": len(done),
        "bytes_missing_max": max([r.missing[i] for i in targets], default=0),
        "origin_only_bytes": r.origin_only,
        "measured_s": None if measured is None else round(measured, 3),
        "bound_s": round(bound, 3) if math.isfinite(bound) else None,
        "ratio": (round(measured / bound, 3) if measured is not None and bound > 0
                  and math.isfinite(bound) else None),
        "last_node": (None if measured is None else
                      names[max(targets, key=lambda i: first[i] or 0.0)]),
    }


def simulate(ff: FleetFile, seed: int | None = None,
             progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run the scenario file; a flat-ish JSON-able dict (see docs/SIMULATOR.md)."""
    wall = time.perf_counter()
    seed = ff.seed if seed is None else seed
    names = ff.node_names()
    index = {name: i for i, name in enumerate(names)}
    formation_of: list[str] = []
    specs: list[NodeSpec] = []
    for f in ff.formations:
        for i in range(f.count):
            formation_of.append(f.name)
            # the default link carries nothing once a link class joins a pair; its rate
            # only matters for pairs the file leaves unjoined (none reach each other)
            specs.append(NodeSpec(up=mbit(1000), down=mbit(1000),
                                  capabilities=f.capabilities_of(i), formation=f.name,
                                  name=f"{f.name}-{i}"))
    members: dict[str, list[int]] = {}
    for i, fname in enumerate(formation_of):
        members.setdefault(fname, []).append(i)
    fleet = Fleet(specs, seed=seed, topology="overlay", degree=ff.degree,
                  profile=LinkProfile(latency=0.005), disk_limits=True)
    net = fleet.net
    ids = [n.node_id for n in fleet.nodes]
    for lk in ff.links:
        net.add_link_class(lk.link)
    def group(name: str) -> list[int]:
        """A formation's nodes, or the one node of that name."""
        return members[name] if name in members else [index[name]]

    class_of: dict[tuple[int, int], str] = {}
    for lk in ff.links:      # in file order: a later link wins a pair two links join
        pairs = [(mem[x], mem[y]) for fname in lk.within
                 for mem in (members[fname],)
                 for x in range(len(mem)) for y in range(x + 1, len(mem))]
        pairs += [(a, b) for fa, fb in lk.between for a in group(fa) for b in group(fb)
                  if a != b]
        for a, b in pairs:
            net.join(ids[a], ids[b], lk.link.name)
            class_of[(min(a, b), max(a, b))] = lk.link.name
    timeline = _timeline(ff, len(names), class_of)

    # content: every version's chunks on its origin; installed versions on their nodes
    manifests: dict[str, dict[str, Manifest]] = {}
    for spec in ff.models:
        by_version, tokens, sizes = _manifests(spec, fleet.publisher)
        manifests[spec.model_id] = by_version
        fleet.tokens.update(tokens)
        fleet.sizes.update(sizes)
        fleet.nodes[index[spec.origin]].disk.held.update(tokens)
        for ver in spec.versions:
            man = by_version[ver.version]
            for where in ver.installed:
                for i in (members[where] if where in members else [index[where]]):
                    node = fleet.nodes[i]
                    choice = select_variant(man, node.spec.capabilities, None)
                    if choice.variant_id is None:
                        continue
                    node.disk.held.update(c.hash for c in man.variant(choice.variant_id)
                                          .chunk_refs())
                    node.disk.installed.add((man.model_id, man.version, choice.variant_id))
                    node.disk.active[man.model_id] = man.version

    loop = fleet.loop
    log: list[dict[str, Any]] = []

    def note(at: float, what: str, **kw: Any) -> None:
        log.append({"t": round(at, 3), "event": what, **kw})

    def publish(spec_id: str, version: str, at_node: int, label: str) -> None:
        node = fleet.nodes[at_node]
        if not node.alive:
            note(loop.now, label, node=names[at_node], error="node is down")
            return
        try:
            node.machine.publish_manifest(manifests[spec_id][version], loop.now)
        except ProtocolError as exc:
            note(loop.now, label, node=names[at_node], error=f"{type(exc).__name__}: {exc}")
            return
        loop.log("publish", at_node, spec_id, version)
        note(loop.now, label, node=names[at_node], model=spec_id, version=version)
        fleet.pump(at_node)

    for spec in ff.models:
        for ver in spec.versions:
            if ver.installed:
                loop.call_at(0.0, publish, spec.model_id, ver.version, index[spec.origin],
                             "publish (installed at start)")

    issued: list[str] = []
    rollouts: list[_Rollout] = []
    origin_of = {spec.model_id: spec.origin for spec in ff.models}

    def act(a: Action) -> None:
        i = index[a.node]
        node = fleet.nodes[i]
        if a.do == "publish":
            publish(a.model, a.version, i, "publish")
            return
        entry: dict[str, Any] = {"node": a.node, "model": a.model}
        if a.version:
            entry["version"] = a.version
        if not node.alive:
            note(loop.now, a.do, **entry, error="node is down")
            return
        try:
            if a.do == "cancel":
                intent = node.machine.cancel(fleet.operator, loop.now, model_id=a.model)
            else:
                kind = IntentKind.DISTRIBUTE if a.do == "distribute" else IntentKind.ROLLBACK
                intent = node.machine.issue(fleet.operator, kind, a.model, a.version, loop.now,
                                            scope=a.scope, priority=a.priority,
                                            variant_id=a.variant, delta_from=a.delta_from)
        except ProtocolError as exc:
            note(loop.now, a.do, **entry, error=f"{type(exc).__name__}: {exc}")
            return
        issued.append(intent.intent_id)
        if a.do != "cancel":
            rollouts.append(_rollout(fleet, manifests[a.model][a.version], a,
                                     intent.intent_id, i, index[origin_of[a.model]], loop.now))
        loop.log("action", a.do, i, a.model, a.version)
        note(loop.now, a.do, **entry, intent=intent.intent_id[:16])
        fleet.pump(i)

    for action in sorted(ff.actions, key=lambda x: x.at):
        loop.call_at(action.at, act, action)

    def link_state(name: str, up: bool) -> None:
        timeline.link(loop.now, name, up)
        fleet.set_link_state(name, up)

    def split(groups: list[list[int]]) -> None:
        side = [0] * len(names)
        for g, members_of in enumerate(groups):
            for i in members_of:
                side[i] = g + 1
        timeline.split(loop.now, side)
        fleet.split(groups)

    def heal() -> None:
        timeline.split(loop.now, None)
        fleet.heal()

    def crash_node(i: int) -> None:
        timeline.node(loop.now, i, False)
        fleet.crash(i)

    def start_node(i: int) -> None:
        timeline.node(loop.now, i, True)
        fleet.start(i)

    for lk in ff.links:
        if lk.mean_up is not None:
            # random outages: up for Exp(mean_up), down for Exp(mean_down), repeated
            rng = derive_rng(seed, f"outages/{lk.link.name}")
            t = rng.expovariate(1 / lk.mean_up)
            while t < ff.duration:
                loop.call_at(t, link_state, lk.link.name, False)
                t += rng.expovariate(1 / lk.mean_down)
                loop.call_at(t, link_state, lk.link.name, True)
                t += rng.expovariate(1 / lk.mean_up)
            continue
        if lk.every is None:
            continue
        # down from time 0 unless inside a window; up at offset + k*every for up_for
        if lk.offset > 0:
            loop.call_at(0.0, link_state, lk.link.name, False)
        k = 0
        while True:
            start = lk.offset + k * lk.every
            if start > ff.duration:
                break
            loop.call_at(start, link_state, lk.link.name, True)
            if lk.up_for < lk.every:
                loop.call_at(start + lk.up_for, link_state, lk.link.name, False)
            k += 1

    for p in ff.partitions:
        groups = [[i for f in g for i in members[f]] for g in p.groups]
        loop.call_at(p.at, split, groups)
        if p.heal_at is not None:
            loop.call_at(p.heal_at, heal)
    for c in ff.crashes:
        loop.call_at(c.at, crash_node, index[c.node])
        if c.back_at is not None:
            loop.call_at(c.back_at, start_node, index[c.node])
    last_event = max([a.at for a in ff.actions] + [p.heal_at or p.at for p in ff.partitions]
                     + [c.back_at or c.at for c in ff.crashes] + [0.0])

    model_ids = [m.model_id for m in ff.models]
    tracks = {(i, m): _Track(fleet.nodes[i].disk.active.get(m),
                           fleet.nodes[i].disk.active.get(m))
              for i in range(len(names)) for m in model_ids}
    step = ff.sample_every

    def converged(i: int, m: str) -> bool:
        node = fleet.nodes[i]
        if not node.alive:
            return True     # judged when it is back
        ledger = node.machine.ledger
        if any(ledger.intent(iid) is None for iid in issued):
            return False    # an order has not reached it yet
        want = node.machine.desired(m)
        return want is None or node.disk.active.get(m) == want.version

    def sample() -> bool:
        """Note blockers; True once the run may stop."""
        now = loop.now
        for i, node in enumerate(fleet.nodes):
            for m in model_ids:
                tr = tracks[(i, m)]
                active = node.disk.active.get(m)
                if active != tr.active:
                    tr.active, tr.changed_at = active, now
                    tr.history.append((round(now, 3), active))
                if not node.alive:
                    reason = "node_down"
                else:
                    st = node.machine.model_state(m)
                    reason = st.blocker.value if st is not None and st.blocker else ""
                if reason:
                    tr.blockers[reason] = tr.blockers.get(reason, 0.0) + step
                    tr.first_blocked.setdefault(reason, now)
        return now >= last_event and all(converged(i, m) for i in range(len(names))
                                         for m in model_ids)

    t = 0.0
    stopped_early = False
    while t < ff.duration:
        t = min(ff.duration, t + step)
        fleet.run(until=t)
        if progress is not None:
            progress(t)
        if sample():
            stopped_early = True
            break

    end = loop.now
    result_nodes: dict[str, list[dict[str, Any]]] = {}
    for m in model_ids:
        for i, name in enumerate(names):
            node = fleet.nodes[i]
            want = node.machine.desired(m) if node.alive else None
            tr = tracks[(i, m)]
            row: dict[str, Any] = {
                "node": name, "model": m, "up": node.alive,
                "target": want.version if want is not None else None,
                "active": node.disk.active.get(m),
            }
            if want is not None:
                ok = node.disk.active.get(m) == want.version
                row["converged_at"] = round(tr.changed_at, 3) if ok else None
            st = node.machine.model_state(m) if node.alive else None
            row["status"] = st.status.value if st is not None else None
            row["blocker"] = st.blocker.value if st is not None and st.blocker else None
            row["activations"] = [list(h) for h in tr.history]
            row["blocked_seconds"] = {k: round(v, 3) for k, v in sorted(tr.blockers.items())}
            row["first_blocked_at"] = {k: round(v, 3)
                                       for k, v in sorted(tr.first_blocked.items())}
            result_nodes.setdefault(formation_of[i], []).append(row)

    formations_out: dict[str, Any] = {}
    for f in ff.formations:
        rows = result_nodes[f.name]
        targeted = [r for r in rows if r["target"] is not None]
        times = [r["converged_at"] for r in targeted if r.get("converged_at") is not None]
        blocked_nodes: dict[str, set[str]] = {}
        for r in rows:
            for k in r["blocked_seconds"]:
                blocked_nodes.setdefault(k, set()).add(r["node"])
        blocked = {k: len(v) for k, v in blocked_nodes.items()}
        formations_out[f.name] = {
            "nodes": len(rows) // max(1, len(model_ids)),
            "targeted": len(targeted), "converged": len(times),
            "first_converged_at": min(times) if times else None,
            "median_converged_at": statistics.median(times) if times else None,
            "last_converged_at": max(times) if len(times) == len(targeted) and times else None,
            "nodes_blocked_by": dict(sorted(blocked.items())),
            "node_rows": rows,
        }
    st = fleet.statistics()
    nst = net.statistics()
    return {
        "scenario": "run", "name": ff.name, "seed": seed, "nodes": len(names),
        "sim_seconds": end, "stopped_early": stopped_early,
        "converged": all(f["converged"] == f["targeted"] for f in formations_out.values()),
        "formations": formations_out,
        "bytes_by_link": dict(sorted(net.bytes_by_class.items())),
        "rollouts": [_against_bound(r, fleet, timeline, tracks, names) for r in rollouts],
        "links_up": {k: [[round(a, 3), round(b, 3)] for a, b in v]
                     for k, v in up_periods(timeline, end).items()},
        "bytes_sent": st.bytes_sent, "messages_lost": nst.lost,
        "actions": log, "notices": st.notices,
        "wall_seconds": time.perf_counter() - wall,
        "trace": loop.trace_digest(),
    }
