"""tenants.created -> keys, over a real broker and moto's KMS over HTTP."""

from __future__ import annotations

import base64

import pytest

from schemas.messages import KeyType
from tests.support.kafka import records_for, tenant_created, unique_tenant, wait_processed
from tests.support.processes import in_process_workers
from workers.core import ids
from workers.kafka.tap import produce
from workers.kms import encryption_context
from workers.kms.aws import AwsKms
from workers.ledger.memory import MemoryLedger

pytestmark = pytest.mark.integration


async def test_a_plain_client_event_to_keyledger_run_yields_exactly_one_key_pair(shared_broker, shared_worker,
                                                                                  moto_endpoint, moto_kms_key):
    bootstrap, worker = shared_broker, shared_worker
    tenant = unique_tenant("plain")
    raw = tenant_created(tenant, event_id="evt-1")
    await produce(bootstrap, "tenants.created", [(tenant.encode(), raw)])

    events = await records_for(bootstrap, "keys.events", tenant, want=2, timeout=60)
    assert sorted(e["key_type"] for e in events) == ["encryption", "signing"], worker.log_path.read_text()
    materials = await records_for(bootstrap, "keys.material", tenant)
    audits = await records_for(bootstrap, "kms.audit", tenant)
    assert len(materials) == 2 and len(audits) == 2
    assert {a["event_id"] for a in audits} == {ids.to_hex(ids.transfer_id("generate", m["key_id"])) for m in materials}

    # the wrapped key unwraps at the real KMS API only under the design's encryption context
    kms = AwsKms(moto_kms_key, endpoint_url=moto_endpoint)
    try:
        for m in materials:
            context = encryption_context(tenant, m["key_id"], KeyType(m["key_type"]))
            assert len(await kms.decrypt(base64.b64decode(m["wrapped_key"]), m["kms_key_id"], context)) == 32
    finally:
        await kms.aclose()

    # the same record again, then the same tenant under a new event: nothing new
    await produce(bootstrap, "tenants.created", [(tenant.encode(), raw), (tenant.encode(), tenant_created(tenant))])
    await wait_processed(bootstrap, "keyledger-keygen", "tenants.created", tenant)
    assert len(await records_for(bootstrap, "keys.events", tenant)) == 2
    assert len(await records_for(bootstrap, "keys.material", tenant)) == 2
    assert len(await records_for(bootstrap, "kms.audit", tenant)) == 2


async def test_bad_input_goes_to_the_dlq_and_the_partition_keeps_flowing(shared_broker, shared_worker):
    bootstrap = shared_broker
    bad_key = unique_tenant("bad")
    good = unique_tenant("good")
    await produce(bootstrap, "tenants.created", [
        (bad_key.encode(), b"\x00not json"),
        (bad_key.encode(), b'{"event_id": "e", "occurred_at": "2026-01-01T00:00:00Z"}'),
        (bad_key.encode(), None),
        (good.encode(), tenant_created(good)),
    ])
    letters = await records_for(bootstrap, "kms.dlq", bad_key, want=3, timeout=60)
    assert sorted(letter["error"]["type"] for letter in letters) == ["invalid_message", "invalid_message", "not_json"]
    assert base64.b64decode(next(x for x in letters if x["error"]["type"] == "not_json")["payload"]) == b"\x00not json"
    assert len(await records_for(bootstrap, "keys.events", good, want=2, timeout=60)) == 2


async def test_a_restarted_worker_knows_every_key_and_creates_none_again(topics_ready):
    bootstrap = topics_ready
    tenant = unique_tenant("restart")
    ledger = MemoryLedger()  # the system of record outlives the worker processes
    async with in_process_workers(bootstrap, ["keyledger-keygen"], ledger=ledger) as first:
        await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant, event_id="e1"))])
        await records_for(bootstrap, "keys.events", tenant, want=2, timeout=60)
        kms_calls = first.kms.calls
    async with in_process_workers(bootstrap, ["keyledger-keygen"], ledger=ledger) as second:
        assert {e.key_id for e in second.directory.tenant_keys(tenant)} == {
            ids.key_id_for(tenant, t, 1) for t in KeyType
        }
        await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant, event_id="e1"))])
        await wait_processed(bootstrap, "keyledger-keygen", "tenants.created", tenant)
        assert second.kms.calls == 0 and kms_calls == 2
    assert len(await records_for(bootstrap, "keys.events", tenant)) == 2


class FailingOnce:
    """The real memory ledger with one injected outage on the first transfer batch (a crash point)."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self._ledger = ledger
        self.failed = False

    def __getattr__(self, name):
        return getattr(self._ledger, name)

    async def create_transfers(self, transfers):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected crash after material and accounts, before transfers")
        return await self._ledger.create_transfers(transfers)


async def test_a_failure_mid_batch_is_retried_without_a_second_key(topics_ready):
    bootstrap = topics_ready
    tenant = unique_tenant("crash")
    ledger = FailingOnce(MemoryLedger())
    async with in_process_workers(bootstrap, ["keyledger-keygen"], ledger=ledger) as context:
        await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
        events = await records_for(bootstrap, "keys.events", tenant, want=2, timeout=60)
        await wait_processed(bootstrap, "keyledger-keygen", "tenants.created", tenant)  # the retry is over
        assert ledger.failed and len(events) == 2
        assert context.kms.calls == 2  # the retry reused the material written before the crash
    assert len(await records_for(bootstrap, "keys.material", tenant)) == 2
    assert len(await records_for(bootstrap, "kms.audit", tenant)) == 2
