"""The simulator's scenarios: each builds a fleet, runs it and measures one thing
against its theoretical bound. Every function is a pure function of its
arguments (one seed); each returns a flat JSON-able dict.

* :func:`gossip` — rounds for an intent issued at one node to reach 99% / 100%
  of the fleet, against push-pull's ``log3 N + ln ln N`` (Karp et al., 2000),
  and the bytes a node sends per round when nothing changes.
* :func:`swarm` — time until every node holds a model, against Kumar & Ross's
  ``T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i))`` and against a hub (the
  same fleet with every node connected only to the seeder), in the same run.
* :func:`delta` — bytes fetched by nodes that hold the previous version,
  against the bytes that really changed.
* :func:`partition` — a fleet split in two during a rollout diverges, heals
  and converges.
* :func:`churn` — nodes crash and restart mid-transfer; the fleet completes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from protocol import (
    HLC,
    Config,
    GossipConfig,
    Intent,
    IntentKind,
    OverlayConfig,
    Scope,
    SwarmConfig,
    TransferPriority,
)

from ._content import SyntheticModel, build_model, derive_model
from ._fleet import PIECE_TYPE, Fleet, NodeSpec, SimNode, seeded_identity
from ._loop import derive_rng
from ._network import LinkProfile

__all__ = ["gossip", "swarm", "delta", "partition", "churn", "mbit", "gossip_bound",
           "kumar_ross_tmin"]

MiB = 1024 * 1024


def mbit(rate: float) -> float:
    """Megabits per second -> bytes per second."""
    return rate * 1_000_000 / 8


def gossip_bound(n: int) -> float:
    """Push-pull dissemination rounds: log3 N + ln ln N."""
    return math.log(n, 3) + math.log(math.log(n)) if n > 2 else 1.0


def kumar_ross_tmin(size: int, seeder_up: float, peer_up: list[float],
                    peer_down: list[float]) -> float:
    """T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i)) over the N non-seeders."""
    n = len(peer_up)
    return max(size / seeder_up, size / min(peer_down),
               n * size / (seeder_up + sum(peer_up)))


def _intent(fleet: Fleet, model_id: str, version: str, issuer: int,
            priority: TransferPriority = TransferPriority.NORMAL,
            delta_from: str | None = None) -> Intent:
    now = fleet.loop.now
    stamp = HLC(int(now * 1000), 0, fleet.nodes[issuer].node_id)
    return Intent.create(fleet.operator, IntentKind.DISTRIBUTE, model_id, version, stamp,
                         scope=Scope.all(), priority=priority, delta_from=delta_from)


def _overlay_for(n: int, degree: int | None) -> tuple[str, int]:
    """The daemon's overlay rule (``protocol/_overlay.py``) at ``degree`` (default: the
    daemon's default); a fleet of at most ``degree + 1`` nodes becomes a full mesh."""
    del n
    return "overlay", OverlayConfig().degree if degree is None else degree


# ---------------------------------------------------------------------- gossip


def gossip(nodes: int = 100, seed: int = 1, loss: float = 0.0, fanout: int = 3,
           degree: int | None = None, quiet_rounds: int = 10, settle_rounds: int = 30,
           interval: float = 1.0, heartbeat_every: int | None = None,
           push: bool = True) -> dict[str, Any]:
    """Spread one intent from node 0; count rounds to 99% and 100% of the fleet.

    ``push``: the intent floods by :class:`~protocol._gossip.GossipPush` (the default);
    False leaves it to the anti-entropy rounds, whose spread the bound is about.

    ``heartbeat_every`` is accepted and ignored: liveness is event-driven (see
    ``protocol/_gossip.py``), so every run shows the quiet floor."""
    del heartbeat_every
    wall = time.perf_counter()
    topology, degree = _overlay_for(nodes, degree)
    gcfg = GossipConfig(interval=interval, fanout=fanout, push=push)
    config = Config(fleet_id="sim", gossip=gcfg)
    specs = [NodeSpec(up=mbit(100), down=mbit(100)) for _ in range(nodes)]
    fleet = Fleet(specs, seed=seed, config=config, topology=topology, degree=degree,
                  profile=LinkProfile(latency=0.02, jitter=0.01, loss=loss))
    # let every node's own record spread (the fleet's first anti-entropy wave)
    fleet.run(until=settle_rounds * interval)
    settled_at = fleet.loop.now
    bytes_before = fleet.statistics().bytes_sent
    by_type_before = dict(fleet.bytes_by_type)
    fleet.run(until=settled_at + quiet_rounds * interval)
    quiet: float | None = None
    quiet_by_type: dict[str, float] = {}
    if quiet_rounds > 0:
        quiet = (fleet.statistics().bytes_sent - bytes_before) / (nodes * quiet_rounds)
        quiet_by_type = {k: round((v - by_type_before.get(k, 0)) / (nodes * quiet_rounds), 1)
                         for k, v in sorted(fleet.bytes_by_type.items())
                         if v != by_type_before.get(k, 0)}

    t0 = fleet.loop.now
    intent = _intent(fleet, "sim-model", "1.0.0", 0)
    iid = intent.intent_id
    known_at: dict[int, float] = {}

    def check(node: SimNode, src: str, msg: object) -> None:
        del src, msg
        if node.index not in known_at and node.machine.ledger.intent(iid) is not None:
            known_at[node.index] = fleet.loop.now

    fleet.on_receive.append(check)
    fleet.issue(0, intent)
    known_at[0] = t0
    horizon = t0 + 20 * (gossip_bound(nodes) + 10) * interval
    # on_receive runs before the machine handles the message; poll after each round too
    step = interval / 4
    t = t0
    while len(known_at) < nodes and t < horizon:
        t += step
        fleet.run(until=t)
        for node in fleet.nodes:
            if node.index not in known_at and node.machine.ledger.intent(iid) is not None:
                known_at[node.index] = fleet.loop.now
    times = sorted(v - t0 for v in known_at.values())
    need99 = math.ceil(0.99 * nodes)
    r99 = times[need99 - 1] / interval if len(times) >= need99 else None
    r100 = times[-1] / interval if len(times) == nodes else None
    bound = gossip_bound(nodes)
    sim_seconds = fleet.loop.now
    real = time.perf_counter() - wall
    return {
        "scenario": "gossip", "nodes": nodes, "seed": seed, "loss": loss, "fanout": fanout,
        "topology": topology, "degree": degree, "push": push,
        "rounds_to_99": r99, "rounds_to_100": r100, "bound": bound,
        "within_bound_plus_3": r100 is not None and r100 <= bound + 3,
        "known": len(known_at),
        "quiet_bytes_per_node_round": quiet,
        "quiet_bytes_by_type": quiet_by_type,
        "sim_seconds": sim_seconds, "wall_seconds": real,
        "node_seconds_per_second": nodes * sim_seconds / real if real > 0 else None,
        "trace": fleet.loop.trace_digest(),
    }


# ---------------------------------------------------------------------- swarm


def _specs(nodes: int, up: float, down: float, hetero: bool, seed: int) -> list[NodeSpec]:
    rng = derive_rng(seed, "specs")
    specs = [NodeSpec(up=mbit(up), down=mbit(down))]
    for _ in range(nodes - 1):
        if hetero:
            u = mbit(up) * rng.choice((0.25, 0.5, 1.0, 2.0))
            d = max(u, mbit(down) * rng.choice((0.5, 1.0, 2.0)))
            specs.append(NodeSpec(up=u, down=d))
        else:
            specs.append(NodeSpec(up=mbit(up), down=mbit(down)))
    return specs


def _transfer(fleet: Fleet, model: SyntheticModel, targets: list[int], issuer: int,
              horizon: float, priority: TransferPriority = TransferPriority.NORMAL,
              delta_from: str | None = None,
              during: Callable[[Fleet, float], None] | None = None) -> dict[str, Any]:
    """Publish ``model`` at ``issuer`` and order it everywhere; run until every node in
    ``targets`` holds every chunk of it (or ``horizon`` seconds pass)."""
    need = set(model.chunk_hashes)
    # chunks each target still lacks; a disk only grows and a write lost in a crash never
    # reaches the hook, so discarding what the hook reports keeps this exact
    missing = {i: need - fleet.nodes[i].disk.held for i in targets}
    done_at: dict[int, float] = {i: 0.0 for i, m in missing.items() if not m}
    start_bytes = {i: fleet.nodes[i].piece_bytes_in for i in targets}

    def stored(node: SimNode, chunk_hash: bytes) -> None:
        left = missing.get(node.index)
        if left is not None and chunk_hash in left:
            left.discard(chunk_hash)
            if not left:
                done_at[node.index] = fleet.loop.now

    first_piece: dict[int, float] = {}

    def receiving(node: SimNode, src: str, msg: object) -> None:
        del src
        if type(msg) is PIECE_TYPE and node.index in missing and node.index not in first_piece:
            first_piece[node.index] = fleet.loop.now

    fleet.on_store.append(stored)
    fleet.on_receive.append(receiving)
    fleet.report_uploads()   # uploads wait in the engine, not in the link
    t0 = fleet.loop.now
    fleet.publish(issuer, model)
    fleet.issue(issuer, _intent(fleet, model.manifest.model_id, model.manifest.version, issuer,
                                priority, delta_from))
    if during is not None:
        during(fleet, t0)
    fleet.run(until=t0 + horizon, stop_when=lambda: len(done_at) == len(targets))
    fleet.on_store.remove(stored)
    fleet.on_receive.remove(receiving)
    finished = len(done_at) == len(targets)
    fetched = {i: fleet.nodes[i].piece_bytes_in - start_bytes[i] for i in targets}
    return {
        "complete": finished,
        "done": len(done_at),
        "t_measured": (max(done_at.values()) - t0) if finished else None,
        "t_first_done": (min(v for v in done_at.values() if v) - t0)
        if any(done_at.values()) else None,
        "fetched": fetched,
        # the last node to receive its first piece: gossip + swarm start-up latency
        "t_startup": (max(first_piece.values()) - t0) if first_piece else None,
        "now": fleet.loop.now,
        # seconds after the order at which each finished target held everything (plots)
        "done_times": sorted(max(0.0, v - t0) for v in done_at.values()),
    }


def swarm(nodes: int = 20, size: int = 64 * MiB, up: float = 100.0, down: float = 100.0,
          seed: int = 1, hetero: bool = False, chunk_size: int = 1 * MiB,
          degree: int | None = None, hub: bool = True, latency: float = 0.01,
          swarm_config: SwarmConfig | None = None, liars: int = 0,
          timeline: bool = False) -> dict[str, Any]:
    """One seeder (node 0) holds ``size`` bytes; every other node must get them.

    ``timeline``: add ``out["timeline"]`` (per-node completion times of the swarm and
    hub runs, bytes fetched per node) for ``sim/_report.py``'s plots."""
    wall = time.perf_counter()
    specs = _specs(nodes, up, down, hetero, seed)
    if liars:
        rng = derive_rng(seed, "liars")
        for i in rng.sample(range(1, nodes), liars):
            specs[i] = replace(specs[i], liar=True)
    topology, degree = _overlay_for(nodes, degree)
    config = Config(fleet_id="sim", swarm=swarm_config or SwarmConfig())
    publisher = seeded_identity(seed, "publisher")
    model = build_model(publisher, "sim-model", "1.0.0", size, chunk_size)
    honest = [i for i in range(1, nodes) if not specs[i].liar]
    peer_up = [s.up for s in specs[1:]]
    peer_down = [s.down for s in specs[1:]]
    t_min = kumar_ross_tmin(model.size, specs[0].up, peer_up, peer_down)
    horizon = max(60.0, 20 * nodes * model.size / specs[0].up)

    def one(top: str) -> tuple[Fleet, dict[str, Any]]:
        fleet = Fleet(specs, seed=seed, config=config, topology=top, degree=degree,
                      profile=LinkProfile(latency=latency))
        # liars claim the whole model from the start, so peers do ask them
        fleet.add_content(model, [0, *(i for i in range(nodes) if specs[i].liar)])
        fleet.run(until=2.0)  # sessions up, first gossip round done
        return fleet, _transfer(fleet, model, honest, 0, horizon)

    fleet, res = one(topology)
    received = sum(n.piece_bytes_in for n in fleet.nodes)
    useful = model.size * len(honest)
    dup = max(0, received - useful) / received if received else 0.0
    out: dict[str, Any] = {
        "scenario": "swarm", "nodes": nodes, "size": model.size, "chunks": len(model.sizes),
        "chunk_size": chunk_size, "up_mbit": up, "down_mbit": down, "hetero": hetero,
        "seed": seed, "topology": topology, "degree": degree, "liars": liars,
        "complete": res["complete"], "done": res["done"],
        "t_measured": res["t_measured"], "t_first_done": res["t_first_done"],
        "t_startup": res["t_startup"], "t_min": t_min,
        "ratio": (t_min / res["t_measured"]) if res["t_measured"] else None,
        "duplicate_fraction": dup, "piece_bytes_received": received,
        "drops": fleet.statistics().drops, "notices": fleet.statistics().notices,
        "t_hub_formula": len(honest) * model.size / specs[0].up,
        # copies of the model the seeder's uplink carried (1.0 = every chunk left it once)
        "seeder_copies": fleet.net.bytes_sent_by[fleet.nodes[0].node_id] / model.size,
        "sim_events": fleet.loop.statistics().events_run,
        "sim_seconds": fleet.loop.now,   # virtual time of the swarm run (not the hub's)
    }
    if hub:
        _, hub_res = one("hub")
        out["t_hub"] = hub_res["t_measured"]
        out["hub_complete"] = hub_res["complete"]
        out["hub_speedup"] = (hub_res["t_measured"] / res["t_measured"]
                              if hub_res["t_measured"] and res["t_measured"] else None)
    if timeline:
        out["timeline"] = {"targets": len(honest), "swarm": res["done_times"],
                           "hub": hub_res["done_times"] if hub else None,
                           "bytes_per_node": sorted(res["fetched"].values())}
    out["wall_seconds"] = time.perf_counter() - wall
    out["trace"] = fleet.loop.trace_digest()
    return out


# ---------------------------------------------------------------------- delta


def delta(nodes: int = 10, size: int = 64 * MiB, changed: float = 0.1, seed: int = 1,
          chunk_size: int = 1 * MiB, up: float = 100.0, down: float = 100.0) -> dict[str, Any]:
    """Every node runs v1; v2 changes ``changed`` of the chunks; count bytes fetched."""
    wall = time.perf_counter()
    specs = _specs(nodes, up, down, False, seed)
    topology, degree = _overlay_for(nodes, None)
    fleet = Fleet(specs, seed=seed, topology=topology, degree=degree,
                  profile=LinkProfile(latency=0.01))
    v1 = build_model(fleet.publisher, "sim-model", "1.0.0", size, chunk_size)
    v2 = derive_model(fleet.publisher, v1, "1.1.0", changed)
    everyone = list(range(nodes))
    fleet.add_content(v1, everyone)
    fleet.install(v1, everyone)
    fleet.add_content(v2, [0])
    fleet.run(until=2.0)
    fleet.publish(0, v1)
    targets = list(range(1, nodes))
    res = _transfer(fleet, v2, targets, 0, horizon=max(120.0, 20 * size / mbit(up)),
                    delta_from="1.0.0")
    old = set(v1.chunk_hashes)
    bytes_changed = sum(v2.sizes[h] for h in v2.chunk_hashes if h not in old)
    fetched = sum(res["fetched"].values()) / len(targets)
    return {
        "scenario": "delta", "nodes": nodes, "size": v2.size, "changed": changed, "seed": seed,
        "complete": res["complete"], "t_measured": res["t_measured"],
        "bytes_changed": bytes_changed, "bytes_fetched": fetched,
        "ratio": fetched / bytes_changed if bytes_changed else None,
        "wall_seconds": time.perf_counter() - wall, "trace": fleet.loop.trace_digest(),
    }


# ---------------------------------------------------------------------- partition


def _ledgers_equal(fleet: Fleet, members: list[int]) -> bool:
    keys = {fleet.nodes[i].machine.ledger.state_key() for i in members}
    return len(keys) == 1


def partition(nodes: int = 12, size: int = 16 * MiB, seed: int = 1, split_at: float = 0.5,
              heal_after: float = 30.0, chunk_size: int = 1 * MiB) -> dict[str, Any]:
    """Split the fleet in two ``split_at`` s after the rollout starts; heal later."""
    wall = time.perf_counter()
    specs = _specs(nodes, 100.0, 100.0, False, seed)
    fleet = Fleet(specs, seed=seed, topology="full", profile=LinkProfile(latency=0.01))
    model = build_model(fleet.publisher, "sim-model", "1.0.0", size, chunk_size)
    fleet.add_content(model, [0])
    fleet.run(until=2.0)
    side_a = list(range(nodes // 2))
    side_b = list(range(nodes // 2, nodes))
    observed: dict[str, Any] = {}

    def during(f: Fleet, t0: float) -> None:
        f.loop.call_at(t0 + split_at, f.split, [side_a, side_b])

        def look() -> None:
            held = [len(set(model.chunk_hashes) - f.nodes[i].disk.held) == 0 for i in side_b]
            observed["b_complete_during_split"] = sum(held)
            observed["ledgers_equal_during_split"] = _ledgers_equal(f, list(range(nodes)))
            f.heal()
            observed["healed_at"] = f.loop.now - t0

        f.loop.call_at(t0 + split_at + heal_after, look)

    res = _transfer(fleet, model, list(range(1, nodes)), 0,
                    horizon=split_at + heal_after + 300.0, during=during)
    # let the ledgers settle after the transfer, then compare them
    fleet.run(until=fleet.loop.now + 15.0)
    conv = fleet.nodes[0].machine.convergence("sim-model", "1.0.0", fleet.loop.now)
    return {
        "scenario": "partition", "nodes": nodes, "seed": seed, "size": size,
        "complete": res["complete"], "t_measured": res["t_measured"], **observed,
        "ledgers_equal_after_heal": _ledgers_equal(fleet, list(range(nodes))),
        "convergence_converged": conv.converged, "convergence_total": conv.total_platforms,
        "wall_seconds": time.perf_counter() - wall, "trace": fleet.loop.trace_digest(),
    }


# ---------------------------------------------------------------------- churn


def churn(nodes: int = 16, size: int = 32 * MiB, seed: int = 1, crashes: int = 6,
          downtime: float = 5.0, chunk_size: int = 1 * MiB,
          late_joiners: int = 2) -> dict[str, Any]:
    """Nodes crash (keeping their disk) and return mid-transfer; some join late."""
    wall = time.perf_counter()
    rng = derive_rng(seed, "churn")
    specs = _specs(nodes, 50.0, 50.0, False, seed)
    late = rng.sample(range(1, nodes), late_joiners)
    for i in late:
        specs[i] = replace(specs[i], join_at=2.0 + 5.0 + rng.random() * 5.0)
    fleet = Fleet(specs, seed=seed, topology="random", degree=6,
                  profile=LinkProfile(latency=0.01, jitter=0.005))
    model = build_model(fleet.publisher, "sim-model", "1.0.0", size, chunk_size)
    fleet.add_content(model, [0])
    fleet.run(until=2.0)
    transfer_time = size / mbit(50.0)
    events: list[tuple[float, int]] = []

    def during(f: Fleet, t0: float) -> None:
        candidates = [i for i in range(1, nodes) if i not in late]
        for _ in range(crashes):
            i = rng.choice(candidates)
            at = t0 + rng.random() * transfer_time * 2
            events.append((at - t0, i))
            f.loop.call_at(at, f.crash, i)
            f.loop.call_at(at + downtime, f.start, i)

    res = _transfer(fleet, model, list(range(1, nodes)), 0, horizon=600.0, during=during)
    return {
        "scenario": "churn", "nodes": nodes, "seed": seed, "size": size,
        "crashes": sorted((round(t, 3), i) for t, i in events), "late_joiners": sorted(late),
        "complete": res["complete"], "done": res["done"], "t_measured": res["t_measured"],
        "t_min_no_churn": kumar_ross_tmin(size, mbit(50.0), [mbit(50.0)] * (nodes - 1),
                                          [mbit(50.0)] * (nodes - 1)),
        "wall_seconds": time.perf_counter() - wall, "trace": fleet.loop.trace_digest(),
    }
