"""Key wear-out over a real broker and TigerBeetle: two PII workers race on one tenant's keys, each key
seals at most its limit, and every request is answered (none refused for wear-out)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.kafka import records_for, tenant_created, unique_tenant
from workers.core import ids
from workers.core.envelope import parse_envelope
from workers.kafka.tap import produce
from workers.keys.budget import EncryptionBudget
from workers.ledger import AccountFilter, AccountFilterFlags
from workers.ledger.tigerbeetle import TigerBeetleLedger

pytestmark = pytest.mark.integration

LIMIT = 30
REQUESTS = 40  # 3 fields each: 120 seals, more than three keys can make


def encrypt(tenant: str, n: int) -> bytes:
    return json.dumps({"job_id": f"w-{n}", "tenant_id": tenant, "record_id": f"r-{n}", "operation": "encrypt",
                       "fields": {"a": f"alpha {n}", "b": f"beta {n}", "c": f"gamma {n}"}}).encode()


async def produce_across_partitions(bootstrap: str, tenant: str) -> None:
    """One tenant's requests spread over every partition, so both PII workers seal under the same key at once
    (a producer that keys by tenant sends them all to one partition, i.e. to one worker)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for("pii.requests"))
        sent = [await producer.send("pii.requests", encrypt(tenant, n), key=tenant.encode(),
                                    partition=partitions[n % len(partitions)]) for n in range(REQUESTS)]
        for future in sent:
            await future
    finally:
        await producer.stop()


async def encrypt_usage(ledger: TigerBeetleLedger, key_id: str) -> int:
    transfers = await ledger.get_account_transfers(AccountFilter(
        account_id=ids.from_hex(key_id), user_data_128=0, user_data_64=0, user_data_32=ids.pack_op("encrypt"),
        code=0, timestamp_min=0, timestamp_max=0, limit=1000, flags=AccountFilterFlags.CREDITS))
    return sum(t.amount for t in transfers)


async def test_two_pii_workers_seal_no_key_past_its_limit_and_answer_every_request(
        topics_ready, worker_process, tigerbeetle_address):
    bootstrap = topics_ready
    env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address,
           "KEYLEDGER_ENCRYPT_LIMIT": str(LIMIT), "KEYLEDGER_RETRY_BACKOFF_MAX": "1"}
    tenant = unique_tenant("wear")
    worker_process("keyledger-keygen", "keyledger-rotation", env=env)
    pii = [worker_process("keyledger-pii", env=env) for _ in range(2)]
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)

    await produce_across_partitions(bootstrap, tenant)
    results = await records_for(bootstrap, "pii.results", tenant, want=REQUESTS, timeout=180)
    logs = "\n".join(p.log_path.read_text()[-2000:] for p in pii)
    by_job = {r["job_id"]: r for r in results}
    assert len(by_job) == REQUESTS, logs
    assert [r for r in by_job.values() if "error" in r or "errors" in r] == []  # nobody got key_worn_out

    sealed_under = Counter(parse_envelope(text).key_id for r in by_job.values() for text in r["fields"].values())
    assert sum(sealed_under.values()) == 3 * REQUESTS
    assert max(sealed_under.values()) <= LIMIT and len(sealed_under) >= 4, sealed_under
    ledger = TigerBeetleLedger(tigerbeetle_address)
    try:
        for key_id, ciphertexts in sealed_under.items():
            assert await encrypt_usage(ledger, key_id) == ciphertexts, key_id
        left = await EncryptionBudget(ledger, LIMIT).remaining(list(sealed_under))
        assert all(LIMIT - left[k] >= sealed_under[k] for k in sealed_under)  # the budget saw every seal
    finally:
        await ledger.aclose()
    events = await records_for(bootstrap, "keys.events", tenant)
    rotated = [e for e in events if e["type"] == "rotated" and e["key_type"] == "encryption"]
    assert len(rotated) == len(sealed_under) - 1  # one rotation per spent key, however many workers asked
