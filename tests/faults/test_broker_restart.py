"""The broker killed and restarted mid-stream (tansu on S3 storage: moto's S3 over HTTP keeps the log):
the workers reconnect, every span is signed, and the invariants hold."""

from __future__ import annotations

import asyncio
import json
import uuid

import boto3
import pytest

from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.integration.conftest import records_for, tenant_created, unique_tenant
from tests.support.harness import span_job
from workers.app.embedded import EmbeddedBroker
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def durable_broker(moto_endpoint: str, tmp_path):
    bucket = f"tansu-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {"AWS_ENDPOINT": moto_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log", storage=f"s3://{bucket}/", env=env)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_broker_killed_and_restarted_mid_stream(durable_broker, worker_process, tigerbeetle_address):
    bootstrap = durable_broker.bootstrap
    await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=3))
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap, "KEYLEDGER_LEDGER": "tigerbeetle",
           "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address, "KEYLEDGER_RETRY_BACKOFF_MAX": "1"}
    worker_process("keyledger-keygen", "keyledger-signer", env=env)
    tenants = [unique_tenant("brk") for _ in range(2)]
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    for tenant in tenants:
        await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    jobs = [(t.encode(), span_job(t, job_id=f"{t}-{n}")) for n in range(300) for t in tenants]
    wanted = set(tenants)

    def signed(records) -> int:
        return len({v["job_id"] for v in (json.loads(r.value) for r in records if r.value)
                    if v.get("tenant_id") in wanted})

    await produce(bootstrap, "spans.to-sign", jobs[: len(jobs) // 2])
    await read_topic(bootstrap, "spans.signed", until=lambda rs: signed(rs) >= 50, timeout=90)
    durable_broker.kill()
    await asyncio.sleep(2)
    durable_broker.start()  # same port, same bucket: the log survives
    await produce(bootstrap, "spans.to-sign", jobs[len(jobs) // 2:])
    done = await read_topic(bootstrap, "spans.signed", until=lambda rs: signed(rs) >= len(jobs), timeout=180)
    assert signed(done) == len(jobs)
    await assert_key_invariants(bootstrap, tenants)
    assert_audit_agrees(bootstrap, env, tenants)
