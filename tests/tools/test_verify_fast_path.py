"""workers/tools/verify.py's direct check of a signed span agrees with the model, verdict for verdict.

`keyledger verify` no longer runs `SignedSpan.model_validate` per span: `_claim` checks the dict itself
and hands anything it is not sure of to the model. The oracle here is the verifier as it was before
(the model, then "alg present and Ed25519", "value is 64 bytes of unpadded base64url", then the key
rebuilt from its bytes for every span): for random and mutated records, as Python dicts (anything a
caller may pass: bytes, subclasses, non-string names, lone surrogates) and as JSON lines (escaped and
raw spellings), both give the same claim and the same verdict.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.messages import SignedSpan
from tests.support.strategies import aware_datetimes, finite_scalars, json_objects, json_values, tenant_ids
from workers.core.b64 import b64encode, b64url_decode, b64url_encode
from workers.core.canonical import CanonicalizationError, plain_json_loads
from workers.core.signing import (
    Verdict,
    private_key_from_seed,
    public_key_bytes,
    sign,
    signing_input,
    verify,
)
from workers.tools import verify as verify_module
from workers.tools.verify import KeyStatus, PublicKeyBook, _claim, verify_lines, verify_signed_span

CHECK = settings(max_examples=300, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

KEY_A1, KEY_A2, KEY_A3, KEY_B1 = "a1" * 16, "a2" * 16, "a3" * 16, "b1" * 16
SIGNERS = [("acme", KEY_A1), ("acme", KEY_A2), ("acme", KEY_A3), ("globex", KEY_B1), ("acme", KEY_B1),
           ("acme", "ff" * 16)]


def private(key_id: str):
    return private_key_from_seed(bytes.fromhex(key_id) * 2)


def event(kind: str, tenant: str, key_id: str, *, public: bool = True) -> bytes:
    fields: dict[str, Any] = {"event_id": f"{kind}-{tenant}-{key_id}", "type": kind, "tenant_id": tenant,
                              "key_id": key_id, "key_type": "signing", "version": 1,
                              "occurred_at": "2025-01-01T00:00:00Z"}
    if public:
        fields["public_key"] = b64encode(public_key_bytes(private(key_id)))
    return json.dumps(fields).encode()


def make_book() -> PublicKeyBook:
    """acme: A1 current, A2 revoked, A3 revoked before its public key was known; globex: B1 current."""
    book = PublicKeyBook()
    for value in (event("generated", "acme", KEY_A1), event("generated", "acme", KEY_A2),
                  event("revoked", "acme", KEY_A2, public=False), event("revoked", "acme", KEY_A3, public=False),
                  event("generated", "globex", KEY_B1)):
        assert book.learn_raw(value)
    return book


BOOK = make_book()

# --- the oracle: the verifier before the direct check --------------------------------------------


def model_claim(signed: Any) -> tuple[str, str, dict[str, Any], str] | None:
    if isinstance(signed, SignedSpan):
        record = signed
    elif isinstance(signed, dict):
        try:
            record = SignedSpan.model_validate(signed)
        except ValidationError:
            return None
        if "alg" not in record.signature.model_fields_set:
            return None
    else:
        return None
    value = record.signature.value
    if record.signature.alg != "Ed25519":
        return None
    try:
        if len(b64url_decode(value)) != 64:
            return None
    except ValueError:
        return None
    return record.tenant_id, record.signature.key_id, record.span, value


def model_verdict(signed: Any, known_plain: bool) -> Verdict:
    claim = model_claim(signed)
    if claim is None:
        return Verdict.INVALID
    tenant_id, key_id, span, value = claim
    known = BOOK.lookup(tenant_id, key_id)
    if known is None:
        return Verdict.UNKNOWN_KEY
    if known.public_key is None:
        return Verdict.UNKNOWN_KEY if known.status is KeyStatus.CURRENT else Verdict.REVOKED_KEY
    try:
        message = signing_input(tenant_id, key_id, span, known_plain=known_plain)
    except (CanonicalizationError, RecursionError):
        return Verdict.INVALID
    if not verify(known.public_key, message, value):  # the key rebuilt from its bytes, as before
        return Verdict.INVALID
    return Verdict.VALID if known.status is KeyStatus.CURRENT else Verdict.REVOKED_KEY


def line_oracle(line: str) -> list[tuple[int, str, Verdict]]:
    if not line.strip():
        return []
    try:
        signed, plain = plain_json_loads(line.encode("utf-8"))
    except (ValueError, RecursionError):
        signed, plain = None, False
    if signed is None:
        try:
            lenient = json.loads(line)
        except (ValueError, RecursionError):
            lenient = None
        return [(1, job_of(lenient), Verdict.INVALID)]
    return [(1, job_of(signed), model_verdict(signed, plain))]


def job_of(value: Any) -> str:
    job_id = value.get("job_id") if isinstance(value, dict) else None
    if not isinstance(job_id, str) or not job_id:
        return "?"
    # the one intended change: a job id that cannot be written (a lone surrogate) is reported escaped
    return job_id.encode("utf-8", "backslashreplace").decode("utf-8")


def same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, default=repr) == json.dumps(b, default=repr)


def assert_same_claim(signed: Any) -> None:
    expected, got = model_claim(signed), _claim(signed, parsed=False, escaped=True)
    if expected is None:
        assert got is None, f"the model refuses, the direct check accepts {got!r}"
        return
    assert got is not None, "the model accepts, the direct check refuses"
    tenant_id, key_id, span, value = expected
    assert got[:2] == (tenant_id, key_id) and got[3] == b64url_decode(value)
    assert same_json(got[2], span)


# --- records: signed, then mutated ---------------------------------------------------------------


class Alg(StrEnum):
    ED25519 = "Ed25519"


SURROGATES = ["\ud800", "a\udfff", "\udc00x"]
odd_texts = st.sampled_from(SURROGATES + ["", " ", "é", "\n", "a" * 200, "a" * 201, "é" * 200, "\U0001f600" * 200,
                                          "Ed25519", "ed25519", KEY_A1, KEY_A1.upper(), KEY_A1 + "\n", KEY_A1[:-1],
                                          "acme", "acme\n", "acmé", "job-1"]) | st.text(max_size=12)
# what a Python caller may pass that JSON cannot hold: the model's lax mode takes some of them
python_values = st.sampled_from([b"acme", bytearray(b"job"), b"\xff", Alg.ED25519, datetime(2025, 1, 1, tzinfo=UTC),
                                 datetime(2025, 1, 1), date(2025, 1, 1), 1.5, object(), (1, 2), frozenset(),
                                 OrderedDict(a=1)])
any_values = json_values(finite_scalars) | odd_texts | python_values
json_times = st.sampled_from([
    "2025-01-01T00:00:00Z", "2025-01-01T00:00:00.123456Z", "2025-01-01T00:00:00+02:00", "2025-01-01T00:00:00",
    "2025-01-01", "2025-01-01 00:00:00", "1700000000", "1700000000.5", "2025-02-30T00:00:00Z", "2025-13-01T00:00:00Z",
    "2025-01-01T24:00:00Z", "2025-01-01T23:59:60Z", "yesterday", "", "0000-01-01T00:00:00Z", "\ud800",
    1700000000, 1.5, -1, 10**20, True, False, None, [], {}]) \
    | aware_datetimes.map(lambda d: d.isoformat().replace("+00:00", "Z")) | st.text(max_size=30)
times = json_times | python_values


URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def signature_spellings(value: str, python: bool) -> st.SearchStrategy[Any]:
    """Near misses of a signature value: padded, cut, lengthened, other alphabet, unused bits set, ..."""
    try:
        raw = b64url_decode(value)
    except ValueError:  # already mutated once
        raw = bytes(64)
    last = max(URL_ALPHABET.find(value[-1]), 0)
    return st.sampled_from([
        value, value + "==", value + "=", value[:-1], value[:-3], value + "A", value.replace("-", "+").replace("_", "/"),
        value[:-1] + URL_ALPHABET[last | 1],  # a last character whose unused low bits are not zero
        b64url_encode(raw[:63]), b64url_encode(raw + b"\0"), b64url_encode(bytes(64)), " " + value, value + "\n",
        value[:-1] + "é", "", 123, None] + ([value.encode(), Alg.ED25519] if python else []))


@st.composite
def signed_records(draw: st.DrawFn) -> dict[str, Any]:
    span = draw(json_objects(finite_scalars) | st.just({"name": "charge", "n": 1, "ok": True}))
    tenant_id, key_id = draw(st.sampled_from(SIGNERS))
    try:
        value = sign(private(key_id), signing_input(tenant_id, key_id, span))
    except CanonicalizationError:
        value = b64url_encode(bytes(range(64)))
    signature = {"alg": "Ed25519", "key_id": key_id, "value": value,
                 "signed_at": draw(json_times.filter(lambda t: isinstance(t, str)) | st.just("2025-01-01T00:00:00Z"))}
    record: dict[str, Any] = {"job_id": draw(st.text(min_size=1, max_size=20)), "tenant_id": tenant_id, "span": span,
                              "signature": signature}
    for target in (record, signature):
        extras = draw(st.dictionaries(st.text(max_size=6), json_values(finite_scalars), max_size=2))
        target.update((k, v) for k, v in extras.items() if k not in target)
    return record


TOP, SIGNATURE = ["job_id", "tenant_id", "span", "signature"], ["alg", "key_id", "value", "signed_at"]


@st.composite
def mutated_records(draw: st.DrawFn, python: bool) -> Any:
    record = draw(signed_records())
    signature = record["signature"]
    values = any_values if python else json_values(finite_scalars) | odd_texts
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["drop", "retype", "retype signature", "time", "value", "key", "tenant", "job",
                                    "extra", "span key", "span", "whole"]))
        if how == "drop":
            target, name = draw(st.sampled_from([(record, n) for n in TOP] + [(signature, n) for n in SIGNATURE]))
            target.pop(name, None)
        elif how == "retype":
            record[draw(st.sampled_from(TOP))] = draw(values)
        elif how == "retype signature":
            signature[draw(st.sampled_from(SIGNATURE))] = draw(values)
        elif how == "time":
            signature["signed_at"] = draw(times if python else json_times)
        elif how == "value" and isinstance(signature.get("value"), str) and len(signature["value"]) == 86:
            signature["value"] = draw(signature_spellings(signature["value"], python))
        elif how == "key":
            signature["key_id"] = draw(st.sampled_from([k for _, k in SIGNERS]) | odd_texts)
        elif how == "tenant":
            record["tenant_id"] = draw(st.sampled_from(["acme", "globex"]) | tenant_ids | odd_texts)
        elif how == "job":
            record["job_id"] = draw(odd_texts | st.text(min_size=195, max_size=205))
        elif how == "extra":
            names = st.text(max_size=6) | st.sampled_from(SURROGATES + ["model_config", "__dict__", "_x", "to_json"])
            if python:
                names |= st.sampled_from([1, None, b"x", ("t",), Alg.ED25519])
            draw(st.sampled_from([record, signature]))[draw(names)] = draw(json_values(finite_scalars))
        elif how == "span key" and isinstance(record.get("span"), dict):
            keys = st.sampled_from(SURROGATES + ["é", ""]) | (st.sampled_from([1, None, b"k"]) if python else st.nothing())
            record["span"][draw(keys)] = 1
        elif how == "span":
            record["span"] = draw(json_values(finite_scalars) | (st.builds(OrderedDict, json_objects(finite_scalars))
                                                                 if python else st.nothing()))
        elif how == "whole":
            if python:
                return draw(st.sampled_from([[], "text", 42, None, b"{}", OrderedDict(record), model_of(record)]))
            return draw(json_values(finite_scalars).filter(lambda v: not isinstance(v, dict)))
    return record


def model_of(record: dict[str, Any]) -> Any:
    try:
        return SignedSpan.model_validate(record)
    except ValidationError:
        return record


# --- the properties ------------------------------------------------------------------------------


def valid_record(top: dict[Any, Any] | None = None, **signature: Any) -> dict[Any, Any]:
    span = {"name": "charge", "n": 1}
    value = sign(private(KEY_A1), signing_input("acme", KEY_A1, span))
    fields = {"alg": "Ed25519", "key_id": KEY_A1, "value": value, "signed_at": "2025-01-01T00:00:00Z", **signature}
    return {"job_id": "job-1", "tenant_id": "acme", "span": span, "signature": fields, **(top or {})}


# the cases where the two readings part most easily, each on an otherwise valid record
EDGES = [
    valid_record(), valid_record({"job_id": b"job"}), valid_record({"job_id": b"\xff"}),
    valid_record({"job_id": bytearray(b"job")}), valid_record({"tenant_id": b"acme"}), valid_record(key_id=KEY_A1.encode()),
    valid_record({"job_id": "\ud800"}), valid_record({"job_id": "a" * 200}), valid_record({"job_id": "a" * 201}),
    valid_record({"job_id": "\U0001f600" * 200}), valid_record({"job_id": ""}), valid_record({"tenant_id": "acme\n"}),
    valid_record(key_id=KEY_A1 + "\n"), valid_record(alg=Alg.ED25519), valid_record(alg="ed25519"),
    valid_record(signed_at=datetime(2025, 1, 1, tzinfo=UTC)), valid_record(signed_at=1700000000),
    valid_record(signed_at=1.5), valid_record(signed_at=True), valid_record(signed_at="1700000000"),
    valid_record(signed_at="2025-02-30T00:00:00Z"), valid_record(signed_at="\ud800"), valid_record(signed_at=10**20),
    valid_record({"span": OrderedDict(name="charge", n=1)}), valid_record({"span": {"name": "charge", "n": 1, 1: 2}}),
    valid_record({"span": {"name": "charge", "n": 1, "\ud800": 2}}), valid_record({1: "x"}), valid_record({"\ud800": 1}),
    valid_record({"\udc00x": 1}), valid_record(**{"\ud800": 1}), valid_record(**{"model_config": 1}),
    valid_record({"__dict__": 1, "_x": 2}), OrderedDict(valid_record()), SignedSpan.model_validate(valid_record()),
    {k: v for k, v in valid_record().items() if k != "job_id"},
    valid_record(**{"alg": None}), {**valid_record(), "signature": {"key_id": KEY_A1, "value": "x"}},
]


@pytest.mark.parametrize("record", EDGES, ids=lambda r: repr(r)[:70])
def test_edges_agree(record: Any) -> None:
    assert_same_claim(record)
    assert verify_signed_span(BOOK, record) is model_verdict(record, known_plain=False)


@CHECK
@given(mutated_records(python=True))
@example({"job_id": "\ud800", "tenant_id": "acme", "span": {}, "signature": {}})
def test_the_direct_check_claims_exactly_what_the_model_accepts(record: Any) -> None:
    assert_same_claim(record)


@CHECK
@given(mutated_records(python=True))
def test_a_dict_gets_the_verdict_the_model_gave(record: Any) -> None:
    assert verify_signed_span(BOOK, record) is model_verdict(record, known_plain=False)


@CHECK
@given(st.data())
def test_a_line_gets_the_verdict_the_model_gave(data: st.DataObject) -> None:
    record = data.draw(mutated_records(python=False))
    # escaped (\\uXXXX, lone surrogates included) or raw non-ASCII, compact or spaced
    ascii_only = data.draw(st.booleans())
    separators = data.draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    line = json.dumps(record, ensure_ascii=ascii_only, separators=separators)
    assert list(verify_lines([line], BOOK)) == line_oracle(line)


@settings(CHECK, max_examples=60)
@given(st.data())
def test_threads_keep_every_verdict_and_its_place(data: st.DataObject) -> None:
    records = data.draw(st.lists(mutated_records(python=False), max_size=12))
    lines = [json.dumps(r, ensure_ascii=data.draw(st.booleans())) for r in records]
    for at in data.draw(st.lists(st.integers(0, len(lines)), max_size=3)):
        lines.insert(at, data.draw(st.sampled_from(["", "\n", "  ", "{oops", "[]"])))
    expected = [(number, job, verdict) for number, line in enumerate(lines, start=1)
                for _, job, verdict in line_oracle(line)]
    with patch.object(verify_module, "THREAD_BATCH", data.draw(st.integers(1, 5))):
        assert list(verify_lines(lines, BOOK, threads=data.draw(st.integers(1, 3)))) == expected
    assert list(verify_lines(lines, BOOK)) == expected


def test_every_verdict_is_reached() -> None:
    """The properties above are only worth something if the records reach every verdict."""
    valid = {"job_id": "j", "tenant_id": "acme", "span": {"n": 1},
             "signature": {"alg": "Ed25519", "key_id": KEY_A1, "signed_at": "2025-01-01T00:00:00Z",
                           "value": sign(private(KEY_A1), signing_input("acme", KEY_A1, {"n": 1}))}}
    revoked = json.loads(json.dumps(valid))
    revoked["signature"].update(key_id=KEY_A2, value=sign(private(KEY_A2), signing_input("acme", KEY_A2, {"n": 1})))
    revoked_unknown = json.loads(json.dumps(valid))
    revoked_unknown["signature"]["key_id"] = KEY_A3
    unknown = json.loads(json.dumps(valid))
    unknown["tenant_id"] = "globex"
    tampered = json.loads(json.dumps(valid))
    tampered["span"]["n"] = 2
    cases = [(valid, Verdict.VALID), (revoked, Verdict.REVOKED_KEY), (revoked_unknown, Verdict.REVOKED_KEY),
             (unknown, Verdict.UNKNOWN_KEY), (tampered, Verdict.INVALID)]
    for record, verdict in cases:
        assert model_verdict(record, known_plain=False) is verdict
        assert verify_signed_span(BOOK, record) is verdict
        assert list(verify_lines([json.dumps(record)], BOOK)) == [(1, "j", verdict)]
