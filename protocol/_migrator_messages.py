"""Messages between the agent and a model's migrator (type ids 150-159).

Theory of operation
-------------------
A migrator is a program shipped inside a model version. The agent starts it as
a child process (working directory: the version directory) and the two speak
the codec's length-prefixed frames over the child's stdin (agent -> migrator)
and stdout (migrator -> agent). The first frame the agent sends names the mode:

* **export** — the agent sends :class:`ExportRequest`; the migrator answers one
  :class:`ExportResponse` listing the paths (relative to its version directory,
  files or directories) that hold the model's mutable state, and exits 0.
* **ingest** — the agent sends :class:`IngestRequest`; the migrator sends any
  number of :class:`IngestFileCopy` requests (``source_path`` relative to the
  *old* version's directory, ``dest_path`` relative to the *new* one), each
  answered by one :class:`IngestFileResult` (``error`` set when the copy
  failed), and finishes with :class:`MigratorDone` and exit status 0.

In either mode a migrator may give up with :class:`MigratorFailed` (its reason
is shown to the operator as the blocker detail). Anything else — another
message type, an undecodable frame, an oversize frame, EOF before the final
message, a non-zero exit, running past the timeout — fails the migration.

Paths are plain relative POSIX paths (:func:`check_migrator_path`); the agent
additionally confines them to their roots on disk (symlinks included).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codec import message
from ._errors import HostilePath
from ._manifest import validate_relative_path

__all__ = [
    "MAX_MIGRATOR_FRAME",
    "ExportRequest",
    "ExportResponse",
    "IngestRequest",
    "IngestFileCopy",
    "IngestFileResult",
    "MigratorDone",
    "MigratorFailed",
    "check_migrator_path",
]

#: Largest frame either side accepts (a path list of a few thousand entries fits).
MAX_MIGRATOR_FRAME = 1024 * 1024


@message(150)
@dataclass(frozen=True, slots=True)
class ExportRequest:
    """Agent -> migrator, first frame of an export: list your state paths."""


@message(151)
@dataclass(frozen=True, slots=True)
class ExportResponse:
    """Migrator -> agent: paths (files or directories) of the model's mutable state."""

    paths: tuple[str, ...]


@message(152)
@dataclass(frozen=True, slots=True)
class IngestRequest:
    """Agent -> migrator, first frame of an ingest: the node moves ``from_version`` ->
    ``to_version`` of ``model_id``; ask for the files to carry over."""

    model_id: str
    from_version: str
    to_version: str


@message(153)
@dataclass(frozen=True, slots=True)
class IngestFileCopy:
    """Migrator -> agent: copy ``source_path`` (in the old version, a file or a
    directory, recursively) to ``dest_path`` (in the new version)."""

    source_path: str
    dest_path: str


@message(154)
@dataclass(frozen=True, slots=True)
class IngestFileResult:
    """Agent -> migrator: the outcome of one :class:`IngestFileCopy`; ``error`` is None
    on success."""

    source_path: str
    dest_path: str
    error: str | None


@message(155)
@dataclass(frozen=True, slots=True)
class MigratorDone:
    """Migrator -> agent: ingest finished successfully (``detail`` is logged)."""

    detail: str = ""


@message(156)
@dataclass(frozen=True, slots=True)
class MigratorFailed:
    """Migrator -> agent: the migration cannot be done; ``reason`` is for the operator."""

    reason: str


def check_migrator_path(path: str, what: str) -> str:
    """``path`` if it is a plain, normalised, relative path; else :class:`HostilePath`
    naming ``what`` (e.g. ``"ingest source"``) so the operator sees which side lied."""
    try:
        return validate_relative_path(path)
    except HostilePath as exc:
        raise HostilePath(f"migrator {what} {path!r} refused: {exc}") from None
