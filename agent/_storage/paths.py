"""Where the agent keeps things on disk, and the confinement check for paths.

Layout of a data directory::

    <data>/keys/                 node.key, publisher.key (0600; dir 0700)
    <data>/store/manifests/<id>  codec-encoded signed manifests
    <data>/store/pins/<id>       pinned manifests (their versions survive gc)
    <data>/store/packs/<id>.<variant>/  a variant's files, published or being fetched
    <data>/store/quarantine/     copies of bytes that failed verification on read
    <data>/models/<model_id>/versions/<version>/   installed files
    <data>/models/<model_id>/current -> versions/<version>
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protocol import HostilePath, validate_model_id, validate_relative_path, validate_version

__all__ = ["DataDir", "default_data_dir", "confine", "fsync_dir"]

ENV_DATA_DIR = "SHOAL_DATA_DIR"


def default_data_dir() -> Path:
    """``$SHOAL_DATA_DIR``, else ``$XDG_DATA_HOME/shoal``, else ``~/.local/share/shoal``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "shoal"


def confine(root: Path, relative: str) -> Path:
    """``root / relative``, refusing any path that is unsafe or resolves outside ``root``.

    The relative path must be a plain normalised POSIX path (no ``..``, no
    absolute path), and after resolving symlinks of its existing parts it must
    still lie under ``root`` — a symlink planted in the tree cannot redirect a write.
    """
    validate_relative_path(relative)
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, *relative.split("/"))
    resolved = os.path.realpath(candidate)
    if resolved != real_root and not resolved.startswith(real_root + os.sep):
        raise HostilePath(f"path {relative!r} resolves outside {root} (to {resolved})")
    return Path(candidate)


def fsync_dir(path: Path | str) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class DataDir:
    """The agent's data directory and the fixed paths inside it."""

    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, model_id: str) -> Path:
        return self.models / validate_model_id(model_id)

    def version_dir(self, model_id: str, version: str) -> Path:
        return self.model_dir(model_id) / "versions" / validate_version(version)
