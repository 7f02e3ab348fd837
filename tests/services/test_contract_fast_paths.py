"""The hot paths that do not go through a model's own JSON agree with it, value for value.

- `groups.signer.parse_job` (the I-JSON reader that also tells plainness, then `SpanToSign.model_validate`)
  accepts a `spans.to-sign` value exactly when `SpanToSign.model_validate_json` does, with the same
  job_id/tenant_id/span, and refuses with the code the model's error implies (`not_json` when it cannot
  parse, else `invalid_message`).
- `groups.signer.signed_value` (the request as it arrived plus a spliced signature member) reads back as
  the `SignedSpan` the model would write, extras and all.

Inputs are I-JSON text (UTF-8, no duplicate member names): those two rules are issue 9's and the model
cannot see a duplicate name at all, so inputs breaking them are set aside here (`assume`), not judged.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.errors import ErrorCode
from schemas.messages import Signature, SignedSpan, SpanToSign
from tests.support.strategies import finite_scalars, json_objects, json_values, tenant_ids
from workers.core.b64 import b64url_encode
from workers.core.canonical import CanonicalizationError, NotIJson, loads_ijson
from workers.core.signing import signing_input
from workers.errors import KeyledgerError
from workers.groups.signer import MAX_DEPTH, parse_job, signed_value
from workers.kafka.records import InboundRecord
from workers.services.signing import Job

CHECK = settings(max_examples=300, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
KEY_ID = "ab" * 16
RAW = "@@raw@@"  # placeholder member value, replaced by raw JSON text after dumping

# --- spans.to-sign: the oracle and the fast path ---------------------------------------------------


def model_verdict(raw: bytes) -> SpanToSign | ErrorCode:
    """The contract: I-JSON first (shared/design.md: UTF-8, no duplicate names, numbers with a value;
    stricter than pydantic's JSON reader, which takes a float overflowing to infinity), then the model."""
    try:
        loads_ijson(raw)
    except NotIJson as exc:
        return exc.code
    except RecursionError:
        return ErrorCode.NOT_JSON
    try:
        return SpanToSign.model_validate_json(raw)
    except ValidationError as exc:
        unparsable = any(e["type"] == "json_invalid" for e in exc.errors())
        return ErrorCode.NOT_JSON if unparsable else ErrorCode.INVALID_MESSAGE


def fast_verdict(raw: bytes) -> Job | ErrorCode:
    try:
        return parse_job(InboundRecord("spans.to-sign", 0, 7, b"t", raw), max_bytes=len(raw) + 1)
    except KeyledgerError as exc:
        return exc.code


def same_json(a: Any, b: Any) -> bool:
    # json.dumps tells 1 from 1.0 and True from 1, and writes NaN the same both times
    return json.dumps(a) == json.dumps(b)


def assert_agree(raw: bytes) -> Job | None:
    expected, got = model_verdict(raw), fast_verdict(raw)
    if isinstance(expected, ErrorCode):
        assert got == expected, f"model refuses ({expected}), fast path says {got!r}"
        return None
    assert isinstance(got, Job), f"model accepts, fast path refuses ({got})"
    assert (got.job_id, got.tenant_id) == (expected.job_id, expected.tenant_id)
    assert same_json(got.span, expected.span)
    return got


def is_i_json_text(raw: bytes) -> bool:
    """UTF-8 without BOM and without duplicate member names (when it parses at all)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if raw.startswith(b"\xef\xbb\xbf"):
        return False
    duplicated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicated
        duplicated |= len({k for k, _ in items}) != len(items)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        pass
    return not duplicated


# --- spans.to-sign: values, valid and mutated ------------------------------------------------------

job_ids = st.text(min_size=1, max_size=200)
bad_job_ids = st.just("") | st.text(min_size=201, max_size=260)
bad_tenant_ids = st.sampled_from(["", ".acme", "-acme", "a" * 129, "ac me", "acme\n", "acmé", "ac/me", "\u0661"]) \
    | st.text(max_size=10)
non_objects = json_values().filter(lambda v: not isinstance(v, dict))


@st.composite
def valid_values(draw: st.DrawFn) -> dict[str, Any]:
    # finite numbers only: NaN and infinity are not I-JSON (refused by both paths; the raw tests cover them)
    value = {"job_id": draw(job_ids), "tenant_id": draw(tenant_ids), "span": draw(json_objects(finite_scalars))}
    extras = draw(st.dictionaries(st.text(max_size=8), json_values(finite_scalars), max_size=2))
    value.update((k, v) for k, v in extras.items() if k not in value and k != "signature")
    order = draw(st.permutations(list(value)))
    return {k: value[k] for k in order}


@st.composite
def mutated_values(draw: st.DrawFn) -> Any:
    value = draw(valid_values())
    how = draw(st.sampled_from(["drop", "retype", "job_id", "tenant_id", "signature", "top", "none"]))
    name = draw(st.sampled_from(["job_id", "tenant_id", "span"]))
    if how == "drop":
        del value[name]
    elif how == "retype":
        value[name] = draw(json_values())
    elif how == "job_id":
        value["job_id"] = draw(bad_job_ids)
    elif how == "tenant_id":
        value["tenant_id"] = draw(bad_tenant_ids)
    elif how == "signature":
        value["signature"] = draw(json_values())
    elif how == "top":
        return draw(non_objects)
    return value


def dumped(draw: st.DrawFn, value: Any) -> bytes:
    """Python's json in any of its spellings: escaped or raw non-ASCII, compact or indented."""
    indent = draw(st.none() | st.integers(0, 2))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(value, ensure_ascii=draw(st.booleans()), indent=indent, separators=separators).encode()


# raw text json.dumps cannot write: lone and paired surrogate escapes, numbers near the digit limit
ESCAPES = [b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d\\ude00"', b'"\\uD83D"', b'"\\\\ud800"', b'"a\\ud83d\\ud83d\\ude00"',
           b'"\\u00e9"', b'"\\ud83d\\u0041"']
NUMBERS = [sign + b"1" * n + tail for n in (4299, 4300, 4301) for sign in (b"", b"-") for tail in (b"", b".5", b"e3")]
BYTES = list(b'{}[]",:\\ \t\n\r0123456789.eE+-ntfalsru\x00\x0c\x7f')


@st.composite
def raw_values(draw: st.DrawFn) -> bytes:
    base = draw(valid_values() | mutated_values())
    how = draw(st.sampled_from(["as is", "as is", "splice", "nest", "bytes"]))
    if how == "splice" and isinstance(base, dict):
        where = draw(st.sampled_from(["job_id", "tenant_id", "span member", "span key"]))
        literal = draw(st.sampled_from(ESCAPES + NUMBERS))
        if where == "span member" and isinstance(base.get("span"), dict):
            base["span"]["x"] = RAW
        elif where == "span key" and isinstance(base.get("span"), dict) and literal.startswith(b'"'):
            base["span"][RAW] = 1
        else:
            base[where if where in ("job_id", "tenant_id") else "job_id"] = RAW
        return dumped(draw, base).replace(b'"' + RAW.encode() + b'"', literal, 1)
    if how == "nest" and isinstance(base, dict) and isinstance(base.get("span"), dict):
        depth = draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 2) | st.sampled_from([300, 995, 1500]))
        inner: Any = draw(st.sampled_from([1, [], {}, "s"]))
        for level in range(depth):
            inner = [inner] if draw(st.booleans()) or level > 250 else {"k": inner}
        base["span"]["deep"] = inner
        try:
            return dumped(draw, base)
        except RecursionError:
            return json.dumps(base["job_id"]).encode()  # deeper than json.dumps goes: not a case
    raw = dumped(draw, base)
    if how == "bytes" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        edit = draw(st.sampled_from(["cut", "insert", "delete", "replace"]))
        byte = bytes([draw(st.sampled_from(BYTES))])
        raw = {"cut": raw[:at], "insert": raw[:at] + byte + raw[at:], "delete": raw[:at] + raw[at + 1:],
               "replace": raw[:at] + byte + raw[at + 1:]}[edit]
    return raw


@CHECK
@given(st.data())
def test_the_fast_span_parser_accepts_exactly_what_the_model_accepts(data: st.DataObject):
    raw = data.draw(raw_values())
    assume(is_i_json_text(raw))
    assert_agree(raw)


@CHECK
@given(valid_values())
def test_every_valid_span_job_is_accepted_as_the_model_reads_it(value: dict[str, Any]):
    raw = json.dumps(value).encode()
    job = assert_agree(raw)
    assert job is not None and job.job_id == value["job_id"]


@pytest.mark.parametrize("raw", [
    b'{"job_id":"j","tenant_id":"t","span":{},"signature":null}',
    b'{"job_id":"j","tenant_id":"t","span":{},"signature":{"alg":"Ed25519"}}',
    b'{"job_id":"j","tenant_id":"t","span":{"a":"\\ud800"}}',
    b'{"job_id":"\\udfff","tenant_id":"t","span":{}}',
    b'"\\ud800"',
    b'{"job_id":"j","tenant_id":"t","span":' + b'{"a":' * 200 + b'1' + b'}' * 201,
    b'[' * 202 + b']' * 202,
    b'[' * 201 + b'1' + b']' * 201,
    b'{"job_id":"j","tenant_id":"t","span":{"n":' + b'1' * 4301 + b'.5}}',
    b'{"job_id":"j","tenant_id":"t","span":{"n":-' + b'1' * 4301 + b'}}',
])
def test_known_disagreements_are_settled_as_the_model_settles_them(raw: bytes):
    # each of these once passed the fast path and not the model (or the other way round)
    assert isinstance(model_verdict(raw), ErrorCode)
    assert_agree(raw)


@pytest.mark.parametrize("raw", [
    b'{"job_id":"j","tenant_id":"t","span":{"a":' + b'[' * 198 + b'1' + b']' * 198 + b'}}',
    b'{"job_id":"j","tenant_id":"t","span":{"a":' + b'[' * 199 + b']' * 199 + b'}}',
    b'{"job_id":"j","tenant_id":"t","span":{"e":"\\ud83d\\ude00","k":"\\\\ud800"}}',
    b'{"job_id":"j","tenant_id":"t","span":{"n":' + b'1' * 308 + b'.5}}',  # the largest decimal order below infinity
])
def test_the_limits_are_exact(raw: bytes):
    assert isinstance(model_verdict(raw), SpanToSign)
    assert assert_agree(raw) is not None


@pytest.mark.parametrize("raw", [
    b'\xef\xbb\xbf{"job_id":"j","tenant_id":"t","span":{}}',
    '{"job_id":"j","tenant_id":"t","span":{}}'.encode("utf-16"),
    b'{"job_id":"\xed\xa0\x80","tenant_id":"t","span":{}}',
])
def test_non_utf8_input_is_refused_as_the_model_refuses_it(raw: bytes):
    assert_agree(raw)


@CHECK
@given(valid_values())
@example({"job_id": "j", "tenant_id": "t", "span": {"n": 2**53, "f": 1.0, "k": "é"}})
def test_the_plainness_known_at_parse_time_never_changes_the_signed_bytes(value: dict[str, Any]):
    # the parser tells the signer when the fast canonical form applies; it must be RFC 8785 whenever it says so
    raw = json.dumps(value, ensure_ascii=False).encode()
    assume(isinstance(model_verdict(raw), SpanToSign))  # NaN and infinity are not I-JSON: refused, never signed
    job = fast_verdict(raw)
    assert isinstance(job, Job)
    try:
        reference = rfc8785.dumps({"key_id": KEY_ID, "span": job.span, "tenant_id": job.tenant_id})
    except (rfc8785.CanonicalizationError, ValueError):
        with pytest.raises(CanonicalizationError):
            signing_input(job.tenant_id, KEY_ID, job.span, known_plain=job.plain)
        return
    assert signing_input(job.tenant_id, KEY_ID, job.span, known_plain=job.plain) == reference


# --- spans.signed: the splice and the model ---------------------------------------------------------

signed_ats = st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat().replace("+00:00", "Z"))


@CHECK
@given(valid_values(), st.binary(min_size=64, max_size=64), signed_ats, st.booleans())
def test_the_spliced_signed_span_is_the_models_signed_span(value: dict[str, Any], signature: bytes, signed_at: str,
                                                          indented: bool):
    raw = json.dumps(value, indent=2 if indented else None).encode() + (b"\n " if indented else b"")
    job = fast_verdict(raw)
    assume(isinstance(job, Job))
    assert isinstance(job, Job)
    spliced = signed_value(job, KEY_ID, signature, signed_at)
    extras = {k: v for k, v in value.items() if k not in ("job_id", "tenant_id", "span")}
    model = SignedSpan(job_id=job.job_id, tenant_id=job.tenant_id, span=job.span, **extras,
                       signature=Signature(key_id=KEY_ID, value=b64url_encode(signature), signed_at=signed_at))
    assert SignedSpan.model_validate_json(spliced) == model
    # the same members and values (json.dumps tells 1 from 1.0), null extras too (the request as it arrived);
    # the splice keeps the request's member order
    assert json.dumps(json.loads(spliced), sort_keys=True) == json.dumps(json.loads(model.model_dump_json()), sort_keys=True)
