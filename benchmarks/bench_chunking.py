"""Chunk size by measurement: throughput, delta ratio and chunk count per candidate.

For each candidate average size (64 KiB .. 1 MiB; min = avg/4, max = avg*4) on a
synthetic safetensors-like model (8-byte little-endian header length, JSON
header, raw tensor bytes of high entropy, as trained weights are):

* ``chunk+hash throughput``: :func:`protocol.chunk_stream` over the
  in-memory file (the publish path without the disk);
* ``delta ratio`` after a realistic edit — the header gains a metadata entry
  (a few bytes inserted near the start, shifting everything after it) and
  about 2% of the tensor bytes are overwritten in scattered 1 MiB regions (a
  fine-tune of a few layers): bytes of chunks the new version has and the old
  one lacks, divided by the bytes that really changed (1.0 is ideal);
* ``chunks per GiB`` and the encoded chunk-list bytes per GiB (what manifests,
  have-sets and requests pay per chunk).

With ``quick=False`` it also writes a 1 GiB file and compares
``chunk_stream(file.read)`` with FastCDC+BLAKE3 alone (fastcdc over the mmapped
path, BLAKE3 of each chunk) at the default parameters, and reports the Python
heap peak of ``chunk_stream`` on that file (it must not grow with the file).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import random
import statistics
import tempfile
import time
import tracemalloc
from typing import Any

import blake3
from fastcdc import fastcdc

from protocol import DEFAULT_PARAMS, ChunkParams, ChunkRef, chunk_stream, encode_value

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
CANDIDATES = (64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB, 1 * MIB)


def _random_bytes(seed: int, n: int) -> bytes:
    """High-entropy, reproducible bytes (BLAKE3 in XOF mode: GB/s, unlike randbytes)."""
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def synthetic_model(size: int, seed: int = 1) -> tuple[bytes, int]:
    """A safetensors-like file of about ``size`` bytes; returns (file, header length)."""
    rng = random.Random(seed)
    tensors: dict[str, Any] = {}
    offset = 0
    layer = 0
    while offset < size:
        for part, scale in (("attn.qkv", 3), ("attn.out", 1), ("mlp.up", 4), ("mlp.down", 4)):
            rows = 1024 * scale
            n = min(rows * 1024 * 2 * rng.choice((1, 1, 2)), max(size - offset, 2))
            n -= n % 2
            tensors[f"layers.{layer}.{part}.weight"] = {
                "dtype": "F16", "shape": [n // 2 // 1024, 1024] if n >= 2048 else [n // 2],
                "data_offsets": [offset, offset + n],
            }
            offset += n
            if offset >= size:
                break
        layer += 1
    header = json.dumps({"__metadata__": {"format": "pt"}, **tensors}).encode()
    body = _random_bytes(seed, offset)
    return len(header).to_bytes(8, "little") + header + body, 8 + len(header)


def edited(model: bytes, header_len: int, fraction: float, seed: int = 2) -> tuple[bytes, int]:
    """Insert a metadata entry in the header, overwrite ``fraction`` of the tensor bytes
    in scattered 1 MiB regions. Returns (new file, bytes really changed)."""
    header = json.loads(model[8:header_len])
    header["__metadata__"]["finetune"] = "run-42"
    new_header = json.dumps(header).encode()
    inserted = len(new_header) - (header_len - 8)
    body = bytearray(model[header_len:])
    rng = random.Random(seed)
    regions = max(1, round(len(body) * fraction / MIB))
    # distinct 2 MiB slots, one 1 MiB region at a random offset inside each: no overlaps
    slots = rng.sample(range(len(body) // (2 * MIB)), regions)
    changed = inserted
    for i, slot in enumerate(slots):
        start = slot * 2 * MIB + rng.randrange(0, MIB)
        body[start:start + MIB] = _random_bytes(seed * 1000 + i, MIB)
        changed += MIB
    return len(new_header).to_bytes(8, "little") + new_header + bytes(body), changed


def _stream(data: bytes, params: ChunkParams) -> list[tuple[bytes, int]]:
    return [(h, len(c)) for h, c in chunk_stream(io.BytesIO(data).read, params)]


def _chunk_list_bytes(chunks: list[tuple[bytes, int]]) -> int:
    return sum(len(encode_value(ChunkRef(h, n))) for h, n in chunks)


def _candidates(model: bytes, new: bytes, changed: int, repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    size = len(model)
    for avg in CANDIDATES:
        params = ChunkParams.around(avg)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            old_chunks = _stream(model, params)
            times.append(time.perf_counter() - t0)
        new_chunks = _stream(new, params)
        old_set = {h for h, _ in old_chunks}
        new_bytes = sum(n for h, n in {h: n for h, n in new_chunks}.items() if h not in old_set)
        label = f"avg {avg // KIB} KiB"
        per_gib = len(old_chunks) * GIB / size
        rows += [
            {"name": f"chunking {label}: chunk+hash throughput",
             "value": round(size / statistics.median(times) / MIB), "unit": "MiB/s",
             "detail": f"median of {repeats} on {size // MIB} MiB"},
            {"name": f"chunking {label}: delta ratio (new chunk bytes / changed)",
             "value": round(new_bytes / changed, 2), "unit": "x",
             "detail": f"{new_bytes / MIB:.1f} MiB fetched for {changed / MIB:.2f} MiB changed"},
            {"name": f"chunking {label}: chunks per GiB",
             "value": round(per_gib), "unit": "chunks",
             "detail": f"{len(old_chunks)} chunks, chunk list "
                       f"{_chunk_list_bytes(old_chunks) * GIB / size / KIB:.0f} KiB per GiB"},
        ]
    return rows


def _file_pipeline(size: int) -> list[dict[str, Any]]:
    """chunk_stream over a real file against FastCDC+BLAKE3 alone, default params."""
    p = DEFAULT_PARAMS
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.bin")
        with open(path, "wb") as f:
            for i in range(size // (64 * MIB)):
                f.write(_random_bytes(100 + i, 64 * MIB))

        def raw() -> int:
            n = 0
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                for c in fastcdc(view, p.min_size, p.avg_size, p.max_size):
                    blake3.blake3(view[c.offset:c.offset + c.length]).digest()
                    n += 1
                del c
                view.release()
            return n

        def ours() -> int:
            with open(path, "rb", buffering=0) as f:
                return sum(1 for _ in chunk_stream(f.read, p))

        raw()  # warm the page cache
        t_raw, t_ours = [], []
        for _ in range(2):  # interleaved, the machine is noisy
            t0 = time.perf_counter()
            n_raw = raw()
            t_raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n_ours = ours()
            t_ours.append(time.perf_counter() - t0)
        assert n_raw == n_ours, (n_raw, n_ours)
        tracemalloc.start()
        ours()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    label = f"{size // MIB} MiB file, avg {p.avg_size // KIB} KiB"
    raw_rate = size / min(t_raw) / MIB
    our_rate = size / min(t_ours) / MIB
    rows += [
        {"name": f"FastCDC+BLAKE3 alone ({label})", "value": round(raw_rate), "unit": "MiB/s",
         "detail": "fastcdc over the mmapped file, best of 2"},
        {"name": f"chunk_stream(file.read) ({label})", "value": round(our_rate),
         "unit": "MiB/s", "detail": f"best of 2; {our_rate / raw_rate:.2f}x of FastCDC+BLAKE3"},
        {"name": f"chunk_stream Python heap peak ({label})", "value": round(peak / MIB, 1),
         "unit": "MiB", "detail": "tracemalloc; window 64 MiB"},
    ]
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    size = 32 * MIB if quick else 256 * MIB
    model, header_len = synthetic_model(size)
    new, changed = edited(model, header_len, 0.02)
    rows = _candidates(model, new, changed, repeats=1 if quick else 3)
    rows += _file_pipeline(128 * MIB if quick else GIB)
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
