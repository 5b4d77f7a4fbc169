"""What a node runs, fetches and installs, per model, and the rule that moves it there.

Theory of operation
-------------------
:class:`Deployments` holds, for every model the node knows of, the
:class:`~._records.ModelState` its record reports, the swarm transfer it runs
(a key ``f"{manifest_id}/{variant_id}"``), the install under way and the versions
on disk. After every input that may have changed the ledger, the node machine
calls :meth:`Deployments.reconcile`: for each model it resolves the desired
intent for this node (:func:`~._intents.resolve`, a pure function of the ledger),
and if the node does not run that version yet it

* switches back with :class:`ActivateVersion` when the version is on disk
  (rollback: no transfer),
* else picks a variant (:func:`select_variant`) and asks the swarm for the key
  (the store already holds every chunk an earlier version shared: that is the
  delta), reporting progress,
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

A model whose desired intent disappears (cancelled) has its transfer dropped
and returns to the version it runs. An install under way (``loading``) is never
interrupted: a cancel or a newer intent is acted on when it finishes.

Progress (``bytes_done/total/reused/fetched``) is refreshed from the swarm on
every timer, when a transfer completes and when the install finishes, so the
final record always tells how many bytes the node reused from its store and how
many it fetched from peers.

Every change of a model's state goes through :meth:`Deployments.set_state` and
:func:`~._state.change_state`, which refuses a status change its transition
table does not allow. The node's record is a snapshot of these states: a change
of status, version, variant, blocker or intent has it written at once (the
``write_record`` the node passes in); a change of progress only marks it
:attr:`~Deployments.dirty`, and the node writes it when its rate limit allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Unpack

from ._capabilities import Capabilities
from ._events import ActivateVersion, InstallVariant, Notice, NoticeKind, Output, RemoveVersions
from ._identity import FleetTrust
from ._intents import Intent, OnDegraded, policy_actions, resolve
from ._ledger import Ledger
from ._manifest import ChunkRef
from ._records import ModelState, NodeRecord
from ._selection import select_variant
from ._state import StateChange, change_state
from ._swarm import SwarmEngine
from ._types import BlockerReason, ModelOperationalStatus

__all__ = ["Deployments"]

_S = ModelOperationalStatus
_DONE = (_S.OPERATIONAL, _S.DEGRADED)
#: Seconds a transfer may have no source (no connected peer holds any chunk it still
#: lacks, nothing in flight) before the node reports it blocked (``_NO_SOURCE``).
STALL_AFTER = 15.0
_NO_SOURCE = "no source: no connected peer holds any of the "
_RETRYABLE = (BlockerReason.INSUFFICIENT_GPU_MEMORY, BlockerReason.INSUFFICIENT_STORAGE,
              BlockerReason.INCOMPATIBLE_CAPABILITIES, BlockerReason.UNKNOWN)


class Deployments:
    """Per model: the state the node reports, its transfer, its install, its disk."""

    def __init__(self, *, node_id: str, trust: FleetTrust, ledger: Ledger, swarm: SwarmEngine,
                 lookup: Callable[[str], Sequence[ChunkRef] | None],
                 emit: Callable[[Output], None], write_record: Callable[[float], None],
                 installed: Iterable[tuple[str, str, str]], now: float,
                 keep_versions: int = 2) -> None:
        self._node_id = node_id
        self._trust = trust
        self._ledger = ledger
        self._swarm = swarm
        self._lookup = lookup                    # swarm key -> its chunks
        self._emit = emit                        # queue an output of the node
        self._write_record = write_record        # write the node's record at once
        self.dirty = False                       # a state changed since the record was written
        self.bodies_wanted: set[str] = set()     # manifest ids whose chunk lists targets need
        self._states: dict[str, ModelState] = {}
        self._transfers: dict[str, str] = {}     # model -> swarm key being fetched
        self._installing: dict[str, str] = {}    # model -> swarm key being installed
        self._sourceless: dict[str, float] = {}  # model -> since when its transfer has none
        self._disk: dict[str, dict[str, str]] = {}   # model -> version -> variant on disk
        self._keep = keep_versions
        self._activated: dict[str, list[str]] = {}  # model -> versions, last active last
        for model_id, version, variant_id in installed:   # last listed per model is active
            self._disk.setdefault(model_id, {})[version] = variant_id
            self._activated.setdefault(model_id, []).append(version)
            self._states[model_id] = ModelState(model_id, version, variant_id, _S.OPERATIONAL,
                                                updated_at=now, active_version=version)
        for model_id, versions in self._disk.items():
            self._states[model_id] = replace(self._states[model_id],
                                             installed=tuple(sorted(versions)))

    # ------------------------------------------------------------------ queries
    def state(self, model_id: str) -> ModelState | None:
        return self._states.get(model_id)

    def states(self) -> tuple[ModelState, ...]:
        """Every model's state, by model id: what the node's record reports."""
        return tuple(self._states[m] for m in sorted(self._states))

    # ------------------------------------------------------------------ changes
    def set_state(self, model_id: str, now: float, **changes: Unpack[StateChange]) -> None:
        """Every change of a model's state goes through here; a change of status must be
        one the table in :mod:`._state` allows."""
        old = self._states.get(model_id) or ModelState(model_id, "", "", _S.NOT_DEPLOYED)
        if all(getattr(old, k) == v for k, v in changes.items()):
            return   # nothing changes (the progress refreshed at every timer, mostly)
        new = change_state(old, **changes)
        if new != old:
            self._states[model_id] = replace(new, updated_at=now)
            self.dirty = True

    def drop_transfer(self, model_id: str, now: float) -> None:
        self._sourceless.pop(model_id, None)
        key = self._transfers.pop(model_id, None)
        if key is not None:
            self._swarm.drop(key, now)

    def retry_blocked(self, now: float) -> None:
        """The probe changed: a model that failed for want of resources may fit now."""
        for model_id, st in list(self._states.items()):
            if st.status is _S.FAILED and st.blocker in _RETRYABLE:
                self.set_state(model_id, now, intent_id="")   # try again with the new probe

    def store_failed(self, chunk_hash: bytes, reason: BlockerReason, detail: str,
                     now: float) -> bool:
        """The driver could not store a chunk: block every transfer that wants it;
        whether one did."""
        hit = False
        for model_id, key in self._transfers.items():   # only models that want this chunk
            refs = self._lookup(key)
            if refs is not None and any(r.hash == chunk_hash for r in refs):
                hit = True
                self.set_state(model_id, now, blocker=reason, blocker_detail=detail,
                               blocker_since=now)
        return hit

    def install_finished(self, model_id: str, version: str, variant_id: str, ok: bool,
                         reason: BlockerReason | None, detail: str, now: float,
                         unhealthy: str | None = None, refetch: bool = False) -> None:
        """``unhealthy``: the install succeeded but the variant's health check failed
        through its settling window (its detail): the model runs, ``degraded``.
        ``refetch``: chunks it needed turned out bad or gone: fetch them, install again."""
        key = self._installing.pop(model_id, None)
        if key is not None:
            self._refresh_progress(model_id, key, now)
        if not ok and refetch and key is not None:
            self._transfers[model_id] = key
            self.set_state(model_id, now, status=_S.DOWNLOADING, blocker=None,
                           blocker_detail="")
            self._emit(Notice(NoticeKind.TRANSFER_RESTARTED, f"{model_id} {version}: "
                              f"fetching again ({detail})", model_id=model_id))
            return          # (the reconcile that follows wants the key again)
        if ok:
            disk = self._disk.setdefault(model_id, {})
            disk[version] = variant_id
            self.set_state(model_id, now, version=version, variant_id=variant_id,
                           status=_S.OPERATIONAL if unhealthy is None else _S.DEGRADED,
                           active_version=version,
                           blocker=None if unhealthy is None else BlockerReason.UNHEALTHY,
                           blocker_detail=unhealthy or "", blocker_since=now,
                           installed=tuple(sorted(disk)))
            self._now_active(model_id, version, now)
        else:
            self.set_state(model_id, now, version=version, variant_id=variant_id,
                           status=_S.FAILED, blocker=reason or BlockerReason.DEPLOYMENT_FAILED,
                           blocker_detail=detail, blocker_since=now)

    def health_reported(self, model_id: str, version: str, unhealthy: str | None,
                        now: float) -> bool:
        """A health check of the running ``version`` passed (``unhealthy`` None) or failed
        (its detail): ``operational`` <-> ``degraded``; ``failed`` when the version runs
        because a rollout policy rolled a newer one back (the node keeps failing after
        the rollback: nothing more is tried, so nothing loops). A report about a version
        that no longer runs, or during a transfer or install, changes nothing. True when
        the status changed."""
        st = self._states.get(model_id)
        unhealthy_failed = st is not None and st.status is _S.FAILED \
            and st.blocker is BlockerReason.UNHEALTHY
        if st is None or (st.status not in _DONE and not unhealthy_failed) \
                or st.active_version != version or st.version != version:
            return False
        if unhealthy is None:
            if st.status is _S.OPERATIONAL:
                return False
            self.set_state(model_id, now, status=_S.OPERATIONAL, blocker=None,
                           blocker_detail="")
            return True
        rolled = self._rolled_back_from(model_id, version)
        status = _S.FAILED if rolled is not None or unhealthy_failed else _S.DEGRADED
        detail = unhealthy if rolled is None else (
            f"still failing after its rollout policy rolled {rolled} back: {unhealthy}")
        if st.status is status and st.blocker_detail == detail:
            return False
        self.set_state(model_id, now, status=status, blocker=BlockerReason.UNHEALTHY,
                       blocker_detail=detail,
                       blocker_since=st.blocker_since if st.status is status else now)
        return True

    def _rolled_back_from(self, model_id: str, version: str) -> str | None:
        """The newer version a rollout policy rolled back, when ``version`` is what the
        fleet returned to (else None)."""
        for d, _ in policy_actions(self._ledger.intents(), model_id, self._trust).values():
            if d.policy is not None and d.policy.on_degraded is OnDegraded.ROLLBACK \
                    and d.version != version:
                return d.version
        return None

    def _now_active(self, model_id: str, version: str, now: float) -> None:
        """``version`` runs now: remember the order, and remove what is no longer kept
        from disk -- all but the last ``keep_versions`` active ones and those a live
        intent names (a rollback target, a delta's base, a version being fetched)."""
        order = self._activated.setdefault(model_id, [])
        if version in order:
            order.remove(version)
        order.append(version)
        self._prune(model_id, now)

    def prune(self, now: float) -> None:
        """Remove what no model keeps any more: a version kept only because a live
        intent named it is let go once that intent is void (``_settle``)."""
        for model_id in sorted(self._disk):
            self._prune(model_id, now)

    def _prune(self, model_id: str, now: float) -> None:
        disk = self._disk.get(model_id, {})
        st = self._states.get(model_id)
        if not self._keep or len(disk) <= self._keep or model_id in self._installing \
                or (st is not None and st.status is _S.LOADING):
            return          # (an install may be reading the version it replaces)
        order = self._activated.get(model_id, [])
        keep = set([v for v in order if v in disk][-self._keep:])
        if st is not None and st.active_version:
            keep.add(st.active_version)
        for it in self._ledger.intents():
            if it.model_id == model_id:
                keep.add(it.version)
                if it.delta_from:
                    keep.add(it.delta_from)
        gone = tuple(sorted(v for v in disk if v not in keep))
        if not gone:
            return
        for v in gone:          # no longer held: stop seeding it, forget its chunk list
            m = self._ledger.head_for(model_id, v)
            if m is not None:
                self._swarm.drop(f"{m.manifest_id}/{disk[v]}", now)
            del disk[v]
        self._activated[model_id] = [v for v in order if v in disk]
        self._emit(RemoveVersions(model_id, gone))
        self.set_state(model_id, now, installed=tuple(sorted(disk)))

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, capabilities: Capabilities | None, now: float) -> None:
        """Move every model toward its desired intent (module docstring); the record is
        written at once when a model's status, version, variant, blocker or intent
        changed."""
        records = self._ledger.records()
        intents = self._ledger.intents()
        self.bodies_wanted = set()
        models = {i.model_id for i in intents} | set(self._states)
        status_changed = False
        for model_id in sorted(models):
            before = self._states.get(model_id)
            self._reconcile_model(model_id, intents, records, capabilities, now)
            after = self._states.get(model_id)
            if (before is None) != (after is None) or (
                    before is not None and after is not None
                    and (before.status, before.version, before.variant_id, before.blocker,
                         before.intent_id)
                    != (after.status, after.version, after.variant_id, after.blocker,
                        after.intent_id)):
                status_changed = True
        self.drain_swarm(now)
        if status_changed:
            self._write_record(now)

    def _reconcile_model(self, model_id: str, intents: list[Intent],
                         records: dict[str, NodeRecord], capabilities: Capabilities | None,
                         now: float) -> None:
        target = resolve(intents, model_id, self._node_id, records, self._trust)
        st = self._states.get(model_id)
        disk = self._disk.get(model_id, {})
        if target is None:
            if st is not None and st.status is not _S.LOADING and (
                    model_id in self._transfers or st.version != st.active_version):
                self.drop_transfer(model_id, now)   # cancelled: back to what runs
                active = st.active_version
                self.set_state(model_id, now, version=active,
                               variant_id=disk.get(active, ""), intent_id="", blocker=None,
                               blocker_detail="", bytes_done=0, bytes_total=0,
                               status=_S.OPERATIONAL if active else _S.NOT_DEPLOYED)
                self._emit(Notice(NoticeKind.TRANSFER_CANCELLED,
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
                    self.set_state(model_id, now, intent_id=iid)
                return
            if st.status is _S.LOADING or (st.status is _S.FAILED and st.intent_id == iid):
                return
            if st.status is _S.DOWNLOADING and model_id in self._transfers:
                self._swarm.want(self._transfers[model_id], target.priority, now)
                self.set_state(model_id, now, intent_id=iid)
                return
        if st is not None and st.status is _S.LOADING:
            return   # an install is running: act on the new target when it finishes
        if version in disk and (wanted is None or disk[version] == wanted):
            self.drop_transfer(model_id, now)
            self._emit(ActivateVersion(model_id, version, disk[version]))
            self.set_state(model_id, now, version=version, variant_id=disk[version],
                           status=_S.OPERATIONAL, active_version=version, intent_id=iid,
                           blocker=None, blocker_detail="")
            self._now_active(model_id, version, now)
            return
        manifest = self._ledger.head_for(model_id, version)
        if manifest is None:
            self.drop_transfer(model_id, now)
            self.set_state(model_id, now, version=version, status=_S.NOT_DEPLOYED,
                           intent_id=iid, blocker=None,
                           blocker_detail="waiting for the manifest to arrive by gossip")
            return
        choice = select_variant(manifest, capabilities, target.variant_id)
        if choice.variant_id is not None and \
                self._ledger.manifest_by_id(manifest.manifest_id) is None:
            self.drop_transfer(model_id, now)     # the chunk list first (_manifest_fetch)
            self.bodies_wanted.add(manifest.manifest_id)
            self.set_state(model_id, now, version=version, status=_S.NOT_DEPLOYED,
                           intent_id=iid, blocker=None, blocker_detail=(
                               "fetching the manifest's chunk list from a peer"))
            return
        if choice.variant_id is None:
            self.drop_transfer(model_id, now)
            assert choice.reason is not None
            self.set_state(model_id, now, version=version, variant_id="", status=_S.FAILED,
                           intent_id=iid, blocker=choice.reason,
                           blocker_detail=choice.detail, blocker_since=now)
            return
        key = f"{manifest.manifest_id}/{choice.variant_id}"
        if self._transfers.get(model_id) != key:
            self.drop_transfer(model_id, now)
            self._transfers[model_id] = key
            self.set_state(model_id, now, started_at=now, bytes_done=0, bytes_reused=0,
                           bytes_fetched=0, bytes_total=manifest.variant(choice.variant_id).size)
        self.set_state(model_id, now, version=version, variant_id=choice.variant_id,
                       status=_S.DOWNLOADING, intent_id=iid, blocker=None, blocker_detail="")
        self._swarm.want(key, target.priority, now)

    def drain_swarm(self, now: float) -> None:
        """Hand every transfer the swarm completed to the driver (:class:`InstallVariant`)."""
        for key in self._swarm.take_completed():
            for model_id, k in list(self._transfers.items()):
                if k != key:
                    continue
                self._refresh_progress(model_id, key, now)
                del self._transfers[model_id]
                self._sourceless.pop(model_id, None)
                self._installing[model_id] = key
                st = self._states[model_id]
                manifest_id = key.partition("/")[0]
                self._emit(InstallVariant(model_id, st.version, manifest_id,
                                          st.variant_id, st.active_version or None))
                self.set_state(model_id, now, status=_S.LOADING, bytes_done=st.bytes_total)
                self._write_record(now)

    def _refresh_progress(self, model_id: str, key: str, now: float) -> None:
        p = self._swarm.progress(key, detail=False)
        if p.bytes_total == 0:
            return          # the swarm does not know the key (yet, or any more)
        self.set_state(model_id, now, bytes_done=p.bytes_held, bytes_total=p.bytes_total,
                       bytes_reused=p.bytes_reused, bytes_fetched=p.bytes_fetched)
        self._report_source(model_id, p.stalled and model_id in self._transfers,
                            p.bytes_total - p.bytes_held, now)

    def _report_source(self, model_id: str, stalled: bool, missing: int, now: float) -> None:
        """A transfer no connected peer can feed for ``STALL_AFTER`` seconds is reported
        blocked (``transfer_failed``, "no source: ..."), so an operator sees why a node
        stays downloading; the blocker goes as soon as a source is back."""
        st = self._states.get(model_id)
        if st is None:
            return
        ours = st.blocker is BlockerReason.TRANSFER_FAILED and \
            st.blocker_detail.startswith(_NO_SOURCE)
        if not stalled:
            self._sourceless.pop(model_id, None)
            if ours:
                self.set_state(model_id, now, blocker=None, blocker_detail="")
            return
        since = self._sourceless.setdefault(model_id, now)
        if now - since >= STALL_AFTER and st.blocker is None:
            self.set_state(model_id, now, blocker=BlockerReason.TRANSFER_FAILED,
                           blocker_detail=f"{_NO_SOURCE}{missing / 2**20:.1f} MiB still "
                                          "missing", blocker_since=since)

    def update_progress(self, now: float) -> None:
        """Refresh the progress of every running transfer from the swarm."""
        for model_id, key in self._transfers.items():
            self._refresh_progress(model_id, key, now)
