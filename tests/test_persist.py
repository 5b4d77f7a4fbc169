"""The daemon's saved ledger (agent/_storage/persist.py): what is saved is what loads, in
either file format, and a torn or foreign file loses nothing but itself."""

from __future__ import annotations

from pathlib import Path

from agent._storage.persist import (
    LEDGER_FILE,
    LedgerFile,
    LedgerSnapshot,
    _decode_ledger,
    load_ledger,
    save_ledger,
)
from protocol._codec import decode_value, encode_value
from protocol._ledger import Ledger

from ._fleet import admitted_ledger, intent, manifest, node_key, record


def _filled() -> Ledger:
    ledger = admitted_ledger(2)
    ledger.append(node_key(0), record("n0"))
    ledger.append(node_key(1), record("n1"))
    m, _ = manifest(size=300_000)
    ledger.append(node_key(0), m)          # a node carries the publisher's manifest
    ledger.append(node_key(1), intent())   # ... and the operator's intent
    ledger.append(node_key(0), record("n0-again"))
    return ledger


def _same(a: Ledger, b: Ledger) -> None:
    assert a.state_key() == b.state_key()
    assert a.version_vector == b.version_vector
    assert [m.manifest_id for m in a.manifests()] == [m.manifest_id for m in b.manifests()]


def test_saved_ledger_loads_back_whole(tmp_path: Path) -> None:
    ledger = _filled()
    written = save_ledger(tmp_path, ledger)
    raw = (tmp_path / LEDGER_FILE).read_bytes()
    assert written == len(raw)
    # the file holds each entry pre-encoded (LedgerFile), decodable one by one
    f = decode_value(LedgerFile, raw)
    assert len(f.entries) == len(list(ledger.entries()))
    loaded, note = load_ledger(tmp_path, admitted_ledger(2).trust)
    assert note.startswith(f"loaded {len(f.entries)} ledger entries")
    _same(ledger, loaded)


def test_a_second_save_sees_entries_added_since(tmp_path: Path) -> None:
    ledger = _filled()
    save_ledger(tmp_path, ledger)
    ledger.append(node_key(1), record("n1-later"))  # the memo must not hide new entries
    save_ledger(tmp_path, ledger)
    loaded, _ = load_ledger(tmp_path, admitted_ledger(2).trust)
    _same(ledger, loaded)
    rec = loaded.record(node_key(1).key_id)
    assert rec is not None and rec.name == "n1-later"


def test_first_format_is_still_read(tmp_path: Path) -> None:
    ledger = _filled()
    old = LedgerSnapshot(ledger.trust.fleet_id, tuple(ledger.entries()),
                         dict(ledger.version_vector))
    (tmp_path / LEDGER_FILE).write_bytes(encode_value(old))
    loaded, _ = load_ledger(tmp_path, admitted_ledger(2).trust)
    _same(ledger, loaded)
    assert _decode_ledger(encode_value(old))[0].entries == old.entries


def test_torn_or_foreign_file_is_moved_aside(tmp_path: Path) -> None:
    ledger = _filled()
    save_ledger(tmp_path, ledger)
    raw = (tmp_path / LEDGER_FILE).read_bytes()
    (tmp_path / LEDGER_FILE).write_bytes(raw[: len(raw) // 2])
    loaded, note = load_ledger(tmp_path, admitted_ledger(2).trust)
    assert "unreadable" in note and not list(loaded.entries())
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{LEDGER_FILE}.bad-")]
    assert len(aside) == 1 and aside[0].read_bytes() == raw[: len(raw) // 2]

    other = admitted_ledger(2)
    save_ledger(tmp_path, _filled())
    foreign = decode_value(LedgerFile, (tmp_path / LEDGER_FILE).read_bytes())
    (tmp_path / LEDGER_FILE).write_bytes(encode_value(
        LedgerFile("another-fleet", foreign.entries, foreign.version_vector)))
    loaded, note = load_ledger(tmp_path, other.trust)
    assert "another-fleet" in note and not list(loaded.entries())
