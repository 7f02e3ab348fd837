"""Handler tests of `keyledger-keygen` on FastStream's TestKafkaBroker (in-memory; flows over a
real broker are in tests/integration)."""

from __future__ import annotations

import json

import pytest

from schemas.messages import AuditEvent, DeadLetter, KeyEvent, KeyMaterial
from tests.support.harness import handler_harness, inbound, tenant_created
from workers.core import ids
from workers.kms.local import LocalKms
from workers.ledger import QueryFilter, QueryFilterFlags


@pytest.fixture
async def harness():
    async with handler_harness(["keyledger-keygen"]) as parts:
        yield parts


def created(tenant: str, **extra) -> bytes:
    return tenant_created(tenant, **extra)


async def test_a_created_tenant_gets_one_signing_and_one_encryption_key(harness):
    context, broker, captured = harness
    await broker.publish(created("acme"), "tenants.created", key=b"acme")
    materials = captured.values("keys.material", KeyMaterial)
    events = captured.values("keys.events", KeyEvent)
    audits = captured.values("kms.audit", AuditEvent)
    assert sorted(m.key_type.value for m in materials) == ["encryption", "signing"]
    assert {e.key_id for e in events} == {m.key_id for m in materials}
    assert all(e.type.value == "generated" and e.version == 1 for e in events)
    signing = next(m for m in materials if m.key_type.value == "signing")
    assert signing.public_key and next(e for e in events if e.key_id == signing.key_id).public_key == signing.public_key
    assert [a.op.value for a in audits] == ["generate", "generate"]
    assert all(a.source.topic == "tenants.created" and a.outcome.value == "success" for a in audits)
    for m in materials:
        assert m.key_id == ids.key_id_for("acme", m.key_type, 1)


async def test_material_never_carries_plaintext_and_is_pinned_in_the_ledger(harness):
    context, broker, captured = harness
    await broker.publish(created("acme"), "tenants.created", key=b"acme")
    for m in captured.values("keys.material", KeyMaterial):
        secret = await context.keys.secret(context.directory.get(m.key_id))
        assert secret is not None  # unwraps through KMS with the design's context
        raw = json.dumps(m.model_dump(mode="json"))
        assert "plaintext" not in raw
    accounts = await context.ledger.query_accounts(QueryFilter(
        user_data_128=ids.tenant_ref("acme"), user_data_64=0, user_data_32=0, ledger=0, code=8,
        timestamp_min=0, timestamp_max=0, limit=100, flags=QueryFilterFlags.NONE))
    assert len(accounts) == 2


async def test_replay_and_second_creation_make_nothing_new(harness):
    context, broker, captured = harness
    await broker.publish(created("acme"), "tenants.created", key=b"acme")
    before = {t: len(v) for t, v in captured.by_topic.items()}
    await broker.publish(created("acme"), "tenants.created", key=b"acme")
    await broker.publish(created("acme", event_id="another"), "tenants.created", key=b"acme")
    assert {t: len(v) for t, v in captured.by_topic.items()} == before
    assert context.groups["keyledger-keygen"].service.keys_created == 2


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"not json", "not_json"),
        (json.dumps({"event_id": "e", "occurred_at": "2026-01-01T00:00:00Z"}).encode(), "invalid_message"),
        (json.dumps({"event_id": "e", "tenant_id": ["x"], "occurred_at": "2026-01-01T00:00:00Z"}).encode(), "invalid_message"),
        (b"{" + b" " * 2_000_000 + b"}", "oversized"),
    ],
)
async def test_bad_input_goes_to_the_dlq_and_the_worker_keeps_going(harness, value, code):
    context, broker, captured = harness
    await broker.publish(value, "tenants.created", key=b"bad")
    await broker.publish(created("globex"), "tenants.created", key=b"globex")
    letters = captured.values("kms.dlq", DeadLetter)
    assert [letter.error.type.value for letter in letters] == [code]
    assert letters[0].topic == "tenants.created" and letters[0].group == "keyledger-keygen"
    assert len(captured.values("keys.events", KeyEvent)) == 2


async def test_kms_refusing_one_tenants_key_refuses_that_tenant_alone():
    kms = LocalKms()
    await kms.schedule_key_deletion("gone-key", 7)  # the local KMS then refuses GenerateDataKey under it
    async with handler_harness(["keyledger-keygen"], kms=kms) as (context, broker, captured):
        service = context.groups["keyledger-keygen"]
        records = [inbound("tenants.created", "byok", created("byok", kms_key_id="gone-key"), offset=0),
                   inbound("tenants.created", "acme", created("acme"), offset=1)]
        assert await service.handle(records) == []
        assert sorted(m.tenant_id for m in captured.values("keys.material", KeyMaterial)) == ["acme", "acme"]
        [letter] = captured.values("kms.dlq", DeadLetter)  # one letter though both of its keys were refused
        assert (letter.offset, letter.error.type.value, letter.attempts) == (0, "kms_refused", 1)
