"""tenants.deleted: crypto-shredding of every key of the tenant."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.messages import AuditSource, KeyEvent
from tests.support.callers import TEST_CALLER
from tests.support.harness import handler_harness, span_job, tenant_created
from workers.core import ids
from workers.errors import KeyRefused
from workers.kms.local import LocalKms
from workers.ledger import AccountFlags, CreateTransferStatus
from workers.ledger.records import OpRecord

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-pii"]


def deleted(tenant: str) -> bytes:
    return json.dumps({"event_id": f"del-{tenant}", "tenant_id": tenant,
                       "occurred_at": datetime.now(UTC).isoformat()}).encode()


def pii(tenant: str, operation: str, fields: dict) -> bytes:
    return json.dumps({"job_id": "p1", "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields}).encode()


@pytest.fixture
async def harness():
    kms = LocalKms()
    async with handler_harness(GROUPS, kms=kms) as parts:
        context, broker, captured = parts
        await broker.publish(tenant_created("acme", kms_key_id="byok/acme"), "tenants.created", key=b"acme")
        await broker.publish(tenant_created("globex"), "tenants.created", key=b"globex")
        yield (*parts, kms)


async def test_a_deleted_tenant_is_shredded_everywhere(harness):
    context, broker, captured, kms = harness
    await broker.publish(pii("acme", "encrypt", {"email": "a@example.com"}), "pii.requests", key=b"acme")
    [sealed] = captured.values("pii.results")
    key_ids = [e.key_id for e in context.directory.tenant_keys("acme")]
    await broker.publish(deleted("acme"), "tenants.deleted", key=b"acme")

    tombstones = [k for k, v in captured.by_topic["keys.material"] if v is None]
    # each key's tombstone twice: on its tenant's partition and its key id's (a record placed before tenant placement)
    assert sorted(k.decode() for k in tombstones) == sorted(key_ids * 2)
    destroyed = [e for e in captured.values("keys.events", KeyEvent) if e.type.value == "destroyed"]
    assert sorted(e.key_id for e in destroyed) == sorted(key_ids)
    accounts = await context.ledger.lookup_accounts([ids.from_hex(k) for k in key_ids])
    assert all(a.flags & AccountFlags.CLOSED for a in accounts)
    assert all(context.keys.cached_secret(k) is None for k in key_ids)

    # TigerBeetle itself refuses any further operation on the keys
    later = OpRecord(ids.transfer_id("sign", key_ids[0], "late"), "acme", key_ids[0], "sign",
                     AuditSource(topic="spans.to-sign", partition=0, offset=99))
    [refused] = await context.ledger.create_transfers([later.to_transfer()])
    assert refused.status is CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED

    await broker.publish(span_job("acme"), "spans.to-sign", key=b"acme")
    await broker.publish(TEST_CALLER.pii("acme", "decrypt", {"email": sealed["fields"]["email"]}, job_id="p1"), "pii.requests", key=b"acme")
    assert [d["error"]["type"] for d in captured.values("kms.dlq")] == ["tenant_destroyed"]
    result = TEST_CALLER.open(captured.values("pii.results")[-1])
    assert result["fields"] == {} and result["errors"]["email"]["type"] == "key_destroyed"
    with pytest.raises(KeyRefused):
        await context.keys.secret(context.directory.get(key_ids[0]))
    # the tenant's own KMS key is scheduled for deletion: nothing it wrapped unwraps any more
    assert "byok/acme" in kms._pending_deletion
    # other tenants are untouched
    await broker.publish(span_job("globex"), "spans.to-sign", key=b"globex")
    assert captured.values("spans.signed")[-1]["tenant_id"] == "globex"


async def test_a_replayed_deletion_changes_nothing_and_recreation_is_refused(harness):
    context, broker, captured, kms = harness
    await broker.publish(deleted("acme"), "tenants.deleted", key=b"acme")
    before = captured.counts()
    audits_before = len(captured.values("kms.audit"))
    await broker.publish(deleted("acme"), "tenants.deleted", key=b"acme")
    assert len(captured.values("kms.audit")) == audits_before
    assert captured.counts()["keys.events"] == before["keys.events"]
    await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
    assert [d["error"]["type"] for d in captured.values("kms.dlq")][-1] == "tenant_destroyed"

