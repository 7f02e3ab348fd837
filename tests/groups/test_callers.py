"""The caller gate in the PII and signer groups: every way a request's caller is refused is denied,
audited (naming the caller and the reason, on the ledger too) and dead-lettered without a field value,
never answered; an admitted caller's copy produced again is answered alike and recorded as a second
operation carrying the same request tag; a decrypt is sealed to its caller only."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas.messages import KeyType
from tests.support.audit import places
from tests.support.callers import TEST_CALLER, TestCaller
from tests.support.harness import Placed, handler_harness, inbound, span_job, tenant_created
from workers.client import CallerClient, CallerCredential, ResultSealError
from workers.core import ids
from workers.core.callers import request_id
from workers.ledger.records import request_tag

GROUPS = ["keyledger-keygen", "keyledger-pii", "keyledger-signer"]
SECRET = "078-05-1120"
MALLORY = TestCaller("mallory")  # never enrolled


@pytest.fixture(params=["decrypt", "all"])
async def harness(request):
    async with handler_harness(GROUPS, require_caller=request.param) as parts:
        context, broker, captured = parts
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        yield parts


async def sealed_fields(broker, captured) -> dict:
    await broker.publish(TEST_CALLER.pii("acme", "encrypt", {"ssn": SECRET}, job_id="e1"), "pii.requests", key=b"acme")
    return captured.values("pii.results")[-1]["fields"]


def tampered(value: bytes, **changes) -> bytes:
    body = json.loads(value)
    body.update(changes)
    return json.dumps(body).encode()


def forged(value: bytes) -> bytes:
    body = json.loads(value)
    proof = body["caller"]["proof"]
    body["caller"]["proof"] = ("A" if proof[0] != "A" else "B") + proof[1:]
    return json.dumps(body).encode()


def assert_nothing_plain(captured, *plaintexts: str) -> None:
    for topic, records in captured.by_topic.items():
        for key, value in records:
            for text in plaintexts:
                assert text.encode() not in (value or b"") and text.encode() not in (key or b""), topic


async def assert_denied(context, captured, reason: str, caller_id: str | None, key_type: KeyType) -> None:
    [letter] = captured.values("kms.dlq")
    assert letter["error"]["type"] == "caller_denied" and reason in letter["error"]["message"]
    [denied] = [e for e in captured.values("kms.audit") if e["op"] == "denied"]
    assert denied["reason"] == reason and denied["outcome"] == "failure"
    assert denied.get("caller_id") == caller_id
    assert denied["key_id"] == context.keys.active("acme", key_type).key_id
    [transfer] = await context.ledger.lookup_transfers([ids.from_hex(denied["event_id"])])
    assert transfer.user_data_128 == (int(caller_id, 16) if caller_id else 0)


async def test_a_decrypt_without_a_caller_is_denied(harness):
    context, broker, captured = harness
    fields = await sealed_fields(broker, captured)
    results = len(captured.values("pii.results"))
    plain = json.dumps({"job_id": "d1", "tenant_id": "acme", "record_id": "r1", "operation": "decrypt",
                        "fields": fields}).encode()
    await broker.publish(plain, "pii.requests", key=b"acme")
    assert len(captured.values("pii.results")) == results
    await assert_denied(context, captured, "unknown_caller", None, KeyType.ENCRYPTION)
    [letter] = captured.values("kms.dlq")
    assert letter["payload_redacted"] and fields["ssn"].encode() not in base64.b64decode(letter["payload"])
    assert_nothing_plain(captured, SECRET)


def refused_requests(fields: dict) -> dict[str, tuple[bytes, str, str | None]]:
    """Each way a decrypt's caller is refused: (request, reason, the caller id the audit names)."""
    good = TEST_CALLER.pii("acme", "decrypt", fields, job_id="d1")
    stale = CallerClient(TEST_CALLER.client.credential, TEST_CALLER.keys,
                         clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    unproved = CallerClient(CallerCredential(TEST_CALLER.caller_id, TEST_CALLER.name, bytes(32)))
    return {
        "unknown caller": (MALLORY.pii("acme", "decrypt", fields, job_id="d1"), "unknown_caller", MALLORY.caller_id),
        "forged proof": (forged(good), "bad_proof", TEST_CALLER.caller_id),
        "another secret": (json.dumps(unproved.pii_request("acme", "decrypt", fields, record_id="r1")).encode(),
                           "bad_proof", TEST_CALLER.caller_id),
        "another operation": (tampered(good, operation="reencrypt"), "bad_proof", TEST_CALLER.caller_id),
        "another body": (tampered(good, record_id="r2"), "bad_proof", TEST_CALLER.caller_id),
        "expired": (json.dumps(stale.pii_request("acme", "decrypt", fields, record_id="r1")).encode(), "expired",
                    TEST_CALLER.caller_id),
    }


@pytest.mark.parametrize("case", ["unknown caller", "forged proof", "another secret", "another operation",
                                  "another body", "expired"])
async def test_each_refused_caller_is_denied_audited_and_never_answered(harness, case):
    context, broker, captured = harness
    fields = await sealed_fields(broker, captured)
    before = captured.values("pii.results")
    value, reason, caller_id = refused_requests(fields)[case]
    await broker.publish(value, "pii.requests", key=b"acme")
    assert captured.values("pii.results") == before
    await assert_denied(context, captured, reason, caller_id, KeyType.ENCRYPTION)
    assert_nothing_plain(captured, SECRET)


async def test_a_proof_moved_to_another_tenant_is_denied(harness):
    context, broker, captured = harness
    fields = await sealed_fields(broker, captured)
    moved = tampered(TEST_CALLER.pii("globex", "decrypt", fields, job_id="d1"), tenant_id="acme")
    await broker.publish(moved, "pii.requests", key=b"acme")
    await assert_denied(context, captured, "bad_proof", TEST_CALLER.caller_id, KeyType.ENCRYPTION)
    assert_nothing_plain(captured, SECRET)


@pytest.mark.parametrize(("policy", "reason"), [({"tenants": ["globex"]}, "not_allowed"),
                                                ({"operations": ("encrypt",)}, "not_allowed"),
                                                ({"revoked": True, "version": 2}, "revoked")])
async def test_a_caller_not_allowed_or_revoked_is_denied(harness, policy, reason):
    context, broker, captured = harness
    fields = await sealed_fields(broker, captured)
    TEST_CALLER.enrol(context.callers, **policy)
    await broker.publish(TEST_CALLER.pii("acme", "decrypt", fields, job_id="d1"), "pii.requests", key=b"acme")
    assert [r["operation"] for r in captured.values("pii.results")] == ["encrypt"]
    await assert_denied(context, captured, reason, TEST_CALLER.caller_id, KeyType.ENCRYPTION)


async def test_a_callers_decrypt_is_sealed_to_it_alone_and_audited_with_it(harness):
    context, broker, captured = harness
    other = TestCaller("other-service").enrol(context.callers)
    fields = await sealed_fields(broker, captured)
    await broker.publish(TEST_CALLER.pii("acme", "decrypt", fields, job_id="d1"), "pii.requests", key=b"acme")
    result = captured.values("pii.results")[-1]
    assert result["result_key"]["caller"] == TEST_CALLER.caller_id
    assert TEST_CALLER.open(result)["fields"] == {"ssn": SECRET}
    with pytest.raises(ResultSealError):
        other.client.open_result(result)
    [decrypt] = [e for e in captured.values("kms.audit") if e["op"] == "decrypt"]
    assert decrypt["caller_id"] == TEST_CALLER.caller_id
    [transfer] = await context.ledger.lookup_transfers([ids.from_hex(decrypt["event_id"])])
    assert transfer.user_data_128 == int(TEST_CALLER.caller_id, 16)
    assert_nothing_plain(captured, SECRET)
    assert not captured.values("kms.dlq")


async def test_a_revoked_callers_result_key_is_dropped_and_a_reinstated_caller_gets_a_new_one(harness):
    context, broker, captured = harness
    fields = await sealed_fields(broker, captured)
    requests = Placed(context, "keyledger-pii", "pii.requests")

    async def decrypt_key_id(job_id: str) -> str:
        await requests.publish(TEST_CALLER.pii("acme", "decrypt", fields, job_id=job_id), "acme")
        result = captured.values("pii.results")[-1]
        assert TEST_CALLER.open(result)["fields"] == {"ssn": SECRET}
        return result["result_key"]["id"]

    first = await decrypt_key_id("d1")
    assert await decrypt_key_id("d2") == first  # one key for the period
    TEST_CALLER.enrol(context.callers, revoked=True, version=2)
    TEST_CALLER.enrol(context.callers, version=3)
    assert await decrypt_key_id("d3") != first


async def test_a_copy_of_a_proved_request_at_another_offset_is_answered_alike_and_recorded_again(harness):
    """A copy produced again is the same request (same answer, same result ids), but it was performed again:
    a second transfer, named by its own place, sharing the request's tag (user_data_64) with the first. A
    redelivery of the first record lands on the first's transfer."""
    context, broker, captured = harness
    fields = await sealed_fields(broker, captured)
    value = TEST_CALLER.pii("acme", "decrypt", fields, job_id="d1")
    group = context.groups["keyledger-pii"]
    await group.handle([inbound("pii.requests", "acme", value, offset=10)])
    await group.handle([inbound("pii.requests", "acme", value, offset=11)])  # the copy
    await group.handle([inbound("pii.requests", "acme", value, offset=10)])  # a redelivery
    audits = [e for e in captured.values("kms.audit") if e["op"] == "decrypt"]
    assert [places(e) for e in audits] == [{("pii.requests", 0, n)} for n in (10, 11, 10)]
    assert not any("requests" in e for e in audits)
    assert audits[0]["event_id"] == audits[2]["event_id"] != audits[1]["event_id"]
    transfers = await context.ledger.lookup_transfers([ids.from_hex(e["event_id"]) for e in audits[:2]])
    tag = request_tag(request_id(TEST_CALLER.caller_id, json.loads(value)["caller"]["proof"]))
    assert [(t.amount, t.user_data_128, t.user_data_64) for t in transfers] == \
        [(1, int(TEST_CALLER.caller_id, 16), tag)] * 2
    answers = [r for r in captured.values("pii.results") if r["operation"] == "decrypt"]
    assert [TEST_CALLER.open(r)["fields"] for r in answers] == [{"ssn": SECRET}] * 3
    assert {(r["job_id"], r["record_id"], r["result_key"]["id"]) for r in answers} == \
        {("d1", "r1", answers[0]["result_key"]["id"])}
    assert not captured.values("kms.dlq")


async def test_a_copy_of_a_proved_span_at_another_offset_is_signed_alike_and_recorded_again(harness):
    context, broker, captured = harness
    value = TEST_CALLER.span("acme", {"n": 1}, job_id="s1")
    group = context.groups["keyledger-signer"]
    for offset in (20, 21, 20):  # the span, its copy, a redelivery of the span
        await group.handle([inbound("spans.to-sign", "acme", value, offset=offset)])
    signed = captured.values("spans.signed")
    assert len(signed) == 3 and len({(s["job_id"], s["signature"]["key_id"], s["signature"]["value"])
                                     for s in signed}) == 1
    audits = [e for e in captured.values("kms.audit") if e["op"] == "sign"]
    assert [places(e) for e in audits] == [{("spans.to-sign", 0, n)} for n in (20, 21, 20)]
    transfers = await context.ledger.lookup_transfers([ids.from_hex(e["event_id"]) for e in audits])
    assert len(transfers) == 3 and len({t.id for t in transfers}) == 2
    tag = request_tag(request_id(TEST_CALLER.caller_id, json.loads(value)["caller"]["proof"]))
    assert {(t.user_data_128, t.user_data_64) for t in transfers} == {(int(TEST_CALLER.caller_id, 16), tag)}


async def test_an_encrypt_without_a_caller_follows_the_setting(harness):
    context, broker, captured = harness
    plain = json.dumps({"job_id": "e2", "tenant_id": "acme", "record_id": "r1", "operation": "encrypt",
                        "fields": {"ssn": SECRET}}).encode()
    await broker.publish(plain, "pii.requests", key=b"acme")
    if context.settings.require_caller.value == "all":
        await assert_denied(context, captured, "unknown_caller", None, KeyType.ENCRYPTION)
        assert not captured.values("pii.results")
    else:
        [result] = captured.values("pii.results")
        assert result["fields"]["ssn"].startswith("kl1.") and "caller_id" not in captured.values("kms.audit")[-1]


async def test_spans_need_a_caller_only_when_all_is_required(harness):
    context, broker, captured = harness
    await broker.publish(span_job("acme", job_id="s1"), "spans.to-sign", key=b"acme")
    if context.settings.require_caller.value == "all":
        await assert_denied(context, captured, "unknown_caller", None, KeyType.SIGNING)
        assert not captured.values("spans.signed")
    else:
        assert len(captured.values("spans.signed")) == 1
    # another record than the first (the test broker places both at offset 0)
    await Placed(context, "keyledger-signer", "spans.to-sign").publish(TEST_CALLER.span("acme", {"n": 1}, job_id="s2"),
                                                                       "acme")
    signed = captured.values("spans.signed")[-1]
    assert signed["job_id"] == "s2" and signed["caller"]["id"] == TEST_CALLER.caller_id
    [sign] = [e for e in captured.values("kms.audit") if e["op"] == "sign" and e.get("caller_id")]
    assert sign["caller_id"] == TEST_CALLER.caller_id


async def test_a_forged_span_is_denied_against_the_signing_key(harness):
    context, broker, captured = harness
    await broker.publish(forged(TEST_CALLER.span("acme", {"n": 1}, job_id="s1")), "spans.to-sign", key=b"acme")
    assert not captured.values("spans.signed")
    await assert_denied(context, captured, "bad_proof", TEST_CALLER.caller_id, KeyType.SIGNING)


async def test_without_required_callers_a_decrypt_is_answered_in_plaintext_as_before():
    async with handler_harness(GROUPS, require_caller="none") as (context, broker, captured):
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        fields = await sealed_fields(broker, captured)
        plain = json.dumps({"job_id": "d1", "tenant_id": "acme", "record_id": "r1", "operation": "decrypt",
                            "fields": fields}).encode()
        await broker.publish(plain, "pii.requests", key=b"acme")
        result = captured.values("pii.results")[-1]
        assert result["fields"] == {"ssn": SECRET} and "result_key" not in result
        # a request that names a caller is still checked
        await broker.publish(forged(TEST_CALLER.pii("acme", "decrypt", fields, job_id="d2")), "pii.requests",
                             key=b"acme")
        assert [letter["error"]["type"] for letter in captured.values("kms.dlq")] == ["caller_denied"]
