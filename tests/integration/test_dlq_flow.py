"""Dead letters brought back, over a real broker and moto's KMS: an onboarding dead-lettered under a KMS key
that does not exist yet is replayed with `keyledger dlq replay` once the key is there, and answered once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from tests.support.kafka import read, records_for, tenant_created, unique_tenant
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration


def keyledger(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    return subprocess.run([sys.executable, "-m", "workers.app.cli", *args], capture_output=True, text=True,
                          timeout=180, env={**env, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap})


async def test_an_onboarding_dead_lettered_for_a_missing_key_is_replayed_once_the_key_exists(
        topics_ready, worker_process, moto_endpoint):
    bootstrap = topics_ready
    tenant = unique_tenant("late-key")
    alias = f"alias/{unique_tenant('not-yet')}"
    worker_process("keyledger-keygen")

    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant, kms_key_id=alias))])
    [letter] = await records_for(bootstrap, "kms.dlq", tenant, want=1, timeout=90)
    assert letter["error"]["type"] == "kms_refused"

    listed = keyledger(bootstrap, "dlq", "list", "--tenant", tenant, "--code", "kms_refused", "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert f"tenant={tenant}" in line and "tenants.created" in line and line.endswith("replayable")
    letter_id = line.split()[0]
    shown = keyledger(bootstrap, "dlq", "show", letter_id)
    assert shown.returncode == 0 and "kms_refused" in shown.stdout and tenant in shown.stdout

    # the cause is fixed: the key now exists under that alias
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key(Description="late key")["KeyMetadata"]["KeyId"])

    replayed = keyledger(bootstrap, "dlq", "replay", "--tenant", tenant)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"{letter_id}  replayed to tenants.created[")
    events = await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    assert sorted(e["key_type"] for e in events) == ["encryption", "signing"]

    again = keyledger(bootstrap, "dlq", "replay", letter_id)
    assert again.returncode == 0, again.stderr
    assert "skipped: already replayed" in again.stdout and "0 replayed, 1 already replayed" in again.stderr
    assert "  replayed " in keyledger(bootstrap, "dlq", "list", "--tenant", tenant).stdout

    replays = [json.loads(r.value) for r in await read(bootstrap, "kms.dlq.replays") if r.value]
    [replay] = [r for r in replays if r["letter"] == letter_id]
    assert replay["tenant_id"] == tenant and replay["topic"] == "tenants.created"
    assert (replay["partition"], replay["offset"]) == (letter["partition"], letter["offset"])
    # answered once: one key pair, and the replayed record names its letter
    material = await records_for(bootstrap, "keys.material", tenant)
    assert len(material) == 2
    [sent] = [r for r in await read(bootstrap, "tenants.created")
              if (r.partition, r.offset) == (replay["replayed_partition"], replay["replayed_offset"])]
    assert ("keyledger-dlq-letter", letter_id.encode()) in list(sent.headers)
