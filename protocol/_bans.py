"""How long a dropped peer stays away: the one ban policy every driver obeys.

When the machine drops a peer (:class:`~._events.DropPeer`) it says why
(:class:`DropCause`) and, through this policy, for how long the driver must not
redial it nor accept its sessions (``DropPeer.ban_for``, seconds; ``math.inf``
means for as long as this node runs). The daemon and the simulator carry that
out as told; neither has a ban rule of its own.

* **misbehaved**: the peer sent something that provably fails a check -- chunk
  bytes that do not hash to the chunk's name, ledger entries whose signatures do
  not verify, a message the codec rejects. An honest node never does that (chunks
  are re-hashed when they are read from disk before being served), so it stays
  away while this node runs. A ban is not persisted: a restart forgives it.
* **unresponsive**: the peer accepted requests and then left them unserved, time
  after time. A liar that advertises chunks it lacks does that, but so does an
  honest node whose disk stalls or whose link collapsed; a minute is long enough
  for the swarm to route around it and short enough that gossip with it (and
  with it the fleet's view of its state) resumes soon.
* **revoked**: the fleet root revoked the peer's key (a revocation merged from
  gossip or announced here). Its sessions are cut at once and it stays away, like
  a misbehaving peer, while this node runs (the transport refuses its handshakes
  anyway, for as long as the revocation stands).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["DropCause", "BanPolicy", "BANS"]


class DropCause(enum.StrEnum):
    MISBEHAVED = "misbehaved"        # sent bytes, signatures or messages that fail a check
    UNRESPONSIVE = "unresponsive"    # left accepted requests unserved, time after time
    REVOKED = "revoked"              # the fleet root revoked its key
    EXPIRED = "expired"              # its certificate expired (until a renewal arrives)


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """Seconds a peer dropped for each cause is not redialled nor accepted."""

    misbehaved: float = math.inf
    unresponsive: float = 60.0

    def ban_for(self, cause: DropCause) -> float:
        if cause is DropCause.UNRESPONSIVE or cause is DropCause.EXPIRED:
            return self.unresponsive   # (a renewed certificate admits it again)
        return self.misbehaved


BANS = BanPolicy()
