"""The ledger's manifests: the signed heads it holds (a CRDT like the rest of the
ledger) and, beside them, the bodies -- whole manifests with their chunk lists -- this
node has (published here, fetched because a live intent made the version its target,
or read back from its disk -- one read before its head arrived waits aside for it). A
body is kept only for a head held and only if the head describes it
(``_manifest_head``); retiring a head forgets its body."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from ._errors import InvalidValue, ShoalError
from ._identity import FleetTrust, Role
from ._manifest import Manifest
from ._manifest_head import ManifestHead

__all__ = ["ManifestShelf", "ManifestViews"]


class ManifestShelf:
    def __init__(self, trust: FleetTrust) -> None:
        self._trust = trust
        self._heads: dict[str, ManifestHead] = {}   # id -> the signed head held
        self._bodies: dict[str, Manifest] = {}      # id -> the whole manifest, if here
        self._local: dict[str, Manifest] = {}       # bodies from this disk awaiting heads

    def heads(self) -> list[ManifestHead]:
        return [self._heads[k] for k in sorted(self._heads)]

    def head_by_id(self, manifest_id: str) -> ManifestHead | None:
        return self._heads.get(manifest_id)

    def head_for(self, model_id: str, version: str) -> ManifestHead | None:
        """The head of ``(model_id, version)``; newest (created_at, id) if re-published."""
        best: ManifestHead | None = None
        for mid in sorted(self._heads):
            m = self._heads[mid]
            if (m.model_id == model_id and m.version == version and self._trust.is_admitted(
                    m.publisher_key, Role.PUBLISHER)
                    and (best is None or m.created_at >= best.created_at)):
                best = m
        return best

    def body_by_id(self, manifest_id: str) -> Manifest | None:
        return self._bodies.get(manifest_id)

    def body_for(self, model_id: str, version: str) -> Manifest | None:
        """The whole manifest of :meth:`head_for`, if this node has its body."""
        head = self.head_for(model_id, version)
        return None if head is None else self._bodies.get(head.manifest_id)

    def bodies(self) -> list[Manifest]:
        return [self._bodies[k] for k in sorted(self._bodies)]

    def put_head(self, head: ManifestHead) -> None:
        mid = head.manifest_id
        self._heads.setdefault(mid, head)
        local = self._local.pop(mid, None)
        if local is not None and mid not in self._bodies:
            with contextlib.suppress(ShoalError):   # (not this head's: fetched as any other)
                self.add_body(local)

    def offer_local(self, manifest: Manifest) -> bool:
        """A body read from this node's own disk: kept now if its head is held, else
        kept aside (not served, not counted) until the head arrives. True if kept now."""
        if manifest.manifest_id in self._heads:
            return self.add_body(manifest)
        self._local[manifest.manifest_id] = manifest
        return False

    def add_body(self, manifest: Manifest) -> bool:
        """Keep ``manifest`` as the body of the head held for its id. False (nothing
        kept) if no such head is held or its body is here already; raises
        :class:`~._errors.InvalidValue` if the head does not describe it, and what
        :meth:`Manifest.verify` raises (a Merkle root, the publisher's signature)."""
        mid = manifest.manifest_id
        head = self._heads.get(mid)
        if head is None or mid in self._bodies:
            return False
        if not head.describes(manifest):
            raise InvalidValue(f"manifest {mid[:16]}: the body does not match its signed head")
        manifest.verify(self._trust)
        self._bodies[mid] = manifest
        return True

    def keep_only(self, manifest_ids: Iterable[str]) -> None:
        """Forget every head (and its body) not named in ``manifest_ids``."""
        keep = set(manifest_ids)
        for mid in [m for m in self._heads if m not in keep]:
            del self._heads[mid]
            self._bodies.pop(mid, None)


class ManifestViews:
    """The ledger's manifest queries (a mixin of :class:`~._ledger.Ledger`)."""

    _shelf: ManifestShelf

    def manifests(self) -> list[ManifestHead]:
        """The heads of the manifests held, by id (``_manifest_head``)."""
        return self._shelf.heads()

    def head_by_id(self, manifest_id: str) -> ManifestHead | None:
        return self._shelf.head_by_id(manifest_id)

    def head_for(self, model_id: str, version: str) -> ManifestHead | None:
        return self._shelf.head_for(model_id, version)

    def manifest_by_id(self, manifest_id: str) -> Manifest | None:
        return self._shelf.body_by_id(manifest_id)

    def manifest_for(self, model_id: str, version: str) -> Manifest | None:
        return self._shelf.body_for(model_id, version)

    def bodies(self) -> list[Manifest]:
        return self._shelf.bodies()

    def add_body(self, manifest: Manifest) -> bool:
        return self._shelf.add_body(manifest)

    def offer_local_body(self, manifest: Manifest) -> bool:
        return self._shelf.offer_local(manifest)
