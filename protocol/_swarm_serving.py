"""Answering peers' requests: the engine's upload side, super-seeding included.

Theory of operation
-------------------
A peer's :class:`Request` for a chunk this node does not hold, or of a key it does not
know, is answered "missing" (:class:`Reject` with ``missing``); the peer counts that
against the advertiser. Any other request is queued in the :class:`UploadScheduler`
(:mod:`._swarm_uploads`), which decides who is served when; one that finds its peer's
queue full is answered "busy". What the scheduler serves becomes a ``ServeChunk``
output: the driver reads the chunk and sends the piece, and may report it sent
(:meth:`Uploader.sent`), which is what turns the scheduler's upload window on.

Super-seeding. A seed (it holds the key and is not fetching it) asked for a chunk it
uploaded less than ``redirect_window`` ago, while it still holds chunks it has never
uploaded, answers :class:`Redirect` with up to four of those positions instead: the
chunk is spreading already, and the uplink is better spent on bytes nobody else can
serve yet. It redirects each peer ``_REDIRECTS_PER_PEER`` (2) times per chunk: asked
again after that by the same peer (after its ``redirect_backoff``, when nobody else it
knows has the chunk yet), or by the peer the first copy went to (that copy was lost),
or once the window has passed, it serves the chunk. So redirects cost a peer two
back-offs at most, even when the hints are of no use to it (a delta: the chunks never
uploaded are the ones everybody holds). Requests
already queued for a chunk that has just left for the first time are redirected the
same way. The positions never uploaded are kept per key as a pool that only shrinks,
so drawing hints costs a few random probes, not a scan.

A chunk the store loses is answered "missing" to every peer that asked for it or is
interested in a key that holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sized
from typing import TYPE_CHECKING

from ._config import SwarmConfig
from ._events import Output, ServeChunk
from ._rng import Rng
from ._swarm_keys import KeyCatalog, KeyInfo
from ._swarm_messages import Redirect, Reject, Request
from ._swarm_stats import Counters
from ._swarm_uploads import UploadScheduler
from ._types import TransferPriority

if TYPE_CHECKING:
    from ._wire import SwarmMessage

__all__ = ["Uploader"]

_REDIRECTS_PER_PEER = 2   # a peer asking again for a chunk is served after this many redirects


class Uploader:
    """The engine's upload side: answers peers' requests, redirects repeats
    (super-seeding) and turns the scheduler's picks into ``ServeChunk`` outputs.

    ``held``, ``remote_interest`` (peer -> keys it is interested in) and ``peer_has``
    (peer -> chunks it holds) are the engine's, read here; ``seeding(key)`` says
    whether this node serves ``key`` as a seed; ``send`` and ``emit`` are the engine's
    ways out. The scheduler starts with the first ``now`` the engine sees."""

    def __init__(self, *, config: SwarmConfig, rng: Rng, held: Container[bytes], keys: KeyCatalog,
                 remote_interest: dict[str, set[str]], peer_has: Mapping[str, Sized],
                 seeding: Callable[[str], bool], counters: Counters,
                 send: Callable[[str, SwarmMessage], None], emit: Callable[[Output], None]) -> None:
        self._config = config
        self._rng = rng
        self._held = held
        self._keys = keys
        self._remote_interest = remote_interest
        self._peer_has = peer_has
        self._seeding = seeding
        self._c = counters
        self._send = send
        self._emit = emit
        self.scheduler: UploadScheduler | None = None
        self._unsent: dict[str, list[int]] = {}   # key -> positions maybe never uploaded
        self._first_to: dict[bytes, str] = {}     # chunk -> the peer its first copy went to
        # chunk -> peer -> how many times it was redirected for that chunk
        self._redirected: dict[bytes, dict[str, int]] = {}

    def start(self, now: float) -> UploadScheduler:
        if self.scheduler is None:
            self.scheduler = UploadScheduler(self._config, self._rng, now)
            if self._config.laggard_patience > 0:
                # laggards first: the requester we know to hold the fewest chunks
                has = self._peer_has
                self.scheduler.progress_of = lambda p: len(has.get(p, ()))
        return self.scheduler

    def forget_key(self, key: str) -> None:
        self._unsent.pop(key, None)

    def request(self, peer: str, message: Request, info: KeyInfo | None, now: float,
                pump: bool = True) -> None:
        """``peer`` asks for a chunk of ``message.key`` (``info``: None if unknown here);
        ``pump=False``: the caller pumps once after a run of requests."""
        uploads = self.start(now)
        h = message.chunk_hash
        size = info.size_of.get(h) if info is not None else None
        if h not in self._held or size is None:
            self._send(peer, Reject(h, True))
            self._c.uploads_refused += 1
            return
        cfg = self._config
        if (cfg.redirect_window > 0 and info is not None and uploads.copies(h) > 0
                and self._first_to.get(h) != peer
                and uploads.uploaded_since(h, now - cfg.redirect_window)
                and self._redirected.get(h, {}).get(peer, 0) < _REDIRECTS_PER_PEER
                and self._seeding(message.key)):
            hints = self._hints(message.key, info, uploads)
            if hints:
                times = self._redirected.setdefault(h, {})
                times[peer] = times.get(peer, 0) + 1
                self._send(peer, Redirect(message.key, h, hints))
                self._c.redirects_sent += 1
                return
        priority = min(max(message.priority, int(TransferPriority.LOW)),
                       int(TransferPriority.CRITICAL))
        if not uploads.enqueue(peer, h, size, priority, now):
            self._send(peer, Reject(h, False))
            self._c.uploads_refused += 1
            return
        if pump:
            self.pump(now)

    def sent(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """The driver has sent the piece of ``ServeChunk(peer, chunk_hash)``."""
        self.start(now).sent(peer, chunk_hash, now)
        self.pump(now)

    def sent_many(self, peer: str, chunk_hashes: Iterable[bytes], now: float) -> None:
        """:meth:`sent` for each of a run of pieces sent together; one pump."""
        uploads = self.start(now)
        for h in chunk_hashes:
            uploads.sent(peer, h, now)
        self.pump(now)

    def chunk_lost(self, chunk_hash: bytes, now: float) -> None:
        """The store lost a chunk: tell whoever asked for it, or may ask, "missing"."""
        uploads = self.start(now)
        uploads.not_sent(chunk_hash=chunk_hash)
        told = set(uploads.forget_chunk(chunk_hash))
        for key in self._keys.keys_of(chunk_hash):
            told.update(p for p, keys in self._remote_interest.items() if key in keys)
        for peer in sorted(told):
            self._send(peer, Reject(chunk_hash, True))
        self.pump(now)   # that piece will never be reported sent

    def on_timer(self, now: float) -> None:
        uploads = self.start(now)
        uploads.on_timer(now)
        for peer, h in uploads.take_rejected():
            self._send(peer, Reject(h, False))
            self._c.uploads_refused += 1
        self.pump(now)

    def pump(self, now: float) -> None:
        """Hand the driver what the scheduler serves now."""
        uploads = self.start(now)
        firsts: list[bytes] = []
        for serve in uploads.pump(now):
            self._emit(ServeChunk(serve.peer, serve.chunk_hash, serve.priority))
            self._c.uploads_served += 1
            self._c.bytes_uploaded += serve.size
            if uploads.copies(serve.chunk_hash) == 1:
                firsts.append(serve.chunk_hash)
                self._first_to[serve.chunk_hash] = serve.peer
        if firsts and self._config.redirect_window > 0:
            for h in firsts:
                self._redirect_queued(h, uploads)

    def _redirect_queued(self, h: bytes, uploads: UploadScheduler) -> None:
        """A chunk just left here for the first time: other peers' requests for it that
        wait in the queue would be repeats. As a seed that still holds chunks nobody got
        from it, answer them ``Redirect`` now, as :meth:`request` does for a request
        that arrives after the upload."""
        keys = self._keys.keys_of(h)
        infos = self._keys.infos
        redirected = self._redirected.setdefault(h, {})
        for peer in uploads.queued_for(h):
            if redirected.get(peer, 0) >= _REDIRECTS_PER_PEER:
                continue
            key = next((k for k in sorted(self._remote_interest.get(peer, ()))
                        if k in keys and k in infos and self._seeding(k)), None)
            if key is None:
                continue
            hints = self._hints(key, infos[key], uploads)
            if not hints:
                return
            uploads.cancel(peer, h)
            redirected[peer] = redirected.get(peer, 0) + 1
            self._send(peer, Redirect(key, h, hints))
            self._c.redirects_sent += 1

    def _hints(self, key: str, info: KeyInfo, uploads: UploadScheduler,
               count: int = 4) -> tuple[int, ...]:
        """Up to ``count`` random positions of ``key`` we hold and never uploaded."""
        pool = self._unsent.get(key)
        if pool is None:
            pool = [i for i, ref in enumerate(info.refs)
                    if info.index_of[ref.hash] == i and ref.hash in self._held
                    and uploads.copies(ref.hash) == 0]
            self._unsent[key] = pool
        out: list[int] = []
        tries = 0
        while pool and len(out) < count and tries < 4 * count:
            j = self._rng.randrange(len(pool))
            i = pool[j]
            h = info.refs[i].hash
            if uploads.copies(h) or h not in self._held:
                pool[j] = pool[-1]
                pool.pop()
                continue
            tries += 1
            if i not in out:
                out.append(i)
        return tuple(sorted(out))
