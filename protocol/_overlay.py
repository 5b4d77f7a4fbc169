"""The overlay: which peers a node keeps sessions with (a bounded, random, slowly
rotated active set), and which it merely knows.

Theory of operation
-------------------
A node *knows* peers (the passive set: node id -> dialable address, at most
``known_max``, filled by discovery -- mDNS, static peers -- and by the hints of
:class:`OverlayFull`) and keeps sessions with a few of them (the *active* set,
after HyParView's active view and BitTorrent's bounded peer set). Gossip, pushes,
have-announcements and chunk requests go to connected peers only, so they all go
over the active set; the overlay is what bounds them.

* **Fill.** While ``active + dialling < degree``, the node dials known peers
  chosen at random (the injected rng) among those not connected, not being
  dialled and not waiting out a back-off: a :class:`~._events.DialPeer` output;
  the driver answers with ``peer_connected`` or ``dial_failed``. A discovery does
  not dial at once: the fill it calls for waits ``SETTLE`` (0.5-1 s), so peers
  discovered together are drawn from together. (Dialling each peer as it is
  found made every node dial the first ``degree`` it heard of -- in the simulator,
  where all are found in the same order, the first ``degree + 1`` nodes formed a
  clique cut off from the rest.)
* **Small fleets.** While a node knows fewer than ``mesh_up_to`` peers (and more than
  ``degree``), it aims at all of them instead of ``degree``: a fleet that small is a
  full mesh, where sessions cost little and every peer is both a source and a
  requester of chunks (on the 13-node radio fleet of ``benchmarks/fleets/radio.toml``
  a random degree-8 overlay left uplinks with chunks others lacked unasked). Once the
  known set reaches ``mesh_up_to``, the aim is ``degree`` again and the trim below
  brings the sessions down to it.
* **Bound.** A new session (either direction) that would make ``active`` exceed
  ``degree + slack`` is not kept: an inbound one is declined politely -- an
  :class:`OverlayFull` naming up to ``hints`` known peers (with addresses), then
  a :class:`~._events.ClosePeer` -- and an outbound one is closed. The slack lets
  a node that is already at ``degree`` take newcomers, so a fleet whose nodes all
  reached ``degree`` still admits a node that joins late.
* **Back-off.** A failed dial, a decline, and a session that ended put the peer
  on an exponential back-off (``retry_base * 2**strikes`` up to ``retry_max``,
  jittered to [d/2, d]); strikes are forgiven once a session with the peer has
  lasted ``STABLE_AFTER`` seconds. A dialer told "full" tries the hinted peers
  next, not the same one again: no redial storm.
* **Repair.** A session that ends (peer crashed, left, was dropped) frees a slot;
  the fill above dials a replacement at once.
* **Trim.** The slack is for admitting, not for keeping: a node with more than
  ``degree`` open sessions closes one ``TRIM_AFTER`` (2-4 s, jittered) after it went
  above, then one more every 2-4 s while still above. It closes a random open peer
  among the least loaded (``load``: the chunk transfers under way with it, from the
  node's swarm; pieces queued on a closed session are lost, many of them on a slow
  link with a deep uplink queue)
  other than the most recently added one -- the newcomer that took the node above is
  kept (as HyParView's active view keeps a joiner and drops a random other), since a
  node joining a fleet whose nodes all sit at ``degree`` is admitted only through the
  slack, and dropping the newest would turn it away from every node it reached. The
  closed peer is told so (``OverlayFull``, with hints); the closer bans it for
  ``rotate_interval`` as after a rotation. One close at a time, seconds apart.
  (Trimming once a minute, by rotation alone, left a 32-daemon fleet at 8-10
  sessions per node through a whole rollout, each stored chunk announced to ~1.35
  times as many peers.)
* **Hold.** A node whose kept session (one older than ``TRIM_AFTER``: not a decline)
  a peer closed on purpose -- a trim or a rotation -- does not refill that slot for
  ``HOLD`` (10-20 s): ``degree - 1`` sessions are enough meanwhile (degree >= 3). Were
  it to refill at once, the node it dials (most sit at ``degree``) would go above,
  trim a third, which would refill, ...: the excess walks the fleet until it meets a
  node short of a session, a dial every 2-4 s that way. With the hold, such nodes
  wait at ``degree - 1`` and a refill soon finds one of them. (In the test's 100-node
  fleet in memory: ~4.6 dials per node a minute without the hold, ~1.9 with it, ~1.2
  with no trim at all but 8.6-9.5 sessions per node instead of 7.8-8.0.) A second loss
  during the hold, or any loss of a session the node had not been told about, is
  repaired at once.
* **Rotation.** Every ``rotate_interval`` (jittered by +-25 %) a node closes one
  active peer chosen at random among the least loaded -- any beyond ``degree`` first
  (should the trim not have done so yet), else one to be replaced by a fresh known
  peer; while every session carries a transfer the rotation is retried every
  ``ROTATE_RETRY`` s, for one ``rotate_interval`` at most -- so no node stays
  behind the same (perhaps slow) neighbours for ever, and an overlay that a
  partition cut in two mixes again after it heals.

Closing a peer on purpose (rotation, excess) is not a failure: the closer sends the
peer an ``OverlayFull`` first, and both gossip engines forget the other (no suspicion
of a node that is alive: a plain disconnect is suspected after ``suspect_after``, and
the suspected node would rewrite its record to refute it -- in the simulator every
declined dial cost two record writes that way, and 300 nodes spent their time merging
them). The closer does not redial the peer before ``rotate_interval`` has passed; the
peer backs off from the closer as from a decline.

Degree 0 turns the overlay off: the node dials nobody, closes nothing and accepts
every session (the simulator's fixed topologies, where the driver decides).

Everything here is a pure function of the inputs, the injected rng and ``now``;
the module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ._codec import message, struct
from ._config import OverlayConfig
from ._errors import InvalidValue
from ._events import ClosePeer, DialPeer, Output, SendMessage
from ._rng import Rng

__all__ = ["Overlay", "OverlayFull", "PeerHint", "OverlayStatistics", "STABLE_AFTER",
           "TRIM_AFTER", "MAX_HINTS", "MAX_ADDRESS"]

SETTLE = 0.5             # seconds a discovery waits for others before a fill considers it
TRIM_AFTER = 2.0         # seconds (x1-2) above the degree before one session is closed
HOLD = 10.0              # seconds (x1-2) a node closed on purpose by a peer waits to refill
STABLE_AFTER = 30.0      # seconds a session must last before the peer's strikes are forgiven
MAX_HINTS = 32           # peers an OverlayFull may name
ROTATE_RETRY = 5.0       # seconds a rotation waits while every session carries a transfer
MAX_ADDRESS = 262        # "host:port" (a DNS name of 253 and a port) at most


def _check_node(node: str) -> None:
    if len(node) != 32 or not all(c in "0123456789abcdef" for c in node):
        raise InvalidValue("a node id is 32 lowercase hex digits")


@struct
@dataclass(frozen=True, slots=True)
class PeerHint:
    """A peer the sender knows: its node id and an address to dial (``host:port``)."""

    node: str
    address: str

    def __post_init__(self) -> None:
        _check_node(self.node)
        if not 0 < len(self.address) <= MAX_ADDRESS:
            raise InvalidValue(f"a peer address is 1..{MAX_ADDRESS} characters")


@message(60)
@dataclass(frozen=True, slots=True)
class OverlayFull:
    """"My active set is full; try these peers instead." Sent to a peer whose new
    session is declined, just before the session is closed."""

    peers: tuple[PeerHint, ...]

    def __post_init__(self) -> None:
        if len(self.peers) > MAX_HINTS:
            raise InvalidValue(f"an OverlayFull names at most {MAX_HINTS} peers")


@dataclass(frozen=True, slots=True)
class OverlayStatistics:
    degree: int
    active: int              # sessions kept now
    known: int               # peers known (passive set)
    dialling: int            # dials asked for and not answered yet
    dials: int               # DialPeer outputs
    dial_failures: int
    declined: int            # sessions we declined (full)
    declined_by_peers: int   # OverlayFull messages received
    closed_excess: int       # sessions closed above the bound or shrinking to degree
    rotations: int           # active peers replaced by rotation


class Overlay:
    """See the module docstring. Inputs append outputs; take them with :meth:`take_outputs`."""

    def __init__(self, *, node_id: str, config: OverlayConfig, rng: Rng, now: float) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self._known: dict[str, str] = {}       # peer -> address (insertion order: determinism)
        self._active: dict[str, float] = {}    # peer -> connected since
        self._dialling: dict[str, float] = {}  # peer -> dial asked at
        self._closing: set[str] = set()        # closed on purpose, not yet disconnected
        self._strikes: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}  # peer -> not dialled before
        self._outputs: list[Output] = []
        # (no draw when off: the fixed topologies keep the rng stream they had)
        self._next_rotate = (now + config.rotate_interval * rng.uniform(0.75, 1.25)
                             if config.rotate_interval > 0 and config.degree > 0 else math.inf)
        self._wake = math.inf
        self._fill_at = math.inf               # a fill a discovery called for
        self._trim_at = math.inf               # when one session above the degree is closed
        self._hold_until = -math.inf           # one slot short of the degree is fine until
        self._dials = self._failures = self._declined = self._declined_by = 0
        self._excess = self._rotations = 0
        self._postponed = 0                    # retries of the rotation now due
        # peer -> chunk transfers under way with it (set by the node from its swarm)
        self.load: Callable[[str, float], int] | None = None

    @property
    def enabled(self) -> bool:
        return self.config.degree > 0

    @property
    def active(self) -> frozenset[str]:
        return frozenset(self._active)

    @property
    def known(self) -> dict[str, str]:
        return dict(self._known)

    @property
    def degree(self) -> int:
        """Sessions aimed at: ``degree``, or every known peer while they are fewer than
        ``mesh_up_to`` (see "Small fleets")."""
        cfg = self.config
        known = len(self._known)
        return known if 0 < cfg.degree < known < cfg.mesh_up_to else cfg.degree

    @property
    def limit(self) -> int:
        """Most sessions kept at once: ``degree + slack``."""
        return self.degree + self.config.slack

    # ------------------------------------------------------------------ discovery
    def peer_known(self, peer: str, address: str, now: float) -> None:
        """Discovery (or a hint) says ``peer`` can be dialled at ``address``."""
        if not self.enabled or peer == self.node_id or not address:
            return
        if peer not in self._known and len(self._known) >= self.config.known_max:
            spare = [p for p in self._known if p not in self._active and p not in self._dialling]
            if not spare:
                return
            victim = spare[self._rng.randrange(0, len(spare))]
            del self._known[victim]
            self._strikes.pop(victim, None)
            self._retry_at.pop(victim, None)
        self._known[peer] = address
        if self._fill_at == math.inf:
            self._fill_at = now + SETTLE * self._rng.uniform(1.0, 2.0)
        self._wake = min(self._wake, self._fill_at)   # (no full refresh: O(1) a discovery)

    def peer_lost(self, peer: str, now: float) -> None:
        """Discovery says ``peer`` has left (its session, if any, stays until it ends)."""
        if self._known.pop(peer, None) is not None:
            self._strikes.pop(peer, None)
            self._retry_at.pop(peer, None)
            self._refresh(now)

    def ban(self, peer: str, until: float) -> None:
        """The node dropped ``peer`` (``DropPeer``): do not dial it before ``until``."""
        self._retry_at[peer] = max(self._retry_at.get(peer, -math.inf), until)

    # ------------------------------------------------------------------ sessions
    def accept(self, peer: str, inbound: bool, now: float) -> bool:
        """A session with ``peer`` has opened: keep it (True) or decline it (False; the
        outputs close it, and tell an inbound peer whom to try instead)."""
        if not self.enabled:
            return True
        self._dialling.pop(peer, None)
        if peer in self._active or len(self._active) < self.limit:
            self._active[peer] = now
            self._refresh(now)
            return True
        self._declined += 1
        if inbound:
            self._outputs.append(SendMessage(peer, OverlayFull(self._hints(peer))))
        self._outputs.append(ClosePeer(peer, f"overlay full ({len(self._active)} sessions, "
                                             f"degree {self.config.degree})"))
        self._strike(peer, now)
        self._refresh(now)
        return False

    def peer_disconnected(self, peer: str, now: float) -> bool:
        """A session ended; True when this node had closed it on purpose."""
        if not self.enabled:
            return False
        since = self._active.pop(peer, None)
        on_purpose = peer in self._closing
        self._closing.discard(peer)
        if since is not None:
            if now - since >= STABLE_AFTER:
                self._strikes.pop(peer, None)
            if on_purpose:
                self.ban(peer, now + max(self.config.rotate_interval, self.config.retry_max))
            else:
                self._backoff(peer, now)
        self._fill(now)
        return on_purpose

    def dial_failed(self, peer: str, now: float) -> None:
        """A dial the overlay asked for did not produce a session."""
        if self._dialling.pop(peer, None) is None and peer in self._active:
            return
        if peer not in self._active:
            self._failures += 1
            self._strike(peer, now)
        self._fill(now)

    def receive_full(self, peer: str, msg: OverlayFull, now: float) -> None:
        """``peer`` declined our session: back off from it, learn whom it suggests."""
        self._declined_by += 1
        self._dialling.pop(peer, None)
        self._strike(peer, now)
        for hint in msg.peers:
            if hint.node != self.node_id and hint.node not in self._known:
                self.peer_known(hint.node, hint.address, now)
        self._fill_at = math.inf
        if peer in self._active:
            self._closing.add(peer)        # its silence from now on means nothing
            self._outputs.append(ClosePeer(peer, "the peer's overlay is full"))
            if now - self._active[peer] >= TRIM_AFTER and self._hold_until <= now:
                # a kept session trimmed or rotated away (not a decline): see "Trim"
                self._hold_until = now + HOLD * self._rng.uniform(1.0, 2.0)
        self._fill(now)

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float:
        return self._wake

    def on_timer(self, now: float) -> None:
        if not self.enabled or now < self._wake:
            return
        timeout = self.config.dial_timeout
        for peer, at in list(self._dialling.items()):
            if now - at >= timeout:        # the driver never answered: count it failed
                del self._dialling[peer]
                self._failures += 1
                self._strike(peer, now)
        if now >= self._fill_at:
            self._fill_at = math.inf
        if now >= self._trim_at:
            self._trim_at = math.inf
            self._trim(now)
        if now >= self._next_rotate:
            self._next_rotate = now + self.config.rotate_interval * self._rng.uniform(0.75, 1.25)
            self._rotate(now)
        self._fill(now)

    def _rotate(self, now: float) -> None:
        open_ = sorted(p for p in self._active if p not in self._closing)
        if not open_:
            return
        if len(open_) > self.degree:
            self._excess += 1
            self._close(self._rng.choice(self._least_loaded(open_, now)[0]),
                        "overlay: above its degree", now)
        elif len(open_) >= self.degree and self._candidates(now):
            quiet, load = self._least_loaded(open_, now)
            if load > 0 and self._postponed * ROTATE_RETRY < self.config.rotate_interval:
                self._postponed += 1   # see "Rotation": not in the middle of a transfer
                self._next_rotate = now + ROTATE_RETRY
                return
            self._rotations += 1
            self._close(self._rng.choice(quiet), "overlay: rotated", now)
            # (the slot it frees is filled at once, without waiting for the disconnect:
            # a peer being closed no longer counts)
        self._postponed = 0

    def _trim(self, now: float) -> None:
        """Close one open session above the degree: one of the least loaded other than
        the newest, at random."""
        open_ = sorted((since, p) for p, since in self._active.items() if p not in self._closing)
        if len(open_) <= self.degree:
            return
        older = [p for _, p in open_[:-1]]   # (the newest is kept: it may be a joiner)
        self._excess += 1
        self._close(self._rng.choice(self._least_loaded(older, now)[0]),
                    "overlay: above its degree", now)

    def _least_loaded(self, peers: list[str], now: float) -> tuple[list[str], int]:
        """The peers of ``peers`` with the fewest chunk transfers under way (``load``),
        and that number (all of them and 0 without a ``load``)."""
        if self.load is None:
            return peers, 0
        loads = [self.load(p, now) for p in peers]
        least = min(loads)
        return [p for p, n in zip(peers, loads, strict=True) if n == least], least

    def _close(self, peer: str, reason: str, now: float) -> None:
        """Close a kept session on purpose, telling the peer so (and whom to try)."""
        self._closing.add(peer)
        self._outputs.append(SendMessage(peer, OverlayFull(self._hints(peer))))
        self._outputs.append(ClosePeer(peer, reason))

    # ------------------------------------------------------------------ helpers
    def _strike(self, peer: str, now: float) -> None:
        self._strikes[peer] = self._strikes.get(peer, 0) + 1
        self._backoff(peer, now)

    def _backoff(self, peer: str, now: float) -> None:
        n = self._strikes.get(peer, 0)
        d = min(self.config.retry_max, self.config.retry_base * 2.0 ** min(n, 30))
        self.ban(peer, now + self._rng.uniform(d / 2, d))

    def _candidates(self, now: float) -> list[str]:
        return [p for p in self._known
                if p not in self._active and p not in self._dialling
                and self._retry_at.get(p, -math.inf) <= now]

    def _fill(self, now: float) -> None:
        if not self.enabled:
            return
        open_ = sum(1 for p in self._active if p not in self._closing)
        want = self._target(now) - open_ - len(self._dialling)
        if want > 0:
            candidates = self._candidates(now)
            if candidates:
                for peer in self._rng.sample(candidates, min(want, len(candidates))):
                    self._dialling[peer] = now
                    self._dials += 1
                    self._outputs.append(DialPeer(peer, self._known[peer]))
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        """Recompute when the overlay next needs a timer: a rotation, a dial timing out,
        or (while short of ``degree``) a back-off ending."""
        open_ = sum(1 for p in self._active if p not in self._closing)
        if open_ <= self.degree:
            self._trim_at = math.inf
        elif self._trim_at == math.inf:
            self._trim_at = now + TRIM_AFTER * self._rng.uniform(1.0, 2.0)
        wake = min(self._next_rotate, self._fill_at, self._trim_at)
        if self._dialling:
            wake = min(wake, min(self._dialling.values()) + self.config.dial_timeout)
        if open_ + len(self._dialling) < self.degree and self._hold_until > now:
            wake = min(wake, self._hold_until)   # the hold ends
        if open_ + len(self._dialling) < self._target(now):
            ready = False
            for p in self._known:
                if p in self._active or p in self._dialling:
                    continue
                t = self._retry_at.get(p, -math.inf)
                if t > now:
                    wake = min(wake, t)          # its back-off ends
                else:
                    ready = True
            if ready and self._fill_at == math.inf:
                wake = now                       # (only after an input that did not fill)
        self._wake = wake

    def _target(self, now: float) -> int:
        """Sessions a fill aims at: ``degree``, one fewer while a hold lasts."""
        degree = self.degree
        return degree - 1 if degree >= 3 and now < self._hold_until else degree

    def _hints(self, exclude: str) -> tuple[PeerHint, ...]:
        """Up to ``hints`` known peers, at random, other than ``exclude``; those not in
        the active set first (they are likelier to have room)."""
        spare = [p for p in self._known if p != exclude and p not in self._active]
        busy = [p for p in self._known if p != exclude and p in self._active]
        k = self.config.hints
        chosen = self._rng.sample(spare, min(k, len(spare)))
        if len(chosen) < k and busy:
            chosen += self._rng.sample(busy, min(k - len(chosen), len(busy)))
        return tuple(PeerHint(p, self._known[p]) for p in chosen)

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def statistics(self) -> OverlayStatistics:
        return OverlayStatistics(self.config.degree, len(self._active), len(self._known),
                                 len(self._dialling), self._dials, self._failures,
                                 self._declined, self._declined_by, self._excess,
                                 self._rotations)

