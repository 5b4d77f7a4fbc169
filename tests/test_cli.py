"""The ``shoal`` CLI end to end, in subprocesses, with ``--json`` output parsed."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import pytest

from agent._storage.store import ChunkStore

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _shoal(data: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_DATA_DIR"}
    proc = subprocess.run([sys.executable, "-m", "agent._cli", *args, "--data-dir", str(data)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _json(data: Path, *args: str) -> Any:
    return json.loads(_shoal(data, *args, "--json").stdout)


def _fails(data: Path, *args: str) -> str:
    proc = _shoal(data, *args, ok=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoal: error: ")
    return lines[0]


def _package(root: Path) -> Path:
    (root / "gpu").mkdir(parents=True)
    (root / "cpu").mkdir()
    (root / "shoal-model.toml").write_text(
        '[[variant]]\nid = "gpu"\nmin_gpu_mem_gb = 4096\nprecision = "fp16"\n'
        '[[variant]]\nid = "cpu"\nprecision = "int8"\n')
    (root / "gpu" / "w.bin").write_bytes(blake3.blake3(b"g").digest(length=600_000))
    (root / "cpu" / "w.bin").write_bytes(blake3.blake3(b"c").digest(length=300_000))
    return root


def test_cli_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pkg = _package(tmp_path / "pkg")
    keys = _json(data, "keys", "init")["keys"]
    assert [k["name"] for k in keys] == ["node", "publisher"]
    assert oct((data / "keys" / "node.key").stat().st_mode & 0o777) == "0o600"
    assert oct((data / "keys").stat().st_mode & 0o777) == "0o700"
    node_key = (data / "keys" / "node.key").read_bytes()
    again = _json(data, "keys", "init", "--role", "node", "--role", "operator")["keys"]
    assert [(k["name"], k["created"]) for k in again] == [("node", False), ("operator", True)]
    assert (data / "keys" / "node.key").read_bytes() == node_key    # never overwritten
    assert again[0]["public_key"] == keys[0]["public_key"]

    pub = _json(data, "publish", str(pkg), "--model", "det", "--version", "1.0.0")
    assert pub["variants"] == ["gpu", "cpu"] and pub["bytes_total"] == 900_000
    assert pub["bytes_new"] == 900_000 and not pub["already_published"]
    again = _json(data, "publish", str(pkg), "--model", "det", "--version", "1.0.0")
    assert again["already_published"] and (again["chunks_new"], again["bytes_new"]) == (0, 0)
    assert again["manifest_id"] == pub["manifest_id"]

    models = _json(data, "models")
    [m] = models["manifests"]
    assert (m["model_id"], m["version"], m["pinned"]) == ("det", "1.0.0", True)
    assert [v["variant_id"] for v in m["variants"]] == ["gpu", "cpu"]
    assert m["variants"][0]["requirements"]["min_gpu_mem_gb"] == 4096.0

    ver = _json(data, "verify", "det", "1.0.0")
    assert ver["ok"] and ver["signature"] == "ok" and ver["chunks_checked"] == pub["chunks_total"]

    # the probe finds no 4 TiB GPU here: the CPU variant is picked
    inst = _json(data, "install", "det", "1.0.0")
    assert inst["variant_id"] == "cpu" and inst["previous"] is None
    current = data / "models" / "det" / "current"
    assert (current / "w.bin").read_bytes() == (pkg / "cpu" / "w.bin").read_bytes()
    assert _json(data, "models")["installed"][0]["active"] is True

    gc = _json(data, "gc")
    assert gc["chunks_freed"] == 0 and gc["chunks_kept"] == pub["chunks_total"]

    # text output is for people
    assert "det 1.0.0" in _shoal(data, "models").stdout


def test_cli_verify_detects_a_tampered_chunk(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _shoal(data, "keys", "init")
    _shoal(data, "publish", str(_package(tmp_path / "pkg")), "--model", "det",
           "--version", "1.0.0")
    # the store keeps no chunk files: a chunk's bytes are inside the published files
    pack = next((data / "store" / "packs").iterdir())
    rec = json.loads((pack / ".shoal-pack").read_text())
    manifest = ChunkStore(data / "store").get_manifest(rec["manifest_id"])
    entry = manifest.variant(rec["variant_id"]).files[0]
    target = pack / entry.path
    blob = bytearray(target.read_bytes())
    blob[0] ^= 0xFF
    target.write_bytes(bytes(blob))
    proc = _shoal(data, "verify", "det", "1.0.0", "--json", ok=False)
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert out["ok"] is False
    assert [p["problem"] for p in out["problems"]] == ["corrupt"]
    assert out["problems"][0]["chunk_hash"] == entry.chunks[0].hash.hex()
    assert "failed verification" in proc.stderr
    assert list((data / "store" / "quarantine").iterdir())


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "keys init" in _fails(data, "publish", str(tmp_path), "--model", "x",
                                 "--version", "1.0.0")
    _shoal(data, "keys", "init")
    assert "is not in the store" in _fails(data, "verify", "nope", "1.0.0")
    assert "not installed" in _fails(data, "activate", "nope", "1.0.0")
    assert "cannot read package" in _fails(data, "publish", str(tmp_path / "missing"),
                                           "--model", "x", "--version", "1.0.0")
    assert "semantic version" in _fails(data, "publish", str(tmp_path), "--model", "x",
                                        "--version", "one")
    proc = _shoal(data, "verify", "nope", "1.0.0", "--json", ok=False)
    assert "error" in json.loads(proc.stdout)


def test_publish_draws_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal (a real pty) publish draws a bar on stderr; piped, stderr stays quiet."""
    import pty

    pkg = _package(tmp_path / "pkg")
    data = tmp_path / "data"
    _json(data, "keys", "init")
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_DATA_DIR"}
    env.update(COLUMNS="100", TERM="xterm")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent._cli", "publish", str(pkg), "--model", "det",
             "--version", "1.0.0", "--data-dir", str(data)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=terminal, env=env, timeout=120)
        os.close(terminal)
        seen = b""
        with contextlib.suppress(OSError):     # EIO once the child's side is closed
            while chunk := os.read(controller, 65536):
                seen += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert b"publish det 1.0.0" in seen and b"\x1b[" in seen    # a live bar was drawn
    piped = _shoal(data, "publish", str(pkg), "--model", "det", "--version", "1.0.1")
    assert piped.stderr == ""
