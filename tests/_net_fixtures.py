"""Shared helpers for the handshake / transport / discovery tests: a small fleet."""

from __future__ import annotations

import random
from dataclasses import dataclass

from protocol._codec import message
from protocol._handshake import ConnectionRole, SecureConnection
from protocol._identity import Certificate, FleetTrust, Revocation, Role, SigningIdentity
from sim._fleet import seeded_identity

FLEET = "fleet-test"


@message(19)
@dataclass(frozen=True, slots=True)
class Note:
    """A test-only payload (type id 19 is in the handshake/transport range)."""

    text: str
    data: bytes = b""


@dataclass
class Member:
    identity: SigningIdentity
    certificate: Certificate

    @property
    def node_id(self) -> str:
        return self.identity.key_id


class Fleet:
    """A fleet root with deterministic node keys (replayable)."""

    def __init__(self, fleet_id: str = FLEET, tag: str = "root") -> None:
        self.fleet_id = fleet_id
        self.root = seeded_identity(fleet_id, tag)
        self.trust = FleetTrust(fleet_id, self.root.public_key)

    def node(self, name: str, *, role: Role = Role.NODE, issued_at: int = 1000) -> Member:
        ident = seeded_identity(self.fleet_id, f"node/{name}")
        cert = Certificate.issue(self.root, self.fleet_id, ident.public_key, role, name,
                                 issued_at)
        return Member(ident, cert)

    def revoke(self, member: Member, issued_at: int = 2000) -> None:
        rev = Revocation.issue(self.root, self.fleet_id, member.identity.public_key,
                               issued_at)
        assert self.trust.add_revocation(rev)


def connection(member: Member, trust: FleetTrust, role: ConnectionRole, rng: random.Random,
               **kw: object) -> SecureConnection:
    return SecureConnection(role=role, identity=member.identity,
                            certificate=member.certificate, trust=trust,
                            ephemeral_secret=rng.randbytes(32), nonce=rng.randbytes(32),
                            **kw)  # type: ignore[arg-type]
