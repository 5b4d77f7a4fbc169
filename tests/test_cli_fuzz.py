"""Command lines generated from the CLI's own grammar, then mutated: whatever a user
types, ``shoal`` answers with exit status 0, 1 or 2, never a traceback, and with
``--json`` prints exactly one JSON document on stdout.

The grammar is read from the real argparse parser (subcommands, options, their
choices and arities), so a new command is fuzzed without touching this file. The
commands run in-process against a data directory with keys and a published model;
the online ones reach no daemon, or (second test) a real one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._admin.fleet import Provisioned, provision
from agent._cli.main import build_parser, main
from protocol._identity import SigningIdentity

ROOT = Path(__file__).resolve().parent.parent
#: never generated: commands that start a daemon or wait on purpose
SKIP_COMMANDS = {"daemon"}
SKIP_OPTIONS = {"-h", "--help", "--version", "--watch", "--forever", "--wait", "--timeout",
                "--unit-dir"}
WORDS = ["det", "1.0.0", "1.1.0", "9.9.9", "all", "formation=alpha", "nodes=n1",
         "capable:arch=x64", "capable:min-gpu-mem-gb=lots", "capable:", "nodes=",
         "urgent", "high", "node", "operator", "root", "", "-", "--", "=", "x" * 300,
         "../etc", "/", "nan", "-1", "1e999", "☃", "ab" * 32, "--json"]


def _grammar(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            if not prefix and name in SKIP_COMMANDS:
                continue
            yield from _grammar(sub, (*prefix, name))
    if subs and not any(a.required for a in subs):
        yield prefix, parser


COMMANDS = list(_grammar(build_parser()))


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    path, parser = draw(st.sampled_from(COMMANDS))
    # what a process's argv can hold: no NUL (C strings), and of the lone surrogates only
    # U+DC80-U+DCFF (Python's surrogateescape for bytes that are not UTF-8)
    value = st.one_of(st.sampled_from(WORDS),
                      st.text(st.characters(exclude_characters="\x00",
                                            exclude_categories=("Cs",)), max_size=12),
                      st.sampled_from(["caf\udce9", "\udcff", "m\udc80.bin"]))
    argv = list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        choices = [str(c) for c in action.choices] if action.choices else None
        one = st.sampled_from(choices) if choices else value
        if not action.option_strings:               # a positional
            n = 0 if action.nargs == "?" and draw(st.booleans()) else 1
            argv += [draw(one) for _ in range(n)]
            continue
        flag = action.option_strings[-1]
        if flag in SKIP_OPTIONS or not draw(st.booleans()):
            continue
        argv.append(flag)
        if action.nargs != 0:
            argv.append(draw(one))
    if draw(st.booleans()):
        argv.append("--json")
    for _ in range(draw(st.integers(0, 2))):      # mutations
        op = draw(st.sampled_from(["drop", "insert", "swap"]))
        if op == "drop" and argv:
            argv.pop(draw(st.integers(0, len(argv) - 1)))
        elif op == "insert":
            argv.insert(draw(st.integers(0, len(argv))), draw(value))
        elif op == "swap" and len(argv) > 1:
            i = draw(st.integers(0, len(argv) - 2))
            argv[i], argv[i + 1] = argv[i + 1], argv[i]
    return [a for a in argv if a not in SKIP_OPTIONS]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:              # argparse: usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> None:
    code, out, err = run(argv)
    options = argv[:argv.index("--")] if "--" in argv else argv   # after --, all positional
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if "--json" in options and code in (0, 1, 2) and out.strip():
        json.loads(out)                        # exactly one document (raises otherwise)
    if "--json" in options and code == 2:
        assert json.loads(out)["error"], (argv, out)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provisioned]:
    where = tmp_path_factory.mktemp("fuzz")
    prov = provision(where / "n", root=SigningIdentity.generate(),
                     fleet_id=f"fuzz-{os.getpid()}", name="n1", operator=True,
                     mdns_interface="")
    pkg = where / "pkg"
    pkg.mkdir()
    (pkg / "w.bin").write_bytes(os.urandom(20_000))
    assert run(["publish", str(pkg), "--model", "det", "--version", "1.0.0",
                "--data-dir", str(prov.data_dir)])[0] == 0
    yield prov


@pytest.fixture
def in_folder(node: Provisioned, monkeypatch: pytest.MonkeyPatch) -> Provisioned:
    monkeypatch.chdir(node.data_dir.parent)   # relative paths a mutation makes land here
    for var in ("SHOAL_CONFIG", "SHOAL_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SHOAL_CONFIG", str(node.config_path))
    monkeypatch.setenv("HOME", str(node.data_dir.parent))
    return node


def test_the_grammar_covers_the_commands() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"publish", "distribute", "status", "keys init", "fleet admit", "cancel",
            "nodes"} <= names


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_offline(in_folder: Provisioned, argv: list[str]) -> None:
    check(argv)


@pytest.mark.slow
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_against_a_daemon(live: Provisioned, argv: list[str]) -> None:
    check(argv)


@pytest.fixture
def live(in_folder: Provisioned, daemon: subprocess.Popen[bytes]) -> Provisioned:
    return in_folder


@pytest.fixture(scope="module")
def daemon(node: Provisioned) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "agent._cli", "daemon", "--config",
                             str(node.config_path)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while run(["status", "--config", str(node.config_path)])[0] != 0:
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.2)
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
