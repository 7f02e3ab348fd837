"""Dead letters: bounded to what the broker takes, PII redacted unless asked to keep it."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import DeadLetter
from workers.kafka.letters import FRAMING_BYTES, DeadLetters, letter_max_bytes, redact_pii_request
from workers.kafka.records import InboundRecord
from workers.settings import Settings

ERROR = ErrorInfo(type=ErrorCode.INVALID_MESSAGE, message="invalid PiiRequest: record_id: missing")
SECRET = "078-05-1120 Jane Q. Public"


def pii_record(value: bytes | None, topic: str = "pii.requests", key: bytes | None = b"acme",
               headers: tuple = ()) -> InboundRecord:
    return InboundRecord(topic, 1, 7, key, value, headers)


def read(out) -> DeadLetter:
    return DeadLetter.model_validate_json(out.value)


def test_the_bound_comes_from_the_broker_and_producer_limits():
    settings = Settings(max_message_bytes=1_048_576)
    assert letter_max_bytes(settings) == 1_048_576 - FRAMING_BYTES
    assert settings.kafka.producer_max_request_bytes >= settings.kafka.max_message_bytes


def test_a_record_near_the_limit_gets_a_letter_within_it_with_prefix_size_and_digest():
    limit = 1_048_576
    value = bytes(range(256)) * (int(limit * 0.99) // 256)  # accepted inbound, a third larger as base64
    record = InboundRecord("spans.to-sign", 0, 3, b"acme", value, (("trace", b"\x01"),))
    out = DeadLetters("keyledger-signer", letter_max_bytes(Settings(max_message_bytes=limit))).letter(record, ERROR)
    assert len(out.key) + len(out.value) + FRAMING_BYTES <= limit
    letter = read(out)
    prefix = base64.b64decode(letter.payload)
    assert letter.payload_truncated and value.startswith(prefix) and len(prefix) > limit // 2
    assert letter.payload_size == len(value) and letter.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.headers == [("trace", "AQ==")] and letter.key == "YWNtZQ=="  # what fits is kept


def test_a_letter_that_fits_is_not_cut():
    value = b"x" * 1000
    letter = read(DeadLetters("g", 10_000).letter(InboundRecord("spans.to-sign", 0, 0, b"k", value), ERROR))
    assert base64.b64decode(letter.payload) == value and not letter.payload_truncated


def test_headers_then_the_key_are_dropped_only_when_they_alone_do_not_fit():
    headers = tuple((f"h{i}", b"v" * 1000) for i in range(20))
    record = InboundRecord("spans.to-sign", 0, 0, b"k" * 30_000, b"{}", headers)
    out = DeadLetters("g", 20_000).letter(record, ERROR)
    letter = read(out)
    assert len(out.key) + len(out.value) <= 20_000
    assert letter.headers_dropped and letter.headers == [] and letter.key_dropped and letter.key is None
    assert base64.b64decode(letter.payload) == b"{}"
    assert out.key == hashlib.sha256(b"k" * 30_000).hexdigest().encode()  # the DLQ record's own key stays short


def test_an_enormous_error_message_is_cut_at_the_smallest_bound():
    error = ErrorInfo(type=ErrorCode.INVALID_MESSAGE, message="é" * 2000)
    out = DeadLetters("g", 512).letter(InboundRecord("spans.to-sign", 0, 0, b"k", b"{}"), error)
    assert len(out.key) + len(out.value) <= 512 and read(out).error.type is ErrorCode.INVALID_MESSAGE


# --- PII -----------------------------------------------------------------------------------------


def malformed_encrypt() -> bytes:
    # no record_id: refused by the parser, its plaintext still inside
    return json.dumps({"job_id": "j1", "tenant_id": "acme", "operation": "encrypt",
                       "fields": {"ssn": SECRET, "n": 5}, "notes": SECRET}).encode()


def test_pii_request_letters_replace_each_field_value_by_length_and_digest():
    value = malformed_encrypt()
    letter = read(DeadLetters("keyledger-pii", 100_000).letter(pii_record(value), ERROR))
    assert SECRET.encode() not in base64.b64decode(letter.payload)
    redacted = json.loads(base64.b64decode(letter.payload))
    digest = {"length": len(SECRET.encode()), "sha256": hashlib.sha256(SECRET.encode()).hexdigest()}
    assert redacted["fields"] == {"ssn": digest, "n": {"length": 1, "sha256": hashlib.sha256(b"5").hexdigest()}}
    assert redacted["notes"] == digest  # a member the contract does not name may be a misspelt `fields`
    assert (redacted["job_id"], redacted["tenant_id"], redacted["operation"]) == ("j1", "acme", "encrypt")
    assert letter.payload_redacted and not letter.payload_truncated
    assert letter.payload_size == len(value) and letter.payload_sha256 == hashlib.sha256(value).hexdigest()


@pytest.mark.parametrize("value", [
    b'{"fields": {"ssn": "' + SECRET.encode() + b'"',  # cut short: not JSON
    b'["' + SECRET.encode() + b'"]',  # JSON, not an object
    SECRET.encode("utf-16"),
])
def test_a_pii_request_that_is_not_a_json_object_keeps_only_size_and_digest(value):
    letter = read(DeadLetters("keyledger-pii", 100_000).letter(pii_record(value), ERROR))
    assert letter.payload is None and letter.payload_redacted
    assert letter.payload_size == len(value) and letter.payload_sha256 == hashlib.sha256(value).hexdigest()


def test_fields_that_are_not_an_object_are_replaced_whole():
    value = json.dumps({"tenant_id": "acme", "fields": [SECRET], "record_id": {"x": SECRET}}).encode()
    redacted = redact_pii_request(value)
    assert redacted is not None and SECRET.encode() not in redacted
    assert set(json.loads(redacted)["fields"]) == {"length", "sha256"}


def test_with_keep_pii_the_raw_record_is_kept():
    value = malformed_encrypt()
    letter = read(DeadLetters("keyledger-pii", 100_000, keep_pii=True).letter(pii_record(value), ERROR))
    assert base64.b64decode(letter.payload) == value and not letter.payload_redacted


def test_a_caller_denied_letter_is_redacted_even_with_keep_pii():
    value = json.dumps({"job_id": "j1", "tenant_id": "acme", "record_id": "r1", "operation": "encrypt",
                        "fields": {"ssn": SECRET}, "caller": {"id": "billing"}}).encode()
    denied = ErrorInfo(type=ErrorCode.CALLER_DENIED, message="caller billing: unknown")
    letter = read(DeadLetters("keyledger-pii", 100_000, keep_pii=True).letter(pii_record(value), denied))
    assert letter.payload_redacted and letter.error.type is ErrorCode.CALLER_DENIED
    payload = base64.b64decode(letter.payload)
    assert SECRET.encode() not in payload and payload == redact_pii_request(value)
    assert letter.payload_size == len(value) and letter.payload_sha256 == hashlib.sha256(value).hexdigest()


def test_other_topics_are_never_redacted():
    value = malformed_encrypt()
    letter = read(DeadLetters("keyledger-signer", 100_000).letter(pii_record(value, topic="spans.to-sign"), ERROR))
    assert base64.b64decode(letter.payload) == value and not letter.payload_redacted


def test_a_pii_tombstone_has_no_payload_and_nothing_to_redact():
    letter = read(DeadLetters("keyledger-pii", 100_000).letter(pii_record(None), ERROR))
    assert letter.payload is None and not letter.payload_redacted and letter.payload_size is None
