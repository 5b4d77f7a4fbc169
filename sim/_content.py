"""Synthetic model content: signed manifests whose chunks are short tokens.

A simulated chunk is named ``blake3(token)`` where ``token`` is a few bytes
unique to the chunk, and is *declared* to be ``size`` bytes long in the
manifest. The network charges a piece its declared size; the node's chunk
verifier in the simulator checks ``blake3(data) == hash`` and ignores the size.
So a 1 GiB model costs a few tens of kilobytes of memory, and a liar that
serves the wrong token is still caught by the hash check.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from protocol import (
    ChunkList,
    ChunkRef,
    FileEntry,
    Manifest,
    Requirements,
    SigningIdentity,
    Variant,
    merkle_root,
)

__all__ = ["SyntheticModel", "build_model", "derive_model", "verify_token"]

VARIANT_ID = "default"


@dataclass(frozen=True, slots=True)
class SyntheticModel:
    manifest: Manifest
    tokens: dict[bytes, bytes]     # chunk hash -> token served in its place
    sizes: dict[bytes, int]        # chunk hash -> declared size

    @property
    def key(self) -> str:
        """The swarm content key of the (only) variant."""
        return f"{self.manifest.manifest_id}/{VARIANT_ID}"

    @property
    def chunk_hashes(self) -> list[bytes]:
        return [c.hash for c in self.manifest.variant(VARIANT_ID).chunk_refs()]

    @property
    def size(self) -> int:
        return self.manifest.variant(VARIANT_ID).size


def verify_token(chunk_hash: bytes, size: int, data: bytes | memoryview) -> bool:
    """The simulator's chunk verifier: the hash must match; the declared size is modelled."""
    return blake3.blake3(data).digest() == chunk_hash


def _split(total: int, chunk_size: int) -> list[int]:
    sizes = [chunk_size] * (total // chunk_size)
    if total % chunk_size:
        sizes.append(total % chunk_size)
    return sizes


def _assemble(publisher: SigningIdentity, model_id: str, version: str,
              refs: list[ChunkRef], created_at: int, base: str | None) -> Manifest:
    total = sum(r.size for r in refs)
    entry = FileEntry("model.bin", total, ChunkList(refs), merkle_root([r.hash for r in refs]))
    variant = Variant(VARIANT_ID, Requirements(), (entry,))
    return Manifest.sign(publisher, model_id, version, (variant,), created_at, base)


def build_model(publisher: SigningIdentity, model_id: str, version: str, size: int,
                chunk_size: int, tag: str = "") -> SyntheticModel:
    """A one-file, one-variant model of ``size`` bytes in ``chunk_size`` chunks."""
    tokens: dict[bytes, bytes] = {}
    sizes: dict[bytes, int] = {}
    refs: list[ChunkRef] = []
    for i, n in enumerate(_split(size, chunk_size)):
        token = f"{tag or model_id}/{version}/{i}".encode()
        h = blake3.blake3(token).digest()
        tokens[h] = token
        sizes[h] = n
        refs.append(ChunkRef(h, n))
    return SyntheticModel(_assemble(publisher, model_id, version, refs, 0, None), tokens, sizes)


def derive_model(publisher: SigningIdentity, base: SyntheticModel, version: str,
                 changed: float, rng_pick: list[int] | None = None) -> SyntheticModel:
    """A new version of ``base`` in which a ``changed`` fraction of the chunks (a
    contiguous run in the middle, or the indices in ``rng_pick``) has new content."""
    old = base.manifest.variant(VARIANT_ID).files[0].chunks
    count = round(len(old) * changed)
    if rng_pick is None:
        start = (len(old) - count) // 2
        picked = set(range(start, start + count))
    else:
        picked = set(rng_pick[:count])
    tokens = dict(base.tokens)
    sizes = dict(base.sizes)
    refs: list[ChunkRef] = []
    for i, ref in enumerate(old):
        if i in picked:
            token = f"{base.manifest.model_id}/{version}/{i}".encode()
            h = blake3.blake3(token).digest()
            tokens[h] = token
            sizes[h] = ref.size
            refs.append(ChunkRef(h, ref.size))
        else:
            refs.append(ref)
    manifest = _assemble(publisher, base.manifest.model_id, version, refs, 1,
                         base.manifest.version)
    return SyntheticModel(manifest, tokens, sizes)
