"""A node daemon as ``shoal daemon`` runs it: the runtime with its control socket and,
when configured, its metrics endpoint.

The runtime (:mod:`agent._daemon.runtime`) knows nothing of either: they are
services that read it, started in its nursery once its peer listener is up. That
keeps the dependencies one way — control server and metrics import the runtime,
never the reverse.
"""

from __future__ import annotations

import functools

import trio

from agent._daemon.control_server import ControlServer
from agent._daemon.metrics import serve_metrics
from agent._daemon.runtime import NodeRuntime, Service

__all__ = ["serve", "services_for"]


def services_for(runtime: NodeRuntime, *, control: bool = True) -> list[Service]:
    """The control socket (unless ``control`` is False) and the metrics endpoint (when
    ``[metrics] listen`` is set)."""
    out: list[Service] = []
    if control:
        out.append(_serve_control)
    listen = runtime.config.metrics_listen
    if listen is not None:
        out.append(functools.partial(_serve_metrics, host=listen[0], port=listen[1]))
    return out


async def _serve_control(runtime: NodeRuntime, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    await ControlServer(runtime, runtime.config.control_socket).serve(task_status=task_status)


async def _serve_metrics(runtime: NodeRuntime, *, host: str, port: int,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    await serve_metrics(runtime, host, port, task_status=task_status)


async def serve(runtime: NodeRuntime, *, control: bool = True, handle_signals: bool = False,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``runtime`` with its services until cancelled (or a signal)."""
    await runtime.run(services=services_for(runtime, control=control),
                      handle_signals=handle_signals, task_status=task_status)
