"""Signature checks go through the verifier the driver gives its FleetTrust.

The daemon builds its trust with the default, the real Ed25519 check; the
simulator gives its fleet one :class:`sim._speedups.SignatureMemo`. Nothing is
patched and nothing is shared between two trusts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from protocol._errors import SignatureError
from protocol._identity import Certificate, FleetTrust, Role, Verifier, verify_signature
from protocol._ledger import Entry, Ledger
from sim._speedups import SignatureMemo

from ._fleet import FLEET, OPERATOR, PUBLISHER, ROOT, intent, manifest, node_cert, node_key, record

ROOT_DIR = Path(__file__).resolve().parent.parent


class Counting:
    """The real check, counting its calls (or refusing every signature)."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls = 0
        self.refuse = refuse

    def __call__(self, public_key: bytes, data: bytes, signature: bytes) -> None:
        self.calls += 1
        if self.refuse:
            raise SignatureError("refused")
        verify_signature(public_key, data, signature)


def _trust(verifier: Verifier = verify_signature) -> FleetTrust:
    trust = FleetTrust(FLEET, ROOT.public_key, verifier=verifier)
    for ident, role in ((OPERATOR, Role.OPERATOR), (PUBLISHER, Role.PUBLISHER)):
        trust.add_certificate(Certificate.issue(ROOT, FLEET, ident.public_key, role, "k", 1))
    trust.add_certificate(node_cert(node_key(0)))
    return trust


def test_the_default_is_the_real_ed25519_check() -> None:
    assert FleetTrust(FLEET, ROOT.public_key).verifier is verify_signature


def test_every_kind_of_signature_goes_through_the_trusts_verifier() -> None:
    check = Counting()
    trust = _trust(check)
    assert check.calls == 3                      # the three certificates
    intent().verify(trust)
    assert check.calls == 4
    manifest()[0].verify(trust)
    assert check.calls == 6                      # the manifest's signature and its head's
    entry = Entry.create(node_key(0), 1, record())
    entry.verify(trust)
    assert check.calls == 7


def test_an_entry_is_checked_once_per_verifier() -> None:
    entry = Entry.create(node_key(0), 1, record())
    first, second = Counting(), Counting()
    a, b = _trust(first), _trust(second)
    before = first.calls, second.calls
    entry.verify(a)
    entry.verify(a)                              # the same verifier accepted it already
    assert first.calls == before[0] + 1
    entry.verify(b)                              # another verifier checks for itself
    assert second.calls == before[1] + 1


def test_a_verifier_that_refuses_is_not_overruled_by_one_that_accepted() -> None:
    entry = Entry.create(node_key(0), 1, record())
    assert Ledger(_trust()).merge_entries([entry]).added == (entry,)
    refusing = _trust()
    refusing.verifier = Counting(refuse=True)
    result = Ledger(refusing).merge_entries([entry])
    assert not result.added and result.forged == 1


def test_signature_memo_checks_each_triple_once_and_replays_refusals() -> None:
    check = Counting()
    memo = SignatureMemo(check)
    ident = node_key(5)
    sig = ident.sign(b"data")
    for _ in range(3):
        memo(ident.public_key, b"data", sig)
        with pytest.raises(SignatureError):
            memo(ident.public_key, b"forged", sig)
    assert check.calls == 2 and len(memo) == 2


def test_two_memos_share_nothing() -> None:
    ident = node_key(6)
    sig = ident.sign(b"x")
    first, second = Counting(), Counting()
    SignatureMemo(first)(ident.public_key, b"x", sig)
    SignatureMemo(second)(ident.public_key, b"x", sig)
    assert first.calls == second.calls == 1


def test_the_daemon_verifies_for_real() -> None:
    """agent/ builds every FleetTrust with the default check and never imports the
    simulator's memo."""
    sources = sorted((ROOT_DIR / "agent").rglob("*.py"))
    assert sources
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(
                    node.func, "attr", "")) == "FleetTrust":
                assert not any(k.arg == "verifier" for k in node.keywords), (
                    f"{path.name}:{node.lineno} gives the daemon's trust another verifier")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sim"):
                raise AssertionError(f"{path.name}:{node.lineno} imports the simulator")
            if isinstance(node, ast.Attribute) and node.attr == "verifier" and isinstance(
                    getattr(node, "ctx", None), ast.Store):
                raise AssertionError(f"{path.name}:{node.lineno} replaces a verifier")
