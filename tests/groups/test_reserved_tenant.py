"""The reserved tenant id `keyledger-system` (the audit digest key): refused as input, skipped by fan-outs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.messages import SYSTEM_TENANT, RotationTick
from tests.support.harness import handler_harness, inbound, span_job, tenant_created
from workers.keys.versions import VersionMaker
from workers.services.digest import DigestService

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-rotation"]


@pytest.fixture
async def harness():
    async with handler_harness(GROUPS, rotation_age=3600) as parts:
        context, broker, captured = parts
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        yield parts


async def make_digest_key(context) -> str:
    """The digest service's own way of making its key on first need."""

    async def no_digests() -> list[bytes | None]:
        return []

    service = DigestService(context.keys, VersionMaker(context.keys, context.ledger, context.deps.materials), no_digests, 1,
                            ledger=context.ledger)
    await context.deps.emitter("keyledger-audit-digest")((), await service.ensure_key([0]))
    return context.keys.active(SYSTEM_TENANT, "signing").key_id


def tick(tick_id: str, **fields) -> bytes:
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields}).encode()


async def test_onboarding_deleting_and_signing_as_the_reserved_tenant_are_refused(harness):
    context, broker, captured = harness
    key_id = await make_digest_key(context)
    await broker.publish(tenant_created(SYSTEM_TENANT), "tenants.created", key=SYSTEM_TENANT.encode())
    deleted = {"event_id": "x", "tenant_id": SYSTEM_TENANT, "occurred_at": datetime.now(UTC).isoformat()}
    await broker.publish(json.dumps(deleted).encode(), "tenants.deleted", key=SYSTEM_TENANT.encode())
    await broker.publish(span_job(SYSTEM_TENANT), "spans.to-sign", key=SYSTEM_TENANT.encode())
    letters = captured.values("kms.dlq")
    assert [(d["topic"], d["error"]["type"]) for d in letters] == [
        ("tenants.created", "invalid_message"), ("tenants.deleted", "invalid_message"), ("spans.to-sign", "invalid_message")]
    assert all("reserved" in d["error"]["message"] for d in letters)
    assert captured.values("spans.signed") == []
    assert context.keys.active(SYSTEM_TENANT, "signing").key_id == key_id  # neither a second key nor a shredded one


async def test_manual_fan_out_skips_the_digest_key_and_a_scheduled_one_rotates_it_when_due(harness):
    context, broker, captured = harness
    await make_digest_key(context)
    rotation = context.groups["keyledger-rotation"]

    async def fan_out(tick_id: str, reason: str) -> set[str]:
        before = len(captured.by_topic.get("keys.rotation-ticks", []))
        await rotation.handle([inbound("keys.rotation-ticks", "cron", tick(tick_id, reason=reason), offset=0)])
        ticks = captured.values("keys.rotation-ticks", RotationTick)[before:]
        return {t.tenant_id for t in ticks if t.parent_tick_id == tick_id}

    assert await fan_out("all-now", "manual") == {"acme"}
    assert await fan_out("young", "scheduled") == set()  # nothing is an hour old
    rotation.service.rotation_age = 0  # every key, the digest key included, is now past the age
    assert SYSTEM_TENANT in await fan_out("old", "scheduled")
    assert context.keys.active(SYSTEM_TENANT, "signing").version == 2  # rotated like any signing key
