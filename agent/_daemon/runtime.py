"""The daemon: drives one :class:`protocol._node.NodeMachine` with real I/O (trio).

Theory of operation
-------------------
Everything runs in one trio nursery:

* a :class:`PeerListener` accepts authenticated sessions. Whom to dial is the
  machine's decision (its overlay, ``protocol/_overlay.py``): discovery only
  reports peers to it (``PeerKnown``/``PeerGone``), and the runtime carries out
  its ``DialPeer`` (one dial task; a failure is reported back as ``DialFailed``)
  and ``ClosePeer`` (the session closes once what is queued for it -- an
  ``OverlayFull`` declining it -- has been written). While ``DECLINE_ROOM``
  declines are under way, a further inbound session is closed unheard: a burst of
  dials at start-up cannot hold more than ``limit + DECLINE_ROOM`` sessions open.
  A static peer, whose node id is unknown until its handshake, is dialled once at start (again with
  back-off until it answers) and then reported like a discovered one; its session
  is offered to the machine like any other. Two nodes that dial each other at
  once end up with two channels; both sides keep the one *opened by the smaller
  node id* and close the other, so the choice agrees without a message. To make
  that rare (in a fleet within the degree every node dials every other), the
  larger id waits a short grace period before its dial (it normally gets dialled
  first, and then has nothing to dial).
* each session has a reader task and a writer task. Readers put received
  messages into the single *inbox* of the machine task, but only after taking
  a token of a semaphore the machine task gives back once it has handled the
  message: a fast sender cannot make the daemon queue without bound (TCP
  backpressure reaches the sender). Inbox items are the small frozen event
  classes of :mod:`agent._daemon.inbox`. Writers drain a bounded per-peer queue;
  a :class:`ServeChunk` is read from the store by the writer of that peer (in a
  worker thread), so slow disks and slow peers never stall the machine.
* ONE machine task owns the :class:`NodeMachine`: it takes batches from the
  inbox, feeds them in, and carries out the outputs. It sleeps until the
  machine's :meth:`next_deadline` (the machine's clock is the runtime's ``clock``,
  wall-clock seconds, ``time.time`` unless a test injects another -- one derived
  from ``trio.current_time()`` lets the whole daemon run on trio's ``MockClock``;
  the deadline is converted to trio's clock for the sleep), then calls ``on_timer``.
* a dropped peer (``DropPeer``) is neither redialled nor accepted for the
  ``ban_for`` seconds the machine decided (``protocol/_bans.py``).
* chunk writes (``StoreChunk``) go to a small pool of store workers (fsync in
  threads); installs and removals run in a worker thread; all report back through
  the inbox (:mod:`agent._daemon.disk_tasks`, with the ledger's saves).

Persistence: the ledger is saved atomically. Whenever the node wrote a new
entry of its *own* the machine says so with a ``PersistLedger`` output, placed
before the outputs that may carry the entry, and the ledger is saved when that
output is carried out (an entry a peer has seen must survive a crash, or the node
would reuse its counter after ``kill -9``); other changes are saved at most every
``ledger_save_interval`` seconds, and on shutdown. Chunks are durable once
stored, so after a restart the store index *is* the set of held chunks and the
transfer resumes.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

import trio

from agent._config import AgentConfig
from agent._daemon.control_messages import PeerEntry
from agent._daemon.discovery import Discovery, DiscoveryEvent, PeerFound, PeerLost
from agent._daemon.disk_tasks import STORE_BATCH, STORE_WORKERS
from agent._daemon.health import HealthMonitor
from agent._daemon.heap import HeapTrimmer
from agent._daemon.inbox import (
    ChunkMissing,
    ChunksGone,
    ChunkStored,
    ChunkStoreFailed,
    ControlCall,
    DialFailed,
    HealthChecked,
    InboxEvent,
    InstallDone,
    PeerDown,
    PeerGone,
    PeerKnown,
    PeerMessage,
    PeerUp,
    PiecesSent,
)
from agent._daemon.lock import DataDirLock
from agent._daemon.log import log_own_problems
from agent._daemon.probe import probe_machine
from agent._daemon.redial import backoff_delay
from agent._daemon.transport import (
    PeerListener,
    SecureChannel,
    TransportError,
    dial,
)
from agent._daemon.writer import CLOSE, Session, SessionWriter
from agent._errors import AgentError
from agent._storage.install import Installer
from agent._storage.keys import load_key
from agent._storage.paths import DataDir
from agent._storage.persist import load_cert, load_ledger, save_ledger
from agent._storage.publish import announce_stored
from agent._storage.store import ChunkStore
from protocol import (
    ActivateVersion,
    ClosePeer,
    DialPeer,
    DropPeer,
    FleetTrust,
    InstallVariant,
    Manifest,
    NodeMachine,
    Notice,
    NoticeKind,
    Output,
    OverlayFull,
    PersistLedger,
    ProtocolError,
    RemoveVersions,
    Role,
    SendMessage,
    ServeChunk,
    ShoalError,
    SigningIdentity,
    StoreChunk,
    is_wire_message,
)

__all__ = ["NodeRuntime", "RuntimeStatistics"]

log = logging.getLogger("shoal.daemon")

_INBOX_TOKENS = 64            # network messages queued for the machine at most
_OUTBOX = 64                  # messages queued per peer before the machine waits
_SEND_STALL = 10.0            # seconds a peer may refuse to drain its queue before it is dropped
_GRACE = 2.0                  # the larger id waits this long before dialling
DECLINE_ROOM = 2              # inbound sessions open beyond the overlay's limit, being declined


#: Something the runtime starts beside it: ``await nursery.start(service, runtime)``.
Service = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    node_id: str
    listen_port: int
    peers: int
    messages_in: int
    outputs: int
    chunks_stored: int
    chunks_served: int
    ledger_saves: int
    installs: int
    sessions_refused_duplicate: int
    peers_dropped: int
    throttled_s: float = 0.0    # seconds sessions' reads waited: peers over their rate
    health_checks: int = 0      # health checks run (agent/_daemon/health.py)
    health_failures: int = 0    # ... that failed
    messages_by_type: dict[str, int] = field(default_factory=dict)  # messages_in by class


class NodeRuntime(SessionWriter):
    """Builds the node from its data directory and config and runs it until cancelled.

    ``clock`` gives the node's wall-clock time in seconds (``time.time`` by default);
    every time the runtime hands the machine, or compares with a ban or a save, comes
    from it. It must advance with trio's clock: a test on ``MockClock`` passes one
    such as ``lambda: trio.current_time() + epoch`` (and builds the runtime inside
    ``trio.run``)."""

    def __init__(self, config: AgentConfig, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.data = DataDir(Path(config.data_dir))
        self.data.root.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(self.data.root, config.control_socket)
        try:
            self._setup(config, rng)
        except BaseException:
            self._lock.release()
            raise

    def _setup(self, config: AgentConfig, rng: random.Random | None) -> None:
        self.rng = rng or random.Random()
        self.identity = load_key(self.data.keys, "node")
        cert = load_cert(self.data.keys, "node")
        assert cert is not None
        self.certificate = cert
        left_days = (cert.expires_at / 1000 - self.clock()) / 86_400
        if left_days < 30:  # renew: `shoal fleet admit` again, `keys add-cert`, restart
            log.warning("this node's certificate %s; ask the fleet root to renew it "
                        "(docs/OPERATING.md)", f"expires in {left_days:.1f} days"
                        if left_days > 0 else f"EXPIRED {-left_days:.1f} days ago")
        self.trust = FleetTrust(config.fleet_id, config.fleet_root_key)
        for role in ("publisher", "operator"):
            c = load_cert(self.data.keys, role, required=False)
            if c is not None and not self.trust.add_certificate(c):
                log.warning("%s certificate is not signed by this fleet's root; ignored", role)
        self.publisher: SigningIdentity | None = self._optional_key("publisher")
        self.operator: SigningIdentity | None = self._optional_key("operator")
        self.store = ChunkStore(self.data.store)
        self.installer = Installer(self.data, self.store)
        ledger, note = load_ledger(self.data.root, self.trust)
        log.info("%s", note)
        for m in self.store.manifests():      # the bodies of manifest heads, held or to come
            try:
                ledger.offer_local_body(m)
            except ShoalError as exc:
                log.warning("manifest %s in the store is not the one its head names: %s",
                            m.manifest_id[:16], exc)
        installed: list[tuple[str, str, str]] = []
        for iv in sorted(self.installer.installed(), key=lambda v: (v.model_id, v.active)):
            installed.append((iv.model_id, iv.version, iv.variant_id))
        self.probe_report = probe_machine(str(self.data.root), config.probe)
        self.capabilities = self.probe_report.capabilities
        for line in self.probe_report.summary():
            log.info("probe: %s", line.strip())
        now = self.clock()
        self.machine = NodeMachine(
            config=config.protocol_config(), identity=self.identity,
            certificate=self.certificate, trust=self.trust, rng=self.rng, now=now,
            name=config.node_name or self.certificate.name, formation=config.formation,
            capabilities=self.capabilities, held_chunks=self.store.hashes(), ledger=ledger,
            installed=installed)
        self.node_id = self.machine.node_id
        announce_stored(self.store, self.machine.ledger,
                        lambda m: self.machine.publish_manifest(self._head_signed(m), now))
        for m in self.machine.ledger.bodies():
            self.store.put_manifest(m)
        self._track_stored_manifests()
        self.port = 0
        self._sessions: dict[str, Session] = {}
        self._banned: dict[str, float] = {}
        self._dialing: set[str] = set()     # peers a dial task is connecting to
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[InboxEvent](math.inf)
        self._tokens = trio.Semaphore(_INBOX_TOKENS)
        # runs of StoreChunk (one machine step's, ≤ STORE_BATCH each): one channel hop a
        # run, not one a chunk; at most one run waits, as 32 chunks did before
        self._store_send, self._store_recv = trio.open_memory_channel[list[StoreChunk]](1)
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()       # pulsed after every machine step (subscribers)
        self._saved_own = -1               # own counter the last save covered
        self._owed_own = 0                 # own counter a PersistLedger asked to save
        self._saved_vv: dict[str, int] = {}
        self._last_save = 0.0
        self._save_retry_at = 0.0         # after a failed save (disk full)
        self.ledger_save_interval = 2.0
        self.started = trio.Event()
        self.listener: PeerListener | None = None
        self.discovery: Discovery | None = None
        self._messages_in = self._outputs = self._stored = self._served = 0
        self._size_memo: dict[bytes, int] = {}   # writer.py: chunk sizes looked up
        self.heap_trimmer = HeapTrimmer()       # off; `shoal daemon` reads $SHOAL_MALLOC_TRIM
        self._by_type: dict[str, int] = {}   # messages in, by message class
        self._saves = self._installs = self._dup = self._drops = 0
        self._throttled = 0.0       # of sessions that ended (live ones: their channel)
        self.health = HealthMonitor(
            config.health, self.data.root, self.installer,
            allow_remote=config.migrator_allow_remote,
            manifest_of=lambda mid: self.machine.ledger.manifest_by_id(mid),
            running=self._running_version,
            report=lambda model, version, unhealthy: self.post(
                HealthChecked(model, version, unhealthy)))
        self._dials = self._dial_failures = self._over_room = 0
        self.migrator_timeout = float(config.migrator_timeout)  # seconds a migrator may run
        self.migrator_allow_remote = config.migrator_allow_remote   # non-loopback addresses
        self.bytes_served_by_priority: dict[str, int] = {}  # priority name -> bytes (metrics)

    def _head_signed(self, m: Manifest) -> Manifest:
        """``m`` with its head signed, when this node holds its publisher's key and it
        was stored before heads existed (else as it is: the ledger refuses it then)."""
        pub = self.publisher
        if m.head_signature is None and pub is not None and pub.public_key == m.publisher_key:
            return m.with_head_signature(pub)
        return m

    def _optional_key(self, role: str) -> SigningIdentity | None:
        if not (self.data.keys / f"{role}.key").exists():
            return None
        key = load_key(self.data.keys, role)
        want = Role.PUBLISHER if role == "publisher" else Role.OPERATOR
        return key if self.trust.is_admitted(key.public_key, want) else None

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                  services: Sequence[Service] = (), handle_signals: bool = False) -> None:
        """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``).

        ``services`` (the control socket, the metrics endpoint: see
        :func:`agent._daemon.serve.serve`) are started in order once the peer listener
        is up, each with ``nursery.start(service, self)``."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if handle_signals:
                    nursery.start_soon(self._signals, nursery.cancel_scope)
                self.listener = PeerListener(
                    identity=self.identity, certificate=self.certificate, trust=self.trust,
                    handler=self._inbound, host=self.config.listen_address,
                    port=self.config.listen_port, settings=self.config.transport)
                self.port = await nursery.start(self.listener.serve)
                nursery.start_soon(self._machine_task)
                nursery.start_soon(self.health.run)
                if self.heap_trimmer.enabled:
                    nursery.start_soon(self._trim_task)
                for _ in range(STORE_WORKERS):
                    nursery.start_soon(self._store_worker)
                for service in services:
                    await nursery.start(service, self)
                nursery.start_soon(self._discovery_task)
                log.info("node %s (%s) listening on %s:%d", self.node_id,
                         self.machine.name, self.config.listen_address, self.port)
                self.started.set()
                task_status.started(self.port)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(save_ledger, self.data.root,
                                                  self.machine.ledger)
                    self._saves += 1
                except AgentError as exc:
                    log.error("could not save the ledger on shutdown: %s", exc)
            self._lock.release()
            log.info("node %s stopped", self.node_id)

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                scope.cancel()
                return

    def post(self, event: InboxEvent) -> None:
        """Queue an event for the machine task (from any trio task)."""
        self._inbox_send.send_nowait(event)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # ------------------------------------------------------------------ discovery / dial

    async def _trim_task(self) -> None:
        """Give the heap's free pages back while a transfer runs (``heap.py``)."""
        while True:
            await trio.sleep(self.heap_trimmer.interval)
            if self.machine.swarm.wanted():
                self.heap_trimmer.trim()

    async def _discovery_task(self) -> None:
        send, recv = trio.open_memory_channel[DiscoveryEvent](math.inf)
        self.discovery = Discovery(
            fleet_id=self.config.fleet_id, node_id=self.node_id, port=self.port, send_channel=send,
            name=self.machine.name, interfaces=list(self.config.mdns_interfaces) or None,
            static_peers=self.config.static_peers, mdns=self.config.mdns_enabled)
        assert self._nursery is not None
        async with self.discovery:
            async for event in recv:
                if isinstance(event, PeerFound):
                    if event.node_id is None:       # a static peer: who is it?
                        self._nursery.start_soon(self._bootstrap, event.host, event.port)
                    else:
                        self.post(PeerKnown(event.node_id, _address(event.host, event.port)))
                elif isinstance(event, PeerLost):
                    self.post(PeerGone(event.node_id))

    async def _bootstrap(self, host: str, port: int) -> None:
        """Dial a static peer until it answers, report it by its node id, and offer
        the session to the machine (whose overlay keeps or closes it)."""
        attempt = 0
        while True:
            try:
                channel = await dial(host, port, identity=self.identity,
                                     certificate=self.certificate, trust=self.trust,
                                     settings=self.config.transport)
            except (ProtocolError, TransportError, OSError) as exc:
                delay = backoff_delay(attempt, self.rng, base=0.5, cap=30.0)
                attempt += 1
                log.info("static peer %s:%d: %s; retrying in %.1f s", host, port, exc, delay)
                await trio.sleep(delay)
                continue
            self.post(PeerKnown(channel.peer_id, _address(host, port)))
            await self._run_dialled(channel)
            return

    async def _dial(self, peer: str, address: str) -> None:
        """Carry out a ``DialPeer``: one attempt (the machine decides about retries)."""
        self._dials += 1
        ok = False
        try:
            if peer < self.node_id and peer not in self._sessions:
                await trio.sleep(_GRACE)   # the smaller id dials first: wait to be dialled
            if peer in self._sessions or self._banned.get(peer, 0) > self.clock():
                return
            host, _, port = address.rpartition(":")
            channel = await dial(host.strip("[]"), int(port), identity=self.identity,
                                 certificate=self.certificate, trust=self.trust,
                                 settings=self.config.transport, expected_peer=peer)
            ok = True
        except (ProtocolError, TransportError, OSError, ValueError) as exc:
            log.info("dial %s at %s failed: %s", peer, address, exc)
        finally:
            self._dialing.discard(peer)
            if not ok:
                self._dial_failures += 1
                self.post(DialFailed(peer))
        if ok:
            await self._run_dialled(channel)

    async def _run_dialled(self, channel: SecureChannel) -> None:
        async with channel:
            try:
                await self._session(channel, initiated_by_us=True)
            except (ProtocolError, TransportError) as exc:
                log.info("session with %s ended: %s", channel.peer_id, exc)

    async def _inbound(self, channel: SecureChannel) -> None:
        await self._session(channel, initiated_by_us=False)

    # ------------------------------------------------------------------ sessions

    def _keep_new(self, peer: str, new_initiated_by_us: bool) -> bool:
        """Of two channels to ``peer``, keep the one opened by the smaller node id."""
        opener_is_us = self.node_id < peer
        return new_initiated_by_us == opener_is_us

    async def _session(self, channel: SecureChannel, *, initiated_by_us: bool) -> None:
        peer = channel.peer_id
        if self._banned.get(peer, 0) > self.clock():
            return
        if not initiated_by_us and peer not in self._sessions and \
                len(self._sessions) >= self.machine.overlay.limit + DECLINE_ROOM:
            self._over_room += 1     # (declines already under way: close, don't queue)
            return
        self.trust.add_certificate(channel.peer_certificate)
        old = self._sessions.get(peer)
        if old is not None:
            # same direction again: the old one is a dead session not yet noticed
            self._dup += 1
            if old.initiated_by_us != initiated_by_us and \
                    not self._keep_new(peer, initiated_by_us):
                return
            await old.channel.aclose()
            await old.done.wait()
        out_send, out_recv = trio.open_memory_channel[Any](_OUTBOX)
        sess = Session(channel, initiated_by_us, out_send, out_recv, self.clock())
        self._sessions[peer] = sess
        self.post(PeerUp(peer, inbound=not initiated_by_us))
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._writer, peer, sess, n.cancel_scope)
                try:
                    while True:
                        msg = await channel.receive()
                        if not is_wire_message(msg):     # a control or migrator message
                            log.info("notice %s: %s from %s", NoticeKind.UNEXPECTED_MESSAGE,
                                     type(msg).__name__, peer, extra={"peer": peer})
                            continue
                        await self._tokens.acquire()
                        self.post(PeerMessage(peer, msg))
                except (ProtocolError, TransportError) as exc:
                    log.info("session with %s ended: %s", peer, exc)
                n.cancel_scope.cancel()
        finally:
            if self._sessions.get(peer) is sess:
                del self._sessions[peer]
                self.post(PeerDown(peer))
            self._throttled += channel.statistics().throttled_s
            sess.done.set()
            with trio.CancelScope(shield=True):
                await channel.aclose()

    async def _enqueue(self, peer: str, item: Any) -> None:
        sess = self._sessions.get(peer)
        if sess is None:
            return
        try:
            sess.outbox_send.send_nowait(item)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        with trio.move_on_after(_SEND_STALL) as cs:
            try:
                await sess.outbox_send.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if cs.cancelled_caught:
            log.warning("peer %s did not drain its queue for %g s; dropping it", peer,
                        _SEND_STALL)
            await sess.channel.aclose()

    # ------------------------------------------------------------------ machine task

    async def _machine_task(self) -> None:
        m = self.machine
        problems: dict[str, tuple[object, ...]] = {}   # own blockers/failures logged
        while True:
            deadline = m.next_deadline()
            items: list[InboxEvent] = []
            if deadline is not None:
                wake = trio.current_time() + max(0.0, deadline - self.clock())
                with trio.move_on_at(wake):
                    items.append(await self._inbox_recv.receive())
            else:
                items.append(await self._inbox_recv.receive())
            while len(items) < 256:
                try:
                    items.append(self._inbox_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            for item in items:
                self._handle(item)
            deadline = m.next_deadline()
            now = self.clock()
            if deadline is not None and deadline <= now:
                m.on_timer(now)
            await self._save_if_due()
            outputs = m.take_outputs()
            self._outputs += len(outputs)
            run: list[StoreChunk] = []
            for out in outputs:
                if isinstance(out, StoreChunk):
                    run.append(out)
                    if len(run) >= STORE_BATCH:
                        await self._store_send.send(run)
                        run = []
                    continue
                if run:     # (in order with the outputs around them)
                    await self._store_send.send(run)
                    run = []
                await self._carry_out(out)
            if run:
                await self._store_send.send(run)
            log_own_problems(self.machine.ledger.record(self.node_id), problems)
            self._changed.set()
            self._changed = trio.Event()

    def _handle(self, event: InboxEvent) -> None:
        m, now = self.machine, self.clock()
        match event:
            case PeerMessage(peer, message):
                self._tokens.release()
                self._messages_in += 1
                name = type(message).__name__
                self._by_type[name] = self._by_type.get(name, 0) + 1
                # (a decline is read after its session closed: it names peers to try)
                if peer in self._sessions or isinstance(message, OverlayFull):
                    m.receive(peer, message, now)
            case PeerUp(peer, inbound):
                m.peer_connected(peer, now, inbound=inbound)
            case PeerDown(peer):
                m.peer_disconnected(peer, now)
            case PeerKnown(peer, address):
                m.peer_known(peer, address, now)
            case PeerGone(peer):
                m.peer_lost(peer, now)
            case DialFailed(peer):
                m.dial_failed(peer, now)
            case ChunkStored(chunk_hashes):
                self._stored += len(chunk_hashes)
                m.chunks_stored(chunk_hashes, now)
            case ChunkStoreFailed(chunk_hash, reason, detail):
                m.chunk_store_failed(chunk_hash, reason, detail, now)
            case ChunkMissing(chunk_hash):
                m.chunk_missing(chunk_hash, now)
            case ChunksGone(chunk_hashes):
                m.chunks_gone(chunk_hashes, now)
            case PiecesSent(peer, chunk_hashes):
                m.uploads_done(peer, chunk_hashes, now)
            case InstallDone(model_id, version, variant_id, ok, reason, detail, unhealthy,
                             refetch):
                m.install_finished(model_id, version, variant_id, ok, reason, detail, now,
                                   unhealthy, refetch)
            case HealthChecked(model_id, version, unhealthy):
                m.health_reported(model_id, version, unhealthy, now)
            case ControlCall(fn, done):    # a control request: run fn(machine, now) here
                try:
                    done(fn(m, now), None)
                except Exception as exc:   # handed back to the requester
                    done(None, exc)
            case _:
                assert_never(event)

    async def call(self, fn: Callable[[NodeMachine, float], Any]) -> Any:
        """Run ``fn(machine, now)`` inside the machine task; its result (or exception)."""
        box: dict[str, Any] = {}
        ev = trio.Event()

        def done(result: Any, exc: BaseException | None) -> None:
            box["r"], box["e"] = result, exc
            ev.set()

        self.post(ControlCall(fn, done))
        await ev.wait()
        if box["e"] is not None:
            raise box["e"]
        return box["r"]

    async def _carry_out(self, out: Output) -> None:
        if isinstance(out, PersistLedger):
            self._owed_own = max(self._owed_own, out.counter)
            if out.counter > self._saved_own:
                await self._save(self.clock())
        elif isinstance(out, SendMessage):
            await self._enqueue(out.peer, out.message)
        elif isinstance(out, ServeChunk):
            await self._enqueue(out.peer, out)
        elif isinstance(out, StoreChunk):
            await self._store_send.send([out])
        elif isinstance(out, InstallVariant):
            assert self._nursery is not None
            self._nursery.start_soon(self._install, out)
        elif isinstance(out, ActivateVersion):
            try:
                await trio.to_thread.run_sync(self.installer.activate, out.model_id,
                                              out.version)
                log.info("activated %s %s (%s)", out.model_id, out.version, out.variant_id,
                         extra={"model_id": out.model_id, "version": out.version})
            except AgentError as exc:
                log.error("could not activate %s %s: %s", out.model_id, out.version, exc,
                          extra={"model_id": out.model_id, "version": out.version})
        elif isinstance(out, RemoveVersions):
            assert self._nursery is not None
            self._nursery.start_soon(self._remove_versions, out)
        elif isinstance(out, DropPeer):
            self._drops += 1
            self._banned[out.peer] = self.clock() + out.ban_for
            log.warning("dropping peer %s for %g s: %s", out.peer, out.ban_for, out.reason,
                        extra={"peer": out.peer})
            sess = self._sessions.get(out.peer)
            if sess is not None:
                await sess.channel.aclose()
        elif isinstance(out, DialPeer):
            if out.peer not in self._dialing:
                assert self._nursery is not None
                self._dialing.add(out.peer)
                self._nursery.start_soon(self._dial, out.peer, out.address)
        elif isinstance(out, ClosePeer):
            log.info("closing the session with %s: %s", out.peer, out.reason,
                     extra={"peer": out.peer})
            await self._enqueue(out.peer, CLOSE)
        elif isinstance(out, Notice):
            log.info("notice %s: %s", out.kind, out.detail,
                     extra={"model_id": out.model_id, "intent_id": out.intent_id})

    # ------------------------------------------------------------------ queries

    def overlay_statistics(self) -> dict[str, int]:
        """The machine's overlay and this runtime's dials (metrics, benchmarks)."""
        st = self.machine.overlay.statistics()
        return {"degree": st.degree, "sessions": len(self._sessions), "active": st.active,
                "known": st.known, "dials": self._dials, "dial_failures": self._dial_failures,
                "declined": st.declined, "declined_by_peers": st.declined_by_peers,
                "rotations": st.rotations, "closed_excess": st.closed_excess,
                "over_room": self._over_room}

    def peers(self) -> list[PeerEntry]:
        now = self.clock()
        out = []
        for peer, s in sorted(self._sessions.items()):
            st = s.channel.statistics().connection
            out.append(PeerEntry(peer, s.channel.peer_certificate.name, s.channel.peer_address,
                                s.initiated_by_us, now - s.since, st.wire_bytes_sent,
                                st.wire_bytes_received))
        return out

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(self.node_id, self.port, len(self._sessions),
                                 self._messages_in, self._outputs, self._stored, self._served,
                                 self._saves, self._installs, self._dup, self._drops,
                                 self._throttled + sum(
                                     s.channel.statistics().throttled_s
                                     for s in self._sessions.values()),
                                 self.health.checks, self.health.failures,
                                 dict(self._by_type))


def _address(host: str, port: int) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
