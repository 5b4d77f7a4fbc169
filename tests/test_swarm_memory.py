"""A receiving swarm engine's memory per chunk (tracemalloc: data, not time)."""

from __future__ import annotations

import random
import tracemalloc

import blake3

from protocol._capabilities import Requirements
from protocol._codec import decode_value, encode_value
from protocol._config import SwarmConfig
from protocol._identity import SigningIdentity
from protocol._manifest import ChunkRef, FileEntry, Manifest, Variant, merkle_root
from protocol._swarm import SwarmEngine
from protocol._swarm_messages import HaveSet, make_bitfield
from protocol._types import TransferPriority


def _held_by_engine(n: int) -> int:
    """Bytes a fresh engine holds once it wants an ``n``-chunk key that its one peer
    holds whole (the manifest decoded before tracing the engine)."""
    refs = tuple(ChunkRef(blake3.blake3(i.to_bytes(4, "big")).digest(), 131_072)
                 for i in range(n))
    f = FileEntry("model.bin", n * 131_072, refs, merkle_root([r.hash for r in refs]))
    data = encode_value(Manifest.sign(SigningIdentity(b"\x06" * 32), "mem", "1.0.0",
                                      (Variant("cpu", Requirements(), (f,)),), created_at=1))
    m = decode_value(Manifest, data, max_size=len(data))
    key = f"{m.manifest_id}/cpu"
    variant = m.variants[0]
    tracemalloc.start()
    try:
        eng = SwarmEngine(node_id="r", config=SwarmConfig(), rng=random.Random(1), held=set(),
                          lookup=lambda k: variant.distinct_chunks(),
                          verifier=lambda h, s, d: True)
        eng.peer_connected("p", 0.0)
        eng.want(key, TransferPriority.NORMAL, 0.0)
        eng.receive("p", HaveSet(key, n, make_bitfield([True] * n)), 0.0)
        eng.take_outputs()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert eng.progress(key).bytes_total == n * 131_072
    return held


def test_engine_memory_per_chunk_is_bounded() -> None:
    # Per distinct chunk the engine needs: its slot in the chunk list's position index
    # (4 B, 2-4 slots a chunk: 8-16), one heap entry (a 48 B int and its 8 B slot), the
    # rank and live-marker array slots (16), the hash-order and hash-rank slots (8), the
    # availability count (4) and a flag byte each in the missing set, the peer's have-set
    # and the node's held chunks (3): ~95-105 B; 130 leaves room for the tables'
    # doubling. The catalog's hash object, position list slot and hash -> position dict
    # entry (~150 B) with `held` a set of hashes measured 251 B here; the sets of hashes
    # (missing, have-set), the availability dict and 80 B heap entries 503 B; the
    # tuple-of-ChunkRef key with its size dict, reverse map, rank dict, queued dict and
    # tuple heap entries 724 B.
    small, large = _held_by_engine(3_000), _held_by_engine(24_000)
    per_chunk = (large - small) / 21_000
    assert per_chunk <= 130, per_chunk
