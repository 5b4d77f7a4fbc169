"""One daemon per data directory.

A daemon holds an exclusive ``flock`` on ``<data_dir>/daemon.lock`` for its whole
life and writes its pid and control socket into the file. The kernel drops the
lock when the process dies, however it dies, so a stale file never blocks a new
daemon. Other commands read the file (without taking the lock) to learn whether
a daemon owns the directory and where its control socket is.

An offline ``shoal publish`` (no daemon running) holds the same lock while it writes
the store, with the role ``publish``. A daemon that starts meanwhile waits for it, so
it reads the store after the new version is in it and announces it; a publish that
finds a daemon holding the lock goes through that daemon instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent._errors import AgentError

__all__ = ["LOCK_FILE", "DAEMON", "PUBLISH", "DataDirBusy", "DataDirLock", "Holder",
           "holder"]

LOCK_FILE = "daemon.lock"
_TRIES = 25
DAEMON = "daemon"           # the holder's role: a daemon...
PUBLISH = "publish"         # ...or an offline publish, which a starting daemon waits for
_LOG_EVERY = 10.0           # seconds between "still waiting" lines
log = logging.getLogger("shoal.daemon")


class DataDirBusy(AgentError):
    """Another daemon holds this data directory."""


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    control_socket: str
    role: str = DAEMON


def _read(fd: int) -> Holder:
    raw = os.pread(fd, 4096, 0)
    try:
        obj = json.loads(raw.decode())
        return Holder(int(obj["pid"]), str(obj.get("control_socket", "")),
                      str(obj.get("role", DAEMON)))
    except (ValueError, KeyError, TypeError):
        return Holder(0, "")


def holder(root: Path) -> Holder | None:
    """The daemon holding ``root``, or None when no process holds its lock."""
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DataDirLock:
    """The exclusive lock of a data directory, held until :meth:`release`.

    Raises :class:`DataDirBusy` when a daemon holds it; waits while an offline publish
    (role ``publish``) does, however long that takes."""

    def __init__(self, root: Path, control_socket: str, *, role: str = DAEMON) -> None:
        self._fd: int | None = None
        self.path = root / LOCK_FILE
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        busy, waited_since, said = 0, time.monotonic(), 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held = _read(fd)
                if held.role == PUBLISH:          # a publish finishing: wait for it
                    waited = time.monotonic() - waited_since
                    if waited >= said:
                        log.info("waiting for `shoal publish` (pid %d) to finish with %s",
                                 held.pid, root)
                        said = waited + _LOG_EVERY
                    time.sleep(0.1)
                    continue
                busy += 1                  # (holder() peeks with a shared lock for a moment)
                if busy < _TRIES:
                    time.sleep(0.02)
                    continue
                os.close(fd)
                who = f"pid {held.pid}" if held.pid else "another process"
                raise DataDirBusy(f"data directory {root} is in use by a shoal daemon "
                                  f"({who}); one daemon per data directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "control_socket": control_socket,
                                  "role": role}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()
