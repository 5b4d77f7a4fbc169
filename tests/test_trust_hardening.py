"""Issue 25, items 4-6: certificate expiry, the root key is never a node key, a
plaintext HandshakeReject after the handshake is a bare close, and every signature
carries its structure's context label."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from protocol._codec import encode, frame
from protocol._entries import Entry
from protocol._errors import SignatureError, UntrustedKey
from protocol._handshake import (
    ConnectionRole,
    ConnectionState,
    HandshakeReject,
    HandshakeRejected,
    RejectCode,
    SessionClosed,
    check_node_certificate,
)
from protocol._hlc import HLC
from protocol._identity import (
    Certificate,
    FleetTrust,
    Revocation,
    Role,
    SigningContext,
    SigningIdentity,
    verify_signature,
)
from protocol._intents import Intent, IntentKind
from protocol._ledger import Ledger

from ._fleet import manifest as make_manifest
from ._net_fixtures import Fleet, Member, connection

INIT, RESP = ConnectionRole.INITIATOR, ConnectionRole.RESPONDER
DAY_MS = 86_400_000


def _pump(a: object, b: object) -> None:
    from .test_handshake import pump
    pump(a, b)  # type: ignore[arg-type]


# ------------------------------------------------------------------ expiry

def _expiring(fleet: Fleet, name: str, expires_at: int) -> Member:
    from sim._fleet import seeded_identity
    ident = seeded_identity(fleet.fleet_id, f"node/{name}")
    cert = Certificate.issue(fleet.root, fleet.fleet_id, ident.public_key, Role.NODE, name,
                             1000, expires_at)
    return Member(ident, cert)


def test_certificate_must_expire_after_it_is_issued() -> None:
    fleet = Fleet()
    with pytest.raises(ValueError):
        Certificate.issue(fleet.root, fleet.fleet_id, bytes(32), Role.NODE, "x", 1000, 1000)
    # the expiry is signed: moving it forward breaks the signature
    m = _expiring(fleet, "n", 5000)
    forged = Certificate(m.certificate.fleet_id, m.certificate.subject_key, Role.NODE, "n",
                         1000, 10**15, m.certificate.signature)
    assert not fleet.trust.add_certificate(forged)


def test_expired_certificate_admits_nothing() -> None:
    fleet = Fleet()
    m = _expiring(fleet, "short", 10 * DAY_MS)
    trust = fleet.trust
    assert trust.add_certificate(m.certificate)
    trust.observe_clock(5 * 86_400)          # seconds, like every protocol input
    assert trust.is_admitted(m.identity.public_key, Role.NODE)
    trust.observe_clock(10 * 86_400)
    assert not trust.is_admitted(m.identity.public_key, Role.NODE)
    with pytest.raises(UntrustedKey, match="expired"):
        trust.check(m.identity.public_key, Role.NODE)
    # a renewal (issued later, expiring later) replaces the old certificate
    renewed = Certificate.issue(fleet.root, fleet.fleet_id, m.identity.public_key, Role.NODE,
                                "short", 9 * DAY_MS, 400 * DAY_MS)
    assert trust.add_certificate(renewed)
    assert trust.is_admitted(m.identity.public_key, Role.NODE)


def test_session_with_an_expired_certificate_is_refused() -> None:
    fleet = Fleet()
    good = fleet.node("good")
    old = _expiring(fleet, "old", 10 * DAY_MS)
    fleet.trust.observe_clock(11 * 86_400)
    with pytest.raises(UntrustedKey, match="expired"):
        check_node_certificate(old.certificate, fleet.trust)
    ci = connection(old, fleet.trust, INIT, random.Random(1))
    cr = connection(good, fleet.trust, RESP, random.Random(2))
    with pytest.raises(UntrustedKey, match="expired"):
        cr.receive_data(ci.data_to_send())
    assert cr.state is ConnectionState.CLOSED
    with pytest.raises(HandshakeRejected) as info:
        ci.receive_data(cr.data_to_send())
    assert info.value.code is RejectCode.UNTRUSTED_KEY and "expired" in info.value.detail
    # before the expiry the same pair connects
    fleet.trust.observe_clock(9 * 86_400)
    ci = connection(old, fleet.trust, INIT, random.Random(3))
    cr = connection(good, fleet.trust, RESP, random.Random(4))
    _pump(ci, cr)
    assert ci.established and cr.established


def test_entries_of_an_expired_node_are_rejected() -> None:
    fleet = Fleet()
    m = _expiring(fleet, "old", 10 * DAY_MS)
    writer_trust = FleetTrust(fleet.fleet_id, fleet.root.public_key, now=86_400)
    assert writer_trust.add_certificate(m.certificate)
    entry = Ledger(writer_trust).append(m.identity, m.certificate)
    entry.verify(writer_trust)                       # fine while the certificate is valid
    reader = FleetTrust(fleet.fleet_id, fleet.root.public_key, now=10 * 86_400)
    assert reader.add_certificate(m.certificate)
    with pytest.raises(UntrustedKey, match="expired"):
        entry.verify(reader)
    result = Ledger(reader).merge_entries([entry])
    assert not result.added


def test_the_node_machine_judges_expiry_at_its_inputs_now() -> None:
    from protocol import Config, NodeMachine
    fleet = Fleet()
    m = _expiring(fleet, "n", 10 * DAY_MS)
    machine = NodeMachine(config=Config(fleet_id=fleet.fleet_id), identity=m.identity,
                          certificate=m.certificate, trust=fleet.trust,
                          rng=random.Random(1), now=86_400.0)
    assert fleet.trust.now_ms == 86_400_000
    machine.on_timer(11 * 86_400.0)
    assert fleet.trust.now_ms == 11 * DAY_MS


# ------------------------------------------------------------------ the root key

def test_the_root_key_is_never_a_node_key() -> None:
    fleet = Fleet()
    root = fleet.root
    # an unsigned certificate for the root's own key
    unsigned = Certificate(fleet.fleet_id, root.public_key, Role.NODE, "root", 1000,
                           10**15, bytes(64))
    with pytest.raises(UntrustedKey, match="root"):
        check_node_certificate(unsigned, fleet.trust)
    # ...and one the root signed for itself
    signed = Certificate.issue(root, fleet.fleet_id, root.public_key, Role.NODE, "root", 1000)
    with pytest.raises(UntrustedKey, match="root"):
        check_node_certificate(signed, fleet.trust)
    assert not fleet.trust.add_certificate(signed)
    assert not fleet.trust.is_admitted(root.public_key, Role.NODE)
    # the root keeps signing intents and manifests
    assert fleet.trust.is_admitted(root.public_key, Role.OPERATOR)
    # a session from the root key is refused
    good = fleet.node("good")
    ci = connection(Member(root, signed), fleet.trust, INIT, random.Random(1))
    cr = connection(good, fleet.trust, RESP, random.Random(2))
    with pytest.raises(UntrustedKey):
        cr.receive_data(ci.data_to_send())
    # and ledger entries the root key writes as a node are refused
    with pytest.raises(UntrustedKey):
        Entry.create(root, 1, good.certificate).verify(fleet.trust)


# ------------------------------------------------------------------ plaintext reject

def test_plaintext_reject_after_the_handshake_is_a_bare_close() -> None:
    fleet = Fleet()
    a, b = fleet.node("a"), fleet.node("b")
    ci = connection(a, fleet.trust, INIT, random.Random(1))
    cr = connection(b, fleet.trust, RESP, random.Random(2))
    cr.receive_data(ci.data_to_send())       # Hello_I
    ci.receive_data(cr.data_to_send())       # Hello_R + Auth_R: the dialler is established
    assert ci.established
    ci.data_to_send()                        # its Auth, lost on the path
    evil = "ATTACKER TEXT: rotate your keys at evil.example"
    forged = frame(encode(HandshakeReject(RejectCode.BAD_SIGNATURE, evil)))
    with pytest.raises(SessionClosed) as info:
        ci.receive_data(forged)
    assert evil not in str(info.value) and "ATTACKER" not in repr(info.value)
    assert not isinstance(info.value, HandshakeRejected)
    assert ci.state is ConnectionState.CLOSED
    assert ci.failure is None                # no reason was believed


def test_a_refused_auth_reaches_the_dialler_sealed() -> None:
    fleet = Fleet()
    a, b = fleet.node("a"), fleet.node("b")
    ci = connection(a, fleet.trust, INIT, random.Random(1))
    cr = connection(b, fleet.trust, RESP, random.Random(2))
    cr.receive_data(ci.data_to_send())
    ci.receive_data(cr.data_to_send())
    auth = bytearray(ci.data_to_send())
    auth[-1] ^= 1                            # the dialler's Auth fails its check
    with pytest.raises(SignatureError):
        cr.receive_data(bytes(auth))
    sealed = cr.data_to_send()
    assert b"bad_signature" not in sealed    # encrypted under the session key
    with pytest.raises(HandshakeRejected) as info:
        ci.receive_data(sealed)
    assert info.value.code is RejectCode.BAD_SIGNATURE
    assert ci.failure is not None and ci.failure[0] is RejectCode.BAD_SIGNATURE


# ------------------------------------------------------------------ signing contexts

def test_every_signed_structure_has_its_own_context_label() -> None:
    labels = [c.value for c in SigningContext]
    assert len(set(labels)) == len(labels) == 7
    for x in labels:
        assert x.endswith(b"\0") and b"\0" not in x[:-1] and x.isascii()
        assert not any(y != x and y.startswith(x) for y in labels)


def test_a_signature_over_one_structure_does_not_verify_as_another() -> None:
    fleet = Fleet()
    key = fleet.root
    fid = fleet.fleet_id
    cert = Certificate.issue(key, fid, bytes(range(32)), Role.OPERATOR, "op", 1000)
    rev = Revocation.issue(key, fid, bytes(range(32)), 2000)
    intent = Intent.create(key, IntentKind.DISTRIBUTE, "m", "1.0.0", HLC(1, 0, "op"))
    manifest, _ = make_manifest(publisher=key)
    entry = Entry.create(key, 1, cert)
    signed: dict[SigningContext, tuple[bytes, bytes]] = {
        SigningContext.CERTIFICATE: (cert.signed_bytes(), cert.signature),
        SigningContext.REVOCATION: (rev.signed_bytes(), rev.signature),
        SigningContext.INTENT: (intent.signed_bytes(), intent.signature),
        SigningContext.MANIFEST: (manifest.signed_bytes(), manifest.signature),
        SigningContext.MANIFEST_HEAD: (manifest.head().signed_bytes(),
                                       manifest.head().signature),
        SigningContext.ENTRY: (entry.signed_bytes(), entry.signature),
    }
    for ctx, (data, sig) in signed.items():
        assert data.startswith(ctx.value)
        verify_signature(key.public_key, data, sig)
        body = data[len(ctx.value):]
        # the bare canonical body (what was signed before labels) does not verify...
        with pytest.raises(SignatureError):
            verify_signature(key.public_key, body, sig)
        # ...nor does the same body read as any other structure
        for other in SigningContext:
            if other is not ctx:
                with pytest.raises(SignatureError):
                    verify_signature(key.public_key, other.value + body, sig)
    # a signature made over a body without its label is refused by each verifier
    bare = Certificate(fid, cert.subject_key, Role.OPERATOR, "op", 1000, cert.expires_at,
                       key.sign(cert.signed_bytes()[len(SigningContext.CERTIFICATE.value):]))
    with pytest.raises(SignatureError):
        bare.verify(key.public_key, fid)
    # an entry signature replayed as a revocation's (same key, same canonical bytes
    # under another label) is refused
    rev_body = rev.signed_bytes()[len(SigningContext.REVOCATION.value):]
    replayed = Revocation(fid, rev.subject_key, 2000,
                          key.sign(SigningContext.ENTRY.value + rev_body))
    with pytest.raises(SignatureError):
        replayed.verify(key.public_key, fid)


# ------------------------------------------------------------------ the agent side

def test_fleet_admit_valid_for_and_root_refusal(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import time

    from agent._admin.fleet import admit, fleet_init
    from agent._cli.main import main
    from agent._errors import ConfigError
    admin = tmp_path / "admin"
    keys = admin / "keys"
    root = fleet_init(keys)
    subject = SigningIdentity.generate().public_key.hex()
    before = int(time.time() * 1000)
    cert = admit(keys, "acme", "node", subject, "n1", 30)
    assert before <= cert.issued_at and cert.expires_at - cert.issued_at == 30 * DAY_MS
    assert admit(keys, "acme", "node", subject, "n1").expires_at - cert.issued_at >= \
        365 * DAY_MS
    with pytest.raises(ConfigError, match="never a node key"):
        admit(keys, "acme", "node", root.public_key.hex(), "root")
    assert main(["fleet", "admit", "--data-dir", str(admin), "--fleet", "acme", "--role",
                 "operator", "--key", subject, "--name", "op", "--valid-for", "7",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["expires_at"] - int(time.time() * 1000) <= 7 * DAY_MS


def test_daemon_warns_when_its_certificate_expires_soon(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agent._admin.fleet import provision
    from agent._config import load_config
    from agent._daemon.runtime import NodeRuntime
    root = SigningIdentity.generate()
    for name, days, warned in (("soon", 10, True), ("later", 400, False)):
        prov = provision(tmp_path / name, root=root, fleet_id="acme", name=name,
                         mdns_interface="", valid_for_days=days)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="shoal.daemon"):
            rt = NodeRuntime(load_config(str(prov.config_path)))
        try:
            hit = [r.getMessage() for r in caplog.records if "certificate expires" in
                   r.getMessage()]
            assert bool(hit) is warned, hit
        finally:
            rt._lock.release()
