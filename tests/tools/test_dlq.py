"""`keyledger dlq`: which letters can go back, what listing and showing print (never a field value)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from schemas.errors import ErrorCode
from schemas.messages import DeadLetter, DeadLetterReplay
from workers.errors import ConfigError, KeyledgerError
from workers.kafka.letters import DeadLetters
from workers.kafka.records import InboundRecord
from workers.tools.dlq import Letter, Selection, list_lines, parse_letter_id, parse_since, show_text

SECRET = "4111-1111-1111-1111"


def letter_of(topic: str, value: bytes, *, key: bytes | None = b"acme", max_bytes: int = 100_000,
              code: ErrorCode = ErrorCode.KMS_REFUSED, offset: int = 7) -> Letter:
    record = InboundRecord(topic, 1, offset, key, value, (("traceparent", b"00-abc"),))
    outgoing = DeadLetters("keyledger-test", max_bytes).letter(record, KeyledgerError("refused", code).info())
    return Letter(f"0/{offset}", DeadLetter.model_validate_json(outgoing.value))


def onboarding(tenant: str = "acme") -> bytes:
    return json.dumps({"event_id": "e1", "tenant_id": tenant, "occurred_at": "2026-12-07T00:00:00Z"}).encode()


def pii_request() -> bytes:
    return json.dumps({"job_id": "j", "tenant_id": "acme", "record_id": "r", "operation": "encrypt",
                       "fields": {"card": SECRET}}).encode()


def test_a_whole_input_record_is_replayable_and_its_tenant_is_named():
    letter = letter_of("tenants.created", onboarding())
    assert letter.blocker is None and letter.state == "replayable" and letter.tenant == "acme"


@pytest.mark.parametrize(("letter", "why"), [
    (letter_of("pii.requests", pii_request()), "payload redacted (PII)"),
    (letter_of("tenants.created", onboarding() + b" " * 4000, max_bytes=2000), "payload cut to a prefix"),
    (letter_of("kms.audit", b"{}"), "kms.audit is written by keyledger, not an input"),
])
def test_a_letter_without_its_whole_input_record_is_not_replayable(letter: Letter, why: str):
    assert letter.blocker == why and letter.state == f"not replayable: {why}"


def test_a_replayed_letter_says_where_its_replay_landed():
    letter = letter_of("tenants.created", onboarding())
    replay = DeadLetterReplay(letter=letter.id, topic="tenants.created", partition=1, offset=7, replayed_partition=1,
                              replayed_offset=42, error_code="kms_refused", group="keyledger-keygen",
                              replayed_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC))
    again = Letter(letter.id, letter.letter, replay)
    assert again.state == "replayed 2026-12-07T09:00:00+00:00 -> tenants.created[1]@42"


def test_listing_and_showing_a_pii_letter_print_no_field_value_even_when_it_was_kept():
    kept = DeadLetters("keyledger-pii", 100_000, keep_pii=True).letter(
        InboundRecord("pii.requests", 0, 3, b"acme", pii_request()), KeyledgerError("no").info())
    letter = Letter("0/3", DeadLetter.model_validate_json(kept.value))
    printed = "\n".join(list_lines([letter])) + show_text(letter)
    assert SECRET not in printed and "tenant=acme" in printed and "not shown (pii.requests" in printed
    assert "traceparent" not in printed  # a header is named only when the record had it


def test_showing_another_topic_prints_its_payload_and_header_names():
    text = show_text(letter_of("tenants.created", onboarding()))
    assert '"tenant_id": "acme"' in text and "headers    traceparent" in text and "00-abc" not in text


def test_filters_narrow_by_code_tenant_group_time_and_id():
    letter = letter_of("tenants.created", onboarding())
    assert Selection().matches(letter) and not Selection().narrowed
    assert Selection(code="kms_refused", tenant="acme", group="keyledger-test").matches(letter)
    assert not Selection(code="not_json").matches(letter)
    assert not Selection(tenant="other").matches(letter)
    assert not Selection(since=datetime.now(UTC) + timedelta(minutes=1)).matches(letter)
    assert Selection(ids=frozenset({"0/7"})).matches(letter) and not Selection(ids=frozenset({"0/8"})).matches(letter)


def test_since_takes_an_age_or_an_iso_time_and_refuses_anything_else():
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-12-07T09:30", now) == datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    assert parse_since("2026-12-07T09:30+01:00", now).utcoffset() == timedelta(hours=1)
    with pytest.raises(ConfigError, match="--since yesterday: not a time"):
        parse_since("yesterday", now)


def test_letter_ids_are_partition_slash_offset():
    assert parse_letter_id("0/017") == "0/17"
    with pytest.raises(ConfigError, match="not a letter id"):
        parse_letter_id("tenants.created:0:17")


@pytest.mark.process  # the CLI as a process
def test_replay_without_a_selection_is_refused_before_connecting():
    done = subprocess.run([sys.executable, "-m", "workers.app.cli", "dlq", "replay"], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")})
    assert done.returncode == 2
    assert done.stderr == ("keyledger dlq replay: name the letters to replay (ids or --code/--tenant/--group/--since), "
                           "or --all\n")
