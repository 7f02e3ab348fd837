"""`keyledger-rotation` with `action: rewrap`: new wrappings of the same keys, accepted by the ledger chain.

The local KMS has no KEK versions, so `manual` ticks re-wrap every live key (as AWS ReEncrypt does);
versioned KEKs (OpenBao) are in test_rewrap_vault.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.messages import AuditEvent, KeyEvent, KeyMaterial, KeyType
from tests.support.callers import TEST_CALLER
from tests.support.harness import handler_harness, inbound, span_job, tenant_created
from workers.core import ids
from workers.core.material import material_fingerprint
from workers.core.signing import Verdict
from workers.keys.pins import rewrap_chain
from workers.ledger import LedgerUnavailable
from workers.tools.verify import PublicKeyBook, verify_signed_span

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation"]


def tick(tick_id: str, **fields) -> bytes:
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields}).encode()


def rewrap_tick(tick_id: str, tenant: str | None = None, **fields) -> bytes:
    extra = {"tenant_id": tenant} if tenant else {}
    return tick(tick_id, action="rewrap", reason="manual", **extra, **fields)


def pii(tenant: str, operation: str, fields: dict, job_id: str) -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields}).encode()


@pytest.fixture
async def harness():
    async with handler_harness(GROUPS) as parts:
        context, broker, captured = parts
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        yield parts


def materials(captured, key_id: str) -> list[KeyMaterial]:
    return [m for m in captured.values("keys.material", KeyMaterial) if m.key_id == key_id]


def rewrap_audits(captured) -> list[AuditEvent]:
    return [a for a in captured.values("kms.audit", AuditEvent) if a.op.value == "rewrap"]


def kms_calls(context, operation: str, outcome: str = "success") -> float:
    text = generate_latest(context.observability.metrics.registry).decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "keyledger_kms_calls_total"
               and sample.labels == {"operation": operation, "outcome": outcome})


def book_of(captured) -> PublicKeyBook:
    book = PublicKeyBook()
    for event in captured.values("keys.events", KeyEvent):
        book.learn(event)
    return book


async def test_a_rewrap_publishes_new_wrappings_of_the_same_keys_and_the_ledger_accepts_them(harness):
    context, broker, captured = harness
    await broker.publish(span_job("acme", {"n": 1}), "spans.to-sign", key=b"acme")
    await broker.publish(pii("acme", "encrypt", {"ssn": "078-05-1120"}, "e1"), "pii.requests", key=b"acme")
    sealed = captured.values("pii.results")[-1]
    await broker.publish(rewrap_tick("rw-1", "acme"), "keys.rotation-ticks", key=b"acme")

    audits = rewrap_audits(captured)
    assert sorted(a.key_id for a in audits) == sorted(e.key_id for e in context.directory.tenant_keys("acme"))
    wrapped = {a.key_id: (a.kms_provider, a.kms_key_id, a.kek_version) for a in audits}
    for entry in context.directory.tenant_keys("acme"):
        first, second = materials(captured, entry.key_id)
        # the audit event names the new wrapping: the KEK history survives keys.material's compaction
        assert wrapped[entry.key_id] == (second.kms_provider, second.kms_key_id, second.kek_version)
        assert (second.key_id, second.version, second.public_key, second.created_at) == \
            (first.key_id, first.version, first.public_key, first.created_at)
        assert second.wrapped_key != first.wrapped_key and second.kms_provider == "local"
        # the transfer carries the new record's fingerprint; the account still pins the first one
        assert await rewrap_chain(context.ledger, entry.key_id) == [material_fingerprint(second)]
        [account] = await context.ledger.lookup_accounts([ids.from_hex(entry.key_id)])
        assert account.user_data_64 == material_fingerprint(first)
    assert len([m for m in captured.values("keys.material", KeyMaterial) if m.tenant_id == "globex"]) == 2

    # metered like every KMS call: one batch call for the tenant's keys
    assert kms_calls(context, "rewrap_many") == 1

    # a cold cache unwraps the new wrapping: old signatures verify, old ciphertexts decrypt
    context.keys.secrets.clear()
    calls = context.kms.calls
    await broker.publish(span_job("acme", {"n": 2}), "spans.to-sign", key=b"acme")
    await broker.publish(TEST_CALLER.pii("acme", "decrypt", sealed["fields"], job_id="d1"), "pii.requests", key=b"acme")
    assert context.kms.calls == calls + 2
    assert TEST_CALLER.open(captured.values("pii.results")[-1])["fields"] == {"ssn": "078-05-1120"}
    book = book_of(captured)
    assert [verify_signed_span(book, s) for s in captured.values("spans.signed")] == [Verdict.VALID] * 2


async def test_a_replayed_rewrap_tick_republishes_its_audit_and_calls_no_kms(harness):
    context, broker, captured = harness
    record = inbound("keys.rotation-ticks", "acme", rewrap_tick("rw-1", "acme"), offset=7)
    group = context.groups["keyledger-rotation"]
    await group.handle([record])
    first = rewrap_audits(captured)
    material_count, calls = len(captured.values("keys.material")), context.kms.calls
    await group.handle([record])
    assert context.kms.calls == calls and len(captured.values("keys.material")) == material_count
    again = rewrap_audits(captured)[len(first):]
    assert again == first  # same ids, same content: kms.audit counts them once
    # the same tick arriving as another record (a fan-out done again) still republishes the same events
    await group.handle([inbound("keys.rotation-ticks", "acme", rewrap_tick("rw-1", "acme"), offset=99, partition=2)])
    assert rewrap_audits(captured)[2 * len(first):] == first and first[0].source.offset == 7
    # a new run is a new rewrap of every live key
    await broker.publish(rewrap_tick("rw-2", "acme"), "keys.rotation-ticks", key=b"acme")
    assert len({a.event_id for a in rewrap_audits(captured)}) == 4


async def test_a_crash_between_the_new_record_and_its_transfer_leaves_a_record_nobody_unwraps(harness):
    context, broker, captured = harness
    ledger = context.ledger
    group = context.groups["keyledger-rotation"]
    record = inbound("keys.rotation-ticks", "acme", rewrap_tick("rw-1", "acme", key_type="signing"), offset=3)
    real = ledger.create_transfers

    async def down(transfers):
        raise LedgerUnavailable("injected: the worker dies here")

    ledger.create_transfers = down
    with pytest.raises(LedgerUnavailable):
        await group.handle([record])
    ledger.create_transfers = real
    key_id = ids.key_id_for("acme", KeyType.SIGNING, 1)
    original, orphan = materials(captured, key_id)
    assert await rewrap_chain(ledger, key_id) == []
    assert context.directory.get(key_id).newest == orphan

    # a cold process unwraps the record the ledger accepted, not the newest one
    context.keys.secrets.clear()
    await broker.publish(span_job("acme"), "spans.to-sign", key=b"acme")
    assert context.directory.get(key_id).material == original
    assert verify_signed_span(book_of(captured), captured.values("spans.signed")[-1]) is Verdict.VALID

    await group.handle([record])  # the redelivery wraps again and the ledger accepts that record
    *_, accepted = materials(captured, key_id)
    assert accepted.wrapped_key not in (original.wrapped_key, orphan.wrapped_key)
    assert await rewrap_chain(ledger, key_id) == [material_fingerprint(accepted)]
    assert len(rewrap_audits(captured)) == 1


async def test_a_tenant_deleted_while_its_keys_are_rewrapped_stays_shredded(harness):
    context, broker, captured = harness
    service = context.groups["keyledger-rotation"].rewrap
    write = service._write_material

    async def publish_then_shred(done):
        await write(done)
        # the tenant is deleted between the new records and their transfers (another group, another process)
        deleted = json.dumps({"event_id": "bye", "tenant_id": "acme", "occurred_at": datetime.now(UTC).isoformat()})
        await broker.publish(deleted.encode(), "tenants.deleted", key=b"acme")

    service._write_material = publish_then_shred
    await broker.publish(rewrap_tick("rw-1", "acme"), "keys.rotation-ticks", key=b"acme")
    for entry in context.directory.tenant_keys("acme"):
        last = [v for k, v in captured.by_topic["keys.material"] if k == entry.key_id.encode()][-1]
        assert last is None  # the tombstone comes after the late record: compaction keeps nothing
    assert rewrap_audits(captured) == []  # the ledger refused the rewraps of closed accounts


async def test_a_rewrap_tick_for_an_unknown_tenant_is_dead_lettered(harness):
    context, broker, captured = harness
    await broker.publish(rewrap_tick("rw-9", "nobody"), "keys.rotation-ticks", key=b"nobody")
    assert [d["error"]["type"] for d in captured.values("kms.dlq")] == ["unknown_tenant"]


async def fan_out(context, value: bytes) -> None:
    # straight to the group: the per-tenant ticks it fans out are delivered inline by the test broker
    await context.groups["keyledger-rotation"].handle([inbound("keys.rotation-ticks", "scheduler", value, offset=0)])


async def test_a_fan_out_tick_rewraps_every_tenant_once(harness):
    context, broker, captured = harness
    await fan_out(context, rewrap_tick("all-1"))
    per_tenant = [t for t in captured.values("keys.rotation-ticks") if t.get("parent_tick_id") == "all-1"]
    assert sorted(t["tenant_id"] for t in per_tenant) == ["acme", "globex"]
    assert all(t["action"] == "rewrap" for t in per_tenant)
    assert len(rewrap_audits(captured)) == 4


async def test_a_scheduled_rewrap_leaves_unversioned_keys_alone(harness):
    context, broker, captured = harness
    await fan_out(context, tick("cron-1", action="rewrap"))
    await broker.publish(tick("cron-2", action="rewrap", tenant_id="acme"), "keys.rotation-ticks", key=b"acme")
    assert rewrap_audits(captured) == [] and captured.values("kms.dlq") == []
    assert [t for t in captured.values("keys.rotation-ticks") if t.get("parent_tick_id") == "cron-1"] == []
