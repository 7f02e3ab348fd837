import base64
import json

import pytest

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import DeadLetter, PiiRequest, RotationTick, SpanToSign, TenantCreated, TenantDeleted
from workers.errors import BadInput
from workers.groups.signer import parse_job
from workers.kafka.letters import DeadLetters
from workers.kafka.records import InboundRecord, parse


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
    out = DeadLetters("keyledger-keygen", 1_000_000).letter(record(raw), ErrorInfo(type=ErrorCode.NOT_JSON, message="x"))
    letter = DeadLetter.model_validate_json(out.value)
    assert out.topic == "kms.dlq" and out.key == b"acme"
    assert (letter.topic, letter.partition, letter.offset) == ("tenants.created", 2, 41)
    assert base64.b64decode(letter.payload) == raw and base64.b64decode(letter.key) == b"acme"
    assert letter.headers == [("trace", base64.b64encode(b"\x00\x01").decode())]
    assert letter.error.type is ErrorCode.NOT_JSON
    assert not (letter.payload_truncated or letter.payload_redacted) and letter.payload_sha256 is None


# --- I-JSON on every input topic (issue 9, items 6, 7, 8) ----------------------------------------------------

VALID = {
    TenantCreated: GOOD,
    TenantDeleted: GOOD,
    PiiRequest: {"job_id": "j", "tenant_id": "acme", "record_id": "r", "operation": "encrypt", "fields": {"a": "x"}},
    RotationTick: {"tick_id": "t", "issued_at": "2026-11-22T10:00:00Z", "tenant_id": "acme"},
    SpanToSign: {"job_id": "j", "tenant_id": "acme", "span": {"amount": 1}},
}


def _spliced(body: dict, extra: str) -> bytes:
    """`body` with raw JSON text `extra` spliced in as its first members (json.dumps cannot repeat a name)."""
    text = json.dumps(body)
    return ("{" + extra + ", " + text[1:]).encode()


def _parse_as(model, value: bytes):
    if model is SpanToSign:  # the signer's own fast parser must refuse exactly the same
        return parse_job(record(value), 10_000)
    return parse(record(value), model, 10_000)


HOSTILE = [
    # duplicate member names, at the top, deep down, spelled with escapes
    ("duplicate", lambda body: _spliced(body, f'"{next(iter(body))}": {json.dumps(next(iter(body.values())))}'),
     ErrorCode.INVALID_MESSAGE),
    ("duplicate-escaped", lambda body: _spliced(body, '"\\u0061b": 1, "ab": 2'), ErrorCode.INVALID_MESSAGE),
    ("duplicate-deep", lambda body: _spliced(body, '"x": [{"y": {"z": 1, "\\u007a": 2}}]'), ErrorCode.INVALID_MESSAGE),
    # not UTF-8: UTF-16/32 with or without BOM, UTF-8 with BOM
    ("utf-16", lambda body: json.dumps(body).encode("utf-16"), ErrorCode.NOT_JSON),
    ("utf-16-le", lambda body: json.dumps(body).encode("utf-16-le"), ErrorCode.NOT_JSON),
    ("utf-32", lambda body: json.dumps(body).encode("utf-32"), ErrorCode.NOT_JSON),
    ("utf-8-bom", lambda body: b"\xef\xbb\xbf" + json.dumps(body).encode(), ErrorCode.NOT_JSON),
    # numbers without a value
    ("5000-digits", lambda body: _spliced(body, '"n": ' + "7" * 5000), ErrorCode.INVALID_MESSAGE),
    ("float-overflow", lambda body: _spliced(body, '"n": 1e400'), ErrorCode.INVALID_MESSAGE),
    ("nan", lambda body: _spliced(body, '"n": NaN'), ErrorCode.NOT_JSON),
]


@pytest.mark.parametrize("model", list(VALID), ids=lambda m: m.__name__)
@pytest.mark.parametrize(("case", "hostile", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_input_that_is_not_i_json_is_refused_on_every_topic_with_its_code(model, case, hostile, code):
    _parse_as(model, json.dumps(VALID[model]).encode())  # the same body without the fault parses
    with pytest.raises(BadInput) as err:
        _parse_as(model, hostile(VALID[model]))
    assert err.value.code is code
    assert "7777" not in str(err.value) and len(str(err.value)) <= 500


def test_a_long_field_path_is_named_without_being_quoted():
    path = "p" * 3000
    body = {**VALID[PiiRequest], "fields": {path: "x", "ok": 5}}
    with pytest.raises(BadInput) as err:
        parse(record(json.dumps(body).encode()), PiiRequest, 100_000)
    message = str(err.value)
    assert "ppp" not in message and len(message) <= 500
    assert "fields.<key>.[key]: string_too_long" in message and "fields.<key>: string_type" in message


def test_many_problems_are_counted_not_listed():
    body = {**VALID[PiiRequest], "fields": {f"f{i}": i for i in range(300)}}
    with pytest.raises(BadInput) as err:
        parse(record(json.dumps(body).encode()), PiiRequest, 100_000)
    assert "more" in str(err.value) and len(str(err.value)) <= 500


def test_header_values_stay_bytes_or_null():
    odd = InboundRecord("spans.to-sign", 0, 1, b"k", b"{}", (("h", None), ("g", b"\xff\xfe")))
    letter = DeadLetter.model_validate_json(
        DeadLetters("g", 10_000).letter(odd, ErrorInfo(type=ErrorCode.NOT_JSON, message="x")).value)
    assert letter.headers == [("h", None), ("g", base64.b64encode(b"\xff\xfe").decode())]


# `parse_plain` (one reading for the model and for a caller's proof) is `parse` plus the object as read:
# held to `parse` and `loads_ijson` (the models) on PII requests, valid ones and any JSON or bytes.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.support.strategies import json_values, models  # noqa: E402
from workers.core.canonical import canonical_json, loads_ijson  # noqa: E402
from workers.kafka.records import parse_plain  # noqa: E402


def _outcome(reader, value: bytes):
    try:
        return "ok", reader(record(value), PiiRequest, 1 << 20)
    except BadInput as exc:
        return "refused", (exc.code, str(exc))


_requests = models(PiiRequest, extras=True).map(lambda m: m.model_dump_json(exclude_none=True).encode())
_texts = st.one_of(_requests, json_values().map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=60), _requests.map(lambda raw: raw.replace(b'"', b'\\u0022', 1)))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texts)
def test_parse_plain_answers_as_parse_does_and_keeps_the_object_read(value):
    expected = _outcome(parse, value)
    got = _outcome(parse_plain, value)
    assert got[0] == expected[0]
    if expected[0] == "refused":
        assert got[1] == expected[1]
        return
    request, body, plain = got[1]
    assert request == expected[1]
    assert body == loads_ijson(value)
    if plain:  # plain is only said when it holds: the sorted writing is then RFC 8785
        assert canonical_json(body, known_plain=True) == canonical_json(body)
