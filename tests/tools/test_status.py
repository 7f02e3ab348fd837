"""workers/tools/status.py: the key table summarised (pure part) and wear-out read from a ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.core import ids
from workers.keys.budget import Claim, EncryptionBudget
from workers.keystore.directory import KeyDirectory
from workers.ledger.memory import MemoryLedger
from workers.tools.status import RESERVED_TENANT, near_wear_out, render, shreds, summarise, to_json

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = 86400


def mint(directory: KeyDirectory, tenant: str, key_type: KeyType, version: int, age_days: float,
         previous: str | None = None) -> str:
    key_id = ids.key_id_for(tenant, key_type, version)
    directory.apply_material(KeyMaterial(key_id=key_id, tenant_id=tenant, key_type=key_type, version=version,
                                         kms_key_id="local/k", wrapped_key="AAAA",
                                         created_at=NOW - timedelta(days=age_days)))
    directory.apply_event(KeyEvent(event_id=f"e-{key_id}", type=KeyEventType.ROTATED if previous else KeyEventType.GENERATED,
                                   tenant_id=tenant, key_id=key_id, key_type=key_type, version=version,
                                   occurred_at=NOW, previous_key_id=previous))
    return key_id


def destroy(directory: KeyDirectory, tenant: str, key_id: str, key_type: KeyType, version: int) -> None:
    directory.apply_tombstone(key_id)
    directory.apply_event(KeyEvent(event_id=f"d-{key_id}", type=KeyEventType.DESTROYED, tenant_id=tenant,
                                   key_id=key_id, key_type=key_type, version=version, occurred_at=NOW))


def table() -> KeyDirectory:
    directory = KeyDirectory()
    old_signing = mint(directory, "acme", KeyType.SIGNING, 1, age_days=100)
    mint(directory, "acme", KeyType.SIGNING, 2, age_days=95, previous=old_signing)  # active and due
    mint(directory, "acme", KeyType.ENCRYPTION, 1, age_days=10)
    mint(directory, "globex", KeyType.SIGNING, 1, age_days=89)  # just under 90 days
    for key_type in KeyType:
        key_id = mint(directory, "initech", key_type, 1, age_days=200)  # old, but destroyed: never due
        destroy(directory, "initech", key_id, key_type, 1)
    mint(directory, RESERVED_TENANT, KeyType.SIGNING, 1, age_days=300)
    return directory


def test_counts_tenants_and_keys_by_state_without_the_reserved_tenant():
    status = summarise(table(), NOW, rotation_age=90 * DAY, encrypt_limit=100)
    assert status.live_tenants == ["acme", "globex"] and status.deleted_tenants == ["initech"]
    assert status.keys["signing"] == {"active": 2, "rotated": 1, "revoked": 0, "destroyed": 1, "pending": 0}
    assert status.keys["encryption"] == {"active": 1, "rotated": 0, "revoked": 0, "destroyed": 1, "pending": 0}
    assert RESERVED_TENANT not in status.tenant_keys
    assert status.tenant_keys["acme"] == ["signing v1 rotated", "signing v2 active", "encryption v1 active"]


def test_only_active_keys_older_than_the_rotation_age_are_due():
    status = summarise(table(), NOW, rotation_age=90 * DAY, encrypt_limit=100)
    assert [(r.tenant_id, r.key_type, r.version) for r in status.due_for_rotation] == [("acme", "signing", 2)]
    assert status.due_for_rotation[0].age_seconds == 95 * DAY
    later = summarise(table(), NOW + timedelta(days=2), rotation_age=90 * DAY, encrypt_limit=100)
    assert {(r.tenant_id, r.version) for r in later.due_for_rotation} == {("acme", 2), ("globex", 1)}


def test_text_and_json_forms_carry_the_same_facts():
    status = summarise(table(), NOW, rotation_age=90 * DAY, encrypt_limit=100)
    status.wear_out_note = "skipped: the ledger (memory) lives inside the worker process"
    text = render(status, "Kafka k:9092, the ledger (memory)")
    assert "tenants: 2 live, 1 deleted" in text
    assert "due for rotation (active, older than KEYLEDGER_ROTATION_AGE=7776000s): 1" in text
    assert "acme signing v2" in text and "95.0 days old" in text
    assert "near wear-out (>= 90% of KEYLEDGER_ENCRYPT_LIMIT=100): skipped: the ledger (memory)" in text
    assert "initech (deleted): signing v1 destroyed" in text
    body = json.loads(to_json(status))
    assert body["tenants"] == {"live": ["acme", "globex"], "deleted": ["initech"]}
    assert body["near_wear_out"] is None and body["due_for_rotation"][0]["key_id"] == ids.key_id_for("acme", KeyType.SIGNING, 2)


async def test_near_wear_out_reads_the_encryption_budget_the_workers_charge():
    ledger = MemoryLedger()
    directory = table()
    keys = [directory.active("acme", KeyType.ENCRYPTION), directory.active("globex", KeyType.SIGNING)]
    budget = EncryptionBudget(ledger, 100)
    assert await budget.claim([Claim(k.key_id, "pii.requests", 0, n, count)
                               for n, (k, count) in enumerate([(keys[0], 91), (keys[1], 89)])]) == [True, True]
    worn = await near_wear_out(ledger, keys, encrypt_limit=100)
    assert [(r.tenant_id, r.used) for r in worn] == [("acme", 91)]  # 91 >= 90% of 100; 89 is not


def test_a_deleted_tenant_shred_is_complete_one_shred_window_after_its_keys_were_destroyed():
    directory = table()
    events = [KeyEvent(event_id=f"d-{t}", type=KeyEventType.DESTROYED, tenant_id="initech", key_id=ids.key_id_for(
        "initech", t, 1), key_type=t, version=1, occurred_at=NOW) for t in KeyType]
    [pending] = shreds(directory, events, NOW + timedelta(hours=1), shred_window=DAY)
    assert (pending.tenant_id, pending.complete) == ("initech", False)
    assert pending.complete_at == (NOW + timedelta(days=1)).isoformat()
    [done] = shreds(directory, events, NOW + timedelta(days=1), shred_window=DAY)
    assert done.complete
    status = summarise(directory, NOW, rotation_age=90 * DAY, encrypt_limit=100)
    status.shred_window, status.shreds = DAY, [pending]
    text = render(status, "test")
    assert f"initech: destroyed {NOW.isoformat()}, complete at {pending.complete_at} (pending)" in text
    assert json.loads(to_json(status))["shreds"][0]["complete"] is False
