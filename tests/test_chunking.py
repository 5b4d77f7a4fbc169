"""Content-defined chunking: determinism, streaming == whole-buffer, locality of edits."""

from __future__ import annotations

import io
import random
import sys

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import _chunking
from protocol._chunking import (
    DEFAULT_PARAMS,
    MAX_CHUNK_SIZE,
    ChunkParams,
    chunk_bytes,
    chunk_matches,
    chunk_stream,
    chunk_view,
    hash_chunk,
    require_compiled_fastcdc,
)
from protocol._errors import InvalidValue, ShoalError
from protocol._manifest import ChunkRef

SMALL = ChunkParams(64, 256, 1024)  # fastcdc's smallest sizes: many chunks from little data


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _stream(data: bytes, params: ChunkParams, window: int, read_cap: int | None = None
            ) -> list[tuple[bytes, bytes]]:
    src = io.BytesIO(data)

    def read(n: int) -> bytes:
        return src.read(n if read_cap is None else min(n, read_cap))

    return list(chunk_stream(read, params, window))


def test_boundaries_are_deterministic_and_cover_the_data() -> None:
    data = _data(1, 200_000)
    a = chunk_bytes(data, SMALL)
    b = chunk_bytes(bytes(data), SMALL)
    assert a == b
    assert sum(c.size for c in a) == len(data)
    assert len(a) > 100  # content-defined, not one big chunk
    assert all(c.size <= SMALL.max_size for c in a)
    assert all(c.size >= SMALL.min_size for c in a[:-1])
    offset = 0
    for c in a:
        assert c.hash == hash_chunk(data[offset:offset + c.size])
        offset += c.size


def test_known_vector_pins_the_algorithm() -> None:
    # Boundaries are part of the protocol: every node, every release, must cut the same
    # bytes the same way (a changed gear table or mask would silently kill dedup).
    data = blake3.blake3(b"shoal-chunking-vector").digest(length=20_000)
    refs = chunk_bytes(data, SMALL)
    assert [c.size for c in refs[:12]] == [174, 204, 372, 270, 190, 123, 162, 158, 142, 85,
                                            101, 276]
    assert len(refs) == 82 and refs[-1].size == 31
    assert refs[0].hash.hex() == (
        "eda79d6e554c4cac0378a3f6145d1eebe5d6da11eb277b9f6c86d6cbc792b12e")
    assert hash_chunk(b"abc").hex() == (
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")


def test_empty_input_has_no_chunks() -> None:
    assert chunk_bytes(b"", SMALL) == []
    assert _stream(b"", SMALL, SMALL.max_size) == []


@given(size=st.integers(0, 60_000), window_extra=st.integers(0, 30_000),
       read_cap=st.one_of(st.none(), st.integers(1, 5_000)), seed=st.integers(0, 2**32))
def test_stream_equals_whole_buffer(size: int, window_extra: int, read_cap: int | None,
                                    seed: int) -> None:
    data = _data(seed, size)
    window = SMALL.max_size + window_extra
    got = _stream(data, SMALL, window, read_cap)
    assert [ChunkRef(h, len(b)) for h, b in got] == chunk_bytes(data, SMALL)
    assert b"".join(b for _, b in got) == data
    assert all(h == hash_chunk(b) for h, b in got)


@pytest.mark.parametrize("window", [1024, 1025, 4096, 65_536, 1 << 20])
def test_stream_equals_whole_buffer_at_fixed_windows(window: int) -> None:
    data = _data(window, 300_000)
    got = _stream(data, SMALL, window)
    assert [ChunkRef(h, len(b)) for h, b in got] == chunk_bytes(data, SMALL)


@given(size=st.integers(0, 60_000), window_extra=st.integers(0, 30_000),
       seed=st.integers(0, 2**32), zeros=st.booleans())
def test_windows_of_a_view_equal_the_whole_buffer(size: int, window_extra: int, seed: int,
                                                  zeros: bool) -> None:
    """chunk_view over successive windows of a (mapped) buffer, as publish cuts a file,
    gives the boundaries and hashes of chunk_bytes on the whole content."""
    data = bytes(size) if zeros else _data(seed, size)
    window = SMALL.max_size + window_extra
    view, pos, got = memoryview(data), 0, []
    while pos < size:
        end = min(size, pos + window)
        refs, used = chunk_view(view[pos:end], SMALL, eof=end == size)
        got.extend(refs)
        pos += used
    assert got == chunk_bytes(data, SMALL)


def test_stream_with_max_size_runs() -> None:
    # Data with no cut points (all zeros) is cut at max_size; a chunk that ends exactly at a
    # window's end is then complete and must not be carried forever.
    data = bytes(10 * SMALL.max_size + 17)
    got = _stream(data, SMALL, SMALL.max_size)
    assert [len(b) for _, b in got] == [SMALL.max_size] * 10 + [17]
    assert [ChunkRef(h, len(b)) for h, b in got] == chunk_bytes(data, SMALL)


def test_stream_default_params_multiple_windows() -> None:
    p = ChunkParams.around(16 * 1024)
    data = _data(3, 1_500_000)
    got = _stream(data, p, p.max_size * 3 + 123)
    assert [ChunkRef(h, len(b)) for h, b in got] == chunk_bytes(data, p)


def test_stream_memory_is_bounded_by_the_window() -> None:
    """The reads asked of the source never exceed the window (so neither does the buffer)."""
    asked: list[int] = []
    src = io.BytesIO(_data(4, 200_000))

    def read(n: int) -> bytes:
        asked.append(n)
        return src.read(n)

    window = 4 * SMALL.max_size
    for _ in chunk_stream(read, SMALL, window):
        pass
    assert max(asked) <= window
    assert len(asked) > 200_000 // window  # it really read window by window


def test_insertion_near_start_changes_only_nearby_chunks() -> None:
    p = ChunkParams.around(4096)
    old = _data(5, 1_000_000)
    new = old[:1000] + b"inserted!" + old[1000:]
    old_chunks = chunk_bytes(old, p)
    new_chunks = chunk_bytes(new, p)
    old_hashes = {c.hash for c in old_chunks}
    fresh = [c for c in new_chunks if c.hash not in old_hashes]
    assert 1 <= len(fresh) <= 3
    assert sum(c.size for c in fresh) <= 3 * p.max_size
    survived = sum(1 for c in new_chunks if c.hash in old_hashes)
    assert survived >= len(old_chunks) - 3


def test_fixed_size_chunking_would_not_survive_the_same_edit() -> None:
    """Control for the test above: the data and edit really do shift every offset."""
    old = _data(5, 1_000_000)
    new = old[:1000] + b"inserted!" + old[1000:]
    size = 4096
    blocks = {old[i:i + size] for i in range(0, len(old), size)}
    same = sum(1 for i in range(0, len(new), size) if new[i:i + size] in blocks)
    assert same == 0


def test_chunk_matches() -> None:
    data = _data(6, 5000)
    h = hash_chunk(data)
    assert chunk_matches(h, len(data), data)
    flipped = bytearray(data)
    flipped[2500] ^= 0x01
    assert not chunk_matches(h, len(data), bytes(flipped))
    assert not chunk_matches(h, len(data) + 1, data)
    assert not chunk_matches(h, len(data) - 1, data)
    assert not chunk_matches(h, len(data) - 1, data[:-1])
    assert not chunk_matches(h[:31], len(data), data)


def test_compiled_fastcdc_is_in_use() -> None:
    require_compiled_fastcdc()  # the project's own environment must have the fast build


def test_pure_python_fallback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Make `from fastcdc import fastcdc` resolve to the fallback, as on a platform
    # without a wheel: the Cython module cannot be imported.
    monkeypatch.delitem(sys.modules, "fastcdc")
    monkeypatch.setitem(sys.modules, "fastcdc.fastcdc_cy", None)
    fallback = _chunking._load_fastcdc()
    assert fallback is not None
    assert fallback.__module__ == "fastcdc.fastcdc_py"
    monkeypatch.setattr(_chunking, "_cdc", fallback)
    with pytest.raises(ShoalError, match="pure-Python fallback"):
        require_compiled_fastcdc()
    with pytest.raises(ShoalError):
        chunk_bytes(b"x" * 10_000, SMALL)
    with pytest.raises(ShoalError):
        next(chunk_stream(io.BytesIO(b"x" * 10_000).read, SMALL))


def test_missing_fastcdc_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_chunking, "_cdc", None)
    with pytest.raises(ShoalError, match="not installed"):
        require_compiled_fastcdc()


@pytest.mark.parametrize(
    ("lo", "avg", "hi"),
    [(63, 256, 1024), (64, 255, 1024), (64, 256, 1023), (512, 256, 1024),
     (64, 2048, 1024), (1 << 20, 1 << 21, MAX_CHUNK_SIZE + 1)],
)
def test_bad_params_are_refused(lo: int, avg: int, hi: int) -> None:
    with pytest.raises(InvalidValue):
        ChunkParams(lo, avg, hi)


def test_params_must_be_ints() -> None:
    with pytest.raises(InvalidValue):
        ChunkParams(64, 256.0, 1024)  # type: ignore[arg-type]


def test_window_smaller_than_max_size_is_refused() -> None:
    with pytest.raises(InvalidValue, match="window"):
        next(chunk_stream(io.BytesIO(b"abc").read, SMALL, SMALL.max_size - 1))


def test_default_params_shape() -> None:
    p = DEFAULT_PARAMS
    assert p.min_size * 4 == p.avg_size and p.avg_size * 4 == p.max_size
    assert p.max_size <= MAX_CHUNK_SIZE
