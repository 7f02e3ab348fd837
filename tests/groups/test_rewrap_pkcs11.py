"""Rewrap, retire and migrate with the pkcs11 provider against a fresh SoftHSM2 token, on the handler
harness (the same flows as test_rewrap_vault.py; PKCS#11 rewraps in the worker, not in the token).

Each test uses its own KEK label, so KEK versions start at 1."""

from __future__ import annotations

import uuid

import pytest

from schemas.messages import AuditEvent
from tests.groups.test_rewrap_vault import (
    GROUPS,
    handle,
    latest_records,
    populate,
    still_the_same_keys,
    tick,
)
from tests.support.harness import handler_harness
from workers.core.b64 import b64decode
from workers.core.material import wrapped_kek_version
from workers.kms import KmsRefused, encryption_context
from workers.kms.local import LocalKms
from workers.kms.pkcs11 import Pkcs11Kms
from workers.kms.router import KmsRouter


def hsm_kms(softhsm) -> Pkcs11Kms:
    return Pkcs11Kms(softhsm.module, softhsm.token_label, softhsm.pin,
                     default_key_id=f"kl-{uuid.uuid4().hex[:8]}", sessions=2)


async def test_kek_rotation_then_scheduled_rewrap_then_retire(softhsm):
    kms = hsm_kms(softhsm)
    async with handler_harness(GROUPS, kms=kms) as (context, broker, captured):
        sealed = await populate(broker, captured)
        before = latest_records(captured)
        assert {r.kek_version for r in before.values()} == {1}
        assert {r.kms_provider for r in before.values()} == {"pkcs11"}
        assert {wrapped_kek_version(r) for r in before.values()} == {1}

        await handle(context, tick("retire-0", action="retire"))  # nothing to retire: v1 is all there is
        assert await kms.kek_versions() == (1, 1)
        assert await kms.rotate_kek() == 2
        await handle(context, tick("retire-1", action="retire"))  # every key still needs v1: nothing retired
        assert await kms.kek_versions() == (2, 1)

        await handle(context, tick("cron-1", action="rewrap"))  # scheduled: the keys under v1 move to v2
        after = latest_records(captured)
        assert set(after) == set(before)
        for key_id, record in after.items():
            assert record.kek_version == wrapped_kek_version(record) == 2
            assert (record.public_key, record.version) == (before[key_id].public_key, before[key_id].version)
        audits = [a for a in captured.values("kms.audit", AuditEvent) if a.op.value == "rewrap"]
        assert sorted(a.key_id for a in audits) == sorted(before)

        published = len(captured.values("keys.material"))
        await handle(context, tick("cron-2", action="rewrap"))  # retires v1 first, then finds nothing to move
        assert len(captured.values("keys.material")) == published
        assert await kms.kek_versions() == (2, 2)
        for key_id, record in before.items():  # the token refuses the retired version
            old = encryption_context(record.tenant_id, key_id, record.key_type)
            with pytest.raises(KmsRefused):
                await kms.decrypt(b64decode(record.wrapped_key), record.kms_key_id, old)
        await still_the_same_keys(context, broker, captured, sealed)


async def test_migration_to_pkcs11_and_back_keeps_every_key(softhsm):
    local, hsm = LocalKms(), hsm_kms(softhsm)
    async with handler_harness(GROUPS, kms=KmsRouter(local, [hsm])) as (context, broker, captured):
        sealed = await populate(broker, captured)
        before = latest_records(captured)
        await handle(context, tick("mig-1", action="migrate", to_provider="pkcs11"))
        moved = latest_records(captured)
        assert {(r.kms_provider, r.kms_key_id, r.kek_version) for r in moved.values()} == {
            ("pkcs11", hsm.default_key_id, 1)}
        audits = [a for a in captured.values("kms.audit", AuditEvent) if a.op.value == "rewrap"]
        assert len(audits) == len(before) and {a.reason for a in audits} == {"migration to pkcs11"}
        await still_the_same_keys(context, broker, captured, sealed)

        await handle(context, tick("mig-2", action="migrate", to_provider="local"))
        back = latest_records(captured)
        assert {r.kms_provider for r in back.values()} == {"local"}
        await still_the_same_keys(context, broker, captured, sealed)
