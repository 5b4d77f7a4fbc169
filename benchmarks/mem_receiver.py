"""Where a receiving node's per-chunk bytes go (tracemalloc, by line): data, not time.

``python -m benchmarks.mem_receiver [CHUNKS] [TOP]`` decodes a signed one-file manifest
of ``CHUNKS`` chunks (4 KiB each: the size of a chunk changes no per-chunk state), stages
it in a :class:`~agent._storage.store.ChunkStore` (fsync off, in a temporary directory),
starts a :class:`~protocol._swarm.SwarmEngine` that wants it from one peer announcing the
whole key, then stores every chunk in both. It prints the bytes held per chunk after
each step, and the ``TOP`` lines that hold the most at the peak (the transient peak of
the decode is printed too).
"""

from __future__ import annotations

import gc
import random
import sys
import tempfile
import tracemalloc
from typing import Any

import blake3

from agent._storage.store import ChunkStore
from protocol import (
    SWARM_MESSAGES,
    ChunkRef,
    FileEntry,
    Manifest,
    Requirements,
    SigningIdentity,
    SwarmConfig,
    SwarmEngine,
    TransferPriority,
    Variant,
    decode_value,
    encode_value,
    merkle_root,
)

# (the swarm's messages are public as a tuple; HaveSet is the whole-key announcement)
HaveSet: Any = next(c for c in SWARM_MESSAGES if c.__name__ == "HaveSet")


def _all_set(n: int) -> bytes:
    """A have-set bitfield with every one of ``n`` bits set (MSB first)."""
    return b"\xff" * (n >> 3) + (bytes([(0xFF00 >> (n & 7)) & 0xFF]) if n & 7 else b"")


_SIZE = 4096


def _manifest_bytes(n: int) -> bytes:
    refs = tuple(ChunkRef(blake3.blake3(i.to_bytes(4, "big")).digest(), _SIZE)
                 for i in range(n))
    f = FileEntry("model.bin", n * _SIZE, refs, merkle_root([r.hash for r in refs]))
    return encode_value(Manifest.sign(SigningIdentity(b"\x06" * 32), "mem", "1.0.0",
                                      (Variant("cpu", Requirements(), (f,)),), created_at=1))


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 32_768
    top = int(argv[1]) if len(argv) > 1 else 12
    data = _manifest_bytes(n)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    steps: list[tuple[str, int, int]] = []

    def step(name: str) -> None:
        gc.collect()
        cur, peak = tracemalloc.get_traced_memory()
        steps.append((name, cur - base, peak - base))
        tracemalloc.reset_peak()

    m = decode_value(Manifest, data, max_size=len(data))
    step("decode the manifest")
    variant = m.variants[0]
    key = f"{m.manifest_id}/cpu"
    with tempfile.TemporaryDirectory(prefix="shoal-mem-") as tmp:
        store = ChunkStore(tmp + "/store", fsync=False)
        store.stage(m, "cpu")
        step("stage it in the store")
        eng = SwarmEngine(node_id="r", config=SwarmConfig(), rng=random.Random(1),
                          held=store.hashes(), lookup=lambda k: variant.distinct_chunks(),
                          verifier=lambda h, s, d: True)
        eng.peer_connected("p", 0.0)
        eng.want(key, TransferPriority.NORMAL, 0.0)
        eng.receive("p", HaveSet(key, n, _all_set(n)), 0.0)
        eng.take_outputs()
        step("swarm engine wants it, one peer has all")
        snap = tracemalloc.take_snapshot()
        blob = b"\0" * _SIZE
        hashes = eng._keys.infos[key].refs.hashes
        batch = 256
        for lo in range(0, n, batch):
            hs = hashes[lo:lo + batch]     # (the catalog's objects, as a daemon stores)
            store.put_verified_batch([(h, blob) for h in hs])
            eng.chunks_stored(hs, 1.0)
            eng.take_outputs()
        step("every chunk stored (store + engine)")
        snap2 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"{n} chunks; bytes per chunk held (and transient peak) after each step:")
    for name, cur, peak in steps:
        print(f"  {name:<42} {cur / n:8.1f} B   (peak {peak / n:8.1f} B)")
    for title, s in (("after want", snap), ("after every chunk stored", snap2)):
        print(f"top lines {title}:")
        for stat in s.statistics("lineno")[:top]:
            fr = stat.traceback[0]
            print(f"  {stat.size / n:8.1f} B/chunk  {stat.count:7d} blocks  "
                  f"{fr.filename.rsplit('/', 2)[-2]}/{fr.filename.rsplit('/', 1)[-1]}:{fr.lineno}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
