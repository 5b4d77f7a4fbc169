"""Protocol tunables: one frozen :class:`Config` per node, split by concern.

Each sub-config belongs to one engine (gossip, swarm); the agent builds them
from its TOML file, the simulator from its flags. Defaults are what a small LAN
fleet wants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GossipConfig", "SwarmConfig", "OverlayConfig", "Config"]


@dataclass(frozen=True, slots=True)
class GossipConfig:
    interval: float = 1.0          # seconds between anti-entropy rounds
    fanout: int = 3                # peers contacted per round
    jitter: float = 0.1            # fraction of interval, drawn from the injected rng
    max_delta_bytes: int = 256 * 1024   # a delta larger than this is split
    suspect_after: float = 10.0    # seconds a direct peer may stay silent before it is suspected
    unreachable_after: float = 30.0  # seconds of silence before a suspected node is unreachable
    min_suspecting_peers: int = 2  # distinct peers that must suspect it
    record_min_interval: float = 1.0  # seconds between progress-only writes of the own record
    fleet_progress_rate: float = 10.0  # progress-only record writes per second for the whole
    #                                fleet: with N nodes in its ledger a node writes mere progress
    #                                at most every max(record_min_interval, N / this) s; 0 = off
    #                                (each record costs every node a decode, a signature check
    #                                and a merge: at 100, 32 daemons spent a node's CPU on 32
    #                                records a second; docs/JOURNAL.md, 2026-12-06, issue 23)
    push: bool = True              # send new intents, manifests, certificates and revocations
    #                                to every peer at once instead of waiting for a round


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    # Requests: how many chunk requests may be in flight, per peer and in all.
    max_requests_per_peer: int = 8     # ceiling of a peer's pipeline (sized to bandwidth x delay)
    min_requests_per_peer: int = 2     # floor of that pipeline, what an unmeasured peer gets
    max_requests_total: int = 64       # requests outstanding to all peers together

    # Endgame: duplicate requests for the last chunks, so one slow peer cannot hold the tail.
    endgame_chunks: int = 8            # duplicate requests allowed for the last N chunks
    endgame_fraction: float = 0.05     # ... and for no more than max(1, this x chunks) chunks
    endgame_age: float = 1.5           # ... and only for requests older than this many times
    #                                    their peer's expected answer time
    endgame_fanout: int = 2            # most peers asked for one chunk during endgame

    # Uploads: which requesters are served, and in what order (slots and choking).
    upload_slots: int = 8              # peers served at once
    optimistic_slots: int = 1          # of those, rotated to newcomers
    rechoke_interval: float = 10.0     # seconds between upload-slot rotations
    max_queued_per_peer: int = 32      # upload requests queued per peer before "busy"
    upload_window: int = 1             # pieces handed to the driver and not yet reported sent
    #                                    (SwarmEngine.upload_done), once the driver reports;
    #                                    0 = off
    laggard_patience: float = 5.0      # among upload-slot holders, serve the requester known
    #                                    to hold the fewest chunks first, unless another's request
    #                                    has waited this long (s); 0 = plain round-robin

    # Rates: byte-rate caps (the daemon sets them from its [bandwidth] section).
    upload_rate: float = 0.0           # bytes/s cap, 0 = none
    download_rate: float = 0.0         # bytes/s cap, 0 = none
    rate_burst: float = 1.0            # token-bucket depth, in seconds of the rate

    # Timeouts: how long to wait on a peer before asking elsewhere, or giving up on it.
    request_timeout: float = 30.0      # seconds before a request is re-issued elsewhere
    interest_retry: float = 5.0        # re-ask a peer that could not help (or was busy)
    #                                    after this long
    lost_after_overtaken: int = 3      # a request is taken as lost (asked again at once) once
    #                                    this many pieces asked of its peer later have arrived
    #                                    (a peer serves its queue in order); 0 = off
    max_peer_failures: int = 16        # consecutive unanswered requests before a peer is dropped

    # Super-seeding: a seed steers repeat requests towards chunks it has never uploaded.
    redirect_window: float = 60.0      # a repeat request for a chunk uploaded this recently is
    #                                    redirected while never-uploaded chunks remain; 0 = off
    redirect_backoff: float = 1.0      # a redirected peer re-asks the redirector after this long

    # Have announcements: each peer is told of stored chunks at most this often (s); what
    # was stored in between goes out as one Haves message; 0 = at once (protocol/_swarm_haves.py)
    have_interval: float = 0.05
    # ... and a busy peer (a request of it queued or in flight here, or 4 chunks announced
    # to it not known to be held by it) at most this often: it has work here already, so
    # news can wait and share a message (the value's measurement: docs/JOURNAL.md);
    # 0 = have_interval for every peer (protocol/_swarm_haves.py)
    have_busy_interval: float = 0.25


@dataclass(frozen=True, slots=True)
class OverlayConfig:
    """Whom a node keeps sessions with (``protocol/_overlay.py``)."""

    degree: int = 8                # active sessions aimed at; 0 = off (the driver decides)
    slack: int = 2                 # sessions kept beyond ``degree`` before declining more
    mesh_up_to: int = 16           # a node that knows fewer peers than this keeps a session
    #                                with each of them (a fleet this small: a full mesh); 0 = off
    rotate_interval: float = 60.0  # seconds between rotations of one active peer; 0 = never
    known_max: int = 256           # known (passive) peers remembered
    hints: int = 8                 # peers named when declining a session (OverlayFull)
    dial_timeout: float = 15.0     # seconds a dial may go unanswered before it counts failed
    retry_base: float = 1.0        # back-off after a failed dial or a decline: base ...
    retry_max: float = 60.0        # ... doubling per strike up to this (s)

    def __post_init__(self) -> None:
        for name in ("degree", "slack", "mesh_up_to", "known_max", "hints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.hints > 32:
            raise ValueError("hints must be <= 32")
        if self.degree and self.known_max < self.degree:
            raise ValueError("known_max must be >= degree")
        for name in ("dial_timeout", "retry_base", "retry_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.rotate_interval < 0:
            raise ValueError("rotate_interval must be >= 0")


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """How long history is kept (``protocol/_settle.py``)."""

    retire: bool = True               # forget void history (False: keep every entry)
    settle_after: float = 7 * 24 * 3600.0  # seconds after which an intent settles even
    #                                   # if some node it targets never carried it out
    keep_versions: int = 2            # versions of a model kept on disk: the active one
    #                                   # and the rollbacks before it (and any a live
    #                                   # intent names); 0 = keep every version

    def __post_init__(self) -> None:
        if not self.settle_after > 0:
            raise ValueError("settle_after must be > 0")
        if self.keep_versions == 1 or self.keep_versions < 0:
            raise ValueError("keep_versions must be 0 (all) or >= 2 (the active version "
                             "and at least one to roll back to)")


@dataclass(frozen=True, slots=True)
class Config:
    fleet_id: str = "default"
    gossip: GossipConfig = field(default_factory=GossipConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
