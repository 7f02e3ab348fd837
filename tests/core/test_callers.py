"""Caller proofs and policy records: fixed vectors computed here from literal bytes with the standard
library, a tamper case for every member a proof covers, the skew boundary, and the policy table."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import CallerPolicy, CallerRefusal
from workers.core.b64 import b64url_encode
from workers.core.callers import (
    POLICY_CONTEXT,
    PROOF_CONTEXT,
    CallerTable,
    CallerVerifier,
    Change,
    PolicyRecordRefused,
    caller_id_for,
    format_at,
    make_proof,
    operator_public_key,
    parse_at,
    proof_input,
    prove,
    request_id,
    sign_policy,
    verify_policy_record,
)
from workers.core.canonical import canonical_json

SECRET = bytes(range(32))
NAME = "billing"
CALLER_ID = hashlib.blake2b(b"billing", digest_size=16, person=b"kl-caller-id").hexdigest()
NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes(32))


def request(**changes: Any) -> dict[str, Any]:
    base = {"job_id": "job-1", "tenant_id": "acme", "record_id": "user-7", "operation": "decrypt",
            "fields": {"email": "kl1.x"}}
    return {**base, **changes}


def policy_record(version: int = 1, *, tenants: Any = ("acme",), operations: Any = ("decrypt", "encrypt"),
                  revoked: bool = False, key: Ed25519PrivateKey = OPERATOR, **extra: Any) -> dict[str, Any]:
    return sign_policy({
        "caller_id": CALLER_ID, "name": NAME, "tenants": tenants if tenants == "*" else list(tenants),
        "operations": list(operations), "kem": "x25519", "public_key": b64url_encode(bytes(32)),
        "wrapped_secret": "AAAA", "kms_key_id": "local/keyledger-dev", "kms_provider": "local",
        "created_at": "2026-01-01T00:00:00.000000Z", "revoked": revoked, "version": version, **extra}, key)


def table_with(*records: dict[str, Any], secret: bytes = SECRET) -> CallerTable:
    table = CallerTable()
    for record in records:
        policy = CallerPolicy.model_validate(record)
        if table.change(policy) is Change.NEWER:
            table.install(policy, secret)
        elif table.change(policy) is Change.TIE:
            table.tie(policy)
    return table


def verifier(*records: dict[str, Any]) -> CallerVerifier:
    return CallerVerifier(table_with(*(records or (policy_record(),))), max_skew=300)


# --- fixed vectors -------------------------------------------------------------------------------


def test_the_caller_id_is_blake2b_128_of_the_name():
    assert caller_id_for(NAME) == CALLER_ID == "fdd2c64be20297092aee9f7c1ccdb1ea"
    with pytest.raises(ValueError):
        caller_id_for("Billing Team")


def test_a_proof_is_hmac_sha256_of_the_context_the_operation_and_rfc8785_bytes():
    proved = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)
    # the bytes, written out by hand: RFC 8785 sorts the members and writes them compactly
    covered = (b"keyledger caller proof v1\x00decrypt\x00"
               b'{"caller":{"at":"2026-01-02T03:04:05.678901Z","id":"' + CALLER_ID.encode() + b'"},'
               b'"fields":{"email":"kl1.x"},"job_id":"job-1","operation":"decrypt","record_id":"user-7",'
               b'"tenant_id":"acme"}')
    assert proof_input(proved, "decrypt") == covered
    expected = base64.urlsafe_b64encode(hmac.new(SECRET, covered, hashlib.sha256).digest()).rstrip(b"=").decode()
    assert proved["caller"] == {"id": CALLER_ID, "at": "2026-01-02T03:04:05.678901Z", "proof": expected}
    assert make_proof(SECRET, covered) == expected


def test_a_fixed_vector_stays_fixed():
    # a literal input and its literal answer: a change to the proof's bytes breaks every caller
    covered = PROOF_CONTEXT + b'sign\x00{"a":1}'
    assert make_proof(b"\x01" * 32, covered) == "GWnC6YpU4Tr8PhH6NkMZMXtAmSfKBzm8tCTJjr1tPhY"


def test_the_request_id_depends_on_the_caller_and_the_proof_only():
    proof = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)["caller"]["proof"]
    assert request_id(CALLER_ID, proof) == hashlib.blake2b(f"{CALLER_ID}\x00{proof}".encode(), digest_size=16,
                                                           person=b"kl-caller-req").hexdigest()
    other = prove(request(), "decrypt", CALLER_ID, SECRET, NOW + timedelta(seconds=1))["caller"]["proof"]
    assert request_id(CALLER_ID, other) != request_id(CALLER_ID, proof)


# --- verification --------------------------------------------------------------------------------


def test_a_proved_request_is_admitted_and_a_copy_lands_on_the_same_id():
    proved = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)
    first = verifier().check(proved, "acme", "decrypt", NOW)
    copy = verifier().check(json.loads(json.dumps(proved)), "acme", "decrypt", NOW + timedelta(seconds=10))
    assert first.refusal is None and first.caller_id == CALLER_ID
    assert first.request_id == copy.request_id == request_id(CALLER_ID, proved["caller"]["proof"])


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda r: {**r, "tenant_id": "globex"}, id="another tenant"),
    pytest.param(lambda r: {**r, "operation": "reencrypt"}, id="another operation member"),
    pytest.param(lambda r: {**r, "fields": {"email": "kl1.y"}}, id="another field value"),
    pytest.param(lambda r: {**r, "fields": {"phone": "kl1.x"}}, id="another field path"),
    pytest.param(lambda r: {**r, "record_id": "user-8"}, id="another record"),
    pytest.param(lambda r: {**r, "job_id": "job-2"}, id="another job"),
    pytest.param(lambda r: {**r, "extra": 1}, id="a member added"),
    pytest.param(lambda r: {k: v for k, v in r.items() if k != "record_id"}, id="a member removed"),
    pytest.param(lambda r: {**r, "caller": {**r["caller"], "at": format_at(NOW + timedelta(seconds=1))}},
                 id="another time"),
    pytest.param(lambda r: {**r, "caller": {**r["caller"], "proof": r["caller"]["proof"][:-2] + "AA"}},
                 id="another proof"),
    pytest.param(lambda r: {**r, "caller": {**r["caller"], "proof": "not base64url!"}}, id="a malformed proof"),
    pytest.param(lambda r: {**r, "caller": {**r["caller"], "proof": "\u00e9" * 43}}, id="a proof that is not ASCII"),
    pytest.param(lambda r: {**r, "caller": {**r["caller"], "proof": 7}}, id="a proof that is not a string"),
    pytest.param(lambda r: {**r, "caller": {k: v for k, v in r["caller"].items() if k != "proof"}}, id="no proof"),
])
def test_a_proof_covers_every_member(tamper):
    proved = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)
    assert verifier().check(tamper(proved), "acme", "decrypt", NOW).refusal is CallerRefusal.BAD_PROOF


def test_known_plain_gives_the_same_verdict():
    proved = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)
    assert verifier().check(proved, "acme", "decrypt", NOW, known_plain=True) == verifier().check(
        proved, "acme", "decrypt", NOW)


def test_a_proof_binds_the_operation_even_without_an_operation_member():
    span = {"job_id": "s-1", "tenant_id": "acme", "span": {"name": "GET /"}}
    proved = prove(span, "sign", CALLER_ID, SECRET, NOW)
    allowed = verifier(policy_record(operations=("sign", "encrypt")))
    assert allowed.check(proved, "acme", "sign", NOW).refusal is None
    assert allowed.check(proved, "acme", "encrypt", NOW).refusal is CallerRefusal.BAD_PROOF
    assert allowed.check(proved, "acme", "not-an-operation", NOW).refusal is CallerRefusal.BAD_PROOF


def test_a_proof_under_another_secret_is_bad():
    proved = prove(request(), "decrypt", CALLER_ID, b"\x02" * 32, NOW)
    assert verifier().check(proved, "acme", "decrypt", NOW).refusal is CallerRefusal.BAD_PROOF


def test_the_skew_boundary_is_included_on_both_sides():
    proved = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)
    check = verifier().check
    assert check(proved, "acme", "decrypt", NOW + timedelta(seconds=300)).refusal is None
    assert check(proved, "acme", "decrypt", NOW - timedelta(seconds=300)).refusal is None
    late = NOW + timedelta(seconds=300, microseconds=1)
    early = NOW - timedelta(seconds=300, microseconds=1)
    assert check(proved, "acme", "decrypt", late).refusal is CallerRefusal.EXPIRED
    assert check(proved, "acme", "decrypt", early).refusal is CallerRefusal.EXPIRED


@pytest.mark.parametrize("at", ["2026-01-02T03:04:05+00:00", "2026-01-02 03:04:05Z", "2026-13-02T03:04:05Z",
                                "2026-01-02T03:04:05.1234567Z", "yesterday", ""])
def test_a_time_that_is_not_rfc3339_utc_is_expired(at):
    unproved = {**request(), "caller": {"id": CALLER_ID, "at": at}}
    proved = {**unproved, "caller": {**unproved["caller"], "proof": make_proof(SECRET, proof_input(unproved, "decrypt"))}}
    assert parse_at(at) is None
    assert verifier().check(proved, "acme", "decrypt", NOW).refusal is CallerRefusal.EXPIRED


@pytest.mark.parametrize(("tenants", "operations", "tenant", "operation", "refusal"), [
    (("acme",), ("decrypt",), "acme", "decrypt", None),
    ("*", ("decrypt",), "globex", "decrypt", None),
    (("acme",), ("decrypt",), "globex", "decrypt", CallerRefusal.NOT_ALLOWED),
    (("acme",), ("encrypt",), "acme", "decrypt", CallerRefusal.NOT_ALLOWED),
    ("*", ("encrypt", "sign"), "acme", "reencrypt", CallerRefusal.NOT_ALLOWED),
])
def test_the_policy_decides_tenant_and_operation(tenants, operations, tenant, operation, refusal):
    proved = prove(request(tenant_id=tenant, operation=operation), operation, CALLER_ID, SECRET, NOW)
    found = verifier(policy_record(tenants=tenants, operations=operations)).check(proved, tenant, operation, NOW)
    assert found.refusal is refusal
    assert found.caller_id == CALLER_ID


def test_unknown_revoked_and_tied_callers_are_refused():
    proved = prove(request(), "decrypt", CALLER_ID, SECRET, NOW)
    assert CallerVerifier(CallerTable()).check(proved, "acme", "decrypt", NOW) == (CALLER_ID,
                                                                                  CallerRefusal.UNKNOWN_CALLER, None)
    assert verifier().check(request(), "acme", "decrypt", NOW) == (None, CallerRefusal.UNKNOWN_CALLER, None)
    assert verifier().check({**proved, "caller": "me"}, "acme", "decrypt", NOW).refusal is CallerRefusal.UNKNOWN_CALLER
    assert verifier().check({**proved, "caller": {**proved["caller"], "id": "ABC"}}, "acme", "decrypt",
                            NOW) == (None, CallerRefusal.UNKNOWN_CALLER, None)
    revoked = verifier(policy_record(1), policy_record(2, revoked=True))
    assert revoked.check(proved, "acme", "decrypt", NOW).refusal is CallerRefusal.REVOKED
    tied = verifier(policy_record(1), policy_record(1, operations=("decrypt",)))
    assert tied.check(proved, "acme", "decrypt", NOW).refusal is CallerRefusal.UNKNOWN_CALLER


# --- policy records ------------------------------------------------------------------------------


def test_a_policy_signature_is_ed25519_over_the_context_and_rfc8785_bytes():
    record = policy_record()
    signature = base64.urlsafe_b64decode(record["signature"] + "==")
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    OPERATOR.public_key().verify(signature, b"keyledger caller policy v1\x00" + canonical_json(unsigned))
    assert POLICY_CONTEXT == b"keyledger caller policy v1\x00"
    assert verify_policy_record(canonical_json(record), OPERATOR.public_key()).version == 1


def test_a_record_signed_by_another_key_grants_nothing_and_names_the_caller():
    forged = policy_record(key=Ed25519PrivateKey.generate())
    with pytest.raises(PolicyRecordRefused) as refused:
        verify_policy_record(canonical_json(forged), OPERATOR.public_key())
    assert refused.value.caller_id == CALLER_ID


@pytest.mark.parametrize("change", [
    {"tenants": "*"}, {"operations": ["decrypt", "encrypt", "sign"]}, {"revoked": True}, {"version": 2},
    {"public_key": b64url_encode(b"\x01" * 32)}, {"extra": "member"},
])
def test_every_member_of_a_record_is_signed(change):
    tampered = {**policy_record(), **change}
    with pytest.raises(PolicyRecordRefused):
        verify_policy_record(canonical_json(tampered), OPERATOR.public_key())


def test_a_signature_without_the_context_does_not_verify():
    unsigned = {k: v for k, v in policy_record().items() if k != "signature"}
    bare = {**unsigned, "signature": b64url_encode(OPERATOR.sign(canonical_json(unsigned)))}
    with pytest.raises(PolicyRecordRefused):
        verify_policy_record(canonical_json(bare), OPERATOR.public_key())


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"caller_id": 1}', b'{"a": 1, "a": 2}'])
def test_what_is_not_a_signed_record_is_refused(raw):
    with pytest.raises(PolicyRecordRefused):
        verify_policy_record(raw, OPERATOR.public_key())


def test_a_signed_record_that_is_not_a_policy_is_refused():
    bad = sign_policy({"caller_id": CALLER_ID, "name": NAME}, OPERATOR)
    with pytest.raises(PolicyRecordRefused) as refused:
        verify_policy_record(canonical_json(bad), OPERATOR.public_key())
    assert "not a caller policy" in str(refused.value) and refused.value.caller_id == CALLER_ID


def test_the_operator_public_key_setting_is_base64url_of_32_bytes():
    text = b64url_encode(OPERATOR.public_key().public_bytes_raw())
    assert operator_public_key(text + "\n").public_bytes_raw() == OPERATOR.public_key().public_bytes_raw()
    for wrong in ("", "AAAA", text + "="):
        with pytest.raises(ValueError):
            operator_public_key(wrong)


# --- the table -----------------------------------------------------------------------------------


def test_the_highest_version_wins_and_ties_grant_nothing_until_a_higher_one():
    table = CallerTable()
    one, two = (CallerPolicy.model_validate(policy_record(v)) for v in (1, 2))
    assert table.change(one) is Change.NEWER
    table.install(one, SECRET)
    assert table.change(one) is Change.SAME
    table.install(two, SECRET)
    assert table.change(one) is Change.STALE
    rival = CallerPolicy.model_validate(policy_record(2, operations=("sign",)))
    assert table.change(rival) is Change.TIE
    table.tie(rival)
    held = table.get(CALLER_ID)
    assert held is not None and held.tied and held.secret is None
    assert table.change(two) is Change.TIE  # once tied, even the first of the two grants nothing
    three = CallerPolicy.model_validate(policy_record(3))
    assert table.change(three) is Change.NEWER
    table.install(three, SECRET)
    assert table.get(CALLER_ID).secret == SECRET and not table.get(CALLER_ID).tied  # type: ignore[union-attr]


def test_a_revoked_record_keeps_no_secret_and_the_secret_never_shows():
    table = CallerTable()
    table.install(CallerPolicy.model_validate(policy_record(1)), SECRET)
    assert SECRET.hex() not in repr(table.get(CALLER_ID)) and str(list(SECRET)) not in repr(table.get(CALLER_ID))
    table.install(CallerPolicy.model_validate(policy_record(2, revoked=True)), SECRET)
    assert table.get(CALLER_ID).secret is None  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        table.install(CallerPolicy.model_validate(policy_record(3)), b"short")


def test_a_record_below_the_ledger_pin_is_rolled_back_equal_and_higher_are_accepted():
    table = CallerTable()
    table.pin({CALLER_ID: 2})
    one, two, three = (CallerPolicy.model_validate(policy_record(v)) for v in (1, 2, 3))
    assert table.change(one) is Change.ROLLED_BACK and table.pinned(CALLER_ID) == 2
    assert table.change(two) is Change.NEWER  # the pinned version itself
    table.install(two, SECRET)
    assert table.change(one) is Change.ROLLED_BACK  # below the pin, not merely stale: refused
    assert table.change(three) is Change.NEWER  # a pin that landed after the pins were read


def test_a_caller_without_a_pin_is_judged_by_the_topic_alone():
    table = CallerTable()
    table.pin({caller_id_for("someone-else"): 5})
    one = CallerPolicy.model_validate(policy_record(1))
    assert table.change(one) is Change.NEWER and table.pinned(CALLER_ID) == 0
    table.pin({CALLER_ID: 1})
    table.pin({CALLER_ID: 0})  # pins only ever raise the floor
    assert table.pinned(CALLER_ID) == 1 and table.change(one) is Change.NEWER
