"""Run every ``benchmarks/bench_*.py`` (or those named on the command line).

Each module exposes ``run(quick: bool) -> list[dict]``; every dict has at least
``name``, ``value``, ``unit`` and may add ``detail``. Results print as a table and
are written to ``.bench/results.json`` with the date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("only", nargs="*", help="module names (e.g. bench_publish)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n in args.only or n.removeprefix("bench_") in args.only]
    results: list[dict[str, Any]] = []
    for name in names:
        print(f"== {name}", flush=True)
        mod = importlib.import_module(f"benchmarks.{name}")
        for row in mod.run(quick=args.quick):
            row = {"module": name, **row}
            results.append(row)
            detail = f"  ({row['detail']})" if row.get("detail") else ""
            print(f"  {row['name']:<58} {row['value']:>14} {row['unit']}{detail}", flush=True)
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
