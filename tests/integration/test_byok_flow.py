"""BYOK ownership over a real broker and moto's KMS: a tenant's own KMS key belongs to it alone, so
deleting a tenant never schedules the shared default key or another tenant's key for deletion."""

from __future__ import annotations

import asyncio
import base64
import json

import boto3
import pytest

from tests.support.kafka import read, records_for, tenant_created, unique_tenant, wait_committed
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration


def kms_client(endpoint: str):
    return boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")


def key_state(endpoint: str, key_id: str) -> str:
    return kms_client(endpoint).describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]


async def letters_for(bootstrap: str, tenants: set[str], want: int) -> list[dict]:
    def mine(records) -> list[dict]:
        values = [json.loads(r.value) for r in records if r.value]
        return [v for v in values if v.get("key") and base64.b64decode(v["key"]).decode(errors="replace") in tenants]
    return mine(await read(bootstrap, "kms.dlq", until=lambda rs: len(mine(rs)) >= want, timeout=60))


async def test_byok_keys_belong_to_one_tenant_and_shredding_spares_the_rest(
        shared_broker, shared_worker, moto_endpoint, moto_kms_key):
    bootstrap = shared_broker
    kms = kms_client(moto_endpoint)
    own = kms.create_key(Description="acme's own key")["KeyMetadata"]
    alias = f"alias/{unique_tenant('byok')}"
    kms.create_alias(AliasName=alias, TargetKeyId=own["KeyId"])
    acme, evil, copycat_alias, copycat_arn = (unique_tenant(p) for p in ("acme", "evil", "copy-alias", "copy-arn"))

    await produce(bootstrap, "tenants.created", [(acme.encode(), tenant_created(acme, kms_key_id=own["KeyId"]))])
    await records_for(bootstrap, "keys.events", acme, want=2, timeout=90)
    await produce(bootstrap, "tenants.created", [
        (evil.encode(), tenant_created(evil, kms_key_id=moto_kms_key)),  # the shared default key, bare id
        (copycat_alias.encode(), tenant_created(copycat_alias, kms_key_id=alias)),  # acme's key by alias
        (copycat_arn.encode(), tenant_created(copycat_arn, kms_key_id=own["Arn"])),  # and by ARN
    ])
    refused = await letters_for(bootstrap, {evil, copycat_alias, copycat_arn}, want=3)
    assert sorted(d["error"]["type"] for d in refused) == ["kms_refused"] * 3
    for tenant in (evil, copycat_alias, copycat_arn):
        assert await records_for(bootstrap, "keys.events", tenant) == []
    last = max(refused, key=lambda d: d["offset"])
    await wait_committed(bootstrap, "keyledger-keygen", "tenants.created", last["partition"], last["offset"])

    # a tenant on the default key is deleted: the default key is not touched
    plain = unique_tenant("plain")
    await produce(bootstrap, "tenants.created", [(plain.encode(), tenant_created(plain))])
    await records_for(bootstrap, "keys.events", plain, want=2, timeout=90)
    deleted = json.dumps({"event_id": f"del-{plain}", "tenant_id": plain, "occurred_at": "2026-11-23T00:00:00Z"})
    await produce(bootstrap, "tenants.deleted", [(plain.encode(), deleted.encode())])
    await records_for(bootstrap, "keys.events", plain, want=4, timeout=60)  # 2 generated + 2 destroyed
    # then acme: its own key, bound to it alone, is scheduled for deletion
    deleted = json.dumps({"event_id": f"del-{acme}", "tenant_id": acme, "occurred_at": "2026-11-23T00:00:00Z"})
    await produce(bootstrap, "tenants.deleted", [(acme.encode(), deleted.encode())])
    await records_for(bootstrap, "keys.events", acme, want=4, timeout=60)
    for _ in range(100):
        if key_state(moto_endpoint, own["KeyId"]) == "PendingDeletion":
            break
        await asyncio.sleep(0.1)  # scheduled once the destroyed events are durable
    assert key_state(moto_endpoint, own["KeyId"]) == "PendingDeletion"
    assert key_state(moto_endpoint, moto_kms_key) == "Enabled"
