"""A node whose transfer no connected peer can feed reports it (``transfer_failed``,
"no source: ...") after ``STALL_AFTER`` seconds instead of staying ``downloading`` with
nothing to show, and drops the blocker as soon as a source is back. Every node sees it
in the convergence status, as any blocker."""

from __future__ import annotations

from protocol import BlockerReason, ModelOperationalStatus, Scope, ScopeKind
from protocol._deployments import STALL_AFTER

from ._fleet import InProcessFleet, intent

S = ModelOperationalStatus


def test_a_transfer_without_a_source_is_reported_blocked_until_one_connects() -> None:
    # 0 - 1 - 2: node 0 holds the model; node 1 (out of scope) relays the order but
    # holds no chunk, so node 2, which wants it, has no source
    fleet = InProcessFleet(3, edges=[(0, 1), (1, 2)])
    fleet.publish_files("1.0.0", seed="a")
    order = intent("1.0.0", scope=Scope(ScopeKind.NODES, nodes=("n2",)))
    fleet.issue(0, order)
    fleet.advance(5)
    st = fleet.m(2).model_state("m")
    assert st is not None and st.status is S.DOWNLOADING and st.blocker is None
    fleet.advance(STALL_AFTER)
    st = fleet.m(2).model_state("m")
    assert st is not None and st.status is S.DOWNLOADING
    assert st.blocker is BlockerReason.TRANSFER_FAILED
    assert st.blocker_detail.startswith("no source: no connected peer holds any of the")
    fleet.advance(3)                       # the record travels: node 0 sees why
    status = fleet.m(0).convergence("m", "1.0.0", fleet.now)
    assert [(b.node_id, b.reason) for b in status.blockers] == [
        (fleet.m(2).node_id, BlockerReason.TRANSFER_FAILED)]
    fleet.connect(0, 2)                    # a source
    fleet.advance(10)
    st = fleet.m(2).model_state("m")
    assert st is not None and st.status is S.OPERATIONAL and st.blocker is None
    assert fleet.m(0).convergence("m", "1.0.0", fleet.now).is_success
