"""Simulator-only speed-ups that do not change any result.

Ed25519 verification is a pure function of ``(key, data, signature)``. In a real
fleet every node checks every signature once, in parallel on its own CPU; in
the simulator the N nodes share one core, so the same signature would be
checked N times in a row. A :class:`SignatureMemo` is a signature check
(``protocol``'s ``Verifier``) that checks each distinct triple once and replays
the answer (success, or the same :class:`SignatureError`). A :class:`sim.Fleet`
owns one and gives it to the :class:`FleetTrust` its nodes share; nothing is
patched and nothing outlives the fleet. Bad signatures are still rejected
everywhere.
"""

from __future__ import annotations

from protocol import SignatureError, Verifier, verify_signature

__all__ = ["SignatureMemo"]


class SignatureMemo:
    """A memoised signature check: ``check`` runs once per distinct triple."""

    __slots__ = ("_check", "_answers", "_limit")

    def __init__(self, check: Verifier = verify_signature, limit: int = 1_000_000) -> None:
        self._check = check
        self._answers: dict[tuple[bytes, bytes, bytes], str | None] = {}
        self._limit = limit

    def __call__(self, public_key: bytes, data: bytes, signature: bytes) -> None:
        key = (public_key, data, signature)
        try:
            error = self._answers[key]
        except KeyError:
            try:
                self._check(public_key, data, signature)
                error = None
            except SignatureError as exc:
                error = str(exc)
            if len(self._answers) >= self._limit:
                self._answers.clear()
            self._answers[key] = error
        if error is not None:
            raise SignatureError(error)

    def __len__(self) -> int:
        """Distinct triples remembered."""
        return len(self._answers)
