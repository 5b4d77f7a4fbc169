"""``publish`` names the chunks of the pack's own bytes (its copy, not the package), so
the pack is marked checked and installing it in the same process does not read and hash
it again; what was not hashed here (a store opened afresh) still is, and serving always
verifies."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

from agent._errors import ChunkCorrupted, ChunkNotFound
from agent._storage.install import Installer
from agent._storage.paths import DataDir
from agent._storage.publish import publish
from agent._storage.store import ChunkStore
from protocol._chunking import ChunkParams, hash_chunk
from protocol._identity import SigningIdentity
from protocol._manifest import Manifest

PUB = SigningIdentity(b"\x23" * 32)
SMALL = ChunkParams.around(16 * 1024)


def _package(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(blake3.blake3(b"m").digest(length=300_000))
    (root / "sub" / "small.txt").write_bytes(b"tiny\n")
    (root / "empty.bin").write_bytes(b"")
    return root


def _published(tmp_path: Path) -> tuple[DataDir, ChunkStore, Manifest]:
    """A data dir, its store, and the manifest of ``_package`` published into it."""
    data = DataDir(tmp_path / "data")
    store = ChunkStore(data.store)
    m = store.get_manifest(publish(store, _package(tmp_path / "pkg"), "m", "1.0.0", PUB,
                                   params=SMALL).manifest_id)
    return data, store, m


def _flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_the_manifest_names_the_packs_bytes_and_they_are_checked(tmp_path: Path) -> None:
    _, store, m = _published(tmp_path)
    pack = store.locate(m.manifest_id, "default")
    assert pack is not None
    d = store._dirs[pack]
    for entry in m.variant("default").files:
        blob = (Path(pack) / entry.path).read_bytes()
        assert len(blob) == entry.size
        off = 0
        for c in entry.chunks:
            assert hash_chunk(blob[off:off + c.size]) == c.hash
            assert d.is_checked(d.position(c.hash))
            off += c.size
        assert off == entry.size


def test_install_after_publish_trusts_the_pack_serving_still_checks(tmp_path: Path) -> None:
    data, store, m = _published(tmp_path)
    entry = next(f for f in m.variant("default").files if f.path == "model.bin")
    victim = entry.chunks[1].hash
    pack = store.locate(m.manifest_id, "default")
    assert pack is not None
    # rot after publish, in the process that hashed these bytes as it wrote them: the
    # install does not re-read them (as a receiver does not re-read what it verified
    # and wrote) ...
    _flip(Path(pack) / "model.bin", entry.chunks[0].size + 7)
    res = Installer(data, store).install(m, "default")
    # ... but the chunk is never served: every read for serving is hashed first
    with pytest.raises((ChunkCorrupted, ChunkNotFound)):
        store.get(victim)
    assert not store.has(victim)
    assert store.statistics().corrupt_detected >= 1
    assert Path(res.path, "sub", "small.txt").read_bytes() == b"tiny\n"


def test_a_store_opened_afresh_rehashes_a_published_pack(tmp_path: Path) -> None:
    data, store, m = _published(tmp_path)
    entry = next(f for f in m.variant("default").files if f.path == "model.bin")
    pack = store.locate(m.manifest_id, "default")
    assert pack is not None
    _flip(Path(pack) / "model.bin", entry.chunks[0].size + 7)
    again = ChunkStore(data.store)      # another process: nothing it hashed itself
    with pytest.raises(ChunkCorrupted) as err:
        Installer(data, again).install(m, "default")
    assert err.value.chunk_hashes == (entry.chunks[1].hash,)
