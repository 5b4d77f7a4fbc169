"""A lean daemon install: the runtime dependencies are what the daemon and CLI need;
plots and test tools are extras, and a command that needs a missing extra names it.
The slow test installs the project (``pip install .``, no extras) into a fresh venv
and runs a real daemon from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from agent._admin.fleet import provision
from protocol._identity import SigningIdentity

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRA_HINT = "pip install 'shoal[sim]'"
# pip's words when it cannot reach the package index at all
_OFFLINE = ("NewConnectionError", "Failed to establish a new connection",
            "Temporary failure in name resolution", "Network is unreachable",
            "Name or service not known", "ProxyError", "ConnectTimeoutError",
            "Max retries exceeded")


def _name(requirement: str) -> str:
    m = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert m is not None
    return m.group(0).lower()


def test_runtime_dependencies_are_what_the_daemon_needs() -> None:
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    for heavy in ("matplotlib", "hypothesis", "pytest", "pytest-trio", "ruff", "mypy"):
        assert heavy not in runtime
    assert {_name(r) for r in extras["sim"]} == {"matplotlib"}
    test = {_name(r) for r in extras["test"]}
    assert {"shoal", "hypothesis", "pytest", "pytest-trio"} <= test
    assert "shoal[sim]" in extras["test"]       # the tests run shoal-sim --plot
    # and nothing the daemon, CLI or simulator imports at module level needs an extra
    for path in [*REPO.glob("protocol/*.py"), *REPO.glob("agent/*.py"), *REPO.glob("sim/*.py")]:
        for line in path.read_text().splitlines():
            assert not re.match(r"(from|import) (matplotlib|hypothesis|pytest)\b", line), path


@pytest.mark.parametrize("option", ["--plot", "--html"])
def test_sim_plot_without_matplotlib_names_the_extra(tmp_path: Path, option: str) -> None:
    out = tmp_path / "p.out"
    code = ("import sys; sys.modules['matplotlib'] = None\n"      # as if not installed
            "from sim.__main__ import main\n"
            f"sys.exit(main(['swarm', '--nodes', '3', '--size', '1M', '--seed', '1', "
            f"{option!r}, {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"shoal-sim: error: {option} needs matplotlib: {EXTRA_HINT}"]
    assert not out.exists()


def _copy_source(dest: Path) -> Path:
    """The files a build reads, so that pip builds outside the working tree (an
    in-tree build leaves build/ and egg-info behind)."""
    dest.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("protocol", "agent", "sim"):
        shutil.copytree(REPO / name, dest / name, ignore=skip)
    for f in REPO.iterdir():
        if f.is_file() and (f.name in ("pyproject.toml", "README.md", "setup.cfg")
                            or f.name.upper().startswith(("LICEN", "NOTICE"))):
            shutil.copy2(f, dest / f.name)
    return dest


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_pip_install_gives_a_working_daemon(tmp_path: Path) -> None:
    started = time.monotonic()
    venv = tmp_path / "venv"
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHOAL_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                   env=env, cwd=tmp_path)
    src = _copy_source(tmp_path / "src")
    pip = _run([str(bin_ / "python"), "-m", "pip", "install", "--quiet", "--retries", "2",
                "--timeout", "30", str(src)], env, tmp_path, timeout=600)
    if pip.returncode != 0 and any(w in pip.stderr for w in _OFFLINE):
        pytest.skip(f"pip cannot reach the package index: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr
    installed = time.monotonic()
    shoal, sim, py = str(bin_ / "shoal"), str(bin_ / "shoal-sim"), str(bin_ / "python")

    # the installed copy, not the working tree
    where = _run([py, "-c", "import agent; print(agent.__file__)"], env, tmp_path)
    assert where.returncode == 0 and str(venv) in where.stdout, where.stdout + where.stderr

    version = _run([shoal, "--version"], env, tmp_path)
    assert version.returncode == 0, version.stderr
    assert PYPROJECT["project"]["version"] in version.stdout
    helped = _run([shoal, "--help"], env, tmp_path)
    assert helped.returncode == 0 and "daemon" in helped.stdout, helped.stderr

    keys = _run([shoal, "keys", "init", "--data-dir", str(tmp_path / "d")], env, tmp_path)
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "d" / "keys" / "node.key").exists()

    for module in ("matplotlib", "hypothesis", "pytest"):
        imp = _run([py, "-c", f"import {module}"], env, tmp_path)
        assert imp.returncode != 0 and "ModuleNotFoundError" in imp.stderr, module

    png = tmp_path / "p.png"
    plot = _run([sim, "swarm", "--nodes", "3", "--size", "1M", "--seed", "1", "--plot",
                 str(png)], env, tmp_path)
    assert plot.returncode == 2 and "Traceback" not in plot.stderr
    assert plot.stderr.strip().splitlines() == [
        f"shoal-sim: error: --plot needs matplotlib: {EXTRA_HINT}"]
    assert not png.exists()
    ran = _run([sim, "swarm", "--nodes", "3", "--size", "1M", "--seed", "1", "--json"],
               env, tmp_path)
    assert ran.returncode == 0 and json.loads(ran.stdout)["complete"] is True, ran.stderr

    # a real daemon from the venv, provisioned by this process
    node = provision(tmp_path / "node", root=SigningIdentity.generate(),
                     fleet_id=f"lean-{os.getpid()}", name="lean", mdns_interface="")
    cfg = str(node.config_path)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([shoal, "daemon", "--config", cfg], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert daemon.poll() is None, f"the daemon exited early:\n{log.read_text()}"
            st = _run([shoal, "status", "--config", cfg, "--json"], env, tmp_path, timeout=30)
            if st.returncode == 0:
                assert json.loads(st.stdout)["node_id"] == node.node_id
                break
            assert time.monotonic() < deadline, (st.stderr, log.read_text())
            time.sleep(0.3)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
    print(f"lean install: pip {installed - started:.1f} s, "
          f"checks {time.monotonic() - installed:.1f} s")
