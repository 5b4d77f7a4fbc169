"""A burst of inbound sessions cannot hold more than the overlay's limit plus
``DECLINE_ROOM`` sessions open on a daemon.

The overlay declines inbound sessions beyond ``degree + slack`` politely: the
machine queues "full, try these" and the session closes once it is written. Until
then the declined session is open. Here the runtime's machine task does not run at
all (the worst case: a machine that has not yet stepped through the burst), so no
decline ever completes; the runtime still keeps no more than ``limit +
DECLINE_ROOM`` sessions, and closes the rest unheard, counting them."""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.testing

from agent._admin.fleet import provision
from agent._config import load_config
from agent._daemon.runtime import DECLINE_ROOM, NodeRuntime
from agent._daemon.transport import SecureChannel, secure_stream
from protocol._handshake import ConnectionRole
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity


async def _channel_from_a_peer(root: SigningIdentity, fleet_id: str, name: str,
                               far_ends: list[SecureChannel]) -> SecureChannel:
    """A real authenticated channel over an in-memory stream: the runtime's end
    (returned) and the peer's end (kept in ``far_ends``)."""
    trust = FleetTrust(fleet_id, root.public_key)
    ours, theirs = trio.testing.memory_stream_pair()
    me, peer = SigningIdentity.generate(), SigningIdentity.generate()
    now = int(time.time())
    got: dict[str, SecureChannel] = {}

    async def side(key: str, stream: trio.abc.Stream, role: ConnectionRole,
                   who: SigningIdentity) -> None:
        cert = Certificate.issue(root, fleet_id, who.public_key, Role.NODE, key, now)
        got[key] = await secure_stream(stream, role=role, identity=who, certificate=cert,
                                       trust=trust)

    async with trio.open_nursery() as n:
        n.start_soon(side, "us", ours, ConnectionRole.RESPONDER, me)
        n.start_soon(side, name, theirs, ConnectionRole.INITIATOR, peer)
    far_ends.append(got[name])
    return got["us"]


async def test_a_burst_of_inbound_sessions_is_bounded_by_the_decline_room(
        tmp_path: Path) -> None:
    root = SigningIdentity.generate()
    prov = provision(tmp_path / "n0", root=root, fleet_id="room", name="n0",
                     mdns_interface="")
    rt = NodeRuntime(load_config(str(prov.config_path)))
    limit = rt.machine.overlay.limit
    extra = 4
    far_ends: list[SecureChannel] = []
    channels = [await _channel_from_a_peer(root, "room", f"p{i}", far_ends)
                for i in range(limit + DECLINE_ROOM + extra)]
    returned: list[int] = []

    async def offer(i: int, ch: SecureChannel) -> None:
        await rt._session(ch, initiated_by_us=False)
        returned.append(i)

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            for i, ch in enumerate(channels):
                n.start_soon(offer, i, ch)
            await trio.testing.wait_all_tasks_blocked()
            # the first limit + DECLINE_ROOM are open (none declined: no machine step);
            # each one after them was turned away at once, and counted
            assert len(rt._sessions) == limit + DECLINE_ROOM
            assert len(returned) == extra
            assert not {i for i, ch in enumerate(channels)
                        if ch.peer_id in rt._sessions} & set(returned)
            assert rt.overlay_statistics()["over_room"] == extra
            assert rt.overlay_statistics()["sessions"] == limit + DECLINE_ROOM
            n.cancel_scope.cancel()
    for ch in channels + far_ends:
        await ch.aclose()
