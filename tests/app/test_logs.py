"""Structured logs: one JSON object per line with where it happened; settings choose format and level."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tests.support.harness import handler_harness, span_job, tenant_created
from workers.app.observability.logs import JsonFormatter, TextFormatter, batch_context, setup_logging
from workers.settings import LogFormat, LogLevel, Settings

PRODUCTION = {"profile": "production", "kafka_bootstrap": "k:9092", "kms_provider": "aws", "kms_key_id": "alias/k",
              "ledger": "tigerbeetle", "tb_addresses": "3000", "kafka_security_protocol": "SSL"}


@pytest.fixture
def json_lines():
    """Everything logged under `keyledger` while the test runs, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("keyledger")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_a_json_line_carries_the_place_fields_and_extras(json_lines):
    log = logging.getLogger("keyledger.test")
    log.warning("to kms.dlq", extra={"group": "g", "topic": "t", "partition": 2, "offset": 41, "code": "not_json",
                                     "key_id": "ab"})
    [line] = json_lines()
    assert line["level"] == "WARNING" and line["logger"] == "keyledger.test" and line["message"] == "to kms.dlq"
    assert (line["group"], line["topic"], line["partition"], line["offset"], line["code"]) == ("g", "t", 2, 41, "not_json")
    assert line["key_id"] == "ab" and line["time"].endswith("Z")


def test_inside_a_batch_every_line_names_its_group(json_lines):
    log = logging.getLogger("keyledger.deep.inside")
    with batch_context("keyledger-pii"):
        log.info("something a service said")
    log.info("outside")
    inside, outside = json_lines()
    assert inside["group"] == "keyledger-pii" and "group" not in outside


def test_an_exception_is_one_line_too(json_lines):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("keyledger.test").exception("failed")
    [line] = json_lines()
    assert "ValueError: boom" in line["exception"]


def test_text_lines_show_the_place_after_the_message():
    record = logging.LogRecord("keyledger.x", logging.WARNING, __file__, 1, "to dlq", (), None)
    record.group, record.code = "g", "not_json"
    assert TextFormatter().format(record).endswith("to dlq  [group=g code=not_json]")


def test_production_logs_json_and_dev_logs_text_unless_told():
    assert Settings().effective_log_format is LogFormat.TEXT
    assert Settings(**PRODUCTION).effective_log_format is LogFormat.JSON
    assert Settings(**PRODUCTION, log_format="text").effective_log_format is LogFormat.TEXT
    assert Settings(log_level="debug").log.level is LogLevel.DEBUG
    with pytest.raises(ValueError):
        Settings(log_level="chatty")


def test_setup_logging_applies_format_and_level_and_keeps_per_message_logs_quiet():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging(Settings(log_format="json", log_level="WARNING"))
        assert isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.WARNING
        assert logging.getLogger("keyledger.kafka").level == logging.WARNING  # FastStream's per-message lines
        setup_logging(Settings(log_level="DEBUG"))
        assert isinstance(root.handlers[0].formatter, TextFormatter)
        assert logging.getLogger("keyledger.kafka").level == logging.DEBUG
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging.getLogger("keyledger.kafka").setLevel(logging.WARNING)


async def test_every_dead_letter_and_key_event_logs_one_line_with_its_place(json_lines):
    async with handler_harness(["keyledger-keygen", "keyledger-signer"]) as (context, broker, captured):
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        await broker.publish(span_job("nobody", {"card": "4111-MARKER"}), "spans.to-sign", key=b"nobody")
    lines = json_lines()
    assert "4111-MARKER" not in json.dumps(lines)  # places and codes, never values
    generated = [line for line in lines if line.get("event") == "generated"]
    assert sorted(line["key_type"] for line in generated) == ["encryption", "signing"]
    assert all(line["group"] == "keyledger-keygen" and line["topic"] == "tenants.created" and "offset" in line
               for line in generated)
    [dead] = [line for line in lines if line.get("code") == "unknown_tenant"]
    assert dead["group"] == "keyledger-signer" and dead["topic"] == "spans.to-sign"
    assert {"partition", "offset"} <= dead.keys()
