"""A TEST BUILD of the shoal daemon that lies about chunks (tests/test_reliability_live_liars.py).

``python -m tests._liar_daemon --config FILE --mode corrupt|phantom`` runs the real
daemon (``agent._cli daemon``: the real :class:`agent._daemon.runtime.NodeRuntime`, transport,
gossip and swarm) with one narrow patch:

* ``corrupt``: every piece it serves has one byte flipped. The patch wraps the
  per-peer writer's ``_run_record`` (agent/_daemon/writer.py), which builds the record
  of a run of pieces from its (honest, verified) store: every chunk in it gets its
  middle byte flipped — so the lie is exactly "right hash, wrong bytes", in a
  ``Piece`` or in a ``Pieces`` run.
* ``phantom``: it answers every :class:`Interested` for a key whose manifest it knows
  with a :class:`HaveSet` claiming *every* chunk, and never answers a
  :class:`Request` (no piece, no reject) — the swarm engine's two handlers are
  replaced; everything else (gossip, its own downloads) is honest.

Not for production: it exists only so the reliability suite can run a lying peer as a
real process next to honest daemons.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent._cli.main import main as cli_main
from agent._daemon.writer import SessionWriter
from protocol import _swarm
from protocol._codec import decode
from protocol._events import ServeChunk
from protocol._swarm_messages import (
    CannotHelp,
    HaveSet,
    Interested,
    Piece,
    Pieces,
    Request,
    make_bitfield,
)

MODES = ("corrupt", "phantom")


def _flip(data: bytes | memoryview) -> bytes:
    """The bytes with the middle one flipped."""
    bad = bytearray(data)
    if bad:
        bad[len(bad) // 2] ^= 0xFF
    return bytes(bad)


_honest_run_record = SessionWriter._run_record


async def _corrupt_run_record(self: SessionWriter, run: list[ServeChunk]
                              ) -> tuple[object, list[bytes]] | None:
    """The honest record of a run, every chunk in it with its middle byte flipped (the
    hashes still name the chunks)."""
    out = await _honest_run_record(self, run)
    if out is None:
        return None
    record, hashes = out
    msg = decode(bytes(record)) if isinstance(record, bytearray) else record
    if isinstance(msg, Piece):
        return Piece(msg.chunk_hash, _flip(msg.data), msg.priority), hashes
    assert isinstance(msg, Pieces)
    chunks = [_flip(data) for _, data in msg.runs()]
    return Pieces(msg.priority, msg.chunk_hashes, msg.sizes, b"".join(chunks)), hashes


def _phantom_interested(self: _swarm.SwarmEngine, peer: str, message: Interested) -> None:
    info = self._info(message.key)
    if info is None:                      # it cannot claim chunks of a key it cannot count
        self._send(peer, CannotHelp(message.key))
        return
    self._remote_interest.setdefault(peer, set()).add(message.key)
    self._send(peer, HaveSet(message.key, len(info.refs),
                             make_bitfield([True] * len(info.refs))))


def _phantom_request(self: _swarm.SwarmEngine, peer: str, message: Request,
                     now: float, pump: bool = True) -> None:
    return                                # advertised, never served, never refused


def install(mode: str) -> None:
    """Patch this process's daemon code for ``mode`` (see the module docstring)."""
    if mode == "corrupt":
        SessionWriter._run_record = _corrupt_run_record  # type: ignore[method-assign]
    elif mode == "phantom":
        _swarm.SwarmEngine._on_interested = _phantom_interested  # type: ignore[method-assign]
        _swarm.SwarmEngine._on_request = _phantom_request  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown liar mode {mode!r}; expected one of {', '.join(MODES)}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests._liar_daemon")
    ap.add_argument("--config", required=True)
    ap.add_argument("--mode", required=True, choices=MODES)
    args = ap.parse_args(argv)
    install(args.mode)
    return cli_main(["daemon", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
