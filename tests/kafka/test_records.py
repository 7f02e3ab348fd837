import base64
import json

import pytest

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import TenantCreated
from workers.errors import BadInput
from workers.kafka.records import InboundRecord, dead_letter, parse


def record(value: bytes | None, key: bytes | None = b"acme") -> InboundRecord:
    return InboundRecord("tenants.created", 2, 41, key, value, (("trace", b"\x00\x01"),))


GOOD = {"event_id": "e1", "tenant_id": "acme", "occurred_at": "2026-11-22T10:00:00Z"}


def test_a_valid_event_parses_with_defaults():
    event = parse(record(json.dumps(GOOD).encode()), TenantCreated, 10_000)
    assert event.tenant_id == "acme" and [k.value for k in event.key_types] == ["signing", "encryption"]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"\xff\xfe not utf8", ErrorCode.NOT_JSON),
        (b"{not json", ErrorCode.NOT_JSON),
        (b"[1, 2]", ErrorCode.INVALID_MESSAGE),
        (json.dumps({**GOOD, "tenant_id": 7}).encode(), ErrorCode.INVALID_MESSAGE),
        (json.dumps({k: v for k, v in GOOD.items() if k != "tenant_id"}).encode(), ErrorCode.INVALID_MESSAGE),
        (json.dumps({**GOOD, "occurred_at": "yesterday"}).encode(), ErrorCode.INVALID_MESSAGE),
        (json.dumps({**GOOD, "key_types": ["hmac"]}).encode(), ErrorCode.INVALID_MESSAGE),
        (json.dumps({**GOOD, "tenant_id": "a b"}).encode(), ErrorCode.INVALID_MESSAGE),
        (b"{" + b" " * 20_000 + b"}", ErrorCode.OVERSIZED),
        (None, ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_input_gets_a_typed_error(value, code):
    with pytest.raises(BadInput) as err:
        parse(record(value), TenantCreated, 10_000)
    assert err.value.code is code


def test_error_messages_name_fields_not_values():
    secret = "4111 1111 1111 1111"
    with pytest.raises(BadInput) as err:
        parse(record(json.dumps({**GOOD, "tenant_id": secret}).encode()), TenantCreated, 10_000)
    assert secret not in str(err.value) and "tenant_id" in str(err.value)


def test_a_dead_letter_keeps_the_original_record_whole():
    raw = b"{not json"
    letter = dead_letter(record(raw), ErrorInfo(type=ErrorCode.NOT_JSON, message="x"), "keyledger-keygen")
    assert (letter.topic, letter.partition, letter.offset) == ("tenants.created", 2, 41)
    assert base64.b64decode(letter.payload) == raw and base64.b64decode(letter.key) == b"acme"
    assert letter.headers == [("trace", base64.b64encode(b"\x00\x01").decode())]
    assert letter.error.type is ErrorCode.NOT_JSON
