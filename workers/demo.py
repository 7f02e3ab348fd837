"""`keyledger demo`: the embedded stack, driven through the real topics like an outside client would."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from schemas.messages import KeyEvent
from schemas.topics import Topic
from workers.groups import ALL_GROUPS
from workers.kafka.tap import produce, read_topic
from workers.runtime import bootstrap_for, running_workers
from workers.settings import Settings

TENANTS = ("acme", "globex", "initech")


def _say(text: str = "") -> None:
    print(text, flush=True)


async def demo(settings: Settings) -> int:
    async with bootstrap_for(settings) as bootstrap, running_workers(settings, bootstrap, ALL_GROUPS) as context:
        _say(f"embedded broker at {bootstrap}; KMS {settings.kms_provider.value}; ledger {settings.ledger.value}")
        events = await onboard(bootstrap)
        await replay_is_idempotent(bootstrap, len(events))
        _say()
        _say(f"audit: {context.services['keyledger-keygen'].keys_created} keys generated, "
             f"each with one `generate` transfer in the ledger and one kms.audit record")
    return 0


def _tenant_created(tenant: str) -> tuple[bytes, bytes]:
    body = {"event_id": str(uuid.uuid4()), "tenant_id": tenant, "occurred_at": datetime.now(UTC).isoformat()}
    return tenant.encode(), json.dumps(body).encode()


async def onboard(bootstrap: str) -> list[KeyEvent]:
    _say("\n== 1. tenant onboarding: tenants.created -> keys.material, keys.events, kms.audit")
    await produce(bootstrap, Topic.TENANTS_CREATED, [_tenant_created(t) for t in TENANTS])
    wanted = 2 * len(TENANTS)
    records = await read_topic(bootstrap, Topic.KEYS_EVENTS, until=lambda r: len(r) >= wanted, timeout=60)
    events = [KeyEvent.model_validate_json(r.value) for r in records]
    _say(f"{'tenant':<10} {'type':<11} {'v':>2}  {'key_id':<32}  public key")
    for e in sorted(events, key=lambda e: (e.tenant_id, e.key_type)):
        _say(f"{e.tenant_id:<10} {e.key_type.value:<11} {e.version:>2}  {e.key_id}  {e.public_key or '-'}")
    if len(events) < wanted:
        raise SystemExit(f"only {len(events)} of {wanted} keys appeared")
    return events


async def replay_is_idempotent(bootstrap: str, before: int) -> None:
    _say("\n== 2. the same tenants created again: no new keys")
    await produce(bootstrap, Topic.TENANTS_CREATED, [_tenant_created(t) for t in TENANTS])
    audit_before = len(await read_topic(bootstrap, Topic.KMS_AUDIT))
    records = await read_topic(bootstrap, Topic.KEYS_EVENTS, until=lambda r: len(r) > before, timeout=3)
    audit_after = len(await read_topic(bootstrap, Topic.KMS_AUDIT))
    _say(f"keys.events: {before} before, {len(records)} after; kms.audit: {audit_before} -> {audit_after}")
