"""Simulator-only speed-ups that do not change any result.

Ed25519 verification is a pure function of ``(key, data, signature)``. In a real
fleet every node checks every signature once, in parallel on its own CPU; in
the simulator the N nodes share one core, so the same signature would be
checked N times in a row. :func:`memoize_signatures` replaces
``verify_signature`` in every loaded ``protocol`` module with a version that
checks each distinct triple once and replays the answer (success, or the same
:class:`SignatureError`). Bad signatures are still rejected everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from protocol import _identity
from protocol._errors import SignatureError

__all__ = ["memoize_signatures", "restore_signatures"]

_ORIGINAL: Callable[[bytes, bytes, bytes], None] = _identity.verify_signature
_CACHE: dict[tuple[bytes, bytes, bytes], str | None] = {}
_LIMIT = 1_000_000


def _cached_verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    key = (public_key, data, signature)
    try:
        error = _CACHE[key]
    except KeyError:
        try:
            _ORIGINAL(public_key, data, signature)
            error = None
        except SignatureError as exc:
            error = str(exc)
        if len(_CACHE) >= _LIMIT:
            _CACHE.clear()
        _CACHE[key] = error
    if error is not None:
        raise SignatureError(error)


def _patch(new: Callable[[bytes, bytes, bytes], None]) -> None:
    for name, module in list(sys.modules.items()):
        if (name == "protocol" or name.startswith("protocol.")) and getattr(
                module, "verify_signature", None) in (_ORIGINAL, _cached_verify):
            module.verify_signature = new  # type: ignore[attr-defined]


def memoize_signatures() -> None:
    """Install the memoised check in every loaded protocol module (idempotent)."""
    import protocol._node  # noqa: F401  (load every module that verifies)
    _patch(_cached_verify)


def restore_signatures() -> None:
    _patch(_ORIGINAL)
    _CACHE.clear()
