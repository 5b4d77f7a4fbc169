"""A toy model that learns its decision threshold on the node.

    python model.py learn 0.7 0.9 0.8    # fold observations into the threshold
    python model.py predict 0.75         # prints "positive" or "negative"
    python model.py show                 # prints the state as JSON

The learned state lives in ``state/threshold.json`` (relative to the version
directory, the working directory the agent gives it); everything else in the
version is immutable. ``migrate.py`` carries the state across upgrades and
names it for ``shoal export``.
"""

from __future__ import annotations

import json
import os
import sys

MODEL_VERSION = "1"
STATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state", "threshold.json")


def load() -> dict[str, float]:
    with open(STATE, encoding="utf-8") as f:
        return dict(json.load(f))


def save(state: dict[str, float]) -> None:
    tmp = STATE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, sort_keys=True)
    os.replace(tmp, STATE)


def learn(values: list[float]) -> dict[str, float]:
    """The threshold is the running mean of every value observed so far."""
    state = load()
    n, t = int(state["samples"]), float(state["threshold"])
    for v in values:
        n += 1
        t += (v - t) / n
    state = {"threshold": t, "samples": n}
    save(state)
    return state


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], [float(a) for a in argv[1:]]
    if cmd == "learn":
        print(json.dumps(learn(args), sort_keys=True))
    elif cmd == "predict":
        print("positive" if args[0] >= load()["threshold"] else "negative")
    elif cmd == "show":
        print(json.dumps(load(), sort_keys=True))
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
