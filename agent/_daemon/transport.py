"""Authenticated, encrypted TCP channels between nodes (trio).

This module is the I/O shell around :class:`protocol._handshake.SecureConnection`:
it moves bytes between a trio stream and the sans-IO connection, enforces the
time limits the protocol cannot (handshake timeout, idle timeout), and supplies
the randomness (ephemeral keys, nonces) from the OS.

* :func:`dial` opens a TCP connection and returns an authenticated
  :class:`SecureChannel` (or raises why not).
* :class:`PeerListener` serves TCP (``trio.serve_tcp``), refuses connections
  over its limit at once, authenticates the rest and hands each channel to a
  handler coroutine; a failed session never affects another.
* :class:`Redialer` keeps one dialled peer connected: exponential backoff with
  jitter between attempts, reset after a successful handshake.

Frames on the wire are the codec's: a 4-byte length prefix (checked against
``max_frame`` before the body is read) and a body, plaintext during the
handshake and AES-256-GCM records after it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nacl.utils
import trio

from agent._errors import AgentError
from protocol._codec import DEFAULT_MAX_FRAME
from protocol._errors import ProtocolError
from protocol._handshake import (
    ConnectionRole,
    ConnectionStatistics,
    SecureConnection,
)
from protocol._identity import Certificate, FleetTrust, SigningIdentity

if TYPE_CHECKING:
    import random
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
    "Redialer",
    "RedialerStatistics",
    "backoff_delay",
]

log = logging.getLogger("shoal.transport")


@dataclass(frozen=True, slots=True)
class TransportSettings:
    handshake_timeout: float = 10.0   # seconds from TCP connect to an authenticated session
    idle_timeout: float = 120.0       # seconds without a received byte before closing
    connect_timeout: float = 10.0     # seconds for the TCP connect of a dial
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = 64         # simultaneous inbound connections on a listener
    read_size: int = 1048576


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

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: object) -> None:
        await self.send_many((message,))

    async def send_many(self, messages: Iterable[object]) -> None:
        """Send ``messages`` in order, as records written with one ``send_all``."""
        if self._closed:
            raise ChannelClosed(f"channel to {self.peer_id} is closed")
        async with self._send_lock:
            for message in messages:
                self._conn.send(message)
            try:
                await self._stream.send_all(self._conn.data_to_send())
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self.aclose()
                raise ChannelClosed(f"connection to {self.peer_id} broke: {exc}") from None

    async def receive(self) -> object:
        """The next message; raises :class:`ChannelClosed` at the end."""
        while not self._pending:
            if self._closed:
                raise ChannelClosed(f"channel to {self.peer_id} is closed")
            data: bytes | bytearray = b""
            with trio.move_on_after(self._settings.idle_timeout) as scope:
                try:
                    data = await self._stream.receive_some(self._settings.read_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    await self.aclose()
                    raise ChannelClosed(f"connection to {self.peer_id} broke: {exc}") \
                        from None
            if scope.cancelled_caught:
                await self.aclose()
                raise IdleTimeout(f"nothing received from {self.peer_id} for "
                                  f"{self._settings.idle_timeout:g} s; closed the channel")
            if not data:
                await self.aclose()
                raise ChannelClosed(f"{self.peer_id} closed the connection")
            try:
                self._pending.extend(self._conn.receive_data(data))
            except ProtocolError:
                await self.aclose()
                raise
        return self._pending.popleft()

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
                                 self._closed)


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
                            expected_peer=expected_peer)
    address = _address(stream)
    pending: list[object] = []
    try:
        with trio.fail_after(settings.handshake_timeout):
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
            while not conn.established:
                data = await stream.receive_some(settings.read_size)
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
    accepted: int             # TCP connections taken (within the limit)
    refused_over_limit: int   # closed at once because ``max_connections`` were open
    handshake_failures: int   # refused, timed out or broken before authentication
    sessions: int             # authenticated sessions handed to the handler
    session_errors: int       # sessions that ended with a protocol or transport error
    last_failure: str


ChannelHandler = Callable[[SecureChannel], Awaitable[None]]


class PeerListener:
    """Accepts peers on TCP, authenticates them, and runs ``handler(channel)`` for each.

    Start it with ``port = await nursery.start(listener.serve)``. The channel is
    closed when the handler returns.
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
        self._active = 0
        self._accepted = 0
        self._refused = 0
        self._hs_failures = 0
        self._sessions = 0
        self._session_errors = 0
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

    async def _handle(self, stream: trio.SocketStream) -> None:
        address = _address(stream)    # before the handshake: it may close the stream
        if self._active >= self.settings.max_connections:
            self._refused += 1
            log.warning("refused connection from %s: over the limit of %d concurrent "
                        "peer connections (max_connections)", address,
                        self.settings.max_connections)
            await trio.aclose_forcefully(stream)
            return
        self._active += 1
        self._accepted += 1
        try:
            try:
                channel = await secure_stream(
                    stream, role=ConnectionRole.RESPONDER, identity=self._identity,
                    certificate=self._certificate, trust=self._trust, settings=self.settings)
            except (ProtocolError, TransportError) as exc:
                self._hs_failures += 1
                self._last_failure = f"{address}: {type(exc).__name__}: {exc}"
                log.info("refused connection: %s", self._last_failure)
                return
            self._sessions += 1
            async with channel:
                try:
                    await self._handler(channel)
                except (ProtocolError, TransportError) as exc:
                    self._session_errors += 1
                    self._last_failure = f"{channel.peer_id}: {exc}"
                    log.info("session ended: %s", self._last_failure)
        finally:
            self._active -= 1

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self.port, self._active, self._accepted, self._refused,
                                  self._hs_failures, self._sessions, self._session_errors,
                                  self._last_failure)


# ---------------------------------------------------------------------------- redialer


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (0-based): "equal jitter" exponential backoff.

    Uniform in ``[d/2, d]`` with ``d = min(cap, base * 2**attempt)``, so retries from
    many nodes spread out yet never wait less than half the nominal delay.
    """
    nominal = cap if attempt > 60 else min(cap, base * math.pow(2.0, attempt))
    return rng.uniform(nominal / 2.0, nominal)


@dataclass(frozen=True, slots=True)
class RedialerStatistics:
    attempts: int
    failures: int
    connections: int
    consecutive_failures: int
    last_error: str
    last_delay: float


class Redialer:
    """Keeps a session to one dialled peer: connect, run ``on_channel``, retry with backoff.

    ``connect`` returns a fresh channel (normally a :func:`dial` partial);
    ``on_channel`` runs for as long as the session lives. Cancel the task running
    :meth:`run` to stop.
    """

    def __init__(self, connect: Callable[[], Awaitable[SecureChannel]],
                 on_channel: ChannelHandler, *, rng: random.Random,
                 base_delay: float = 0.5, max_delay: float = 60.0,
                 target: str = "peer") -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.target = target               # what the log lines name (e.g. "host:port")
        self._connect = connect
        self._on_channel = on_channel
        self._rng = rng
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._attempts = 0
        self._failures = 0
        self._connections = 0
        self._streak = 0
        self._last_error = ""
        self._last_delay = 0.0

    async def run(self) -> None:
        while True:
            self._attempts += 1
            try:
                channel = await self._connect()
            except (ProtocolError, TransportError, OSError) as exc:
                self._failures += 1
                self._last_error = str(exc)
                delay = backoff_delay(self._streak, self._rng, base=self.base_delay,
                                      cap=self.max_delay)
                self._streak += 1
                self._last_delay = delay
                log.info("dial %s failed (%s); retrying in %.1f s", self.target, exc, delay)
                await trio.sleep(delay)
                continue
            self._streak = 0
            self._connections += 1
            async with channel:
                try:
                    await self._on_channel(channel)
                except (ProtocolError, TransportError) as exc:
                    self._last_error = str(exc)
            # a session that ended: come back soon, but never in a hot loop
            self._last_delay = backoff_delay(0, self._rng, base=self.base_delay,
                                             cap=self.max_delay)
            await trio.sleep(self._last_delay)

    def statistics(self) -> RedialerStatistics:
        return RedialerStatistics(self._attempts, self._failures, self._connections,
                                  self._streak, self._last_error, self._last_delay)
