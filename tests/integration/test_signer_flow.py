"""spans.to-sign -> spans.signed over a real broker: verification by a third party, KMS outages."""

from __future__ import annotations

import base64
import json

import pytest
from nacl.signing import VerifyKey

from tests.support.audit import places
from tests.support.faults import SwitchableKms
from tests.support.harness import span_job
from tests.support.kafka import (
    committed_offset,
    last_record,
    records_for,
    tenant_created,
    unique_tenant,
    until,
    wait_committed,
)
from tests.support.processes import in_process_workers
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration


def _jcs(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def test_signed_spans_from_keyledger_run_verify_with_a_third_party_library(shared_broker, shared_worker):
    bootstrap = shared_broker
    tenant = unique_tenant("sign")
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    events = await records_for(bootstrap, "keys.events", tenant, want=2, timeout=60)
    signing = next(e for e in events if e["key_type"] == "signing")
    jobs = [span_job(tenant, {"n": i, "name": "op"}, job_id=f"job-{i}") for i in range(200)]
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), j) for j in jobs])
    signed = await records_for(bootstrap, "spans.signed", tenant, want=200, timeout=60)
    verify_key = VerifyKey(base64.b64decode(signing["public_key"]))
    for record in signed:
        body = {"key_id": record["signature"]["key_id"], "span": record["span"], "tenant_id": tenant}
        value = record["signature"]["value"]
        verify_key.verify(_jcs(body), base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert {r["job_id"] for r in signed} == {f"job-{i}" for i in range(200)}
    audits = [a for a in await records_for(bootstrap, "kms.audit", tenant) if a["op"] == "sign"]
    # one transfer per span, named by the batches' events: ids survive rebatching
    assert sum(a["count"] for a in audits) == 200 and len({p for a in audits for p in places(a)}) == 200


async def test_during_a_kms_outage_uncached_tenants_wait_uncommitted_and_then_complete(topics_ready):
    bootstrap = topics_ready
    cached, uncached = unique_tenant("cached"), unique_tenant("uncached")
    kms = SwitchableKms()
    async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-signer"], kms=kms) as context:
        await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in (cached, uncached)])
        await records_for(bootstrap, "keys.events", cached, want=2, timeout=60)
        await records_for(bootstrap, "keys.events", uncached, want=2, timeout=60)
        context.keys.evict(context.keys.active(uncached, "signing").key_id)
        kms.down = True
        calls_before = kms.calls
        await produce(bootstrap, "spans.to-sign", [(uncached.encode(), span_job(uncached, job_id="waiting"))])
        await produce(bootstrap, "spans.to-sign", [(cached.encode(), span_job(cached, job_id=f"c{i}")) for i in range(20)])
        assert len(await records_for(bootstrap, "spans.signed", cached, want=20, timeout=60)) == 20
        waiting = await last_record(bootstrap, "spans.to-sign", uncached)
        # the cached tenant's spans need no KMS call: a call made now is the waiting span's, refused
        await until(lambda: kms.calls > calls_before, "attempt at the uncached tenant's key", timeout=60)
        assert await records_for(bootstrap, "spans.signed", uncached) == []
        assert await committed_offset(bootstrap, "keyledger-signer", "spans.to-sign", waiting.partition) <= waiting.offset
        kms.down = False
        [signed] = await records_for(bootstrap, "spans.signed", uncached, want=1, timeout=60)
        assert signed["job_id"] == "waiting"
        await wait_committed(bootstrap, "keyledger-signer", "spans.to-sign", waiting.partition, waiting.offset)
