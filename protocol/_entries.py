"""Ledger entries: one fact, stamped ``(origin, counter)`` and signed by its origin.

An :class:`Entry` holds exactly one payload -- a :class:`~._records.NodeRecord`, an
:class:`~._intents.Intent`, a :class:`~._manifest_head.ManifestHead` (the
ledger carries a manifest's signed head; the chunk lists travel on demand), a
:class:`~._identity.Certificate` or a :class:`~._identity.Revocation` -- and the
origin's Ed25519 signature over the canonical encoding of the stamped payload
(``_EntryBody``: the entry without its signature). :meth:`Entry.verify` checks the
signature (the origin must be an admitted node) and then the payload by its own
rule (an admitted operator, an admitted publisher's head signature, the fleet root).

An entry is immutable, so what is derived from it -- its origin id and its
encoding -- is computed once per entry object and kept on it (``Entry.origin``,
:func:`encoded_entry`), and so is the verifier that accepted its signature (the
same verifier does not check it again). Where one object is checked and sized by
many ledgers (the simulator's nodes share the objects they send each other), the
work is done once. Nothing is cached in the module: signatures are checked by the
trust's ``verifier`` (``FleetTrust``), which the driver chooses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._codec import canonical, encode_value, struct
from ._errors import InvalidValue
from ._identity import (
    Certificate,
    FleetTrust,
    Revocation,
    Role,
    SigningContext,
    SigningIdentity,
    Verifier,
    fingerprint,
    signing_payload,
)
from ._intents import Intent
from ._manifest import Manifest
from ._manifest_head import ManifestHead
from ._records import NodeRecord

__all__ = ["EntryKind", "Entry", "encoded_entry", "entry_size"]


class EntryKind(enum.StrEnum):
    RECORD = "record"
    INTENT = "intent"
    MANIFEST = "manifest"
    CERTIFICATE = "certificate"
    REVOCATION = "revocation"


@struct
@dataclass(frozen=True, slots=True)
class _EntryBody:
    origin_key: bytes
    counter: int
    record: NodeRecord | None
    intent: Intent | None
    manifest: ManifestHead | None
    certificate: Certificate | None
    revocation: Revocation | None


@struct
@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger fact, stamped ``(origin, counter)`` and signed by the origin.

    The private fields are filled in the first time they are needed -- the origin id
    and the encoding, derived from the others, and the verifier that accepted the
    signature -- and take no part in the encoding, equality or repr."""

    origin_key: bytes
    counter: int
    record: NodeRecord | None
    intent: Intent | None
    manifest: ManifestHead | None
    certificate: Certificate | None
    revocation: Revocation | None
    signature: bytes
    _origin: str | None = field(default=None, init=False, repr=False, compare=False)
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)
    # the verifier that accepted the signature: the same verifier need not check it again
    _checked_by: Verifier | None = field(default=None, init=False, repr=False,
                                         compare=False)
    # the content key of a relay entry (see content_key), made once per entry: every
    # ledger that holds the entry keys it by this very object
    _content: object | None = field(default=None, init=False, repr=False, compare=False)
    # (origin, counter) and (origin, content key): the keys ledgers hold the entry by,
    # made once, so that every ledger holding the entry shares them
    _stamp: tuple[str, int] | None = field(default=None, init=False, repr=False,
                                           compare=False)
    _relay: tuple[str, object] | None = field(default=None, init=False, repr=False,
                                              compare=False)

    def __post_init__(self) -> None:
        present = sum(x is not None for x in (self.record, self.intent, self.manifest,
                                              self.certificate, self.revocation))
        if present != 1:
            raise InvalidValue("a ledger entry holds exactly one payload")
        if self.counter < 1 or len(self.origin_key) != 32:
            raise InvalidValue("an entry needs a 32-byte origin key and a counter >= 1")

    @property
    def origin(self) -> str:
        """``fingerprint(origin_key)``, computed once per entry."""
        origin = self._origin
        if origin is None:
            origin = fingerprint(self.origin_key)
            object.__setattr__(self, "_origin", origin)
        return origin

    def encoded(self) -> bytes:
        """The entry's encoding (as a struct inside a message, or on its own), computed
        once per entry."""
        encoded = self._encoded
        if encoded is None:
            encoded = encode_value(self)
            object.__setattr__(self, "_encoded", encoded)
        return encoded

    @property
    def stamp(self) -> tuple[str, int]:
        """``(origin, counter)``, made once per entry."""
        stamp = self._stamp
        if stamp is None:
            stamp = (self.origin, self.counter)
            object.__setattr__(self, "_stamp", stamp)
        return stamp

    def relay_key(self) -> tuple[str, object] | None:
        """``(origin, content_key())`` for a relay entry (None for a record), made once
        per entry."""
        key = self._relay
        if key is None and self.record is None:
            key = (self.origin, self.content_key())
            object.__setattr__(self, "_relay", key)
        return key

    def content_key(self) -> object | None:
        """The exact content of a relay entry (None for a record): equal exactly when
        two entries carry the same payload, signature included. Made once per entry."""
        key = self._content
        if key is None and self.record is None:
            if self.intent is not None:
                key = (EntryKind.INTENT, self.intent.intent_id, self.intent.signature)
            elif self.manifest is not None:
                key = (EntryKind.MANIFEST, self.manifest.manifest_id, self.manifest.signature)
            elif self.certificate is not None:
                key = (EntryKind.CERTIFICATE, self.certificate)
            else:
                key = (EntryKind.REVOCATION, self.revocation)
            object.__setattr__(self, "_content", key)
        return key

    @property
    def kind(self) -> EntryKind:
        if self.record is not None:
            return EntryKind.RECORD
        if self.intent is not None:
            return EntryKind.INTENT
        if self.manifest is not None:
            return EntryKind.MANIFEST
        if self.certificate is not None:
            return EntryKind.CERTIFICATE
        return EntryKind.REVOCATION

    def _body(self) -> _EntryBody:
        return _EntryBody(self.origin_key, self.counter, self.record, self.intent,
                          self.manifest, self.certificate, self.revocation)

    def signed_bytes(self) -> bytes:
        """What the origin signs: the ledger-entry context label, then the canonical body."""
        return signing_payload(SigningContext.ENTRY, canonical(self._body()))

    @classmethod
    def create(cls, origin: SigningIdentity, counter: int, payload: object) -> Entry:
        slots: dict[str, object] = {"record": None, "intent": None, "manifest": None,
                                    "certificate": None, "revocation": None}
        if isinstance(payload, Manifest):      # the ledger carries its head
            payload = payload.head()
        name = {NodeRecord: "record", Intent: "intent", ManifestHead: "manifest",
                Certificate: "certificate", Revocation: "revocation"}.get(type(payload))
        if name is None:
            raise InvalidValue(f"{type(payload).__name__} cannot go into the ledger")
        slots[name] = payload
        body = _EntryBody(origin.public_key, counter, **slots)  # type: ignore[arg-type]
        return cls(origin.public_key, counter, body.record, body.intent, body.manifest,
                   body.certificate, body.revocation,
                   origin.sign(signing_payload(SigningContext.ENTRY, canonical(body))))

    def verify(self, trust: FleetTrust, payload: bool = True) -> None:
        """Raise a RemoteProtocolError unless the entry and its payload check out.

        ``payload=False`` checks only the stamp (origin admitted, entry signature): for
        a payload whose exact content the caller verified already (the ledger's
        verified-content cache)."""
        trust.check(self.origin_key, Role.NODE)
        verifier = trust.verifier
        if self._checked_by is not verifier:   # the entry is immutable: checked once
            verifier(self.origin_key, self.signed_bytes(), self.signature)
            object.__setattr__(self, "_checked_by", verifier)
        if not payload:
            return
        if self.intent is not None:
            self.intent.verify(trust)
        elif self.manifest is not None:
            self.manifest.verify(trust)
        elif self.certificate is not None:
            cert = self.certificate
            # the trust keeps only certificates it verified against its own root and
            # fleet: an equal one needs no second check
            if trust.certificate(cert.subject_key, cert.role) != cert:
                cert.verify(trust.root_key, trust.fleet_id, trust.verifier)
        elif self.revocation is not None:
            self.revocation.verify(trust.root_key, trust.fleet_id, trust.verifier)


def encoded_entry(e: Entry) -> bytes:
    """The entry's encoding (:meth:`Entry.encoded`): the daemon's saved ledger stores
    exactly these bytes."""
    return e.encoded()


def entry_size(e: Entry) -> int:
    """Encoded size of an entry (as a struct inside a message)."""
    return len(encoded_entry(e))
