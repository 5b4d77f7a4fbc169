"""Publish throughput and memory.

* ``publish_throughput_ratio``: ``shoal``'s publish of one file (chunk, hash, write
  the files into the store's pack with one fsync each, sign) against FastCDC+BLAKE3 alone on the
  same file in the same run (the compiled ``fastcdc`` over the mmapped file with
  ``hf=blake3``). Best of two runs each, interleaved; page cache warm for both.
* the same bytes copied to the same filesystem with fsync, in the same run: the
  disk's ceiling (publishing must write every byte once, so where the disk is
  slower than chunking+hashing, that ceiling and not FastCDC bounds publish).
* disk used after install against the model's bytes: one version on the publisher
  (publish + install: the pack becomes the version), and two versions that share
  about 95 % of their chunks on a receiver (the second fetched as a delta, its shared
  chunks copied from the first with ``copy_file_range``), on the default filesystem
  and, where ``mkfs.xfs`` and root allow a loop mount, on XFS (which shares extents).
* ``publish_peak_rss``: peak RSS of ``shoal publish`` in a fresh subprocess for a
  small and a 4x larger model; their ratio must stay near 1 (memory is bounded by
  the chunking window, not the model size).

Files are pseudo-random (BLAKE3 XOF, seeded) under /tmp and deleted afterwards.
"""

from __future__ import annotations

import contextlib
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


def _drop_caches() -> None:
    """Make the page cache the same for publish and the copy: both write into a cache
    that holds the source and nothing else of ours (flushed, then the kernel drops
    clean pages when it can; as root only)."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("1\n")


def _copy_fsync(path: Path, work: Path, kernel: bool) -> float:
    """The disk's ceiling for the same bytes: a copy to the same filesystem + fsync,
    through user space (read/write) or in the kernel (``copy_file_range``, as GNU cp
    does), from a flushed page cache."""
    dst = work / "copy.bin"
    _drop_caches()
    t = time.perf_counter()
    with open(path, "rb") as src, open(dst, "wb") as out:
        if kernel:
            left, off = os.fstat(src.fileno()).st_size, 0
            while left:
                n = os.copy_file_range(src.fileno(), out.fileno(), left, off, off)
                if n <= 0:
                    break
                off, left = off + n, left - n
        else:
            shutil.copyfileobj(src, out, _BLOCK)
            out.flush()
        os.fsync(out.fileno())
    el = time.perf_counter() - t
    dst.unlink()
    return el


def _publish_once(path: Path, work: Path, publisher: SigningIdentity) -> tuple[float, int]:
    store_dir = work / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = ChunkStore(store_dir)
    _drop_caches()
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
        chunks = 0
        for _ in range(2):
            base.append(_baseline(f))
            copy.append(_copy_fsync(f, work, kernel=False))
            copy.append(_copy_fsync(f, work, kernel=True))
            el, chunks = _publish_once(f, work, publisher)
            pub.append(el)
        b, p, c = min(base), min(pub), min(copy)
        results.append({"name": f"fastcdc+blake3 alone, {size // MiB} MiB",
                        "value": round(size / MiB / b, 1), "unit": "MiB/s",
                        "detail": f"best of 2: {b:.3f} s"})
        results.append({"name": f"publish (chunk+hash+write+fsync+sign), {size // MiB} MiB",
                        "value": round(size / MiB / p, 1), "unit": "MiB/s",
                        "detail": f"best of 2: {p:.3f} s, {chunks} chunks"})
        results.append({"name": "publish_throughput_ratio (publish / cdc+hash alone)",
                        "value": round(b / p, 3), "unit": "x", "detail": "aim >= 0.7"})
        results.append({"name": f"disk ceiling: copy+fsync of the same file, {size // MiB} MiB",
                        "value": round(size / MiB / c, 1), "unit": "MiB/s",
                        "detail": f"best of 4: {c:.3f} s (2 read/write, 2 copy_file_range: "
                                  f"{', '.join(f'{x:.3f}' for x in copy)} s)"})
        results.append({"name": "publish / disk-ceiling ratio",
                        "value": round(c / p, 3), "unit": "x",
                        "detail": "aim >= 0.8; publish reads and writes every byte once, "
                                  "like the copy; 1.0 = disk-bound"})
        f.unlink()
        results.extend(_disk_rows(work, publisher, 64 * MiB if quick else 256 * MiB))

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


# ---------------------------------------------------------------------- disk used


def _used(root: Path) -> int:
    """Bytes allocated to the files under ``root`` (st_blocks; shared extents count
    in full for each file, so this is an upper bound on a reflinking filesystem)."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def _edit(src: Path, dst: Path, fraction: float, seed: int) -> None:
    """``dst`` = ``src`` with one byte changed every ``avg / fraction`` bytes, in place:
    about ``fraction`` of the chunks change, every offset stays (a retrained layer)."""
    shutil.copyfile(src, dst)
    step = int(DEFAULT_PARAMS.avg_size / fraction)
    with open(dst, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for i, off in enumerate(range(step // 2, size, step)):
            f.seek(off)
            f.write(bytes([(seed + i) % 251 + 1]))


def _two_versions(root: Path, model: Path, publisher: SigningIdentity) -> dict[str, float]:
    """Publisher: publish v1, install it. Receiver (another data directory on the same
    filesystem): v1 fetched whole, then v2 fetched as a delta and installed, as the
    daemon does (stage, put the chunks not held, complete, rename)."""
    from agent._storage.install import Installer

    v2 = root / "model-v2.bin"
    _edit(model, v2, 0.05, seed=3)
    pub = DataDir(root / "pub")
    pstore = ChunkStore(pub.store)
    m1 = pstore.get_manifest(publish(pstore, model, "m", "1.0.0", publisher,
                                     created_at_ms=1).manifest_id)
    Installer(pub, pstore).install(m1, "default")
    size = m1.variant("default").size
    one_pub = _used(pub.models) + _used(pub.store)
    m2 = pstore.get_manifest(publish(pstore, v2, "m", "2.0.0", publisher,
                                     created_at_ms=2).manifest_id)
    rcv = DataDir(root / "rcv")
    rstore = ChunkStore(rcv.store)
    inst = Installer(rcv, rstore)
    fs = os.statvfs(root)
    free0 = fs.f_bavail * fs.f_frsize
    fetched = 0
    for m in (m1, m2):
        rstore.stage(m, "default")
        for ref in {r.hash: r for r in m.iter_chunks()}.values():
            if not rstore.has(ref.hash):
                rstore.put(ref.hash, pstore.get(ref.hash))
                fetched += ref.size if m is m2 else 0
        inst.install(m, "default")
        os.sync()
    fs = os.statvfs(root)
    df_two = free0 - fs.f_bavail * fs.f_frsize
    shared = len({r.hash for r in m1.iter_chunks()} & {r.hash for r in m2.iter_chunks()})
    return {"size": size, "one_pub": one_pub / size,
            "two_blocks": (_used(rcv.models) + _used(rcv.store)) / size,
            "two_df": df_two / size, "shared": shared / len(m2.variant("default").chunk_refs()),
            "delta": fetched / size}


def _xfs(work: Path) -> Path | None:
    """An XFS filesystem on a loop device under ``work``, or None where that cannot be."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        return None
    img, mnt = work / "xfs.img", work / "xfs"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(2 << 30)
    ok = subprocess.run(["mkfs.xfs", "-q", str(img)], capture_output=True).returncode == 0 \
        and subprocess.run(["mount", "-o", "loop", str(img), str(mnt)],
                           capture_output=True).returncode == 0
    return mnt if ok else None


def _disk_rows(work: Path, publisher: SigningIdentity, size: int) -> list[dict[str, Any]]:
    model = work / "disk-model.bin"
    _make_file(model, size, seed=5)
    rows: list[dict[str, Any]] = []
    places: list[tuple[str, Path]] = [("ext4 (default disk)", work / "disk")]
    xfs = _xfs(work)
    if xfs is not None:
        places.append(("XFS loop device", xfs / "disk"))
    try:
        for label, root in places:
            root.mkdir()
            r = _two_versions(root, model, publisher)
            if label.startswith("ext4"):
                rows.append({"name": f"disk after publish+install / model bytes, {label}",
                             "value": round(r["one_pub"], 4), "unit": "x",
                             "detail": f"aim <= 1.02; {size // MiB} MiB model, one version "
                                       "(the published pack is the installed version)"})
            rows.append({"name": f"disk for two versions / model bytes, {label}",
                         "value": round(r["two_df" if xfs is not None and root.is_relative_to(
                             xfs) else "two_blocks"], 4), "unit": "x",
                         "detail": f"aim <= 2.05 (<= 1.1 where extents are shared); receiver "
                                   f"keeps v1 and v2, {r['shared'] * 100:.1f}% of v2's chunks "
                                   f"shared, v2 fetched {r['delta'] * 100:.1f}% of its bytes; "
                                   + ("df delta" if root.is_relative_to(xfs or Path("/nonexistent"))
                                      else "st_blocks")})
            shutil.rmtree(root, ignore_errors=True)
    finally:
        if xfs is not None:
            subprocess.run(["umount", str(xfs)], check=False)
        model.unlink()
    return rows
