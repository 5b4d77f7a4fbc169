"""Scenario files whose versions are real files (``file`` / ``files`` on a
``[[model.version]]``): the simulator cuts them with the real content-defined chunker,
so a rollout of the second moves only the chunks that differ from the first."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sim._fleetfile import FleetFileError, parse

MiB = 1 << 20

FLEET = """
[run]
duration = "30m"
sample_every = "0.5s"

[[formation]]
name = "depot"
count = 1

[[formation]]
name = "cars"
count = 4

[[link]]
name = "lan"
up_mbit = 20
within = ["cars"]
between = [["depot", "cars"]]

[[model]]
id = "m"
origin = "depot-0"
chunk_size = "64K"
[[model.variant]]
id = "default"
{size}
[[model.version]]
version = "1.0.0"
{v1}
installed = ["depot", "cars"]
[[model.version]]
version = "1.1.0"
{v2}

[[action]]
at = "5s"
node = "depot-0"
do = "publish"
model = "m"
version = "1.1.0"

[[action]]
at = "6s"
node = "depot-0"
do = "distribute"
model = "m"
version = "1.1.0"
delta_from = "1.0.0"
"""


def _two_versions(folder: Path) -> tuple[int, int]:
    """A 4 MiB v1 and a v2 with 64 KiB rewritten in the middle and 3 bytes inserted
    near the start (a shift that fixed-size chunking would turn into a whole new
    file); (size of v2, bytes that differ at most)."""
    rng = random.Random(7)
    v1 = bytearray(rng.randbytes(4 * MiB))
    v2 = v1[:100_000] + b"abc" + v1[100_000:]
    v2[2 * MiB:2 * MiB + 64 * 1024] = rng.randbytes(64 * 1024)
    (folder / "v1.bin").write_bytes(v1)
    (folder / "v2.bin").write_bytes(v2)
    return len(v2), 64 * 1024 + 3


def test_a_version_given_as_a_real_file_moves_only_what_changed(tmp_path: Path) -> None:
    size, changed = _two_versions(tmp_path)
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.format(size="", v1='file = "v1.bin"', v2='file = "v2.bin"'))
    out = subprocess.run([sys.executable, "-m", "sim", "run", str(path), "--json"],
                         capture_output=True, text=True, check=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)   # (as shoal-sim)
    result = json.loads(out.stdout)
    assert result["converged"]
    cars = result["formations"]["cars"]
    assert cars["converged"] == 4
    assert all(r["active"] == "1.1.0" for r in cars["node_rows"])
    (rollout,) = result["rollouts"]
    # a content-defined cut confines each change to the chunks around it: each car
    # lacks a few chunks (64 KiB average, 256 KiB at most), not the 4 MiB file
    assert changed <= rollout["bytes_missing_max"] <= 8 * 256 * 1024
    moved = result["bytes_by_link"]["lan"]
    assert moved < 4 * 0.5 * size          # four cars, well under half a file each


def test_files_name_variants_and_bad_ones_are_refused_by_key(tmp_path: Path) -> None:
    _two_versions(tmp_path)

    def refused(size: str, v1: str, v2: str) -> str:
        with pytest.raises(FleetFileError) as err:
            parse(FLEET.format(size=size, v1=v1, v2=v2), base=tmp_path)
        return str(err.value)

    ok = parse(FLEET.format(size="", v1='files = { default = "v1.bin" }',
                            v2='files = { default = "v2.bin" }'), base=tmp_path)
    assert dict(ok.models[0].versions[1].files)["default"] == tmp_path / "v2.bin"
    assert "model[0].version[0].file" in refused("", 'file = "nope.bin"', 'file = "v2.bin"')
    assert "model[0].version[1].files.other" in refused(
        "", 'file = "v1.bin"', 'files = { other = "v2.bin" }')
    assert "give file or files" in refused(
        "", 'file = "v1.bin"\nfiles = { default = "v1.bin" }', 'file = "v2.bin"')
    assert "model[0].version[1].changed" in refused(
        "", 'file = "v1.bin"', 'file = "v2.bin"\nchanged = 0.5')
    assert "in every version" in refused('size = "4M"', 'file = "v1.bin"', "")
    assert "no size" in refused("", 'file = "v1.bin"', "")
