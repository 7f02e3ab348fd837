"""workers/tools/migrate.py: what remains after a migration is counted under the reason that applies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.core import ids
from workers.keystore.directory import KeyDirectory
from workers.tools.migrate import _why

STARTED = datetime(2026, 6, 1, tzinfo=UTC)


def key(directory: KeyDirectory, tenant: str, created: datetime):
    key_id = ids.key_id_for(tenant, KeyType.SIGNING, 1)
    directory.apply_material(KeyMaterial(key_id=key_id, tenant_id=tenant, key_type=KeyType.SIGNING, version=1,
                                         kms_key_id="k", kms_provider="aws", wrapped_key="AAAA", created_at=created))
    directory.apply_event(KeyEvent(event_id=f"e-{key_id}", type=KeyEventType.GENERATED, tenant_id=tenant,
                                   key_id=key_id, key_type=KeyType.SIGNING, version=1, occurred_at=created))
    entry = directory.get(key_id)
    assert entry is not None
    return entry


def test_each_remaining_key_is_counted_under_one_reason():
    directory = KeyDirectory()
    byok = key(directory, "byok", STARTED - timedelta(days=1))
    late = key(directory, "late", STARTED + timedelta(seconds=5))
    raced = key(directory, "raced", STARTED + timedelta(seconds=1))
    failed = key(directory, "failed", STARTED - timedelta(days=1))
    lines = _why([byok, late, raced, failed], "vault", STARTED, asked={byok.key_id, raced.key_id, failed.key_id},
                 failed_tenants={"failed"})
    text = "\n".join(lines)
    assert len(lines) == 4 and all(line.split()[0] == "1" for line in lines)
    assert "KEYLEDGER_KMS_PROVIDER is aws, not vault; set it to vault and run again" in text
    assert "while the migration ran and not moved by its pass" in text
    assert "BYOK" in text and "dead-lettered" in text
