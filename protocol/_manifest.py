"""Signed model manifests: what a ``(model_id, version)`` is made of.

A manifest lists *variants* in preference order (best first). A variant lists
its files; a file lists its ordered chunks ``(BLAKE3 hash, size)`` and a Merkle
root over those chunk hashes, so a file can be verified chunk by chunk as it
arrives and as a whole once assembled. The publisher signs the canonical
encoding of everything but the signature; the manifest's id is the BLAKE3 hash
of that same encoding, so two nodes that name the same id hold the same bytes.

Validation is done when a manifest is *built*, locally or by the decoder: model
ids and versions have a fixed grammar (versions are semantic versions), file
paths are relative, normalised and can never leave the model directory.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import total_ordering
from typing import TYPE_CHECKING, Any, Protocol, overload

import blake3

from ._capabilities import Requirements
from ._codec import appended, canonical, struct
from ._errors import HostilePath, InvalidValue, MalformedMessage
from ._identity import (
    FleetTrust,
    Role,
    SigningContext,
    SigningIdentity,
    Verifier,
    fingerprint,
    signing_payload,
    verify_signature,
)

if TYPE_CHECKING:
    from ._manifest_head import ManifestHead

__all__ = [
    "GRPC_HEALTH_CHECK",
    "HASH_SIZE",
    "ChunkRef",
    "ChunkList",
    "FileEntry",
    "Variant",
    "Manifest",
    "SemVer",
    "validate_model_id",
    "validate_version",
    "validate_relative_path",
    "merkle_root",
    "merkle_root_of_buffer",
]

HASH_SIZE = 32
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_VARIANT_ID = _MODEL_ID
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
MAX_PATH = 1024
MAX_FILES = 100_000


def validate_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
        raise InvalidValue(f"invalid model id {model_id!r}: use 1-128 of a-z 0-9 . _ -, "
                           "starting with a letter or digit")
    return model_id


def validate_variant_id(variant_id: str) -> str:
    if not isinstance(variant_id, str) or not _VARIANT_ID.fullmatch(variant_id):
        raise InvalidValue(f"invalid variant id {variant_id!r}: use 1-128 of a-z 0-9 . _ -")
    return variant_id


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not _SEMVER.fullmatch(version):
        raise InvalidValue(f"invalid version {version!r}: versions are semantic versions "
                           "such as 1.2.0 or 2.0.0-rc.1")
    return version


@total_ordering
@dataclass(frozen=True, slots=True)
class SemVer:
    """Semantic-version precedence (build metadata ignored, as semver.org says)."""

    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...]

    @classmethod
    def parse(cls, text: str) -> SemVer:
        m = _SEMVER.fullmatch(text)
        if m is None:
            validate_version(text)
            raise AssertionError  # unreachable: validate_version raised
        pre: tuple[int | str, ...] = ()
        if m.group(4):
            pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split("."))
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)

    def _key(self) -> tuple[object, ...]:
        # a release sorts after its pre-releases; numeric identifiers before alphanumeric
        pre_key = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, not self.pre, pre_key)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._key() < other._key()


def validate_relative_path(path: str) -> str:
    """Refuse any path that is not a plain, normalised, relative POSIX path."""
    if not isinstance(path, str) or not path:
        raise HostilePath("empty file path")
    if len(path) > MAX_PATH:
        raise HostilePath(f"file path longer than {MAX_PATH} characters")
    if "\x00" in path:
        raise HostilePath(f"file path contains NUL: {path!r}")
    if "\\" in path:
        raise HostilePath(f"file path contains a backslash: {path!r}")
    if path.startswith("/"):
        raise HostilePath(f"absolute file path: {path!r}")
    if re.match(r"[A-Za-z]:", path):
        raise HostilePath(f"drive-letter file path: {path!r}")
    for segment in path.split("/"):
        if segment == "":
            raise HostilePath(f"empty segment in file path: {path!r}")
        if segment in (".", ".."):
            raise HostilePath(f"file path escapes or is not normalised: {path!r}")
        if any(ord(ch) < 0x20 for ch in segment):
            raise HostilePath(f"control character in file path: {path!r}")
    return path


def merkle_root(hashes: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Binary Merkle root over chunk hashes (BLAKE3, domain-separated leaves/nodes).

    An odd node at a level is promoted unchanged. The root of no chunks is the
    hash of the empty leaf list.
    """
    if any(len(h) != HASH_SIZE for h in hashes):
        raise InvalidValue("a Merkle leaf is a 32-byte hash")
    return merkle_root_of_buffer(b"".join(hashes), len(hashes))


def merkle_root_of_buffer(hashes: bytes, count: int) -> bytes:
    """:func:`merkle_root` of ``count`` 32-byte hashes concatenated in ``hashes``. Each
    level is one buffer, not a list of objects, so the check of a large file's chunk
    list allocates ~64 bytes per chunk, in two buffers, and no object per chunk."""
    if len(hashes) != count * HASH_SIZE:
        raise InvalidValue("a Merkle leaf is a 32-byte hash")
    if not count:
        return blake3.blake3(b"shoal-merkle-empty").digest()
    level = bytearray(count * HASH_SIZE)
    view = memoryview(hashes)
    for i in range(count):
        at = i * HASH_SIZE
        h = blake3.blake3(b"\x00")
        h.update(view[at:at + HASH_SIZE])
        level[at:at + HASH_SIZE] = h.digest()
    n = count
    while n > 1:
        pairs = n // 2
        for i in range(pairs):
            a = 2 * i * HASH_SIZE
            node = blake3.blake3(b"\x01")
            node.update(level[a:a + 2 * HASH_SIZE])
            level[i * HASH_SIZE:(i + 1) * HASH_SIZE] = node.digest()
        if n % 2:       # the odd node, promoted unchanged
            level[pairs * HASH_SIZE:(pairs + 1) * HASH_SIZE] = \
                level[(n - 1) * HASH_SIZE:n * HASH_SIZE]
            pairs += 1
        n = pairs
    return bytes(level[:HASH_SIZE])


MAX_CHUNK = 64 * 1024 * 1024


@struct
@dataclass(frozen=True, slots=True)
class ChunkRef:
    hash: bytes
    size: int

    def __post_init__(self) -> None:
        if len(self.hash) != HASH_SIZE:
            raise InvalidValue("a chunk hash is 32 bytes")
        if not 0 < self.size <= MAX_CHUNK:
            raise InvalidValue(f"chunk size {self.size} out of range")


class ChunkList(Sequence[ChunkRef]):
    """An ordered chunk list, held compactly: every hash in one ``bytes`` buffer (32 bytes
    a chunk) and the chunks' end offsets in one ``array('Q')`` (8 bytes a chunk), so a
    manifest costs ~40 bytes per chunk instead of a :class:`ChunkRef` object, a hash
    object and a tuple slot (~121 bytes). It is a ``Sequence[ChunkRef]``: indexing and
    iteration build the :class:`ChunkRef` on demand; :meth:`hash`, :meth:`size`,
    :meth:`offset` and :meth:`iter_hashes` read the buffers without building one.

    On the wire (``__wire_item__``) it is exactly the ``tuple[ChunkRef, ...]`` it
    replaced: an array of ``[hash, size]`` arrays, so encodings, ids and signatures
    made before it are unchanged."""

    __slots__ = ("_hashes", "_ends", "_slots", "_distinct", "_last")
    __wire_item__ = ChunkRef

    def __init__(self, refs: Iterable[ChunkRef] = ()) -> None:
        hashes = bytearray()
        ends = array("Q")
        end = 0
        for ref in refs:
            if type(ref) is not ChunkRef:
                raise InvalidValue(f"a chunk list holds ChunkRef, not {type(ref).__name__}")
            hashes += ref.hash
            end += ref.size
            ends.append(end)
        self._hashes = bytes(hashes)
        self._ends = ends
        self._slots: array[int] | None = None
        self._distinct = True
        self._last: tuple[bytes, int] = (b"", -1)    # find()'s last answer

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[Any]]) -> ChunkList:
        """Build from ``(hash, size)`` pairs as msgpack decodes them, checked as strictly
        as :class:`ChunkRef` (exact types, 32-byte hashes, sizes in range) without
        building one per chunk. Raises :class:`InvalidValue`."""
        hashes = bytearray()
        ends = array("Q")
        end = 0
        for i, pair in enumerate(pairs):
            if type(pair) is not tuple or len(pair) != 2:
                raise InvalidValue(f"chunk {i}: a ChunkRef is an array of 2")
            h, size = pair
            if type(h) is not bytes or len(h) != HASH_SIZE:
                raise InvalidValue(f"chunk {i}: a chunk hash is 32 bytes")
            if type(size) is not int or not 0 < size <= MAX_CHUNK:
                raise InvalidValue(f"chunk {i}: chunk size {size!r} out of range")
            hashes += h
            end += size
            ends.append(end)
        out = cls.__new__(cls)
        out._hashes = bytes(hashes)
        out._ends = ends
        out._slots = None
        out._distinct = True
        out._last = (b"", -1)
        return out

    def iter_wire(self) -> Iterator[tuple[bytes, int]]:
        """What the codec writes for each chunk, as ``tuple[ChunkRef, ...]`` did: the
        array ``[hash, size]`` (msgpack packs a tuple as an array)."""
        return zip(self.iter_hashes(), self.sizes(), strict=True)

    # ------------------------------------------------------------------ compact reads

    def hash(self, i: int) -> bytes:
        """The ``i``-th chunk's hash (a new 32-byte object)."""
        if not 0 <= i < len(self._ends):
            raise IndexError("chunk index out of range")
        return self._hashes[i * HASH_SIZE:(i + 1) * HASH_SIZE]

    def size(self, i: int) -> int:
        """The ``i``-th chunk's size."""
        ends = self._ends
        if not 0 <= i < len(ends):
            raise IndexError("chunk index out of range")
        return ends[i] - ends[i - 1] if i else ends[0]

    def offset(self, i: int) -> int:
        """Where the ``i``-th chunk starts in the file."""
        if not 0 <= i < len(self._ends):
            raise IndexError("chunk index out of range")
        return self._ends[i - 1] if i else 0

    @property
    def total(self) -> int:
        """The sum of the chunk sizes."""
        return self._ends[-1] if self._ends else 0

    @property
    def hash_bytes(self) -> bytes:
        """Every hash, concatenated (the buffer itself, not a copy)."""
        return self._hashes

    def find(self, chunk_hash: object) -> int:
        """The first position of ``chunk_hash`` in the list, or -1: a probe of the
        list's position index (:meth:`_index`), no object per chunk."""
        last = self._last
        if chunk_hash is last[0]:     # the same object asked again (a chunk's bookkeeping
            return last[1]            # asks several times in a row); bytes: immutable
        h: bytes
        if type(chunk_hash) is bytes:
            h = chunk_hash
        elif isinstance(chunk_hash, bytes | bytearray | memoryview):
            h = bytes(chunk_hash)
        else:
            return -1
        if len(h) != HASH_SIZE:
            return -1
        slots = self._slots if self._slots is not None else self._index()
        mask = len(slots) - 1
        at_hash = self._hashes.startswith
        at = hash(h) & mask      # (cached in the bytes object once computed)
        while True:
            p = slots[at]
            if not p:
                return -1
            p -= 1
            if at_hash(h, p * HASH_SIZE):
                self._last = (h, p)
                return p
            at = (at + 1) & mask

    @property
    def distinct(self) -> bool:
        """Whether no hash occurs twice in the list."""
        if self._slots is None:
            self._index()
        return self._distinct

    def _index(self) -> array[int]:
        """Build the position index, once: an open-addressing table (linear probing) of
        ``position + 1`` of each hash's first occurrence, at least twice as many slots
        as chunks, 4 bytes a slot (~8-16 bytes a chunk), probed from Python's hash of the
        32 bytes (computed once per bytes object and kept in it; the slots' order is
        private to the process, the positions found are not). Built one hash at a time,
        so no object per chunk outlives its step (a dict or a sort would hold one per
        chunk at once)."""
        n = len(self._ends)
        size = 8
        while size < 2 * n:
            size <<= 1
        slots = array("i", [0]) * size
        mask = size - 1
        hashes = self._hashes
        distinct = True
        at_hash = hashes.startswith
        for p in range(n):
            h = hashes[p * HASH_SIZE:(p + 1) * HASH_SIZE]
            at = hash(h) & mask
            while True:
                q = slots[at]
                if not q:
                    slots[at] = p + 1
                    break
                q -= 1
                if at_hash(h, q * HASH_SIZE):
                    distinct = False
                    break
                at = (at + 1) & mask
        self._slots = slots
        self._distinct = distinct
        return slots

    def iter_hashes(self) -> Iterator[bytes]:
        hashes = self._hashes
        for at in range(0, len(hashes), HASH_SIZE):
            yield hashes[at:at + HASH_SIZE]

    def sizes(self) -> Iterator[int]:
        prev = 0
        for end in self._ends:
            yield end - prev
            prev = end

    # ------------------------------------------------------------------ Sequence

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, i: int) -> ChunkRef: ...

    @overload
    def __getitem__(self, i: slice) -> ChunkList: ...

    def __getitem__(self, i: int | slice) -> ChunkRef | ChunkList:
        if isinstance(i, slice):
            return ChunkList(self[j] for j in range(*i.indices(len(self))))
        n = len(self._ends)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("chunk index out of range")
        return ChunkRef(self._hashes[i * HASH_SIZE:(i + 1) * HASH_SIZE], self.size(i))

    def __iter__(self) -> Iterator[ChunkRef]:
        for h, s in zip(self.iter_hashes(), self.sizes(), strict=True):
            yield ChunkRef(h, s)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkList):
            return self._hashes == other._hashes and self._ends == other._ends
        if isinstance(other, tuple):    # the representation it replaced
            return len(other) == len(self) and all(
                a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._hashes, self._ends.tobytes()))

    def __repr__(self) -> str:
        return f"ChunkList({len(self)} chunks, {self.total} bytes)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkList.from_pairs, (tuple((h, s) for h, s in
                                             zip(self.iter_hashes(), self.sizes(),
                                                 strict=True)),))


@struct
@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a variant. ``chunks`` may be given as any sequence of
    :class:`ChunkRef`; it is held as a :class:`ChunkList`."""

    path: str
    size: int
    chunks: ChunkList
    merkle_root: bytes
    executable: bool = False

    def __post_init__(self) -> None:
        validate_relative_path(self.path)
        given: Any = self.chunks       # (callers may pass any sequence of ChunkRef)
        if not isinstance(given, ChunkList):
            object.__setattr__(self, "chunks", ChunkList(given))
        if self.chunks.total != self.size:
            raise InvalidValue(f"{self.path}: chunk sizes do not add up to the file size")
        if len(self.merkle_root) != HASH_SIZE:
            raise InvalidValue(f"{self.path}: a Merkle root is 32 bytes")

    def check_merkle(self) -> None:
        if merkle_root_of_buffer(self.chunks.hash_bytes, len(self.chunks)) != \
                self.merkle_root:
            raise MalformedMessage(f"{self.path}: Merkle root does not match its chunk list")


#: ``Variant.health_check`` value that asks the model's ``grpc.health.v1.Health`` service
GRPC_HEALTH_CHECK = "grpc"

@struct
@dataclass(frozen=True, slots=True)
class Variant:
    variant_id: str
    requirements: Requirements
    files: tuple[FileEntry, ...]
    migrator: str | None = None  # a file path in this variant, run as the model's migrator
    # (appended, with a default) the address of a migrator the model already serves:
    # "unix:///abs/path" or "host:port"; the agent only connects. Exclusive with migrator.
    migrator_address: str | None = appended(None)
    # a file path in this variant, run to check its health; or "grpc": ask the standard
    # grpc.health.v1.Health service at migrator_address
    health_check: str | None = appended(None)

    def __post_init__(self) -> None:
        validate_variant_id(self.variant_id)
        if len(self.files) > MAX_FILES:
            raise InvalidValue(f"variant {self.variant_id} has more than {MAX_FILES} files")
        seen: set[str] = set()
        for f in self.files:
            key = f.path.casefold()
            if key in seen:
                raise HostilePath(f"duplicate file path in variant {self.variant_id}: {f.path}")
            seen.add(key)
        # a file may not also be a directory of another file ("a" and "a/b")
        dirs = {p.rsplit("/", 1)[0].casefold() for p in seen if "/" in p}
        for d in dirs:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                if "/".join(parts[:i]) in seen:
                    raise HostilePath(f"path {d!r} is both a file and a directory")
        if self.migrator is not None and self.migrator.casefold() not in seen:
            raise InvalidValue(f"migrator {self.migrator!r} is not a file of the variant")
        if self.migrator_address is not None:
            if self.migrator is not None:
                raise InvalidValue(f"variant {self.variant_id}: migrator and "
                                   "migrator_address are exclusive")
            validate_migrator_address(self.migrator_address)
        if self.health_check == GRPC_HEALTH_CHECK:
            if self.migrator_address is None:
                raise InvalidValue(f"variant {self.variant_id}: health_check = \"grpc\" asks "
                                   "the model's service, so it needs a migrator_address")
        elif self.health_check is not None and self.health_check.casefold() not in seen:
            raise InvalidValue(f"health_check {self.health_check!r} is not a file of the "
                               "variant")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_refs(self) -> list[ChunkRef]:
        """Distinct chunks of the variant in first-use order."""
        return list(self.distinct_chunks())

    def distinct_chunks(self) -> ChunkList:
        """Distinct chunks of the variant in first-use order, as one compact list."""
        if len(self.files) == 1:
            only = self.files[0].chunks
            if only.distinct:
                return only
        seen: set[bytes] = set()
        out: list[ChunkRef] = []
        for f in self.files:
            for h, s in zip(f.chunks.iter_hashes(), f.chunks.sizes(), strict=True):
                if h not in seen:
                    seen.add(h)
                    out.append(ChunkRef(h, s))
        return ChunkList(out)


class _Header(Protocol):
    """What a manifest and its head both state, checked alike."""

    @property
    def model_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def base_version(self) -> str | None: ...
    @property
    def publisher_key(self) -> bytes: ...
    @property
    def variants(self) -> Sequence[Any]: ...


def check_header(m: _Header) -> None:
    """The checks a manifest and its head share: ids, versions, the publisher key, and
    at least one variant, with distinct ids."""
    validate_model_id(m.model_id)
    validate_version(m.version)
    if m.base_version is not None:
        validate_version(m.base_version)
    if not m.variants:
        raise InvalidValue(f"{m.model_id} {m.version}: a manifest needs a variant")
    ids = [v.variant_id for v in m.variants]
    if len(set(ids)) != len(ids):
        raise InvalidValue(f"{m.model_id} {m.version}: duplicate variant ids")
    if len(m.publisher_key) != 32:
        raise InvalidValue("publisher key must be 32 bytes")


def check_publisher_signature(key: bytes, data: bytes, signature: bytes,
                              trust: FleetTrust | None) -> None:
    """Raise unless ``signature`` over ``data`` is ``key``'s, and ``key`` an admitted
    publisher of ``trust`` (checked through its verifier) when a trust is given."""
    check: Verifier = verify_signature
    if trust is not None:
        trust.check(key, Role.PUBLISHER)
        check = trust.verifier
    check(key, data, signature)


@struct
@dataclass(frozen=True, slots=True)
class _ManifestBody:
    model_id: str
    version: str
    variants: tuple[Variant, ...]
    publisher_key: bytes
    created_at: int
    base_version: str | None


@struct
@dataclass(frozen=True, slots=True)
class Manifest:
    """A signed ``(model_id, version)``. Variants are in preference order, best first."""

    model_id: str
    version: str
    variants: tuple[Variant, ...]
    publisher_key: bytes
    created_at: int  # ms since the epoch, as the publisher saw it
    base_version: str | None  # a derived version (migrator export) names its base
    signature: bytes
    # (appended) the publisher's signature over the head (``_manifest_head``): what
    # the ledger carries instead of the chunk lists. Not part of the id.
    head_signature: bytes | None = appended(None)
    # memo of manifest_id: not a field on the wire, not compared (the id is a pure
    # function of the fields above, and computing it encodes every chunk reference)
    _id: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_header(self)

    def _body(self) -> _ManifestBody:
        return _ManifestBody(self.model_id, self.version, self.variants, self.publisher_key,
                             self.created_at, self.base_version)

    @property
    def manifest_id(self) -> str:
        """BLAKE3 of the canonical unsigned body, hex (computed once)."""
        if not self._id:
            object.__setattr__(self, "_id", blake3.blake3(canonical(self._body())).hexdigest())
        return self._id

    def signed_bytes(self) -> bytes:
        """What the publisher signs: the manifest context label, then the canonical body."""
        return signing_payload(SigningContext.MANIFEST, canonical(self._body()))

    @property
    def publisher_id(self) -> str:
        return fingerprint(self.publisher_key)

    @classmethod
    def sign(cls, publisher: SigningIdentity, model_id: str, version: str,
             variants: tuple[Variant, ...], created_at: int,
             base_version: str | None = None) -> Manifest:
        unsigned = cls(model_id, version, variants, publisher.public_key, created_at,
                       base_version, b"\x00" * 64)
        signed = cls(model_id, version, variants, publisher.public_key, created_at,
                     base_version, publisher.sign(unsigned.signed_bytes()))
        return signed.with_head_signature(publisher)

    def with_head_signature(self, publisher: SigningIdentity) -> Manifest:
        """This manifest with its publisher's signature over its head (one stored
        before heads existed gets one here; signing again gives the same bytes)."""
        from ._manifest_head import ManifestHead
        sig = ManifestHead.signature_for(publisher, self)
        return replace(self, head_signature=sig)

    def head(self) -> ManifestHead:
        """What the ledger carries of this manifest (``_manifest_head``); raises
        :class:`InvalidValue` if its publisher has not signed one."""
        from ._manifest_head import ManifestHead
        if self.head_signature is None:
            raise InvalidValue(f"{self.model_id} {self.version}: the manifest has no head "
                               "signature (stored before heads existed); its publisher "
                               "signs one when it announces it")
        return ManifestHead.unsigned(self)

    def verify(self, trust: FleetTrust | None = None) -> None:
        """Raise unless signed by its publisher key (admitted by ``trust`` if given) and
        every file's Merkle root matches its chunk list (the signature through
        ``trust.verifier`` when a trust is given)."""
        check_publisher_signature(self.publisher_key, self.signed_bytes(), self.signature,
                                  trust)
        if self.head_signature is not None:
            self.head().verify(trust)
        for v in self.variants:
            for f in v.files:
                f.check_merkle()

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.variant_id == variant_id:
                return v
        raise InvalidValue(f"{self.model_id} {self.version} has no variant {variant_id!r}; "
                           f"it has {', '.join(v.variant_id for v in self.variants)}")

    def iter_chunks(self) -> Iterator[ChunkRef]:
        for v in self.variants:
            for f in v.files:
                yield from f.chunks


_MIGRATOR_ADDRESS = re.compile(r"^(unix:(//)?/[^\x00-\x1f]{1,200}|"
                               r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5})$")


def validate_migrator_address(address: str) -> str:
    """``address`` if it has the form of a migrator address (``unix:///abs/path``,
    ``unix:/abs/path`` or ``host:port``); else :class:`InvalidValue`. Whether a node
    may connect to it (loopback only by default) is the node's policy."""
    if not isinstance(address, str) or not _MIGRATOR_ADDRESS.match(address) or (
            not address.startswith("unix:") and not 0 < int(address.rsplit(":", 1)[1]) < 65536):
        raise InvalidValue(f"migrator_address {address!r}: expected unix:///path or host:port")
    return address


def check_migrator_path(path: str, what: str) -> str:
    """``path`` if it is a plain, normalised, relative path; else :class:`HostilePath`
    naming ``what`` (e.g. ``"ingest source"``) so the operator sees which side lied."""
    try:
        return validate_relative_path(path)
    except HostilePath as exc:
        raise HostilePath(f"migrator {what} {path!r} refused: {exc}") from None
