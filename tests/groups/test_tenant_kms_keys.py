"""KEYLEDGER_TENANT_KMS_KEYS=per-tenant against moto over HTTP (issue 25 finding 7): a KMS key per tenant,
created and tagged at onboarding, wrapping the tenant's keys, scheduled for deletion when it is shredded."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest

from tests.support.harness import handler_harness, tenant_created
from workers.kms.aws import TENANT_TAG, AwsKms, tenant_key_alias
from workers.services.shredding import BYOK_PENDING_DAYS

pytestmark = pytest.mark.integration

GROUPS = ["keyledger-keygen", "keyledger-rotation"]


@pytest.fixture
async def harness(moto_endpoint, moto_kms_key):
    kms = AwsKms(moto_kms_key, endpoint_url=moto_endpoint, timeout=5, max_attempts=2)
    async with handler_harness(GROUPS, kms=kms, kms_provider="aws", kms_key_id=moto_kms_key,
                               tenant_kms_keys="per-tenant") as parts:
        yield parts


def aws(endpoint: str):
    return boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")


def materials(captured, tenant: str) -> list[dict]:
    return [m for m in captured.values("keys.material") if m and m["tenant_id"] == tenant]


async def test_a_tenant_gets_one_tagged_kms_key_of_its_own_and_shredding_schedules_its_deletion(
        harness, moto_endpoint, moto_kms_key):
    context, broker, captured = harness
    tenant = f"pt-{datetime.now(UTC).timestamp()}"
    await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
    [own] = {m["kms_key_id"] for m in materials(captured, tenant)}
    assert own != moto_kms_key and len(materials(captured, tenant)) == 2
    client = aws(moto_endpoint)
    tags = client.list_resource_tags(KeyId=own)["Tags"]
    assert {"TagKey": TENANT_TAG, "TagValue": tenant} in tags
    assert client.describe_key(KeyId=tenant_key_alias(tenant))["KeyMetadata"]["KeyId"] == own

    # replayed onboarding, another process asking, a rotation: still the one KMS key
    keys_before = len(client.list_keys(Limit=1000)["Keys"])
    await broker.publish(tenant_created(tenant, event_id="again"), "tenants.created", key=tenant.encode())
    assert await AwsKms(moto_kms_key, endpoint_url=moto_endpoint, timeout=5, max_attempts=2).tenant_key(tenant) == own
    tick = {"tick_id": f"r-{tenant}", "issued_at": datetime.now(UTC).isoformat(), "tenant_id": tenant,
            "reason": "manual"}
    await broker.publish(json.dumps(tick).encode(), "keys.rotation-ticks", key=tenant.encode())
    assert {m["version"] for m in materials(captured, tenant)} == {1, 2}
    assert {m["kms_key_id"] for m in materials(captured, tenant)} == {own}
    assert len(client.list_keys(Limit=1000)["Keys"]) == keys_before
    assert captured.values("kms.dlq") == []

    deleted = {"event_id": f"bye-{tenant}", "tenant_id": tenant, "occurred_at": datetime.now(UTC).isoformat()}
    await broker.publish(json.dumps(deleted).encode(), "tenants.deleted", key=tenant.encode())
    assert client.describe_key(KeyId=own)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert client.describe_key(KeyId=moto_kms_key)["KeyMetadata"]["KeyState"] == "Enabled"
    # the audit trail keeps what keys.material's compaction forgets: each version's KMS key, and when the
    # shred's KMS key is deleted at the earliest
    audits = [a for a in captured.values("kms.audit") if a and a["tenant_id"] == tenant]
    generated = [a for a in audits if a["op"] == "generate"]
    assert generated and {(a["kms_provider"], a["kms_key_id"]) for a in generated} == {("aws", own)}
    destroyed = [a for a in audits if a["op"] == "destroy"]
    assert {a["key_id"] for a in destroyed} == {m["key_id"] for m in materials(captured, tenant)}
    assert all(a["kms_key_id"] == own for a in destroyed)
    for audit in destroyed:
        days = datetime.fromisoformat(audit["kms_deletion_date"]) - datetime.fromisoformat(audit["occurred_at"])
        assert days.days == BYOK_PENDING_DAYS
    signs = [a for a in audits if a["op"] not in ("generate", "destroy", "rotate")]
    assert all("kms_provider" not in a for a in signs)
