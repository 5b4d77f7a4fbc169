"""Writeback started early on a staged file (``files.writeback_file``) and by the store
as chunks are written in place: advisory, never a change to the bytes, the caller's fd
or the chunks' bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from agent._storage import files
from agent._storage import store as store_mod
from agent._storage.publish import publish
from agent._storage.store import ChunkStore
from protocol._chunking import ChunkParams
from protocol._identity import SigningIdentity

PUB = SigningIdentity(b"\x24" * 32)


def _drain() -> None:
    if files._flusher is not None:
        files._flusher.submit(lambda: None).result()


def test_writeback_file_keeps_bytes_and_fd(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = blake3.blake3(b"w").digest(length=3 << 20)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        files.writeback_file(str(path), fd)
        files.writeback_file(str(path), fd)     # again while one may be pending: fine
        _drain()
        assert str(path) not in files._flushing
        os.pwrite(fd, b"more", len(data))       # the caller's fd is still open and its own
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data + b"more"


def test_chunks_written_in_place_with_writeback_started(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A receiver's store with a low writeback step: every chunk is held and the
    installed bytes are the published ones; the per-file counters are gone when the
    pack is complete."""
    monkeypatch.setattr(store_mod, "WRITEBACK_BYTES", 64 * 1024)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    blob = blake3.blake3(b"model").digest(length=1 << 20)
    (pkg / "model.bin").write_bytes(blob)
    src = ChunkStore(tmp_path / "src")
    params = ChunkParams.around(16 * 1024)
    m = src.get_manifest(publish(src, pkg, "m", "1.0.0", PUB, params=params).manifest_id)
    dst = ChunkStore(tmp_path / "dst")
    dst.put_manifest(m)
    dst.stage(m, "default")
    refs = list(m.variant("default").files[0].chunks)
    for i in range(0, len(refs), 8):
        batch = [(r.hash, src.get(r.hash)) for r in refs[i:i + 8]]
        assert dst.put_verified_batch(batch) == [None] * len(batch)
    _drain()
    assert dst.missing(m, "default") == []
    pack = dst.complete(m, "default")
    assert (Path(pack) / "model.bin").read_bytes() == blob
    assert dst._unflushed == {}
