"""A TEST BUILD of the shoal daemon that lies about chunks (tests/test_reliability_live_liars.py).

``python -m tests._liar_daemon --config FILE --mode corrupt|phantom`` runs the real
daemon (``agent._cli daemon``: the real :class:`agent._daemon.runtime.NodeRuntime`, transport,
gossip and swarm) with one narrow patch:

* ``corrupt``: every piece it serves has one byte flipped. The patch replaces the
  ``make_piece`` the runtime's per-peer writer calls after reading the chunk from its
  (honest, verified) store — so the lie is exactly "right hash, wrong bytes".
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

import agent._daemon.runtime as runtime_mod
from agent._cli.main import main as cli_main
from protocol import _swarm
from protocol._swarm_messages import CannotHelp, HaveSet, Interested, Piece, Request, make_bitfield

MODES = ("corrupt", "phantom")


def _corrupt_piece(chunk_hash: bytes, data: bytes, priority: int) -> object:
    """The honest piece with its middle byte flipped (the hash still names the chunk)."""
    bad = bytearray(data)
    if bad:
        bad[len(bad) // 2] ^= 0xFF
    return Piece(chunk_hash, bytes(bad), int(priority))


def _phantom_interested(self: _swarm.SwarmEngine, peer: str, message: Interested) -> None:
    info = self._info(message.key)
    if info is None:                      # it cannot claim chunks of a key it cannot count
        self._send(peer, CannotHelp(message.key))
        return
    self._remote_interest.setdefault(peer, set()).add(message.key)
    self._send(peer, HaveSet(message.key, len(info.refs),
                             make_bitfield([True] * len(info.refs))))


def _phantom_request(self: _swarm.SwarmEngine, peer: str, message: Request,
                     now: float) -> None:
    return                                # advertised, never served, never refused


def install(mode: str) -> None:
    """Patch this process's daemon code for ``mode`` (see the module docstring)."""
    if mode == "corrupt":
        runtime_mod.make_piece = _corrupt_piece  # type: ignore[attr-defined]
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
