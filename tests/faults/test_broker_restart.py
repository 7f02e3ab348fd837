"""The broker killed and restarted mid-stream (tansu on S3 storage: moto's S3 over HTTP keeps the log):
the workers reconnect, every span is signed, and the invariants hold.

The kill comes once the first half of the spans is committed, with the worker connected and fetching,
not while it writes: tansu's S3 engine loses the batch it is writing when it is killed, after
acknowledging it (about 1 run in 10 when killed during the writes: a hole in spans.signed, or records
of kms.audit gone without one), and no client survives a broker that drops what it acknowledged. The
checks still tell such a loss from the worker's: a hole below a partition's last record cannot come
from an idempotent producer without transactions, so a span whose signed record fell into one must
still have been signed and audited by the worker (its `kms.audit` event names the span's input offset),
and audit events lost in a hole must still be transfers in the ledger (`audit verify` names them, and
nothing else may disagree). Anything missing that no hole explains fails the test."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import warnings

import boto3
import pytest

from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.support.audit import places
from tests.support.harness import span_job
from tests.support.kafka import forget, read, records_for, tenant_created, unique_tenant, wait_committed
from workers.app.embedded import EmbeddedBroker
from workers.kafka.tap import produce
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
        forget(broker.bootstrap)


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
    first = [r for r in await read(bootstrap, "spans.to-sign", timeout=60)
             if r.value and json.loads(r.value).get("tenant_id") in wanted]
    for partition in {r.partition for r in first}:
        last = max(r.offset for r in first if r.partition == partition)
        await wait_committed(bootstrap, "keyledger-signer", "spans.to-sign", partition, last, timeout=90)
    durable_broker.kill()  # between two halves of the stream, the worker's fetches and group membership live
    await asyncio.sleep(2)
    durable_broker.start()  # same port, same bucket: the log survives
    forget(bootstrap)  # what was read before the kill is read again: the broker may have lost some of it
    await produce(bootstrap, "spans.to-sign", jobs[len(jobs) // 2:])
    inputs = {(r.partition, r.offset): json.loads(r.value)["job_id"]
              for r in await read(bootstrap, "spans.to-sign", timeout=60)
              if r.value and json.loads(r.value).get("tenant_id") in wanted}
    assert len(inputs) == len(jobs)  # the broker kept every input the test produced
    deadline = time.monotonic() + 180
    all_audited = False
    while True:
        # a span's signed record is published with its audit event: once the audit shows every span
        # signed, one more round (a second later) reads spans.signed as complete as it will get
        audit = await read(bootstrap, "kms.audit", timeout=60)
        done = await read(bootstrap, "spans.signed", timeout=60)
        audited = _signed_inputs(audit)
        if signed(done) == len(jobs) or all_audited or time.monotonic() > deadline:
            break
        all_audited = set(inputs) <= audited
        await asyncio.sleep(1)
    missing = {json.loads(v)["job_id"] for _, v in jobs} - {json.loads(r.value)["job_id"] for r in done if r.value}
    if missing:
        holes = _holes(done)
        unaudited = {job for at, job in inputs.items() if job in missing and at not in audited}
        assert not unaudited, f"{len(unaudited)} spans never signed: {sorted(unaudited)[:5]}"
        assert len(missing) <= holes, f"{len(missing)} signed spans missing, only {holes} offsets lost by the broker"
        warnings.warn(f"the broker lost {holes} acknowledged records of spans.signed when killed; the worker had "
                      f"signed and audited each of the {len(missing)} spans they held", stacklevel=1)
    await assert_key_invariants(bootstrap, tenants)
    audit_holes = _holes(audit)
    if assert_audit_agrees(bootstrap, env, tenants, lost_by_broker=audit_holes):
        warnings.warn(f"the broker lost {audit_holes} acknowledged records of kms.audit when killed; the ledger "
                      "holds their transfers, and nothing else disagrees", stacklevel=1)


def _signed_inputs(audit) -> set[tuple[int, int]]:
    """(partition, offset) of every spans.to-sign record a `sign` audit event says was signed."""
    events = (json.loads(r.value) for r in audit if r.value)
    return {(partition, offset) for e in events if e.get("op") == "sign" and e.get("outcome") == "success"
            for topic, partition, offset in places(e) if topic == "spans.to-sign"}


def _holes(records) -> int:
    """Offsets below each partition's last record that no record holds. Counted from the records, not from
    the broker's end offsets: after a kill, tansu reports a partition's end from a stale watermark (seen:
    4 for a partition holding 302 records). A batch lost at a partition's very end leaves no hole, and then
    the test fails, as it must when the loss cannot be told from the worker's."""
    held: dict[int, set[int]] = {}
    for record in records:
        held.setdefault(record.partition, set()).add(record.offset)
    return sum(max(offsets) + 1 - len(offsets) for offsets in held.values())
