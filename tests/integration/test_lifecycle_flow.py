"""Rotation and crypto-shredding over a real broker, driven by plain Kafka clients and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from tests.support.callers import register_caller
from tests.support.harness import tick
from tests.support.kafka import records_for, tenant_created, unique_tenant, wait_drained
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration

GROUPS = ("keyledger-keygen", "keyledger-pii", "keyledger-rotation")



def pii(tenant: str, operation: str, fields: dict, job_id: str) -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields}).encode()


async def result(bootstrap: str, tenant: str, job_id: str) -> dict:
    def found(records):
        return [r for r in records if r.get("job_id") == job_id]

    for _ in range(120):
        hits = found(await records_for(bootstrap, "pii.results", tenant))
        if hits:
            return hits[0]
        await asyncio.sleep(0.5)
    raise TimeoutError(job_id)


async def test_scheduled_ticks_rotate_every_due_key_exactly_once(topics_ready, worker_process):
    bootstrap = topics_ready
    tenants = [unique_tenant("rot") for _ in range(3)]
    worker = worker_process(*GROUPS, env={"KEYLEDGER_ROTATION_AGE": "1"})
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    for t in tenants:
        await records_for(bootstrap, "keys.events", t, want=2, timeout=90)
    await asyncio.sleep(1.5)  # every key is now older than the one-second rotation age
    # two scheduled ticks at once, and the first one replayed: one rotation per key in all
    await produce(bootstrap, "keys.rotation-ticks", [(b"cron", tick("sched-1")), (b"cron-b", tick("sched-2")),
                                                     (b"cron", tick("sched-1"))])
    for t in tenants:
        await records_for(bootstrap, "keys.events", t, want=4, timeout=90)
    # every tick and every tick it fanned out is handled: any second rotation is on keys.events by now
    await wait_drained(bootstrap, "keyledger-rotation", "keys.rotation-ticks")
    for t in tenants:
        events = await records_for(bootstrap, "keys.events", t)
        rotated = [e for e in events if e["type"] == "rotated"]
        assert sorted((e["key_type"], e["version"]) for e in rotated) == [("encryption", 2), ("signing", 2)], \
            worker.log_path.read_text()[-2000:]
        audits = await records_for(bootstrap, "kms.audit", t)
        assert sorted(a["op"] for a in audits) == ["generate"] * 4 + ["rotate"] * 2


async def test_cli_rotation_compromise_and_shredding_end_to_end(shared_broker, shared_worker, shared_operator, aws_env,
                                                                 tmp_path):
    bootstrap = shared_broker
    tenant = unique_tenant("life")
    _, caller = await register_caller(bootstrap, tmp_path, f"life-{uuid.uuid4().hex[:8]}", aws_env,
                                      operator=shared_operator, tenants=[tenant])
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    await produce(bootstrap, "pii.requests", [(tenant.encode(), pii(tenant, "encrypt", {"ssn": "078-05-1120"}, "e1"))])
    sealed = await result(bootstrap, tenant, "e1")

    cli = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "workers.app.cli", "rotate", "--tenant", tenant, "--key-type", "encryption",
                          "--reason", "compromise"], env={**os.environ, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap},
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "1/1 keys rotated" in cli.stderr and "1 keys rotated" in cli.stdout

    await produce(bootstrap, "pii.requests", [
        (tenant.encode(), caller.pii(tenant, "decrypt", sealed["fields"], job_id="d1")),
        (tenant.encode(), caller.pii(tenant, "reencrypt", sealed["fields"], job_id="r1"))])
    assert (await result(bootstrap, tenant, "d1"))["errors"]["ssn"]["type"] == "key_revoked"
    migrated = await result(bootstrap, tenant, "r1")
    assert migrated["key_id"] != sealed["key_id"]

    deleted = {"event_id": "bye", "tenant_id": tenant, "occurred_at": datetime.now(UTC).isoformat()}
    await produce(bootstrap, "tenants.deleted", [(tenant.encode(), json.dumps(deleted).encode())])
    destroyed = [e for e in await records_for(bootstrap, "keys.events", tenant, want=6, timeout=90)
                 if e["type"] == "destroyed"]
    assert len(destroyed) == 3  # signing v1, encryption v1 (revoked) and v2
    await produce(bootstrap, "pii.requests", [(tenant.encode(), caller.pii(tenant, "decrypt", migrated["fields"],
                                                                           job_id="d2"))])
    gone = await result(bootstrap, tenant, "d2")
    assert gone["fields"] == {} and gone["errors"]["ssn"]["type"] == "key_destroyed"
