"""What the daemon keeps on disk besides chunks and installed models.

* ``<data>/ledger.bin``: the node's ledger (every entry plus the version
  vector), codec-encoded, written atomically (temporary, fsync, rename, fsync
  of the directory). A torn or foreign file is moved aside and the node starts
  with an empty ledger (gossip refills it). Each entry is stored as its own
  encoded bytes (:class:`LedgerFile`), so a save re-encodes only the entries
  that are new since the last one: an entry that carries the manifest of a
  4 GiB model is encoded once, not on every progress save during its transfer.
  A file in the first format (:class:`LedgerSnapshot`) is still read.
* ``<data>/keys/<role>.cert``: certificates issued by the fleet root for the
  node, publisher and operator keys of this data directory (``shoal fleet
  admit --out``). ``<data>/keys/operator.key`` is optional: a daemon that holds
  one can issue intents.
* ``<data>/keys/root.key``: the fleet root key, only on the machine where
  ``shoal fleet init`` ran.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from agent._errors import ConfigError, StoreError
from agent._storage.paths import fsync_dir
from protocol import (
    Certificate,
    Entry,
    FleetTrust,
    Intent,
    Ledger,
    MalformedMessage,
    Manifest,
    NodeRecord,
    Revocation,
    SigningIdentity,
    decode_value,
    encode_value,
    encoded_entry,
    struct,
)

__all__ = ["LedgerFile", "LedgerSnapshot", "save_ledger", "load_ledger", "atomic_write",
           "cert_path", "load_cert", "write_cert", "write_seed"]

LEDGER_FILE = "ledger.bin"
_MAX_LEDGER = 512 * 1024 * 1024


@struct
@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    fleet_id: str
    entries: tuple[Entry, ...]
    version_vector: dict[str, int]


@struct
@dataclass(frozen=True, slots=True)
class _EarlierEntry:
    """A ledger entry as saved before the ledger carried manifest heads: recognised
    only to leave its manifest out (``_decode_ledger``)."""

    origin_key: bytes
    counter: int
    record: NodeRecord | None
    intent: Intent | None
    manifest: Manifest | None
    certificate: Certificate | None
    revocation: Revocation | None
    signature: bytes


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, whole."""
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


@struct
@dataclass(frozen=True, slots=True)
class LedgerFile:
    """``ledger.bin``: like :class:`LedgerSnapshot`, with every entry pre-encoded."""

    fleet_id: str
    entries: tuple[bytes, ...]
    version_vector: dict[str, int]


def save_ledger(data_dir: Path, ledger: Ledger) -> int:
    """Persist ``ledger``; the number of bytes written."""
    snap = LedgerFile(ledger.trust.fleet_id, tuple(map(encoded_entry, ledger.entries())),
                      dict(ledger.version_vector))
    raw = encode_value(snap)
    atomic_write(data_dir / LEDGER_FILE, raw)
    return len(raw)


def _decode_ledger(raw: bytes) -> tuple[LedgerSnapshot, int]:
    """Either format of ``ledger.bin``, and how many of its entries were left out:
    manifest entries written before the ledger carried heads (``_manifest_head``),
    whose manifests stay in the store and whose publisher announces them again.
    :class:`MalformedMessage` if it is neither format."""
    try:
        f = decode_value(LedgerFile, raw, max_size=_MAX_LEDGER)
    except MalformedMessage:
        return decode_value(LedgerSnapshot, raw, max_size=_MAX_LEDGER), 0  # the first format
    entries: list[Entry] = []
    for e in f.entries:
        try:
            entries.append(decode_value(Entry, e, max_size=_MAX_LEDGER))
        except MalformedMessage:
            if decode_value(_EarlierEntry, e, max_size=_MAX_LEDGER).manifest is None:
                raise
    return (LedgerSnapshot(f.fleet_id, tuple(entries), f.version_vector),
            len(f.entries) - len(entries))


def load_ledger(data_dir: Path, trust: FleetTrust) -> tuple[Ledger, str]:
    """The persisted ledger (or an empty one) and a line saying what happened."""
    path = data_dir / LEDGER_FILE
    ledger = Ledger(trust)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ledger, "no saved ledger; starting empty"
    try:
        snap, earlier = _decode_ledger(raw)
        if snap.fleet_id != trust.fleet_id:
            raise MalformedMessage(f"saved ledger belongs to fleet {snap.fleet_id!r}")
    except MalformedMessage as exc:
        aside = path.with_name(f"{LEDGER_FILE}.bad-{secrets.token_hex(4)}")
        os.replace(path, aside)
        return ledger, f"saved ledger unreadable ({exc}); moved to {aside.name}, starting empty"
    ranges = {o: (0, c) for o, c in snap.version_vector.items()}
    result = ledger.merge_entries(snap.entries, ranges)
    note = f"loaded {len(result.added)} ledger entries"
    if result.rejected:
        note += f" ({sum(result.rejected.values())} no longer verify, dropped)"
    if earlier:
        note += (f"; {earlier} manifest entries of the earlier format left out (the "
                 f"manifests stay in the store; their publisher announces them again)")
    return ledger, note


def cert_path(keys_dir: Path, role: str) -> Path:
    return keys_dir / f"{role}.cert"


def write_cert(path: Path, cert: Certificate) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, encode_value(cert), 0o644)


def load_cert(keys_dir: Path, role: str, *, required: bool = True) -> Certificate | None:
    path = cert_path(keys_dir, role)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not required:
            return None
        raise ConfigError(f"no {role} certificate at {path}; have the fleet root sign this "
                          f"key: `shoal fleet admit --role {role} --key <public key hex> "
                          f"--name <name> --out {path}`") from None
    try:
        return decode_value(Certificate, raw)
    except MalformedMessage as exc:
        raise ConfigError(f"{path} is not a shoal certificate: {exc}") from None


def write_seed(path: Path, identity: SigningIdentity) -> None:
    """Write a private key seed (0600, in a 0700 directory); never overwrites."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"refusing to overwrite existing key {path}") from None
    try:
        os.write(fd, identity.seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
