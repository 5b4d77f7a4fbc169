"""Control socket hardening, in process: a connection cap (excess connections are
closed at once, with a log line) and an idle timeout for connections that send
nothing (closed, counted). Small limits and short timeouts; the only timing bound
asserted is generous (an idle connection is closed well before a 10 s guard)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
import trio

from agent._daemon.control_server import ControlServer

if TYPE_CHECKING:
    from agent._daemon.runtime import NodeRuntime

# connections refused or idle never reach a request, so no runtime is consulted
_NO_RUNTIME = cast("NodeRuntime", None)


async def _closed_by_server(stream: trio.SocketStream, within: float) -> bool:
    """True when the server closes ``stream`` (EOF) within ``within`` seconds."""
    with trio.move_on_after(within):
        try:
            data = await stream.receive_some(1024)
        except trio.BrokenResourceError:
            return True
        return data == b""
    return False


async def test_connections_over_the_cap_are_refused_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.control")
    server = ControlServer(_NO_RUNTIME, str(tmp_path / "run" / "c.sock"),
                           max_connections=4, idle_timeout=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        held = [await trio.open_unix_socket(str(server.path)) for _ in range(4)]
        with trio.fail_after(10):
            while server.statistics().active < 4:
                await trio.sleep(0.01)
        extra = [await trio.open_unix_socket(str(server.path)) for _ in range(3)]
        for s in extra:                       # beyond the cap: closed at once
            assert await _closed_by_server(s, within=10)
        for s in held:                        # within it: still open
            assert not await _closed_by_server(s, within=0.05)
        st = server.statistics()
        assert (st.active, st.accepted, st.refused_over_limit) == (4, 4, 3)
        over = [r for r in caplog.records if "over the limit of 4" in r.getMessage()]
        assert len(over) == 3
        # a held connection closes: a new one is served again
        await held.pop().aclose()
        with trio.fail_after(10):
            while server.statistics().active > 3:
                await trio.sleep(0.01)
        again = await trio.open_unix_socket(str(server.path))
        assert not await _closed_by_server(again, within=0.05)
        assert server.statistics().accepted == 5
        for s in [*held, *extra, again]:
            await s.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_and_half_sent_connections_are_closed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.control")
    server = ControlServer(_NO_RUNTIME, str(tmp_path / "run" / "c.sock"),
                           max_connections=8, idle_timeout=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        silent = await trio.open_unix_socket(str(server.path))
        half = await trio.open_unix_socket(str(server.path))
        await half.send_all(b"\x00\x00\x01\x00ab")     # a 256-byte frame, 2 bytes sent
        assert await _closed_by_server(silent, within=10)
        assert await _closed_by_server(half, within=10)
        with trio.fail_after(10):
            while server.statistics().active:
                await trio.sleep(0.01)
        st = server.statistics()
        assert (st.accepted, st.idle_closed, st.active) == (2, 2, 0)
        assert sum("idle for 0.3 s" in r.getMessage() for r in caplog.records) == 2
        await silent.aclose()
        await half.aclose()
        nursery.cancel_scope.cancel()
