"""The simulator against real daemons (issue 18): each scenario file of
``tests/data/fleets/reality-*.toml`` run in the simulator and with real daemons in
network namespaces, tbf on the links (``tests/test_sim_reality.py`` builds both and
describes how). Reported: real/simulated completion time, both times in the detail.
Needs root, ``ip`` and ``tc``; elsewhere one row says why it did not run. The same in
quick and full mode (about 35 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.test_sim_reality import Unavailable, measure

CASES = [("reality-pair.toml", "bp", "10.213.51"), ("reality-4.toml", "b4", "10.213.54")]


def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, tag, subnet in CASES:
        label = f"sim vs real {name.removesuffix('.toml')}: real/sim completion"
        with tempfile.TemporaryDirectory(prefix="shoal-reality-") as base:
            try:
                _, t_sim, t_real = measure(name, tag, subnet, Path(base))
            except Unavailable as exc:
                rows.append({"name": label, "value": None, "unit": "ratio",
                             "detail": f"not run: {exc}"})
                continue
        rows.append({"name": label, "value": round(t_real / t_sim, 3), "unit": "ratio",
                     "detail": f"sim {t_sim:.2f} s, real {t_real:.2f} s; aim within 25 %"})
    return rows
