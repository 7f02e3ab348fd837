"""Sizes end to end (issue 25, finding 5), over a real broker and a real TigerBeetle: with
KEYLEDGER_MAX_MESSAGE_BYTES=8192, a span and a PII encrypt of 8,152 bytes (within the inbound limit, too
large once signed or sealed) are refused `too_large` before any ledger operation, the requests after them
are answered, and `keyledger audit verify` agrees with the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.harness import span_job
from tests.support.kafka import read, records_for, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.kafka.tap import produce
from workers.ledger.tigerbeetle import TigerBeetleLedger

pytestmark = pytest.mark.integration

LIMIT = 8192
GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-pii"]


def encrypt(tenant: str, job_id: str, size: int | None = None) -> bytes:
    def body(value: str) -> bytes:
        return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": "encrypt",
                           "fields": {"f": value}}).encode()
    return body("x") if size is None else body("x" * (size - len(body(""))))


def span_of(tenant: str, job_id: str, size: int) -> bytes:
    base = span_job(tenant, {"name": ""}, job_id)
    return span_job(tenant, {"name": "x" * (size - len(base))}, job_id)


def audit_verify(bootstrap: str, tigerbeetle: str, tenant: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.app.cli", "audit", "verify", "--tenant", tenant],
                          env={**os.environ, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap, "KEYLEDGER_LEDGER": "tigerbeetle",
                               "KEYLEDGER_TB_ADDRESSES": tigerbeetle, "KEYLEDGER_MAX_MESSAGE_BYTES": str(LIMIT)},
                          capture_output=True, text=True, timeout=120)


async def test_requests_too_large_once_processed_are_refused_before_the_ledger(own_broker, own_tigerbeetle):
    bootstrap = own_broker
    tenant = unique_tenant("size")
    big_pii, big_span = encrypt(tenant, "big-pii", 8152), span_of(tenant, "big-span", 8152)
    assert len(big_pii) == len(big_span) == 8152
    async with in_process_workers(bootstrap, GROUPS, overrides={"max_message_bytes": LIMIT},
                                  ledger=TigerBeetleLedger(own_tigerbeetle)):
        await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
        await read(bootstrap, "keys.events", timeout=60, until=lambda rs: sum(
            json.loads(r.value)["tenant_id"] == tenant for r in rs) == 2)
        key = tenant.encode()
        await produce(bootstrap, "pii.requests", [(key, big_pii), (key, encrypt(tenant, "small-pii"))])
        await produce(bootstrap, "spans.to-sign", [(key, big_span), (key, span_job(tenant, job_id="small-span"))])
        [result] = await records_for(bootstrap, "pii.results", tenant, want=1, timeout=90)
        [signed] = await records_for(bootstrap, "spans.signed", tenant, want=1, timeout=90)
        assert result["job_id"] == "small-pii" and signed["job_id"] == "small-span"
        letters = await records_for(bootstrap, "kms.dlq", tenant, want=2, timeout=90)
        assert sorted((x["topic"], x["error"]["type"]) for x in letters) == [
            ("pii.requests", "too_large"), ("spans.to-sign", "too_large")]
        audit = await records_for(bootstrap, "kms.audit", tenant, want=4, timeout=90)
    # nothing in the ledger (nor on kms.audit) for the refused requests: one sign, one encrypt, two generates
    assert sorted(e["op"] for e in audit) == ["encrypt", "generate", "generate", "sign"]
    assert all(e["outcome"] == "success" for e in audit)
    report = audit_verify(bootstrap, own_tigerbeetle, tenant)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "agrees with TigerBeetle" in report.stdout
