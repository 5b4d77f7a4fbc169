"""Manifest bodies fetched by id from peers: the chunk lists only nodes that need them
hold (issue 21, "manifests as content"; ``_manifest_head``).

Theory of operation
-------------------
The ledger carries signed heads. A node whose live intent makes a version its target
needs that manifest's chunk lists to fetch the variant (``Deployments.bodies_wanted``);
until the body is here the model waits, not blocked ("fetching the manifest's chunk
list from a peer"). :class:`ManifestFetch` asks for it:

* **Whom.** One connected peer at a time, first those whose record says they hold the
  version or are fetching it (they needed the body: ``holders``), in turn; if none
  does, the node that wrote the head's entry (the publisher's); else every connected
  peer in turn. A further ask goes to the next peer
  ``ASK_EVERY`` seconds later, until the body arrives or nothing wants it any more.
  Several bodies due for one peer go in one :class:`BodyWant` (at most ``WANT_IDS``).
* **Answers.** A peer that holds a body named in a want answers with the whole
  manifest (:class:`BodyAnswer`), at most ``ANSWER_RATE`` wants a second per asking
  peer (burst ``ANSWER_BURST``): a body can be megabytes. A peer that holds the head
  but not the body *relays*: for ``RELAY_FOR`` seconds it asks its own peers (never
  those that asked it) as if it wanted the body, and sends it on to every peer that
  asked once it arrives. So a want walks the overlay until it meets a holder and the
  body comes back along the walk, at the pace of round trips: a node whose neighbours
  are all out of scope still gets the chunk list, and the nodes on the way keep it
  (bounded, like every body, by the live heads). Asks of the same body are spaced
  ``ASK_EVERY`` seconds, doubling up to 8x.
* **Cancel.** Once a body is here, every other peer asked for it and not answered yet
  is told (:class:`BodyCancel`); a relay whose askers have all cancelled stops, and
  cancels its own asks in turn. In a fleet-wide rollout every node asks at once, so
  walks meet in cycles (X waits on Y, Y on Z, Z on X) that only the next ask, a second
  later, breaks; then the body reaches X along two walks. Without cancels about one
  body in two came twice; with them about one in five (a copy already on its way).
* **Keeping.** A body is kept only if this node wants it (its id, the hash of its
  content, is one asked for) and the ledger's head describes it
  (:meth:`~._ledger.Ledger.add_body`: the head's signature binds the id, the id every
  byte). A body nobody here asked for -- a late answer to an ask another peer already
  answered -- is counted and dropped; it costs its sender nothing else, since an honest
  peer sends one in a race. A body whose id matches but that fails its checks is the
  publisher's fault, not the sender's: counted, and asked for again elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

from ._codec import message
from ._errors import InvalidValue, MalformedMessage, ShoalError
from ._events import Output, SendMessage
from ._ledger import Ledger
from ._manifest import Manifest
from ._rate import TokenBuckets
from ._types import ModelOperationalStatus

__all__ = ["BodyWant", "BodyAnswer", "BodyCancel", "ManifestFetch", "FetchStatistics"]

ASK_EVERY = 1.0         # seconds before a body still missing is asked of the next peer
#                         (doubling after each ask, up to 8x)
RELAY_FOR = 30.0        # seconds a node fetches a body it lacks for a peer that asked
WANT_IDS = 8            # bodies one want may name
ANSWER_RATE = 0.5       # wants answered a second per asking peer...
ANSWER_BURST = 4.0      # ...with a bucket this deep
_S = ModelOperationalStatus
_HOLDS = (_S.DOWNLOADING, _S.LOADING, _S.OPERATIONAL, _S.DEGRADED)   # the body is there


def _check_ids(ids: tuple[bytes, ...], what: str) -> None:
    if not 0 < len(ids) <= WANT_IDS:
        raise InvalidValue(f"{what} names 1-{WANT_IDS} manifests")
    if any(len(i) != 32 for i in ids):
        raise InvalidValue("a manifest id is 32 bytes")


@message(26)
@dataclass(frozen=True, slots=True)
class BodyWant:
    """Send me the whole manifests (chunk lists) of these ids (32 bytes each)."""

    manifest_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ids(self.manifest_ids, "a body want")


@message(27)
@dataclass(frozen=True, slots=True)
class BodyAnswer:
    """One whole manifest, answering a :class:`BodyWant`."""

    manifest: Manifest


@message(28)
@dataclass(frozen=True, slots=True)
class BodyCancel:
    """I need none of these bodies from you any more (one came from another peer)."""

    manifest_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ids(self.manifest_ids, "a cancel")


@dataclass(frozen=True, slots=True)
class FetchStatistics:
    wanted: int            # bodies wanted now
    asks_sent: int         # BodyWant messages sent
    bodies_added: int      # bodies received and kept
    bodies_sent: int       # bodies sent to asking peers
    answers_refused: int   # wants not answered: over the asking peer's rate
    unsolicited: int       # bodies received that nobody here wanted (dropped)
    rejected: int          # wanted bodies that failed their checks (dropped)
    relayed: int = 0       # bodies fetched for a peer that asked and then sent to it
    cancels: int = 0       # cancels sent: a body asked of a peer came from another


FetchMessage = BodyWant | BodyAnswer | BodyCancel


class ManifestFetch:
    """Asks peers for the bodies this node needs and answers their asks."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._wanted: dict[str, tuple[float, int]] = {}   # id -> (next ask, asks so far)
        self._own: set[str] = set()                      # ids this node's targets need
        self._relay: dict[str, tuple[float, set[str]]] = {}   # id -> (until, who asked us)
        self._asked: dict[str, set[str]] = {}      # id -> peers asked whose answer may come
        self._outputs: list[Output] = []
        self._tokens = TokenBuckets(ANSWER_RATE, ANSWER_BURST)
        self._asks = self._added = self._sent = self._refused = 0
        self._unsolicited = self._rejected = self._relayed = self._cancels = 0

    @staticmethod
    def handles(msg: object) -> TypeGuard[FetchMessage]:
        return isinstance(msg, (BodyWant, BodyAnswer, BodyCancel))

    def want(self, manifest_ids: set[str], now: float) -> None:
        """Exactly these bodies are wanted here now (new ones are due at once)."""
        self._own = set(manifest_ids)
        for mid in [m for m in self._wanted if m not in self._own and m not in self._relay]:
            self._forget(mid)
        for mid in sorted(manifest_ids):
            self._wanted.setdefault(mid, (now, 0))

    def _forget(self, mid: str, *, answered_by: str | None = None) -> None:
        """``mid`` is wanted here no more: tell the peers still working on it."""
        self._wanted.pop(mid, None)
        for peer in sorted(self._asked.pop(mid, set()) - {answered_by}):
            self._cancels += 1
            self._outputs.append(SendMessage(peer, BodyCancel((bytes.fromhex(mid),))))

    def next_deadline(self) -> float | None:
        if not self._wanted and not self._relay:
            return None
        times = [t for t, _ in self._wanted.values()]
        times += [t for t, _ in self._relay.values()]
        return min(times, default=None)

    def clock_stepped_back(self, now: float) -> None:
        """The wall clock went back: no ask or relay may wait past what it would have."""
        for mid, (t, asked) in self._wanted.items():
            self._wanted[mid] = (min(t, now + ASK_EVERY * 8), asked)
        for mid, (until, askers) in self._relay.items():
            self._relay[mid] = (min(until, now + RELAY_FOR), askers)

    def holders(self, manifest_id: str, peers: Sequence[str]) -> list[str]:
        """Those of ``peers`` likely to have that body, by id: those whose record says
        they hold or fetch its version, else those that wrote its head's entry (the
        publishing node)."""
        head = self.ledger.head_by_id(manifest_id)
        if head is None:
            return []
        out = []
        for p in sorted(peers):
            r = self.ledger.record(p)
            if r is not None and any(
                    m.model_id == head.model_id and (head.version in m.installed or (
                        m.version == head.version and m.status in _HOLDS)) for m in r.models):
                out.append(p)
        if not out:
            wrote = {e.origin for e in self.ledger.entries()
                     if e.manifest is not None and e.manifest.manifest_id == manifest_id}
            out = sorted(wrote.intersection(peers))
        return out

    def on_timer(self, now: float, peers: Sequence[str]) -> None:
        """Ask for every body due (see "Whom"); give up relays past their time."""
        for mid in [m for m, (until, _) in self._relay.items() if until <= now]:
            del self._relay[mid]
            if mid not in self._own:
                self._forget(mid)
        due = sorted(m for m, (t, _) in self._wanted.items() if t <= now)
        if not peers:           # nobody to ask: look again in a while, not at once
            for mid in due:
                self._wanted[mid] = (now + ASK_EVERY, self._wanted[mid][1])
            return
        by_peer: dict[str, list[bytes]] = {}
        for mid in due:
            _, asked = self._wanted[mid]
            askers = self._relay.get(mid, (0.0, set()))[1]
            connected = sorted(set(peers) - askers)      # (never back to who asked us)
            pool = self.holders(mid, connected) or connected
            self._wanted[mid] = (now + ASK_EVERY * 2 ** min(asked, 3), asked + 1)
            if pool:
                peer = pool[asked % len(pool)]
                self._asked.setdefault(mid, set()).add(peer)
                by_peer.setdefault(peer, []).append(bytes.fromhex(mid))
        for peer, ids in sorted(by_peer.items()):
            for k in range(0, len(ids), WANT_IDS):
                self._asks += 1
                self._outputs.append(SendMessage(peer, BodyWant(tuple(ids[k:k + WANT_IDS]))))

    def receive(self, peer: str, msg: FetchMessage, now: float) -> bool:
        """Handle a want, an answer or a cancel; True when a body this node wanted was
        kept."""
        if isinstance(msg, BodyWant):
            self._answer(peer, msg, now)
            return False
        if isinstance(msg, BodyCancel):
            for raw in msg.manifest_ids:
                mid = raw.hex()
                askers = self._relay.get(mid, (0.0, set()))[1]
                if peer in askers:
                    askers.discard(peer)
                    if not askers:              # nobody left to relay for
                        del self._relay[mid]
                        if mid not in self._own:
                            self._forget(mid)
            return False
        if not isinstance(msg, BodyAnswer):
            raise MalformedMessage(f"not a manifest fetch message: {type(msg).__name__}")
        mid = msg.manifest.manifest_id
        if mid not in self._wanted:
            self._unsolicited += 1
            return False
        try:
            added = self.ledger.add_body(msg.manifest)
        except ShoalError:
            self._rejected += 1
            return False
        self._forget(mid, answered_by=peer)
        body = self.ledger.manifest_by_id(mid)
        for asker in sorted(self._relay.pop(mid, (0.0, set()))[1]):
            if body is not None:
                self._relayed += 1
                self._outputs.append(SendMessage(asker, BodyAnswer(body)))
        self._added += added
        return added and mid in self._own

    def _answer(self, peer: str, msg: BodyWant, now: float) -> None:
        """Answer a want: each body held goes back; one whose head is here is relayed."""
        if not self._tokens.take(peer, 1.0, now):
            self._refused += 1
            return
        for raw in msg.manifest_ids:
            mid = raw.hex()
            body = self.ledger.manifest_by_id(mid)
            if body is not None:
                self._sent += 1
                self._outputs.append(SendMessage(peer, BodyAnswer(body)))
            elif self.ledger.head_by_id(mid) is not None:     # fetch it, then answer
                askers = self._relay.get(mid, (0.0, set()))[1] | {peer}
                self._relay[mid] = (now + RELAY_FOR, askers)
                self._wanted.setdefault(mid, (now, 0))

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def statistics(self) -> FetchStatistics:
        return FetchStatistics(len(self._wanted), self._asks, self._added, self._sent,
                               self._refused, self._unsolicited, self._rejected,
                               self._relayed, self._cancels)
