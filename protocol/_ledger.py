"""The fleet ledger: a state-based CRDT of node records, intents, manifests and trust.

Theory of operation
-------------------
Everything the fleet knows is an :class:`Entry` stamped ``(origin, counter)``
and signed by the origin's admitted node key:

* a :class:`NodeRecord` is written only by its own node (origin = the node); a
  record with a higher counter *replaces* the older one (last writer wins by
  counter, and there is only one writer);
* an intent, a manifest, a certificate or a revocation has no writer counter of
  its own, so the node that first accepts it (the one an operator or publisher
  handed it to) wraps it in an entry stamped with *its* next counter. Such
  relay entries are never replaced. If two nodes accept the same intent, it is
  held twice under two stamps; every reader dedups by content id.

The ledger is the set of surviving entries plus a version vector ``vv`` with
the invariant: for every origin ``o``, every entry ``o`` ever stamped with a
counter ``<= vv[o]`` is held, or has been replaced by a newer record of ``o``.

``merge`` is a join: the union of entries (a record keeps the highest counter)
and the element-wise maximum of vectors — commutative, associative, idempotent.
``delta_since(peer_vv)`` returns the entries above the peer's vector, in counter
order per origin, cut into pieces of bounded size. Each piece carries, per
origin, a claim ``(since, upto)`` — "all survivors of ``o`` in ``(since, upto]``
are in here"; the receiver advances ``vv[o]`` to ``upto`` only when it already
holds ``vv[o] >= since``. Pieces can therefore be lost, duplicated or reordered:
entries are always kept, the vector only moves over a gap-free prefix, and the
next anti-entropy round resends what is still missing. Applying every piece of
``b.delta_since(a.vv)`` to ``a`` gives the same ledger as ``a.merge(b)``.

Vouched claims
--------------
A claim is the word of whoever sent the piece, and that may be any admitted node,
captured or not. So the vector moves only over counters the *origin* vouches for:
an entry is signed by its origin, so an entry this ledger holds (every held entry
was verified) vouches that its origin wrote its counter. A claim ``(since, upto]``
for ``o`` is therefore cut to the highest counter of ``o`` held here after the
batch (``_top``), and a claim for an origin of which nothing is held is ignored.
This keeps anti-entropy exact: the vector of an honest ledger never lies above its
own top (it only ever moves to a claim so cut, to an own write, or to its top when
a restart gap closes), and the entry at the top is always held (only a *newer*
entry of the same key replaces one), so a sender's delta always carries, or the
receiver already holds, an entry at or above each claim it makes. Holes below the
top are fine, exactly as they were: they are records (and re-wrapped relays, see
below) replaced by newer ones. What a lying relay can still do is withhold an
origin's older entries while passing on a newer one with a claim over both; a
chain (each entry signing its predecessor's counter) would close that, at the
price of a change to what entries sign. Counters far above the receiver's clock
(more than ``MAX_AHEAD_MS`` above ``now`` in ms, where the driver passes ``now``:
nodes stamp wall-clock milliseconds) are refused, and ``append`` stops with
:class:`CounterExhausted` at ``MAX_COUNTER`` (the wire's 64-bit limit).

Re-wraps and quotas
-------------------
Any node can wrap content that already exists (an intent, a manifest, a
certificate, a revocation) under new counters of its own. A relay entry is keyed
by ``(origin, content)`` where content is the exact payload (id and signature), and
like a record a newer stamp of the same key *replaces* the older one: an origin
holds each content once, whatever it sends (the join is still the maximum per
key). Within a batch only the newest stamp of a key is looked at; a stamp at or
below the held one is a duplicate and is dropped before anything is verified. A
stamp of content held here under any stamp (the held content keys are the cache of
verified content: nothing is held unverified) has only its stamp checked -- the
origin's signature, which vouches for its counter -- and is not reported as added:
it brings nothing new, so gossip does not pass it on. Each origin
may hold at most ``relay_quota`` relay entries; those beyond are refused and
counted (``LedgerStatistics.refused``), as are entries too far ahead of the clock
and claims cut to what is vouched.

A re-stamp of held content still replaces the held stamp, so it still travels with
anti-entropy, and an origin may rewrite its record as fast as it likes: bytes an
origin costs every node without telling it anything new. So those *replacing*
entries (a newer stamp of content held for the origin, a newer record of it) are
rated in bytes, per origin, on arrival: a token bucket of ``rate`` bytes a second,
``burst`` deep (the driver passes ``now``). One over it is dropped unmerged
(counted as ``rate``): what it carried is held already (the content) or will be
replaced again (a record), and the vector moves past it with the next entry of
that origin held, so no peer sends it again and again. New content is never
rated (it is bounded by the quota, and a node that joins late takes a long history
at full speed); an honest origin writes far less than the rate (a record a
second).

Nothing enters unverified: the entry signature (origin admitted as a node),
then the payload (record: origin must be the node it describes; intent: an
admitted operator; manifest head: an admitted publisher's head signature;
certificate / revocation: the fleet root). Certificates and revocations in a
batch are applied to the trust store first, so a node's certificate may travel
in the same delta as its first entries. A rejected entry is counted by kind and
never merged, and the vector of its origin does not move in that batch.

Gossip asks the same questions of the vector for every message, so the ledger
keeps indexes beside it: its origins sorted (a bucket of leading id bits is a
slice), the digest input of each, and per bucket width the bucket hashes, of
which only those whose origins moved are hashed again. They answer exactly what
a scan of the vector would (``tests/test_ledger_indexes.py``).

Entries themselves -- their encoding, signature and verification -- live in
``_entries``; the records nodes write about themselves in ``_records``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, gt

from ._entries import Entry, EntryKind, encoded_entry, entry_size
from ._errors import InvalidValue, LocalProtocolError, RemoteProtocolError, SignatureError
from ._hlc import VersionVector, vv_join
from ._identity import FleetTrust, SigningIdentity
from ._intents import Intent
from ._manifest import Manifest
from ._manifest_shelf import ManifestShelf, ManifestViews
from ._rate import TokenBuckets
from ._records import ModelState, NodeRecord, Suspicion
from ._settle import manifests_to_retire, void_intents
from ._vector_index import VectorIndex

__all__ = [
    "MAX_AHEAD_MS",
    "MAX_COUNTER",
    "RELAY_QUOTA",
    "ORIGIN_RATE",
    "ORIGIN_BURST",
    "CounterExhausted",
    "DeltaPiece",
    "MergeResult",
    "LedgerStatistics",
    "Ledger",
    # re-exported: the entry and record types the ledger holds
    "Entry",
    "EntryKind",
    "ModelState",
    "NodeRecord",
    "Suspicion",
    "encoded_entry",
    "entry_size",
]


MAX_COUNTER = (1 << 64) - 1        # the largest counter the wire (and the vector) can carry
# counters more than 2**44 ms (557 years) above the clock are refused: generous, so a node
# whose clock once ran far ahead still converges, and it keeps the rest of the counter
# space (2**64) out of reach of every accepted entry
MAX_AHEAD_MS = 1 << 44
RELAY_QUOTA = 4096                  # relay entries (not records) held per origin
ORIGIN_RATE = 128 << 10             # bytes/s of replacing entries one origin may bring in
ORIGIN_BURST = 4 << 20              # ... and at once


class CounterExhausted(LocalProtocolError):
    """This node's counter reached ``MAX_COUNTER``: it cannot stamp another entry."""


def content_key(e: Entry) -> object | None:
    """The exact content of a relay entry (None for a record): equal exactly when two
    entries carry the same payload, signature included (made once per entry)."""
    return e.content_key()


@dataclass(frozen=True, slots=True)
class DeltaPiece:
    """A bounded slice of a delta: entries plus per-origin completeness claims."""

    entries: tuple[Entry, ...]
    ranges: dict[str, tuple[int, int]]   # origin -> (since, upto)
    size: int                            # encoded bytes of the entries


@dataclass(frozen=True, slots=True)
class MergeResult:
    added: tuple[Entry, ...]
    rejected: dict[str, int] = field(default_factory=dict)   # kind -> count
    errors: tuple[str, ...] = ()
    # entries whose signature does not verify: honest nodes verify before they relay,
    # so whoever sent these forged or tampered them (an unknown key is not counted here:
    # its certificate may still be on its way)
    forged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added)


@dataclass(frozen=True, slots=True)
class LedgerStatistics:
    entries: int
    records: int
    intents: int
    manifests: int
    certificates: int
    revocations: int
    origins: int
    rejected: dict[str, int]
    duplicates: int
    # refused without being a protocol error: "quota" (relay entries over an origin's
    # quota), "ahead" (counters too far above the clock), "claim" (claims cut to what
    # the origin vouches for), "rate" (replacing entries over their origin's byte rate)
    refused: dict[str, int] = field(default_factory=dict)
    retired: int = 0     # entries forgotten as void history (``Ledger.retire``)


class Ledger(ManifestViews):
    """The CRDT. Holds the node's :class:`FleetTrust` and feeds it root-signed certs."""

    def __init__(self, trust: FleetTrust, relay_quota: int = RELAY_QUOTA,
                 rate: float = ORIGIN_RATE, burst: float = ORIGIN_BURST) -> None:
        self.trust = trust
        self.relay_quota = relay_quota
        self._tokens = TokenBuckets(rate, burst)   # replacing entries' bytes, per origin
        self._relay_at: dict[tuple[str, object], int] = {}   # (origin, content) -> counter
        self._relays: dict[str, int] = {}       # origin -> relay entries held
        self._content: dict[object, int] = {}   # content key -> stamps of it held (verified)
        self._refused: dict[str, int] = {}
        self._entries: dict[tuple[str, int], Entry] = {}
        self._record_at: dict[str, int] = {}    # origin -> counter of its live record
        self._top: dict[str, int] = {}          # origin -> highest counter held
        self._held: dict[str, list[int]] = {}   # origin -> counters held (one or two, most)
        self._vv: VersionVector = {}
        self._rejected: dict[str, int] = {}
        self._generation = 0                    # bumped whenever the vector moves
        self._gaps: set[str] = set()            # own origins whose history is unknown
        self._duplicates = 0
        self._intents: dict[str, Intent] = {}
        self._shelf = ManifestShelf(trust)     # manifest heads held, and bodies here
        self._intents_changed = 0               # bumped when the set of intents changes
        self._live: tuple[int, list[Intent], set[str]] = (-1, [], set())  # (at, live, void)
        self._retired = 0
        # indexes kept beside the state, so that gossip costs what changed, not the fleet:
        self._records: dict[str, NodeRecord] = {}   # origin -> its live record
        self._index = VectorIndex()                 # the vector's origins, sorted, hashed

    # ------------------------------------------------------------------ queries
    @property
    def version_vector(self) -> VersionVector:
        return dict(self._vv)

    @property
    def vv_generation(self) -> int:
        """Changes whenever the version vector changes (for caching digests of it)."""
        return self._generation

    def origins_in_vector(self) -> int:
        """``len(version_vector)`` without copying the vector."""
        return len(self._vv)

    def version_of(self, origin: str) -> int:
        """``version_vector.get(origin, 0)`` without copying the vector."""
        return self._vv.get(origin, 0)

    def top_counter(self, origin: str) -> int:
        """The highest counter of ``origin`` this ledger holds or has covered."""
        return max(self._top.get(origin, 0), self._vv.get(origin, 0))

    def holds(self, origin: str, counter: int) -> bool:
        """Is the entry ``(origin, counter)`` held here?"""
        return (origin, counter) in self._entries

    def entries(self) -> Iterator[Entry]:
        for key in sorted(self._entries):
            yield self._entries[key]

    def record(self, node_id: str) -> NodeRecord | None:
        c = self._record_at.get(node_id)
        return None if c is None else self._entries[(node_id, c)].record

    def records(self) -> dict[str, NodeRecord]:
        return dict(self._records)

    @property
    def nodes_recorded(self) -> int:
        """How many nodes have a record here (``len(records())`` without the copy)."""
        return len(self._records)

    def record_counter(self, node_id: str) -> int:
        return self._record_at.get(node_id, 0)

    def intents(self) -> list[Intent]:
        """Distinct live intents, in id order: those held that are not void
        (``_settle``: dominated by a settled intent, or naming one that is) and do not
        name an intent not held. Every reader sees these only, so retiring void ones
        changes no answer."""
        return list(self._live_intents()[0])

    def all_intents(self) -> list[Intent]:
        """Every distinct intent held, void or not, in id order."""
        return [self._intents[k] for k in sorted(self._intents)]

    def intent(self, intent_id: str) -> Intent | None:
        """The live intent of that id (None if not held, or void)."""
        it = self._intents.get(intent_id)
        return None if it is None or intent_id in self._live_intents()[1] else it

    def _live_intents(self) -> tuple[list[Intent], set[str]]:
        at, live, void = self._live
        if at != self._intents_changed:
            everything = self.all_intents()
            void = void_intents(everything)
            # (and a cancel, policy or settle whose target is not held: it changes no
            # answer until the target arrives, and a target that was forgotten as void
            # would otherwise leave it looking live on one node and not on another)
            live = [i for i in everything if i.intent_id not in void
                    and (i.cancels is None or i.cancels in self._intents)]
            self._live = (self._intents_changed, live, void)
        return live, void

    def state_key(self) -> tuple[frozenset[tuple[str, int, bytes]], tuple[tuple[str, int], ...]]:
        """A value equal for two ledgers exactly when they hold the same state."""
        return (frozenset((o, c, e.signature) for (o, c), e in self._entries.items()),
                tuple(sorted((k, v) for k, v in self._vv.items() if v > 0)))

    def statistics(self) -> LedgerStatistics:
        kinds: dict[EntryKind, int] = dict.fromkeys(EntryKind, 0)
        for e in self._entries.values():
            kinds[e.kind] += 1
        return LedgerStatistics(
            entries=len(self._entries), records=kinds[EntryKind.RECORD],
            intents=kinds[EntryKind.INTENT], manifests=kinds[EntryKind.MANIFEST],
            certificates=kinds[EntryKind.CERTIFICATE],
            revocations=kinds[EntryKind.REVOCATION], origins=len(self._top),
            rejected=dict(self._rejected), duplicates=self._duplicates,
            refused=dict(self._refused), retired=self._retired)

    # ------------------------------------------------------------------ local writes
    def append(self, origin: SigningIdentity, payload: object, floor: int = 0) -> Entry:
        """Stamp ``payload`` with ``origin``'s next counter, sign, and merge it.

        The counter is above everything this ledger holds for ``origin`` and at
        least ``floor``: a node passes its wall clock in milliseconds, so a node
        that restarts with an empty ledger still writes above its earlier life."""
        me = origin.key_id
        counter = max(self.top_counter(me) + 1, floor)
        if counter > MAX_COUNTER:
            raise CounterExhausted(f"counter {counter} of {me} is past {MAX_COUNTER}")
        entry = Entry.create(origin, counter, payload)
        claim = {} if me in self._gaps else {me: (self._vv.get(me, 0), counter)}
        result = self.merge_entries([entry], claim, limits=False)
        if result.errors:
            raise InvalidValue(f"local ledger write refused: {result.errors[0]}")
        if isinstance(payload, Manifest):       # the writer holds the body too
            self.add_body(payload)
        return entry

    # ------------------------------------------------------------------ retirement
    def retire(self) -> int:
        """Forget the history no reader can see any more (``_settle``): the entries of
        void intents, and of manifests nothing live needs. An origin's newest entry is
        kept (it vouches for the origin's counter). The number of entries dropped."""
        live, void = self._live_intents()
        gone_manifests = manifests_to_retire(self._shelf.heads(), live,
                                             self._records.values())
        if not void and not gone_manifests:
            return 0
        dropped = 0
        for key, e in list(self._entries.items()):
            origin, counter = key
            if counter == self._top.get(origin):
                continue
            if (e.intent is not None and e.intent.intent_id in void) or \
                    (e.manifest is not None and e.manifest.manifest_id in gone_manifests):
                self._drop(key, e)
                dropped += 1
        if not dropped:      # (void entries that are their origins' newest: nothing to do)
            return 0
        held_ids = {e.intent.intent_id for e in self._entries.values() if e.intent is not None}
        held_manifests = {e.manifest.manifest_id for e in self._entries.values()
                          if e.manifest is not None}
        for iid in [i for i in self._intents if i not in held_ids]:
            del self._intents[iid]
            self._intents_changed += 1
        self._shelf.keep_only(held_manifests)
        self._retired += dropped
        return dropped

    def _drop(self, key: tuple[str, int], e: Entry) -> None:
        """Forget one relay entry (below its origin's top: the vector still covers it)."""
        origin, counter = key
        del self._entries[key]
        self._held[origin].remove(counter)
        ck = content_key(e)
        if ck is not None and self._relay_at.get((origin, ck)) == counter:
            del self._relay_at[(origin, ck)]
            self._relays[origin] -= 1
            n = self._content.get(ck, 0) - 1
            if n > 0:
                self._content[ck] = n
            else:
                self._content.pop(ck, None)

    # ------------------------------------------------------------------ restart gap
    def open_gap(self, origin: str) -> None:
        """``origin`` (this node) may have written entries in an earlier life that
        this ledger does not hold: stop claiming its counters in the vector (so no
        peer is told "nothing below is missing") until :meth:`close_gap`."""
        self._gaps.add(origin)

    def has_gap(self, origin: str) -> bool:
        return origin in self._gaps

    def close_gap(self, origin: str) -> None:
        """A peer has shown all it knows of ``origin``: claim our own writes again."""
        if origin in self._gaps:
            self._gaps.discard(origin)
            top = self.top_counter(origin)
            if top > self._vv.get(origin, 0):
                self._set_vv(origin, top)

    # ------------------------------------------------------------------ merging
    def merge(self, other: Ledger) -> MergeResult:
        """Join the whole of ``other`` into this ledger."""
        ranges = {o: (0, c) for o, c in other._vv.items()}
        return self.merge_entries(list(other._entries.values()), ranges)

    def merge_entries(self, entries: Iterable[Entry],
                      ranges: Mapping[str, tuple[int, int]] | None = None,
                      now: float | None = None, *, limits: bool = True) -> MergeResult:
        """Merge ``entries`` and the claims ``ranges`` (origin -> ``(since, upto)``).

        ``now`` (the driver's clock, seconds): entries stamped more than
        ``MAX_AHEAD_MS`` above it are refused, and each origin's replacing entries
        are rated in bytes at it. ``limits=False`` (this node's own writes) lifts the per-origin
        relay quota and rate."""
        # newest stamp per (origin, content) first: a relay entry at or below a stamp of
        # the same content held (or later in the batch) changes nothing, and is dropped
        # before anything is verified
        # an entry held here already (this very object, or an equal one): a duplicate
        held_at = self._entries.get
        given: list[Entry] = []
        for e in entries:
            h = held_at((e.origin, e.counter))
            if h is not None and (h is e or h == e):
                self._duplicates += 1
            else:
                given.append(e)
        keys: dict[int, object] = {}
        newest: dict[tuple[str, object], int] = {}
        for e in given:
            ck = content_key(e) if e.record is None else None
            if ck is not None:
                keys[id(e)] = ck
                k = (e.origin, ck)
                if e.counter > newest.get(k, 0):
                    newest[k] = e.counter
        batch: list[Entry] = []
        relay_at = self._relay_at
        for e in given:
            ck = keys.get(id(e))
            if ck is not None:
                k = (e.origin, ck)
                at = relay_at.get(k, 0)
                # (one at the held stamp with another signature goes on: it is rejected)
                if e.counter < newest[k] or e.counter < at or (
                        e.counter == at
                        and self._entries[(e.origin, at)].signature == e.signature):
                    self._duplicates += 1
                    continue
            batch.append(e)
        trust = self.trust
        for e in batch:   # trust first: a certificate may admit the origin of its neighbours
            if e.certificate is not None:
                cert = e.certificate
                # one equal to the certificate held for its key was verified and kept
                # already: adding it again would change nothing
                if trust.certificate(cert.subject_key, cert.role) != cert:
                    trust.add_certificate(cert)
            elif e.revocation is not None:
                self.trust.add_revocation(e.revocation)
        added: list[Entry] = []
        rejected: dict[str, int] = {}
        errors: list[str] = []
        bad: set[str] = set()
        rated = limits and now is not None
        at_s = 0.0 if now is None else now
        forged = 0
        ahead = MAX_COUNTER if now is None else int(now * 1000) + MAX_AHEAD_MS
        record_at = self._record_at.get
        for e in sorted(batch, key=attrgetter("origin_key", "counter")):
            origin = e.origin
            key = (origin, e.counter)
            held = held_at(key)
            if held is not None and held.signature == e.signature:
                self._duplicates += 1
                continue
            if e.record is not None and record_at(origin, 0) >= e.counter:
                self._duplicates += 1   # replaced already
                continue
            ck = keys.get(id(e))
            replaces = None if ck is None else relay_at.get((origin, ck))
            if (ck is not None and replaces is None and limits
                    and self._relays.get(origin, 0) >= self.relay_quota):
                self._refuse("quota")
                continue
            # content held here was verified when it came: only the stamp is new
            known = ck is not None and ck in self._content
            try:
                if held is not None:
                    raise RemoteProtocolError(f"origin {origin} signed two different entries "
                                              f"with counter {e.counter}")
                e.verify(self.trust, payload=not known)
            except RemoteProtocolError as exc:
                kind = e.kind.value
                rejected[kind] = rejected.get(kind, 0) + 1
                self._rejected[kind] = self._rejected.get(kind, 0) + 1
                errors.append(f"{kind} from {origin}: {exc}")
                bad.add(origin)
                forged += isinstance(exc, SignatureError)
                continue
            if e.counter > ahead:   # (after the signature: a forgery is told as one)
                self._refuse("ahead")
                bad.add(origin)
                continue
            if rated and (replaces is not None or (e.record is not None and record_at(origin)))\
                    and not self._tokens.take(origin, entry_size(e), at_s):
                self._refuse("rate")     # a replacing entry over its origin's rate
                continue
            self._insert(origin, e, ck)
            if known:
                self._duplicates += 1   # another stamp of content held already: not news
            else:
                added.append(e)
        vv, top = self._vv, self._top
        for origin, (since, upto) in (ranges or {}).items():
            if origin in bad:
                continue
            vouched = top.get(origin, 0)   # the origin's own word: its newest entry held
            if upto > vouched:
                self._refuse("claim")
                upto = vouched
            if (mine := vv.get(origin, 0)) >= since and upto > mine:
                self._set_vv(origin, upto)
        return MergeResult(tuple(added), rejected, tuple(errors), forged)

    def _refuse(self, why: str) -> None:
        self._refused[why] = self._refused.get(why, 0) + 1


    def _insert(self, origin: str, e: Entry, ck: object | None = None) -> None:
        if ck is not None:
            old_at = self._relay_at.get((origin, ck))
            if old_at is not None:   # a newer stamp of the same content replaces the older
                del self._entries[(origin, old_at)]
                self._held[origin].remove(old_at)
            else:
                self._relays[origin] = self._relays.get(origin, 0) + 1
                self._content[ck] = self._content.get(ck, 0) + 1
            self._relay_at[e.relay_key() or (origin, ck)] = e.counter
        if e.record is not None:
            old = self._record_at.get(origin)
            if old is not None:
                del self._entries[(origin, old)]
                self._held[origin].remove(old)
            self._record_at[origin] = e.counter
            self._records[origin] = e.record
        elif e.intent is not None:
            if e.intent.intent_id not in self._intents:
                self._intents[e.intent.intent_id] = e.intent
                self._intents_changed += 1
        elif e.manifest is not None:
            self._shelf.put_head(e.manifest)
        self._entries[e.stamp] = e   # (the entry's own key tuple, shared by all ledgers)
        self._held.setdefault(origin, []).append(e.counter)
        if e.counter > self._top.get(origin, 0):
            if origin not in self._top:
                self._know(origin)
            self._top[origin] = e.counter

    # ------------------------------------------------------------------ indexes
    def _know(self, origin: str) -> None:
        self._index.know(origin)

    def _set_vv(self, origin: str, counter: int) -> None:
        """Move the vector of ``origin`` to ``counter`` and keep its indexes in step."""
        if origin not in self._vv and (top := self._top.get(origin)) is not None:
            # the id string of the held entry (shared by ledgers), not a message's copy
            held = self._entries.get((origin, top))
            if held is not None:
                origin = held.origin
        self._vv[origin] = counter
        self._generation += 1
        self._index.moved(origin, counter, origin in self._top)

    def vector_in_buckets(self, bits: int, buckets: Iterable[int]) -> dict[bytes, int]:
        """The vector's entries (16 raw id bytes -> counter) whose origins' leading
        ``bits`` bits are one of ``buckets``: ``vv_to_wire`` of that part."""
        return self._index.vector_in_buckets(self._vv, bits, buckets)

    def vv_hash(self) -> bytes:
        """``_hlc.vv_hash(self.version_vector)``, kept per vector generation."""
        return self._index.vv_hash(self._generation)

    def bucket_hashes(self, bits: int) -> bytes:
        """``_gossip.bucket_hashes(self.version_vector, bits)``: one 8-byte hash per
        bucket (origins sharing their leading ``bits`` bits), in bucket order."""
        return self._index.bucket_hashes(bits)

    def origins_in_buckets(self, bits: int, buckets: Iterable[int]) -> list[str]:
        """The origins this ledger holds entries of or has a vector entry for whose
        leading ``bits`` bits are one of ``buckets``, in id order."""
        return self._index.origins_in_buckets(bits, buckets)

    # ------------------------------------------------------------------ deltas
    def missing_for(self, peer_vv: Mapping[str, int],
                    only: Callable[[str], bool] | None = None,
                    origins: Iterable[str] | None = None) -> bool:
        """Does this ledger hold anything a peer with ``peer_vv`` lacks?

        ``only`` restricts the question to the origins it accepts; ``origins``, to
        those listed (a lookup in :meth:`origins_in_buckets` instead of a scan)."""
        if origins is not None:
            top, vv = self._top, self._vv
            return any(max(top.get(o, 0), vv.get(o, 0)) > peer_vv.get(o, 0)
                       for o in origins if only is None or only(o))
        return any(max(top, self._vv.get(o, 0)) > peer_vv.get(o, 0)
                   for o, top in self._top.items() if only is None or only(o)) or any(
            c > peer_vv.get(o, 0) for o, c in self._vv.items()
            if o not in self._top and (only is None or only(o)))

    def delta_since(self, peer_vv: Mapping[str, int], max_bytes: int = 1 << 62,
                    only: Callable[[str], bool] | None = None,
                    origins: Iterable[str] | None = None) -> list[DeltaPiece]:
        """What a peer whose vector is ``peer_vv`` lacks, cut into pieces of at most
        ``max_bytes`` of entries (a single larger entry travels alone).

        ``only`` restricts the delta to the origins it accepts (the others are
        neither shipped nor claimed); ``origins`` (distinct) restricts it to those
        listed (the same pieces as an ``only`` accepting exactly them, without a scan)."""
        keys: list[tuple[str, int]] = []
        top_of, held, pget = self._top, self._held, peer_vv.get
        if origins is not None:
            origins = list(origins)
        names = list(top_of) if origins is None else list(filter(top_of.__contains__, origins))
        # the origins whose top is above the peer's counter, compared without a Python
        # loop (the vectors are as long as the fleet is large)
        newer = compress(names, map(gt, map(top_of.__getitem__, names),
                                    map(pget, names, repeat(0))))
        for origin in newer:
            if only is None or only(origin):
                have = pget(origin, 0)
                keys.extend([(origin, c) for c in held[origin] if c > have])
        keys.sort()
        pieces: list[DeltaPiece] = []
        cur: list[Entry] = []
        cur_size = 0
        ranges: dict[str, tuple[int, int]] = {}
        last: dict[str, int] = {}     # origin -> highest counter shipped in earlier pieces

        def close() -> None:
            nonlocal cur, cur_size, ranges
            if cur or ranges:
                pieces.append(DeltaPiece(tuple(cur), ranges, cur_size))
            cur, cur_size, ranges = [], 0, {}

        # (an entry keeps its encoding: its size is no lookup kept per ledger)
        vv, entries, n = self._vv, self._entries, len(keys)
        for i, key in enumerate(keys):
            e = entries[key]
            size = len(e.encoded())
            if cur and cur_size + size > max_bytes:
                close()
            origin, counter = key
            cur.append(e)
            cur_size += size
            since = last.get(origin, pget(origin, 0))
            final = i + 1 == n or keys[i + 1][0] != origin
            upto = vv.get(origin, 0) if final else min(counter, vv.get(origin, 0))
            if upto > since:
                ranges[origin] = (ranges.get(origin, (since, 0))[0], upto)
            last[origin] = counter
        if origins is None:
            vv_moves: Iterable[tuple[str, int]] = vv.items()
        else:   # the few listed ones, in the vector's own order (as a scan meets them)
            moved = compress(origins, map(gt, map(vv.get, origins, repeat(0)),
                                          map(pget, origins, repeat(0))))
            vv_moves = [(o, vv[o]) for o in sorted([o for o in moved if o not in last],
                                                   key=self._index.order)]
        for origin, c in vv_moves:   # vector moves with no entry to carry
            if c > pget(origin, 0) and origin not in last and (only is None or only(origin)):
                ranges[origin] = (pget(origin, 0), c)
        close()
        return pieces

    def vv_joined(self, other: Mapping[str, int]) -> VersionVector:
        return vv_join(self._vv, other)
