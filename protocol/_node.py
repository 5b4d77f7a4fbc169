"""The node state machine: ledger + gossip + desired state + variant choice + swarm.

Theory of operation
-------------------
:class:`NodeMachine` is sans-IO (after h11): inputs are method calls carrying
``now``; outputs (``protocol/_events.py``) pile up until the driver calls
:meth:`take_outputs`. After every input that may have changed the ledger, the
machine *reconciles* each model: it resolves the desired intent for itself
(pure function of the ledger), and if the node does not run that version yet it

* switches back with :class:`ActivateVersion` when the version is on disk
  (rollback: no transfer),
* else picks a variant (:func:`select_variant`) and asks the swarm for
  ``f"{manifest_id}/{variant_id}"`` (the store already holds every chunk an
  earlier version shared: that is the delta), reporting progress,
* then on completion emits :class:`InstallVariant`, and on
  :meth:`install_finished` marks the model operational or failed.

"Runs that version" means the version *and*, when the intent names a variant,
that variant: an explicit-variant intent for the version a node already runs
with another variant fetches and installs the named one (an on-disk copy of
the version is reused only if it is that variant). An auto-selection intent
leaves a node that runs the version alone, whatever variant it runs, even if
the probe would now pick another: a running model is not replaced behind the
operator's back (a changed probe matters only when a transfer starts; an
operator who wants the new best choice names it explicitly).

Progress (``bytes_done/total/reused/fetched`` of the model's record) is
refreshed from the swarm on every timer, when a transfer completes and when
the install finishes, so the final record always tells how many bytes the
node reused from its store and how many it fetched from peers.

Every status change goes through :func:`~._state.change_state`, which refuses
one its transition table does not allow. What a driver must do beyond carrying
out I/O is an output too: :class:`PersistLedger` before anything that may carry
an entry the node just wrote, and ``DropPeer.ban_for`` -- how long a dropped peer
stays away -- from the one policy in ``_bans``.

A model whose desired intent disappears (cancelled) has its transfer dropped
and returns to the version it runs. The node's own record is rewritten on
every status change, at most every ``record_min_interval`` seconds for mere
progress (and at most every ``N / fleet_progress_rate`` seconds in a fleet of N: every
record a node writes reaches every other node, so progress alone would cost each
node's links N records a second -- 180 KB/s per node at N=300, see
docs/LEDGER.md), when its set of suspected direct peers changes (see ``_gossip``),
and to *refute* a suspicion: when a record arrives that suspects this node at
its current record counter, the node (alive, since it reads it) writes a new
record, which makes that suspicion stale. A quiet fleet writes nothing.

Counters survive a restart without persistence: every own write is stamped
at least the wall clock in milliseconds (``now``), so a node that comes back
with an empty ledger writes above its earlier life; and when gossip brings an
own entry with a higher counter (an older life's record, or a clock that went
backwards), the ledger's next counter moves past it and the record is
rewritten at once.

A wall clock that steps *back* would otherwise leave every timer armed in the
old time (the next gossip round, the next record write, when peers were last
heard): the node would sleep, and suspect nobody, until the clock caught up.
Every input that finds ``now`` below the previous input's ``now`` pulls those
times back to ``now`` (``GossipEngine.clock_stepped_back``). A step *forward*
needs nothing: due timers fire once and re-arm from the new ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Unpack

from ._bans import BANS, DropCause
from ._capabilities import Capabilities
from ._chunking import chunk_matches
from ._config import Config
from ._convergence import ModelConvergenceStatus, compute_convergence, unreachable_nodes
from ._errors import ManifestConflict, RemoteProtocolError, SignatureError
from ._events import (
    ActivateVersion,
    DropPeer,
    InstallVariant,
    Notice,
    NoticeKind,
    Output,
    PersistLedger,
    SendMessage,
)
from ._gossip import GossipEngine, GossipStatistics, urgent
from ._hlc import HybridClock
from ._identity import Certificate, FleetTrust, Revocation, Role, SigningIdentity, fingerprint
from ._intents import Intent, IntentKind, Scope, resolve
from ._ledger import Ledger, LedgerStatistics, ModelState, NodeRecord
from ._manifest import ChunkRef, Manifest
from ._operator import cancel_of, cancel_target, check_operator, check_request
from ._rng import Rng
from ._selection import select_variant
from ._state import StateChange, change_state
from ._swarm import SwarmEngine, SwarmStatistics
from ._types import BlockerReason, ModelOperationalStatus, TransferPriority
from ._wire import WireMessage

__all__ = ["NodeMachine", "NodeStatistics"]

_S = ModelOperationalStatus
_DONE = (_S.OPERATIONAL, _S.DEGRADED)
_RETRYABLE = (BlockerReason.INSUFFICIENT_GPU_MEMORY, BlockerReason.INSUFFICIENT_STORAGE,
              BlockerReason.INCOMPATIBLE_CAPABILITIES, BlockerReason.UNKNOWN)


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    node_id: str
    peers: int
    record_writes: int
    rejected_entries: dict[str, int]     # kind -> entries dropped for bad signatures/keys
    dropped_peers: int
    gossip: GossipStatistics
    ledger: LedgerStatistics
    swarm: SwarmStatistics


class NodeMachine:
    def __init__(self, *, config: Config, identity: SigningIdentity, certificate: Certificate,
                 trust: FleetTrust, rng: Rng, now: float, name: str = "",
                 formation: str = "", capabilities: Capabilities | None = None,
                 held_chunks: Iterable[bytes] = (), ledger: Ledger | None = None,
                 installed: Iterable[tuple[str, str, str]] = (),
                 chunk_verifier: Callable[[bytes, int, bytes], bool] | None = None) -> None:
        self.config = config
        self.identity = identity
        self.node_id: str = fingerprint(identity.public_key)
        self.trust = trust
        self.ledger: Ledger = ledger if ledger is not None else Ledger(trust)
        self.clock = HybridClock(self.node_id)
        self.name = name
        self.formation = formation
        self.capabilities = capabilities
        self._outputs: list[Output] = []
        self._peers: set[str] = set()
        self._record_writes = 0
        self._dropped = 0
        self._last_write = -1e18
        self._latest_now = now                   # detects a wall clock stepping back
        self._dirty = False
        self._states: dict[str, ModelState] = {}
        self._transfers: dict[str, str] = {}     # model -> swarm key being fetched
        self._installing: dict[str, str] = {}    # model -> swarm key being installed
        self._disk: dict[str, dict[str, str]] = {}   # model -> version -> variant on disk
        for model_id, version, variant_id in installed:   # last listed per model is active
            self._disk.setdefault(model_id, {})[version] = variant_id
            self._states[model_id] = ModelState(model_id, version, variant_id, _S.OPERATIONAL,
                                                updated_at=now, active_version=version)
        for model_id, versions in self._disk.items():
            self._states[model_id] = replace(self._states[model_id],
                                             installed=tuple(sorted(versions)))
        self.gossip = GossipEngine(node_id=self.node_id, config=config.gossip, rng=rng,
                                   ledger=self.ledger, now=now)
        self.swarm = SwarmEngine(node_id=self.node_id, config=config.swarm, rng=rng,
                                 held=set(held_chunks), lookup=self._lookup,
                                 verifier=chunk_verifier or chunk_matches)
        if not trust.add_certificate(certificate):
            raise RemoteProtocolError("this node's certificate is not signed by the fleet root")
        self._own_record = 0                     # counter of our latest record
        if self.ledger.top_counter(self.node_id) == 0:
            self.ledger.open_gap(self.node_id)   # an earlier life's entries may exist
        if not any(c.certificate == certificate for c in self.ledger.entries()):
            self._append(certificate, now)
        self._write_record(now, urgent=True)
        self._reconcile(now)

    # ------------------------------------------------------------------ helpers
    def _lookup(self, key: str) -> Sequence[ChunkRef] | None:
        manifest_id, _, variant_id = key.partition("/")
        m = self.ledger.manifest_by_id(manifest_id)
        if m is None:
            return None
        for v in m.variants:
            if v.variant_id == variant_id:
                return v.chunk_refs()
        return None

    def _append(self, payload: object, now: float) -> int:
        """Write an own entry; counters never fall below the wall clock in ms. An urgent
        one (:func:`~._gossip.urgent`) is pushed to every peer at once, with the claim
        the ledger itself made: nothing of ours lies between our last counter and it."""
        me = self.node_id
        since = None if self.ledger.has_gap(me) else self.ledger.version_of(me)
        entry = self.ledger.append(self.identity, payload, floor=int(now * 1000))
        self._persist(entry.counter)
        if urgent(entry):
            claim = {} if since is None else {bytes.fromhex(me): (since, entry.counter)}
            self.gossip.push((entry,), claim, None, now)
        return entry.counter

    def _persist(self, counter: int) -> None:
        """Ask the driver to save the ledger (through own entry ``counter``) before any
        output queued after this one: one request stands for every append behind it."""
        if self._outputs and isinstance(self._outputs[-1], PersistLedger):
            self._outputs[-1] = PersistLedger(counter)
        else:
            self._outputs.append(PersistLedger(counter))

    def _set_state(self, model_id: str, now: float, **changes: Unpack[StateChange]) -> None:
        """Every change of a model's state goes through here; a change of status must be
        one the table in :mod:`._state` allows."""
        old = self._states.get(model_id) or ModelState(model_id, "", "", _S.NOT_DEPLOYED)
        new = change_state(old, **changes)
        if new != old:
            self._states[model_id] = replace(new, updated_at=now)
            self._dirty = True

    def _write_record(self, now: float, urgent: bool) -> None:
        if not urgent and now - self._last_write < self._progress_interval():
            self._dirty = True
            return
        record = NodeRecord(self.name, self.formation, self.capabilities, "",
                            tuple(self._states[m] for m in sorted(self._states)),
                            self.gossip.suspects(), now)
        self._own_record = self._append(record, now)
        self._record_writes += 1
        self._last_write = now
        self._dirty = False

    def _progress_interval(self) -> float:
        """Least seconds between two progress-only writes of the own record: the
        configured floor, or this node's share of the fleet's progress rate."""
        g = self.config.gossip
        if g.fleet_progress_rate <= 0:
            return g.record_min_interval
        return max(g.record_min_interval, self.ledger.nodes_recorded / g.fleet_progress_rate)

    def _ensure_cert(self, key: bytes, role: Role, now: float) -> None:
        cert = self.trust.certificate(key, role)
        if cert is not None and not any(e.certificate == cert for e in self.ledger.entries()):
            self._append(cert, now)

    def _drop_transfer(self, model_id: str, now: float) -> None:
        key = self._transfers.pop(model_id, None)
        if key is not None:
            self.swarm.drop(key, now)

    # ------------------------------------------------------------------ reconcile
    def _reconcile(self, now: float) -> None:
        records = self.ledger.records()
        intents = self.ledger.intents()
        models = {i.model_id for i in intents} | set(self._states)
        status_changed = False
        for model_id in sorted(models):
            before = self._states.get(model_id)
            self._reconcile_model(model_id, intents, records, now)
            after = self._states.get(model_id)
            if (before is None) != (after is None) or (
                    before is not None and after is not None
                    and (before.status, before.version, before.variant_id, before.blocker,
                         before.intent_id)
                    != (after.status, after.version, after.variant_id, after.blocker,
                        after.intent_id)):
                status_changed = True
        self._drain_swarm(now)
        if status_changed:
            self._write_record(now, urgent=True)

    def _reconcile_model(self, model_id: str, intents: list[Intent],
                         records: dict[str, NodeRecord], now: float) -> None:
        target = resolve(intents, model_id, self.node_id, records, self.trust)
        st = self._states.get(model_id)
        disk = self._disk.get(model_id, {})
        if target is None:
            if st is not None and st.status is not _S.LOADING and (
                    model_id in self._transfers or st.version != st.active_version):
                self._drop_transfer(model_id, now)   # cancelled: back to what runs
                active = st.active_version
                self._set_state(model_id, now, version=active,
                                variant_id=disk.get(active, ""), intent_id="", blocker=None,
                                blocker_detail="", bytes_done=0, bytes_total=0,
                                status=_S.OPERATIONAL if active else _S.NOT_DEPLOYED)
                self._outputs.append(Notice(NoticeKind.TRANSFER_CANCELLED,
                                            f"{model_id}: no standing "
                                            "intent any more", model_id=model_id))
            return
        version, iid, wanted = target.version, target.intent_id, target.variant_id
        # an explicit variant must match too; auto selection accepts what runs
        same = st is not None and st.version == version and (
            wanted is None or st.variant_id == wanted)
        if st is not None and same:
            if st.status in _DONE and st.active_version == version:
                if st.intent_id != iid:
                    self._set_state(model_id, now, intent_id=iid)
                return
            if st.status is _S.LOADING or (st.status is _S.FAILED and st.intent_id == iid):
                return
            if st.status is _S.DOWNLOADING and model_id in self._transfers:
                self.swarm.want(self._transfers[model_id], target.priority, now)
                self._set_state(model_id, now, intent_id=iid)
                return
        if st is not None and st.status is _S.LOADING:
            return   # an install is running: act on the new target when it finishes
        if version in disk and (wanted is None or disk[version] == wanted):
            self._drop_transfer(model_id, now)
            self._outputs.append(ActivateVersion(model_id, version, disk[version]))
            self._set_state(model_id, now, version=version, variant_id=disk[version],
                            status=_S.OPERATIONAL, active_version=version, intent_id=iid,
                            blocker=None, blocker_detail="")
            return
        manifest = self.ledger.manifest_for(model_id, version)
        if manifest is None:
            self._drop_transfer(model_id, now)
            self._set_state(model_id, now, version=version, status=_S.NOT_DEPLOYED,
                            intent_id=iid, blocker=None,
                            blocker_detail="waiting for the manifest to arrive by gossip")
            return
        choice = select_variant(manifest, self.capabilities, target.variant_id)
        if choice.variant_id is None:
            self._drop_transfer(model_id, now)
            assert choice.reason is not None
            self._set_state(model_id, now, version=version, variant_id="", status=_S.FAILED,
                            intent_id=iid, blocker=choice.reason,
                            blocker_detail=choice.detail, blocker_since=now)
            return
        key = f"{manifest.manifest_id}/{choice.variant_id}"
        if self._transfers.get(model_id) != key:
            self._drop_transfer(model_id, now)
            self._transfers[model_id] = key
            self._set_state(model_id, now, started_at=now, bytes_done=0, bytes_reused=0,
                            bytes_fetched=0, bytes_total=manifest.variant(choice.variant_id).size)
        self._set_state(model_id, now, version=version, variant_id=choice.variant_id,
                        status=_S.DOWNLOADING, intent_id=iid, blocker=None, blocker_detail="")
        self.swarm.want(key, target.priority, now)

    def _drain_swarm(self, now: float) -> None:
        for key in self.swarm.take_completed():
            for model_id, k in list(self._transfers.items()):
                if k != key:
                    continue
                self._refresh_progress(model_id, key, now)
                del self._transfers[model_id]
                self._installing[model_id] = key
                st = self._states[model_id]
                manifest_id = key.partition("/")[0]
                self._outputs.append(InstallVariant(model_id, st.version, manifest_id,
                                                    st.variant_id, st.active_version or None))
                self._set_state(model_id, now, status=_S.LOADING, bytes_done=st.bytes_total)
                self._write_record(now, urgent=True)

    def _refresh_progress(self, model_id: str, key: str, now: float) -> None:
        p = self.swarm.progress(key)
        if p.bytes_total == 0:
            return          # the swarm does not know the key (yet, or any more)
        self._set_state(model_id, now, bytes_done=p.bytes_held, bytes_total=p.bytes_total,
                        bytes_reused=p.bytes_reused, bytes_fetched=p.bytes_fetched)

    def _update_progress(self, now: float) -> None:
        for model_id, key in self._transfers.items():
            self._refresh_progress(model_id, key, now)

    def _observe_clock(self, now: float) -> None:
        """Called first by every input: when the wall clock stepped back, move the times
        the engines keep before this input records new ones in the new clock."""
        if now < self._latest_now:          # the wall clock stepped back: re-arm timers
            self.gossip.clock_stepped_back(now)
            self.swarm.clock_stepped_back(self._latest_now - now)
            self._last_write = min(self._last_write, now)
        self._latest_now = now

    def _after_input(self, now: float) -> None:
        self._drain_swarm(now)
        for out in self.swarm.take_outputs() + self.gossip.take_outputs():
            if isinstance(out, DropPeer):
                self._dropped += 1
            self._outputs.append(out)

    # ------------------------------------------------------------------ inputs
    def peer_connected(self, peer: str, now: float) -> None:
        self._observe_clock(now)
        self._peers.add(peer)
        self.gossip.peer_connected(peer, now)
        self.swarm.peer_connected(peer, now)
        self._after_input(now)

    def peer_disconnected(self, peer: str, now: float) -> None:
        self._observe_clock(now)
        self._peers.discard(peer)
        self.gossip.peer_disconnected(peer, now)
        self.swarm.peer_disconnected(peer, now)
        self._after_input(now)

    def _must_rewrite(self, added: Iterable[object]) -> bool:
        """After a merge: is our record shadowed (an older life's higher counter) or
        suspected by a record that has seen our latest one?"""
        if self.ledger.record_counter(self.node_id) != self._own_record:
            return True
        for e in added:
            rec = getattr(e, "record", None)
            if rec is not None and any(s.node_id == self.node_id
                                       and s.counter >= self._own_record
                                       for s in rec.suspects):
                return True
        return False

    def receive(self, peer: str, message: WireMessage, now: float) -> None:
        self._observe_clock(now)
        self.gossip.heard(peer, now)
        try:
            if self.gossip.handles(message):
                result = self.gossip.receive(peer, message, now)
                if result is not None and result.changed:
                    for e in result.added:
                        if e.intent is not None:
                            self.clock.observe(e.intent.stamp, now)
                    if self._must_rewrite(result.added):
                        self._write_record(now, urgent=True)
                    self._reconcile(now)
                if result is not None and result.forged:   # honest entries above are kept
                    raise SignatureError(f"sent {result.forged} ledger entries whose "
                                         "signatures do not verify (forged or tampered)")
            elif self.swarm.handles(message):
                self.swarm.receive(peer, message, now)
            else:
                self._outputs.append(Notice(NoticeKind.UNEXPECTED_MESSAGE,
                                            f"{type(message).__name__} from {peer}"))
        except RemoteProtocolError as exc:
            self._outputs.append(DropPeer(peer, str(exc),
                                          BANS.ban_for(DropCause.MISBEHAVED)))
            self._dropped += 1
        self._after_input(now)

    def on_timer(self, now: float) -> None:
        self._observe_clock(now)
        self.swarm.on_timer(now)
        self._update_progress(now)
        if self.gossip.on_timer(now) and self.gossip.update_suspicions(now):
            self._write_record(now, urgent=True)
        elif self._dirty:
            self._write_record(now, urgent=False)
        self._after_input(now)

    def next_deadline(self) -> float | None:
        times = [self.gossip.next_deadline()]
        s = self.swarm.next_deadline()
        if s is not None:
            times.append(s)
        if self._dirty:
            times.append(self._last_write + self._progress_interval())
        return min(times)

    def issue_intent(self, intent: Intent, now: float) -> None:
        """Accept an operator-signed intent here; raises if it does not verify."""
        self._observe_clock(now)
        intent.verify(self.trust)
        self._ensure_cert(intent.issuer_key, Role.OPERATOR, now)
        if self.ledger.intent(intent.intent_id) is None:
            self._append(intent, now)
        self.clock.observe(intent.stamp, now)
        self._reconcile(now)
        self._after_input(now)

    def issue(self, operator: SigningIdentity, kind: IntentKind, model_id: str, version: str,
              now: float, *, scope: Scope | None = None,
              priority: TransferPriority = TransferPriority.NORMAL,
              variant_id: str | None = None, delta_from: str | None = None) -> Intent:
        """Issue a distribute or rollback signed by ``operator``, stamped by this node's
        clock, written here (gossip spreads it); the intent.

        Raises a :class:`~._errors.RequestRejected` (nothing signed or written) when
        the key is not admitted or the request cannot work (``_operator``)."""
        scope = scope if scope is not None else Scope()
        check_operator(self.trust, operator.public_key)
        check_request(self.ledger, kind, model_id, version, scope, variant_id, delta_from)
        intent = Intent.create(operator, kind, model_id, version, self.clock.tick(now),
                               scope=scope, priority=priority, variant_id=variant_id,
                               delta_from=delta_from)
        self.issue_intent(intent, now)
        return intent

    def cancel(self, operator: SigningIdentity, now: float, *, intent_id: str | None = None,
               model_id: str = "") -> Intent:
        """Cancel the intent ``intent_id``, or (without one) the intent this node follows
        for ``model_id``, signed by ``operator``; the cancel. Idempotent: when a cancel
        already stands for it, that cancel (nothing is written).

        Raises a :class:`~._errors.RequestRejected` (nothing signed or written) when
        the key is not admitted or names no distribute or rollback known here."""
        check_operator(self.trust, operator.public_key)
        target = cancel_target(self.ledger, None if intent_id else self.desired(model_id),
                               intent_id=intent_id, model_id=model_id)
        standing = cancel_of(self.ledger, self.trust, target)
        if standing is not None:
            return standing
        intent = Intent.create(operator, IntentKind.CANCEL, target.model_id, target.version,
                               self.clock.tick(now), cancels=target.intent_id)
        self.issue_intent(intent, now)
        return intent

    def announce_trust(self, item: Certificate | Revocation, now: float) -> bool:
        """Admit a root-signed certificate or revocation here and write it to the ledger,
        so that gossip carries it to every node. Raises :class:`UntrustedKey` or
        :class:`SignatureError` when the fleet root did not sign it (for this fleet);
        False when the ledger already holds it (nothing written)."""
        self._observe_clock(now)
        item.verify(self.trust.root_key, self.trust.fleet_id, self.trust.verifier)
        for e in self.ledger.entries():
            if e.certificate == item or e.revocation == item:
                return False
        self._append(item, now)
        self._reconcile(now)
        self._after_input(now)
        return True

    def publish_manifest(self, manifest: Manifest, now: float) -> Manifest:
        """Write a publisher-signed manifest to the ledger; the manifest that stands.

        One ``(model, version)`` names one content forever: a manifest whose content
        equals the one already published is a no-op (the published one is returned);
        different content under a published version raises :class:`ManifestConflict`.
        """
        self._observe_clock(now)
        manifest.verify(self.trust)
        existing = self.ledger.manifest_for(manifest.model_id, manifest.version)
        if existing is not None and existing.manifest_id != manifest.manifest_id:
            if (existing.variants, existing.base_version) == (manifest.variants,
                                                               manifest.base_version):
                return existing
            raise ManifestConflict(
                f"{manifest.model_id} {manifest.version} is already published with different "
                f"content (manifest {existing.manifest_id[:16]}); publish the change under "
                f"a new version")
        self._ensure_cert(manifest.publisher_key, Role.PUBLISHER, now)
        if self.ledger.manifest_by_id(manifest.manifest_id) is None:
            self._append(manifest, now)
        self._reconcile(now)
        self._after_input(now)
        return manifest

    def set_capabilities(self, caps: Capabilities, now: float) -> None:
        self._observe_clock(now)
        self.capabilities = caps
        for model_id, st in list(self._states.items()):
            if st.status is _S.FAILED and st.blocker in _RETRYABLE:
                self._set_state(model_id, now, intent_id="")   # try again with the new probe
        self._write_record(now, urgent=True)
        self._reconcile(now)
        self._after_input(now)

    def chunk_stored(self, chunk_hash: bytes, now: float) -> None:
        self._observe_clock(now)
        self.swarm.chunk_stored(chunk_hash, now)
        self._after_input(now)

    def chunk_store_failed(self, chunk_hash: bytes, reason: BlockerReason, detail: str,
                           now: float) -> None:
        self._observe_clock(now)
        self.swarm.chunk_store_failed(chunk_hash, now)
        hit = False
        for model_id, key in self._transfers.items():   # only models that want this chunk
            refs = self._lookup(key)
            if refs is not None and any(r.hash == chunk_hash for r in refs):
                hit = True
                self._set_state(model_id, now, blocker=reason, blocker_detail=detail,
                                blocker_since=now)
        if hit:
            self._write_record(now, urgent=True)
        else:
            self._outputs.append(Notice(NoticeKind.STORE_FAILED, f"chunk {chunk_hash.hex()[:16]}: "
                                        f"{reason.value}: {detail}"))
        self._after_input(now)

    def chunk_missing(self, chunk_hash: bytes, now: float) -> None:
        self._observe_clock(now)
        self.swarm.chunk_missing(chunk_hash, now)
        self._after_input(now)

    def upload_done(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """The piece of a ``ServeChunk`` has been sent (see ``SwarmEngine.upload_done``)."""
        self._observe_clock(now)
        self.swarm.upload_done(peer, chunk_hash, now)
        self._after_input(now)

    def install_finished(self, model_id: str, version: str, variant_id: str, ok: bool,
                         reason: BlockerReason | None, detail: str, now: float) -> None:
        self._observe_clock(now)
        key = self._installing.pop(model_id, None)
        if key is not None:
            self._refresh_progress(model_id, key, now)
        if ok:
            disk = self._disk.setdefault(model_id, {})
            disk[version] = variant_id
            self._set_state(model_id, now, version=version, variant_id=variant_id,
                            status=_S.OPERATIONAL, active_version=version, blocker=None,
                            blocker_detail="", installed=tuple(sorted(disk)))
        else:
            self._set_state(model_id, now, version=version, variant_id=variant_id,
                            status=_S.FAILED, blocker=reason or BlockerReason.DEPLOYMENT_FAILED,
                            blocker_detail=detail, blocker_since=now)
        self._write_record(now, urgent=True)
        self._reconcile(now)
        self._after_input(now)

    # ------------------------------------------------------------------ outputs, queries
    def take_outputs(self) -> list[Output]:
        out = [o for o in self._outputs
               if not isinstance(o, SendMessage) or o.peer in self._peers]
        self._outputs = []
        return out

    def model_state(self, model_id: str) -> ModelState | None:
        return self._states.get(model_id)

    def desired(self, model_id: str) -> Intent | None:
        return resolve(self.ledger.intents(), model_id, self.node_id, self.ledger.records(),
                       self.trust)

    def convergence(self, model_id: str, version: str, now: float) -> ModelConvergenceStatus:
        records = self.ledger.records()
        g = self.config.gossip
        counters = {n: self.ledger.record_counter(n) for n in records}
        lost = unreachable_nodes(records, counters, g.min_suspecting_peers,
                                 g.unreachable_after, now)
        return compute_convergence(model_id, version, self.ledger.intents(), records,
                                   self.trust, lost, now)

    def statistics(self) -> NodeStatistics:
        led = self.ledger.statistics()
        return NodeStatistics(self.node_id, len(self._peers), self._record_writes,
                              led.rejected, self._dropped, self.gossip.statistics(), led,
                              self.swarm.statistics())
