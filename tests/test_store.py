"""The on-disk chunk store: atomic writes, verification on read, quarantine, pins, gc."""

from __future__ import annotations

import os
import random
import shutil
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

from agent._errors import ChunkCorrupted, ChunkNotFound, InsufficientStorage, NotFound
from agent._storage.store import ChunkStore
from protocol._capabilities import Requirements
from protocol._chunking import chunk_matches, hash_chunk
from protocol._errors import ChunkIntegrityError
from protocol._identity import SigningIdentity
from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root

REPO = Path(__file__).resolve().parent.parent


def _data(i: int, size: int = 1000) -> bytes:
    return blake3.blake3(f"chunk-{i}".encode()).digest(length=size)


def _visible_chunks(root: Path) -> list[Path]:
    return [p for p in (root / "chunks").glob("*/*") if not p.name.startswith(".tmp-")]


def _temporaries(root: Path) -> list[Path]:
    return [p for p in (root / "chunks").glob("*/*") if p.name.startswith(".tmp-")]


def _manifest(pub: SigningIdentity, version: str, chunks: list[bytes]) -> Manifest:
    refs = tuple(ChunkRef(hash_chunk(c), len(c)) for c in chunks)
    entry = FileEntry("w.bin", sum(r.size for r in refs), refs, merkle_root([r.hash for r in refs]))
    return Manifest.sign(pub, "m", version, (Variant("default", Requirements(), (entry,)),), 0)


def test_put_get_roundtrip_and_reopen(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    chunks = [_data(i, 100 + i) for i in range(20)]
    for c in chunks:
        assert store.put(hash_chunk(c), c) is True
    assert store.put(hash_chunk(chunks[0]), chunks[0]) is False  # already held
    for c in chunks:
        h = hash_chunk(c)
        assert store.has(h) and h in store
        assert store.size_of(h) == len(c)
        assert store.get(h) == c
    s = store.statistics()
    assert (s.chunks, s.bytes, s.puts_new, s.puts_duplicate) == (
        20, sum(map(len, chunks)), 20, 1)
    # the index is rebuilt from disk
    again = ChunkStore(tmp_path)
    assert again.hashes() == {hash_chunk(c) for c in chunks}
    assert again.statistics().bytes == sum(map(len, chunks))
    # file layout: chunks/ab/<hex>
    h = hash_chunk(chunks[3])
    assert (tmp_path / "chunks" / h.hex()[:2] / h.hex()).read_bytes() == chunks[3]


def test_batches_from_several_threads_are_each_flushed_at_their_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commits are per batch: a batch that ends has fsynced exactly its own
    chunks, whatever other batches are still open (a daemon runs several)."""
    store = ChunkStore(tmp_path)
    synced: list[str] = []
    real = ChunkStore._fsync_file

    def record(path: str) -> None:
        synced.append(os.path.basename(path))
        real(path)
    monkeypatch.setattr(ChunkStore, "_fsync_file", staticmethod(record))
    a, b = [_data(i) for i in range(5)], [_data(i) for i in range(5, 9)]
    with store.batch() as outer:
        for c in a:
            store.put(hash_chunk(c), c, batch=outer)
        with store.batch() as inner:          # e.g. another store worker
            for c in b:
                store.put(hash_chunk(c), c, batch=inner)
        assert sorted(synced) == sorted(hash_chunk(c).hex() for c in b)
    assert sorted(synced) == sorted(hash_chunk(c).hex() for c in a + b)


def test_failed_group_commit_drops_its_chunks(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk that reports ENOSPC only at fsync (delayed allocation): the batch
    raises InsufficientStorage and none of its chunks stays held or on disk, so
    the next put writes and flushes them again."""
    store = ChunkStore(tmp_path)
    chunks = [_data(i) for i in range(6)]

    def full(path: str) -> None:
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(ChunkStore, "_fsync_file", staticmethod(full))
    with pytest.raises(InsufficientStorage, match="no space left"), store.batch() as b:
        for c in chunks:
            assert store.put(hash_chunk(c), c, batch=b) is True
    assert len(store) == 0 and _visible_chunks(tmp_path) == []
    monkeypatch.undo()
    with store.batch() as b:
        assert all(store.put(hash_chunk(c), c, batch=b) for c in chunks)
    assert ChunkStore(tmp_path).hashes() == {hash_chunk(c) for c in chunks}


def test_put_refuses_bytes_that_do_not_match(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    good, bad = _data(1), _data(2)
    with pytest.raises(ChunkCorrupted) as info:
        store.put(hash_chunk(good), bad)
    assert isinstance(info.value, ChunkIntegrityError)
    assert not store.has(hash_chunk(good))
    assert _visible_chunks(tmp_path) == [] and _temporaries(tmp_path) == []
    assert store.statistics().corrupt_detected == 1


def test_corrupt_chunk_detected_on_read_and_quarantined(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    c = _data(7, 5000)
    h = hash_chunk(c)
    store.put(h, c)
    path = tmp_path / "chunks" / h.hex()[:2] / h.hex()
    flipped = bytearray(c)
    flipped[1234] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(ChunkCorrupted, match="quarantine"):
        store.get(h)
    assert not path.exists()
    assert not store.has(h)  # the swarm will fetch it again
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(flipped)
    s = store.statistics()
    assert (s.corrupt_detected, s.quarantined, s.chunks) == (1, 1, 0)
    with pytest.raises(ChunkNotFound):
        store.get(h)
    assert store.put(h, c) is True  # refetched
    assert store.get(h) == c


def test_truncated_chunk_detected(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    c = _data(8, 4000)
    h = hash_chunk(c)
    store.put(h, c)
    (tmp_path / "chunks" / h.hex()[:2] / h.hex()).write_bytes(c[:100])
    assert store.check(h, len(c)) == "corrupt"
    assert store.check(h, len(c)) == "missing"


def test_stale_temporaries_removed_on_open(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    c = _data(1)
    store.put(hash_chunk(c), c)
    shard = tmp_path / "chunks" / "ab"
    shard.mkdir(exist_ok=True)
    (shard / ".tmp-deadbeef").write_bytes(b"partial")
    (tmp_path / "manifests" / ".tmp-00").write_bytes(b"partial")
    again = ChunkStore(tmp_path)
    assert _temporaries(tmp_path) == []
    assert not (tmp_path / "manifests" / ".tmp-00").exists()
    assert again.statistics().stale_temporaries_removed == 2
    assert again.hashes() == {hash_chunk(c)}


def test_manifests_pins_refcounts_and_gc(tmp_path: Path) -> None:
    pub = SigningIdentity(b"\x01" * 32)
    store = ChunkStore(tmp_path)
    shared = [_data(i) for i in range(5)]
    only1, only2 = [_data(100)], [_data(200), _data(201)]
    stray = _data(999, 777)
    for c in [*shared, *only1, *only2, stray]:
        store.put(hash_chunk(c), c)
    m1 = _manifest(pub, "1.0.0", shared + only1)
    m2 = _manifest(pub, "2.0.0", shared + only2)
    for m in (m1, m2):
        store.put_manifest(m)
        store.pin(m.manifest_id)
    assert store.refcount(hash_chunk(shared[0])) == 2
    assert store.refcount(hash_chunk(only1[0])) == 1
    res = store.gc()  # only the stray chunk is unreferenced
    assert (res.chunks_freed, res.bytes_freed) == (1, len(stray))
    assert not store.has(hash_chunk(stray))
    store.unpin(m1.manifest_id)
    res = store.gc()
    assert (res.chunks_freed, res.bytes_freed) == (1, len(only1[0]))
    assert all(store.has(hash_chunk(c)) for c in shared + only2)
    # pins, manifests and refcounts survive a reopen
    again = ChunkStore(tmp_path)
    assert again.is_pinned(m2.manifest_id) and not again.is_pinned(m1.manifest_id)
    assert again.get_manifest(m1.manifest_id) == m1
    assert again.find_manifest("m", "2.0.0") == m2
    assert again.refcount(hash_chunk(shared[0])) == 1
    assert again.gc().chunks_freed == 0
    s = again.statistics()
    assert (s.manifests, s.pinned, s.chunks) == (2, 1, 7)
    with pytest.raises(NotFound, match=r"stored versions: 1\.0\.0, 2\.0\.0"):
        again.find_manifest("m", "3.0.0")


def test_verify_manifest_reports_missing_and_corrupt(tmp_path: Path) -> None:
    pub = SigningIdentity(b"\x02" * 32)
    store = ChunkStore(tmp_path)
    chunks = [_data(i, 3000) for i in range(4)]
    for c in chunks[:3]:
        store.put(hash_chunk(c), c)
    h = hash_chunk(chunks[1])
    (tmp_path / "chunks" / h.hex()[:2] / h.hex()).write_bytes(b"x" * 3000)
    problems = store.verify_manifest(_manifest(pub, "1.0.0", chunks))
    assert sorted((p.chunk_hash, p.problem) for p in problems) == sorted(
        [(h.hex(), "corrupt"), (hash_chunk(chunks[3]).hex(), "missing")])


@settings(max_examples=25)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=12))
def test_property_index_matches_disk(tmp_path_factory: pytest.TempPathFactory,
                                     contents: list[bytes]) -> None:
    root = tmp_path_factory.mktemp("store")
    store = ChunkStore(root, fsync=False)
    for c in contents:
        store.put(hash_chunk(c), c)
    expected = {hash_chunk(c): c for c in contents}
    again = ChunkStore(root)
    assert again.hashes() == set(expected)
    assert again.statistics().bytes == sum(len(c) for c in expected.values())
    for h, c in expected.items():
        assert again.get(h) == c


_WRITER = textwrap.dedent("""
    import sys, blake3
    from agent._storage.store import ChunkStore
    store = ChunkStore(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        data = blake3.blake3(f"big-{sys.argv[2]}-{i}".encode()).digest(length=8 << 20)
        store.put(blake3.blake3(data).digest(), data)
        i += 1
""")


@pytest.mark.slow
def test_killed_writer_leaves_no_partial_chunk(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    root = tmp_path / "store"
    seen_temporary = False
    for run in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(run)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        seen_temporary |= bool(_temporaries(root))
        for path in _visible_chunks(root):  # whatever is visible is complete
            data = path.read_bytes()
            assert chunk_matches(bytes.fromhex(path.name), len(data), data), path
        store = ChunkStore(root)  # reopening removes the writer's temporary
        assert _temporaries(root) == []
        assert len(store) == len(_visible_chunks(root))
    assert len(_visible_chunks(root)) > 0
    # not asserted (timing-dependent), but reported: did a kill land mid-write?
    print(f"a kill left a temporary behind: {seen_temporary}")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_enospc_raises_insufficient_storage_and_leaves_nothing_partial(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        store = ChunkStore(mnt / "store")
        stored = 0
        with pytest.raises(InsufficientStorage, match="no space left"):
            for i in range(100):
                c = _data(i, 256 * 1024)
                store.put(hash_chunk(c), c)
                stored += 1
        assert 0 < stored < 100
        assert _temporaries(mnt / "store") == []
        assert len(_visible_chunks(mnt / "store")) == stored == len(store)
        for path in _visible_chunks(mnt / "store"):
            data = path.read_bytes()
            assert chunk_matches(bytes.fromhex(path.name), len(data), data)
        # after gc frees space, writing works again
        assert store.gc().chunks_freed == stored
        c = _data(1000, 256 * 1024)
        assert store.put(hash_chunk(c), c)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
