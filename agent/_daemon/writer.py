"""A session's writer: what the machine queued for one peer goes out in few records.

The writer drains the peer's queue in batches. Chunks to serve (``ServeChunk``)
that are next to each other in the queue and share a priority become one
``Pieces`` record (a *run*, at most :data:`RUN_BYTES` bytes and
:data:`~protocol.MAX_RUN` chunks): the run's header is encoded first
(:func:`~protocol.pieces_header`), one buffer is allocated for the header and the
chunks' bytes, each chunk that is in the page cache is read straight into its place
(``read_cached_many``: one index lock and one open a file for the run, one ``preadv``
with ``RWF_NOWAIT`` a stretch of adjacent chunks, each verified), and that buffer is the record's
plaintext -- no copy of the bytes between the read and the encryption. Chunks that
are not cached are read in one worker-thread call (verified and quarantined as
usual) and copied into place; a chunk that cannot be read at all is reported
(``ChunkMissing``) and left out of the run. ``Request`` s to one peer for one key at
one priority, next to each other in the queue, become one ``Requests`` record. The
pieces sent are reported back to the machine in one event per batch
(``PiecesSent``), which opens its upload window again.

Bounds (docs/RELIABILITY.md): a batch holds at most :data:`SERVE_BATCH` chunks and
about :data:`RUN_BYTES` bytes of them (one chunk more at most), and at most
:data:`SEND_BATCH` queued items; a peer that stops reading holds that here and the
queue's items behind it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import trio

from agent._daemon.disk_tasks import DiskTasks
from agent._daemon.inbox import ChunkMissing, PiecesSent
from agent._daemon.transport import SecureChannel, TransportError
from protocol import (
    MAX_RUN,
    Pieces,
    ProtocolError,
    Request,
    Requests,
    ServeChunk,
    TransferPriority,
    make_piece,
    pieces_header,
)

__all__ = ["CLOSE", "SEND_BATCH", "SERVE_BATCH", "RUN_BYTES", "Session", "SessionWriter"]

log = logging.getLogger("shoal.daemon")

SEND_BATCH = 64              # queued items written to a peer at once at most
SERVE_BATCH = 32             # ... of which chunks (read into memory together) at most
RUN_BYTES = 4 * 1024 * 1024  # ... and their bytes at most (one chunk may go over)
CLOSE = object()             # queued after a peer's last message: close the session


@dataclass
class Session:
    channel: SecureChannel
    initiated_by_us: bool
    outbox_send: trio.MemorySendChannel[Any]
    outbox_recv: trio.MemoryReceiveChannel[Any]
    since: float
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


class SessionWriter(DiskTasks):
    """The writers of :class:`~agent._daemon.runtime.NodeRuntime` (which sets these)."""

    _served: int
    bytes_served_by_priority: dict[str, int]
    _size_memo: dict[bytes, int]

    def _size(self, chunk_hash: bytes) -> int | None:
        """The size of a chunk the store holds (None: not held). A batch asks for each
        chunk's size three times (its weight, its run, its record); a hash names one
        size for good, so the answers are kept (a few thousand at most)."""
        memo = self._size_memo
        n = memo.get(chunk_hash)
        if n is None:
            n = self.store.size_of(chunk_hash)
            if n is not None:
                if len(memo) >= 4096:
                    memo.clear()
                memo[chunk_hash] = n
        return n

    async def _writer(self, peer: str, sess: Session, scope: trio.CancelScope) -> None:
        """Drain the peer's queue: whatever is waiting goes out as one write."""
        try:
            async for item in sess.outbox_recv:
                batch = [item]
                chunks_in, bytes_in = self._weigh(item)
                while (len(batch) < SEND_BATCH and chunks_in < SERVE_BATCH
                       and bytes_in < RUN_BYTES and batch[-1] is not CLOSE):
                    try:
                        batch.append(sess.outbox_recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                    n, size = self._weigh(batch[-1])
                    chunks_in += n
                    bytes_in += size
                closing = batch[-1] is CLOSE
                if closing:
                    batch.pop()
                records, sent = await self._records(batch)
                if records:
                    await sess.channel.send_many(records)
                if sent:    # the pieces have left for the link: the engine may hand
                    # out more (its upload window keeps the queue in the engine, where
                    # it is ordered, rather than in this queue)
                    self.post(PiecesSent(peer, tuple(sent)))
                if closing:     # the machine's ClosePeer: what it queued before has gone
                    await sess.channel.aclose()
                    break
        except (ProtocolError, TransportError) as exc:
            log.info("sending to %s failed: %s", peer, exc)
        scope.cancel()

    def _weigh(self, item: object) -> tuple[int, int]:
        if isinstance(item, ServeChunk):
            return 1, self._size(item.chunk_hash) or 0
        return 0, 0

    async def _records(self, batch: list[Any]) -> tuple[list[object], list[bytes]]:
        """The records for ``batch``, in its order (messages, or the plaintext of a run
        of pieces), and the hashes of the chunks among them."""
        records: list[object] = []
        sent: list[bytes] = []
        i = 0
        while i < len(batch):
            it = batch[i]
            if isinstance(it, ServeChunk):
                run = [it]
                total = self._size(it.chunk_hash) or 0
                i += 1
                while (i < len(batch) and len(run) < MAX_RUN
                       and isinstance(batch[i], ServeChunk)
                       and batch[i].priority == it.priority):
                    size = self._size(batch[i].chunk_hash) or 0
                    if total + size > RUN_BYTES:
                        break
                    run.append(batch[i])
                    total += size
                    i += 1
                record = await self._run_record(run)
                if record is not None:
                    records.append(record[0])
                    sent.extend(record[1])
            elif type(it) is Request:
                hashes = [it.chunk_hash]
                i += 1
                while (i < len(batch) and len(hashes) < MAX_RUN and type(batch[i]) is Request
                       and batch[i].key == it.key and batch[i].priority == it.priority):
                    hashes.append(batch[i].chunk_hash)
                    i += 1
                records.append(it if len(hashes) == 1
                               else Requests(it.key, tuple(hashes), it.priority))
            else:
                records.append(it)
                i += 1
        return records, sent

    async def _run_record(self, run: list[ServeChunk]
                          ) -> tuple[object, list[bytes]] | None:
        """One record for a run of chunks to serve (a ``Piece`` for one chunk, else
        the plaintext of a ``Pieces``), and the hashes it carries; None if none of them
        could be read."""
        store = self.store
        priority = run[0].priority
        hashes = [s.chunk_hash for s in run]
        sizes = [self._size(h) for h in hashes]
        if len(run) > 1 and all(n is not None for n in sizes):
            known = [n for n in sizes if n is not None]
            head = pieces_header(priority, hashes, known)
            buf = bytearray(len(head) + sum(known))
            buf[:len(head)] = head
            at = [len(head)]
            for n in known:
                at.append(at[-1] + n)
            with memoryview(buf) as view:
                slots = [view[at[k]:at[k + 1]] for k in range(len(known))]
                try:    # one lock, one open a file, one preadv a contiguous stretch
                    cached = store.read_cached_many(list(zip(hashes, slots, strict=True)))
                finally:
                    for slot in slots:
                        slot.release()
            rest = [k for k, good in enumerate(cached) if not good]
            if rest:    # not in the page cache: read in a worker thread, copy in place
                got = await trio.to_thread.run_sync(
                    self._read_chunks, [hashes[k] for k in rest])
                if all(len(got.get(hashes[k], b"")) == known[k] for k in rest):
                    for k in rest:
                        buf[at[k]:at[k + 1]] = got[hashes[k]]
                    rest = []
            if not rest:
                self._count(hashes, known, priority)
                return buf, hashes
        # the slow path: read what the page cache did not give in a worker thread
        chunks = await self._read_served(hashes)
        good = [h for h in hashes if h in chunks]
        for h in hashes:
            if h not in chunks:
                self.post(ChunkMissing(h))
        if not good:
            return None
        self._count(good, [len(chunks[h]) for h in good], priority)
        if len(good) == 1:
            return make_piece(good[0], chunks[good[0]], priority), good
        return (Pieces(priority, tuple(good), tuple(len(chunks[h]) for h in good),
                       b"".join(chunks[h] for h in good)), good)

    def _count(self, hashes: list[bytes], sizes: list[int], priority: int) -> None:
        self._served += len(hashes)
        prio = TransferPriority(priority).name.lower()
        self.bytes_served_by_priority[prio] = (
            self.bytes_served_by_priority.get(prio, 0) + sum(sizes))
