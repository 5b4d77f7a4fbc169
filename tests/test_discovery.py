"""mDNS discovery with real zeroconf on the loopback interface (agent/_daemon/discovery.py)."""

from __future__ import annotations

import math

import pytest
import trio

from agent._daemon.discovery import (
    Discovery,
    DiscoveryError,
    DiscoveryEvent,
    PeerFound,
    PeerLost,
    event_for_service,
    static_peer_events,
)

LOOPBACK = ["127.0.0.1"]
A, B, C = "a" * 32, "b" * 32, "c" * 32


def make(fleet: str, node: str, port: int,
         send: trio.MemorySendChannel[DiscoveryEvent]) -> Discovery:
    return Discovery(fleet_id=fleet, node_id=node, port=port, send_channel=send,
                     interfaces=LOOPBACK, name=f"n-{node[:4]}")


async def next_event(rx: trio.MemoryReceiveChannel[DiscoveryEvent],
                     timeout: float = 8.0) -> DiscoveryEvent:
    with trio.fail_after(timeout):
        return await rx.receive()


async def test_two_advertisers_find_each_other_ignore_other_fleets_and_see_removal() -> None:
    tx_a, rx_a = trio.open_memory_channel[DiscoveryEvent](math.inf)
    tx_b, rx_b = trio.open_memory_channel[DiscoveryEvent](math.inf)
    tx_c, rx_c = trio.open_memory_channel[DiscoveryEvent](math.inf)
    with trio.fail_after(30):  # bounded: registration alone takes ~1.6 s each
        async with make("fleet-1", A, 4001, tx_a) as da:
            async with trio.open_nursery() as n:  # start B and C concurrently
                db = make("fleet-1", B, 4002, tx_b)
                dc = make("fleet-2", C, 4003, tx_c)
                n.start_soon(db.start)
                n.start_soon(dc.start)
            try:
                ev_a = await next_event(rx_a)
                ev_b = await next_event(rx_b)
                assert ev_a == PeerFound(B, "127.0.0.1", 4002, "n-bbbb", "mdns")
                assert ev_b == PeerFound(A, "127.0.0.1", 4001, "n-aaaa", "mdns")
                # C is in another fleet: it sees nobody, nobody sees it
                await trio.sleep(0.5)
                assert rx_a.statistics().current_buffer_used == 0
                assert rx_c.statistics().current_buffer_used == 0
                assert da.statistics().ignored_other_fleet >= 1
                assert dc.statistics().ignored_other_fleet >= 2
                assert da.statistics().found == 1
            finally:
                await dc.aclose()
            await db.aclose()  # unregisters: A must see it go
            assert await next_event(rx_a) == PeerLost(B)
    assert da.statistics().advertising is False


async def test_static_peers_are_reported_without_mdns() -> None:
    tx, rx = trio.open_memory_channel[DiscoveryEvent](math.inf)
    async with Discovery(fleet_id="f", node_id=A, port=4000, send_channel=tx, mdns=False,
                         static_peers=[("10.0.0.7", 7411), ("relay.example", 7412)]) as d:
        got = [rx.receive_nowait(), rx.receive_nowait()]
        assert got == static_peer_events([("10.0.0.7", 7411), ("relay.example", 7412)])
        assert got[0] == PeerFound(None, "10.0.0.7", 7411, "10.0.0.7:7411", "static")
        assert d.statistics().advertising is False


def test_service_filtering() -> None:
    props = {b"fleet": b"f1", b"node": B.encode(), b"v": b"1", b"name": b"bee"}
    assert event_for_service(props, ["10.1.1.2"], 7411, fleet_id="f1", self_id=A) == \
        PeerFound(B, "10.1.1.2", 7411, "bee", "mdns")
    assert event_for_service(props, ["10.1.1.2"], 7411, fleet_id="f1", self_id=B) is None
    assert event_for_service(props, ["10.1.1.2"], 7411, fleet_id="f2", self_id=A) \
        == "other fleet"
    bad = {**props, b"node": b"not-hex"}
    assert str(event_for_service(bad, ["10.1.1.2"], 7411, fleet_id="f1", self_id=A)
               ).startswith("malformed")
    assert str(event_for_service(props, [], 7411, fleet_id="f1", self_id=A)
               ).startswith("malformed")
    nofleet = {b"node": B.encode()}
    assert str(event_for_service(nofleet, ["10.1.1.2"], 1, fleet_id="f1", self_id=A)
               ).startswith("malformed")


def test_bad_values_are_refused() -> None:
    tx, _ = trio.open_memory_channel[DiscoveryEvent](1)
    with pytest.raises(DiscoveryError, match="port"):
        Discovery(fleet_id="f", node_id=A, port=0, send_channel=tx)
    with pytest.raises(DiscoveryError, match="TXT value fleet"):
        Discovery(fleet_id="f" * 300, node_id=A, port=1, send_channel=tx)
