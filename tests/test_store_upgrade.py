"""Upgrade in place: a data directory written by the earlier layout (one file per chunk
under ``store/chunks/``, made by that code: tests/fixtures/make_legacy_datadir.py) keeps
its installed versions, pins, manifests, ledger and every chunk it held when the new
store opens it, and ends with one copy of each version's bytes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
from pathlib import Path

from agent._admin.fleet import provision
from agent._config import load_config
from agent._daemon.runtime import NodeRuntime
from agent._demo.fleet import make_package
from agent._storage.install import Installer
from agent._storage.keys import load_key
from agent._storage.paths import DataDir
from agent._storage.persist import load_ledger
from agent._storage.publish import publish
from agent._storage.store import PROGRESS_LOG, ChunkStore
from protocol import SigningIdentity, encode_value

from ._fleet import admitted_ledger

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-datadir.tar.gz"


def _unpack(tmp: Path) -> DataDir:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp, filter="tar")
    return DataDir(tmp / "data")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _data_bytes(root: Path) -> int:
    """Bytes of the model files under ``root`` (records and logs left out)."""
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and not p.name.startswith(".shoal-"))


def test_earlier_layout_keeps_versions_pins_ledger_and_held_chunks(tmp_path: Path) -> None:
    data = _unpack(tmp_path)
    models_before = _tree(data.models)
    pins_before = sorted(p.name for p in (data.store / "pins").iterdir())
    manifests_before = sorted(p.name for p in (data.store / "manifests").iterdir())
    chunk_files = {bytes.fromhex(p.name) for p in (data.store / "chunks").glob("*/*")}
    ledger_before, _ = load_ledger(data.root, admitted_ledger(1).trust)

    store = ChunkStore(data.store)
    inst = Installer(data, store)
    # installed versions and `current` are untouched
    assert [(v.version, v.active) for v in inst.installed("det")] == [
        ("1.0.0", False), ("2.0.0", True)]
    assert os.readlink(data.model_dir("det") / "current") == "versions/2.0.0"
    assert _tree(data.models) == models_before
    assert inst.verify("det", "1.0.0") == [] and inst.verify("det", "2.0.0") == []
    # pins and manifests are kept; the ledger loads as before
    assert sorted(m.manifest_id for m in store.manifests()) == manifests_before
    assert sorted(p.name for p in (data.store / "pins").iterdir()) == pins_before
    assert all(store.is_pinned(mid) for mid in pins_before)
    ledger_after, note = load_ledger(data.root, admitted_ledger(1).trust)
    # the node's record loads; its four manifest entries were written before the ledger
    # carried heads (protocol/_manifest_head.py): left out, while the manifests stay in
    # the store and their publisher's daemon announces them again (the next test)
    assert note.startswith("loaded 1 ledger entries; 4 manifest entries of the earlier "
                           "format left out")
    assert ledger_after.manifests() == [] and len(ledger_after.records()) == 1
    assert ledger_after.state_key() == ledger_before.state_key()
    # every chunk a pinned manifest needed is still held, and verifies; no chunk files
    assert chunk_files and chunk_files <= store.hashes()
    for h in chunk_files:
        store.get(h)
    assert not (data.store / "chunks").exists()
    # one copy of each version kept: the bytes on disk are the versions' files (four
    # versions: 1.0.0 and 2.0.0 installed, 3.0.0 and 4.0.0 as packs), nothing more
    versions = sum(m.variant("default").size for m in store.manifests())
    assert _data_bytes(data.models) + _data_bytes(data.store / "packs") == versions
    # 3.0.0 existed only as chunk files: it is a pack now, installed with no fetch
    m3 = store.find_manifest("det", "3.0.0")
    assert store.missing(m3, "default") == []
    inst.install(m3, "default")
    assert inst.verify("det", "3.0.0") == []
    # 4.0.0, fetched half-way: what had arrived is still held; only the rest is missing
    m4 = store.find_manifest("det", "4.0.0")
    missing = set(store.missing(m4, "default"))
    assert missing and not missing & chunk_files
    assert missing == {r.hash for r in m4.iter_chunks()} - store.hashes()
    # opening again changes nothing
    held = store.hashes()
    store.close()
    again = ChunkStore(data.store)
    assert again.hashes() == held
    assert [v.version for v in Installer(data, again).installed("det")] == [
        "1.0.0", "2.0.0", "3.0.0"]


def test_a_conversion_cut_short_goes_on_at_the_next_open(tmp_path: Path) -> None:
    """Killed before ``chunks/`` was removed, after the progress of a staged pack was
    lost: the next open writes the chunk files' bytes into it again, nothing held is
    lost, and ``chunks/`` goes."""
    data = _unpack(tmp_path)
    saved = tmp_path / "chunks-copy"
    shutil.copytree(data.store / "chunks", saved)
    chunk_files = {bytes.fromhex(p.name) for p in saved.glob("*/*")}
    store = ChunkStore(data.store)
    m4 = store.find_manifest("det", "4.0.0")
    pack = store.locate(m4.manifest_id, "default")
    assert pack is not None
    store.close()
    # as if killed mid-way: chunks/ still there, 4.0.0's progress log empty
    shutil.copytree(saved, data.store / "chunks")
    (Path(pack) / PROGRESS_LOG).write_bytes(b"")
    again = ChunkStore(data.store)
    assert chunk_files <= again.hashes()
    assert not (data.store / "chunks").exists()
    assert set(again.missing(m4, "default")) == {r.hash for r in m4.iter_chunks()} - \
        again.hashes()


def test_a_publisher_announces_again_what_it_stored_before_heads(tmp_path: Path) -> None:
    """A daemon whose store holds a manifest it published before the ledger carried
    heads (no head signature) signs its head with its publisher key at start and
    announces it: every node of the fleet can name the version again."""
    root = SigningIdentity.generate()
    prov = provision(tmp_path / "n0", root=root, fleet_id="up", name="n0",
                     mdns_interface="")
    data = DataDir(tmp_path / "n0")
    pkg = make_package(tmp_path / "pkg", 200_000)
    store = ChunkStore(data.store)
    res = publish(store, pkg, "det", "1.0.0", load_key(data.keys, "publisher"))
    new = store.get_manifest(res.manifest_id)
    store.close()
    old = dataclasses.replace(new, head_signature=None)      # as the earlier code stored it
    (data.store / "manifests" / res.manifest_id).write_bytes(encode_value(old))
    rt = NodeRuntime(load_config(str(prov.config_path)))
    head = rt.machine.ledger.head_for("det", "1.0.0")
    assert head is not None and head == new.head()
    body = rt.machine.ledger.manifest_for("det", "1.0.0")          # its body is here
    assert body is not None and head.describes(body)
    rt.store.close()
