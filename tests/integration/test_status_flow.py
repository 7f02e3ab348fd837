"""`keyledger status` and `keyledger rotate` on tenants without keys, over a real broker.

The workers run in-process (keygen, PII, rotation); the CLI runs as a subprocess reading the
same broker, as an operator's shell would. The shared broker holds other tests' tenants too,
so assertions look at this test's tenants in `--json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from tests.integration.test_lifecycle_flow import pii, result
from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.core import ids
from workers.kafka.tap import produce
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.tools.status import RESERVED_TENANT

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ["keyledger-keygen", "keyledger-pii", "keyledger-rotation"]


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The CLI as a subprocess, in a thread: the in-process workers keep running meanwhile."""
    return await asyncio.to_thread(_cli, *args, env=env)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "workers.app.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=180)


async def status_json(env: dict[str, str]) -> dict:
    shown = await cli("status", "--json", env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)


async def reserved_tenant_records(bootstrap: str) -> None:
    """keyledger's own key records, as its system tenant writes them: status must not count them as a tenant."""
    key_id = ids.key_id_for(RESERVED_TENANT, KeyType.SIGNING, 1)
    now = datetime.now(UTC)
    material = KeyMaterial(key_id=key_id, tenant_id=RESERVED_TENANT, key_type=KeyType.SIGNING, version=1,
                           kms_key_id="local/keyledger-dev", wrapped_key="AAAA", created_at=now)
    event = KeyEvent(event_id=f"system-{key_id}", type=KeyEventType.GENERATED, tenant_id=RESERVED_TENANT,
                     key_id=key_id, key_type=KeyType.SIGNING, version=1, occurred_at=now)
    await produce(bootstrap, "keys.material", [(key_id.encode(), material.to_json())])
    await produce(bootstrap, "keys.events", [(RESERVED_TENANT.encode(), event.to_json())])


async def test_status_shows_tenants_and_key_states_and_skips_wear_out_on_the_memory_ledger(topics_ready):
    bootstrap = topics_ready
    kept, rotated, deleted = unique_tenant("st-kept"), unique_tenant("st-rot"), unique_tenant("st-del")
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap}
    async with in_process_workers(bootstrap, GROUPS):
        await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in (kept, rotated, deleted)])
        for tenant in (kept, rotated, deleted):
            await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
        await reserved_tenant_records(bootstrap)
        rotation = await cli("rotate", "--tenant", rotated, "--key-type", "encryption", env=env)
        assert rotation.returncode == 0, rotation.stdout + rotation.stderr
        gone = {"event_id": f"bye-{deleted}", "tenant_id": deleted, "occurred_at": datetime.now(UTC).isoformat()}
        await produce(bootstrap, "tenants.deleted", [(deleted.encode(), json.dumps(gone).encode())])
        await records_for(bootstrap, "keys.events", deleted, want=4, timeout=90)

        shown = await status_json(env)
        text = await cli("status", env=env)

    assert kept in shown["tenants"]["live"] and rotated in shown["tenants"]["live"]
    assert deleted in shown["tenants"]["deleted"] and deleted not in shown["tenants"]["live"]
    assert RESERVED_TENANT not in shown["tenants"]["live"] + shown["tenants"]["deleted"]
    assert RESERVED_TENANT not in shown["tenant_keys"]
    assert shown["tenant_keys"][kept] == ["signing v1 active", "encryption v1 active"]
    assert shown["tenant_keys"][rotated] == ["signing v1 active", "encryption v1 rotated", "encryption v2 active"]
    assert shown["tenant_keys"][deleted] == ["signing v1 destroyed", "encryption v1 destroyed"]
    assert shown["keys"]["encryption"]["rotated"] >= 1 and shown["keys"]["signing"]["destroyed"] >= 1
    assert shown["near_wear_out"] is None and "the ledger (memory)" in shown["wear_out_note"]
    assert text.returncode == 0, text.stderr
    assert "near wear-out" in text.stdout and "skipped: the ledger (memory)" in text.stdout
    assert "TigerBeetle at" not in text.stdout  # no TigerBeetle is used here


async def test_status_lists_keys_near_wear_out_from_tigerbeetle(topics_ready, tigerbeetle_address):
    bootstrap = topics_ready
    used, idle = unique_tenant("wear-used"), unique_tenant("wear-idle")
    ledger = TigerBeetleLedger(tigerbeetle_address)
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap, "KEYLEDGER_LEDGER": "tigerbeetle",
           "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address,
           # the encryption budget is charged per field sealed: 2 reaches 90% of 2, 0 does not
           "KEYLEDGER_ENCRYPT_LIMIT": "2"}
    try:
        async with in_process_workers(bootstrap, GROUPS, ledger=ledger):
            await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in (used, idle)])
            for tenant in (used, idle):
                await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
            await produce(bootstrap, "pii.requests", [(used.encode(), pii(used, "encrypt", {"ssn": "078-05-1120", "dob": "1970-01-01"}, "w1"))])
            assert (await result(bootstrap, used, "w1"))["key_id"]
            shown = await status_json(env)
    finally:
        await ledger.aclose()
    worn = {row["tenant_id"]: row for row in shown["near_wear_out"]}
    assert used in worn and worn[used]["used"] == 2 and worn[used]["key_type"] == "encryption"
    assert idle not in worn
    assert shown["wear_out_note"] is None


async def test_rotate_refuses_a_tenant_without_keys(topics_ready):
    bootstrap = topics_ready
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap}
    nobody, deleted = unique_tenant("nobody"), unique_tenant("gone")
    async with in_process_workers(bootstrap, ["keyledger-keygen"]):
        await produce(bootstrap, "tenants.created", [(deleted.encode(), tenant_created(deleted))])
        await records_for(bootstrap, "keys.events", deleted, want=2, timeout=90)
        gone = {"event_id": f"bye-{deleted}", "tenant_id": deleted, "occurred_at": datetime.now(UTC).isoformat()}
        await produce(bootstrap, "tenants.deleted", [(deleted.encode(), json.dumps(gone).encode())])
        await records_for(bootstrap, "keys.events", deleted, want=4, timeout=90)
        ticks_before = len(await records_for(bootstrap, "keys.rotation-ticks", nobody))
        unknown = await cli("rotate", "--tenant", nobody, env=env)
        destroyed = await cli("rotate", "--tenant", deleted, env=env)
        ticks_after = len(await records_for(bootstrap, "keys.rotation-ticks", nobody))

    for refused, says in ((unknown, f"tenant '{nobody}' has no keys on keys.events: nothing rotated"),
                          (destroyed, f"tenant '{deleted}' was deleted: its keys are destroyed, nothing rotated")):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert lines == [f"keyledger rotate: {says}" + (" (check the tenant id; `keyledger status` lists the tenants)"
                                                         if refused is unknown else "")]
    assert ticks_before == ticks_after == 0  # refused before any tick was published
