"""What the swarm engine reports: per-key progress and a statistics snapshot.

Theory of operation
-------------------
The engine's parts (the picker, the uploader and the engine itself) count what they do
in one mutable :class:`Counters` record that the engine owns and hands to each part.
:meth:`SwarmEngine.statistics` copies it, together with the figures read off live
state (peers connected, requests outstanding, uploads queued, peers dropped), into a
frozen :class:`SwarmStatistics`. Counters only grow; they measure work and faults (a
corrupt piece, a timed-out request), and nothing is ever decided from them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters", "SwarmStatistics", "TransferProgress"]


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """Where one wanted key stands. Byte counts are over the key's *distinct* chunks.

    ``bytes_reused``: already held at ``want()`` (the delta saving);
    ``bytes_fetched``: accepted from peers; ``bytes_duplicate``: verified bytes that
    arrived but were not needed (endgame duplicates, late or unrequested pieces).
    """

    bytes_total: int
    bytes_held: int
    bytes_reused: int
    bytes_fetched: int
    bytes_duplicate: int
    stalled: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SwarmStatistics:
    keys_wanted: int
    keys_completed: int
    peers_connected: int
    requests_sent: int
    requests_outstanding: int
    endgame_requests: int
    requests_timed_out: int
    requests_lost: int      # given up as lost: overtaken by later pieces of the same peer
    requests_rejected: int
    cancels_sent: int
    pieces_received: int
    pieces_accepted: int
    corrupt_pieces: int
    unsolicited_pieces: int
    duplicate_pieces: int
    bytes_fetched: int
    bytes_duplicate: int
    bytes_reused: int
    uploads_served: int
    bytes_uploaded: int
    uploads_queued: int
    uploads_refused: int
    upload_preemptions: int
    uploads_stalled: int   # pieces that waited on their own connection past the window
    bad_have_messages: int
    store_failures: int
    redirects_sent: int
    redirects_received: int
    preempted_requests: int
    picker_pops: int   # picker queue entries examined (live or stale): cost, not wall time
    dropped_peers: tuple[tuple[str, str], ...]   # (peer, reason)


@dataclass(slots=True)
class Counters:
    """The engine's running counts (see :class:`SwarmStatistics` for their meaning)."""

    requests_sent: int = 0
    endgame_requests: int = 0
    requests_timed_out: int = 0
    requests_lost: int = 0
    requests_rejected: int = 0
    cancels_sent: int = 0
    pieces_received: int = 0
    pieces_accepted: int = 0
    corrupt_pieces: int = 0
    unsolicited_pieces: int = 0
    duplicate_pieces: int = 0
    bytes_fetched: int = 0
    bytes_duplicate: int = 0
    bytes_reused: int = 0
    uploads_served: int = 0
    bytes_uploaded: int = 0
    uploads_refused: int = 0
    bad_have_messages: int = 0
    store_failures: int = 0
    keys_completed: int = 0
    redirects_sent: int = 0
    redirects_received: int = 0
    preempted_requests: int = 0
    picker_pops: int = 0

    def snapshot(self, *, keys_wanted: int, peers_connected: int, requests_outstanding: int,
                 uploads_queued: int, upload_preemptions: int, uploads_stalled: int,
                 dropped_peers: tuple[tuple[str, str], ...]) -> SwarmStatistics:
        """These counts, with the given live figures, as a frozen snapshot."""
        return SwarmStatistics(
            keys_wanted=keys_wanted,
            keys_completed=self.keys_completed,
            peers_connected=peers_connected,
            requests_sent=self.requests_sent,
            requests_outstanding=requests_outstanding,
            endgame_requests=self.endgame_requests,
            requests_timed_out=self.requests_timed_out,
            requests_lost=self.requests_lost,
            requests_rejected=self.requests_rejected,
            cancels_sent=self.cancels_sent,
            pieces_received=self.pieces_received,
            pieces_accepted=self.pieces_accepted,
            corrupt_pieces=self.corrupt_pieces,
            unsolicited_pieces=self.unsolicited_pieces,
            duplicate_pieces=self.duplicate_pieces,
            bytes_fetched=self.bytes_fetched,
            bytes_duplicate=self.bytes_duplicate,
            bytes_reused=self.bytes_reused,
            uploads_served=self.uploads_served,
            bytes_uploaded=self.bytes_uploaded,
            uploads_queued=uploads_queued,
            uploads_refused=self.uploads_refused,
            upload_preemptions=upload_preemptions,
            uploads_stalled=uploads_stalled,
            bad_have_messages=self.bad_have_messages,
            store_failures=self.store_failures,
            redirects_sent=self.redirects_sent,
            redirects_received=self.redirects_received,
            preempted_requests=self.preempted_requests,
            picker_pops=self.picker_pops,
            dropped_peers=dropped_peers,
        )
