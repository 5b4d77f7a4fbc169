"""Helpers of the reliability suite (tests/test_reliability_*.py).

* raw-socket probes of a live daemon (peer port, control socket) that never trust
  the daemon to answer: every read is bounded in time;
* an independent verifier of a node's installed model versions (re-hashes every
  chunk range of every file against the manifest; does not use the installer);
* tmpfs mounts (root only) and seeded fault plans.

Long runs carry the ``soak`` marker (``make soak``); the default selection runs
each test's fast, bounded subset.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from agent._storage.store import PACK_RECORD, PROGRESS_LOG, ChunkStore
from protocol import ShoalError, decode_value
from protocol._manifest import Manifest

MiB = 1024 * 1024


# ---------------------------------------------------------------------------- raw sockets


def tcp_exchange(port: int, data: bytes, *, wait: float = 2.0, half_close: bool = True
                 ) -> tuple[bytes, bool]:
    """Send ``data`` to 127.0.0.1:port; return (what came back, whether the daemon closed).

    ``closed`` is False when the daemon kept the connection open for ``wait`` seconds.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return _exchange(s, data, wait, half_close)


def unix_exchange(path: str, data: bytes, *, wait: float = 2.0, half_close: bool = True
                  ) -> tuple[bytes, bool]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        return _exchange(s, data, wait, half_close)


def _exchange(s: socket.socket, data: bytes, wait: float, half_close: bool
              ) -> tuple[bytes, bool]:
    got = bytearray()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
    s.settimeout(wait)
    try:
        while len(got) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                return bytes(got), True
            got += chunk
    except ConnectionResetError:
        return bytes(got), True
    except TimeoutError:
        return bytes(got), False
    return bytes(got), False


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def log_lines(data_dir: Path, needle: str) -> list[str]:
    path = data_dir / "daemon.log"
    if not path.exists():
        return []
    return [ln for ln in path.read_text(errors="replace").splitlines() if needle in ln]


def daemon_statistics(status_json: str) -> dict[str, dict[str, object]]:
    return dict(json.loads(status_json))


# ---------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class VersionCheck:
    model_id: str
    version: str
    files: int
    problems: tuple[str, ...]


def verify_installed(data_dir: Path) -> tuple[list[VersionCheck], list[str]]:
    """Re-hash every installed version of every model under ``data_dir``.

    Returns one :class:`VersionCheck` per ``versions/<v>`` directory, and a list
    of problems with ``current`` links (dangling, or naming an incomplete version).
    Run it on a stopped node (it opens the node's store read-mostly).
    """
    store = ChunkStore(data_dir / "store", fsync=False)
    checks: list[VersionCheck] = []
    link_problems: list[str] = []
    models = data_dir / "models"
    if not models.is_dir():
        return checks, link_problems
    for model_dir in sorted(p for p in models.iterdir() if p.is_dir()):
        complete: set[str] = set()
        versions = model_dir / "versions"
        for vdir in sorted(versions.iterdir()) if versions.is_dir() else []:
            chk = _verify_version(store, model_dir.name, vdir)
            checks.append(chk)
            if not chk.problems:
                complete.add(vdir.name)
        cur = model_dir / "current"
        if cur.is_symlink() or cur.exists():
            target = cur.resolve()
            if not target.is_dir():
                link_problems.append(f"{model_dir.name}: current -> {os.readlink(cur)} dangles")
            elif target.name not in complete:
                link_problems.append(f"{model_dir.name}: current names {target.name}, which "
                                     "does not verify")
    return checks, link_problems


def _verify_version(store: ChunkStore, model_id: str, vdir: Path) -> VersionCheck:
    problems: list[str] = []
    record = vdir / ".shoal-install"
    try:
        rec = json.loads(record.read_text())
        manifest: Manifest = store.get_manifest(rec["manifest_id"])
        variant = manifest.variant(rec["variant_id"])
    except Exception as exc:  # any failure to read the record is a finding
        return VersionCheck(model_id, vdir.name, 0, (f"install record: {exc!r}",))
    expected = {f.path for f in variant.files}
    present = {str(p.relative_to(vdir)) for p in vdir.rglob("*")
               if p.is_file() and p.name != ".shoal-install"}
    if present - expected:
        problems.append(f"unexpected files {sorted(present - expected)}")
    for entry in variant.files:
        path = vdir / entry.path
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"{entry.path}: {exc}")
            continue
        if len(data) != entry.size:
            problems.append(f"{entry.path}: {len(data)} bytes, manifest says {entry.size}")
            continue
        off = 0
        for ref in entry.chunks:
            if blake3.blake3(data[off:off + ref.size]).digest() != ref.hash:
                problems.append(f"{entry.path}: chunk at {off} does not match")
                break
            off += ref.size
    return VersionCheck(model_id, vdir.name, len(variant.files), tuple(problems))


def visible_partial_files(data_dir: Path) -> list[str]:
    """Bytes a reader could take for real data when they are not: chunk files (the
    earlier layout) whose content does not hash to their name, and chunks a staged
    pack's progress log names whose bytes in the pack's files do not match (a store
    re-verifies those when it opens, but none should be wrong). Temporaries
    (``.tmp-*``) are not counted."""
    bad: list[str] = []
    chunks = data_dir / "store" / "chunks"
    for p in chunks.glob("*/*") if chunks.is_dir() else []:
        if p.name.startswith(".tmp-") or not p.is_file():
            continue
        try:
            digest = blake3.blake3(p.read_bytes()).hexdigest()
        except OSError:
            continue
        if digest != p.name:
            bad.append(str(p))
    packs = data_dir / "store" / "packs"
    for pack in packs.iterdir() if packs.is_dir() else []:
        log = pack / PROGRESS_LOG
        if pack.name.startswith(".tmp-") or not log.is_file():
            continue
        try:
            rec = json.loads((pack / PACK_RECORD).read_text())
            manifest = decode_value(Manifest, (data_dir / "store" / "manifests"
                                               / rec["manifest_id"]).read_bytes())
            variant = manifest.variant(rec["variant_id"])
        except (OSError, ValueError, KeyError, ShoalError) as exc:
            bad.append(f"{pack}: unreadable pack record ({exc})")
            continue
        raw = log.read_bytes()
        logged = {raw[i:i + 32] for i in range(0, len(raw) - 31, 32)}
        for entry in variant.files:
            try:
                data = (pack / entry.path).read_bytes()
            except OSError:
                continue
            off = 0
            for ref in entry.chunks:
                if ref.hash in logged and \
                        blake3.blake3(data[off:off + ref.size]).digest() != ref.hash:
                    bad.append(f"{pack / entry.path} @ {off}")
                off += ref.size
    return bad


# ---------------------------------------------------------------------------- tmpfs


def can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (root only); always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)
