"""Secure channel throughput against a raw TCP copy of the same bytes (loopback).

Both runs move the same payload over 127.0.0.1 in the same process, side by
side: raw ``send_all`` of 1 MiB blocks, and 1 MiB :class:`Note`-sized records
through an authenticated, encrypted :class:`SecureChannel` (msgpack encode +
AES-256-GCM + framing on one side, the reverse on the other). The ratio
is what encryption and framing cost on this machine. Also: handshakes/s.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import trio

from agent._transport import PeerListener, SecureChannel, TransportSettings, dial
from protocol._codec import message
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity


@message(18)
@dataclass(frozen=True, slots=True)
class BenchBlock:
    data: bytes


BLOCK = 1024 * 1024


def _member(root: SigningIdentity, fleet: str, seed: int) -> tuple[SigningIdentity, Certificate]:
    ident = SigningIdentity(random.Random(seed).randbytes(32))
    return ident, Certificate.issue(root, fleet, ident.public_key, Role.NODE, f"n{seed}", 1)


async def _raw(total: int) -> float:
    block = b"\x5a" * BLOCK
    done = trio.Event()
    received = 0

    async def sink(stream: trio.SocketStream) -> None:
        nonlocal received
        while data := await stream.receive_some(256 * 1024):
            received += len(data)
            if received >= total:
                done.set()

    async with trio.open_nursery() as n:
        listeners = await n.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        t0 = time.perf_counter()
        for _ in range(total // BLOCK):
            await stream.send_all(block)
        await done.wait()
        elapsed = time.perf_counter() - t0
        await stream.aclose()
        n.cancel_scope.cancel()
    return elapsed


async def _secure(total: int, handshakes: int) -> tuple[float, float]:
    fleet = "bench"
    root = SigningIdentity(random.Random(0).randbytes(32))
    trust = FleetTrust(fleet, root.public_key)
    server, client = _member(root, fleet, 1), _member(root, fleet, 2)
    done = trio.Event()
    received = 0

    async def sink(channel: SecureChannel) -> None:
        nonlocal received
        async for msg in channel:
            assert isinstance(msg, BenchBlock)
            received += len(msg.data)
            if received >= total:
                done.set()

    settings = TransportSettings(max_connections=handshakes + 4)
    async with trio.open_nursery() as n:
        listener = PeerListener(identity=server[0], certificate=server[1], trust=trust,
                                handler=sink, settings=settings)
        port = await n.start(listener.serve)
        t0 = time.perf_counter()
        for _ in range(handshakes):
            ch = await dial("127.0.0.1", port, identity=client[0], certificate=client[1],
                            trust=trust, settings=settings)
            await ch.aclose()
        hs_rate = handshakes / (time.perf_counter() - t0)
        ch = await dial("127.0.0.1", port, identity=client[0], certificate=client[1],
                        trust=trust, settings=settings)
        block = BenchBlock(b"\x5a" * BLOCK)
        t0 = time.perf_counter()
        for _ in range(total // BLOCK):
            await ch.send(block)
        await done.wait()
        elapsed = time.perf_counter() - t0
        await ch.aclose()
        n.cancel_scope.cancel()
    return elapsed, hs_rate


def run(quick: bool) -> list[dict[str, Any]]:
    total = (64 if quick else 512) * BLOCK
    handshakes = 20 if quick else 200
    raw = trio.run(_raw, total)
    secure, hs_rate = trio.run(_secure, total, handshakes)
    mb = total / 1e6
    return [
        {"name": "transport: raw TCP loopback", "value": round(mb / raw, 1), "unit": "MB/s",
         "detail": f"{mb:.0f} MB in 1 MiB blocks"},
        {"name": "transport: secure channel loopback", "value": round(mb / secure, 1),
         "unit": "MB/s", "detail": "msgpack + ChaCha20-Poly1305 records, same bytes"},
        {"name": "transport: secure / raw throughput", "value": round(raw / secure, 3),
         "unit": "ratio", "detail": "1.0 = encryption and framing cost nothing"},
        {"name": "transport: handshakes (dial+auth+close)", "value": round(hs_rate, 1),
         "unit": "1/s", "detail": f"{handshakes} sequential, loopback"},
    ]
