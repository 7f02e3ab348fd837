"""A producer that creates a tenant and streams its work at once: nothing is refused as unknown_tenant
while keygen, in another process, is still making the keys; a tenant that never comes still is."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.harness import span_job
from tests.support.kafka import read, records_for, tenant_created, unique_tenant, wait_committed
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration


def pii_request(tenant: str, n: int) -> bytes:
    return json.dumps({"job_id": f"{tenant}-p{n}", "tenant_id": tenant, "record_id": f"r{n}",
                       "operation": "encrypt", "fields": {"email": f"user{n}@example.com"}}).encode()


async def test_spans_and_pii_requests_sent_right_after_tenants_created_are_all_served(
        topics_ready, worker_process, tigerbeetle_address):
    bootstrap = topics_ready
    ledger = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address}  # shared by processes
    # started first, with the default 30 s wait: it sees the work before the keys exist
    serving = worker_process("keyledger-signer", "keyledger-pii", env={**ledger, "KEYLEDGER_KEY_TABLE_WAIT": "30"})
    tenant = unique_tenant("race")
    # back to back, before any keygen exists: the work waits for keys that do not exist yet
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), span_job(tenant, job_id=f"{tenant}-s{n}"))
                                               for n in range(20)])
    await produce(bootstrap, "pii.requests", [(tenant.encode(), pii_request(tenant, n)) for n in range(20)])
    keygen = worker_process("keyledger-keygen", env=ledger)
    signed = await records_for(bootstrap, "spans.signed", tenant, want=20, timeout=90)
    answered = await records_for(bootstrap, "pii.results", tenant, want=20, timeout=90)
    letters = [json.loads(r.value) for r in await read(bootstrap, "kms.dlq") if r.value]
    refused = [d for d in letters if d.get("key") and base64.b64decode(d["key"]) == tenant.encode()]
    # a shortfall names its cause: the tenant's dead letters (refused, and why) and what each worker logged
    why = (f"dead letters of {tenant}: {[(d.get('topic'), d.get('error')) for d in refused[:3]]}\n"
           f"signer/pii: {serving.log_path.read_text()[-2000:]}\nkeygen: {keygen.log_path.read_text()[-2000:]}")
    assert len({s["job_id"] for s in signed}) == 20, why
    assert len({r["job_id"] for r in answered}) == 20 and all("error" not in r for r in answered), why
    assert refused == []


async def test_a_tenant_that_never_comes_is_refused_once_its_wait_is_over(topics_ready, worker_process):
    bootstrap = topics_ready
    stranger = unique_tenant("never")
    worker_process("keyledger-signer", env={"KEYLEDGER_KEY_TABLE_WAIT": "2"})
    await produce(bootstrap, "spans.to-sign", [(stranger.encode(), span_job(stranger, job_id=f"{stranger}-1"))])

    def refused(records) -> list[dict]:
        values = [json.loads(r.value) for r in records if r.value]
        return [v for v in values if v.get("error", {}).get("type") == "unknown_tenant" and v.get("key")
                and stranger.encode() == base64.b64decode(v["key"])]

    letters = refused(await read(bootstrap, "kms.dlq", until=lambda rs: bool(refused(rs)), timeout=60))
    assert len(letters) == 1 and letters[0]["attempts"] == 1
    await wait_committed(bootstrap, "keyledger-signer", "spans.to-sign", letters[0]["partition"], letters[0]["offset"])
