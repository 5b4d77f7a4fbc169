"""Manifests held compactly: a file's chunk list is one hash buffer and one offset array.

The representation changed; the encoding, the manifest id and the signature must not.
The golden values below were computed by the tuple-of-ChunkRef implementation (main at
bd2594c) from the same inputs.
"""

from __future__ import annotations

import dataclasses
import pickle
import tracemalloc

import blake3
import msgpack
import pytest

from protocol._capabilities import Requirements
from protocol._codec import canonical, decode_value, encode_value
from protocol._errors import InvalidValue, MalformedMessage
from protocol._identity import SigningIdentity
from protocol._manifest import (
    ChunkList,
    ChunkRef,
    FileEntry,
    Manifest,
    Variant,
    merkle_root,
    merkle_root_of_buffer,
)

GOLDEN_ID = "c06dffa35b5a0d576842087147c9c5ecba4bba064d2e225ac9f108978e40578f"
GOLDEN_BYTES = "29bdd30dcdf6f6c20817a57f8bab1f13ae539c7cd8049c329028e141eab7615d"
GOLDEN_SIG = ("37a71dcfc548c219803e1eba94c394bd68817c2204a8c761b150516606688f40"
              "989ff744235f5007d187aaac74ddaa8c71984f9c93b34c4580f97a3750834c0d")
GOLDEN_HEAD_SIG = ("6cd4aa65500c7834a51eb3787d59a877d0eb9a9dec1ba40355acda0a09a0be2d"
                   "a46a84086a5b23b5d086c66ca4721d79d501c60a44de1a0182fcc8c85145770f")


def _refs(k: int, n: int) -> tuple[ChunkRef, ...]:
    return tuple(ChunkRef(blake3.blake3(b"%d/%d" % (k, i)).digest(), 1 + (i * 7919) % 70_000)
                 for i in range(n))


def _golden() -> Manifest:
    files = []
    for k, (path, n) in enumerate((("model.bin", 300), ("cfg/labels.txt", 1), ("empty", 0))):
        refs = _refs(k, n)
        files.append(FileEntry(path, sum(r.size for r in refs), refs,
                               merkle_root([r.hash for r in refs]), k == 1))
    v1 = Variant("gpu", Requirements(min_gpu_mem_gb=4.0), (files[0], files[1]))
    v2 = Variant("cpu", Requirements(), tuple(files))
    return Manifest.sign(SigningIdentity(b"\x05" * 32), "golden", "3.1.4", (v1, v2),
                         created_at=1_790_000_000_000, base_version="3.1.3")


def test_encoding_id_and_signature_unchanged() -> None:
    m = _golden()
    assert m.manifest_id == GOLDEN_ID
    # (a manifest stored before heads existed: the encoding is byte for byte the same;
    # the head signature is an appended field, left off the wire while absent)
    assert blake3.blake3(canonical(dataclasses.replace(m, head_signature=None))
                         ).hexdigest() == GOLDEN_BYTES
    assert m.signature.hex() == GOLDEN_SIG
    assert m.head_signature is not None and m.head_signature.hex() == GOLDEN_HEAD_SIG
    again = decode_value(Manifest, encode_value(m))
    assert again == m and again.manifest_id == GOLDEN_ID
    assert encode_value(again) == encode_value(m)
    again.verify()


def test_file_encodes_as_an_array_of_hash_size_arrays() -> None:
    refs = _refs(9, 5)
    f = FileEntry("a/b.bin", sum(r.size for r in refs), refs, merkle_root([r.hash for r in refs]))
    expected = msgpack.packb(["a/b.bin", f.size, [[r.hash, r.size] for r in refs],
                              f.merkle_root, False], use_bin_type=True)
    assert canonical(f) == expected
    assert isinstance(f.chunks, ChunkList)
    assert f.chunks == ChunkList(refs) == refs        # a tuple of refs compares equal


def test_chunk_list_is_a_sequence_of_refs() -> None:
    refs = _refs(3, 7)
    cl = ChunkList(refs)
    assert len(cl) == 7 and list(cl) == list(refs) and tuple(cl) == refs
    assert cl[0] == refs[0] and cl[-1] == refs[-1] and cl[-7] == refs[0]
    assert list(cl[2:5]) == list(refs[2:5]) and list(cl[::-2]) == list(refs[::-2])
    assert [cl.hash(i) for i in range(7)] == [r.hash for r in refs]
    assert [cl.size(i) for i in range(7)] == [r.size for r in refs]
    offsets = [sum(r.size for r in refs[:i]) for i in range(7)]
    assert [cl.offset(i) for i in range(7)] == offsets
    assert cl.total == sum(r.size for r in refs)
    assert cl.hash_bytes == b"".join(r.hash for r in refs)
    assert list(cl.iter_hashes()) == [r.hash for r in refs]
    for bad in (7, -8):
        with pytest.raises(IndexError):
            cl[bad]
    for method in (cl.hash, cl.size, cl.offset):
        with pytest.raises(IndexError):
            method(7)
        with pytest.raises(IndexError):
            method(-1)
    assert hash(cl) == hash(ChunkList(refs)) and cl != ChunkList(refs[:-1])
    assert pickle.loads(pickle.dumps(cl)) == cl
    assert ChunkList() == () and ChunkList().total == 0 and list(ChunkList()) == []
    with pytest.raises(InvalidValue):
        ChunkList([(refs[0].hash, 1)])  # type: ignore[list-item]


def test_distinct_chunks_in_first_use_order() -> None:
    a, b = _refs(1, 3), _refs(2, 2)
    files = (FileEntry("x", sum(r.size for r in a + a[:1]), a + a[:1], merkle_root([])),
             FileEntry("y", sum(r.size for r in b + a), b + a, merkle_root([])))
    v = Variant("cpu", Requirements(), files)
    assert list(v.distinct_chunks()) == [*a, *b] == v.chunk_refs()
    only = Variant("cpu", Requirements(), files[:1])
    assert list(only.distinct_chunks()) == list(a)


@pytest.mark.parametrize(("pair", "why"), [
    ((b"\x01" * 31, 5), "32 bytes"),
    ((b"\x01" * 33, 5), "32 bytes"),
    (("x" * 32, 5), "32 bytes"),
    ((b"\x01" * 32, 0), "out of range"),
    ((b"\x01" * 32, 64 * 1024 * 1024 + 1), "out of range"),
    ((b"\x01" * 32, True), "out of range"),
    ((b"\x01" * 32, 5.0), "out of range"),
    ((b"\x01" * 32,), "array of 2"),
    ((b"\x01" * 32, 5, 6), "array of 2"),
    (b"\x01" * 32, "array of 2"),
])
def test_bad_chunk_refs_refused_when_decoded(pair: object, why: str) -> None:
    good = _refs(4, 2)
    f = FileEntry("m", sum(r.size for r in good), good, merkle_root([r.hash for r in good]))
    raw = msgpack.unpackb(encode_value(f))
    raw[2][1] = pair
    with pytest.raises(MalformedMessage, match=why):
        decode_value(FileEntry, msgpack.packb(raw, use_bin_type=True))


def test_chunk_list_not_an_array_refused() -> None:
    raw = ["m", 0, 7, b"\x00" * 32, False]
    with pytest.raises(MalformedMessage, match="expected array"):
        decode_value(FileEntry, msgpack.packb(raw, use_bin_type=True))


def _held_after_decode(n: int) -> int:
    """Bytes still allocated after decoding a one-file manifest of ``n`` chunks (the
    encoded bytes exist before tracing starts; transient decode garbage is freed)."""
    refs = tuple(ChunkRef(blake3.blake3(i.to_bytes(4, "big")).digest(), 65_536 + i % 997)
                 for i in range(n))
    f = FileEntry("model.bin", sum(r.size for r in refs), refs,
                  merkle_root([r.hash for r in refs]))
    m = Manifest.sign(SigningIdentity(b"\x06" * 32), "mem", "1.0.0",
                      (Variant("cpu", Requirements(), (f,)),), created_at=1)
    data = encode_value(m)
    del refs, f, m
    tracemalloc.start()
    try:
        held = decode_value(Manifest, data, max_size=len(data))
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(held.variants[0].files[0].chunks) == n
    return size


def test_manifest_memory_per_chunk_is_bounded() -> None:
    # A chunk costs its 32-byte hash in the buffer and its 8-byte end offset in the
    # array; the array's growth while decoding over-allocates by at most ~1/8 (CPython's
    # array_resize adds size/16 + a few slots), so 41 B; 48 B leaves room for rounding.
    # The tuple-of-ChunkRef manifest held ~121 B per chunk (a 72 B hash object, a 48 B
    # ChunkRef, an 8 B tuple slot).
    small, large = _held_after_decode(2_000), _held_after_decode(22_000)
    per_chunk = (large - small) / 20_000
    assert per_chunk <= 48, per_chunk


def _merkle_by_the_definition(hashes: list[bytes]) -> bytes:
    if not hashes:
        return blake3.blake3(b"shoal-merkle-empty").digest()
    level = [blake3.blake3(b"\x00" + h).digest() for h in hashes]
    while len(level) > 1:
        nxt = [blake3.blake3(b"\x01" + level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 255, 256, 257, 1001])
def test_merkle_root_over_one_buffer_is_the_same_root(n: int) -> None:
    hashes = [blake3.blake3(b"m%d" % i).digest() for i in range(n)]
    expected = _merkle_by_the_definition(hashes)
    assert merkle_root(hashes) == merkle_root(tuple(hashes)) == expected
    assert merkle_root_of_buffer(b"".join(hashes), n) == expected
    with pytest.raises(InvalidValue):
        merkle_root_of_buffer(b"".join(hashes) + b"x", n)
    with pytest.raises(InvalidValue):
        merkle_root([*hashes, b"\x01" * 31, b"\x02" * 33])
