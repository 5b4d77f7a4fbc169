"""A node logs its own blockers and failures: a real daemon (``--log-format json``)
ordered to run a model no variant of which fits it writes one warning-or-error line
with the model and intent ids, once, not every tick."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import BlockerReason, ModelOperationalStatus, ShoalClient
from agent._daemon.log import configure_logging, log_own_problems
from agent._demo.fleet import FAST_GOSSIP, LocalFleet

from ._fleet import record, running

PROBE = '[probe]\ncpu_arch = "x86_64"\ngpus = []\n'


def gpu_only_package(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "shoal-model.toml").write_text(
        '[[variant]]\nid = "fp16-gpu"\nprecision = "fp16"\nmin_gpu_mem_gb = 4\n'
        'execution_providers = ["CUDAExecutionProvider"]\n')
    (root / "fp16-gpu").mkdir()
    (root / "fp16-gpu" / "model.bin").write_bytes(b"\x01" * 50_000)
    return root


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_each_change_of_own_problem_is_logged_once(restore: None) -> None:
    out = io.StringIO()
    configure_logging("json", stream=out, node_id="n" * 32)
    S = ModelOperationalStatus
    moving = running("det", "2.0.0", S.DOWNLOADING, intent_id="i" * 64)
    logged: dict[str, tuple[object, ...]] = {}

    def step(*models: Any) -> list[dict[str, Any]]:
        own = record(models=models)
        before = len(out.getvalue().splitlines())
        for _ in range(3):                       # several machine steps, one line
            log_own_problems(own, logged)
        return [json.loads(x) for x in out.getvalue().splitlines()[before:]]

    assert step(moving) == []
    full = replace(moving, blocker=BlockerReason.INSUFFICIENT_STORAGE,
                   blocker_detail="disk full")
    [warn] = step(full)
    assert warn["level"] == "warning" and warn["model_id"] == "det"
    assert warn["intent_id"] == "i" * 64 and "blocked: insufficient_storage: disk full" in \
        warn["event"]
    [err] = step(replace(full, status=S.FAILED))
    assert err["level"] == "error" and "det 2.0.0 failed: insufficient_storage" in err["event"]
    [ok] = step(replace(moving, status=S.OPERATIONAL))
    assert ok["level"] == "info" and "no longer blocked" in ok["event"]
    assert step(replace(moving, status=S.OPERATIONAL)) == []


@pytest.mark.slow
def test_own_blocker_is_logged_once_with_model_and_intent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_LOG_FORMAT", "json")
    fleet = LocalFleet(tmp_path / "fleet", 1, mdns=False, extra_config=PROBE + FAST_GOSSIP)
    pkg = gpu_only_package(tmp_path / "pkg")
    log_path = fleet.nodes[0].data_dir / "daemon.log"

    async def go() -> str:
        with trio.fail_after(30):
            async with ShoalClient.connect(fleet.socket(0)) as c:
                await c.control.publish(str(pkg), "gpuonly", "1.0.0")
                h = await c.distribute_model("gpuonly", "1.0.0")
                while True:
                    st = await c.node_model_status("gpuonly", "")
                    if st is not None and st.status is ModelOperationalStatus.FAILED:
                        break
                    await trio.sleep(0.1)
                await trio.sleep(2.0)      # many machine steps: still one line
                return str(h.handle_id)

    with fleet.running(30):
        intent_id = trio.run(go)
    lines = [x for x in log_lines(log_path) if x.get("model_id") == "gpuonly"
             and x["level"] in ("warning", "error")]
    assert len(lines) == 1, lines
    [line] = lines
    assert line["event"].startswith("gpuonly 1.0.0 failed: incompatible_capabilities: ")
    assert line["intent_id"] == intent_id and line["level"] == "error"
    assert line["node_id"] == fleet.nodes[0].node_id and line["version"] == "1.0.0"
