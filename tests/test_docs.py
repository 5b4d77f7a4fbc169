"""The docs' shell examples: every ``shoal`` / ``shoal-sim`` / ``python -m sim`` line in
a ```sh block of README.md and docs/*.md must parse with the real argument parsers;
blocks preceded by ``<!-- doc-test: run -->`` are also run (cheap ones only) and
must exit 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from agent._cli.main import build_parser
from sim.__main__ import _parser as sim_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- doc-test: (run|fleet \d+) -->\s*\n)?```sh\n(.*?)```", re.DOTALL)
PLACEHOLDER = re.compile(r"<[^>]*>")


def _commands(text: str) -> list[str]:
    """Shell lines of a block: continuations joined, comments and blanks dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line = (buf + line).strip()
        buf = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _argv(line: str) -> tuple[str, list[str]] | None:
    """(program, argv) for a shoal / simulator command, else None."""
    words = shlex.split(PLACEHOLDER.sub("X", line), comments=True)
    while words and words[0] in ("sudo", "$"):
        words = words[1:]
    if not words:
        return None
    prog = words[0].removeprefix(".venv/bin/")
    if prog == "shoal":
        return "shoal", words[1:]
    if prog == "shoal-sim":
        return "sim", words[1:]
    if prog in ("python", "python3") and words[1:3] == ["-m", "sim"]:
        return "sim", words[3:]
    return None


def _examples() -> list[tuple[str, str, bool]]:
    found = []
    for doc in DOCS:
        for m in BLOCK.finditer(doc.read_text()):
            if m.group(2) and m.group(2).startswith("fleet"):
                continue          # run for real, in order, by tests/test_docs_fleet.py
            for line in _commands(m.group(3)):
                if _argv(line) is not None:
                    found.append((doc.name, line, m.group(1) is not None))
    return found


EXAMPLES = _examples()


def test_the_docs_have_examples_and_runnable_ones() -> None:
    names = {doc for doc, _, _ in EXAMPLES}
    assert {"README.md", "SIMULATOR.md", "OPERATING.md"} <= names
    assert sum(run for _, _, run in EXAMPLES) >= 4


@pytest.mark.parametrize(("doc", "line"), [(d, ln) for d, ln, _ in EXAMPLES])
def test_example_parses(doc: str, line: str) -> None:
    parsed = _argv(line)
    assert parsed is not None
    prog, argv = parsed
    parser = build_parser() if prog == "shoal" else sim_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:          # --help exits 0; a bad example exits 2
        assert exc.code == 0, f"{doc}: `{line}` does not parse"


@pytest.mark.parametrize(("doc", "line"), [(d, ln) for d, ln, run in EXAMPLES if run])
def test_runnable_example_runs(doc: str, line: str, tmp_path: Path) -> None:
    parsed = _argv(line)
    assert parsed is not None
    prog, argv = parsed
    cmd = [sys.executable, "-m", "agent._cli" if prog == "shoal" else "sim", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOAL_DATA_DIR": str(tmp_path / "data"),
           "MPLBACKEND": "Agg"}
    for shipped in ("examples", "tests"):     # paths the docs name, as from a checkout
        (tmp_path / shipped).symlink_to(ROOT / shipped)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"{doc}: `{line}` failed:\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip(), f"{doc}: `{line}` printed nothing"
    for flag in ("--plot", "--html"):
        if flag in argv:
            out = tmp_path / argv[argv.index(flag) + 1]
            assert out.stat().st_size > 1000, f"{doc}: `{line}` wrote no {flag} file"
