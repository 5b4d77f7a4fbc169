"""Access: an operator key revoked by the fleet root can no longer issue intents, in
whatever order the revocation and the intents reach a node by gossip; forged
revocations are refused; keys and the saved ledger on disk are 0600.

(Unadmitted nodes that try to join and the control socket's uid check are covered
by tests/test_daemon.py against live daemons.)
"""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._admin.fleet import provision
from agent._storage.persist import LEDGER_FILE, save_ledger
from protocol._errors import InvalidValue
from protocol._identity import Revocation, Role, SigningIdentity
from protocol._intents import resolve
from protocol._ledger import Entry, Ledger

from ._fleet import FLEET, OPERATOR, ROGUE, ROOT, admitted_ledger, intent, node_key


def _resolve(ledger: Ledger, model: str = "m") -> str | None:
    it = resolve(ledger.intents(), model, node_key(1).key_id, ledger.records(), ledger.trust)
    return None if it is None else it.version


def test_revocation_by_gossip_stops_the_operators_intents() -> None:
    a, b, c = admitted_ledger(3), admitted_ledger(3), admitted_ledger(3)
    a.append(node_key(0), intent("1.0.0", wall=1))
    b.merge(a)
    assert _resolve(b) == "1.0.0"
    # the root's revocation enters the ledger as an entry (relayed by any node) ...
    a.append(node_key(0), Revocation.issue(ROOT, FLEET, OPERATOR.public_key, 10))
    b.merge(a)
    assert not b.trust.is_admitted(OPERATOR.public_key, Role.OPERATOR)
    assert _resolve(b) is None                        # the old intent stops counting
    # ... and a node that has not heard of it yet relays a new intent by the revoked key
    c.append(node_key(2), intent("2.0.0", wall=20))
    res = b.merge(c)
    assert res.rejected.get("intent") == 1
    assert b.statistics().rejected.get("intent", 0) >= 1
    assert _resolve(b) is None
    assert all(i.version != "2.0.0" for i in b.intents())


def test_forged_revocation_is_refused() -> None:
    a, b = admitted_ledger(2), admitted_ledger(2)
    a.append(node_key(0), intent("1.0.0", wall=1))
    # a revocation signed by a key that is not the fleet root
    forged = Revocation.issue(ROGUE, FLEET, OPERATOR.public_key, 10)
    with pytest.raises(InvalidValue):    # a node refuses to write it itself ...
        a.append(node_key(0), forged)
    e = Entry.create(node_key(0), 2, forged)      # ... so a liar builds the entry by hand
    res = b.merge_entries([*a.entries(), e])
    assert res.rejected.get("revocation") == 1
    assert b.trust.is_admitted(OPERATOR.public_key, Role.OPERATOR)
    assert _resolve(b) == "1.0.0"
    assert b.statistics().rejected["revocation"] == 1


def _any_order(seed: int, n_intents: int) -> None:
    """Intents of the revoked operator, before or after the revocation (by HLC), delivered
    to a node in any order and batching: once all arrived, none of them is followed,
    and an honest operator's intent is."""
    rng = random.Random(seed)
    honest = SigningIdentity(b"\x07" * 32)
    from protocol._identity import Certificate

    src = [admitted_ledger(4) for _ in range(4)]
    for s in src:
        s.trust.add_certificate(Certificate.issue(ROOT, FLEET, honest.public_key,
                                                  Role.OPERATOR, "ops2", 1))
    for k in range(n_intents):
        j = rng.randrange(4)     # each node writes only its own ledger (own counters)
        src[j].append(node_key(j), intent(f"1.{k}.0", wall=rng.randrange(1, 100)))
    j = rng.randrange(4)
    src[j].append(node_key(j), intent("0.9.0", wall=1, issuer=honest))
    j = rng.randrange(4)
    src[j].append(node_key(j), Revocation.issue(ROOT, FLEET, OPERATOR.public_key, 5))
    entries = [e for s in src for e in s.entries()]
    rng.shuffle(entries)
    target = admitted_ledger(4)
    from protocol._identity import Certificate as C

    target.trust.add_certificate(C.issue(ROOT, FLEET, honest.public_key, Role.OPERATOR,
                                         "ops2", 1))
    i = 0
    while i < len(entries):
        step = rng.randint(1, 3)
        target.merge_entries(entries[i:i + step])
        i += step
    assert not target.trust.is_admitted(OPERATOR.public_key, Role.OPERATOR)
    assert _resolve(target) == "0.9.0"


ORDERS = {"seed": st.integers(0, 2**32 - 1), "n_intents": st.integers(1, 5)}
test_revocation_wins_in_any_delivery_order = settings(
    max_examples=60, deadline=None, derandomize=True)(given(**ORDERS)(_any_order))
test_revocation_wins_in_any_delivery_order_soak = pytest.mark.soak(settings(
    max_examples=3000, deadline=None)(given(**ORDERS)(_any_order)))


def test_keys_and_saved_ledger_are_private(tmp_path: Path) -> None:
    root = SigningIdentity.generate()
    p = provision(tmp_path / "n", root=root, fleet_id=FLEET, name="n", operator=True,
                  mdns_interface="")
    keys = p.data_dir / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    key_files = sorted(keys.glob("*.key"))
    assert {f.name for f in key_files} >= {"node.key", "publisher.key", "operator.key"}
    for f in key_files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    save_ledger(p.data_dir, admitted_ledger(1))
    assert stat.S_IMODE((p.data_dir / LEDGER_FILE).stat().st_mode) == 0o600
