"""`keyledger-signer`: handler tests (TestKafkaBroker) and batch-level service tests."""

from __future__ import annotations

import base64
import json

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from schemas.messages import AuditEvent, DeadLetter, KeyEvent
from tests.support.audit import places
from tests.support.faults import SwitchableKms
from tests.support.harness import handler_harness, inbound, span_job, tenant_created
from workers.core import ids
from workers.keys.audit import named_transfers
from workers.ledger import AccountFilter, AccountFilterFlags


def independent_bytes(tenant: str, key_id: str, span: dict) -> bytes:
    # JCS equals sorted, compact, non-ASCII-escaping JSON for spans of strings, ints and objects
    return json.dumps({"key_id": key_id, "span": span, "tenant_id": tenant}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
async def harness():
    async with handler_harness(["keyledger-keygen", "keyledger-signer"]) as parts:
        context, broker, captured = parts
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        yield parts


def public_key(captured, tenant: str) -> tuple[str, bytes]:
    event = next(e for e in captured.values("keys.events", KeyEvent)
                 if e.tenant_id == tenant and e.key_type.value == "signing")
    return event.key_id, base64.b64decode(event.public_key)


async def test_a_signed_span_verifies_with_an_independent_library(harness):
    context, broker, captured = harness
    span = {"name": "löschen", "trace_id": "abc", "attributes": {"user": "ü", "n": 3, "ok": True}}
    await broker.publish(span_job("acme", span, job_id="j1"), "spans.to-sign", key=b"acme")
    [signed] = captured.values("spans.signed")
    key_id, public = public_key(captured, "acme")
    assert signed["job_id"] == "j1" and signed["span"] == span
    assert signed["signature"]["alg"] == "Ed25519" and signed["signature"]["key_id"] == key_id
    assert "=" not in signed["signature"]["value"]
    VerifyKey(public).verify(independent_bytes("acme", key_id, span), b64url(signed["signature"]["value"]))


@pytest.mark.parametrize("tamper", ["span", "tenant_id", "key_id"])
async def test_tampering_breaks_verification(harness, tamper):
    context, broker, captured = harness
    span = {"name": "transfer", "amount": 100}
    await broker.publish(span_job("acme", span), "spans.to-sign", key=b"acme")
    [signed] = captured.values("spans.signed")
    key_id, public = public_key(captured, "acme")
    tenant = "acme"
    if tamper == "span":
        span = {**span, "amount": 1000}
    elif tamper == "tenant_id":
        tenant = "globex"
    else:
        key_id = public_key(captured, "globex")[0]
    with pytest.raises(BadSignatureError):
        VerifyKey(public).verify(independent_bytes(tenant, key_id, span), b64url(signed["signature"]["value"]))


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (span_job("nobody"), "unknown_tenant"),
        (b"{]", "not_json"),
        (json.dumps({"job_id": "j", "tenant_id": "acme", "span": [1]}).encode(), "invalid_message"),
        # NaN is not JSON (RFC 8259): refused by the reader, before any canonicalisation
        (json.dumps({"job_id": "j", "tenant_id": "acme", "span": {"x": float("nan")}}).encode(), "not_json"),
        (json.dumps({"job_id": "j", "tenant_id": "acme", "span": {"x": 2**60}}).encode(), "invalid_message"),
        (json.dumps({"tenant_id": "acme", "span": {}}).encode(), "invalid_message"),
    ],
)
async def test_unsignable_spans_get_a_typed_dlq_error_and_the_stream_flows(harness, value, code):
    context, broker, captured = harness
    await broker.publish(value, "spans.to-sign", key=b"acme")
    await broker.publish(span_job("acme"), "spans.to-sign", key=b"acme")
    assert [d.error.type.value for d in captured.values("kms.dlq", DeadLetter)] == [code]
    assert len(captured.values("spans.signed")) == 1


async def test_one_transfer_per_span_whose_id_survives_any_rebatching(harness):
    context, broker, captured = harness
    service = context.groups["keyledger-signer"]
    records = [inbound("spans.to-sign", t, span_job(t), offset=i) for i, t in enumerate(["acme", "globex"] * 50)]
    assert await service.handle(records) == []
    audits = [a for a in captured.values("kms.audit") if a["op"] == "sign"]
    # one event per key of the batch, naming the records each transfer derives from
    assert len(audits) == 2 and [a["count"] for a in audits] == [50, 50]
    assert sorted(p for a in audits for p in places(a)) == [("spans.to-sign", 0, i) for i in range(100)]
    named = [i for a in audits for i in named_transfers(AuditEvent.model_validate(a))]
    assert len(named) == 100 and len(await context.ledger.lookup_transfers(named)) == 100
    key_id, _ = public_key(captured, "acme")
    # a redelivery after a crash comes in other batches: halves, then one by one; each span lands on its transfer
    await service.handle(records[:37])
    await service.handle(records[37:])
    for record in records[::9]:
        await service.handle([record])
    [account] = await context.ledger.lookup_accounts([ids.from_hex(key_id)])
    assert account.credits_posted == 1 + 50  # generate + one per acme span, however often redelivered
    transfers = await context.ledger.get_account_transfers(AccountFilter(
        account_id=ids.from_hex(key_id), user_data_128=0, user_data_64=0, user_data_32=ids.pack_op("sign"),
        code=0, timestamp_min=0, timestamp_max=0, limit=100, flags=AccountFilterFlags.CREDITS))
    assert len(transfers) == 50 and {t.amount for t in transfers} == {1}


async def test_without_kms_cached_tenants_keep_signing_and_others_wait():
    kms = SwitchableKms()
    async with handler_harness(["keyledger-keygen", "keyledger-signer"], kms=kms) as (context, broker, captured):
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        globex_key = context.keys.active("globex", "signing").key_id
        context.keys.evict(globex_key)  # as if globex's key had aged out of the cache
        kms.down = True
        service = context.groups["keyledger-signer"]
        records = [inbound("spans.to-sign", t, span_job(t), offset=i) for i, t in enumerate(["acme", "globex"] * 3)]
        blocked = await service.handle(records)
        assert [r.offset for r in blocked] == [1, 3, 5]
        assert {s["tenant_id"] for s in captured.values("spans.signed")} == {"acme"}
        kms.down = False
        assert await service.handle(blocked) == []
        assert sorted(s["tenant_id"] for s in captured.values("spans.signed")) == ["acme"] * 3 + ["globex"] * 3
        assert kms.calls == 4 + 2  # four generates, then one refused unwrap and one that succeeds
