"""The node's and the publisher's Ed25519 keys on disk.

Each key is its 32-byte seed in ``<data>/keys/<role>.key``, mode 0600, in a
0700 directory, next to the root-signed certificate ``<role>.cert`` that admits
it. :func:`init_keys` creates what is missing and never overwrites a key (a node
that loses its key loses its identity in the fleet); :func:`load_key` refuses a
key file that other users can read, as ssh does.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent._errors import ConfigError
from agent._storage.paths import fsync_dir
from protocol import SigningIdentity

__all__ = ["KEY_NAMES", "ROLES", "KeyInfo", "init_keys", "load_key", "key_path"]

KEY_NAMES = ("node", "publisher")          # what `shoal keys init` creates by default
ROLES = ("node", "publisher", "operator")   # every key a node may hold
SEED_SIZE = 32


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    path: str
    key_id: str       # fingerprint of the public key (for a node key: its node id)
    public_key: str   # hex
    created: bool = False   # False: the key already existed and was kept


def key_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{name}.key"


def init_keys(keys_dir: Path, roles: Sequence[str] = KEY_NAMES) -> list[KeyInfo]:
    """Create the keys of ``roles`` that do not exist yet; existing keys are kept
    (a node's key is its identity in the fleet: it is never overwritten)."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ConfigError(f"unknown key role {unknown[0]!r}; roles: {', '.join(ROLES)}")
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create key directory {keys_dir}: "
                          f"{exc.strerror or exc}") from exc
    out = []
    for name in dict.fromkeys(roles):
        path = key_path(keys_dir, name)
        if path.exists():
            key = load_key(keys_dir, name)
            out.append(KeyInfo(name, str(path), key.key_id, key.public_key.hex()))
            continue
        identity = SigningIdentity.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigError(f"refusing to overwrite existing key {path}") from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, identity.seed)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise ConfigError(f"cannot write key {path}: {exc.strerror or exc}") from exc
        os.close(fd)
        out.append(KeyInfo(name, str(path), identity.key_id, identity.public_key.hex(), True))
    fsync_dir(keys_dir)
    return out


def load_key(keys_dir: Path, name: str) -> SigningIdentity:
    """Load a key; :class:`ConfigError` if missing, malformed or readable by others."""
    path = key_path(keys_dir, name)
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            seed = f.read(SEED_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(f"no {name} key at {path}; run `shoal keys init` first") from None
    except OSError as exc:
        raise ConfigError(f"cannot read key {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(f"key {path} is accessible by other users "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
    if len(seed) != SEED_SIZE:
        raise ConfigError(f"key {path} is not a 32-byte Ed25519 seed ({len(seed)} bytes)")
    return SigningIdentity(seed)
