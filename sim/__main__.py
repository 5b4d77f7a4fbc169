"""``python -m sim`` / ``shoal-sim``: run one scenario and print what it measured.

Examples::

    shoal-sim gossip --nodes 1000 --seed 1 --json
    shoal-sim swarm --nodes 100 --size 1073741824 --up 100 --down 100 --seed 1
    shoal-sim swarm --nodes 20 --size 16M --plot swarm.png --html swarm.html
    shoal-sim delta --nodes 10 --size 67108864 --changed 0.1 --json --out delta.json
    shoal-sim run examples/fleets/factory.toml --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import _scenarios as sc


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal-sim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="scenario", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--seed", type=int, default=1)
        q.add_argument("--json", action="store_true", help="print one JSON object")
        q.add_argument("--out", type=Path, help="also write the JSON result to this file")

    g = sub.add_parser("gossip", help="intent dissemination rounds and quiet-fleet bytes")
    g.add_argument("--nodes", type=int, default=100)
    g.add_argument("--loss", type=float, default=0.0)
    g.add_argument("--fanout", type=int, default=3)
    g.add_argument("--degree", type=int, default=None)
    g.add_argument("--no-push", action="store_true",
                   help="leave the intent to anti-entropy rounds (gossip.push = false)")
    g.add_argument("--settle-rounds", type=int, default=30,
                   help="rounds the fleet runs before the quiet rounds (its records spread)")
    g.add_argument("--quiet-rounds", type=int, default=10,
                   help="rounds over which quiet bytes are measured (0: not measured)")
    common(g)

    s = sub.add_parser("swarm", help="distribution time against Kumar-Ross T_min and a hub")
    s.add_argument("--nodes", type=int, default=20)
    s.add_argument("--size", type=_size, default=64 * sc.MiB, help="bytes (or 64M, 1G)")
    s.add_argument("--up", type=float, default=100.0, help="upload Mbit/s per node")
    s.add_argument("--down", type=float, default=100.0, help="download Mbit/s per node")
    s.add_argument("--hetero", action="store_true", help="draw per-node rates around up/down")
    s.add_argument("--chunk-size", type=_size, default=sc.MiB)
    s.add_argument("--degree", type=int, default=None)
    s.add_argument("--liars", type=int, default=0, help="nodes that serve wrong bytes")
    s.add_argument("--no-hub", action="store_true", help="skip the hub baseline run")
    s.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw convergence over time (with T_min and the hub) and bytes "
                        "per node to this PNG")
    s.add_argument("--html", type=Path, metavar="HTML",
                   help="write a one-page report (plots + summary table) to this file")
    common(s)

    d = sub.add_parser("delta", help="bytes fetched for a new version against bytes changed")
    d.add_argument("--nodes", type=int, default=10)
    d.add_argument("--size", type=_size, default=64 * sc.MiB)
    d.add_argument("--changed", type=float, default=0.1)
    d.add_argument("--chunk-size", type=_size, default=sc.MiB)
    common(d)

    pa = sub.add_parser("partition", help="split during a rollout, heal, converge")
    pa.add_argument("--nodes", type=int, default=12)
    pa.add_argument("--size", type=_size, default=16 * sc.MiB)
    pa.add_argument("--heal-after", type=float, default=30.0)
    common(pa)

    c = sub.add_parser("churn", help="nodes crash and return mid-transfer")
    c.add_argument("--nodes", type=int, default=16)
    c.add_argument("--size", type=_size, default=32 * sc.MiB)
    c.add_argument("--crashes", type=int, default=6)
    common(c)

    r = sub.add_parser("run", help="simulate a fleet described by a scenario file "
                                   "(docs/SIMULATOR.md, \"Scenario files\")")
    r.add_argument("file", type=Path, metavar="FLEET.toml")
    r.add_argument("--seed", type=int, default=None, help="override the file's run.seed")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--out", type=Path, help="also write the JSON result to this file")
    r.add_argument("--plot", type=Path, metavar="PNG",
                   help="write convergence per formation, links and crashes over time")
    r.add_argument("--html", type=Path, metavar="HTML",
                   help="write a self-contained report (the plot and every table)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenario == "run":
        from ._fleetfile import load, simulate

        return simulate(load(args.file), seed=args.seed)
    if args.scenario == "gossip":
        return sc.gossip(nodes=args.nodes, seed=args.seed, loss=args.loss, fanout=args.fanout,
                         degree=args.degree, push=not args.no_push,
                         settle_rounds=args.settle_rounds, quiet_rounds=args.quiet_rounds)
    if args.scenario == "swarm":
        return sc.swarm(nodes=args.nodes, size=args.size, up=args.up, down=args.down,
                        seed=args.seed, hetero=args.hetero, chunk_size=args.chunk_size,
                        degree=args.degree, hub=not args.no_hub, liars=args.liars,
                        timeline=bool(args.plot or args.html))
    if args.scenario == "delta":
        return sc.delta(nodes=args.nodes, size=args.size, changed=args.changed, seed=args.seed,
                        chunk_size=args.chunk_size)
    if args.scenario == "partition":
        return sc.partition(nodes=args.nodes, size=args.size, seed=args.seed,
                            heal_after=args.heal_after)
    return sc.churn(nodes=args.nodes, size=args.size, seed=args.seed, crashes=args.crashes)


def _fmt_t(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _status(row: dict[str, Any]) -> str:
    return str(row["status"] or "-") if row["up"] else "down"


def _human_run(result: dict[str, Any]) -> str:
    lines = [f"fleet {result['name']}  seed {result['seed']}  {result['nodes']} nodes  "
             f"{result['sim_seconds']:.1f} s simulated"
             f"{' (stopped: converged)' if result['stopped_early'] else ''}  "
             f"converged {result['converged']}"]
    for a in result["actions"]:
        extra = f"  ERROR {a['error']}" if "error" in a else ""
        what = " ".join(str(a[k]) for k in ("model", "version") if k in a)
        lines.append(f"  t={a['t']:>9.1f}s  {a['event']:<10} at {a['node']} {what}{extra}")
    for name, f in result["formations"].items():
        blocked = ", ".join(f"{k} ({n})" for k, n in f["nodes_blocked_by"].items()) or "nothing"
        lines.append(f"formation {name}: {f['converged']}/{f['targeted']} targeted nodes "
                     f"converged (of {f['nodes']}); first {_fmt_t(f['first_converged_at'])}, "
                     f"median {_fmt_t(f['median_converged_at'])}, "
                     f"last {_fmt_t(f['last_converged_at'])}; blocked by {blocked}")
        for row in f["node_rows"]:
            blockers = ", ".join(f"{k} {v:.0f}s" for k, v in row["blocked_seconds"].items())
            lines.append(f"  {row['node']:<16} {row['model']:<12} target {row['target'] or '-':<8}"
                         f" active {row['active'] or '-':<8} converged "
                         f"{_fmt_t(row.get('converged_at')):<9} {_status(row):<13}"
                         f" {('blocked: ' + blockers) if blockers else ''}")
    for r in result.get("rollouts", []):
        head = f"rollout {r['action']} {r['model']} {r['version']} at t={r['at']:.1f}s: "
        bound = "-" if r["bound_s"] is None else f"{r['bound_s']:.1f}s"
        if not r["targets"]:
            lines.append(head + "no node follows it at the end (superseded or cancelled)")
        elif r["measured_s"] is None:
            lines.append(head + f"{r['carried_out']}/{r['targets']} targets ran it, "
                         f"{r['targets'] - r['carried_out']} never did (see their blockers); "
                         f"bound {bound} over the connected periods")
        else:
            ratio = "" if r["ratio"] is None else f" = {r['ratio']:.2f}x"
            lines.append(head + f"{r['targets']} targets, took {r['measured_s']:.1f}s "
                         f"against a bound of {bound} over the connected periods{ratio}")
    lines.append("bytes by link: " + ", ".join(f"{k} {v / 1e6:.1f} MB"
                                               for k, v in result["bytes_by_link"].items()))
    lines.append(f"trace {result['trace']}")
    return "\n".join(lines)


def _human(result: dict[str, Any]) -> str:
    if result.get("scenario") == "run":
        return _human_run(result)
    lines = [f"scenario {result['scenario']}"]
    for key, value in result.items():
        if key == "scenario":
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"  {key:<28} {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wants = [opt for opt in ("plot", "html") if getattr(args, opt, None)]
    if wants:      # before the run, which may take minutes
        from . import _report

        try:
            _report.require_matplotlib()
        except _report.MissingExtra as exc:
            print(f"shoal-sim: error: --{wants[0]} needs {exc.package}: "
                  f"pip install 'shoal[{exc.extra}]'", file=sys.stderr)
            return 2
    if args.scenario == "run":
        from ._fleetfile import FleetFileError

        try:
            result = run(args)
        except FleetFileError as exc:
            print(f"shoal-sim: error: {args.file}: {exc}", file=sys.stderr)
            return 2
    else:
        result = run(args)
    text = json.dumps(result, sort_keys=True, default=str)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.scenario == "run" and (args.plot or args.html):
        from . import _fleetreport

        png = _fleetreport.plot_png(result)
        if args.plot:
            args.plot.write_bytes(png)
        if args.html:
            _fleetreport.html(result, args.html, png)
    elif getattr(args, "plot", None) or getattr(args, "html", None):
        from . import _report

        png = _report.plot_png([result])
        if args.plot:
            args.plot.write_bytes(png)
        if args.html:
            _report.html([result], args.html, png)
        result = {k: v for k, v in result.items() if k != "timeline"}
        text = json.dumps(result, sort_keys=True, default=str)
    print(text if args.json else _human(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
