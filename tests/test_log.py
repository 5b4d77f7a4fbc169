"""Structured logs: one event per line; JSON carries node id and intent id."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agent._daemon.log import configure_logging, fields


def test_json_lines_carry_node_and_intent(restore: None) -> None:
    out = io.StringIO()
    intents = {"det": "i" * 64}
    configure_logging("json", stream=out, node_id="n" * 32, intent_of=intents.get)
    log = logging.getLogger("shoal.daemon")
    log.info("installed %s %s", "det", "2.0.0", extra=fields(model_id="det", version="2.0.0"))
    log.warning("line one\nline two")
    log.info("other model", extra=fields(model_id="other"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["event"] == "installed det 2.0.0" and first["level"] == "info"
    assert first["node_id"] == "n" * 32 and first["intent_id"] == "i" * 64
    assert first["model_id"] == "det" and first["logger"] == "shoal.daemon"
    assert second["event"] == "line one\nline two" and "intent_id" not in second
    assert second["node_id"] == "n" * 32
    assert third["model_id"] == "other" and "intent_id" not in third


def test_text_lines_are_single_lines_with_fields(restore: None) -> None:
    out = io.StringIO()
    configure_logging("text", stream=out, node_id="abc")
    configure_logging("text", stream=out, node_id="abc")     # reconfigure: no duplicates
    log = logging.getLogger("shoal.control")
    log.error("boom\nsecond", extra=fields(model_id="det", intent_id="xyz"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "boom\\nsecond" in lines[0] and " error " in lines[0]
    assert lines[0].endswith("  node_id=abc model_id=det intent_id=xyz")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("xml")
