"""Prometheus metrics of a running daemon (opt-in: ``[metrics] listen = "127.0.0.1:9464"``).

Theory of operation: nothing is counted twice. :class:`RuntimeCollector` is a
``prometheus_client`` custom collector that, at scrape time, reads the
``statistics()`` snapshots the daemon keeps anyway — the runtime's, the node
state machine's (gossip, ledger, swarm) and the store's — plus the ledger's view
of every rollout, and turns them into metric families. The registry is private
to the runtime (no process-global state, so several daemons in one test process
do not collide). The endpoint is a tiny HTTP/1.0 responder on a trio listener:
it reads one request head, answers ``GET /metrics`` with
:func:`prometheus_client.generate_latest` and closes; everything runs in the
daemon's trio thread, so the collector reads the state machine between its steps
without locks.

Names (all prefixed ``shoal_``): ``peers``, ``peer_wire_bytes{peer,direction}``,
``served_bytes_total{priority}`` (chunk bytes uploaded), ``fetching_bytes{model,
priority}`` (bytes fetched by this node's current transfers), ``chunks_verified_total``
/ ``chunks_rejected_total``, ``gossip_*`` and ``swarm_*`` (one per numeric field
of the snapshots), ``convergence_nodes{model,version,state}`` and
``convergence_eta_seconds{model,version}`` for every rollout the ledger knows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol import IntentKind

if TYPE_CHECKING:
    from agent._daemon.runtime import NodeRuntime

__all__ = ["RuntimeCollector", "registry_for", "render_metrics", "serve_metrics"]

log = logging.getLogger("shoal.metrics")

#: snapshot fields that are levels, not running totals (exported as gauges)
_GAUGE_FIELDS = {"suspects", "peers_connected", "requests_outstanding", "uploads_queued",
                 "keys_wanted", "keys_completed"}
_MAX_ROLLOUTS = 64          # newest (model, version) pairs exported per scrape
_MAX_HEAD = 8192            # bytes of request head the endpoint reads


def _numeric_fields(prefix: str, snapshot: Any, help_of: str) -> Iterator[Metric]:
    for f in dataclasses.fields(snapshot):
        value = getattr(snapshot, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name = f"{prefix}_{f.name}"
        if f.name in _GAUGE_FIELDS:
            yield GaugeMetricFamily(name, f"{help_of}: {f.name}", value=value)
        else:
            yield CounterMetricFamily(name, f"{help_of}: {f.name}", value=value)


class RuntimeCollector(Collector):
    """Reads a :class:`NodeRuntime`'s snapshots at scrape time."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        m = rt.machine
        stats = rt.statistics()
        info = GaugeMetricFamily("shoal_node_info", "this node (value is always 1)",
                                 labels=["node_id", "name", "fleet_id", "formation"])
        info.add_metric([rt.node_id, m.name, rt.config.fleet_id, m.formation], 1)
        yield info
        yield GaugeMetricFamily("shoal_peers", "connected peers", value=stats.peers)
        wire = GaugeMetricFamily("shoal_peer_wire_bytes",
                                 "bytes on the wire of each current peer session",
                                 labels=["peer", "direction"])
        for p in rt.peers():
            wire.add_metric([p.node_id, "out"], p.bytes_sent)
            wire.add_metric([p.node_id, "in"], p.bytes_received)
        yield wire
        for name in ("messages_in", "chunks_stored", "chunks_served", "ledger_saves",
                     "installs", "peers_dropped", "health_checks", "health_failures"):
            yield CounterMetricFamily(f"shoal_{name}", f"daemon: {name.replace('_', ' ')}",
                                      value=getattr(stats, name))
        served = CounterMetricFamily("shoal_served_bytes",
                                     "chunk bytes uploaded to peers, by transfer priority",
                                     labels=["priority"])
        for prio, n in sorted(rt.bytes_served_by_priority.items()):
            served.add_metric([prio], n)
        yield served
        yield from self._fetching()
        node = m.statistics()
        yield CounterMetricFamily("shoal_policy_actions", "rollout policies this node "
                                  "enacted (automatic rollbacks and halts)",
                                  value=node.policy_actions)
        yield CounterMetricFamily("shoal_chunks_verified", "chunks received whose hash "
                                  "verified", value=node.swarm.pieces_accepted)
        yield CounterMetricFamily("shoal_chunks_rejected", "chunks received that failed "
                                  "hash verification", value=node.swarm.corrupt_pieces)
        yield from _numeric_fields("shoal_gossip", node.gossip, "gossip")
        yield from _numeric_fields("shoal_swarm", node.swarm, "swarm")
        yield from self._convergence()

    def _fetching(self) -> Iterator[Metric]:
        m = self.runtime.machine
        fam = GaugeMetricFamily("shoal_fetching_bytes", "bytes this node fetched from peers "
                                "for its current transfer of a model, by priority",
                                labels=["model", "priority"])
        rec = m.ledger.record(self.runtime.node_id)
        intents = {i.intent_id: i for i in m.ledger.intents()}
        for st in rec.models if rec is not None else ():
            it = intents.get(st.intent_id)
            prio = it.priority.name.lower() if it is not None else "unknown"
            fam.add_metric([st.model_id, prio], st.bytes_fetched)
        yield fam

    def _convergence(self) -> Iterator[Metric]:
        m = self.runtime.machine
        wall = self.runtime.clock()     # the machine's clock: wall-clock seconds
        pairs: dict[tuple[str, str], float] = {}
        for it in m.ledger.intents():
            if it.kind is IntentKind.CANCEL:
                continue
            key = (it.model_id, it.version)
            pairs[key] = max(pairs.get(key, 0.0), it.stamp.wall_ms / 1000)
        newest = sorted(pairs, key=lambda k: pairs[k], reverse=True)[:_MAX_ROLLOUTS]
        nodes = GaugeMetricFamily("shoal_convergence_nodes", "nodes of a rollout by state",
                                  labels=["model", "version", "state"])
        eta = GaugeMetricFamily("shoal_convergence_eta_seconds", "estimated seconds until "
                                "a rollout completes (absent: no rate observed)",
                                labels=["model", "version"])
        for model_id, version in sorted(newest):
            c = m.convergence(model_id, version, wall)
            for state in ("total_platforms", "converged", "in_progress", "pending", "failed"):
                nodes.add_metric([model_id, version, state.removesuffix("_platforms")],
                                 getattr(c, state))
            if c.estimated_completion is not None:
                eta.add_metric([model_id, version], c.estimated_completion)
        yield nodes
        yield eta


def registry_for(runtime: NodeRuntime) -> CollectorRegistry:
    """A private registry holding only this runtime's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RuntimeCollector(runtime))
    return reg


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    out: bytes = generate_latest(registry)
    return out


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    head = b""
    with trio.move_on_after(10):
        while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < _MAX_HEAD:
            data = await stream.receive_some(4096)
            if not data:
                break
            head += data
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and \
            parts[1].split(b"?")[0] in (b"/metrics", b"/"):
        body = render_metrics(registry)
        status, ctype = b"200 OK", CONTENT_TYPE_LATEST.encode()
    else:
        body, status, ctype = b"not found: scrape /metrics\n", b"404 Not Found", b"text/plain"
    payload = b"" if parts[:1] == [b"HEAD"] else body
    await stream.send_all(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype +
                          b"\r\nContent-Length: " + str(len(body)).encode() +
                          b"\r\nConnection: close\r\n\r\n" + payload)


async def _handle(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    try:
        async with stream:
            await _answer(stream, registry)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("metrics client went away: %s", exc)


async def serve_metrics(runtime: NodeRuntime, host: str, port: int, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; reports the bound port."""
    registry = registry_for(runtime)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    task_status.started(bound)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, registry)
    await trio.serve_listeners(handler, listeners)
