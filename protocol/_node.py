"""The node state machine: ledger + gossip + desired state + variant choice + swarm.

Theory of operation
-------------------
:class:`NodeMachine` is sans-IO (after h11): inputs are method calls carrying ``now``;
outputs (``protocol/_events.py``) pile up until the driver calls :meth:`take_outputs`. After
every input that may have changed the ledger, the machine *reconciles* each model toward the
intent the ledger resolves for this node: what it runs, fetches and installs, and the rules
for each, are ``_deployments``. This module dispatches the inputs to the engines (gossip,
swarm, manifest fetch, deployments), writes the node's own entries, and answers the queries.

What a driver must do beyond carrying out I/O is an output too: :class:`PersistLedger`
before anything that may carry an entry the node just wrote, and ``DropPeer.ban_for`` -- how
long a dropped peer stays away -- from the one policy in ``_bans``.

Whom to hold sessions with is the overlay's decision (``_overlay``): discovery only reports
peers (``peer_known``/``peer_lost``); the machine answers with ``DialPeer`` and
``ClosePeer`` outputs, and a session it will not keep (over ``degree + slack``) is declined
with an ``OverlayFull`` before it is closed. A declined peer never reaches the gossip or
swarm engines. Gossip, pushes and the swarm address connected peers only, so all of them run
over the active set.

A revoked key loses its sessions at once: whenever the trust gains a revocation (merged from
gossip, or announced here), every connected peer whose node key is no longer admitted is
dropped (``DropPeer``, cause *revoked*), nothing more is sent or served to it, and any input
that still arrives from it is refused (dropped again, not merged). The transport's trust
refuses its new handshakes. A peer whose certificate expires while connected is dropped the
same way (cause *expired*) as soon as an input's clock passes the expiry: the machine keeps
the soonest expiry among its connected peers, so the check costs nothing until then.

The node's own record is rewritten on every status change, at most every
``record_min_interval`` seconds for mere progress (and at most every ``N /
fleet_progress_rate`` seconds in a fleet of N: every record a node writes reaches every
other node, so progress alone would cost each node's links N records a second;
docs/LEDGER.md), when its set of suspected direct peers changes (see ``_gossip``), and to
*refute* a suspicion: when a record arrives that suspects this node at its current record
counter, the node (alive, since it reads it) writes a new record, which makes that suspicion
stale. A quiet fleet writes nothing.

Counters survive a restart without persistence: every own write is stamped at least the wall
clock in milliseconds (``now``), so a node that comes back with an empty ledger writes above
its earlier life; and when gossip brings an own entry with a higher counter (an older life's
record, or a clock that went backwards), the ledger's next counter moves past it and the
record is rewritten at once.

A wall clock that steps *back* would otherwise leave every timer armed in the old time (the
next gossip round, the next record write, when peers were last heard): the node would sleep,
and suspect nobody, until the clock caught up. Every input that finds ``now`` below the
previous input's ``now`` pulls those times back to ``now``
(``GossipEngine.clock_stepped_back``). A step *forward* needs nothing: due timers fire once
and re-arm from the new ``now``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ._bans import BANS, DropCause
from ._capabilities import Capabilities
from ._chunking import chunk_matches
from ._config import Config
from ._convergence import ModelConvergenceStatus, compute_convergence, unreachable_nodes
from ._deployments import Deployments
from ._errors import ManifestConflict, RemoteProtocolError, RequestRejected, SignatureError
from ._events import (
    DropPeer,
    Notice,
    NoticeKind,
    Output,
    PersistLedger,
    SendMessage,
    ServeChunk,
)
from ._gossip import GossipEngine, GossipStatistics, urgent
from ._hlc import HybridClock
from ._identity import Certificate, FleetTrust, Revocation, Role, SigningIdentity, fingerprint
from ._intents import Intent, IntentKind, RolloutPolicy, Scope, resolve
from ._ledger import Ledger, LedgerStatistics
from ._manifest import ChunkRef, Manifest
from ._manifest_fetch import FetchStatistics, ManifestFetch
from ._operator import cancel_of, cancel_target, check_operator, check_request
from ._overlay import Overlay, OverlayFull, OverlayStatistics
from ._policy import POLICY_CHECK_INTERVAL, policies_to_enact
from ._records import ModelState, NodeRecord
from ._rng import Rng
from ._settle import settles_to_write
from ._swarm import SwarmEngine, SwarmStatistics
from ._types import BlockerReason, TransferPriority
from ._wire import WireMessage

__all__ = ["NodeMachine", "NodeStatistics"]

RETIRE_INTERVAL = 10.0   # seconds between passes that forget void history (_settle)


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
    policy_actions: int = 0              # rollout policies this node enacted
    overlay: OverlayStatistics | None = None
    fetch: FetchStatistics | None = None   # manifest bodies asked for and answered


class NodeMachine:
    def __init__(self, *, config: Config, identity: SigningIdentity, certificate: Certificate,
                 trust: FleetTrust, rng: Rng, now: float, name: str = "",
                 formation: str = "", capabilities: Capabilities | None = None,
                 held_chunks: Iterable[bytes] = (), ledger: Ledger | None = None,
                 installed: Iterable[tuple[str, str, str]] = (),
                 chunk_verifier: Callable[[bytes, int, bytes | memoryview], bool] | None = None
                 ) -> None:
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
        self._declined: set[str] = set()         # sessions the overlay declined, not yet closed
        self._revoked: frozenset[str] = frozenset()   # node ids whose key was revoked
        self._expired: frozenset[str] = frozenset()   # peers dropped: certificate expired
        self._cut: frozenset[str] = frozenset()       # both: nothing more to or from them
        self._expiry_ms = math.inf                    # soonest expiry of a connected peer
        self._record_writes = 0
        self._dropped = 0
        self._enacted: set[str] = set()          # distributes whose policy we enacted
        self._policy_actions = 0
        self._next_policy_check = now
        self._next_retire = now + RETIRE_INTERVAL
        self._settled: set[str] = set()           # intents we latched as settled
        self._last_write = -1e18
        self._latest_now = now                   # detects a wall clock stepping back
        trust.observe_clock(now)                 # certificate expiry is judged at ``now``
        self.gossip = GossipEngine(node_id=self.node_id, config=config.gossip, rng=rng,
                                   ledger=self.ledger, now=now)
        self.overlay = Overlay(node_id=self.node_id, config=config.overlay, rng=rng, now=now)
        self.fetch = ManifestFetch(self.ledger)      # chunk lists, by id (_manifest_fetch)
        self.swarm = SwarmEngine(node_id=self.node_id, config=config.swarm, rng=rng,
                                 held=set(held_chunks), lookup=self._lookup,
                                 verifier=chunk_verifier or chunk_matches)
        self.overlay.load = self.swarm.peer_load
        self._deployments = Deployments(
            node_id=self.node_id, trust=trust, ledger=self.ledger, swarm=self.swarm,
            lookup=self._lookup, emit=self._emit, write_record=self._write_urgent,
            installed=installed, now=now, keep_versions=config.ledger.keep_versions)
        if not trust.add_certificate(certificate):
            raise RemoteProtocolError("this node's certificate is not signed by the fleet root")
        self._refresh_revoked()
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
        m = self.ledger.manifest_by_id(manifest_id)     # (the body: chunk lists)
        v = next((v for v in m.variants if v.variant_id == variant_id), None) if m else None
        return None if v is None else v.distinct_chunks()

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

    def _emit(self, output: Output) -> None:
        self._outputs.append(output)

    def _write_record(self, now: float, urgent: bool) -> None:
        if not urgent and now - self._last_write < self._progress_interval():
            self._deployments.dirty = True
            return
        record = NodeRecord(self.name, self.formation, self.capabilities, "",
                            self._deployments.states(), self.gossip.suspects(), now)
        self._own_record = self._append(record, now)
        self._record_writes += 1
        self._last_write = now
        self._deployments.dirty = False

    def _write_urgent(self, now: float) -> None:
        self._write_record(now, urgent=True)

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

    def _reconcile(self, now: float) -> None:
        self._deployments.reconcile(self.capabilities, now)
        self.fetch.want(self._deployments.bodies_wanted, now)


    # ------------------------------------------------------------------ revocation
    def _refresh_revoked(self) -> None:
        """Recompute the node ids whose key the fleet root revoked (and did not admit
        again with a later certificate)."""
        trust = self.trust
        self._revoked = frozenset(fingerprint(r.subject_key) for r in trust.revocations()
                                  if not trust.is_admitted(r.subject_key, Role.NODE))
        # a renewal admits an expired peer again
        self._expired = frozenset(p for p in self._expired if not self._admitted(p))
        self._cut = self._revoked | self._expired

    def _admitted(self, peer: str) -> bool:
        cert = self.trust.node_certificate(peer)
        return cert is not None and self.trust.is_admitted(cert.subject_key, Role.NODE)

    def _drop_cut(self, peer: str) -> None:
        """Drop ``peer`` (again, for input still in flight: drivers take it as often)."""
        if peer in self._revoked:
            why, cause = "its key was revoked by the fleet root", DropCause.REVOKED
        else:
            why, cause = "its certificate expired", DropCause.EXPIRED
        self._outputs.append(DropPeer(peer, why, BANS.ban_for(cause)))
        if peer in self._peers:          # counted once per session
            self._peers.discard(peer)
            self._dropped += 1

    def _trust_changed(self) -> None:
        """After the trust gained a certificate or revocation: drop every connected peer
        whose key is no longer admitted, at once."""
        self._refresh_revoked()
        for peer in sorted(self._peers & self._cut):
            self._drop_cut(peer)
        self._refresh_expiry()

    def _refresh_expiry(self) -> None:
        """The soonest time a connected peer's certificate expires."""
        certs = (self.trust.node_certificate(p) for p in self._peers)
        self._expiry_ms = min((c.expires_at for c in certs if c is not None),
                              default=math.inf)

    def _drop_expired(self) -> None:
        """The clock passed a connected peer's expiry: drop every peer no longer
        admitted (whose renewal has not arrived)."""
        now_ms = self.trust.now_ms
        gone = frozenset(p for p in self._peers
                         if (c := self.trust.node_certificate(p)) is not None
                         and c.expired(now_ms))
        if gone:
            self._expired |= gone
            self._cut = self._revoked | self._expired
            for peer in sorted(gone):
                self._drop_cut(peer)
        self._refresh_expiry()

    # ------------------------------------------------------------------ reconcile
    def _observe_clock(self, now: float) -> None:
        """Called first by every input: when the wall clock stepped back, move the times
        the engines keep before this input records new ones in the new clock."""
        if now < self._latest_now:          # the wall clock stepped back: re-arm timers
            self.gossip.clock_stepped_back(now)
            self.fetch.clock_stepped_back(now)
            self.swarm.clock_stepped_back(self._latest_now - now)
            self._last_write = min(self._last_write, now)
        self._latest_now = now
        self.trust.observe_clock(now)
        if self.trust.now_ms >= self._expiry_ms:
            self._drop_expired()

    def _after_input(self, now: float) -> None:
        self._deployments.drain_swarm(now)
        revoked = self._cut
        for out in (self.swarm.take_outputs() + self.gossip.take_outputs()
                    + self.overlay.take_outputs() + self.fetch.take_outputs()):
            if isinstance(out, DropPeer):
                if out.peer in revoked:
                    continue              # already dropped as revoked (or expired)
                self._dropped += 1
            elif revoked and isinstance(out, (SendMessage, ServeChunk)) and out.peer in revoked:
                continue                  # nothing more to a revoked key
            self._outputs.append(out)

    # ------------------------------------------------------------------ inputs
    def peer_known(self, peer: str, address: str, now: float) -> None:
        """Discovery found ``peer`` at ``address`` (``host:port``): the overlay may dial it."""
        self._observe_clock(now)
        if peer not in self._cut:
            self.overlay.peer_known(peer, address, now)
        self._after_input(now)

    def peer_lost(self, peer: str, now: float) -> None:
        """Discovery saw ``peer`` leave."""
        self._observe_clock(now)
        self.overlay.peer_lost(peer, now)
        self._after_input(now)

    def dial_failed(self, peer: str, now: float) -> None:
        """A ``DialPeer`` did not open a session."""
        self._observe_clock(now)
        self.overlay.dial_failed(peer, now)
        self._after_input(now)

    def peer_connected(self, peer: str, now: float, inbound: bool = False) -> None:
        """A session with ``peer`` opened; ``inbound``: the peer dialled us."""
        self._observe_clock(now)
        if peer in self._expired and self._admitted(peer):   # renewed since
            self._expired -= {peer}
            self._cut = self._revoked | self._expired
        if peer in self._cut:            # the transport should have refused it
            self._drop_cut(peer)
            return
        if peer not in self._peers and not self.overlay.accept(peer, inbound, now):
            self._declined.add(peer)      # the overlay's outputs decline and close it
            self._after_input(now)
            return
        self._declined.discard(peer)
        self._peers.add(peer)
        cert = self.trust.node_certificate(peer)
        if cert is not None:
            self._expiry_ms = min(self._expiry_ms, cert.expires_at)
        self.gossip.peer_connected(peer, now)
        self.swarm.peer_connected(peer, now)
        self._after_input(now)

    def peer_disconnected(self, peer: str, now: float) -> None:
        self._observe_clock(now)
        if peer in self._declined and peer not in self._peers:
            self._declined.discard(peer)
            self.overlay.peer_disconnected(peer, now)
            self._after_input(now)
            return
        self._peers.discard(peer)
        if self.overlay.peer_disconnected(peer, now):
            self.gossip.forget(peer)      # closed on purpose: its silence means nothing
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
        if peer in self._cut:            # admission is re-checked before every input
            self._drop_cut(peer)
            return
        if isinstance(message, OverlayFull):   # may arrive after the session closed
            self.overlay.receive_full(peer, message, now)
            if peer not in self._peers:
                self.gossip.forget(peer)       # it declined or closed us: not a failure
            self._after_input(now)
            return
        if peer in self._declined:       # what it sent before it learnt it was declined
            return
        self.gossip.heard(peer, now)
        try:
            if self.gossip.handles(message):
                result = self.gossip.receive(peer, message, now)
                if result is not None and result.changed:
                    trust_changed = False
                    for e in result.added:
                        if e.intent is not None:
                            self.clock.observe(e.intent.stamp, now)
                        elif e.revocation is not None or e.certificate is not None:
                            trust_changed = True
                    if trust_changed:
                        self._trust_changed()
                    if self._must_rewrite(result.added):
                        self._write_record(now, urgent=True)
                    self._reconcile(now)
                if result is not None and result.forged:   # honest entries above are kept
                    raise SignatureError(f"sent {result.forged} ledger entries whose "
                                         "signatures do not verify (forged or tampered)")
            elif self.swarm.handles(message):
                self.swarm.receive(peer, message, now)
            elif self.fetch.handles(message):
                if self.fetch.receive(peer, message, now):
                    self._reconcile(now)
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
        if now >= self._next_policy_check:
            self._next_policy_check = now + POLICY_CHECK_INTERVAL
            self._enact_policies(now)
            self._settle(now)
        if now >= self._next_retire:
            self._next_retire = now + RETIRE_INTERVAL
            if self.config.ledger.retire:
                self.ledger.retire()
            self._deployments.prune(now)
        self.swarm.on_timer(now)
        self.overlay.on_timer(now)
        self.fetch.on_timer(now, sorted(self._peers))
        self._deployments.update_progress(now)
        if self.gossip.on_timer(now) and self.gossip.update_suspicions(now):
            self._write_record(now, urgent=True)
        elif self._deployments.dirty:
            self._write_record(now, urgent=False)
        self._after_input(now)

    def _enact_policies(self, now: float) -> None:
        """Write the ``policy`` intent of every distribute whose rollout policy crossed
        its threshold here and has not acted (``_policy``)."""
        for d in policies_to_enact(self.ledger.intents(), self.ledger.records(), self.trust):
            if d.intent_id in self._enacted:
                continue
            self._enacted.add(d.intent_id)
            act = Intent.create(self.identity, IntentKind.POLICY, d.model_id, d.version,
                                self.clock.tick(now), cancels=d.intent_id)
            self._append(act, now)
            self._policy_actions += 1
            self._outputs.append(Notice(NoticeKind.POLICY_ACTED, f"{d.model_id} "
                                        f"{d.version}: rollout policy acted "
                                        f"({d.policy.text() if d.policy else ''})",
                                        d.model_id, d.intent_id))
            self._reconcile(now)

    def _settle(self, now: float) -> None:
        """Write the ``settle`` intent of every intent carried out everywhere (or past
        the horizon) that dominates older history (``_settle``)."""
        horizon_ms = int(self.config.ledger.settle_after * 1000)
        for j in settles_to_write(self.ledger.intents(), self.ledger.records(), self.trust,
                                  self.node_id, int(now * 1000), horizon_ms):
            if j.intent_id in self._settled:
                continue
            self._settled.add(j.intent_id)
            self._append(Intent.create(self.identity, IntentKind.SETTLE, j.model_id,
                                       j.version, self.clock.tick(now), cancels=j.intent_id),
                         now)

    def next_deadline(self) -> float | None:
        times = [self.gossip.next_deadline(), self.overlay.next_deadline()]
        times += [t for t in (self.swarm.next_deadline(), self.fetch.next_deadline())
                  if t is not None]
        if self._deployments.dirty:
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
              variant_id: str | None = None, delta_from: str | None = None,
              policy: RolloutPolicy | None = None) -> Intent:
        """Issue a distribute or rollback signed by ``operator``, stamped by this node's
        clock, written here (gossip spreads it); the intent. ``policy``: a distribute's
        rollout policy (``_policy``).

        Raises a :class:`~._errors.RequestRejected` (nothing signed or written) when
        the key is not admitted or the request cannot work (``_operator``)."""
        scope = scope if scope is not None else Scope()
        check_operator(self.trust, operator.public_key)
        check_request(self.ledger, kind, model_id, version, scope, variant_id, delta_from)
        if policy is not None and kind is not IntentKind.DISTRIBUTE:
            raise RequestRejected("only a distribute carries a rollout policy")
        intent = Intent.create(operator, kind, model_id, version, self.clock.tick(now),
                               scope=scope, priority=priority, variant_id=variant_id,
                               delta_from=delta_from, policy=policy)
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
        self._trust_changed()
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
        existing = self.ledger.head_for(manifest.model_id, manifest.version)
        if existing is not None and existing.manifest_id != manifest.manifest_id:
            body = self.ledger.manifest_by_id(existing.manifest_id)
            if body is not None and (body.variants, body.base_version) == (
                    manifest.variants, manifest.base_version):
                return body
            raise ManifestConflict(
                f"{manifest.model_id} {manifest.version} is already published with different "
                f"content (manifest {existing.manifest_id[:16]}); publish the change under "
                f"a new version")
        self._ensure_cert(manifest.publisher_key, Role.PUBLISHER, now)
        if self.ledger.head_by_id(manifest.manifest_id) is None:
            self._append(manifest, now)
        self.ledger.add_body(manifest)     # (a head held without its body: here it is)
        self._reconcile(now)
        self._after_input(now)
        return manifest

    def set_capabilities(self, caps: Capabilities, now: float) -> None:
        self._observe_clock(now)
        self.capabilities = caps
        self._deployments.retry_blocked(now)
        self._write_record(now, urgent=True)
        self._reconcile(now)
        self._after_input(now)

    def chunk_stored(self, chunk_hash: bytes, now: float) -> None:
        self._observe_clock(now)
        self.swarm.chunk_stored(chunk_hash, now)
        self._after_input(now)

    def chunks_stored(self, chunk_hashes: Iterable[bytes], now: float) -> None:
        """:meth:`chunk_stored` for several chunks written together."""
        self._observe_clock(now)
        self.swarm.chunks_stored(chunk_hashes, now)
        self._after_input(now)

    def chunk_store_failed(self, chunk_hash: bytes, reason: BlockerReason, detail: str,
                           now: float) -> None:
        self._observe_clock(now)
        self.swarm.chunk_store_failed(chunk_hash, now)
        if self._deployments.store_failed(chunk_hash, reason, detail, now):
            self._write_record(now, urgent=True)
        else:
            self._outputs.append(Notice(NoticeKind.STORE_FAILED, f"chunk {chunk_hash.hex()[:16]}: "
                                        f"{reason.value}: {detail}"))
        self._after_input(now)

    def chunk_missing(self, chunk_hash: bytes, now: float) -> None:
        self._observe_clock(now)
        self.swarm.chunk_missing(chunk_hash, now)
        self._after_input(now)

    def chunks_gone(self, chunk_hashes: Iterable[bytes], now: float) -> None:
        """The driver deleted these chunks (a ``RemoveVersions`` it carried out): no
        longer held, served or announced."""
        self._observe_clock(now)
        self.swarm.chunks_removed(chunk_hashes, now)
        self._after_input(now)

    def upload_done(self, peer: str, chunk_hash: bytes, now: float) -> None:
        """The piece of a ``ServeChunk`` has been sent (see ``SwarmEngine.upload_done``)."""
        self._observe_clock(now)
        self.swarm.upload_done(peer, chunk_hash, now)
        self._after_input(now)

    def uploads_done(self, peer: str, chunk_hashes: Iterable[bytes], now: float) -> None:
        """:meth:`upload_done` for a run of pieces sent together."""
        self._observe_clock(now)
        self.swarm.uploads_done(peer, chunk_hashes, now)
        self._after_input(now)

    def install_finished(self, model_id: str, version: str, variant_id: str, ok: bool,
                         reason: BlockerReason | None, detail: str, now: float,
                         unhealthy: str | None = None, refetch: bool = False) -> None:
        """An install ended; ``unhealthy``: it succeeded, but the variant's health check
        failed through its settling window (the model is ``degraded``). ``refetch``: it
        failed because chunks held turned out bad or gone (a model rewrote its own
        installed file; the driver reported them with :meth:`chunk_missing` first): the
        version is fetched again, then installed again."""
        self._observe_clock(now)
        self._deployments.install_finished(model_id, version, variant_id, ok, reason, detail,
                                           now, unhealthy, refetch)
        self._write_record(now, urgent=True)
        self._reconcile(now)
        self._after_input(now)

    def health_reported(self, model_id: str, version: str, unhealthy: str | None,
                        now: float) -> None:
        """A health check of the running ``version``: passed (``unhealthy`` None) or
        failed with that detail. The record is rewritten at once when the status moves
        between ``operational`` and ``degraded``."""
        self._observe_clock(now)
        if self._deployments.health_reported(model_id, version, unhealthy, now):
            self._write_record(now, urgent=True)
        self._after_input(now)

    # ------------------------------------------------------------------ outputs, queries
    def take_outputs(self) -> list[Output]:
        peers, declined = self._peers, self._declined
        out = [o for o in self._outputs
               if not isinstance(o, SendMessage) or o.peer in peers
               or (o.peer in declined and isinstance(o.message, OverlayFull))]
        self._outputs = []
        for o in out:
            if isinstance(o, DropPeer):    # never dialled again before its ban ends
                self.overlay.ban(o.peer, self._latest_now + o.ban_for)
        return out

    def model_state(self, model_id: str) -> ModelState | None:
        return self._deployments.state(model_id)

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
                              self.swarm.statistics(), self._policy_actions,
                              self.overlay.statistics(), self.fetch.statistics())
