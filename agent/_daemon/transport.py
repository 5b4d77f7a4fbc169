"""Authenticated, encrypted TCP channels between nodes (trio).

This module is the I/O shell around :class:`protocol._handshake.SecureConnection`:
it moves bytes between a trio stream and the sans-IO connection, enforces the
time limits the protocol cannot (handshake timeout, idle timeout), and supplies
the randomness (ephemeral keys, nonces) from the OS.

* :func:`dial` opens a TCP connection and returns an authenticated
  :class:`SecureChannel` (or raises why not).
* :class:`PeerListener` serves TCP (``trio.serve_tcp``), authenticates each
  connection and hands each channel to a handler coroutine; a failed session
  never affects another. Unauthenticated connections live in a bounded *pool of
  pending handshakes* (see "Memory before authentication" below).
* :class:`~agent._daemon.redial.Redialer` (its own module) keeps one dialled peer
  connected: exponential backoff with jitter, reset after a successful handshake.

Frames on the wire are the codec's: a 4-byte length prefix (checked before the
body is read) and a body, plaintext during the handshake and AES-256-GCM records
after it.

Memory before authentication
----------------------------
Nothing a stranger sends can make the daemon hold more than a fixed amount:

* before the handshake completes a frame may be at most
  :data:`~protocol._handshake.HANDSHAKE_MAX_FRAME` (8 KiB), and the socket is read
  :data:`HANDSHAKE_READ` bytes at a time, so one pending handshake buffers at most
  :data:`HANDSHAKE_RESERVE` bytes (one partial frame plus one read);
* pending inbound handshakes live in a pool of at most ``max_handshakes``, and
  of at most ``handshake_memory // HANDSHAKE_RESERVE`` (the budget for bytes they
  buffer together); a new connection that finds the pool full closes the *oldest*
  pending handshake, so idle or slow sockets cannot lock legitimate peers out
  (an honest handshake takes a few round trips);
* one source address (an IPv6 /64) holds at most ``max_handshakes_per_address``
  of them: beyond that, its own oldest is closed, never another host's;
* a connection that sends nothing within ``first_byte_timeout``, or has not
  authenticated within ``handshake_timeout``, is closed.

After authentication a session buffers at most one partial record
(``4 + max_frame`` bytes) plus one read, and the messages decoded from that read;
authenticated inbound sessions are limited to ``max_connections``.

Receive buffers
---------------
A session reads the socket with ``recv_into``: into a small buffer of its own
(:data:`SMALL_READ` bytes) between records, and straight into the body of a large
record (64 KiB or more) once its length is known, at most ``read_size`` bytes a read
(no copy of its bytes). Large records' bodies and plaintexts are taken from
:data:`RECORD_POOL`, buffers reused once nothing refers to them
(:mod:`agent._daemon.buffers`): in the steady state of a transfer no large block is
allocated per record. While all of them hold records not yet written to disk, a session
waits (up to a second, then reads on into a fresh buffer) before it reads on: the
records in flight stay within the pool instead of piling up in the heap.

CPU after authentication
------------------------
An admitted peer (perhaps a captured node) can send valid records as fast as the
link carries them, and every record costs a decode. So each session's messages
other than chunk data (gossip, announcements, requests) are rated in plaintext
bytes: a token bucket of ``peer_rate`` bytes a second, ``peer_burst`` deep. A read
that leaves the bucket in debt is still delivered, but the next read waits until
the debt is paid: the peer's sender blocks on TCP, and its decode cost here is
bounded by the rate. Chunk data (a ``Piece`` or ``Pieces``: bytes this node asked
for) costs no tokens. An honest peer stays far below the rate; the burst and the debt a single
read may run into cover a record up to ``max_frame``, and a new node's first sync
of a large ledger pulls from several peers at once.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nacl.utils
import trio

from agent._daemon.buffers import BufferPool
from agent._errors import AgentError
from protocol import (
    DEFAULT_MAX_FRAME,
    DEFAULT_REKEY_BYTES,
    DEFAULT_REKEY_RECORDS,
    HANDSHAKE_MAX_FRAME,
    Certificate,
    ConnectionRole,
    ConnectionStatistics,
    FleetTrust,
    Piece,
    Pieces,
    ProtocolError,
    SecureConnection,
    SigningIdentity,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "TransportSettings",
    "TransportError",
    "ChannelClosed",
    "IdleTimeout",
    "HandshakeTimeout",
    "SecureChannel",
    "ChannelStatistics",
    "secure_stream",
    "dial",
    "PeerListener",
    "ListenerStatistics",
]

log = logging.getLogger("shoal.transport")

#: Bytes asked of the socket per read before the handshake is complete.
HANDSHAKE_READ = HANDSHAKE_MAX_FRAME - 4
#: Most bytes one pending handshake can buffer, 16 KiB: a partial frame (at most
#: 4 + HANDSHAKE_MAX_FRAME - 1 bytes) and one read.
HANDSHAKE_RESERVE = 2 * HANDSHAKE_MAX_FRAME
#: Bytes a session reads at once between large records (its own buffer).
SMALL_READ = 64 * 1024
#: The buffers large records are received and decrypted into, shared by the
#: process's sessions (module doc, "Receive buffers"): a few runs of pieces in flight
#: from each of a few peers; what a receiver holds in flight (see _pool_wait).
RECORD_POOL = BufferPool(keep=6)
#: Sleeps of 2 ms a reader takes at most while every pooled buffer is in use (1 s).
POOL_WAIT_STEPS = 500


@dataclass(frozen=True, slots=True)
class TransportSettings:
    handshake_timeout: float = 5.0    # seconds from TCP connect to an authenticated session
    idle_timeout: float = 120.0       # seconds without a received byte before closing
    connect_timeout: float = 10.0     # seconds for the TCP connect of a dial
    max_frame: int = DEFAULT_MAX_FRAME  # largest record after authentication
    max_connections: int = 64         # authenticated inbound sessions at once
    read_size: int = 1048576          # bytes asked of the socket per read of a large record
    first_byte_timeout: float = 2.0   # seconds a new connection may stay silent
    max_handshakes: int = 64          # pending inbound handshakes; the oldest makes room
    max_handshakes_per_address: int = 8  # pending handshakes of one address (IPv6: /64)
    handshake_memory: int = 1048576   # bytes all pending handshakes may buffer together
    rekey_records: int = DEFAULT_REKEY_RECORDS  # records one session key seals at most
    rekey_bytes: int = DEFAULT_REKEY_BYTES      # plaintext bytes one session key seals
    peer_rate: float = 1048576.0      # bytes/s of a session's messages (not chunk data) read
    peer_burst: float = 4194304.0     # ... and at once (a read may go into debt beyond)

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "idle_timeout", "connect_timeout",
                     "first_byte_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_connections", "read_size", "max_handshakes",
                     "max_handshakes_per_address"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.rekey_records < 2:
            raise ValueError("rekey_records must be >= 2 (one of them the key update)")
        if self.rekey_bytes < 1:
            raise ValueError("rekey_bytes must be >= 1")
        if not (self.peer_rate > 0 and self.peer_burst > 0):
            raise ValueError("peer_rate and peer_burst must be > 0")
        if self.handshake_memory < HANDSHAKE_RESERVE:
            raise ValueError(f"handshake_memory must be >= {HANDSHAKE_RESERVE} bytes "
                             f"(one pending handshake)")

    @property
    def handshake_pool(self) -> int:
        """Pending handshakes held at once: ``max_handshakes``, or fewer where
        ``handshake_memory`` cannot cover that many worst cases."""
        return max(1, min(self.max_handshakes, self.handshake_memory // HANDSHAKE_RESERVE))


class TransportError(AgentError):
    """A channel could not be opened or kept open (network-level, not protocol)."""


class ChannelClosed(TransportError):
    """The peer closed the connection, or it broke."""


class IdleTimeout(ChannelClosed):
    """Nothing was received for ``idle_timeout`` seconds; the channel was closed."""


class HandshakeTimeout(TransportError):
    """The peer did not complete the handshake within ``handshake_timeout``."""


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    peer_id: str
    peer_address: str
    connection: ConnectionStatistics
    closed: bool
    throttled_s: float = 0.0   # seconds reads waited: the peer sent over ``peer_rate``


class SecureChannel:
    """An authenticated, encrypted message channel to one peer.

    ``send`` may be called from several tasks (a lock keeps records whole and in
    counter order); ``receive`` from one task at a time. Any protocol error in a
    received record closes the channel and is re-raised.
    """

    def __init__(self, stream: trio.abc.Stream, conn: SecureConnection,
                 settings: TransportSettings, peer_address: str,
                 pending: list[object]) -> None:
        assert conn.established and conn.peer_certificate is not None
        self._stream = stream
        self._conn = conn
        self._settings = settings
        self._send_lock = trio.Lock()
        self._pending: deque[object] = deque(pending)
        self._closed = False
        self.peer_address = peer_address
        self.peer_certificate: Certificate = conn.peer_certificate
        self.peer_id: str = conn.peer_certificate.subject_id
        self._tokens = settings.peer_burst   # of the peer's message bytes (see module doc)
        self._tokens_at: float | None = None   # (trio's clock; set at the first read)
        self._throttled = 0.0
        self._small = bytearray(min(settings.read_size, SMALL_READ))

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: object) -> None:
        await self.send_many((message,))

    async def send_many(self, messages: Iterable[object]) -> None:
        """Send ``messages`` in order, as records written with one ``send_all``; a
        ``bytearray`` is a message already encoded (a run of pieces read in place),
        written with a ``send_all`` of its own (its record is not copied into a join)."""
        if self._closed:
            raise ChannelClosed(f"channel to {self.peer_id} is closed")
        async with self._send_lock:
            for message in messages:
                if type(message) is bytearray:
                    await self._flush()
                    self._conn.send_bytes(message)
                    await self._flush()
                else:
                    self._conn.send(message)
            await self._flush()

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if not data:
            return
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise ChannelClosed(f"connection to {self.peer_id} broke: {exc}") from None

    async def receive(self) -> object:
        """The next message; raises :class:`ChannelClosed` at the end."""
        while not self._pending:
            if self._closed:
                raise ChannelClosed(f"channel to {self.peer_id} is closed")
            if self._tokens < 0:           # in debt: read nothing more until it is paid
                wait = -self._tokens / self._settings.peer_rate
                self._throttled += wait
                await trio.sleep(wait)
            # straight into the large record being received, else into our own buffer
            into = self._conn.receive_buffer()
            if into is None and RECORD_POOL.exhausted():
                await _pool_wait()
            n = 0
            with trio.move_on_after(self._settings.idle_timeout) as scope:
                try:
                    if into is not None:
                        with into[:self._settings.read_size] as view:
                            n = await _recv_into(self._stream, view)
                    else:
                        with memoryview(self._small) as view:
                            n = await _recv_into(self._stream, view)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    await self.aclose()
                    raise ChannelClosed(f"connection to {self.peer_id} broke: {exc}") \
                        from None
            if into is not None:
                into.release()
            if scope.cancelled_caught:
                await self.aclose()
                raise IdleTimeout(f"nothing received from {self.peer_id} for "
                                  f"{self._settings.idle_timeout:g} s; closed the channel")
            if not n:
                await self.aclose()
                raise ChannelClosed(f"{self.peer_id} closed the connection")
            before = self._conn.plaintext_received
            try:
                if into is not None:
                    got = self._conn.received_into(n)
                else:
                    with memoryview(self._small) as view, view[:n] as data:
                        got = self._conn.receive_data(data)
            except ProtocolError:
                await self.aclose()
                raise
            self._charge(self._conn.plaintext_received - before
                         - sum(len(m.data) for m in got if isinstance(m, Piece | Pieces)))
            self._pending.extend(got)
        return self._pending.popleft()

    def _charge(self, size: int) -> None:
        """Take ``size`` bytes of messages from the session's bucket (module doc)."""
        now = trio.current_time()
        st = self._settings
        since = 0.0 if self._tokens_at is None else now - self._tokens_at
        self._tokens = min(st.peer_burst, self._tokens + since * st.peer_rate)
        self._tokens_at = now
        self._tokens -= size

    def __aiter__(self) -> SecureChannel:
        return self

    async def __anext__(self) -> object:
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> SecureChannel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(self.peer_id, self.peer_address, self._conn.statistics(),
                                 self._closed, self._throttled)


async def _pool_wait() -> None:
    """Every pooled record buffer holds bytes not yet written: wait (a little) for one
    to be free before reading what may be the next large record, so the bytes in flight
    stay within the pool (module doc); then go on regardless."""
    for _ in range(POOL_WAIT_STEPS):
        await trio.sleep(0.002)
        if not RECORD_POOL.exhausted():
            return


async def _recv_into(stream: trio.abc.Stream, view: memoryview) -> int:
    """Read at most ``len(view)`` bytes into ``view``; 0 at the end of the stream.
    A socket is read with ``recv_into`` (errors as trio's ``receive_some`` raises
    them); other streams (tests) through ``receive_some`` and a copy."""
    if isinstance(stream, trio.SocketStream):
        try:
            return await stream.socket.recv_into(view)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("this socket was already closed") from None
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
    data = await stream.receive_some(len(view))
    view[:len(data)] = data
    return len(data)


def _address(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        try:
            host, port = stream.socket.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "?"
    return "?"


async def secure_stream(stream: trio.abc.Stream, *, role: ConnectionRole,
                        identity: SigningIdentity, certificate: Certificate,
                        trust: FleetTrust, settings: TransportSettings = TransportSettings(),
                        expected_peer: str | None = None) -> SecureChannel:
    """Run the handshake over ``stream``; return the channel or close the stream and raise.

    Raises :class:`HandshakeTimeout`, :class:`ChannelClosed`, or the
    :class:`ProtocolError` that refused the session (after telling the peer why).
    """
    conn = SecureConnection(role=role, identity=identity, certificate=certificate,
                            trust=trust, ephemeral_secret=nacl.utils.random(32),
                            nonce=nacl.utils.random(32), max_frame=settings.max_frame,
                            expected_peer=expected_peer,
                            rekey_records=settings.rekey_records,
                            rekey_bytes=settings.rekey_bytes, buffers=RECORD_POOL.take)
    address = _address(stream)
    pending: list[object] = []
    read = min(settings.read_size, HANDSHAKE_READ)
    try:
        with trio.fail_after(settings.handshake_timeout):
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
            first = True
            while not conn.established:
                data: bytes | bytearray = b""
                if first:
                    with trio.move_on_after(settings.first_byte_timeout) as scope:
                        data = await stream.receive_some(read)
                    if scope.cancelled_caught:
                        raise HandshakeTimeout(f"{address} sent nothing within "
                                               f"{settings.first_byte_timeout:g} s "
                                               f"(first_byte_timeout)")
                    first = False
                else:
                    data = await stream.receive_some(read)
                if not data:
                    raise ChannelClosed(f"{address} closed the connection during the "
                                        f"handshake")
                try:
                    pending += conn.receive_data(data)
                except ProtocolError:
                    out = conn.data_to_send()  # the HandshakeReject, if we refused
                    if out:
                        with trio.move_on_after(1.0):
                            await stream.send_all(out)
                    raise
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise HandshakeTimeout(f"{address} did not complete the handshake within "
                               f"{settings.handshake_timeout:g} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise ChannelClosed(f"connection to {address} broke during the handshake: "
                            f"{exc}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return SecureChannel(stream, conn, settings, address, pending)


async def dial(host: str, port: int, *, identity: SigningIdentity, certificate: Certificate,
               trust: FleetTrust, settings: TransportSettings = TransportSettings(),
               expected_peer: str | None = None) -> SecureChannel:
    """Connect to ``host:port`` and authenticate; ``expected_peer`` pins the node id."""
    try:
        with trio.fail_after(settings.connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ChannelClosed(f"connecting to {host}:{port} timed out after "
                            f"{settings.connect_timeout:g} s") from None
    except OSError as exc:
        raise ChannelClosed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") \
            from None
    return await secure_stream(stream, role=ConnectionRole.INITIATOR, identity=identity,
                               certificate=certificate, trust=trust, settings=settings,
                               expected_peer=expected_peer)


# ---------------------------------------------------------------------------- listener


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    port: int
    active: int               # connections open now (handshaking or established)
    accepted: int             # TCP connections taken into the handshake pool
    refused_over_limit: int   # closed because ``max_connections`` sessions were open
    handshake_failures: int   # refused, timed out or broken before authentication
    sessions: int             # authenticated sessions handed to the handler
    session_errors: int       # sessions that ended with a protocol or transport error
    last_failure: str
    pending: int = 0          # handshakes in the pool now
    evicted: int = 0          # pending handshakes closed to make room (pool full)
    evicted_per_address: int = 0  # ... because their address held its share
    first_byte_timeouts: int = 0  # closed for sending nothing within first_byte_timeout


ChannelHandler = Callable[[SecureChannel], Awaitable[None]]


def _source(address: str) -> str:
    """The key per-address limits count by: the IPv4 address, or the IPv6 /64."""
    host = address.rsplit(":", 1)[0] if address != "?" else address
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


class _Pending:
    """One inbound connection in the handshake pool."""

    __slots__ = ("address", "source", "scope", "evicted")

    def __init__(self, address: str, source: str) -> None:
        self.address = address
        self.source = source
        self.scope = trio.CancelScope()
        self.evicted = ""


class PeerListener:
    """Accepts peers on TCP, authenticates them, and runs ``handler(channel)`` for each.

    Start it with ``port = await nursery.start(listener.serve)``. The channel is
    closed when the handler returns. Connections that have not authenticated yet
    are held in a bounded pool (module docstring: "Memory before authentication").
    """

    def __init__(self, *, identity: SigningIdentity, certificate: Certificate,
                 trust: FleetTrust, handler: ChannelHandler, host: str = "127.0.0.1",
                 port: int = 0, settings: TransportSettings = TransportSettings()) -> None:
        self._identity = identity
        self._certificate = certificate
        self._trust = trust
        self._handler = handler
        self._host = host
        self.port = port
        self.settings = settings
        self._pending: dict[int, _Pending] = {}   # insertion order: oldest first
        self._by_source: dict[str, int] = {}
        self._next = 0
        self._live_sessions = 0
        self._accepted = 0
        self._refused = 0
        self._hs_failures = 0
        self._sessions = 0
        self._session_errors = 0
        self._evicted = 0
        self._evicted_source = 0
        self._silent = 0
        self._last_failure = ""

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self._host)
        except OSError as exc:
            raise TransportError(f"cannot listen on {self._host}:{self.port}: "
                                 f"{exc.strerror or exc} (listen_address / listen_port "
                                 f"in the config)") from None
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            sock = listeners[0].socket
            self.port = sock.getsockname()[1]
            task_status.started(self.port)

    def _evict(self, key: int, why: str) -> None:
        victim = self._pending.get(key)
        if victim is not None and not victim.evicted:
            victim.evicted = why
            victim.scope.cancel()
            self._forget(key)

    def _forget(self, key: int) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            left = self._by_source[entry.source] - 1
            if left:
                self._by_source[entry.source] = left
            else:
                del self._by_source[entry.source]

    def _admit(self, address: str) -> tuple[int, _Pending]:
        """Put a new connection in the pool, closing the oldest pending handshake of
        its address (at its share) or of all (pool full) to make room."""
        entry = _Pending(address, _source(address))
        if self._by_source.get(entry.source, 0) >= self.settings.max_handshakes_per_address:
            oldest = next(k for k, p in self._pending.items() if p.source == entry.source)
            self._evicted_source += 1
            self._evict(oldest, f"its address {entry.source} holds "
                                f"{self.settings.max_handshakes_per_address} pending "
                                f"handshakes (max_handshakes_per_address)")
        elif len(self._pending) >= self.settings.handshake_pool:
            self._evicted += 1
            self._evict(next(iter(self._pending)),
                        f"the pool of {self.settings.handshake_pool} pending handshakes "
                        f"was full (max_handshakes, handshake_memory)")
        key = self._next
        self._next += 1
        self._pending[key] = entry
        self._by_source[entry.source] = self._by_source.get(entry.source, 0) + 1
        return key, entry

    async def _handle(self, stream: trio.SocketStream) -> None:
        address = _address(stream)    # before the handshake: it may close the stream
        if self._live_sessions >= self.settings.max_connections:
            self._refused += 1
            log.warning("refused connection from %s: over the limit of %d concurrent "
                        "peer sessions (max_connections)", address,
                        self.settings.max_connections)
            await trio.aclose_forcefully(stream)
            return
        self._accepted += 1
        key, entry = self._admit(address)
        channel: SecureChannel | None = None
        try:
            with entry.scope:
                channel = await secure_stream(
                    stream, role=ConnectionRole.RESPONDER, identity=self._identity,
                    certificate=self._certificate, trust=self._trust, settings=self.settings)
        except (ProtocolError, TransportError) as exc:
            self._hs_failures += 1
            if "first_byte_timeout" in str(exc):
                self._silent += 1
            self._last_failure = f"{address}: {type(exc).__name__}: {exc}"
            log.info("refused connection: %s", self._last_failure)
            return
        finally:
            self._forget(key)
        if channel is None:                 # evicted from the pool
            await trio.aclose_forcefully(stream)
            self._hs_failures += 1
            self._last_failure = f"{address}: evicted: {entry.evicted}"
            log.info("refused connection: %s", self._last_failure)
            return
        if self._live_sessions >= self.settings.max_connections:
            self._refused += 1
            log.warning("refused session with %s (%s): over the limit of %d concurrent "
                        "peer sessions (max_connections)", channel.peer_id, address,
                        self.settings.max_connections)
            await channel.aclose()
            return
        self._sessions += 1
        self._live_sessions += 1
        try:
            async with channel:
                try:
                    await self._handler(channel)
                except (ProtocolError, TransportError) as exc:
                    self._session_errors += 1
                    self._last_failure = f"{channel.peer_id}: {exc}"
                    log.info("session ended: %s", self._last_failure)
        finally:
            self._live_sessions -= 1

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self.port, len(self._pending) + self._live_sessions,
                                  self._accepted, self._refused, self._hs_failures,
                                  self._sessions, self._session_errors, self._last_failure,
                                  len(self._pending), self._evicted, self._evicted_source,
                                  self._silent)
