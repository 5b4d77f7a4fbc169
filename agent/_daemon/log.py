"""Structured daemon logs: one event per line, plain text or JSON.

``shoal daemon --log-format json`` writes one JSON object per line::

    {"ts": "2026-11-23T16:40:01.123Z", "level": "info", "logger": "shoal.daemon",
     "event": "installed det 2.0.0 (gpu)", "node_id": "3f...", "model_id": "det",
     "intent_id": "9a..."}

Every line carries ``node_id`` (set once the daemon knows its key). Lines about a
model carry ``model_id`` and ``intent_id``: a call site passes
``extra=fields(model_id=...)`` (and ``intent_id`` when it knows it); otherwise the
filter asks the resolver the daemon installed (the intent this node is carrying
out for that model, from its own ledger record). Text format keeps the same
fields as ``key=value`` after the message, still one line per event (newlines in
messages are escaped), so ``grep intent_id=9a`` works on either.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from protocol import ModelOperationalStatus, NodeRecord

__all__ = ["ContextFilter", "JsonFormatter", "TextFormatter", "configure_logging", "fields",
           "log_own_problems"]

#: structured fields a record may carry (as attributes set through ``extra``)
FIELDS = ("node_id", "model_id", "version", "intent_id", "peer", "chunk")


def fields(**kw: Any) -> dict[str, Any]:
    """``log.info("...", extra=fields(model_id=m, intent_id=i))``; None values dropped."""
    return {k: v for k, v in kw.items() if v is not None}


class ContextFilter(logging.Filter):
    """Adds ``node_id`` to every record and ``intent_id`` to records about a model."""

    def __init__(self, node_id: str = "",
                 intent_of: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.node_id = node_id
        self.intent_of = intent_of

    def filter(self, record: logging.LogRecord) -> bool:
        if self.node_id and not getattr(record, "node_id", None):
            record.node_id = self.node_id
        model = getattr(record, "model_id", None)
        if model and not getattr(record, "intent_id", None) and self.intent_of is not None:
            try:
                iid = self.intent_of(model)
            except Exception:  # a log line must never take the daemon down
                iid = None
            if iid:
                record.intent_id = iid
        return True


def _ts(record: logging.LogRecord) -> str:
    t = datetime.fromtimestamp(record.created, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in FIELDS if getattr(record, k, None) not in (None, "")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": _ts(record), "level": record.levelname.lower(),
                               "logger": record.name, "event": record.getMessage()}
        obj.update(_extras(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    """``ts level logger message key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info)
        msg = msg.replace("\\", "\\\\").replace("\n", "\\n")
        extra = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return (f"{_ts(record)} {record.levelname.lower():<7} {record.name} {msg}"
                + (f"  {extra}" if extra else ""))


def configure_logging(fmt: str = "text", *, level: int = logging.INFO,
                      stream: TextIO | None = None, node_id: str = "",
                      intent_of: Callable[[str], str | None] | None = None
                      ) -> ContextFilter:
    """Route the ``shoal`` loggers to ``stream`` (stderr) in ``fmt`` ("text" or "json").

    Returns the filter so the daemon can fill in ``node_id`` / ``intent_of`` once
    it knows them. Calling it again replaces the handler (no duplicate lines)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    ctx = ContextFilter(node_id, intent_of)
    handler.addFilter(ctx)
    logger = logging.getLogger("shoal")
    for old in [h for h in logger.handlers if getattr(h, "_shoal", False)]:
        logger.removeHandler(old)
    handler._shoal = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return ctx


def log_own_problems(record: NodeRecord | None, logged: dict[str, tuple[object, ...]],
                     logger: logging.Logger | None = None) -> None:
    """Log a node's own failures (error) and blockers (warning), with model and intent
    ids, once per change: the daemon calls this with its own record after every
    machine step. ``logged`` holds, per model, the problem last logged; a cleared one
    is noted at info level."""
    out = logger or logging.getLogger("shoal.daemon")
    if record is None:
        return
    for st in record.models:
        failed = st.status is ModelOperationalStatus.FAILED
        if not failed and st.blocker is None and st.model_id not in logged:
            continue                                  # the usual case: nothing to say
        extra = {k: v for k, v in (("model_id", st.model_id), ("version", st.version),
                                   ("intent_id", st.intent_id)) if v}
        if not failed and st.blocker is None:
            if logged.pop(st.model_id, None) is not None:
                out.info("%s %s: no longer blocked (%s)", st.model_id, st.version,
                         st.status.value, extra=extra)
            continue
        key = (failed, st.blocker, st.version, st.variant_id, st.intent_id)
        if logged.get(st.model_id) == key:
            continue
        logged[st.model_id] = key
        reason = st.blocker.value if st.blocker is not None else "unknown"
        detail = f": {st.blocker_detail}" if st.blocker_detail else ""
        out.log(logging.ERROR if failed else logging.WARNING, "%s %s %s: %s%s",
                st.model_id, st.version, "failed" if failed else "blocked", reason,
                detail, extra=extra)
