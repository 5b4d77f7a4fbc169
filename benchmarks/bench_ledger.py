"""A ledger bounded by the live fleet (issue 21): many rollouts of a 1 GiB model in
128 KiB chunks (8,192 chunks a version) across a simulated fleet, with history
forgotten as it settles, side by side with the same run keeping everything.

Every node already holds each version's chunks (``Fleet.add_content``), so a rollout
moves no model bytes in the simulator; what it runs is everything the ledger sees of a
real rollout -- manifest and intent pushed and gossiped, every node installing and
writing its record, the settle, the retirement, versions removed from disk. Figures,
at one node (the median id), after rollout 2 and after the last:

* ledger bytes: the encoded size of the entries it holds;
* ledger memory: what a fresh ``Ledger`` holding those entries takes (tracemalloc);
* what a node that joins then must sync: the entries a peer's ``delta_since({})``
  ships, and the virtual seconds until the joiner holds the fleet's live intents;
* gossip bytes per node during the rollout (``GossipDelta``, ``GossipDigest``,
  ``GossipPush``, ``GossipSummary``, ``GossipBuckets``, ``GossipWant``, and the
  manifest bodies fetched by id: ``BodyWant``, ``BodyAnswer``).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import blake3

from protocol import (
    HLC,
    ChunkRef,
    Config,
    Entry,
    Intent,
    IntentKind,
    Ledger,
    LedgerConfig,
    Scope,
    ScopeKind,
    decode_value,
    encoded_entry,
)
from sim._content import VARIANT_ID, SyntheticModel, _assemble, build_model
from sim._fleet import Fleet
from sim._network import LinkProfile
from sim._scenarios import _overlay_for, _specs

GiB, KiB = 1 << 30, 1 << 10
SETTLE_WAIT = 30.0   # virtual seconds after a rollout: three passes of the node's retirement
_GOSSIP = ("GossipDelta", "GossipDigest", "GossipPush", "GossipSummary", "GossipBuckets",
           "GossipWant", "BodyWant", "BodyAnswer")


def _ledger_memory(led: Ledger) -> int:
    """Bytes a ledger holding ``led``'s entries takes, its entries decoded afresh (the
    objects of a running node, not shared with ``led``)."""
    raw = [encoded_entry(e) for e in led.entries()]
    vv = {o: (0, c) for o, c in led.version_vector.items()}
    tracemalloc.start()
    try:
        fresh = Ledger(led.trust, relay_quota=1 << 30)
        fresh.merge_entries([decode_value(Entry, r) for r in raw], vv, limits=False)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del fresh
    return size


def _joiner(fleet: Fleet, index: int) -> tuple[int, float]:
    """Crash node ``index``, forget its ledger, start it: (bytes a peer's full delta
    ships, virtual seconds until it holds the live intents node 0 holds)."""
    peer = fleet.nodes[0].disk.ledger
    assert peer is not None
    shipped = sum(p.size for p in peer.delta_since({}))
    want = {i.intent_id for i in peer.intents()}
    fleet.crash(index)
    fleet.nodes[index].disk.ledger = None
    t0 = fleet.loop.now
    fleet.start(index)

    def caught_up() -> bool:
        m = fleet.nodes[index].machine
        return m is not None and {i.intent_id for i in m.ledger.intents()} == want
    fleet.run(until=t0 + 120, stop_when=caught_up)
    return shipped, fleet.loop.now - t0


def _versions(fleet: Fleet, count: int) -> list[SyntheticModel]:
    """``count`` versions of a 1 GiB model in 128 KiB chunks, each changing 5 % of
    the chunks of the one before (a run at a different place each time)."""
    first = build_model(fleet.publisher, "m", "1.0.1", GiB, 128 * KiB)
    refs = list(first.manifest.variant(VARIANT_ID).files[0].chunks)
    out = [first]
    run = len(refs) // 20
    for k in range(2, count + 1):
        version = f"1.0.{k}"
        tokens: dict[bytes, bytes] = {}
        sizes: dict[bytes, int] = {}
        start = (k * 7919 * run) % (len(refs) - run)
        for i in range(start, start + run):
            token = f"m/{version}/{i}".encode()
            h = blake3.blake3(token).digest()
            tokens[h], sizes[h] = token, refs[i].size
            refs[i] = ChunkRef(h, refs[i].size)
        out.append(SyntheticModel(_assemble(fleet.publisher, "m", version, list(refs), 0,
                                            None), tokens, sizes))
    return out


def rollouts(nodes: int, count: int, *, retire: bool, seed: int = 1) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    config = Config(fleet_id="sim", ledger=LedgerConfig(retire=retire,
                                                          keep_versions=2 if retire else 0))
    specs = _specs(nodes, 100.0, 100.0, False, seed)
    topology, degree = _overlay_for(nodes, None)
    fleet = Fleet(specs, seed=seed, topology=topology, degree=degree, config=config,
                  profile=LinkProfile(latency=0.01))
    everyone = list(range(nodes))
    models = _versions(fleet, count)
    for model in models:       # on every disk before the nodes start: no transfers
        fleet.add_content(model, everyone)
    fleet.run(until=2.0)
    watch = nodes // 2
    out: dict[str, Any] = {"nodes": nodes, "rollouts": count, "retire": retire}
    series: list[float] = []      # gossip and manifest bytes per node, each rollout
    for k, model in enumerate(models, start=1):
        version = model.manifest.version
        before = {t: fleet.bytes_by_type.get(t, 0) for t in _GOSSIP}
        fleet.publish(0, model)
        fleet.issue(0, Intent.create(fleet.operator, IntentKind.DISTRIBUTE, "m", version,
                                     HLC(int(fleet.loop.now * 1000), 0, "op"),
                                     scope=Scope.all()))

        def done(v: str = version) -> bool:
            for node in fleet.nodes:
                m = node.machine
                st = m.model_state("m") if m is not None else None
                if st is None or st.active_version != v:
                    return False
            return True
        fleet.run(until=fleet.loop.now + 600, stop_when=done)
        gossip = sum(fleet.bytes_by_type.get(t, 0) - before[t] for t in _GOSSIP)
        series.append(gossip / nodes)
        fleet.run(until=fleet.loop.now + SETTLE_WAIT)   # settle, and forget
        if k in (2, count):
            led = fleet.nodes[watch].disk.ledger
            assert led is not None
            tag = "first" if k == 2 else "last"
            out[f"{tag}_ledger_bytes"] = sum(len(encoded_entry(e)) for e in led.entries())
            out[f"{tag}_ledger_entries"] = len(list(led.entries()))
            out[f"{tag}_ledger_memory"] = _ledger_memory(led)
            out[f"{tag}_gossip_per_node"] = gossip / nodes
            # JOINERS nodes in turn (one join's time depends on when gossip picks it:
            # the mean of several); a node that joins after rollout 2 is measured in
            # this run: it rejoins and the run goes on
            joins = [_joiner(fleet, nodes - 1 - j) for j in range(JOINERS)]
            out[f"{tag}_join_bytes"] = joins[0][0]
            out[f"{tag}_join_s"] = sum(t for _, t in joins) / len(joins)
            out[f"{tag}_join_each_s"] = [round(t, 3) for _, t in joins]
    # one rollout's bytes vary with the timing of the asks (a second copy of a body);
    # the mean of the first and of the last tenth of the rollouts (rollout 1 aside)
    tenth = max(1, (count - 1) // 10)
    out["first_tenth_gossip_per_node"] = sum(series[1:1 + tenth]) / tenth
    out["last_tenth_gossip_per_node"] = sum(series[-tenth:]) / tenth
    out["gossip_series"] = [round(x) for x in series]
    out["wall_s"] = time.perf_counter() - wall
    out["cpu_s"] = time.process_time() - cpu
    return out


JOINERS = 5     # nodes that rejoin, one after another, at each of the two points

_MANIFEST_BYTES = ("GossipDelta", "GossipPush", "GossipWant", "BodyWant", "BodyAnswer")


def scoped(nodes: int, targets: int, seed: int = 1) -> dict[str, Any]:
    """One rollout of a 1 GiB model (8,192 chunks of 128 KiB, on every disk already)
    to ``targets`` nodes of ``nodes``: the bytes of ledger entries and manifest bodies
    the fleet's links carried, and how many nodes hold the chunk list after it."""
    specs = _specs(nodes, 100.0, 100.0, False, seed)
    topology, degree = _overlay_for(nodes, None)
    fleet = Fleet(specs, seed=seed, topology=topology, degree=degree,
                  config=Config(fleet_id="sim"), profile=LinkProfile(latency=0.01))
    model = _versions(fleet, 1)[0]
    fleet.add_content(model, range(nodes))
    fleet.run(until=2.0)
    before = {t: fleet.bytes_by_type.get(t, 0) for t in _MANIFEST_BYTES}
    names = tuple(fleet.nodes[i].machine.node_id for i in range(1, targets + 1))  # type: ignore[union-attr]
    fleet.publish(0, model)
    fleet.issue(0, Intent.create(fleet.operator, IntentKind.DISTRIBUTE, "m",
                                 model.manifest.version,
                                 HLC(int(fleet.loop.now * 1000), 0, "op"),
                                 scope=Scope(ScopeKind.NODES, nodes=names)))
    version = model.manifest.version

    def done() -> bool:
        for i in range(1, targets + 1):
            m = fleet.nodes[i].machine
            st = m.model_state("m") if m is not None else None
            if st is None or st.active_version != version:
                return False
        return True
    t0 = fleet.loop.now
    fleet.run(until=t0 + 600, stop_when=done)
    took = fleet.loop.now - t0
    fleet.run(until=fleet.loop.now + 10)
    carried = sum(fleet.bytes_by_type.get(t, 0) - before[t] for t in _MANIFEST_BYTES)
    holding = sum(1 for n in fleet.nodes if n.machine is not None
                  and n.machine.ledger.manifest_for("m", version) is not None)
    return {"nodes": nodes, "targets": targets, "manifest_bytes": carried,
            "chunk_lists_held": holding, "rollout_s": took,
            "manifest_size": len(encoded_entry(Entry.create(fleet.publisher, 1,
                                                             model.manifest)))}


def run(quick: bool) -> list[dict[str, Any]]:
    # keeping everything costs every node a decoded manifest per version (about 1 MiB
    # each at 8,192 chunks), so that side runs fewer rollouts: its growth is linear
    nodes, count, keep_count = (20, 10, 10) if quick else (100, 100, 10)
    rows: list[dict[str, Any]] = []
    sc = scoped(nodes, 2)
    rows.append({"name": f"N={nodes}, one rollout to 2 nodes: ledger and manifest bytes "
                         "carried per node", "value": round(sc["manifest_bytes"] / nodes),
                 "unit": "B", "detail": f"{sc['chunk_lists_held']} nodes hold the chunk list; "
                                        f"ledger entry {sc['manifest_size']} B; "
                                        f"rollout {sc['rollout_s']:.2f} s (virtual)"})
    for retire, n in ((True, count), (False, keep_count)):
        r = rollouts(nodes, n, retire=retire)
        name = f"N={nodes}, {n} rollouts, {'retiring' if retire else 'keeping all'}"
        for what, unit in (("ledger_bytes", "B"), ("ledger_memory", "B"),
                           ("join_bytes", "B"), ("gossip_per_node", "B"),
                           ("tenth_gossip_per_node", "B")):
            first, last = r[f"first_{what}"], r[f"last_{what}"]
            when = "last / first tenth of the rollouts" if what.startswith("tenth") \
                else f"after {n} / after 2"
            rows.append({"name": f"{name}: {what} {when}",
                         "value": round(last / first, 3), "unit": "x",
                         "detail": f"{last:.0f} / {first:.0f} {unit}"})
        rows.append({"name": f"{name}: joiner catches up (s, virtual)",
                     "value": round(r["last_join_s"], 2), "unit": "s",
                     "detail": f"mean of {JOINERS}; after 2: {r['first_join_s']:.2f} s; "
                               f"wall {r['wall_s']:.0f} s, cpu {r['cpu_s']:.0f} s"})
    return rows


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
