"""The simulated network: bandwidth, latency, loss, duplication, reordering,
partitions and crashes, over :class:`~sim._loop.EventLoop` virtual time.

Theory of operation
-------------------
Each node has an uplink and a downlink with a rate in bytes/s. A message of
``size`` bytes from ``a`` to ``b``:

1. *serialises on a's uplink*: it starts when the uplink has finished the
   messages queued before it (``up_free[a]``) and occupies it for
   ``size / up[a]`` seconds;
2. its head reaches ``b`` one link latency (+ jitter) after it started;
3. *serialises on b's downlink*: it starts when the head has arrived and the
   downlink is free (``down_free[b]``) and occupies it for ``size / down[b]``;
4. it is delivered when both its downlink slot and its tail (uplink done +
   latency) have passed, and never before an earlier message on the same
   ``(a, b)`` connection (per-connection FIFO, as TCP gives) unless the message
   was picked for reordering.

So a transfer costs exactly its size in capacity on both ends (throughput of a
saturated link is exact), the two serialisations overlap (cut-through, not
store-and-forward) and a single message pays ``max(size/up, size/down) +
latency``. Compared with fluid fair sharing (processor sharing per link) the
model is FIFO: with k equal transfers queued on one uplink the last finishes at
the same time under both, but the first finishes after 1/k of that time here
instead of all finishing together. Total completion time of a swarm, which is
bounded by link capacity, is the same to within one chunk's serialisation per
hop; the error is the shape of completions inside a batch, which makes this
model slightly *optimistic* for the first chunk of a batch and pessimistic for
nothing. Small messages (``<= bypass_bytes``: gossip, requests, have-sets) are
still charged their capacity but do not wait behind queued bulk data, which is
what per-flow fair queuing (TCP flows sharing a link) gives a thin flow.

``on_sent`` (optional) is called ``(src, dst, message)`` when a bulk message (or a
small one of a type in ``sent_small``) has left the sender's uplink (``up_done``) --
what a real driver learns when its ``send`` returns. It is an observation, not a
change to the model: nothing above depends on it. The swarm scenarios wire it to
``NodeMachine.upload_done`` (``Fleet.report_uploads``) so that upload queues stay in
the swarm engine instead of in this FIFO.

Loss drops a message after it has used the sender's uplink. Duplication
delivers a second copy with its own jitter. A partition is a list of groups:
nodes in different groups cannot reach each other (checked at send and at
arrival, so a message in flight when the split happens is lost). A crashed
node loses everything queued to and from it (an epoch counter per node makes
events of the previous life stale).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from heapq import heappush
from typing import Any

from ._loop import EventLoop

__all__ = ["LinkClass", "LinkProfile", "Network", "NetworkStatistics"]

Deliver = Callable[[str, str, Any], None]  # (dst, src, message)


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Impairments applied to every link (per-link latency may be overridden)."""

    latency: float = 0.005        # one-way seconds
    jitter: float = 0.0           # uniform extra in [0, jitter]
    loss: float = 0.0             # probability a message is dropped
    duplicate: float = 0.0        # probability a message is delivered twice
    reorder: float = 0.0          # probability a message may overtake earlier ones
    reorder_delay: float = 0.05   # extra delay (uniform in [0, x]) of a reordered message
    bypass_bytes: int = 16 * 1024  # messages this small skip the bulk queue


@dataclass(frozen=True, slots=True)
class LinkClass:
    """A kind of link (a radio mesh, a satellite hop, a LAN) that joins named pairs.

    Every node on a class has its own interface on it: an uplink and a downlink of
    ``up``/``down`` bytes/s with their own FIFO queues, separate from the node's
    default link and from its other classes' interfaces. A message between a pair the
    class joins uses the sender's and the receiver's interfaces on it, the class's
    latency (+ uniform jitter) and loss (a message dropped after it used the uplink).
    A class that is down makes its pairs unreachable: a message is checked at send,
    at arrival and at delivery, so one still on the link when it goes down is lost.

    ``header_bytes`` (0: none) is what each packet adds on the wire, charged per
    ``mss`` bytes of a message (at least one packet): a message of ``size`` bytes costs
    ``size + header_bytes * ceil(size / mss)`` of both interfaces' capacity and of the
    class's byte count. 66 B per 1,448 B is TCP over IPv4 with timestamps on Ethernet
    (14 + 20 + 32 B), what a ``tbf`` on an Ethernet link counts (docs/SIMULATOR.md,
    "Checked against reality")."""

    name: str
    up: float                    # bytes/s of each member's interface
    down: float
    latency: float = 0.005
    jitter: float = 0.0
    loss: float = 0.0
    header_bytes: int = 0        # per packet on the wire
    mss: int = 1448              # payload bytes per packet

    def wire_bytes(self, size: int) -> int:
        """The bytes ``size`` bytes of messages take on this class's wire."""
        if not self.header_bytes:
            return size
        return size + self.header_bytes * max(1, -(-size // self.mss))


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    sent: int
    delivered: int
    lost: int
    blocked: int          # partition or crashed endpoint
    duplicated: int
    bytes_sent: int
    bytes_delivered: int


class Network:
    """Message transport between named endpoints in virtual time."""

    def __init__(self, loop: EventLoop, rng: random.Random, profile: LinkProfile = LinkProfile(),
                 deliver: Deliver | None = None) -> None:
        self.loop = loop
        self.rng = rng
        self.profile = profile
        self.deliver: Deliver = deliver if deliver is not None else _nowhere
        self._up: dict[str, float] = {}
        self._down: dict[str, float] = {}
        self._up_free: dict[str, float] = {}
        self._down_free: dict[str, float] = {}
        self._epoch: dict[str, int] = {}
        self._alive: dict[str, bool] = {}
        self._latency: dict[tuple[str, str], float] = {}
        self._last_delivery: dict[tuple[str, str], float] = {}
        self._last_head: dict[tuple[str, str], float] = {}
        self._group: dict[str, int] | None = None
        self.bytes_sent_by: dict[str, int] = {}
        # called (src, dst, message) when a bulk message has left src's uplink (the
        # "send returned" a real driver sees); not for a sender that crashed meanwhile
        self.on_sent: Deliver | None = None
        self.sent_small: tuple[type, ...] = ()   # types reported even below bypass_bytes
        self._sent = self._delivered = self._lost = self._blocked = self._dup = 0
        self._bytes_sent = self._bytes_delivered = 0
        # link classes (empty: every pair uses the nodes' default links, as before)
        self._classes: dict[str, LinkClass] = {}
        self._class_up: dict[str, bool] = {}
        self._pair_class: dict[tuple[str, str], str] = {}
        self._if_up_free: dict[tuple[str, str], float] = {}
        self._if_down_free: dict[tuple[str, str], float] = {}
        self.bytes_by_class: dict[str, int] = {}

    # ------------------------------------------------------------------ topology

    def add_node(self, name: str, up: float, down: float) -> None:
        """``up``/``down`` in bytes/s; 0 or inf means unlimited."""
        self._up[name] = up if up > 0 else float("inf")
        self._down[name] = down if down > 0 else float("inf")
        self._up_free[name] = 0.0
        self._down_free[name] = 0.0
        self._epoch.setdefault(name, 0)
        self._alive[name] = True
        self.bytes_sent_by.setdefault(name, 0)

    def rates(self, name: str) -> tuple[float, float]:
        return self._up[name], self._down[name]

    def set_latency(self, a: str, b: str, latency: float) -> None:
        """Override the one-way latency of the link a<->b (both directions)."""
        self._latency[(a, b)] = latency
        self._latency[(b, a)] = latency

    def latency(self, a: str, b: str) -> float:
        """The one-way latency of the link a->b (without jitter)."""
        if self._pair_class:
            cls = self._pair_class.get((a, b))
            if cls is not None:
                return self._classes[cls].latency
        return self._latency.get((a, b), self.profile.latency)

    # ------------------------------------------------------------------ link classes

    @property
    def link_classes(self) -> dict[str, LinkClass]:
        return self._classes

    def add_link_class(self, link: LinkClass) -> None:
        self._classes[link.name] = link
        self._class_up[link.name] = True
        self.bytes_by_class.setdefault(link.name, 0)

    def join(self, a: str, b: str, cls: str) -> None:
        """Let ``a`` and ``b`` reach each other over class ``cls`` (the last class that
        joined a pair wins). Once any pair is joined, pairs no class joins are unreachable."""
        if cls not in self._classes:
            raise KeyError(f"no link class {cls!r}")
        self._pair_class[(a, b)] = cls
        self._pair_class[(b, a)] = cls

    def link_class(self, a: str, b: str) -> str | None:
        return self._pair_class.get((a, b))

    def joined(self, a: str, b: str) -> bool:
        """Whether some link joins ``a`` and ``b`` (up or down)."""
        return not self._pair_class or (a, b) in self._pair_class

    def set_class_state(self, cls: str, up: bool) -> None:
        """Bring every link of class ``cls`` up or down (messages in flight on it are lost)."""
        if self._class_up[cls] != up:
            self._class_up[cls] = up
            self.loop.log("link", cls, up)

    def class_is_up(self, cls: str) -> bool:
        return self._class_up[cls]

    def split(self, groups: Iterable[Iterable[str]]) -> None:
        """Start a partition: nodes of different groups cannot reach each other.
        Nodes not named in any group reach everyone."""
        mapping: dict[str, int] = {}
        for i, group in enumerate(groups):
            for name in group:
                mapping[name] = i
        self._group = mapping
        self.loop.log("split", tuple(sorted(mapping.items())))

    def heal(self) -> None:
        self._group = None
        self.loop.log("heal")

    def reachable(self, a: str, b: str) -> bool:
        if not (self._alive.get(a) and self._alive.get(b)):
            return False
        if self._pair_class:
            cls = self._pair_class.get((a, b))
            if cls is None or not self._class_up[cls]:
                return False
        g = self._group
        if g is None:
            return True
        ga, gb = g.get(a), g.get(b)
        return ga is None or gb is None or ga == gb

    def crash(self, name: str) -> None:
        """Lose everything in flight to and from ``name``; it stays down until restart."""
        self._alive[name] = False
        self._epoch[name] += 1
        self._up_free[name] = self.loop.now
        self._down_free[name] = self.loop.now
        for table in (self._last_delivery, self._last_head):
            for key in [k for k in table if name in k]:
                del table[key]
        self._free_interfaces(name)
        self.loop.log("crash", name)

    def _free_interfaces(self, name: str) -> None:
        for cls in self._classes:
            self._if_up_free[(name, cls)] = self.loop.now
            self._if_down_free[(name, cls)] = self.loop.now

    def restart(self, name: str) -> None:
        self._alive[name] = True
        self._up_free[name] = self.loop.now
        self._down_free[name] = self.loop.now
        self._free_interfaces(name)
        self.loop.log("restart", name)

    def is_up(self, name: str) -> bool:
        return self._alive.get(name, False)

    # ------------------------------------------------------------------ transfer

    def send(self, src: str, dst: str, message: Any, size: int) -> bool:
        """Queue ``message`` (``size`` bytes on the wire). False if it was dropped at once
        (partition, crashed endpoint); loss is silent, as on a real link."""
        loop = self.loop
        now = loop.now
        alive = self._alive
        if not (alive.get(src) and alive.get(dst)) or (
                (self._pair_class or self._group is not None) and not self.reachable(src, dst)):
            self._blocked += 1
            return False
        if self._pair_class:
            cls = self._pair_class.get((src, dst))
            if cls is not None:
                self._send_on_class(src, dst, message, size, self._classes[cls])
                return True
        p = self.profile
        self._sent += 1
        self._bytes_sent += size
        self.bytes_sent_by[src] += size
        up_time = size / self._up[src]
        if size <= p.bypass_bytes:
            up_start = now
            self._up_free[src] = max(self._up_free[src], now) + up_time
        else:
            up_start = max(now, self._up_free[src])
            self._up_free[src] = up_start + up_time
        up_done = up_start + up_time
        if self.on_sent is not None and (size > p.bypass_bytes
                                         or type(message) in self.sent_small):
            self.loop.call_at(up_done, self._sent_hook, src, dst, message, self._epoch[src])
        rng = self.rng
        if p.loss and rng.random() < p.loss:
            self._lost += 1
            return True
        copies = 2 if p.duplicate and rng.random() < p.duplicate else 1
        if copies == 2:
            self._dup += 1
        base = self._latency.get((src, dst), p.latency)
        epochs = (self._epoch[src], self._epoch[dst])
        for _ in range(copies):
            lat = base + (rng.random() * p.jitter if p.jitter else 0.0)
            ordered = True
            if p.reorder and rng.random() < p.reorder:
                lat += rng.random() * p.reorder_delay
                ordered = False
            head = up_start + lat
            if ordered:  # a connection delivers in send order: heads arrive in order too
                key = (src, dst)
                last = self._last_head.get(key, 0.0)
                if head < last:
                    head = last
                self._last_head[key] = head
            # loop.call_at(head, ...), inlined
            loop._seq += 1
            heappush(loop._heap, (head if head >= now else now, loop._seq, self._arrive,
                                  (src, dst, message, size, up_done + lat, epochs, ordered)))
        return True

    def _send_on_class(self, src: str, dst: str, message: Any, size: int,
                       link: LinkClass) -> None:
        """:meth:`send` over the pair's link class: the same model on the two ends'
        interfaces of that class, with its latency, jitter and loss."""
        now = self.loop.now
        bypass = self.profile.bypass_bytes
        size = link.wire_bytes(size)
        self._sent += 1
        self._bytes_sent += size
        self.bytes_sent_by[src] += size
        self.bytes_by_class[link.name] += size
        key = (src, link.name)
        free = self._if_up_free.get(key, 0.0)
        up_time = size / link.up if link.up > 0 else 0.0
        if size <= bypass:
            up_start = now
            self._if_up_free[key] = max(free, now) + up_time
        else:
            up_start = max(now, free)
            self._if_up_free[key] = up_start + up_time
        up_done = up_start + up_time
        if self.on_sent is not None and (size > bypass or type(message) in self.sent_small):
            self.loop.call_at(up_done, self._sent_hook, src, dst, message, self._epoch[src])
        rng = self.rng
        if link.loss and rng.random() < link.loss:
            self._lost += 1
            return
        lat = link.latency + (rng.random() * link.jitter if link.jitter else 0.0)
        head = up_start + lat
        pair = (src, dst)
        last = self._last_head.get(pair, 0.0)
        if head < last:
            head = last
        self._last_head[pair] = head
        self.loop.call_at(head, self._arrive_on_class, src, dst, message, size, up_done + lat,
                          (self._epoch[src], self._epoch[dst]), link)

    def _arrive_on_class(self, src: str, dst: str, message: Any, size: int, tail: float,
                         epochs: tuple[int, int], link: LinkClass) -> None:
        if self._stale(src, dst, epochs) or not self.reachable(src, dst):
            self._blocked += 1
            return
        now = self.loop.now
        key = (dst, link.name)
        free = self._if_down_free.get(key, 0.0)
        down_time = size / link.down if link.down > 0 else 0.0
        if size <= self.profile.bypass_bytes:
            start = now
            self._if_down_free[key] = max(free, now) + down_time
        else:
            start = max(now, free)
            self._if_down_free[key] = start + down_time
        at = max(start + down_time, tail)
        pair = (src, dst)
        last = self._last_delivery.get(pair, 0.0)
        if at < last:
            at = last
        self._last_delivery[pair] = at
        self.loop.call_at(at, self._deliver_on_class, src, dst, message, size, epochs)

    def _deliver_on_class(self, src: str, dst: str, message: Any, size: int,
                          epochs: tuple[int, int]) -> None:
        """A message whose tail was still on a link that went down is lost too."""
        if not self.reachable(src, dst):
            self._blocked += 1
            return
        self._deliver(src, dst, message, size, epochs)

    def _sent_hook(self, src: str, dst: str, message: Any, epoch: int) -> None:
        if self.on_sent is not None and self._epoch[src] == epoch and self._alive[src]:
            self.on_sent(src, dst, message)

    def _stale(self, src: str, dst: str, epochs: tuple[int, int]) -> bool:
        return (self._epoch[src], self._epoch[dst]) != epochs

    def _arrive(self, src: str, dst: str, message: Any, size: int, tail: float,
                epochs: tuple[int, int], ordered: bool) -> None:
        epoch, alive = self._epoch, self._alive
        if ((epoch[src], epoch[dst]) != epochs or not (alive.get(src) and alive.get(dst))
                or ((self._pair_class or self._group is not None)
                    and not self.reachable(src, dst))):
            self._blocked += 1
            return
        loop = self.loop
        now = loop.now
        down_time = size / self._down[dst]
        if size <= self.profile.bypass_bytes:
            start = now
            self._down_free[dst] = max(self._down_free[dst], now) + down_time
        else:
            start = max(now, self._down_free[dst])
            self._down_free[dst] = start + down_time
        at = max(start + down_time, tail)
        if ordered:
            key = (src, dst)
            last = self._last_delivery.get(key, 0.0)
            if at < last:
                at = last
            self._last_delivery[key] = at
        # loop.call_at(at, ...), inlined (at >= now)
        loop._seq += 1
        heappush(loop._heap, (at, loop._seq, self._deliver, (src, dst, message, size, epochs)))

    def _deliver(self, src: str, dst: str, message: Any, size: int,
                 epochs: tuple[int, int]) -> None:
        epoch = self._epoch
        if (epoch[src], epoch[dst]) != epochs or not self._alive[dst]:
            self._blocked += 1
            return
        self._delivered += 1
        self._bytes_delivered += size
        self.deliver(dst, src, message)

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(self._sent, self._delivered, self._lost, self._blocked,
                                 self._dup, self._bytes_sent, self._bytes_delivered)


def _nowhere(dst: str, src: str, message: Hashable) -> None:  # pragma: no cover
    raise RuntimeError("Network.deliver was not set")
