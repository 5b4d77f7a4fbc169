"""Prometheus metrics: a real in-process daemon, scraped over HTTP, parsed with
``prometheus_client``'s own text parser."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent._admin.fleet import provision
from agent._config import ConfigError, load_config, parse_config
from agent._daemon.metrics import serve_metrics
from agent._daemon.runtime import NodeRuntime
from agent._daemon.serve import serve
from agent.client import ShoalClient
from protocol._identity import SigningIdentity

ROOT_HEX = "ab" * 32


async def _get(port: int, path: str = "/metrics") -> tuple[str, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_key_is_opt_in_and_checked() -> None:
    base = f'data_dir = "/d"\nfleet_id = "f"\nfleet_root_key = "{ROOT_HEX}"\n'
    assert parse_config(base).metrics_listen is None
    cfg = parse_config(base + '[metrics]\nlisten = "127.0.0.1:9464"\n')
    assert cfg.metrics_listen == ("127.0.0.1", 9464)
    with pytest.raises(ConfigError, match=r"^metrics\.listen"):
        parse_config(base + '[metrics]\nlisten = "localhost"\n')
    with pytest.raises(ConfigError, match=r"^metrics\.port"):
        parse_config(base + '[metrics]\nport = 1\n')


async def test_scrape_parses_and_reports_a_rollout(tmp_path: Path) -> None:
    root = SigningIdentity.generate()
    prov = provision(tmp_path / "n0", root=root, fleet_id="metrics", name="n0",
                     operator=True, mdns_interface="")
    pkg = tmp_path / "model.bin"
    pkg.write_bytes(bytes(range(256)) * 2048)      # 512 KiB
    rt = NodeRuntime(load_config(str(prov.config_path)))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, rt)
            port = await nursery.start(serve_metrics, rt, "127.0.0.1", 0)
            async with ShoalClient.connect(prov.control_socket) as c:
                await c.control.publish(str(pkg), "det", "1.0.0")
                await c.distribute_model("det", "1.0.0")
                async with c.subscribe_convergence("det", "1.0.0") as updates:
                    async for _ in updates:
                        pass
            head, body = await _get(port)
            assert head.startswith("HTTP/1.0 200") and "text/plain" in head
            s = _samples(body.decode())
            assert s[("shoal_peers", ())] == 0
            assert s[("shoal_node_info", (("fleet_id", "metrics"), ("formation", ""),
                                          ("name", "n0"), ("node_id", rt.node_id)))] == 1
            conv = {state: s[("shoal_convergence_nodes", (("model", "det"), ("state", state),
                                                          ("version", "1.0.0")))]
                    for state in ("total", "converged", "in_progress", "pending", "failed")}
            assert conv == {"total": 1, "converged": 1, "in_progress": 0, "pending": 0,
                            "failed": 0}
            assert s[("shoal_installs_total", ())] >= 1
            assert s[("shoal_gossip_rounds_total", ())] >= 0
            assert ("shoal_swarm_bytes_fetched_total", ()) in s
            assert ("shoal_chunks_rejected_total", ()) in s
            head, body = await _get(port, "/nope")
            assert head.startswith("HTTP/1.0 404")
            nursery.cancel_scope.cancel()
