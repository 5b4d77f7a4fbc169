"""The messages one node sends another over a peer session, as one type.

:data:`WireMessage` is the union of every codec-registered message a peer may send
on the peer port: the handshake (consumed by the transport before the session
opens), anti-entropy gossip, the swarm, and the overlay's decline.
:meth:`NodeMachine.receive` takes a ``WireMessage`` and
:class:`~._events.SendMessage` carries one; a driver narrows what its decoder
returned with :func:`is_wire_message`. Control-socket messages are registered with
the same codec but never travel between peers, so they are not part of it. (A
model's migrator speaks gRPC, not this codec: agent/_grpc.)
"""

from __future__ import annotations

from typing import TypeGuard

from ._gossip import (
    GossipBuckets,
    GossipDelta,
    GossipDigest,
    GossipPush,
    GossipSummary,
    GossipWant,
)
from ._handshake import Auth, HandshakeReject, Hello
from ._manifest_fetch import BodyAnswer, BodyCancel, BodyWant
from ._overlay import OverlayFull
from ._swarm_messages import (
    Cancel,
    CannotHelp,
    Have,
    Haves,
    HaveSet,
    Interested,
    NotInterested,
    Piece,
    Pieces,
    Redirect,
    Reject,
    Request,
    Requests,
)

__all__ = ["HandshakeMessage", "GossipMessage", "SwarmMessage", "OverlayMessage", "WireMessage",
           "WIRE_MESSAGES", "is_wire_message"]

HandshakeMessage = Hello | Auth | HandshakeReject
GossipMessage = (GossipSummary | GossipDigest | GossipDelta | GossipBuckets | GossipPush
                 | GossipWant | BodyWant | BodyAnswer | BodyCancel)
SwarmMessage = (Interested | NotInterested | HaveSet | CannotHelp | Have | Request | Piece
                | Cancel | Reject | Redirect | Requests | Pieces | Haves)
OverlayMessage = OverlayFull
WireMessage = HandshakeMessage | GossipMessage | SwarmMessage | OverlayMessage

WIRE_MESSAGES: tuple[type[WireMessage], ...] = (
    Hello, Auth, HandshakeReject,
    GossipSummary, GossipDigest, GossipDelta, GossipBuckets, GossipPush, GossipWant,
    BodyWant, BodyAnswer, BodyCancel,
    Interested, NotInterested, HaveSet, CannotHelp, Have, Request, Piece, Cancel, Reject,
    Redirect, Requests, Pieces, Haves, OverlayFull)


def is_wire_message(message: object) -> TypeGuard[WireMessage]:
    """Whether ``message`` (what a decoder returned) is one peers exchange."""
    return isinstance(message, WIRE_MESSAGES)
