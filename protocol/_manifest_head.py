"""A manifest's head: what the ledger carries of a manifest (issue 21, "manifests as
content").

Theory of operation
-------------------
A :class:`~._manifest.Manifest` names every chunk of every file of every variant:
about 41 bytes per chunk, 1.3 MB for a 4 GiB model. Gossiping that to every node of
the fleet, most of which may never run the model, costs thin links the most. So the
ledger carries a :class:`ManifestHead` instead: the manifest's id (BLAKE3 of its
canonical body, :attr:`~._manifest.Manifest.manifest_id`), its model, version,
publisher, creation time and base, and per variant what a node decides with before it
fetches anything -- the variant id, its requirements and its size -- signed by the
publisher (:attr:`SigningContext.MANIFEST_HEAD`, a signature of its own: the
manifest's signature covers the chunk lists, so it cannot be checked without them).

A node that needs the chunk list -- a live intent makes the version its target --
fetches the body from a peer by id (:mod:`._manifest_fetch`) and keeps it only if its
id and its head match the signed head (:meth:`ManifestHead.describes`): the id binds
every byte of the body, the head's signature binds the id. Nodes out of scope never
hold the body.

``Manifest.sign`` signs both; the head's signature travels with the manifest as an
appended field (``Manifest.head_signature``) so that any node holding the body can
produce the head again, byte for byte. A manifest stored before heads existed has no
head signature until its publisher adds one (:meth:`Manifest.with_head_signature`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._capabilities import Requirements
from ._codec import canonical, struct
from ._errors import InvalidValue
from ._identity import (
    FleetTrust,
    SigningContext,
    SigningIdentity,
    fingerprint,
    signing_payload,
)

if TYPE_CHECKING:
    from ._manifest import Manifest

__all__ = ["VariantHead", "ManifestHead"]


@struct
@dataclass(frozen=True, slots=True)
class VariantHead:
    """What a node needs of a variant before it fetches the chunk list."""

    variant_id: str
    requirements: Requirements
    size: int

    def __post_init__(self) -> None:
        from ._manifest import validate_variant_id
        validate_variant_id(self.variant_id)
        if self.size < 0:
            raise InvalidValue(f"variant {self.variant_id}: a size is not negative")


@struct
@dataclass(frozen=True, slots=True)
class _HeadBody:
    body_id: bytes
    model_id: str
    version: str
    variants: tuple[VariantHead, ...]
    publisher_key: bytes
    created_at: int
    base_version: str | None


@struct
@dataclass(frozen=True, slots=True)
class ManifestHead:
    """A publisher-signed summary of one manifest: its id and what a node decides with.
    Read like a manifest by what needs no chunk list (``model_id``, ``version``,
    ``variants`` with ``variant_id``, ``requirements`` and ``size``, ``manifest_id``)."""

    body_id: bytes          # BLAKE3 of the manifest's canonical body (32 bytes)
    model_id: str
    version: str
    variants: tuple[VariantHead, ...]
    publisher_key: bytes
    created_at: int
    base_version: str | None
    signature: bytes        # the publisher's, over the head (MANIFEST_HEAD)
    _id: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from ._manifest import check_header
        check_header(self)
        if len(self.body_id) != 32:
            raise InvalidValue("a manifest id is 32 bytes")

    @property
    def manifest_id(self) -> str:
        """The manifest's id, hex (as :attr:`Manifest.manifest_id`)."""
        if not self._id:
            object.__setattr__(self, "_id", self.body_id.hex())
        return self._id

    @property
    def publisher_id(self) -> str:
        return fingerprint(self.publisher_key)

    def _body(self) -> _HeadBody:
        return _HeadBody(self.body_id, self.model_id, self.version, self.variants,
                         self.publisher_key, self.created_at, self.base_version)

    def signed_bytes(self) -> bytes:
        return signing_payload(SigningContext.MANIFEST_HEAD, canonical(self._body()))

    @classmethod
    def unsigned(cls, manifest: Manifest) -> ManifestHead:
        """The head of ``manifest`` with the signature it carries (64 zero bytes if
        none: a head to sign, not to send)."""
        return cls(bytes.fromhex(manifest.manifest_id), manifest.model_id, manifest.version,
                   tuple(VariantHead(v.variant_id, v.requirements, v.size)
                         for v in manifest.variants),
                   manifest.publisher_key, manifest.created_at, manifest.base_version,
                   manifest.head_signature or b"\x00" * 64)

    @classmethod
    def signature_for(cls, publisher: SigningIdentity, manifest: Manifest) -> bytes:
        """The publisher's signature over the head of ``manifest``."""
        if publisher.public_key != manifest.publisher_key:
            raise InvalidValue("only the manifest's publisher signs its head")
        return publisher.sign(cls.unsigned(manifest).signed_bytes())

    def verify(self, trust: FleetTrust | None = None) -> None:
        """Raise unless signed by its publisher key (admitted by ``trust`` if given)."""
        from ._manifest import check_publisher_signature
        check_publisher_signature(self.publisher_key, self.signed_bytes(), self.signature,
                                  trust)

    def describes(self, manifest: Manifest) -> bool:
        """Whether ``manifest`` is the body this head names: its id (a hash of all of
        it) and everything the head says of it agree."""
        return ManifestHead.unsigned(manifest)._body() == self._body()

    def variant(self, variant_id: str) -> VariantHead:
        for v in self.variants:
            if v.variant_id == variant_id:
                return v
        raise InvalidValue(f"{self.model_id} {self.version} has no variant {variant_id!r}; "
                           f"it has {', '.join(v.variant_id for v in self.variants)}")
