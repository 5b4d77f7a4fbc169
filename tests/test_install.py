"""Installing versions from the store: atomic switch, rollback, verification, confinement."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._errors import ChunkCorrupted, InstallError, NotFound, StoreError
from agent._storage.install import RECORD_NAME, Installer
from agent._storage.paths import DataDir, confine
from agent._storage.publish import publish
from agent._storage.store import ChunkStore
from protocol._chunking import ChunkParams
from protocol._errors import HostilePath
from protocol._identity import SigningIdentity

REPO = Path(__file__).resolve().parent.parent
PUB = SigningIdentity(b"\x22" * 32)
SMALL = ChunkParams.around(16 * 1024)


def _rand(seed: str, size: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=size)


def _files(version: str) -> dict[str, bytes]:
    return {
        "model.bin": _rand(f"model-{version}", 200_000),
        "tokenizer/vocab.txt": f"vocab {version}\n".encode(),
        "shared.bin": _rand("shared", 50_000),
    }


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _setup(tmp_path: Path, versions: tuple[str, ...] = ("1.0.0", "2.0.0"),
           ) -> tuple[DataDir, ChunkStore, Installer, dict[str, str]]:
    data = DataDir(tmp_path / "data")
    store = ChunkStore(data.store)
    ids = {}
    for v in versions:
        pkg = _write_tree(tmp_path / f"pkg-{v}", _files(v))
        ids[v] = publish(store, pkg, "det", v, PUB, params=SMALL).manifest_id
    return data, store, Installer(data, store), ids


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != RECORD_NAME}


def test_install_layout_and_current_link(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path)
    res = inst.install(store.get_manifest(ids["1.0.0"]), "default")
    model_dir = data.model_dir("det")
    assert os.readlink(model_dir / "current") == "versions/1.0.0"
    assert res.path == str(model_dir / "versions" / "1.0.0")
    assert _tree(model_dir / "current") == _files("1.0.0")
    assert (res.previous, res.already_installed, res.files) == (None, False, 3)
    active = inst.active("det")
    assert active is not None
    assert (active.version, active.variant_id, active.manifest_id) == (
        "1.0.0", "default", ids["1.0.0"])
    assert inst.verify("det", "1.0.0") == []
    # no temporaries left in the model directory
    assert sorted(p.name for p in model_dir.iterdir()) == ["current", "versions"]


def test_upgrade_keeps_previous_and_activate_switches_back(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path)
    inst.install(store.get_manifest(ids["1.0.0"]), "default")
    res = inst.install(store.get_manifest(ids["2.0.0"]), "default")
    assert res.previous == "1.0.0"
    current = data.model_dir("det") / "current"
    assert _tree(current) == _files("2.0.0")
    assert _tree(data.version_dir("det", "1.0.0")) == _files("1.0.0")
    assert [(v.version, v.active) for v in inst.installed()] == [
        ("1.0.0", False), ("2.0.0", True)]
    inst.activate("det", "1.0.0")
    assert _tree(current) == _files("1.0.0")
    assert [(v.version, v.active) for v in inst.installed("det")] == [
        ("1.0.0", True), ("2.0.0", False)]
    again = inst.install(store.get_manifest(ids["2.0.0"]), "default")
    assert again.already_installed and _tree(current) == _files("2.0.0")
    with pytest.raises(NotFound, match="not installed"):
        inst.activate("det", "3.0.0")


def test_tampered_chunk_fails_install_and_keeps_current(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path)
    inst.install(store.get_manifest(ids["1.0.0"]), "default")
    # a store opened afresh (the daemon restarted since it published): the packs were
    # hashed by another process, so install re-reads them (a pack installed by the
    # process that published it is not re-read: tests/test_publish_hashed.py)
    store = ChunkStore(data.store)
    inst = Installer(data, store)
    m2 = store.get_manifest(ids["2.0.0"])
    entry = m2.variant("default").files[0]
    victim = entry.chunks[2].hash  # a chunk only 2.0.0 has
    # the store holds it once: inside the published 2.0.0 files (its pack)
    pack = store.locate(m2.manifest_id, "default")
    assert pack is not None
    path = Path(pack) / entry.path
    offset = entry.chunks[0].size + entry.chunks[1].size + 10
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ChunkCorrupted):
        inst.install(m2, "default")
    model_dir = data.model_dir("det")
    assert os.readlink(model_dir / "current") == "versions/1.0.0"
    assert _tree(model_dir / "current") == _files("1.0.0")
    assert not (model_dir / "versions" / "2.0.0").exists()
    assert sorted(p.name for p in model_dir.iterdir()) == ["current", "versions"]
    assert not store.has(victim)  # quarantined: it will be fetched again


def test_tampered_installed_file_fails_verify(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path, ("1.0.0",))
    inst.install(store.get_manifest(ids["1.0.0"]), "default")
    f = data.version_dir("det", "1.0.0") / "model.bin"
    blob = bytearray(f.read_bytes())
    blob[150_000] ^= 1
    f.write_bytes(bytes(blob))
    problems = inst.verify("det", "1.0.0")
    assert len(problems) == 1 and "model.bin" in problems[0]
    (data.version_dir("det", "1.0.0") / "shared.bin").unlink()
    assert len(inst.verify("det", "1.0.0")) == 2


def test_missing_chunk_is_an_install_error(tmp_path: Path) -> None:
    _, store, inst, ids = _setup(tmp_path, ("1.0.0",))
    m = store.get_manifest(ids["1.0.0"])
    store.unpin(m.manifest_id)
    store.gc()
    with pytest.raises(InstallError, match="not in the store"):
        inst.install(m, "default")
    assert inst.active("det") is None


def test_confine_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "v"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "planted")
    assert confine(root, "a/b.txt") == root.resolve() / "a" / "b.txt"
    for bad in ("../x", "/etc/passwd", "a/../../x", "planted/file"):
        with pytest.raises(HostilePath):
            confine(root, bad)


def test_stale_install_directory_is_removed(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path, ("1.0.0",))
    inst.install(store.get_manifest(ids["1.0.0"]), "default")
    stale = data.model_dir("det") / ".tmp-install-2.0.0-dead"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"half")
    Installer(data, store)
    assert not stale.exists()


@settings(max_examples=15)
@given(st.dictionaries(
    st.lists(st.sampled_from(["a", "b", "c.bin", "d"]), min_size=1, max_size=3).map("/".join),
    st.binary(max_size=40_000), min_size=1, max_size=5))
def test_property_publish_then_install_roundtrips(tmp_path_factory: pytest.TempPathFactory,
                                                  files: dict[str, bytes]) -> None:
    # drop paths that are both a file and a directory of another file
    names = sorted(files)
    files = {n: files[n] for n in names if not any(o.startswith(n + "/") for o in names)}
    tmp = tmp_path_factory.mktemp("rt")
    pkg = _write_tree(tmp / "pkg", files)
    data = DataDir(tmp / "data")
    store = ChunkStore(data.store, fsync=False)
    res = publish(store, pkg, "rt", "1.0.0", PUB, params=SMALL)
    inst = Installer(data, store)
    inst.install(store.get_manifest(res.manifest_id), "default")
    assert _tree(data.model_dir("rt") / "current") == files


_SWITCHER = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from agent._storage.install import Installer
    from agent._storage.paths import DataDir
    from agent._storage.store import ChunkStore
    data = DataDir(Path(sys.argv[1]))
    store = ChunkStore(data.store)
    inst = Installer(data, store)
    ms = {m.version: m for m in store.manifests()}
    print("ready", flush=True)
    i = 0
    while True:
        v = ("1.0.0", "2.0.0")[i % 2]
        active = inst.active("det")
        vdir = data.version_dir("det", v)
        if vdir.exists() and (active is None or active.version != v):
            # drop the inactive version (atomically hidden first) to force a full install
            trash = data.model_dir("det") / f".tmp-install-trash-{i}"
            os.rename(vdir, trash)
            shutil.rmtree(trash)
        inst.install(ms[v], "default")
        i += 1
""")


@pytest.mark.slow
def test_current_always_names_a_complete_version_when_killed(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path)
    inst.install(store.get_manifest(ids["1.0.0"]), "default")
    rng = random.Random(77)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _SWITCHER, str(data.root)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        target = os.readlink(data.model_dir("det") / "current")
        version = target.rsplit("/", 1)[-1]
        assert _tree(data.model_dir("det") / "current") == _files(version)
        fresh = Installer(data, ChunkStore(data.store))
        assert fresh.verify("det", version) == []
        assert not [p for p in data.model_dir("det").iterdir() if p.name.startswith(".tmp")]


def test_switching_the_active_version_to_another_variant_swaps_it_atomically(
        tmp_path: Path) -> None:
    """An explicit variant of the running version replaces it in place: ``current`` keeps
    naming versions/<v>, which holds the new variant's files only, verified."""
    pkg = tmp_path / "pkg"
    (pkg / "gpu").mkdir(parents=True)
    (pkg / "cpu").mkdir()
    (pkg / "gpu" / "model.bin").write_bytes(_rand("gpu", 100_000))
    (pkg / "cpu" / "model-int8.bin").write_bytes(_rand("cpu", 60_000))
    (pkg / "shoal-model.toml").write_text(
        '[[variant]]\nid = "gpu"\nprecision = "fp16"\n\n[[variant]]\nid = "cpu"\n'
        'precision = "int8"\n')
    data = DataDir(tmp_path / "data")
    store = ChunkStore(data.store)
    manifest = store.get_manifest(publish(store, pkg, "det", "1.0.0", PUB,
                                          params=SMALL).manifest_id)
    inst = Installer(data, store)
    inst.install(manifest, "gpu")
    current = data.model_dir("det") / "current"
    assert _tree(current) == {"model.bin": _rand("gpu", 100_000)}

    res = inst.install(manifest, "cpu")
    assert os.readlink(current) == "versions/1.0.0"
    assert _tree(current) == {"model-int8.bin": _rand("cpu", 60_000)}
    active = inst.active("det")
    assert active is not None and (active.version, active.variant_id) == ("1.0.0", "cpu")
    assert res.variant_id == "cpu" and not res.already_installed
    leftovers = [p.name for p in data.model_dir("det").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    assert inst.verify("det", "1.0.0") == []


def test_install_reports_progress_per_file(tmp_path: Path) -> None:
    _data, store, inst, ids = _setup(tmp_path, ("1.0.0",))
    calls: list[tuple[int, int]] = []
    inst.install(store.get_manifest(ids["1.0.0"]), "default",
                 progress=lambda done, total: calls.append((done, total)))
    total = sum(len(b) for b in _files("1.0.0").values())
    assert len(calls) == 3 and {t for _, t in calls} == {total} and calls[-1][0] == total


def test_a_chunk_a_model_rewrote_is_never_written_back_over_its_file(tmp_path: Path) -> None:
    """A running model writes its own installed files (learned state). The store finds
    the chunk changed, says which (so the daemon fetches it again), and a fetched copy
    goes to a version being staged -- never over the model's file (it once did: the
    learned state was lost on the next upgrade)."""
    data, store, inst, ids = _setup(tmp_path)
    m1 = store.get_manifest(ids["1.0.0"])
    inst.install(m1, "default")
    model = data.version_dir("det", "1.0.0") / "model.bin"
    first = next(f for f in m1.variant("default").files if f.path == "model.bin").chunks[0]
    original = model.read_bytes()[:first.size]
    with open(model, "r+b") as f:                  # the model updates its state
        f.write(b"\x00" * first.size)
    with pytest.raises(ChunkCorrupted) as bad:
        store.get(first.hash)
    assert bad.value.chunk_hashes == (first.hash,)
    [result] = store.put_verified_batch([(first.hash, original)])   # (a fetch arrives)
    assert isinstance(result, StoreError) and "no version being fetched" in str(result)
    assert model.read_bytes()[:first.size] == b"\x00" * first.size   # the model's bytes


def test_remove_deletes_a_version_that_is_not_active(tmp_path: Path) -> None:
    data, store, inst, ids = _setup(tmp_path)
    inst.install(store.get_manifest(ids["1.0.0"]), "default")
    inst.install(store.get_manifest(ids["2.0.0"]), "default")
    with pytest.raises(InstallError, match="active version"):
        inst.remove("det", "2.0.0")
    assert inst.remove("det", "1.0.0")
    assert not data.version_dir("det", "1.0.0").exists()
    assert [v.version for v in inst.installed("det")] == ["2.0.0"]
    assert not store.is_pinned(ids["1.0.0"])
    assert not inst.remove("det", "1.0.0")          # gone already
    assert _tree(data.model_dir("det") / "current") == _files("2.0.0")
