"""kill -9 of each worker mid-batch, over a real broker, moto's KMS and a real TigerBeetle: the restarted
worker finishes the work, every input is accounted for, and the invariants hold (tests/faults/invariants.py)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.support.kafka import read, tenant_created, unique_tenant
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration

TENANTS = 60


@pytest.fixture
def tb_env(tigerbeetle_address: str) -> dict[str, str]:
    return {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address,
            "KEYLEDGER_KAFKA_BATCH_MAX": "20"}  # small batches: the kill lands between batches, not after all


def counting(topic_filter: Callable[[dict], bool]) -> Callable[[list], int]:
    """Distinct keys.events (key, type) that pass the filter: a republished event counts once."""
    def count(records: list) -> int:
        return len({(v.get("key_id"), v.get("type")) for v in (json.loads(r.value) for r in records if r.value)
                    if topic_filter(v)})
    return count


async def kill_when(bootstrap: str, process, topic: str, seen: Callable[[list], int], at_least: int,
                    total: int) -> None:
    """SIGKILL once `at_least` outputs are out; proves the kill landed mid-way (not after everything)."""
    await read(bootstrap, topic, until=lambda rs: seen(rs) >= at_least, timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = seen(await read(bootstrap, topic, timeout=60))
    assert at_least <= done < total, f"the kill came after {done} of {total}: it proves nothing"


def deletion(tenant: str) -> bytes:
    return json.dumps({"event_id": f"del-{tenant}", "tenant_id": tenant,
                       "occurred_at": datetime.now(UTC).isoformat()}).encode()


async def onboard(bootstrap: str, worker_process, env: dict[str, str], tenants: list[str]) -> None:
    worker = worker_process("keyledger-keygen", env=env)
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    generated = counting(lambda v: v.get("tenant_id") in set(tenants) and v.get("type") == "generated")
    await read(bootstrap, "keys.events", until=lambda rs: generated(rs) >= 2 * len(tenants), timeout=120)
    worker.terminate()
    worker.wait()


async def test_keygen_killed_mid_batch_makes_every_key_once(topics_ready, worker_process, tb_env):
    bootstrap, tenants = topics_ready, [unique_tenant("k9-gen") for _ in range(TENANTS)]
    wanted = set(tenants)
    generated = counting(lambda v: v.get("tenant_id") in wanted and v.get("type") == "generated")
    first = worker_process("keyledger-keygen", env=tb_env)
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    await kill_when(bootstrap, first, "keys.events", generated, at_least=10, total=2 * TENANTS)
    worker_process("keyledger-keygen", env=tb_env)
    await read(bootstrap, "keys.events", until=lambda rs: generated(rs) >= 2 * TENANTS, timeout=120)
    await assert_key_invariants(bootstrap, tenants)
    assert_audit_agrees(bootstrap, tb_env, tenants[::15])


async def test_rotation_killed_mid_fan_out_rotates_each_key_once(topics_ready, worker_process, tb_env):
    bootstrap, tenants = topics_ready, [unique_tenant("k9-rot") for _ in range(TENANTS)]
    await onboard(bootstrap, worker_process, tb_env, tenants)
    wanted = set(tenants)
    rotated = counting(lambda v: v.get("tenant_id") in wanted and v.get("type") == "rotated")
    first = worker_process("keyledger-rotation", env=tb_env)
    ticks = [(t.encode(), json.dumps({"tick_id": f"k9-{t}", "issued_at": datetime.now(UTC).isoformat(),
                                      "tenant_id": t, "reason": "manual"}).encode()) for t in tenants]
    await produce(bootstrap, "keys.rotation-ticks", ticks)
    await kill_when(bootstrap, first, "keys.events", rotated, at_least=10, total=2 * TENANTS)
    worker_process("keyledger-rotation", env=tb_env)
    await read(bootstrap, "keys.events", until=lambda rs: rotated(rs) >= 2 * TENANTS, timeout=120)
    directory = await assert_key_invariants(bootstrap, tenants)
    assert {e.version for t in tenants for e in directory.tenant_keys(t) if e.state.value == "active"} == {2}
    assert_audit_agrees(bootstrap, tb_env, tenants[::15])


async def test_shredding_killed_mid_batch_destroys_every_key(topics_ready, worker_process, tb_env):
    # shredding is quick: many small batches, so the kill lands while most are still to come
    count, env = 4 * TENANTS, {**tb_env, "KEYLEDGER_KAFKA_BATCH_MAX": "4"}
    bootstrap, tenants = topics_ready, [unique_tenant("k9-del") for _ in range(count)]
    await onboard(bootstrap, worker_process, tb_env, tenants)
    wanted = set(tenants)
    destroyed = counting(lambda v: v.get("tenant_id") in wanted and v.get("type") == "destroyed")
    first = worker_process("keyledger-keygen", env=env)
    await produce(bootstrap, "tenants.deleted", [(t.encode(), deletion(t)) for t in tenants])
    await kill_when(bootstrap, first, "keys.events", destroyed, at_least=2, total=2 * count)
    worker_process("keyledger-keygen", env=env)
    await read(bootstrap, "keys.events", until=lambda rs: destroyed(rs) >= 2 * count, timeout=120)
    await assert_key_invariants(bootstrap, tenants, destroyed=True)
    assert_audit_agrees(bootstrap, tb_env, tenants[::60])


async def test_pii_killed_mid_stream_answers_every_request_and_counts_each_once(topics_ready, worker_process, tb_env):
    bootstrap, tenants = topics_ready, [unique_tenant("k9-pii") for _ in range(3)]
    await onboard(bootstrap, worker_process, tb_env, tenants)
    requests = [(t.encode(), json.dumps({"job_id": f"{t}-{n}", "tenant_id": t, "record_id": f"r{n}",
                                         "operation": "encrypt", "fields": {"a": f"v{n}", "b": "w"}}).encode())
                for n in range(600) for t in tenants]
    wanted = set(tenants)

    def answered(records: list) -> int:
        return len({v["job_id"] for v in (json.loads(r.value) for r in records if r.value)
                    if v.get("tenant_id") in wanted})

    first = worker_process("keyledger-pii", env=tb_env)
    await produce(bootstrap, "pii.requests", requests)
    await kill_when(bootstrap, first, "pii.results", answered, at_least=100, total=len(requests))
    worker_process("keyledger-pii", env=tb_env)
    results = await read(bootstrap, "pii.results", until=lambda rs: answered(rs) >= len(requests), timeout=180)
    assert answered(results) == len(requests)
    assert not [v for v in (json.loads(r.value) for r in results if r.value)
                if v.get("tenant_id") in wanted and ("error" in v or "errors" in v)]
    await assert_key_invariants(bootstrap, tenants)
    assert_audit_agrees(bootstrap, tb_env, tenants)
