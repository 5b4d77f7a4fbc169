"""What ``ChunkStore.complete`` re-reads and hashes (issue 16, CPU per GiB).

A staged pack's chunks are verified before they are written in place. ``complete``
re-reads and hashes every range *except* those this process wrote itself from bytes it
had verified, or re-read and hashed when it reopened the pack after a crash
(``IndexedDir.checked``): ranges copied from other versions and published packs are
still hashed, and a chunk dropped as corrupt is no longer counted checked."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from agent._errors import ChunkCorrupted, StoreError
from agent._storage.files import pwrite_runs
from agent._storage.store import ChunkStore
from protocol._capabilities import Requirements
from protocol._chunking import hash_chunk
from protocol._identity import SigningIdentity
from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root

PUB = SigningIdentity(b"\x02" * 32)


def _data(i: int, size: int = 1500) -> bytes:
    return blake3.blake3(f"checked-{i}".encode()).digest(length=size)


def _manifest(version: str, chunks: list[bytes]) -> Manifest:
    refs = tuple(ChunkRef(hash_chunk(c), len(c)) for c in chunks)
    entry = FileEntry("w.bin", sum(r.size for r in refs), refs, merkle_root([r.hash for r in refs]))
    return Manifest.sign(PUB, "m", version, (Variant("default", Requirements(), (entry,)),), 0)


def _checked(store: ChunkStore, path: str) -> list[bool]:
    d = store._dirs[path]
    return [d.is_checked(p) for p in range(len(d))]


def _flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_chunks_written_here_are_checked_and_complete_installs_them(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i) for i in range(6)]
    m = _manifest("1.0.0", chunks)
    path = store.stage(m, "default")
    assert _checked(store, path) == [False] * 6
    for c in chunks[:4]:
        store.put(hash_chunk(c), c)
    assert store.missing(m, "default") == [hash_chunk(c) for c in chunks[4:]]
    store.put_verified_batch([(hash_chunk(c), c) for c in chunks[4:]])
    assert _checked(store, path) == [True] * 6
    assert store.missing(m, "default") == []        # (its own directory holds them all)
    assert store.complete(m, "default") == path
    assert (Path(path) / "w.bin").read_bytes() == b"".join(chunks)
    assert store.statistics().corrupt_detected == 0


def test_a_range_copied_from_another_version_is_still_hashed(tmp_path: Path) -> None:
    """2.0.0 shares a chunk with 1.0.0; completing 2.0.0 copies it from 1.0.0's file
    without hashing it on the way, so ``complete`` hashes it: a bad copy is found."""
    store = ChunkStore(tmp_path / "store")
    shared, own1, own2 = _data(1, 3000), _data(2), _data(3)
    m1 = _manifest("1.0.0", [shared, own1])
    p1 = store.stage(m1, "default")
    store.put(hash_chunk(shared), shared)
    store.put(hash_chunk(own1), own1)
    store.complete(m1, "default")
    _flip(Path(p1) / "w.bin", 100)            # bit rot in 1.0.0, not seen yet
    m2 = _manifest("2.0.0", [own2, shared])
    p2 = store.stage(m2, "default")
    store.put(hash_chunk(own2), own2)
    assert _checked(store, p2) == [True, False]
    with pytest.raises(ChunkCorrupted) as bad:
        store.complete(m2, "default")
    assert bad.value.chunk_hashes == (hash_chunk(shared),)
    assert not store._dirs[p2].holds(hash_chunk(shared)) and _checked(store, p2) == [True, False]
    with pytest.raises(ChunkCorrupted):
        store.get(hash_chunk(shared))         # 1.0.0's copy is found bad when read
    assert store.missing(m2, "default") == [hash_chunk(shared)]
    store.put(hash_chunk(shared), shared)     # fetched again, written here, verified
    assert store.complete(m2, "default") == p2
    assert (Path(p2) / "w.bin").read_bytes() == own2 + shared


def test_a_pack_reopened_after_a_crash_counts_what_it_rehashed_as_checked(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    chunks = [_data(i, 2000) for i in range(8)]
    m = _manifest("1.0.0", chunks)
    store = ChunkStore(root)
    path = store.stage(m, "default")
    for c in chunks[:5]:
        store.put(hash_chunk(c), c)
    store.close()                             # (a kill -9: the log names five)
    _flip(Path(path) / "w.bin", 3 * 2000 + 11)   # chunk 3's bytes never reached the disk
    again = ChunkStore(root)
    assert _checked(again, path) == [True, True, True, False, True, False, False, False]
    for c in chunks[3:]:
        again.put(hash_chunk(c), c)
    assert _checked(again, path) == [True] * 8
    assert again.complete(m, "default") == path
    assert (Path(path) / "w.bin").read_bytes() == b"".join(chunks)


def test_a_chunk_dropped_as_corrupt_is_no_longer_checked(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i) for i in range(3)]
    m = _manifest("1.0.0", chunks)
    path = store.stage(m, "default")
    for c in chunks:
        store.put(hash_chunk(c), c)
    _flip(Path(path) / "w.bin", 1500 + 5)     # chunk 1, changed on disk after the write
    with pytest.raises(ChunkCorrupted):
        store.get(hash_chunk(chunks[1]))      # a read hashes it: dropped
    assert _checked(store, path) == [True, False, True]
    assert store.missing(m, "default") == [hash_chunk(chunks[1])]
    store.put(hash_chunk(chunks[1]), chunks[1])   # repaired in place
    assert store.complete(m, "default") == path
    assert (Path(path) / "w.bin").read_bytes() == b"".join(chunks)


# ---------------------------------------------------------------- read_cached_many


def _views(sizes: list[int]) -> tuple[bytearray, list[memoryview]]:
    buf = bytearray(b"\xee" * sum(sizes))
    view, at, out = memoryview(buf), 0, []
    for n in sizes:
        out.append(view[at:at + n])
        at += n
    return buf, out


def test_read_cached_many_reads_runs_and_answers_each_chunk_on_its_own(
        tmp_path: Path) -> None:
    """The serving writer's read of a run: adjacent chunks of one file in one
    ``preadv``, every chunk verified on its own; a chunk it cannot vouch for (unknown,
    a wrong-sized slot, bytes on disk that do not match, past the end of a short
    file) is False and its slot is left for ``get``, the others are True and exact."""
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i, 1000 + 37 * i) for i in range(12)]
    m = _manifest("1.0.0", chunks)
    path = store.stage(m, "default")
    for c in chunks:
        store.put(hash_chunk(c), c)
    f = Path(path) / "w.bin"
    f.read_bytes()                            # in the page cache
    order = [0, 1, 2, 3, 7, 8, 5, 11, 10]     # runs, a jump back, a reversed pair
    hashes = [hash_chunk(chunks[i]) for i in order]
    buf, views = _views([len(chunks[i]) for i in order])
    assert store.read_cached_many(list(zip(hashes, views, strict=True))) == [True] * 9
    assert bytes(buf) == b"".join(chunks[i] for i in order)
    # an unknown chunk and a slot of the wrong size, amid good ones
    odd = [hash_chunk(chunks[0]), hash_chunk(_data(99)), hash_chunk(chunks[2])]
    _, views = _views([len(chunks[0]), 10, len(chunks[2]) - 1])
    assert store.read_cached_many(list(zip(odd, views, strict=True))) == [True, False, False]
    # bytes on disk changed under chunk 2: only it is refused
    offset = sum(map(len, chunks[:2])) + 3
    _flip(f, offset)
    run = [hash_chunk(c) for c in chunks[:5]]
    buf, views = _views([len(c) for c in chunks[:5]])
    assert store.read_cached_many(list(zip(run, views, strict=True))) == [
        True, True, False, True, True]
    assert bytes(buf[:offset - 3]) == b"".join(chunks[:2])
    # a file cut short: the chunks the read covered are good, the rest are not
    _flip(f, offset)
    with open(f, "r+b") as fh:
        fh.truncate(sum(map(len, chunks[:3])) + 5)
    buf, views = _views([len(c) for c in chunks[:5]])
    assert store.read_cached_many(list(zip(run, views, strict=True))) == [
        True, True, True, False, False]
    assert bytes(buf[:sum(map(len, chunks[:3]))]) == b"".join(chunks[:3])


# ---------------------------------------------------------------- batched writes


def test_pwrite_runs_writes_every_range_and_names_the_ones_that_failed(
        tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"." * 40)
    b.write_bytes(b"." * 40)
    fa = os.open(a, os.O_WRONLY)
    fb = os.open(b, os.O_WRONLY)
    closed = os.open(a, os.O_RDONLY)          # not writable: its writes fail
    try:
        failed = pwrite_runs([
            (fa, 10, b"CC", 3), (fa, 0, b"AAAA", 1), (fb, 5, memoryview(b"xy"), 4),
            (fa, 4, b"BBBBBB", 2), (fa, 20, b"D", 5), (closed, 30, b"Z", 6),
        ])
    finally:
        for fd in (fa, fb, closed):
            os.close(fd)
    assert set(failed) == {6} and isinstance(failed[6], OSError)
    assert a.read_bytes() == b"AAAABBBBBBCC" + b"." * 8 + b"D" + b"." * 19
    assert b.read_bytes() == b"....." + b"xy" + b"." * 33


def test_a_batch_answers_per_chunk_as_single_puts_did(tmp_path: Path) -> None:
    """One batch: the chunks in a run are written with one pwritev, and each chunk
    gets the answer a put of its own would have got -- new, held already (twice in
    the batch, or held before), wrong size, not wanted -- with the counters to match."""
    store = ChunkStore(tmp_path / "store")
    chunks = [_data(i, 700 + i) for i in range(6)]
    m = _manifest("1.0.0", chunks)
    path = store.stage(m, "default")
    store.put(hash_chunk(chunks[5]), chunks[5])
    batch: list[tuple[bytes, bytes]] = [
        (hash_chunk(chunks[0]), chunks[0]),
        (hash_chunk(chunks[1]), chunks[1]),
        (hash_chunk(chunks[1]), chunks[1]),           # twice in the batch
        (hash_chunk(chunks[2]), chunks[2][:-1]),      # wrong size
        (hash_chunk(chunks[3]), chunks[3]),
        (hash_chunk(chunks[5]), chunks[5]),           # held before
        (hash_chunk(_data(77)), _data(77)),           # no version wants it
    ]
    results = store._put_many(batch, trusted_hash=True)
    assert results[:3] == [True, True, False] and results[4:6] == [True, False]
    assert isinstance(results[3], ChunkCorrupted) and isinstance(results[6], StoreError)
    s = store.statistics()
    assert (s.puts_new, s.puts_duplicate) == (1 + 3, 2)
    assert store.missing(m, "default") == [hash_chunk(chunks[2]), hash_chunk(chunks[4])]
    assert _checked(store, path) == [True, True, False, True, False, True]
    store.put_verified_batch([(hash_chunk(c), c) for c in (chunks[2], chunks[4])])
    assert store.complete(m, "default") == path
    assert (Path(path) / "w.bin").read_bytes() == b"".join(chunks)
