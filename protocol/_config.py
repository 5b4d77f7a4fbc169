"""Protocol tunables: one frozen :class:`Config` per node, split by concern.

Each sub-config belongs to one engine (gossip, swarm); the agent builds them
from its TOML file, the simulator from its flags. Defaults are what a small LAN
fleet wants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GossipConfig", "SwarmConfig", "Config"]


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
    fleet_progress_rate: float = 100.0  # progress-only record writes per second for the whole
    #                                fleet: with N nodes in its ledger a node writes mere progress
    #                                at most every max(record_min_interval, N / this) s; 0 = off
    push: bool = True              # send new intents, manifests, certificates and revocations
    #                                to every peer at once instead of waiting for a round


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    max_requests_per_peer: int = 8     # pipelined requests outstanding to one peer
    max_requests_total: int = 64
    upload_slots: int = 8              # peers served at once
    optimistic_slots: int = 1          # of those, rotated to newcomers
    upload_rate: float = 0.0           # bytes/s cap, 0 = none
    download_rate: float = 0.0         # bytes/s cap, 0 = none
    endgame_chunks: int = 8            # duplicate requests allowed for the last N chunks
    request_timeout: float = 30.0      # seconds before a request is re-issued elsewhere
    # --- added by the swarm engine (see docs/SWARM.md) ---
    rate_burst: float = 1.0            # token-bucket depth, in seconds of the rate
    rechoke_interval: float = 10.0     # seconds between upload-slot rotations
    interest_retry: float = 5.0        # re-ask a peer that could not help after this long
    endgame_fanout: int = 2            # most peers asked for one chunk during endgame
    max_queued_per_peer: int = 32      # upload requests queued per peer before "busy"
    max_peer_failures: int = 16        # consecutive unanswered requests before a peer is dropped
    # --- issue 4: link-sized pipelines, super-seeding, tail-only endgame (docs/SWARM.md) ---
    min_requests_per_peer: int = 2     # floor of the adaptive per-peer pipeline (bandwidth x delay)
    redirect_window: float = 5.0       # a repeat request for a chunk uploaded this recently is
    #                                    redirected while never-uploaded chunks remain; 0 = off
    redirect_backoff: float = 1.0      # a redirected peer re-asks the redirector after this long
    endgame_fraction: float = 0.02     # endgame only for the last max(1, this x chunks) chunks
    endgame_age: float = 3.0           # ... and only for requests older than this many times
    #                                    their peer's expected answer time
    # --- issue 4, homogeneous ratio (docs/SWARM.md) ---
    upload_window: int = 1             # pieces handed to the driver and not yet reported sent
    #                                    (SwarmEngine.upload_done); only once the driver reports
    laggard_patience: float = 5.0      # among upload-slot holders, serve the requester known
    #                                    to hold the fewest chunks first, unless another's request
    #                                    has waited this long (s); 0 = plain round-robin


@dataclass(frozen=True, slots=True)
class Config:
    fleet_id: str = "default"
    gossip: GossipConfig = field(default_factory=GossipConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
