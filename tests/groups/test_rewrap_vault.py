"""Rewrap, retire and migrate against a real OpenBao dev server (Transit), on the handler harness.

Each test uses its own Transit key, so KEK versions start at 1."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.messages import AuditEvent, KeyEvent, KeyMaterial, KeyType
from tests.support.callers import TEST_CALLER
from tests.support.harness import Placed, handler_harness, inbound, span_job, tenant_created
from workers.core.b64 import b64decode
from workers.core.material import wrapped_kek_version
from workers.core.signing import Verdict
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService
from workers.keystore.directory import KeyDirectory
from workers.kms import KmsRefused, encryption_context
from workers.kms.local import LocalKms
from workers.kms.router import KmsRouter
from workers.kms.vault import TokenAuth, VaultKms
from workers.tools.verify import PublicKeyBook, verify_signed_span

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation"]
TENANTS = ("acme", "globex", "initech")


def tick(tick_id: str, **fields) -> bytes:
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields}).encode()


def pii(tenant: str, operation: str, fields: dict, job_id: str) -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields}).encode()


def vault_kms(openbao, key: str) -> VaultKms:
    return VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=key, timeout=5, batch_max=2)


async def handle(context, value: bytes) -> None:
    """Straight to the group (a fan-out's per-tenant ticks are delivered inline by the test broker)."""
    await context.groups["keyledger-rotation"].handle([inbound("keys.rotation-ticks", "ops", value, offset=0)])


def latest_records(captured) -> dict[str, KeyMaterial]:
    latest: dict[str, KeyMaterial] = {}
    for record in captured.values("keys.material", KeyMaterial):
        latest[record.key_id] = record
    return latest


def kms_calls(context, operation: str) -> float:
    text = generate_latest(context.observability.metrics.registry).decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "keyledger_kms_calls_total"
               and sample.labels == {"operation": operation, "outcome": "success"})


def book_of(captured) -> PublicKeyBook:
    book = PublicKeyBook()
    for event in captured.values("keys.events", KeyEvent):
        book.learn(event)
    return book


async def populate(broker, captured) -> dict[str, dict]:
    """Every tenant signs a span and encrypts a field; returns the ciphertexts by tenant."""
    sealed = {}
    for tenant in TENANTS:
        await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        await broker.publish(span_job(tenant, {"before": tenant}), "spans.to-sign", key=tenant.encode())
        await broker.publish(pii(tenant, "encrypt", {"ssn": f"078-05-{tenant}"}, f"e-{tenant}"), "pii.requests",
                             key=tenant.encode())
        sealed[tenant] = captured.values("pii.results")[-1]["fields"]
    return sealed


async def still_the_same_keys(context, broker, captured, sealed: dict[str, dict]) -> None:
    """With a cold cache: old signatures and new ones verify, old ciphertexts decrypt."""
    context.keys.secrets.clear()
    decrypts = Placed(context, "keyledger-pii", "pii.requests")  # each at its own place: a new request each time
    for tenant in TENANTS:
        await broker.publish(span_job(tenant, {"after": tenant}), "spans.to-sign", key=tenant.encode())
        await decrypts.publish(TEST_CALLER.pii(tenant, "decrypt", sealed[tenant], job_id=f"d-{uuid.uuid4()}"), tenant)
        assert TEST_CALLER.open(captured.values("pii.results")[-1])["fields"] == {"ssn": f"078-05-{tenant}"}
    book = book_of(captured)
    assert {verify_signed_span(book, s) for s in captured.values("spans.signed")} == {Verdict.VALID}


async def test_kek_rotation_then_scheduled_rewrap_then_retire(openbao):
    key = f"kl-{uuid.uuid4().hex[:8]}"
    kms = vault_kms(openbao, key)
    async with handler_harness(GROUPS, kms=kms) as (context, broker, captured):
        sealed = await populate(broker, captured)
        before = latest_records(captured)
        assert {r.kek_version for r in before.values()} == {1} and {r.kms_provider for r in before.values()} == {"vault"}

        await handle(context, tick("retire-0", action="retire"))  # nothing to retire: v1 is all there is
        assert (await kms.kek_versions()).min_decryption == 1
        openbao.admin("POST", f"transit/keys/{key}/rotate", {})
        await handle(context, tick("retire-1", action="retire"))  # every key still needs v1: nothing retired
        assert await kms.kek_versions() == (2, 1)

        await handle(context, tick("cron-1", action="rewrap"))  # scheduled: the keys under v1 move to v2
        after = latest_records(captured)
        assert set(after) == set(before)
        for key_id, record in after.items():
            assert record.kek_version == wrapped_kek_version(record) == 2
            assert b64decode(record.wrapped_key).startswith(b"vault:v2:")
            assert (record.public_key, record.version) == (before[key_id].public_key, before[key_id].version)
        audits = [a for a in captured.values("kms.audit", AuditEvent) if a.op.value == "rewrap"]
        assert sorted(a.key_id for a in audits) == sorted(before)
        assert {a.reason for a in audits} == {"scheduled rewrap to the latest KEK version"}
        assert {(a.kms_provider, a.kek_version) for a in audits} == {("vault", 2)}  # the KEK version it moved to
        generated = [a for a in captured.values("kms.audit", AuditEvent) if a.op.value == "generate"]
        assert generated and {(a.kms_provider, a.kek_version) for a in generated} == {("vault", 1)}

        published = len(captured.values("keys.material"))
        await handle(context, tick("cron-2", action="rewrap"))  # retires v1 first, then finds nothing to move
        assert len(captured.values("keys.material")) == published
        assert await kms.kek_versions() == (2, 2)
        for key_id, record in before.items():  # the old wrappings are dead; nothing needed them
            old = encryption_context(record.tenant_id, key_id, record.key_type)
            with pytest.raises(KmsRefused):
                await kms.decrypt(b64decode(record.wrapped_key), record.kms_key_id, old)
        await still_the_same_keys(context, broker, captured, sealed)


async def test_a_manual_rewrap_of_one_tenant_leaves_the_others_and_blocks_retirement(openbao):
    key = f"kl-{uuid.uuid4().hex[:8]}"
    kms = vault_kms(openbao, key)
    async with handler_harness(GROUPS, kms=kms) as (context, broker, captured):
        await populate(broker, captured)
        openbao.admin("POST", f"transit/keys/{key}/rotate", {})
        await broker.publish(tick("rw-acme", tenant_id="acme", action="rewrap", reason="manual"),
                             "keys.rotation-ticks", key=b"acme")
        versions = {r.tenant_id: set() for r in latest_records(captured).values()}
        for record in latest_records(captured).values():
            versions[record.tenant_id].add(record.kek_version)
        assert versions == {"acme": {2}, "globex": {1}, "initech": {1}}
        lines = await context.groups["keyledger-rotation"].retirement.retire_unneeded()
        assert await kms.kek_versions() == (2, 1)
        [line] = lines
        assert line.startswith(f"vault KEK {key}: min_decryption_version stays v1 (oldest version in use: v1, by key ")
        assert line.split("by key ")[1][:32] in {e.key_id for e in context.directory.entries()
                                                  if e.tenant_id in ("globex", "initech")}


async def test_migration_to_vault_and_back_keeps_every_key(openbao):
    key = f"kl-{uuid.uuid4().hex[:8]}"
    local, vault = LocalKms(), vault_kms(openbao, key)
    async with handler_harness(GROUPS, kms=KmsRouter(local, [vault])) as (context, broker, captured):
        sealed = await populate(broker, captured)
        await broker.publish(tenant_created("byok", kms_key_id="tenant-own-key"), "tenants.created", key=b"byok")
        before = latest_records(captured)
        assert {r.kms_provider for r in before.values()} == {"local"}

        await handle(context, tick("mig-1", action="migrate", to_provider="vault"))
        moved = latest_records(captured)
        byok = {k for k, r in before.items() if r.tenant_id == "byok"}
        for key_id, record in moved.items():
            if key_id in byok:  # a tenant's own key is never moved under another provider's shared key
                assert record == before[key_id]
                continue
            assert (record.kms_provider, record.kms_key_id, record.kek_version) == ("vault", key, 1)
        audits = [a for a in captured.values("kms.audit", AuditEvent) if a.op.value == "rewrap"]
        assert len(audits) == 6 and {a.reason for a in audits} == {"migration to vault"}
        assert {(a.kms_provider, a.kms_key_id, a.kek_version) for a in audits} == {("vault", key, 1)}  # moved to
        # each provider's calls are metered, per tenant tick (the test broker delivers them one by one):
        # one unwrap under local and one proof under vault (decrypt_many), one wrap under vault
        assert [kms_calls(context, op) for op in ("decrypt_many", "wrap_many")] == [2 * 3, 3]

        # a process with only the vault provider unwraps every migrated key to the same key
        cold = KeyService(KeyDirectory(), vault, context.ledger, SingleFlightCache(ttl=60, max_entries=100))
        for record in captured.values("keys.material", KeyMaterial):
            cold.directory.apply_material(record)
        for event in captured.values("keys.events", KeyEvent):
            cold.directory.apply_event(event)
        for tenant in TENANTS:
            for key_type in KeyType:
                assert await cold.secret(cold.active(tenant, key_type)) is not None

        published = len(captured.values("keys.material"))
        await handle(context, tick("mig-2", action="migrate", to_provider="vault"))  # resumable: nothing left
        assert len(captured.values("keys.material")) == published

        # a rotation meanwhile: the new version goes where new keys go (local here), under its default key;
        # a tenant's own key keeps wrapping its next version
        for tenant in ("acme", "byok"):
            await broker.publish(tick(f"rot-{tenant}", tenant_id=tenant, reason="manual", key_type="signing"),
                                 "keys.rotation-ticks", key=tenant.encode())
        v2 = {r.tenant_id: r for r in captured.values("keys.material", KeyMaterial)
              if r.version == 2 and r.key_type is KeyType.SIGNING}
        assert (v2["acme"].kms_provider, v2["acme"].kms_key_id) == ("local", local.default_key_id)
        assert (v2["byok"].kms_provider, v2["byok"].kms_key_id) == ("local", "tenant-own-key")

        await handle(context, tick("mig-3", action="migrate", to_provider="local"))
        back = latest_records(captured)
        assert {r.kms_provider for r in back.values()} == {"local"}
        assert {k: back[k].public_key for k in before} == {k: r.public_key for k, r in before.items()}
        await still_the_same_keys(context, broker, captured, sealed)


async def test_a_migration_to_a_provider_this_process_lacks_is_refused():
    async with handler_harness(GROUPS) as (context, broker, captured):
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        await handle(context, tick("mig-1", action="migrate", to_provider="vault"))
        await handle(context, tick("mig-2", action="migrate"))
        letters = captured.values("kms.dlq")
        assert [d["error"]["type"] for d in letters] == ["kms_refused", "invalid_message"]
        assert "no vault KMS provider" in letters[0]["error"]["message"]
        assert len(captured.values("keys.material")) == 2
