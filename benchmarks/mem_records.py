"""Where the receive path allocates large blocks, by line (issue 16, receiver RSS).

A :class:`~agent._daemon.transport.SecureChannel` pair over loopback TCP in one
process; the sender seals runs of pieces as the daemon's writer does (``Pieces``
records of ~4 MiB), the receiver keeps each run's chunk views for a few records (as
the store queue does) and then drops them. With ``tracemalloc`` on, the blocks of
64 KiB or more alive while a record is opened (on entering ``_record`` and on leaving
it) are listed by the line that allocated them, for the first few records.

``python -m benchmarks.mem_records [MiB]``. Counting every large allocation
(including the short-lived ones) needs a malloc shim; docs/JOURNAL.md (2026-12-06,
"receive buffers reused") has the counts from the daemons.
"""

from __future__ import annotations

import random
import sys
import tracemalloc
from collections import Counter, deque
from typing import Any

import trio

from agent._daemon.transport import PeerListener, SecureChannel, TransportSettings, dial
from protocol import FleetTrust, Pieces, SecureConnection, SigningIdentity, pieces_header

from .bench_transport import _member

MiB = 1024 * 1024
CHUNK = 128 * 1024
RUN = 31                  # chunks per record: ~3.9 MiB, as RUN_BYTES (4 MiB) makes
LARGE = 64 * 1024
SNAPSHOTS = 6             # records whose opening is snapshotted


def _large(snap: tracemalloc.Snapshot) -> Counter[str]:
    out: Counter[str] = Counter()
    for t in snap.traces:
        if t.size >= LARGE:
            f = t.traceback[0]
            out[f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:"
                f"{f.lineno} ({t.size // 1024} KiB)"] += 1
    return out


async def _run(total: int) -> tuple[Counter[str], int]:
    root = SigningIdentity(random.Random(0).randbytes(32))
    trust = FleetTrust("bench", root.public_key)
    server, client = _member(root, "bench", 1), _member(root, "bench", 2)
    seen: Counter[str] = Counter()
    opened = 0
    original = SecureConnection._record

    def record(self: SecureConnection, body: memoryview) -> object:
        nonlocal opened
        snap = opened < SNAPSHOTS and len(body) >= LARGE
        if snap:
            seen.update(_large(tracemalloc.take_snapshot()))
        msg = original(self, body)
        if snap:
            seen.update(_large(tracemalloc.take_snapshot()))
            opened += 1
        return msg

    SecureConnection._record = record  # type: ignore[method-assign]
    done = trio.Event()
    received = 0
    kept: deque[list[Any]] = deque(maxlen=3)

    async def sink(channel: SecureChannel) -> None:
        nonlocal received
        async for msg in channel:
            if isinstance(msg, Pieces):
                kept.append(msg.runs())
                received += len(msg.data)
                if received >= total:
                    done.set()

    rng = random.Random(1)
    chunks = [rng.randbytes(CHUNK) for _ in range(RUN)]
    hashes = [bytes([i]) * 32 for i in range(RUN)]
    try:
        async with trio.open_nursery() as n:
            listener = PeerListener(identity=server[0], certificate=server[1], trust=trust,
                                    handler=sink, settings=TransportSettings())
            port = await n.start(listener.serve)
            ch = await dial("127.0.0.1", port, identity=client[0], certificate=client[1],
                            trust=trust)
            sent = 0
            while sent < total:
                head = pieces_header(2, hashes, [CHUNK] * RUN)
                await ch.send_many([bytearray(head + b"".join(chunks))])
                sent += RUN * CHUNK
            await done.wait()
            await ch.aclose()
            n.cancel_scope.cancel()
    finally:
        SecureConnection._record = original  # type: ignore[method-assign]
    return seen, opened


def main() -> None:
    total = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 64 * MiB
    tracemalloc.start(1)
    seen, opened = trio.run(_run, total)
    tracemalloc.stop()
    print(f"blocks >= {LARGE // 1024} KiB alive while a record is opened "
          f"(entering and leaving _record, {opened} records; sender's lines included):")
    for where, n in seen.most_common():
        print(f"  {n:4d}  {where}")


if __name__ == "__main__":
    main()
