"""KEYLEDGER_KEY_TABLE_SHARDED over a real broker: two signer processes of one group, each holding only the
keys of its assigned partitions, answer every span with its own tenant's key, also the spans written to a
partition that is not their tenant's (a producer not partitioning by murmur2).

The broker and TigerBeetle are the test's own (every process checks pins against one ledger); the KMS is
the local one (every dev process shares its KEK)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from nacl.signing import VerifyKey

from tests.support.harness import span_job
from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.processes import WorkerProcesses
from workers.kafka.partitioning import tenant_partition
from workers.kafka.tap import produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARTITIONS = 3  # own_broker's topics
TENANTS = 9
SPANS = 10  # per tenant, on its own partition
STRAYS = 2  # per tenant, on another partition


def _readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"{}")
    except OSError:
        return 0, {}


async def _ready(proc, timeout: float = 120.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        code, body = await asyncio.to_thread(_readyz, proc.http_port)
        if code == 200:
            return body
        assert proc.poll() is None, proc.log_path.read_text()[-3000:]
        assert asyncio.get_running_loop().time() < deadline, f"not ready: {body}"
        await asyncio.sleep(0.3)


async def _holds_a_share(procs, everything: int, timeout: float = 90.0) -> None:
    """Until a process is seen whose group holds fewer than every partition and whose key table holds only
    those (with the system tenant's): fewer keys than the whole table. The embedded broker moves the whole
    assignment between two members now and then, so which process that is changes; the test's spans are
    answered through those moves."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for proc in procs:
            body = (await _ready(proc))["checks"]
            table = body["key_table"]
            if (body["groups"]["keyledger-signer"]["partitions"] < PARTITIONS and len(table["partitions"]) < PARTITIONS
                    and table["keys"] < everything):
                return
        assert asyncio.get_running_loop().time() < deadline, "no process held only a share of the key table"
        await asyncio.sleep(0.2)


def _jcs(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def _stray_spans(bootstrap: str, records: list[tuple[str, int, bytes]]) -> None:
    """Spans keyed by their tenant but written to the partition given, not the tenant's."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send("spans.to-sign", value, key=tenant.encode(), partition=partition)
                for tenant, partition, value in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_two_sharded_signers_answer_every_span_with_its_tenants_key(own_broker, own_tigerbeetle, tmp_path: Path):
    bootstrap = own_broker
    workers = WorkerProcesses(bootstrap, tmp_path, {
        "KEYLEDGER_PROFILE": "dev", "KEYLEDGER_KMS_PROVIDER": "local", "KEYLEDGER_LEDGER": "tigerbeetle",
        "KEYLEDGER_TB_ADDRESSES": own_tigerbeetle, "KEYLEDGER_KEY_TABLE_SHARDED": "true",
        "KEYLEDGER_KEY_TABLE_WAIT": "30"})
    try:
        keygen = workers.start("keyledger-keygen")
        await _ready(keygen)
        tenants = [unique_tenant("shard") for _ in range(TENANTS)]
        await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
        public = {}
        for tenant in tenants:
            events = await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
            public[tenant] = {e["key_id"]: e["public_key"] for e in events if e["key_type"] == "signing"}

        first = workers.start("keyledger-signer")
        await _ready(first)
        second = workers.start("keyledger-signer")  # joining moves partitions between them
        await _ready(second)
        everything = (await _ready(keygen))["checks"]["key_table"]["keys"]
        await _holds_a_share([first, second], everything)
        await produce(bootstrap, "spans.to-sign", [(t.encode(), span_job(t, job_id=f"{t}-{i}"))
                                                   for t in tenants for i in range(SPANS)])
        await _stray_spans(bootstrap, [(t, (tenant_partition(t, PARTITIONS) + 1 + i) % PARTITIONS,
                                        span_job(t, job_id=f"{t}-stray-{i}")) for t in tenants for i in range(STRAYS)])

        for tenant in tenants:
            signed = await records_for(bootstrap, "spans.signed", tenant, want=SPANS + STRAYS, timeout=120)
            assert {r["job_id"] for r in signed} == ({f"{tenant}-{i}" for i in range(SPANS)}
                                                     | {f"{tenant}-stray-{i}" for i in range(STRAYS)})
            for record in signed:
                key_id = record["signature"]["key_id"]
                assert key_id in public[tenant], "signed under a key that is not its tenant's"
                body = {"key_id": key_id, "span": record["span"], "tenant_id": tenant}
                value = record["signature"]["value"]
                VerifyKey(base64.b64decode(public[tenant][key_id])).verify(
                    _jcs(body), base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))

    finally:
        workers.stop_all()
