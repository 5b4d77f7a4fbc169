"""Where a scenario file's rollout spends its time: per-node receive rates against the
node's downlinks while up, the origin's uplink use and its duplicate uploads, idle
downlinks while a peer across them held a chunk the node lacked, and the tail.

    python -m benchmarks.radio_trace [FILE] [--seed N]

It wraps the simulator's network (no change to what it computes) and prints a breakdown.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import sim._fleetfile as ff_mod
from protocol import Piece
from sim._fleet import Fleet
from sim._network import LinkClass, Network

FILE = Path(__file__).parent / "fleets" / "radio.toml"


class _Recorder:
    def __init__(self) -> None:
        # (src, dst, class, hash, up_start, up_done, wire bytes, lost)
        self.sent: list[tuple[str, str, str, bytes, float, float, int, bool]] = []
        # (dst, src, hash, t)
        self.arrived: list[tuple[str, str, bytes, float]] = []
        self.msgs: list[tuple[float, str, str, str]] = []   # other messages: t, src, dst, type
        self.queued_at: list[float] = []   # per sent piece: when it was handed to the link


def _instrument(rec: _Recorder) -> Any:
    orig_send = Network._send_on_class
    orig_deliver = Network._deliver

    def send_on_class(self: Network, src: str, dst: str, message: Any, size: int,
                      link: LinkClass) -> None:
        if type(message) is Piece:
            key = (src, link.name)
            now = self.loop.now
            wire = link.wire_bytes(size)
            start = max(now, self._if_up_free.get(key, 0.0))
            lost_before = self._lost
            orig_send(self, src, dst, message, size, link)
            rec.sent.append((src, dst, link.name, message.chunk_hash, start,
                             start + wire / link.up, wire, self._lost > lost_before))
            rec.queued_at.append(now)
            return
        rec.msgs.append((self.loop.now, src, dst, type(message).__name__))
        orig_send(self, src, dst, message, size, link)

    def deliver(self: Network, src: str, dst: str, message: Any, size: int,
                epochs: tuple[int, int]) -> None:
        if type(message) is Piece:
            rec.arrived.append((dst, src, message.chunk_hash, self.loop.now))
        orig_deliver(self, src, dst, message, size, epochs)

    Network._send_on_class = send_on_class    # type: ignore[method-assign]
    Network._deliver = deliver                # type: ignore[method-assign]
    return orig_send, orig_deliver


def analyse(path: Path, seed: int,
            window: tuple[float, float] = (65.0, 125.0)) -> dict[str, Any]:
    rec = _Recorder()
    orig = _instrument(rec)
    fleets: list[Fleet] = []

    class _Kept(Fleet):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            fleets.append(self)

    try:
        ff = ff_mod.load(path)
        ff_mod.Fleet = _Kept   # type: ignore[misc]
        result = ff_mod.simulate(ff, seed=seed)
    finally:
        ff_mod.Fleet = Fleet   # type: ignore[misc]
        Network._send_on_class, Network._deliver = orig   # type: ignore[method-assign]
    name_of = {n.node_id: n.spec.name for n in fleets[0].nodes}
    rec.sent = [(name_of[s], name_of[d], *rest) for s, d, *rest in rec.sent]
    rec.arrived = [(name_of[d], name_of[s], h, t) for d, s, h, t in rec.arrived]
    rec.msgs = [(t, name_of[s], name_of[d], k) for t, s, d, k in rec.msgs]
    (r,) = result["rollouts"]
    t0 = r["at"]
    links_up = result["links_up"]
    done: dict[str, float] = {}
    for rows in result["formations"].values():
        for row in rows["node_rows"]:
            if row.get("converged_at") is not None:
                done[row["node"]] = row["converged_at"]
    names = [n for rows in result["formations"].values() for n in
             (row["node"] for row in rows["node_rows"])]
    formation = {row["node"]: f for f, rows in result["formations"].items()
                 for row in rows["node_rows"]}
    links = {lk.link.name: lk for lk in ff.links}
    member_classes: dict[str, set[str]] = defaultdict(set)
    for name, lk in links.items():
        for n in names:
            if formation[n] in lk.within or any(formation[n] in pair or n in pair
                                                for pair in lk.between):
                member_classes[n].add(name)

    def up_time(cls: str, a: float, b: float) -> float:
        return sum(max(0.0, min(b, y) - max(a, x)) for x, y in links_up[cls])

    origin = ff.models[0].origin
    model_bytes = ff.models[0].variants[0].size
    out: dict[str, Any] = {"seed": seed, "ratio": r["ratio"], "measured_s": r["measured_s"],
                           "bound_s": r["bound_s"], "t0": t0, "done": done}
    # 1. per node: bytes received per class against the class's downlink while up
    recv: dict[tuple[str, str], float] = defaultdict(float)
    for _src, dst, cls, _h, _a, _b, wire, lost in rec.sent:
        if not lost:
            recv[(dst, cls)] += wire
    rows = []
    for n in names:
        if n == origin or n not in done:
            continue
        end = done[n]
        parts = []
        for cls in sorted(member_classes[n]):
            cap = links[cls].link.down * up_time(cls, t0, end)
            parts.append((cls, recv[(n, cls)], cap))
        rows.append((n, end - t0, parts))
    out["per_node"] = rows
    # 2. the origin: uplink busy time per class, and duplicates
    busy: dict[str, float] = defaultdict(float)
    first_seen: dict[bytes, int] = defaultdict(int)
    dup_bytes = 0
    sent_bytes = 0
    last_new = t0
    for src, _dst, cls, h, a, b, wire, _lost in sorted(rec.sent, key=lambda s: s[4]):
        if src != origin:
            continue
        busy[cls] += b - a
        sent_bytes += wire
        first_seen[h] += 1
        if first_seen[h] > 1:
            dup_bytes += wire
        else:
            last_new = b
    last = max(done.values())
    out["origin"] = {
        "sent_bytes": sent_bytes, "duplicate_bytes": dup_bytes, "model_bytes": model_bytes,
        "distinct_chunks": len(first_seen), "last_new_chunk_done": last_new - t0,
        "busy": {cls: (busy[cls], up_time(cls, t0, last)) for cls in sorted(busy)},
        "busy_until_all_sent": {cls: (busy_until(rec, origin, cls, last_new),
                                      up_time(cls, t0, last_new)) for cls in sorted(busy)},
    }
    # duplicates fleet-wide: a chunk delivered to a node that already had it
    got: set[tuple[str, bytes]] = set()
    waste = 0
    for dst, _src, h, _t in rec.arrived:
        if (dst, h) in got:
            waste += 1
        got.add((dst, h))
    lost_n = sum(1 for s in rec.sent if s[7])
    out["pieces"] = {"sent": len(rec.sent), "lost": lost_n, "delivered": len(rec.arrived),
                     "duplicate_deliveries": waste}
    # 3. idle downlinks: per 1 s step and node, a class up, nothing arriving on it,
    # while a peer on that class held a chunk this node lacked (held = delivered to it)
    holds: dict[str, list[tuple[float, bytes]]] = defaultdict(list)
    for dst, _src, h, t in rec.arrived:
        holds[dst].append((t, h))
    chunks_total = len({a[2] for a in rec.arrived})
    peers_on: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cls, lk in links.items():
        for n in names:
            if cls not in member_classes[n]:
                continue
            for m in names:
                if m != n and cls in member_classes[m] and _joined(lk, formation, n, m):
                    peers_on[(n, cls)].append(m)
    busy_steps: dict[tuple[str, str], set[int]] = defaultdict(set)
    for _src, dst, cls, _h, a, b, _w, lost in rec.sent:
        if lost:
            continue
        for s in range(int(a), math.ceil(b) + 1):
            busy_steps[(dst, cls)].add(s)
    idle: dict[str, float] = defaultdict(float)
    sets_at: dict[str, list[tuple[float, bytes]]] = {n: sorted(v) for n, v in holds.items()}
    for n in names:
        if n == origin or n not in done:
            continue
        for cls in member_classes[n]:
            for s in range(int(t0), int(done[n])):
                if up_time(cls, s, s + 1) < 1 or s in busy_steps[(n, cls)]:
                    continue
                mine = {h for t, h in sets_at.get(n, []) if t <= s}
                if any(m == origin or len({h for t, h in sets_at.get(m, []) if t <= s}
                                           - mine) > 0 for m in peers_on[(n, cls)]):
                    idle[cls] += 1
    out["idle_downlink_seconds"] = dict(idle)
    out["chunks"] = chunks_total
    # 4. interface use in the middle of the run (both classes up, transfers in full flow)
    a0, b0 = window
    up_busy: dict[tuple[str, str], float] = defaultdict(float)
    down_busy: dict[tuple[str, str], float] = defaultdict(float)
    for src, dst, cls, _h, a, b, _w, lost in rec.sent:
        x = max(0.0, min(b0, b) - max(a0, a))
        up_busy[(src, cls)] += x
        if not lost:
            down_busy[(dst, cls)] += x
    out["window"] = window
    out["busy"] = {f"{n} {c}": (round(up_busy[(n, c)] / (b0 - a0), 2),
                                round(down_busy[(n, c)] / (b0 - a0), 2))
                   for n, c in sorted(set(up_busy) | set(down_busy))}
    # 5. the tail: when each node had its 120th, its next-to-last and its last chunk
    first: dict[str, dict[bytes, float]] = defaultdict(dict)
    for dst, _src, h, t in sorted(rec.arrived, key=lambda x: x[3]):
        first[dst].setdefault(h, t)
    tail = {}
    for n, times in sorted(first.items()):
        ts = sorted(times.values())
        if len(ts) >= chunks_total >= 2:
            tail[n] = (round(ts[int(0.94 * chunks_total) - 1] - t0, 1),
                       round(ts[-2] - t0, 1), round(ts[-1] - t0, 1),
                       round(done.get(n, math.nan) - t0, 1))
    out["tail"] = tail
    return out


def busy_until(rec: _Recorder, node: str, cls: str, until: float) -> float:
    return sum(max(0.0, min(b, until) - a) for s, _d, c, _h, a, b, _w, _l in rec.sent
               if s == node and c == cls and a < until)


def _joined(lk: Any, formation: dict[str, str], a: str, b: str) -> bool:
    fa, fb = formation[a], formation[b]
    if fa == fb and fa in lk.within:
        return True
    for x, y in lk.between:
        if (fa == x or a == x) and (fb == y or b == y):
            return True
        if (fa == y or a == y) and (fb == x or b == x):
            return True
    return False


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.radio_trace")
    p.add_argument("file", nargs="?", default=str(FILE))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--window", type=float, nargs=2, default=(65.0, 125.0),
                   help="seconds between which interface use is reported")
    args = p.parse_args()
    res = analyse(Path(args.file), args.seed, tuple(args.window))
    print(f"seed {res['seed']}: ratio {res['ratio']} ({res['measured_s']} s against "
          f"{res['bound_s']} s), order at {res['t0']} s")
    print("per node: class received/capacity while up (until it converged)")
    for n, took, parts in res["per_node"]:
        cells = "  ".join(f"{c} {got / 1e6:5.2f}/{cap / 1e6:5.2f} MB ({got / cap:4.0%})"
                          if cap else f"{c} -" for c, got, cap in parts)
        print(f"  {n:>10} done +{took:6.1f} s  {cells}")
    o = res["origin"]
    print(f"origin: sent {o['sent_bytes'] / 2**20:.1f} MiB for a {o['model_bytes'] / 2**20:.0f}"
          f" MiB model, duplicates {o['duplicate_bytes'] / 2**20:.1f} MiB; "
          f"last new chunk out at +{o['last_new_chunk_done']:.1f} s")
    for cls, (b, u) in o["busy"].items():
        bu, uu = o["busy_until_all_sent"][cls]
        print(f"  uplink {cls}: busy {b:.1f} s of {u:.1f} s up until the end; "
              f"{bu:.1f} of {uu:.1f} s until the last new chunk")
    print(f"pieces: {res['pieces']}")
    print(f"idle downlink seconds while a peer across held a chunk the node lacked: "
          f"{ {k: round(v) for k, v in res['idle_downlink_seconds'].items()} }")
    a, b = res["window"]
    print(f"interfaces busy from {a:g} to {b:g} s (up, down):")
    for k, (u, d) in res["busy"].items():
        print(f"  {k:<18} up {u:4.0%}  down {d:4.0%}")
    print("tail (s after the order): 94 % of chunks, next-to-last, last, converged")
    for n, row in res["tail"].items():
        print(f"  {n:>10} {row}")


if __name__ == "__main__":
    main()
