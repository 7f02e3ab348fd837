"""Structured logs: one JSON object per line (or readable text), with where a line happened.

Fields of a JSON line: `time` (UTC, ISO 8601), `level`, `logger`, `message`, then
`group`, `topic`, `partition`, `offset`, `code` wherever they are known, then any
other `extra` the call site gave (e.g. `key_id`), `trace_id`/`span_id` when a
trace is current, `exception` for a traceback. `group` comes from the call's
`extra` or, inside a batch, from the batch being handled (`batch_context`), so a
line logged deep in a service still says which consumer group it served.
Nothing here adds values: call sites log ids, codes and counts, never payloads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from workers.settings import LogFormat, LogLevel, Settings

PLACE_FIELDS = ("group", "topic", "partition", "offset", "code")
# libraries whose INFO lines are per-connection or per-message chatter; keyledger.kafka is FastStream's own logger
QUIET = ("aiokafka", "faststream", "botocore", "aiobotocore", "aiohttp.access", "keyledger.kafka")

_group: ContextVar[str | None] = ContextVar("keyledger_log_group", default=None)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def batch_context(group: str) -> Iterator[None]:
    """Lines logged inside the block carry `group` (the block runs in the batch's own task)."""
    token = _group.set(group)
    try:
        yield
    finally:
        _group.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The place fields first (group from the batch context when the call gave none), then other extras."""
    fields: dict[str, Any] = {}
    group = getattr(record, "group", None) or _group.get()
    if group is not None:
        fields["group"] = group
    for name in PLACE_FIELDS[1:]:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    for name, value in record.__dict__.items():
        if name not in _STANDARD and name not in fields and name not in PLACE_FIELDS:
            fields[name] = value
    return fields


def _trace_ids() -> dict[str, str]:
    """The current trace and span id, when tracing is loaded and a span is current (never imports it)."""
    trace_api = sys.modules.get("opentelemetry.trace")
    if trace_api is None:
        return {}
    context = trace_api.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        line.update(_trace_ids())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        place = {k: v for k, v in _fields(record).items() if k in PLACE_FIELDS}
        if place and not record.exc_info:
            text += "  [" + " ".join(f"{k}={v}" for k, v in place.items()) + "]"
        return text


def setup_logging(settings: Settings | None = None) -> None:
    """Configure the root logger once per process from KEYLEDGER_LOG_FORMAT and KEYLEDGER_LOG_LEVEL.

    Without settings (the CLI before it has parsed them) a broken configuration falls back to text/INFO:
    the configuration error itself is reported by the CLI, not here."""
    if settings is None:
        try:
            settings = Settings()
        except Exception:
            settings = None
    fmt = settings.effective_log_format if settings else LogFormat.TEXT
    level = settings.log.level if settings else LogLevel.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    logging.basicConfig(level=level.value, handlers=[handler], force=True)
    for name in QUIET:
        # per-message broker logs are DEBUG on keyledger.kafka: visible only when DEBUG is asked for
        quiet = logging.DEBUG if name == "keyledger.kafka" and level is LogLevel.DEBUG else logging.WARNING
        logging.getLogger(name).setLevel(quiet)
