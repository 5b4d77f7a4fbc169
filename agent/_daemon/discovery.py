"""Finding peers: mDNS (zeroconf) on the LAN, plus static peers from the config.

Theory of operation
-------------------
Every node advertises ``<node_id>._shoal._tcp.local.`` with its TCP port and a
TXT record ``fleet=<fleet id>``, ``node=<node id>``, ``v=<handshake version>``,
``name=<node name>``, and browses the same service type. A service whose TXT
names another fleet, or this node itself, is ignored; any other becomes a
:class:`PeerFound` (again when its address or port changes), and its removal a
:class:`PeerLost`. mDNS is only a hint: the handshake authenticates whoever
answers on that address, so a forged advertisement costs one refused dial.

zeroconf runs its own asyncio loop in a thread. Bridging it to trio follows
this pattern:

* ``Zeroconf()``, ``register_service`` (blocks ~1.6 s), ``unregister_service``,
  ``ServiceBrowser.cancel`` and ``Zeroconf.close`` all run through
  ``trio.to_thread.run_sync``;
* the browser's handler (called on the browser's own thread) resolves the
  service there, then hands the event to trio with
  ``token.run_sync_soon(send, event)`` - never the blocking
  ``trio.from_thread.run_sync``, which deadlocks against ``cancel()`` - and
  ignores ``trio.RunFinishedError`` once trio has gone;
* events go into an unbounded trio memory channel (``send_nowait``), so the
  zeroconf thread never waits on trio.

Static peers (``host:port`` from the config, for networks without multicast)
are reported once at start as :class:`PeerFound` with ``node_id=None``: the
handshake tells who is there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from agent._errors import AgentError
from protocol import HANDSHAKE_VERSION

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "SERVICE_TYPE",
    "PeerFound",
    "PeerLost",
    "DiscoveryEvent",
    "DiscoveryError",
    "Discovery",
    "DiscoveryStatistics",
    "advertisement_properties",
    "event_for_service",
    "static_peer_events",
]

log = logging.getLogger("shoal.discovery")

SERVICE_TYPE = "_shoal._tcp.local."
_RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True, slots=True)
class PeerFound:
    node_id: str | None   # None for a static peer: the handshake will tell
    host: str
    port: int
    name: str = ""
    source: str = "mdns"  # "mdns" | "static"


@dataclass(frozen=True, slots=True)
class PeerLost:
    node_id: str


DiscoveryEvent = PeerFound | PeerLost


class DiscoveryError(AgentError):
    """mDNS could not be started (no usable interface, name conflict, bad value)."""


@dataclass(frozen=True, slots=True)
class DiscoveryStatistics:
    advertising: bool
    found: int            # PeerFound events emitted (mDNS)
    lost: int             # PeerLost events emitted
    ignored_other_fleet: int
    ignored_malformed: int
    known_peers: int


def advertisement_properties(fleet_id: str, node_id: str, name: str = "") -> dict[str, str]:
    """The TXT record a node advertises."""
    props = {"fleet": fleet_id, "node": node_id, "v": str(HANDSHAKE_VERSION), "name": name}
    for key, value in props.items():
        if len(key) + 1 + len(value.encode()) > 255:
            raise DiscoveryError(f"TXT value {key}={value!r} is longer than mDNS allows "
                                 f"(255 bytes per entry)")
    return props


def _text(props: Mapping[bytes, bytes | None], key: str) -> str | None:
    raw = props.get(key.encode())
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def event_for_service(properties: Mapping[bytes, bytes | None], addresses: Sequence[str],
                      port: int | None, *, fleet_id: str, self_id: str
                      ) -> PeerFound | str | None:
    """Turn one resolved service into an event; a ``str`` says why it was ignored.

    Returns ``None`` for this node's own advertisement.
    """
    fleet = _text(properties, "fleet")
    node = _text(properties, "node")
    if fleet is None or node is None or not port or not addresses:
        return "malformed: missing fleet, node, port or address"
    if fleet != fleet_id:
        return "other fleet"
    if node == self_id:
        return None
    if len(node) != 32 or any(c not in "0123456789abcdef" for c in node):
        return "malformed: node id is not a 32-hex fingerprint"
    return PeerFound(node, addresses[0], port, _text(properties, "name") or "", "mdns")


def static_peer_events(peers: Sequence[tuple[str, int]]) -> list[PeerFound]:
    return [PeerFound(None, host, port, f"{host}:{port}", "static") for host, port in peers]


def _local_ipv4_addresses() -> list[str]:
    out: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                out.append(a.address)
    return out or ["127.0.0.1"]


class Discovery:
    """Advertise this node and report peers of the same fleet into ``send_channel``.

    ``interfaces``: IPv4 addresses to bind mDNS to (``["127.0.0.1"]`` in tests);
    ``None`` means every interface. ``advertise_addresses`` default to the bound
    interfaces, else every non-loopback IPv4 address of the host.
    Use as ``async with Discovery(...) as d:``.
    """

    def __init__(self, *, fleet_id: str, node_id: str, port: int,
                 send_channel: trio.MemorySendChannel[DiscoveryEvent], name: str = "",
                 interfaces: Sequence[str] | None = None,
                 advertise_addresses: Sequence[str] | None = None,
                 static_peers: Sequence[tuple[str, int]] = (), mdns: bool = True) -> None:
        if not 0 < port < 65536:
            raise DiscoveryError(f"cannot advertise port {port}")
        self.fleet_id = fleet_id
        self.node_id = node_id
        self.port = port
        self.name = name
        self._send = send_channel
        self._interfaces = list(interfaces) if interfaces else None
        self._advertise = list(advertise_addresses or self._interfaces or [])
        self._static = list(static_peers)
        self._mdns = mdns
        self._props = advertisement_properties(fleet_id, node_id, name)
        self._token: trio.lowlevel.TrioToken | None = None
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._browser: ServiceBrowser | None = None
        # touched only on the browser thread:
        self._known: dict[str, PeerFound] = {}
        self._found = self._lost = self._other_fleet = self._malformed = 0

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        for event in static_peer_events(self._static):
            self._send.send_nowait(event)
        if not self._mdns:
            return
        addresses = self._advertise or _local_ipv4_addresses()
        try:
            packed = [socket.inet_aton(a) for a in addresses]
        except OSError:
            raise DiscoveryError(f"advertise addresses must be IPv4: {addresses}") from None
        self._info = ServiceInfo(
            SERVICE_TYPE, f"{self.node_id}.{SERVICE_TYPE}", addresses=packed, port=self.port,
            properties=self._props, server=f"shoal-{self.node_id}.local.")
        interfaces: Any = self._interfaces if self._interfaces else None
        try:
            if interfaces is None:
                self._zc = await trio.to_thread.run_sync(
                    lambda: Zeroconf(ip_version=IPVersion.V4Only))
            else:
                self._zc = await trio.to_thread.run_sync(
                    lambda: Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only))
        except OSError as exc:
            raise DiscoveryError(f"cannot start mDNS on {interfaces or 'all interfaces'}: "
                                 f"{exc}") from None
        zc = self._zc
        self._browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change]))
        await trio.to_thread.run_sync(zc.register_service, self._info)

    async def aclose(self) -> None:
        zc, browser, info = self._zc, self._browser, self._info
        self._zc = self._browser = self._info = None
        if browser is not None:
            await trio.to_thread.run_sync(browser.cancel)
        if zc is not None:
            if info is not None:
                await trio.to_thread.run_sync(zc.unregister_service, info)
            await trio.to_thread.run_sync(zc.close)

    def statistics(self) -> DiscoveryStatistics:
        return DiscoveryStatistics(self._info is not None, self._found, self._lost,
                                   self._other_fleet, self._malformed, len(self._known))

    # ---------------------------------------------------------------- browser thread

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        try:
            if state_change is ServiceStateChange.Removed:
                found = self._known.pop(name, None)
                if found is not None and found.node_id is not None:
                    self._lost += 1
                    self._emit(PeerLost(found.node_id))
                return
            info = zeroconf.get_service_info(service_type, name, timeout=_RESOLVE_TIMEOUT_MS)
            if info is None:
                return
            result = event_for_service(info.properties,
                                       info.parsed_addresses(IPVersion.V4Only), info.port,
                                       fleet_id=self.fleet_id, self_id=self.node_id)
        except Exception:  # never let a bad packet kill the browser thread
            log.exception("mDNS: could not handle %s (%s)", name, state_change)
            return
        if result is None:
            return
        if isinstance(result, str):
            if result == "other fleet":
                self._other_fleet += 1
            else:
                self._malformed += 1
                log.info("mDNS: ignored %s: %s", name, result)
            return
        if self._known.get(name) == result:
            return
        self._known[name] = result
        self._found += 1
        self._emit(result)

    def _emit(self, event: DiscoveryEvent) -> None:
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._deliver, event)

    def _deliver(self, event: DiscoveryEvent) -> None:
        # runs in the trio thread; a closed receiver must not crash the trio run
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.WouldBlock):
            self._send.send_nowait(event)
