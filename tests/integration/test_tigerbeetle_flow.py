"""Flows with TigerBeetle as the system of record (skipped, saying why, where no server binary exists)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.integration.conftest import records_for, tenant_created, unique_tenant
from tests.support.harness import span_job
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
