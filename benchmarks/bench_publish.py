"""Publish throughput and memory.

* ``publish_throughput_ratio``: ``shoal``'s publish of one file (chunk, hash, write
  every chunk to the store with fsync, sign) against FastCDC+BLAKE3 alone on the
  same file in the same run (the compiled ``fastcdc`` over the mmapped file with
  ``hf=blake3``). Best of two runs each, interleaved; page cache warm for both.
* the same bytes copied to the same filesystem with fsync, in the same run: the
  disk's ceiling (publishing must write every byte once, so where the disk is
  slower than chunking+hashing, that ceiling and not FastCDC bounds publish).
* the same bytes written through the store as one file per average-size block,
  without chunking or hashing: the ceiling of the one-file-per-chunk layout.
* ``publish_peak_rss``: peak RSS of ``shoal publish`` in a fresh subprocess for a
  small and a 4x larger model; their ratio must stay near 1 (memory is bounded by
  the chunking window, not the model size).

Files are pseudo-random (BLAKE3 XOF, seeded) under /tmp and deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3
from fastcdc import fastcdc

from agent._storage.keys import init_keys
from agent._storage.paths import DataDir
from agent._storage.publish import publish
from agent._storage.store import ChunkStore
from protocol import DEFAULT_PARAMS, SigningIdentity

MiB = 1024 * 1024
_BLOCK = 16 * MiB


def _make_file(path: Path, size: int, seed: int) -> None:
    with open(path, "wb") as f:
        done = 0
        i = 0
        while done < size:
            n = min(_BLOCK, size - done)
            f.write(blake3.blake3(f"{seed}/{i}".encode()).digest(length=n))
            done += n
            i += 1


def _baseline(path: Path) -> float:
    p = DEFAULT_PARAMS
    t = time.perf_counter()
    n = 0
    for c in fastcdc(str(path), p.min_size, p.avg_size, p.max_size, hf=blake3.blake3):
        n += c.length
    el = time.perf_counter() - t
    assert n == path.stat().st_size
    return el


def _copy_fsync(path: Path, work: Path) -> float:
    """The disk's ceiling for the same bytes: a plain copy to the same filesystem + fsync."""
    dst = work / "copy.bin"
    t = time.perf_counter()
    with open(path, "rb") as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, _BLOCK)
        out.flush()
        os.fsync(out.fileno())
    el = time.perf_counter() - t
    dst.unlink()
    return el


def _store_only(path: Path, work: Path, avg: int) -> float:
    """The store's own write cost: the file's bytes in fixed blocks of the average chunk
    size, one ``put`` each (no chunking, no hashing), in one batch with its fsyncs."""
    store_dir = work / "store-only"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = ChunkStore(store_dir)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f, store.batch() as batch:
        i = 0
        while block := f.read(avg):
            store.put(blake3.blake3(i.to_bytes(8, "little")).digest(), block, trusted_hash=True,
                      batch=batch)
            i += 1
    el = time.perf_counter() - t
    shutil.rmtree(store_dir, ignore_errors=True)
    return el


def _publish_once(path: Path, work: Path, publisher: SigningIdentity) -> tuple[float, int]:
    store_dir = work / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = ChunkStore(store_dir)
    t = time.perf_counter()
    res = publish(store, path, "bench", "1.0.0", publisher, created_at_ms=0)
    el = time.perf_counter() - t
    shutil.rmtree(store_dir, ignore_errors=True)
    return el, res.chunks_total


_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _peak_rss_kib(path: Path, data_dir: Path) -> int:
    """Peak RSS (KiB) of one `shoal publish` process (a fresh wrapper isolates it)."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, sys.executable, "-m", "agent._cli", "publish",
         str(path), "--model", "bench", "--version", "1.0.0", "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-publish-", dir="/tmp"))
    try:
        publisher = SigningIdentity.generate()
        size = 128 * MiB if quick else 1024 * MiB
        f = work / "model.bin"
        _make_file(f, size, seed=1)
        base: list[float] = []
        pub: list[float] = []
        copy: list[float] = []
        only: list[float] = []
        chunks = 0
        for _ in range(2):
            base.append(_baseline(f))
            copy.append(_copy_fsync(f, work))
            only.append(_store_only(f, work, DEFAULT_PARAMS.avg_size))
            el, chunks = _publish_once(f, work, publisher)
            pub.append(el)
        b, p, c, o = min(base), min(pub), min(copy), min(only)
        results.append({"name": f"fastcdc+blake3 alone, {size // MiB} MiB",
                        "value": round(size / MiB / b, 1), "unit": "MiB/s",
                        "detail": f"best of 2: {b:.3f} s"})
        results.append({"name": f"publish (chunk+hash+store+fsync+sign), {size // MiB} MiB",
                        "value": round(size / MiB / p, 1), "unit": "MiB/s",
                        "detail": f"best of 2: {p:.3f} s, {chunks} chunks"})
        results.append({"name": "publish_throughput_ratio (publish / cdc+hash alone)",
                        "value": round(b / p, 3), "unit": "x", "detail": "aim >= 0.7"})
        results.append({"name": f"disk ceiling: copy+fsync of the same file, {size // MiB} MiB",
                        "value": round(size / MiB / c, 1), "unit": "MiB/s",
                        "detail": f"best of 2: {c:.3f} s"})
        results.append({"name": "publish / disk-ceiling ratio",
                        "value": round(c / p, 3), "unit": "x",
                        "detail": "publish must write every byte once; 1.0 = disk-bound"})
        results.append({"name": "store-only: same bytes as one file per "
                                f"{DEFAULT_PARAMS.avg_size // 1024} KiB chunk, no CDC/hash",
                        "value": round(size / MiB / o, 1), "unit": "MiB/s",
                        "detail": f"best of 2: {o:.3f} s (the one-file-per-chunk ceiling)"})
        results.append({"name": "publish / store-only ratio",
                        "value": round(o / p, 3), "unit": "x",
                        "detail": "1.0 = chunking and hashing fully hidden behind writes"})
        f.unlink()

        sizes = (128 * MiB, 256 * MiB) if quick else (1024 * MiB, 4096 * MiB)
        rss: list[int] = []
        for i, sz in enumerate(sizes):
            data_dir = work / f"data{i}"
            init_keys(DataDir(data_dir).keys)
            model = work / f"model{i}.bin"
            _make_file(model, sz, seed=10 + i)
            rss.append(_peak_rss_kib(model, data_dir))
            model.unlink()
            shutil.rmtree(data_dir, ignore_errors=True)
            results.append({"name": f"publish_peak_rss, {sz // MiB} MiB model",
                            "value": round(rss[-1] / 1024, 1), "unit": "MiB",
                            "detail": "shoal publish in a subprocess (ru_maxrss)"})
        results.append({"name": f"publish_peak_rss ratio {sizes[1] // MiB} MiB / "
                                f"{sizes[0] // MiB} MiB model",
                        "value": round(rss[1] / rss[0], 3), "unit": "x",
                        "detail": "about 1 = memory does not grow with model size"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
