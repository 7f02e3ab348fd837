"""Metrics as the runners, emitters and ports report them (handler level: TestKafkaBroker, local KMS, memory ledger)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.messages import KeyType
from tests.support.faults import SwitchableKms
from tests.support.harness import handler_harness, span_job, tenant_created
from workers.app.observability.metrics import Metrics, Samplers
from workers.app.observability.ports import MeteredKms, MeteredLedger
from workers.keys.budget import Claim, EncryptionBudget
from workers.kms import KmsRefused, KmsUnavailable
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger


def value(context, name: str, **labels: str) -> float:
    """One sample, read back through the exposition format the way Prometheus reads it."""
    text = generate_latest(context.observability.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_each_record_counts_once_processed_or_dead_lettered_by_code():
    async with handler_harness(["keyledger-keygen", "keyledger-signer"]) as (context, broker, captured):
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        for _ in range(3):
            await broker.publish(span_job("acme"), "spans.to-sign", key=b"acme")
        await broker.publish(span_job("nobody"), "spans.to-sign", key=b"nobody")
        await broker.publish(b"\x00 not json", "spans.to-sign", key=b"acme")
        assert len(captured.values("spans.signed")) == 3 and len(captured.values("kms.dlq")) == 2
        signer = {"group": "keyledger-signer"}
        assert value(context, "keyledger_records_total", **signer, outcome="processed") == 3
        assert value(context, "keyledger_records_total", **signer, outcome="dead_lettered") == 2
        assert value(context, "keyledger_records_total", **signer, outcome="retried") == 0
        assert value(context, "keyledger_dead_letters_total", **signer, code="unknown_tenant") == 1
        assert value(context, "keyledger_dead_letters_total", **signer, code="not_json") == 1
        assert value(context, "keyledger_records_total", group="keyledger-keygen", outcome="processed") == 1
        assert value(context, "keyledger_batch_size_count", **signer) == 5  # the test broker delivers one by one
        assert value(context, "keyledger_kms_calls_total", operation="generate_data_key", outcome="success") == 2
        assert value(context, "keyledger_ledger_requests_total", operation="create_transfers", outcome="success") >= 4
        assert value(context, "keyledger_keys", key_type="signing", state="active") == 1
        assert value(context, "keyledger_keys", key_type="encryption", state="active") == 1
        assert value(context, "keyledger_keys", key_type="signing", state="destroyed") == 0
        # minting warms the cache: every signature was a hit, no unwrap was needed
        assert value(context, "keyledger_cache_hits_total") >= 3
        assert value(context, "keyledger_cache_misses_total") == 0


async def test_waiting_records_are_counted_as_retried_and_the_kms_as_unavailable():
    kms = SwitchableKms()
    async with handler_harness(["keyledger-keygen", "keyledger-signer"], kms=kms) as (context, broker, captured):
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        context.keys.evict(context.keys.active("acme", KeyType.SIGNING).key_id)
        kms.down = True
        await broker.publish(span_job("acme"), "spans.to-sign", key=b"acme")
        assert captured.values("spans.signed") == []
        signer = {"group": "keyledger-signer"}
        assert value(context, "keyledger_records_total", **signer, outcome="retried") == 1
        assert value(context, "keyledger_records_total", **signer, outcome="processed") == 0
        assert value(context, "keyledger_records_waiting", **signer) == 1
        assert value(context, "keyledger_kms_calls_total", operation="decrypt", outcome="unavailable") == 1
        assert value(context, "keyledger_cache_evictions_total") == 1
        assert value(context, "keyledger_cache_misses_total") == 1
        ready, checks = await context.readiness()
        assert checks["kms"]["state"] == "unavailable" and not checks["kms"]["fatal"]  # the signer serves from cache


async def test_rotations_are_counted_by_reason_and_evict_the_old_key():
    async with handler_harness(["keyledger-keygen", "keyledger-rotation"]) as (context, broker, captured):
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        tick = {"tick_id": "t1", "issued_at": "2026-01-01T00:00:00Z", "tenant_id": "acme", "reason": "compromise"}
        await broker.publish(json.dumps(tick).encode(), "keys.rotation-ticks", key=b"acme")
        assert value(context, "keyledger_rotations_total", reason="compromise") == 2  # signing and encryption
        assert value(context, "keyledger_rotations_total", reason="manual") == 0
        assert value(context, "keyledger_keys", key_type="signing", state="revoked") == 1
        assert value(context, "keyledger_keys", key_type="signing", state="active") == 2


async def test_metered_kms_counts_outcomes_and_logs_the_cause_of_a_refusal(caplog):
    metrics = Metrics()
    kms = MeteredKms(LocalKms(), metrics)
    context = {"tenant_id": "acme", "key_id": "0" * 32, "key_type": "signing"}
    data_key = await kms.generate_data_key(None, context)
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, kms.default_key_id, {**context, "tenant_id": "globex"})
    sample = metrics.registry.get_sample_value
    assert sample("keyledger_kms_calls_total", {"operation": "generate_data_key", "outcome": "success"}) == 1
    assert sample("keyledger_kms_calls_total", {"operation": "decrypt", "outcome": "refused"}) == 1
    assert sample("keyledger_kms_seconds_count", {"operation": "decrypt"}) == 1
    [line] = [r for r in caplog.records if r.name == "keyledger.ports"]
    assert "wrong key or encryption context" in line.getMessage() and line.code == "kms_refused"
    assert kms.reachability.state == "ok"  # a refusal is an answer


async def test_metered_kms_reports_an_outage_without_logging_it_as_a_refusal(caplog):
    metrics = Metrics()
    kms = MeteredKms(SwitchableKms(), metrics)
    kms.inner.down = True
    with pytest.raises(KmsUnavailable):
        await kms.generate_data_key(None, {"tenant_id": "a", "key_id": "0" * 32, "key_type": "signing"})
    assert metrics.registry.get_sample_value(
        "keyledger_kms_calls_total", {"operation": "generate_data_key", "outcome": "unavailable"}) == 1
    assert kms.reachability.report()["state"] == "unavailable"
    assert "injected outage" in kms.reachability.report()["last_error"]
    assert [r for r in caplog.records if r.name == "keyledger.ports"] == []


async def test_key_usage_ratio_is_the_highest_share_of_an_encryption_budget_spent():
    async with handler_harness(["keyledger-keygen"]) as (context, broker, captured):
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        acme = context.keys.active("acme", KeyType.ENCRYPTION)
        budget = EncryptionBudget(context.ledger, 100)
        assert await budget.claim([Claim(acme.key_id, "pii.requests", 0, 7, 40)]) == [True]
        samplers = Samplers(context.runners, context.directory, context.ledger, encrypt_limit=100)
        await samplers.refresh(wait=5)
        assert samplers.usage_ratio == pytest.approx(40 / 100)  # globex's untouched budget is 0


async def test_the_metered_ledger_is_the_same_ledger():
    metrics = Metrics()
    ledger = MeteredLedger(MemoryLedger(), metrics)
    assert await ledger.lookup_accounts([1]) == []
    assert metrics.registry.get_sample_value(
        "keyledger_ledger_requests_total", {"operation": "lookup_accounts", "outcome": "success"}) == 1


async def test_an_aws_refusal_logs_the_reason_aws_gave(moto_endpoint, caplog):
    from workers.kms.aws import AwsKms

    kms = MeteredKms(AwsKms("alias/does-not-exist", endpoint_url=moto_endpoint, max_attempts=1), Metrics())
    try:
        with pytest.raises(KmsRefused) as refused:
            await kms.generate_data_key(None, {"tenant_id": "a", "key_id": "0" * 32, "key_type": "signing"})
    finally:
        await kms.aclose()
    [line] = [r for r in caplog.records if r.name == "keyledger.ports"]
    assert refused.value.detail and refused.value.detail in line.getMessage()  # AWS's sentence, not only its code
    assert "NotFoundException" in line.getMessage() and refused.value.detail not in str(refused.value)
