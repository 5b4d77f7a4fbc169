"""The content store as an index into the files of the versions kept: staged packs
written in place, verification on read, resume from the progress log, pins, gc."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._errors import ChunkCorrupted, ChunkNotFound, InsufficientStorage, NotFound, StoreError
from agent._storage.store import PROGRESS_LOG, ChunkStore
from protocol._capabilities import Requirements
from protocol._chunking import hash_chunk
from protocol._errors import ChunkIntegrityError
from protocol._identity import SigningIdentity
from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root

REPO = Path(__file__).resolve().parent.parent
PUB = SigningIdentity(b"\x01" * 32)


def _data(i: int, size: int = 1000) -> bytes:
    return blake3.blake3(f"chunk-{i}".encode()).digest(length=size)


def _manifest(version: str, chunks: list[bytes], pub: SigningIdentity = PUB,
              model: str = "m") -> Manifest:
    refs = tuple(ChunkRef(hash_chunk(c), len(c)) for c in chunks)
    entry = FileEntry("w.bin", sum(r.size for r in refs), refs, merkle_root([r.hash for r in refs]))
    return Manifest.sign(pub, model, version, (Variant("default", Requirements(), (entry,)),), 0)


def _fill(store: ChunkStore, m: Manifest, chunks: list[bytes]) -> Path:
    path = Path(store.stage(m, "default"))
    for c in chunks:
        store.put(hash_chunk(c), c)
    return path


def _no_chunk_files(root: Path) -> bool:
    return not (root / "chunks").exists()


def test_stage_put_get_roundtrip_and_reopen(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i, 100 + i) for i in range(20)]
    m = _manifest("1.0.0", chunks)
    pack = Path(store.stage(m, "default"))
    assert store.is_pinned(m.manifest_id)             # a fetch in progress survives gc
    assert (pack / "w.bin").stat().st_size == sum(map(len, chunks))   # preallocated
    for c in chunks:
        assert store.put(hash_chunk(c), c) is True
    assert store.put(hash_chunk(chunks[0]), chunks[0]) is False  # already held
    for c in chunks:
        h = hash_chunk(c)
        assert store.has(h) and h in store
        assert store.size_of(h) == len(c)
        assert store.get(h) == c
    s = store.statistics()
    assert (s.chunks, s.bytes, s.puts_new, s.puts_duplicate, s.staged) == (
        20, sum(map(len, chunks)), 20, 1, 1)
    # one copy: the chunks are the version's file, written in place
    assert (pack / "w.bin").read_bytes() == b"".join(chunks)
    assert _no_chunk_files(tmp_path / "store")
    store.close()
    # the index is rebuilt from disk (the progress log is re-read and verified)
    again = ChunkStore(tmp_path / "store")
    assert again.hashes() == {hash_chunk(c) for c in chunks}
    assert again.statistics().bytes == sum(map(len, chunks))
    assert again.complete(m, "default") == str(pack)
    assert not (pack / PROGRESS_LOG).exists()
    assert again.statistics().staged == 0


def test_put_of_a_chunk_nothing_needs_is_refused(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    c = _data(5)
    with pytest.raises(StoreError, match="no version being fetched needs it"):
        store.put(hash_chunk(c), c)
    assert not store.has(hash_chunk(c)) and len(store) == 0


def test_put_refuses_bytes_that_do_not_match(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    good, bad = _data(1), _data(2)
    pack = Path(store.stage(_manifest("1.0.0", [good]), "default"))
    with pytest.raises(ChunkCorrupted) as info:
        store.put(hash_chunk(good), bad)
    assert isinstance(info.value, ChunkIntegrityError)
    assert not store.has(hash_chunk(good))
    assert (pack / "w.bin").read_bytes() == b"\0" * len(good)   # nothing written
    assert store.statistics().corrupt_detected == 1


def test_corrupt_bytes_are_never_served_and_a_refetch_repairs_them(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i, 5000) for i in range(3)]
    pack = _fill(store, _manifest("1.0.0", chunks), chunks)
    h = hash_chunk(chunks[1])
    f = pack / "w.bin"
    blob = bytearray(f.read_bytes())
    blob[5000 + 1234] ^= 0x01
    f.write_bytes(bytes(blob))
    with pytest.raises(ChunkCorrupted, match="does not match"):
        store.get(h)
    assert not store.has(h)  # the swarm will fetch it again
    s = store.statistics()
    assert (s.corrupt_detected, s.quarantined, s.chunks) == (1, 1, 2)
    with pytest.raises(ChunkNotFound):
        store.get(h)
    assert store.put(h, chunks[1]) is True  # refetched: written back in place
    assert store.get(h) == chunks[1]
    assert f.read_bytes() == b"".join(chunks)


def test_get_cached_serves_verified_bytes_and_leaves_doubt_to_get(tmp_path: Path) -> None:
    """``get_cached`` (the serving writer's read on the event loop's thread) gives the
    verified bytes of a chunk whose bytes are in the page cache, and None, never
    wrong bytes, for anything else: an unknown chunk, a busy index lock, a chunk whose
    bytes on disk do not match (left to ``get``, which quarantines it)."""
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i, 5000) for i in range(3)]
    pack = _fill(store, _manifest("1.0.0", chunks), chunks)
    (pack / "w.bin").read_bytes()          # in the page cache now
    for c in chunks:
        assert store.get_cached(hash_chunk(c)) == c
    assert store.get_cached(hash_chunk(_data(99))) is None
    held, release = threading.Event(), threading.Event()

    def worker() -> None:                  # a worker thread holds the index: do not wait
        with store._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    held.wait(10)
    try:
        assert store.get_cached(hash_chunk(chunks[0])) is None
    finally:
        release.set()
        t.join()
    f = pack / "w.bin"
    blob = bytearray(f.read_bytes())
    blob[5000 + 7] ^= 0x01
    f.write_bytes(bytes(blob))
    h = hash_chunk(chunks[1])
    assert store.get_cached(h) is None
    assert store.statistics().corrupt_detected == 0    # nothing decided there
    with pytest.raises(ChunkCorrupted):
        store.get(h)
    assert not store.has(h) and store.get_cached(h) is None
    assert store.get_cached(hash_chunk(chunks[2])) == chunks[2]


def test_a_chunk_held_twice_is_served_from_the_good_copy(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    shared = _data(1, 3000)
    p1 = _fill(store, _manifest("1.0.0", [shared, _data(2)]), [shared, _data(2)])
    p2 = _fill(store, _manifest("2.0.0", [_data(3), shared]), [_data(3)])
    # 2.0.0 did not receive `shared`: it was held; completing copies it in
    assert store.complete(_manifest("2.0.0", [_data(3), shared]), "default") == str(p2)
    assert (p2 / "w.bin").read_bytes() == _data(3) + shared
    (p1 / "w.bin").write_bytes(b"x" * 4000)
    assert store.get(hash_chunk(shared)) == shared         # served from 2.0.0
    assert store.has(hash_chunk(shared))
    with pytest.raises(ChunkCorrupted):                    # only 1.0.0 had it
        store.get(hash_chunk(_data(2)))
    assert not store.has(hash_chunk(_data(2)))


def test_truncated_file_detected(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    c = _data(8, 4000)
    pack = _fill(store, _manifest("1.0.0", [c]), [c])
    (pack / "w.bin").write_bytes(c[:100])
    assert store.check(hash_chunk(c), len(c)) == "corrupt"
    assert store.check(hash_chunk(c), len(c)) == "missing"


def test_complete_refuses_what_is_held_nowhere(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i) for i in range(3)]
    m = _manifest("1.0.0", chunks)
    with pytest.raises(ChunkNotFound, match="fetch the version first"):
        store.complete(m, "default")
    assert list((tmp_path / "store" / "packs").iterdir()) == []   # nothing allocated


def test_a_pack_being_written_by_another_process_survives_an_open(tmp_path: Path) -> None:
    """A publish from the command line writes its pack while a daemon starts on the same
    data directory: the daemon's open must leave the publisher's temporary alone (it
    removed it, and the publish failed with "No such file or directory")."""
    root = tmp_path / "store"
    publisher = ChunkStore(root)
    tmp = publisher.new_pack_dir()
    (tmp / "w.bin").write_bytes(b"being written")
    held = subprocess.run(
        [sys.executable, "-c", "import sys; from agent._storage.store import ChunkStore; "
         "ChunkStore(sys.argv[1])", str(root)], cwd=REPO, capture_output=True, text=True)
    assert held.returncode == 0, held.stderr
    assert (tmp / "w.bin").read_bytes() == b"being written"     # still there
    publisher.release_pack_dir(tmp)                               # the publisher is gone
    ChunkStore(root)
    assert not tmp.exists()                                       # now it is stale


def test_stale_temporaries_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ChunkStore(root)
    c = _data(1)
    _fill(store, _manifest("1.0.0", [c]), [c])
    store.close()
    (root / "packs" / ".tmp-deadbeef").mkdir()
    (root / "packs" / ".tmp-deadbeef" / "half.bin").write_bytes(b"partial")
    (root / "manifests" / ".tmp-00").write_bytes(b"partial")
    # a pack whose manifest was never stored (a publish killed before its end)
    orphan = root / "packs" / f"{'ab' * 32}.default"
    orphan.mkdir()
    (orphan / ".shoal-pack").write_text('{"manifest_id": "' + "ab" * 32 + '", '
                                        '"variant_id": "default"}')
    again = ChunkStore(root)
    assert sorted(p.name for p in (root / "packs").iterdir()) == [
        f"{_manifest('1.0.0', [c]).manifest_id}.default"]
    assert not (root / "manifests" / ".tmp-00").exists()
    assert again.statistics().stale_temporaries_removed == 3
    assert again.hashes() == {hash_chunk(c)}


def test_resume_counts_only_logged_chunks_whose_bytes_verify(tmp_path: Path) -> None:
    """After a crash the progress log names what was written; each is re-read and
    hashed on open, so bytes a power cut lost are fetched again, never counted."""
    root = tmp_path / "store"
    chunks = [_data(i, 2000) for i in range(10)]
    m = _manifest("1.0.0", chunks)
    store = ChunkStore(root)
    pack = Path(store.stage(m, "default"))
    for c in chunks[:6]:
        store.put(hash_chunk(c), c)
    store.close()
    f = pack / "w.bin"
    blob = bytearray(f.read_bytes())
    blob[2 * 2000 + 7] ^= 0xFF           # chunk 2's bytes "lost"
    f.write_bytes(bytes(blob))
    with open(pack / PROGRESS_LOG, "ab") as log:
        log.write(b"\x01" * 17)          # a torn last record
    again = ChunkStore(root)
    assert again.hashes() == {hash_chunk(c) for i, c in enumerate(chunks[:6]) if i != 2}
    assert again.missing(m, "default") == [hash_chunk(c) for i, c in enumerate(chunks)
                                           if i == 2 or i >= 6]
    for c in chunks:
        again.put(hash_chunk(c), c)
    again.complete(m, "default")
    assert f.read_bytes() == b"".join(chunks)


def test_pins_and_gc_work_on_versions(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    shared = [_data(i) for i in range(5)]
    only1, only2 = [_data(100)], [_data(200), _data(201)]
    m1 = _manifest("1.0.0", shared + only1)
    m2 = _manifest("2.0.0", shared + only2)
    p1 = _fill(store, m1, shared + only1)
    p2 = _fill(store, m2, only2)
    assert store.refcount(hash_chunk(shared[0])) == 2
    assert store.gc().versions_removed == ()     # both pinned
    store.complete(m2, "default")
    store.unpin(m1.manifest_id)
    res = store.gc()
    assert res.versions_removed == (str(p1),) and not p1.exists() and p2.exists()
    assert (res.chunks_freed, res.bytes_freed) == (1, len(only1[0]))   # shared: in 2.0.0
    assert all(store.has(hash_chunk(c)) for c in shared + only2)
    store.close()
    # pins, manifests and refcounts survive a reopen
    again = ChunkStore(tmp_path / "store")
    assert again.is_pinned(m2.manifest_id) and not again.is_pinned(m1.manifest_id)
    assert again.get_manifest(m1.manifest_id) == m1
    assert again.find_manifest("m", "2.0.0") == m2
    assert again.refcount(hash_chunk(shared[0])) == 1
    assert again.gc().chunks_freed == 0
    s = again.statistics()
    assert (s.manifests, s.pinned, s.chunks, s.packs) == (2, 1, 7, 1)
    with pytest.raises(NotFound, match=r"stored versions: 1\.0\.0, 2\.0\.0"):
        again.find_manifest("m", "3.0.0")


def test_verify_manifest_reports_missing_and_corrupt(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i, 3000) for i in range(4)]
    m = _manifest("1.0.0", chunks)
    pack = _fill(store, m, chunks[:3])
    f = pack / "w.bin"
    blob = bytearray(f.read_bytes())
    blob[3000:6000] = b"x" * 3000
    f.write_bytes(bytes(blob))
    problems = store.verify_manifest(m)
    assert sorted((p.chunk_hash, p.problem) for p in problems) == sorted(
        [(hash_chunk(chunks[1]).hex(), "corrupt"), (hash_chunk(chunks[3]).hex(), "missing")])


@settings(max_examples=25)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=12))
def test_property_index_matches_disk(tmp_path_factory: pytest.TempPathFactory,
                                     contents: list[bytes]) -> None:
    root = tmp_path_factory.mktemp("store") / "store"
    store = ChunkStore(root, fsync=False)
    if contents:
        _fill(store, _manifest("1.0.0", contents), contents)
    store.close()
    expected = {hash_chunk(c): c for c in contents}
    again = ChunkStore(root)
    assert again.hashes() == set(expected)
    assert again.statistics().bytes == sum(len(c) for c in expected.values())
    for h, c in expected.items():
        assert again.get(h) == c


_WRITER = textwrap.dedent("""
    import sys, blake3
    from agent._storage.store import ChunkStore
    from protocol._capabilities import Requirements
    from protocol._identity import SigningIdentity
    from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root
    chunks = [blake3.blake3(f"big-{i}".encode()).digest(length=1 << 20) for i in range(64)]
    refs = tuple(ChunkRef(blake3.blake3(c).digest(), len(c)) for c in chunks)
    entry = FileEntry("w.bin", sum(r.size for r in refs), refs,
                      merkle_root([r.hash for r in refs]))
    m = Manifest.sign(SigningIdentity(b"\\x05" * 32), "m", "1.0.0",
                      (Variant("default", Requirements(), (entry,)),), 0)
    store = ChunkStore(sys.argv[1])
    store.stage(m, "default")
    print("ready", flush=True)
    for r, c in zip(refs, chunks):
        store.put(r.hash, c)
    print("done", flush=True)
""")


@pytest.mark.slow
def test_killed_writer_leaves_nothing_held_that_is_not_there(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    root = tmp_path / "store"
    held = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        store = ChunkStore(root)   # re-verifies the progress log
        assert len(store) >= held  # nothing verified and written is lost
        held = len(store)
        for h in store.hashes():
            store.get(h)           # every chunk held reads back and verifies
        store.close()
    print(f"held after the kills: {held} of 64 chunks")


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
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (2 << 20))
        big = [_data(i, 256 * 1024) for i in range(6)]       # 1.5 MiB: does not fit
        m = _manifest("1.0.0", big)
        with pytest.raises(InsufficientStorage, match="no space left"):
            store.stage(m, "default")
        # the preallocation failed before any byte was fetched; nothing is left behind
        assert list((mnt / "store" / "packs").iterdir()) == []
        assert len(store) == 0
        filler.unlink()                  # space freed: staging and writing work again
        pack = _fill(store, m, big)
        store.complete(m, "default")
        assert (pack / "w.bin").read_bytes() == b"".join(big)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def test_forgetting_manifests_keeps_those_a_version_on_disk_or_a_pin_needs(
        tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    held, pinned, loose = (_manifest(v, [_data(k)]) for k, v in
                           enumerate(("1.0.0", "2.0.0", "3.0.0")))
    _fill(store, held, [_data(0)])                 # a pack of it is on disk
    store.complete(held, "default")
    store.unpin(held.manifest_id)
    for m in (pinned, loose):
        store.put_manifest(m)
    store.pin(pinned.manifest_id)
    ids = {m.manifest_id for m in (held, pinned, loose)}
    assert store.forget_manifests(ids | {"f" * 64}) == [loose.manifest_id]
    assert {m.manifest_id for m in store.manifests()} == ids - {loose.manifest_id}
    files = {p.name for p in (tmp_path / "store" / "manifests").iterdir()}
    assert files == ids - {loose.manifest_id}
    store.close()
    again = ChunkStore(tmp_path / "store")           # and it stays forgotten
    assert loose.manifest_id not in {m.manifest_id for m in again.manifests()}
