"""Tell each node's machine when a piece it served has left its uplink.

A real driver learns this when its ``send`` returns; the simulated one learns it from
:attr:`sim._network.Network.on_sent`. A machine that gets these reports keeps its
upload queue in the swarm engine (``SwarmConfig.upload_window``) instead of in the
link, where the engine can order it (see docs/SWARM.md).
"""

from __future__ import annotations

from typing import Any

from ._fleet import PIECE_TYPE, Fleet

__all__ = ["report_uploads"]


def report_uploads(fleet: Fleet) -> None:
    """Wire ``fleet.net.on_sent`` to ``NodeMachine.upload_done`` (idempotent)."""

    def sent(src: str, dst: str, message: Any) -> None:
        if type(message) is not PIECE_TYPE:
            return
        node = fleet.by_id.get(src)
        if node is None or not node.alive or node.machine is None:
            return
        node.machine.upload_done(dst, message.chunk_hash, fleet.loop.now)
        fleet._pump(node)

    fleet.net.on_sent = sent
