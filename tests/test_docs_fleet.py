"""The docs are the tests: the fleet walkthrough of docs/OPERATING.md and the README
tour, run as a user types them.

Every ```sh block marked ``<!-- doc-test: fleet N -->`` in README.md and docs/*.md is
taken from the markdown itself, ordered by N, and run in one ``bash`` session in an
empty folder with only the installed ``shoal`` command on the PATH: root key, node
keys, certificates, configs, three daemons discovering each other by mDNS, publish
before and while the daemons run, distribute with every scope kind, status watches,
a delta, rollback and cancel, commands issued at nodes that did not publish. No
project code is imported here; the assertions read what the commands printed and
what the daemons left on disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- doc-test: fleet (\d+) -->\s*\n```sh\n(.*?)```", re.DOTALL)

pytestmark = pytest.mark.slow


def fleet_blocks() -> list[tuple[int, str, str]]:
    """(order, document, text) of every marked fleet block, in order."""
    found = [(int(m.group(1)), doc.name, m.group(2))
             for doc in DOCS for m in BLOCK.finditer(doc.read_text())]
    return sorted(found)


def test_the_walkthrough_covers_the_operators_path() -> None:
    blocks = fleet_blocks()
    docs = {d for _, d, _ in blocks}
    assert {"README.md", "OPERATING.md"} <= docs
    text = "\n".join(t for _, _, t in blocks)
    for needed in ("shoal fleet init", "shoal keys init", "shoal keys show",
                   "shoal fleet admit", "shoal keys add-cert", "shoal daemon",
                   "shoal publish", "--scope formation=", "--scope nodes=",
                   "--scope capable:", "--from ", "shoal rollback", "shoal cancel",
                   "--watch"):
        assert needed in text, f"the walkthrough no longer shows {needed!r}"


def test_the_fleet_walkthrough_runs_as_written(tmp_path: Path) -> None:
    # scaffolding around the blocks: stop on the first failing command, and never
    # leave daemons behind when a step fails
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(
        f"echo '### doc-test block {n} ({doc})'\n{text}" for n, doc, text in fleet_blocks())
    # the one change: a fleet id of this run's own, so that daemons of another run on
    # this machine (same loopback, same mDNS) are never discovered as fleet members
    script = script.replace("acme", f"acme-{secrets.token_hex(4)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "xdg"))
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the walkthrough did not finish in 400 s:\n{out[-6000:]}"
                    f"{_logs(tmp_path)}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)   # daemons a failed step left behind
    assert proc.returncode == 0, f"the walkthrough failed:\n{out[-8000:]}{_logs(tmp_path)}"
    assert "Traceback" not in out

    # what the user saw
    assert re.search(r"^node\s+[0-9a-f]{64}\s+admitted as node 'n1' in fleet acme-",
                     out, re.M), out
    assert "the daemon announces it to the fleet when it starts" in out     # offline publish
    assert "announced to the fleet" in out                                  # via the daemon
    for name in ("n1", "n2", "n3"):
        assert re.search(rf"^[0-9a-f]{{32}}\s+{name}\s", out, re.M), f"no {name} in nodes"
    assert re.search(r"CANCELLED by [0-9a-f]+", out), "the cancelled rollout is not shown"
    # what the daemons left on disk: every node runs 1.0.0 again, and keeps 1.1.0
    for name in ("n1", "n2", "n3"):
        current = tmp_path / name / "models" / "det" / "current"
        assert os.readlink(current).endswith("1.0.0"), (name, os.readlink(current))
        assert (tmp_path / name / "models" / "det" / "versions" / "1.1.0").is_dir()
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text()


def _logs(where: Path) -> str:
    parts = []
    for log in sorted(where.glob("n*.log")):
        parts.append(f"\n--- {log.name} (last lines)\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-25:]))
    return "".join(parts)
