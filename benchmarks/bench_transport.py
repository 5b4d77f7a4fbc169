"""Secure channel throughput against a raw TCP copy of the same bytes (loopback).

Each run moves the same payload over 127.0.0.1, side by side: raw ``send_all``
of 1 MiB blocks, and 1 MiB records through an authenticated, encrypted
:class:`SecureChannel` (msgpack encode + AES-256-GCM + framing on one side, the
reverse on the other). Two layouts:

* *two processes* - the receiver is a forked child, as between two daemons:
  each end has its own core (this machine has 2). This is the figure to hold
  against the agent-to-agent aim (docs/PERFORMANCE.md).
* *one process* - both ends on one core, so the ratio shows what encryption,
  framing and copying cost in total CPU.

The child reports the time it received the last byte on the shared monotonic
clock (``time.perf_counter`` is CLOCK_MONOTONIC on Linux). Also: handshakes/s.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio

from agent._daemon.transport import PeerListener, SecureChannel, TransportSettings, dial
from protocol import Certificate, FleetTrust, Role, SigningIdentity, message


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


# ---------------------------------------------------------------- two processes


def _fleet() -> tuple[FleetTrust, tuple[SigningIdentity, Certificate],
                      tuple[SigningIdentity, Certificate]]:
    root = SigningIdentity(random.Random(0).randbytes(32))
    return (FleetTrust("bench", root.public_key), _member(root, "bench", 1),
            _member(root, "bench", 2))


async def _child_sink(conn: Connection, total: int, secure: bool,
                      to_file: str | None = None) -> None:
    done = trio.Event()
    received = 0
    end = 0.0
    fd = os.open(to_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if to_file else -1

    def count(n: int) -> None:
        nonlocal received, end
        received += n
        if received >= total and not done.is_set():
            if fd >= 0:
                os.fsync(fd)        # the copy is durable, as a daemon's chunks are
                os.close(fd)
            end = time.perf_counter()
            done.set()

    async def raw_sink(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(1024 * 1024):
            if fd >= 0:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            count(len(data))

    async def secure_sink(channel: SecureChannel) -> None:
        async for msg in channel:
            assert isinstance(msg, BenchBlock)
            count(len(msg.data))

    async with trio.open_nursery() as n:
        if secure:
            trust, server, _ = _fleet()
            listener = PeerListener(identity=server[0], certificate=server[1], trust=trust,
                                    handler=secure_sink)
            port = await n.start(listener.serve)
        else:
            listeners = await n.start(trio.serve_tcp, raw_sink, 0)
            port = listeners[0].socket.getsockname()[1]
        conn.send(port)
        await done.wait()
        conn.send(end)
        n.cancel_scope.cancel()


def _child_main(conn: Connection, total: int, secure: bool, to_file: str | None) -> None:
    trio.run(_child_sink, conn, total, secure, to_file)


async def _send_to(port: int, total: int, secure: bool) -> float:
    if secure:
        trust, _, client = _fleet()
        ch = await dial("127.0.0.1", port, identity=client[0], certificate=client[1],
                        trust=trust)
        block = BenchBlock(b"\x5a" * BLOCK)
        t0 = time.perf_counter()
        for _ in range(total // BLOCK):
            await ch.send(block)
        return t0
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b"\x5a" * BLOCK
    t0 = time.perf_counter()
    for _ in range(total // BLOCK):
        await stream.send_all(data)
    return t0


def _two_processes(total: int, secure: bool, to_file: str | None = None) -> float:
    """Seconds to send ``total`` bytes from this process to a child over loopback TCP;
    with ``to_file`` the child writes them to that file and fsyncs it (raw only)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_main, args=(child, total, secure, to_file), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("benchmark receiver did not start")
        port = parent.recv()
        t0 = trio.run(_send_to, port, total, secure)
        if not parent.poll(120):
            raise RuntimeError("benchmark receiver did not finish")
        end: float = parent.recv()
        return end - t0
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def run(quick: bool) -> list[dict[str, Any]]:
    total = (64 if quick else 512) * BLOCK
    handshakes = 20 if quick else 200
    raw2 = _two_processes(total, secure=False)
    secure2 = _two_processes(total, secure=True)
    raw = trio.run(_raw, total)
    secure, hs_rate = trio.run(_secure, total, handshakes)
    mb = total / 1e6
    return [
        {"name": "transport: raw TCP loopback, two processes", "value": round(mb / raw2, 1),
         "unit": "MB/s", "detail": f"{mb:.0f} MB in 1 MiB blocks"},
        {"name": "transport: secure channel loopback, two processes",
         "value": round(mb / secure2, 1), "unit": "MB/s",
         "detail": "msgpack + AES-256-GCM records, same bytes"},
        {"name": "transport: secure / raw throughput, two processes",
         "value": round(raw2 / secure2, 3), "unit": "ratio",
         "detail": "each end on its own core, as between two daemons"},
        {"name": "transport: raw TCP loopback, one process", "value": round(mb / raw, 1),
         "unit": "MB/s", "detail": f"{mb:.0f} MB in 1 MiB blocks"},
        {"name": "transport: secure channel loopback, one process",
         "value": round(mb / secure, 1), "unit": "MB/s",
         "detail": "msgpack + AES-256-GCM records, same bytes, both ends on one core"},
        {"name": "transport: secure / raw throughput, one process",
         "value": round(raw / secure, 3), "unit": "ratio",
         "detail": "1.0 = encryption and framing cost nothing"},
        {"name": "transport: handshakes (dial+auth+close)", "value": round(hs_rate, 1),
         "unit": "1/s", "detail": f"{handshakes} sequential, loopback"},
    ]
