"""Ed25519 identities, signatures, fingerprints and the fleet's certificates.

Every key in a fleet is Ed25519. The fleet *root* key admits the others by
signing a :class:`Certificate` (subject key, role, name); a
:class:`Revocation` signed by the root withdraws one. :class:`FleetTrust` is
the pure check "is this key admitted for this role right now?" that the ledger,
the handshake and manifest verification all share. It also carries the
signature check those verifications use (:data:`Verifier`): the real Ed25519
check unless the driver that builds the trust passes another.

Every certificate carries an expiry (``expires_at``). ``protocol/`` has no clock:
the trust keeps the time its driver last told it (:meth:`FleetTrust.observe_clock`;
the node machine calls it on every input, since every input carries ``now``), and
a certificate whose ``expires_at`` is not after that time admits nothing.

Every signature covers a *context label* before the canonical bytes
(:func:`signing_payload`): a distinct ASCII string per signed structure, ending in
NUL, so a signature over one structure can never verify as another's, whatever
their field counts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
import nacl.exceptions
import nacl.signing

from ._codec import canonical, struct
from ._errors import InvalidValue, SignatureError, UntrustedKey

__all__ = [
    "check_node_certificate",
    "Role",
    "SigningIdentity",
    "fingerprint",
    "verify_signature",
    "Verifier",
    "Certificate",
    "Revocation",
    "FleetTrust",
    "SigningContext",
    "signing_payload",
    "DEFAULT_CERTIFICATE_LIFETIME_MS",
]

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


#: The lifetime :meth:`Certificate.issue` gives when the caller names no expiry (the
#: simulator and tests); ``shoal fleet admit`` passes its own (``--valid-for``).
DEFAULT_CERTIFICATE_LIFETIME_MS = 100 * 365 * 86_400_000


class SigningContext(bytes, enum.Enum):
    """The domain-separation label signed ahead of each signed structure's bytes.

    Distinct, NUL-terminated ASCII with no NUL inside: no label is a prefix of another,
    so ``label || body`` names its structure unambiguously."""

    CERTIFICATE = b"shoal/v1/certificate\0"
    REVOCATION = b"shoal/v1/revocation\0"
    INTENT = b"shoal/v1/intent\0"
    MANIFEST = b"shoal/v1/manifest\0"
    MANIFEST_HEAD = b"shoal/v1/manifest-head\0"
    ENTRY = b"shoal/v1/ledger-entry\0"
    HANDSHAKE = b"shoal/v1/handshake-auth\0"


def signing_payload(context: SigningContext, body: bytes) -> bytes:
    """The bytes a signature covers: ``context``'s label, then ``body``."""
    return context.value + body


def fingerprint(public_key: bytes) -> str:
    """A key's short, stable name: the first 16 bytes of its BLAKE3 hash, hex."""
    return blake3.blake3(public_key).hexdigest()[:32]


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``public_key``'s over ``data``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise SignatureError("malformed key or signature")
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError(f"signature does not verify for key {fingerprint(public_key)}") \
            from None


#: A signature check, ``(public_key, data, signature)``: returns when the signature is
#: ``public_key``'s over ``data``, raises :class:`SignatureError` otherwise.
#: :func:`verify_signature` is the real one; a driver may pass an equivalent one (the
#: simulator's checks each distinct triple once, ``sim/_speedups.py``).
Verifier = Callable[[bytes, bytes, bytes], None]


class SigningIdentity:
    """A private Ed25519 key. ``seed`` is the 32-byte secret; keep it 0600 on disk."""

    __slots__ = ("_key", "public_key", "key_id")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise InvalidValue("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)
        self.key_id: str = fingerprint(self.public_key)

    @classmethod
    def generate(cls) -> SigningIdentity:
        """A fresh key from the OS's randomness (call from agent/, never inside protocol)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)

    def __repr__(self) -> str:
        return f"SigningIdentity({self.key_id})"


class Role(enum.StrEnum):
    NODE = "node"
    PUBLISHER = "publisher"
    OPERATOR = "operator"


@struct
@dataclass(frozen=True, slots=True)
class _CertificateBody:
    fleet_id: str
    subject_key: bytes
    role: Role
    name: str
    issued_at: int  # milliseconds since the epoch, as the issuer saw it
    expires_at: int  # milliseconds since the epoch; admits nothing from then on


@struct
@dataclass(frozen=True, slots=True)
class Certificate:
    """The fleet root's statement that ``subject_key`` may act as ``role`` from
    ``issued_at`` until ``expires_at`` (milliseconds since the epoch)."""

    fleet_id: str
    subject_key: bytes
    role: Role
    name: str
    issued_at: int
    expires_at: int
    signature: bytes
    # the hash, kept once computed: every ledger keys its relay entries by the
    # certificate they carry (no part of the encoding, equality or repr)
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        """The hash the dataclass would compute (of the compared fields), once."""
        h = self._hash
        if h is None:
            h = hash((self.fleet_id, self.subject_key, self.role, self.name, self.issued_at,
                      self.expires_at, self.signature))
            object.__setattr__(self, "_hash", h)
        return h

    def __post_init__(self) -> None:
        if len(self.subject_key) != PUBLIC_KEY_SIZE:
            raise InvalidValue("certificate subject key must be 32 bytes")
        if not self.name or len(self.name) > 128:
            raise InvalidValue("certificate name must be 1..128 characters")

    @property
    def subject_id(self) -> str:
        return fingerprint(self.subject_key)

    def signed_bytes(self) -> bytes:
        return signing_payload(SigningContext.CERTIFICATE, canonical(_CertificateBody(
            self.fleet_id, self.subject_key, self.role, self.name, self.issued_at,
            self.expires_at)))

    def expired(self, now_ms: int) -> bool:
        """Whether the certificate no longer admits its key at ``now_ms``."""
        return now_ms >= self.expires_at

    @classmethod
    def issue(cls, root: SigningIdentity, fleet_id: str, subject_key: bytes, role: Role,
              name: str, issued_at: int, expires_at: int | None = None) -> Certificate:
        """``expires_at`` defaults to ``issued_at`` + :data:`DEFAULT_CERTIFICATE_LIFETIME_MS`."""
        if expires_at is None:
            expires_at = issued_at + DEFAULT_CERTIFICATE_LIFETIME_MS
        if expires_at <= issued_at:
            raise InvalidValue("a certificate must expire after it is issued")
        unsigned = cls(fleet_id, subject_key, role, name, issued_at, expires_at, b"")
        return cls(fleet_id, subject_key, role, name, issued_at, expires_at,
                   root.sign(unsigned.signed_bytes()))

    def verify(self, root_key: bytes, fleet_id: str,
               verifier: Verifier = verify_signature) -> None:
        if self.fleet_id != fleet_id:
            raise UntrustedKey(f"certificate for fleet {self.fleet_id!r}, not {fleet_id!r}")
        if self.subject_key == root_key and self.role is Role.NODE:
            raise UntrustedKey("the fleet root key is never a node key")
        verifier(root_key, self.signed_bytes(), self.signature)


@struct
@dataclass(frozen=True, slots=True)
class _RevocationBody:
    fleet_id: str
    subject_key: bytes
    issued_at: int


@struct
@dataclass(frozen=True, slots=True)
class Revocation:
    """The fleet root withdraws every certificate of ``subject_key``."""

    fleet_id: str
    subject_key: bytes
    issued_at: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return signing_payload(SigningContext.REVOCATION, canonical(
            _RevocationBody(self.fleet_id, self.subject_key, self.issued_at)))

    @classmethod
    def issue(cls, root: SigningIdentity, fleet_id: str, subject_key: bytes,
              issued_at: int) -> Revocation:
        sig = root.sign(cls(fleet_id, subject_key, issued_at, b"").signed_bytes())
        return cls(fleet_id, subject_key, issued_at, sig)

    def verify(self, root_key: bytes, fleet_id: str,
               verifier: Verifier = verify_signature) -> None:
        if self.fleet_id != fleet_id:
            raise UntrustedKey(f"revocation for fleet {self.fleet_id!r}, not {fleet_id!r}")
        verifier(root_key, self.signed_bytes(), self.signature)


class FleetTrust:
    """The admitted keys of one fleet: root key, certificates, revocations.

    Pure and deterministic: adding the same certificates in any order gives the
    same answers. Only root-signed certificates and revocations are accepted.

    ``verifier`` checks every signature verified against this trust: certificates
    and revocations here, and ledger entries, intents and manifests given this
    trust. The default is the real Ed25519 check (what a daemon uses); the
    simulator, whose N nodes share one CPU, passes one that checks each distinct
    signature once.

    ``now_ms`` is the time expiry is judged at: the last time the driver passed to
    :meth:`observe_clock` (0, before any, expires nothing). The fleet root key is
    never admitted as a node; it may still sign as operator or publisher.
    """

    __slots__ = ("fleet_id", "root_key", "verifier", "_certs", "_revoked", "rejected",
                 "now_ms", "_node_keys")

    def __init__(self, fleet_id: str, root_key: bytes, *,
                 verifier: Verifier = verify_signature, now: float = 0.0) -> None:
        if len(root_key) != PUBLIC_KEY_SIZE:
            raise InvalidValue("the fleet root key must be 32 bytes")
        self.fleet_id = fleet_id
        self.root_key = root_key
        self.verifier: Verifier = verifier
        self._certs: dict[tuple[bytes, Role], Certificate] = {}
        self._revoked: dict[bytes, Revocation] = {}
        self._node_keys: dict[str, bytes] = {}   # node id -> key, of node certificates
        self.rejected = 0
        self.now_ms = int(now * 1000)

    def observe_clock(self, now: float) -> None:
        """The wall clock (``now``, seconds, as every protocol input carries it): the
        time certificate expiry is judged at from now on."""
        self.now_ms = int(now * 1000)

    def add_certificate(self, cert: Certificate) -> bool:
        """Verify and keep ``cert``; False (and counted) when it does not verify."""
        try:
            cert.verify(self.root_key, self.fleet_id, self.verifier)
        except (SignatureError, UntrustedKey):
            self.rejected += 1
            return False
        key = (cert.subject_key, cert.role)
        old = self._certs.get(key)
        if old is None or (old.issued_at, old.signature) < (cert.issued_at, cert.signature):
            self._certs[key] = cert
            if cert.role is Role.NODE and old is None:
                self._node_keys[fingerprint(cert.subject_key)] = cert.subject_key
        return True

    def add_revocation(self, rev: Revocation) -> bool:
        try:
            rev.verify(self.root_key, self.fleet_id, self.verifier)
        except (SignatureError, UntrustedKey):
            self.rejected += 1
            return False
        old = self._revoked.get(rev.subject_key)
        if old is None or old.issued_at < rev.issued_at:
            self._revoked[rev.subject_key] = rev
        return True

    def certificates(self) -> list[Certificate]:
        return sorted(self._certs.values(), key=lambda c: (c.subject_key, c.role))

    def revocations(self) -> list[Revocation]:
        return sorted(self._revoked.values(), key=lambda r: r.subject_key)

    def certificate(self, key: bytes, role: Role) -> Certificate | None:
        return self._certs.get((key, role))

    def node_certificate(self, node_id: str) -> Certificate | None:
        """The node certificate of the key whose fingerprint is ``node_id``."""
        key = self._node_keys.get(node_id)
        return None if key is None else self._certs.get((key, Role.NODE))

    def is_admitted(self, key: bytes, role: Role) -> bool:
        if key == self.root_key:
            # the root may sign intents and manifests, but is never a node key
            return role is not Role.NODE
        cert = self._certs.get((key, role))
        if cert is None or cert.expired(self.now_ms):
            return False
        rev = self._revoked.get(key)
        return rev is None or rev.issued_at < cert.issued_at

    def check(self, key: bytes, role: Role) -> None:
        """Raise :class:`UntrustedKey` unless ``key`` is admitted for ``role``."""
        if not self.is_admitted(key, role):
            cert = self._certs.get((key, role))
            why = (f" (its certificate expired at {cert.expires_at} ms)"
                   if cert is not None and cert.expired(self.now_ms) else "")
            raise UntrustedKey(f"key {fingerprint(key)} is not an admitted {role.value} "
                               f"of fleet {self.fleet_id!r}{why}")


def check_node_certificate(cert: Certificate, trust: FleetTrust) -> None:
    """Raise :class:`UntrustedKey` unless ``cert`` admits its key as a node of ``trust``'s fleet.

    Accepts a certificate the local trust store has not seen yet (it may arrive by
    gossip later) as long as the fleet root signed it, and refuses revoked keys.
    Does not modify ``trust``.
    """
    if cert.fleet_id != trust.fleet_id:
        raise UntrustedKey(f"certificate of node {cert.subject_id} is for fleet "
                           f"{cert.fleet_id!r}, not {trust.fleet_id!r}")
    if cert.role is not Role.NODE:
        raise UntrustedKey(f"key {cert.subject_id} presented a {cert.role.value} "
                           f"certificate; a node certificate is required")
    if cert.subject_key == trust.root_key:
        raise UntrustedKey(f"key {cert.subject_id} is the fleet root key, which is never "
                           f"a node key")
    try:
        cert.verify(trust.root_key, trust.fleet_id, trust.verifier)
    except SignatureError:
        raise UntrustedKey(f"node {cert.subject_id} ({cert.name!r}) is not admitted by the "
                           f"root of fleet {trust.fleet_id!r}: its certificate is not signed "
                           f"by the fleet root key") from None
    for rev in trust.revocations():
        if rev.subject_key == cert.subject_key and rev.issued_at >= cert.issued_at:
            raise UntrustedKey(f"node {cert.subject_id} ({cert.name!r}) was revoked by the "
                               f"fleet root (revocation issued at {rev.issued_at})")
    if cert.expired(trust.now_ms):
        raise UntrustedKey(f"the certificate of node {cert.subject_id} ({cert.name!r}) "
                           f"expired at {cert.expires_at} ms (now {trust.now_ms} ms)")
