"""Flows with TigerBeetle as the system of record (skipped, saying why, where no server binary exists)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.support.harness import span_job
from tests.support.kafka import read, records_for, tenant_created, unique_tenant
from workers.core import ids
from workers.kafka.tap import produce
from workers.ledger import QueryFilter, QueryFilterFlags
from workers.ledger.tigerbeetle import TigerBeetleLedger

pytestmark = pytest.mark.integration


@pytest.fixture
def tb_env(tigerbeetle_address):
    return {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address}


def audit_verify(bootstrap: str, env: dict, tenant: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.app.cli", "audit", "verify", "--tenant", tenant],
                          env={**os.environ, **env, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap},
                          capture_output=True, text=True, timeout=120)


async def test_keys_sign_and_audit_agree_with_tigerbeetle_across_a_hard_crash(topics_ready, worker_process, tb_env,
                                                                             tigerbeetle_address):
    bootstrap = topics_ready
    tenant = unique_tenant("tb")
    first = worker_process("keyledger-keygen", "keyledger-signer", env=tb_env)
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    first.send_signal(signal.SIGKILL)  # no clean shutdown: whatever was uncommitted is redelivered
    first.wait()

    second = worker_process("keyledger-keygen", "keyledger-signer", env=tb_env)
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), span_job(tenant)) for _ in range(30)])
    assert len(await records_for(bootstrap, "spans.signed", tenant, want=30, timeout=90)) == 30
    assert len(await records_for(bootstrap, "keys.events", tenant)) == 2, second.log_path.read_text()[-3000:]

    ledger = TigerBeetleLedger(tigerbeetle_address)
    try:
        keys = await ledger.query_accounts(QueryFilter(
            user_data_128=ids.tenant_ref(tenant), user_data_64=0, user_data_32=0, ledger=0, code=8,
            timestamp_min=0, timestamp_max=0, limit=10, flags=QueryFilterFlags.NONE))
    finally:
        await ledger.aclose()
    assert len(keys) == 2
    signing = next(a for a in keys if ids.unpack_key_kind(a.user_data_32)[0].value == "signing")
    assert signing.credits_posted == 1 + 30  # one generate, thirty signatures

    report = audit_verify(bootstrap, tb_env, tenant)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "agrees with TigerBeetle" in report.stdout


async def test_kill_9_mid_stream_then_restart_signs_every_span_once_in_the_ledger(
        topics_ready, worker_process, tb_env, tigerbeetle_address):
    """Per-span operation ids: the redelivery after kill -9 comes in other batches and lands on the same
    transfers, so `audit verify` agrees and each key's sign usage equals the distinct spans signed."""
    bootstrap = topics_ready
    tenants = [unique_tenant("kill") for _ in range(3)]
    spans = 2000  # per tenant
    worker_process("keyledger-keygen", env=tb_env)
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    for tenant in tenants:
        await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    jobs = [(t.encode(), span_job(t, job_id=f"{t}-{n}")) for n in range(spans) for t in tenants]
    await produce(bootstrap, "spans.to-sign", jobs)

    def signed_jobs(records) -> set[str]:
        wanted = set(tenants)
        return {v["job_id"] for v in (json.loads(r.value) for r in records if r.value) if v.get("tenant_id") in wanted}

    # small batches, so the kill lands among many of them rather than after the one that held everything
    first = worker_process("keyledger-signer", env={**tb_env, "KEYLEDGER_KAFKA_BATCH_MAX": "200"})
    partly = await read(bootstrap, "spans.signed", until=lambda rs: len(signed_jobs(rs)) >= 300, timeout=90)
    first.send_signal(signal.SIGKILL)  # mid-stream: some batches signed and audited, their offsets not committed
    first.wait()
    assert 300 <= len(signed_jobs(partly)) < len(jobs), "the kill came too late to prove anything"

    worker_process("keyledger-signer", env=tb_env)
    every = await read(bootstrap, "spans.signed", until=lambda rs: len(signed_jobs(rs)) >= len(jobs), timeout=180)
    assert len(signed_jobs(every)) == len(jobs)

    ledger = TigerBeetleLedger(tigerbeetle_address)
    try:
        for tenant in tenants:
            keys = await ledger.query_accounts(QueryFilter(
                user_data_128=ids.tenant_ref(tenant), user_data_64=0, user_data_32=0, ledger=0, code=8,
                timestamp_min=0, timestamp_max=0, limit=10, flags=QueryFilterFlags.NONE))
            signing = next(a for a in keys if ids.unpack_key_kind(a.user_data_32)[0].value == "signing")
            assert signing.credits_posted == 1 + spans, tenant  # one generate, one per distinct span
    finally:
        await ledger.aclose()
    for tenant in tenants:
        report = audit_verify(bootstrap, tb_env, tenant)
        assert report.returncode == 0, report.stdout + report.stderr
        assert "kms.audit agrees with" in report.stdout
